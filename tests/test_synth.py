"""Synthetic incorrect_mask faces (`maskwatch data synth-incorrect`) and the rule that
made-up faces never reach a val/test set or an evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from detection_helpers import FACE_IN_HEAD, head, masked_head, write_image

from maskwatch.cli import main
from maskwatch.data import Dataset, Sample, is_synthetic, load_dataset, read_manifest
from maskwatch.data.split import assign_splits
from maskwatch.data.synth import (
    draw_worn_mask,
    find_landmarks,
    lower_face_inside,
    move_mask_down,
    paste_donor_mask,
)
from maskwatch.errors import LayoutError
from maskwatch.imaging import load_rgb


def _face(rgb: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = FACE_IN_HEAD
    return np.ascontiguousarray(rgb[y1 - 20:y2 + 20, x1 - 20:x2 + 20])


def _changed_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.flatnonzero((np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 40).any(axis=1))


#: draw_mask's colour in the helpers' masked head
HELPER_MASK_BLUE = np.array([170, 205, 235])


def _mask_rows(rgb: np.ndarray) -> np.ndarray:
    """Rows where a fifth of the pixels have the helpers' mask colour."""
    rows = (np.abs(rgb.astype(int) - HELPER_MASK_BLUE).sum(axis=2) < 40).sum(axis=1)
    return np.flatnonzero(rows > 0.2 * rgb.shape[1])


def _assert_worn_wrongly(rows: np.ndarray, lm, where: str) -> None:
    """The rows a mask covers start below the nose (``nose``: above the mouth; ``chin``:
    below it) and reach down over the chin."""
    nose_y, mouth_y = lm.nose[1], lm.mouth[:, 1].mean()
    assert len(rows) and rows.min() > nose_y  # the nose stays out
    if where == "nose":
        assert rows.min() < mouth_y - 3  # the mouth is covered
    else:
        assert rows.min() > mouth_y  # the mouth shows too
    assert rows.max() > mouth_y + 0.3 * (mouth_y - nose_y)  # down over the chin


def test_landmarks_are_eyes_over_nose_over_mouth():
    lm = find_landmarks(_face(head()))
    assert lm is not None
    assert lm.eyes[0, 0] < lm.nose[0] < lm.eyes[1, 0]
    assert lm.eyes[:, 1].max() < lm.nose[1] < lm.mouth[:, 1].min()
    assert find_landmarks(np.full((120, 100, 3), 128, np.uint8)) is None


def test_mask_drawn_worn_right_covers_the_nose_but_not_the_eyes():
    """The with_mask counterpart: the same drawn mask, its top on the nose bridge."""
    face = _face(head())
    lm = find_landmarks(face)
    for seed in range(5):
        out = draw_worn_mask(face, lm, "worn", np.random.default_rng(seed))
        cx = int(lm.nose[0])
        body = _changed_rows(face[:, cx - 5:cx + 5], out[:, cx - 5:cx + 5])
        eye_y, nose_y = lm.eyes[:, 1].mean(), lm.nose[1]
        assert eye_y < body.min() < nose_y  # from the bridge: the nose tip is covered
        assert body.max() > lm.mouth[:, 1].mean()  # and the mouth
        e = int(eye_y)
        x1, x2 = int(lm.eyes[0, 0]) - 5, int(lm.eyes[1, 0]) + 5
        assert np.array_equal(face[e - 3:e + 3, x1:x2], out[e - 3:e + 3, x1:x2])
    with pytest.raises(ValueError, match="kind"):
        draw_worn_mask(face, lm, "moved", np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["nose", "chin"])
def test_mask_drawn_under_the_nose_or_on_the_chin(kind):
    face = _face(head())
    lm = find_landmarks(face)
    out = draw_worn_mask(face, lm, kind, np.random.default_rng(0))
    rows = _changed_rows(face, out)
    # the mask body (not its straps): changed pixels in the middle column band
    cx = int(lm.nose[0])
    body = _changed_rows(face[:, cx - 5:cx + 5], out[:, cx - 5:cx + 5])
    assert len(rows) and len(body)
    _assert_worn_wrongly(body, lm, kind)
    # the eyes are untouched (the straps run up beside them)
    eye_y = int(lm.eyes[:, 1].mean())
    x1, x2 = int(lm.eyes[0, 0]) - 5, int(lm.eyes[1, 0]) + 5
    assert np.array_equal(face[eye_y - 3:eye_y + 3, x1:x2], out[eye_y - 3:eye_y + 3, x1:x2])


def test_mask_moved_down_shows_the_nose_area():
    face = _face(masked_head())
    lm = find_landmarks(face)
    out = move_mask_down(face, lm, np.random.default_rng(1))
    unit = np.linalg.norm(lm.mouth.mean(0) - lm.eyes.mean(0))
    assert _mask_rows(out)[0] - _mask_rows(face)[0] > 0.3 * unit
    above = int(lm.eyes[:, 1].mean())
    assert np.array_equal(face[:above], out[:above])  # nothing above the nose bridge moves
    assert out.shape == face.shape


