"""VOC AP, scene loading and `maskwatch evaluate-detection`."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from detection_helpers import SkinClassifier, scene, write_image

from maskwatch.cli import main
from maskwatch.data import load_dataset
from maskwatch.detection import pipeline
from maskwatch.detection.evaluate import (
    Scene,
    average_precision,
    load_scenes,
    score_detections,
    voc_ap,
)
from maskwatch.errors import LayoutError

DATASETS = Path(os.environ.get("MASKWATCH_DATASETS",
                               Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))


def test_ap_matches_hand_computed_example():
    truths = {0: [(0, 0, 10, 10), (20, 20, 30, 30)], 1: [(0, 0, 10, 10)]}
    dets = [
        (0, 0.9, (0, 0, 10, 10)),    # TP (first box of image 0)
        (0, 0.8, (50, 50, 60, 60)),  # FP (nothing there)
        (0, 0.7, (1, 0, 10, 10)),    # FP (duplicate of an already matched box)
        (1, 0.6, (0, 1, 10, 11)),    # TP
    ]
    # recall 1/3, 1/3, 1/3, 2/3; precision 1, 1/2, 1/3, 1/2 -> AP = 1/3 * 1 + 1/3 * 1/2
    ap, tp, n = average_precision(dets, truths, 0.5)
    assert (tp, n) == (2, 3)
    assert ap == pytest.approx(0.5)
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)
    assert average_precision([], truths)[0] == 0.0
    # a difficult box neither helps nor hurts
    ap_d, _, n_d = average_precision(dets, truths, 0.5, {0: [False, True], 1: [False]})
    assert n_d == 2 and ap_d == pytest.approx(0.5 + 0.5 * 0.5)


def test_score_explains_a_hand_made_case():
    """Known answers: one exact match, one box matching only at IoU 0.4, two false boxes."""
    scenes = [
        Scene(Path("a.jpg"), [(0, 0, 100, 100), (200, 0, 300, 100)],
              ["with_mask", "without_mask"], [False, False]),
        Scene(Path("b.jpg"), [(0, 0, 50, 50)], ["without_mask"], [False]),
    ]
    def face(box, score, p_without):
        return (box, score, "x", {"with_mask": 1 - p_without, "without_mask": p_without})
    predictions = [
        [face((0, 0, 100, 100), 0.9, 0.1),      # IoU 1 with the with_mask face
         face((200, 0, 300, 40), 0.8, 0.8),     # IoU 0.4 with the without_mask face
         face((500, 500, 520, 520), 0.5, 0.5)],  # false, 20 px
        [face((300, 300, 400, 400), 0.7, 0.6)],  # false, 100 px
    ]
    r = score_detections(scenes, predictions, recall_iou=0.4)
    assert (r["images"], r["faces"]) == (2, 3)
    assert r["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["false_boxes_per_image"] == 1.0
    assert r["false_boxes_by_size"] == {"<32px": 0.5, "32-64px": 0.0, "64-128px": 0.5,
                                        ">=128px": 0.0}
    assert (r["precision50"], r["recall50"]) == (0.25, pytest.approx(1 / 3, abs=1e-4))
    assert (r["precision30"], r["recall30"]) == (0.5, pytest.approx(2 / 3, abs=1e-4))
    assert r["loose_match_share"] == 0.5
    # without_mask: found only at IoU 0.3 (first in its ranking) -> AP 0 at 0.5, 0.5 at 0.3
    assert r["ap50"] == {"with_mask": 1.0, "without_mask": 0.0}
    assert r["ap30"] == {"with_mask": 1.0, "without_mask": 0.5}
    assert (r["map50"], r["map30"]) == (0.5, 0.75)
    assert r["face_ap50"] == pytest.approx(1 / 3, abs=1e-4)
    assert r["face_ap30"] == pytest.approx(2 / 3, abs=1e-4)
    assert (r["face_px_median"], r["false_box_px_median"]) == (100.0, 60.0)
    # an unreadable scene (None) is counted as failed and left out of every figure
    r2 = score_detections([*scenes, scenes[1]], [*predictions, None], recall_iou=0.4)
    assert r2["failed"] == 1 and r2["map30"] == 0.75 and r2["images"] == 2


def _voc_xml(name: str, objects) -> str:
    objs = "".join(
        f"<object><name>{lab}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for lab, b in objects
    )
    return f"<annotation><filename>{name}</filename>{objs}</annotation>"


@pytest.fixture
def voc_dir(tmp_path):
    root = tmp_path / "voc"
    (root / "annotations").mkdir(parents=True)
    for i, layout in enumerate([((40, 60, 200, False), (360, 60, 200, True)),
                                ((200, 100, 160, True),)]):
        img, boxes = scene(faces=layout)
        write_image(root / "images" / f"scene{i}.jpg", img)
        objs = [("with_mask" if f[3] else "without_mask", tuple(round(v) for v in b))
                for f, b in zip(layout, boxes)]
        (root / "annotations" / f"scene{i}.xml").write_text(_voc_xml(f"scene{i}.jpg", objs))
    return root


def test_load_scenes_and_bad_xml(voc_dir):
    scenes = load_scenes(voc_dir)
    assert [len(s.boxes) for s in scenes] == [2, 1]
    assert scenes[0].labels == ["without_mask", "with_mask"]
    # an annotation with entities is refused (defusedxml) and skipped with a note
    (voc_dir / "annotations" / "scene9.xml").write_text(
        "<!DOCTYPE x [<!ENTITY a 'b'>]><annotation>&a;</annotation>")
    assert [len(s.boxes) for s in load_scenes(voc_dir)] == [2, 1]
    ds = load_dataset(voc_dir)
    assert ds.skipped["bad annotation file"] == 1
    assert any("XML refused" in note for note in ds.notes)
    with pytest.raises(LayoutError, match="no known dataset layout"):
        load_scenes(voc_dir / "images")


def test_cli_evaluate_detection_json(voc_dir, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "_load_classifier", lambda c, t, threshold=None: SkinClassifier())
    assert main(["evaluate-detection", "--data", str(voc_dir), "--json", "--quiet",
                 "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["images"] == 2 and report["faces"] == 3
    assert report["recall"] == 1.0 and report["false_boxes_per_image"] == 0
    assert report["ap50"] == {"with_mask": 1.0, "without_mask": 1.0}
    assert report["map50"] == 1.0 and report["map30"] == 1.0
    assert report["loose_match_share"] == 0.0 and report["precision30"] == 1.0


def test_cli_evaluate_faces_only_text(voc_dir, capsys):
    assert main(["evaluate-detection", "--data", str(voc_dir), "--faces-only", "--quiet",
                 "--detector", "fast", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "face recall" in out and "yunet" in out and "mAP" not in out
    assert "boxes matching only at IoU 0.3-0.5" in out


@pytest.mark.realdata
def test_real_scenes_recall():
    data = DATASETS / "face-mask-detection-853"
    if not (data / "annotations").is_dir():
        pytest.skip(f"real dataset not found at {data} (set MASKWATCH_DATASETS)")
    from maskwatch.detection.evaluate import evaluate_detection, load_scenes
    from maskwatch.detection.faces import make_face_detector

    scenes = load_scenes(data, limit=25)
    report = evaluate_detection(scenes, make_face_detector("centerface", threads=1).detect,
                                progress=False)
    assert report["images"] == 25
    # defaults: two passes, face threshold 0.2 (more faces found, more false boxes than 0.4)
    assert report["recall"] > 0.85 and report["recall_32px"] > 0.9
    assert report["false_boxes_per_image"] < 2.5
