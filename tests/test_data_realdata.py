"""Checks against the real datasets (skipped when ../shared/datasets is absent)."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import require_dataset

from maskwatch.data import audit_dataset, load_dataset, read_face, write_split

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def audit_12k():
    root = require_dataset("face-mask-12k")
    return audit_dataset(load_dataset(root), workers=2, progress=False)


def test_12k_layout_and_leakage(audit_12k):
    r = audit_12k
    assert r["layout"] == "class-folders" and r["images"] == 11771
    assert set(r["splits"]) == {"train", "val", "test"}
    assert r["unreadable"] == []
    # its published Test split leaks: by perceptual hash alone, Test images with a
    # near-duplicate in Train
    assert r["leakage"]["test->train"] >= 30
    assert len(r["duplicate_groups"]) == 130
    assert r["duplicate_groups_cross_split"] == 40
    # Augmented_<base>_<n> files in Test/Validation whose <base> group is in Train
    assert r["cross_split_group_samples"]["test"] == 404
    assert r["cross_split_group_samples"]["val"] == 331


def test_853_voc_boxes():
    root = require_dataset("face-mask-detection-853")
    ds = load_dataset(root)
    assert ds.layout == "voc"
    assert len(ds.images()) == 853 and len(ds) == 4072
    assert Counter(s.label for s in ds.samples) == {
        "with_mask": 3232, "without_mask": 717, "incorrect_mask": 123}
    assert ds.clipped == 12
    face = read_face(ds.samples[0], margin=0.1)
    x1, y1, x2, y2 = ds.samples[0].box
    assert face.shape[0] >= y2 - y1 and face.shape[1] >= x2 - x1


def test_12k_group_split_has_no_leakage(tmp_path):
    root = require_dataset("face-mask-12k")
    ds = load_dataset(root)
    manifest, summary = write_split(ds, tmp_path, (0.8, 0.1, 0.1), seed=0, progress=False)
    split = load_dataset(manifest)
    assert len(split) == 11771
    sides = {}
    for s in split.samples:
        assert sides.setdefault(s.group, s.split) == s.split
    r = audit_dataset(split, workers=2, progress=False)
    assert r["leakage"] == {} and r["duplicate_groups_cross_split"] == 0