@pytest.mark.parametrize("where", ["nose", "chin", "worn"])
def test_donor_mask_pasted_under_the_nose_or_on_the_chin(where):
    """swap-nose / swap-chin: another face's real mask, moved below the bare face's nose;
    swap-worn: the same mask worn right, over the nose."""
    face, donor = _face(head()), _face(masked_head())
    lm, donor_lm = find_landmarks(face), find_landmarks(donor)
    assert lm is not None and donor_lm is not None and not len(_mask_rows(face))
    for seed in range(4):
        out = paste_donor_mask(face, lm, donor, donor_lm, where, np.random.default_rng(seed))
        rows = _mask_rows(out)
        if where == "worn":
            assert lm.eyes[:, 1].mean() < rows.min() < lm.nose[1]  # the nose is covered
            assert rows.max() > lm.mouth[:, 1].mean()  # and the mouth
        else:
            _assert_worn_wrongly(rows, lm, where)
        eye_y = int(lm.eyes[:, 1].mean())
        assert np.array_equal(face[:eye_y + 3], out[:eye_y + 3])  # eyes and above untouched
    with pytest.raises(ValueError, match="nose, chin or worn"):
        paste_donor_mask(face, lm, donor, donor_lm, "moved", np.random.default_rng(0))


def test_donor_faces_cut_off_below_the_eyes_are_refused():
    """A donor whose lower face leaves the picture would lend smeared edge pixels."""
    donor = _face(masked_head())
    lm = find_landmarks(donor)
    assert lower_face_inside(donor.shape, lm)
    mouth_y = int(lm.mouth[:, 1].mean())
    assert not lower_face_inside(donor[:mouth_y + 5].shape, lm)  # chin cut off
    assert not lower_face_inside(donor[:, :int(lm.nose[0])].shape, lm)  # one cheek cut off


def test_cli_synthesises_from_train_faces_only(tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("Train", "Test"):
        for i in range(2):
            write_image(data / split / "without_mask" / f"{i}.png", _face(head()))
            write_image(data / split / "with_mask" / f"{i}.png", _face(masked_head()))
    out = tmp_path / "synth"
    assert main(["data", "synth-incorrect", str(data), "--out", str(out), "--json",
                 "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["from_faces"] == 4 and summary["kinds"] == {"nose": 2, "chin": 2, "moved": 2}
    samples = read_manifest(out / "manifest.csv")
    assert len(samples) == 6 and all(s.label == "incorrect_mask" for s in samples)
    assert all(s.split == "train" and is_synthetic(s) for s in samples)
    assert all("/Train/" in s.source for s in samples)  # synthetic:KIND:ORIGINAL_PATH
    assert {s.source.split(":")[1] for s in samples} == {"nose", "chin", "moved"}
    assert all(Path(s.path).is_file() for s in samples)
    # it never replaces its manifest without --overwrite
    assert main(["data", "synth-incorrect", str(data), "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    # worn: the correctly worn counterparts, labelled with_mask, in their own folder
    assert main(["data", "synth-incorrect", str(data), "--out", str(out), "--json",
                 "--quiet", "--kinds", "chin,worn", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["kinds"] == {"chin": 2, "worn": 2}
    labels = {s.source.split(":")[1]: s.label for s in read_manifest(out / "manifest.csv")}
    assert labels == {"chin": "incorrect_mask", "worn": "with_mask"}
    assert len(list((out / "with_mask").glob("*.jpg"))) == 2
    # swap-nose / swap-chin: bare faces wearing the masks of the masked faces
    assert main(["data", "synth-incorrect", str(data), "--out", str(out), "--json",
                 "--quiet", "--kinds", "swap-nose,swap-chin,swap-worn", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["kinds"] == {"swap-nose": 2, "swap-chin": 2,
                                                            "swap-worn": 2}
    swapped = read_manifest(out / "manifest.csv")
    assert {s.source.split(":")[1]: s.label for s in swapped} == {
        "swap-nose": "incorrect_mask", "swap-chin": "incorrect_mask", "swap-worn": "with_mask"}
    assert all(is_synthetic(s) and len(_mask_rows(load_rgb(s.path))) for s in swapped)
    # ... which need masked faces to take masks from
    bare = tmp_path / "bare"
    write_image(bare / "Train" / "without_mask" / "0.png", _face(head()))
    assert main(["data", "synth-incorrect", str(bare), "--out", str(tmp_path / "s2"),
                 "--quiet", "--kinds", "swap-nose"]) == 2
    assert "need masked" in capsys.readouterr().err


def test_synthetic_faces_never_reach_val_or_test(tmp_path, capsys):
    real = [Sample(Path(f"r{i}.jpg"), "with_mask" if i % 2 else "without_mask", group=f"g{i}")
            for i in range(40)]
    fake = [Sample(Path(f"s{i}.jpg"), "incorrect_mask", source="synthetic:nose:x",
                   group=f"s{i}") for i in range(30)]
    ds = Dataset(Path("."), "manifest", real + fake)
    out = assign_splits(ds, [[k] for k in range(len(ds.samples))], (0.4, 0.3, 0.3), seed=0)
    assert {s.split for s in out if is_synthetic(s)} == {"train"}
    assert {s.split for s in out if not is_synthetic(s)} == {"train", "val", "test"}
    # a cluster of a real face and one made from it goes to train whole
    out = assign_splits(ds, [[0, 40], *[[k] for k in range(1, 40)],
                             *[[k] for k in range(41, 70)]], (0.1, 0.1, 0.8), seed=0)
    assert out[0].split == "train"

    from maskwatch.evaluation.evaluate import select_split
    from maskwatch.training.data import group_split

    assert not any(is_synthetic(s) for s in select_split(ds.samples, "all"))
    labels = np.array([{"with_mask": 0, "without_mask": 1, "incorrect_mask": 2}[s.label]
                       for s in ds.samples])
    _, val = group_split(ds.samples, labels, 0.5, seed=0)
    assert len(val) and not any(is_synthetic(ds.samples[i]) for i in val)

    # a manifest that puts a made-up face in test is refused when read
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,split,source,group\n"
                   "a.jpg,incorrect_mask,test,synthetic:chin:x,a\n")
    with pytest.raises(LayoutError, match="synthetic"):
        read_manifest(bad)
    # evaluate on a manifest mixing both scores the real faces only
    write_image(tmp_path / "m" / "real.png", _face(head()))
    write_image(tmp_path / "m" / "fake.png", _face(masked_head()))
    (tmp_path / "m" / "manifest.csv").write_text(
        "path,label,split,source,group\nreal.png,without_mask,test,,a\n"
        "fake.png,incorrect_mask,train,synthetic:moved:x,b\n")
    assert len(load_dataset(tmp_path / "m" / "manifest.csv").samples) == 2
    assert main(["evaluate", "--data", str(tmp_path / "m" / "manifest.csv"), "--split", "all",
                 "--json", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1


def test_cli_refuses_to_make_nothing(tmp_path, capsys):
    noise = tmp_path / "noise"
    for i in range(2):  # no face: YuNet finds no landmarks
        rgb = np.random.default_rng(i).integers(0, 256, (80, 80, 3), dtype=np.uint8)
        write_image(noise / "without_mask" / f"{i}.png", rgb)
    out = tmp_path / "synth"
    assert main(["data", "synth-incorrect", str(noise), "--out", str(out), "--quiet"]) == 2
    assert "no landmarks 4" in capsys.readouterr().err
    assert not (out / "manifest.csv").exists()  # no empty manifest taken as a whole one
    masked = tmp_path / "masked"
    write_image(masked / "with_mask" / "0.png", _face(masked_head()))
    assert main(["data", "synth-incorrect", str(masked), "--out", str(out), "--quiet",
                 "--kinds", "nose,chin"]) == 2
    assert "without_mask faces for nose, chin" in capsys.readouterr().err


@pytest.mark.parametrize("inside", [".", "synth"])
def test_cli_refuses_output_inside_a_class_folder_dataset(tmp_path, capsys, inside):
    data = tmp_path / "data"
    write_image(data / "without_mask" / "0.png", _face(head()))
    write_image(data / "with_mask" / "0.png", _face(masked_head()))
    assert main(["data", "synth-incorrect", str(data), "--out", str(data / inside),
                 "--quiet"]) == 2
    assert "inside the dataset folder" in capsys.readouterr().err
    assert len(load_dataset(data)) == 2  # a later run reads no made-up face as a real one


def test_interrupted_synthesis_leaves_no_faces_without_their_manifest(tmp_path,
                                                                      interrupt_saves):
    """Ctrl+C mid-way: the faces written so far go (without their manifest they would read
    as a real incorrect_mask class folder), and a rerun needs no --overwrite."""
    data = tmp_path / "data"
    for i in range(3):
        write_image(data / "Train" / "without_mask" / f"{i}.png", _face(head()))
    out = tmp_path / "synth"
    argv = ["data", "synth-incorrect", str(data), "--out", str(out), "--quiet"]
    interrupt_saves(3)
    assert main(argv) == 130
    assert not out.exists() or not any(out.rglob("*"))
    interrupt_saves(None)
    assert main(argv) == 0 and len(read_manifest(out / "manifest.csv")) == 6
