"""VOC AP, scene loading and `maskwatch evaluate-detection`."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from detection_helpers import SkinClassifier, scene, voc_xml, write_image

from maskwatch.cli import main
from maskwatch.data import load_dataset
from maskwatch.detection import pipeline
from maskwatch.detection.evaluate import (
    Scene,
    average_precision,
    load_scenes,
    score_counting,
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
        (root / "annotations" / f"scene{i}.xml").write_text(voc_xml(f"scene{i}.jpg", objs))
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


def test_cli_evaluate_detection_says_what_it_left_out(voc_dir, capsys, monkeypatch):
    """An annotation file refused and a class it does not know change the score: said on
    stderr (as `data audit` says it), not silently dropped, with --quiet too (it hides
    progress bars only)."""
    monkeypatch.setattr(pipeline, "_load_classifier", lambda c, t, threshold=None: SkinClassifier())
    (voc_dir / "annotations" / "scene9.xml").write_text(
        "<!DOCTYPE x [<!ENTITY a 'b'>]><annotation>&a;</annotation>")
    (voc_dir / "annotations" / "scene1.xml").write_text(voc_xml("scene1.jpg", [
        ("with_mask", (200, 100, 360, 260)), ("dog", (10, 10, 50, 50))]))
    assert main(["evaluate-detection", "--data", str(voc_dir), "--json", "--threads", "1"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 2 and "scene9.xml: XML refused" in err[0]
    assert "left out while reading (" in err[1] and err[1].endswith(
        "); `maskwatch data audit` shows the dataset as read")
    assert "bad annotation file: 1" in err[1] and "class 'dog': 1" in err[1]
    assert main(["evaluate-detection", "--data", str(voc_dir), "--json", "--threads", "1",
                 "--quiet"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if "warning" in line] == err


def test_loading_warnings_are_capped_and_count_what_was_skipped(tmp_path):
    from collections import Counter

    from maskwatch.data import Dataset

    ds = Dataset(tmp_path, "voc", [], Counter({"class 'dog'": 3, "bad annotation file": 12}),
                 [f"note {i}" for i in range(12)])
    lines = ds.loading_warnings(limit=10)
    assert lines[:10] == [f"note {i}" for i in range(10)] and lines[10] == "... 2 more"
    assert lines[11] == (f"{tmp_path}: left out while reading (bad annotation file: 12, "
                         "class 'dog': 3); `maskwatch data audit` shows the dataset as read")
    assert ds.loading_warnings(hint=False)[-1].endswith("class 'dog': 3)")
    assert Dataset(tmp_path, "voc", []).loading_warnings() == []


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


# ---------------------------------------------------------------- face-free photos, difficult


def _grey(path: Path, size=(200, 100)) -> Path:
    return write_image(path, np.full((size[1], size[0], 3), 120, np.uint8))


def test_load_scenes_keeps_face_free_photos_and_difficult_flags(tmp_path):
    root = tmp_path / "voc"
    (root / "annotations").mkdir(parents=True)
    for name in ("a", "b", "c"):
        _grey(root / "images" / f"{name}.jpg")
    (root / "annotations" / "a.xml").write_text(voc_xml("a.jpg", [
        ("with_mask", (10, 10, 60, 60)), ("without_mask", (100, 10, 150, 60), True)]))
    (root / "annotations" / "b.xml").write_text(voc_xml("b.jpg", []))  # no face there
    (root / "annotations" / "c.xml").write_text(  # an object without a box: not face-free
        "<annotation><filename>c.jpg</filename><object><name>with_mask</name></object>"
        "</annotation>")
    ds = load_dataset(root)
    assert [(s.path.name, s.label, s.difficult) for s in ds.samples] == [
        ("a.jpg", "with_mask", False), ("a.jpg", "without_mask", True)]
    assert ds.empty_images == [root / "images" / "b.jpg"]
    scenes = load_scenes(root)
    assert [(s.path.name, s.boxes, s.labels, s.difficult) for s in scenes] == [
        ("a.jpg", [(10, 10, 60, 60), (100, 10, 150, 60)], ["with_mask", "without_mask"],
         [False, True]),
        ("b.jpg", [], [], []),
    ]
    # face-free photos alone are no set of scenes with boxes
    (root / "annotations" / "a.xml").unlink()
    with pytest.raises(LayoutError):
        load_scenes(root)


def test_load_scenes_reads_an_empty_yolo_label_file_as_a_face_free_photo(tmp_path):
    for name in ("a", "b", "c"):
        _grey(tmp_path / "images" / f"{name}.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.txt").write_text("mask\nno-mask\n")
    (tmp_path / "labels" / "a.txt").write_text("0 0.25 0.5 0.2 0.4\n")
    (tmp_path / "labels" / "b.txt").write_text("")  # annotated: nobody there
    (tmp_path / "labels" / "c.txt").write_text("bad line\n")  # not empty: a bad line
    ds = load_dataset(tmp_path)
    assert [(s.path.name, s.box) for s in ds.samples] == [("a.jpg", (30, 30, 70, 70))]
    assert ds.empty_images == [tmp_path / "images" / "b.jpg"]
    assert ds.skipped["bad label line"] == 1
    scenes = load_scenes(tmp_path)
    assert [(s.path.name, len(s.boxes)) for s in scenes] == [("a.jpg", 1), ("b.jpg", 0)]


def _faces(*faces):
    """(box, face score, label) -> normalised pipeline faces with class scores."""
    return [(box, score, label, {"with_mask": float(label == "with_mask"),
                                 "without_mask": float(label == "without_mask")})
            for box, score, label in faces]


#: One photo with a plain face and a difficult one, one photo annotated as face-free.
VOC_SCENES = [
    Scene(Path("a.jpg"), [(0, 0, 100, 100), (200, 0, 300, 100)],
          ["with_mask", "without_mask"], [False, True]),
    Scene(Path("e.jpg")),
]


def test_a_box_on_a_face_free_photo_is_false_and_difficult_faces_count_neither_way():
    predictions = [
        _faces(((0, 0, 100, 100), 0.9, "with_mask"),
               ((200, 0, 300, 100), 0.8, "without_mask"),   # on the difficult face: ignored
               ((205, 0, 300, 100), 0.6, "without_mask")),  # so is a second one there
        _faces(((10, 10, 60, 60), 0.95, "with_mask")),      # a false box, 50 px
    ]
    r = score_detections(VOC_SCENES, predictions, recall_iou=0.4)
    assert (r["images"], r["faces"], r["difficult_faces"], r["images_without_faces"]) == (
        2, 1, 1, 1)
    assert r["recall"] == 1.0 and r["recall_by_class"] == {"with_mask": 1.0}
    assert r["false_boxes_per_image"] == 0.5  # the box on the face-free photo, of 2 photos
    assert r["false_boxes_by_size"]["32-64px"] == 0.5
    # 4 boxes: 1 true, 1 false, 2 ignored
    assert (r["precision50"], r["recall50"]) == (0.5, 1.0)
    assert (r["precision30"], r["recall30"]) == (0.5, 1.0)
    # ranked 0.95 false, 0.9 true (the two on the difficult face left out): AP 1/2
    assert r["face_ap50"] == 0.5 and r["face_ap30"] == 0.5
    # without_mask has only a difficult face: no AP; with_mask: the false box ranks first
    assert r["ap50"] == {"with_mask": 0.5} and r["map50"] == 0.5
    # a missed difficult face lowers no recall, and the face-free photo still counts
    r = score_detections(VOC_SCENES, [predictions[0][:1], []], recall_iou=0.4)
    assert (r["recall"], r["recall50"], r["precision50"]) == (1.0, 1.0, 1.0)
    assert r["false_boxes_per_image"] == 0.0 and r["face_ap50"] == 1.0
    r = score_detections(VOC_SCENES, [predictions[0][:1], predictions[1]], recall_iou=0.4)
    assert (r["precision50"], r["false_boxes_per_image"]) == (0.5, 0.5)


def test_counting_score_with_a_face_free_photo_and_a_difficult_face():
    predictions = [
        _faces(((0, 0, 100, 100), 0.9, "with_mask"),
               ((200, 0, 300, 100), 0.8, "without_mask")),  # on the difficult face
        _faces(((10, 10, 60, 60), 0.95, "with_mask")),      # nobody there
    ]
    c = score_counting(VOC_SCENES, predictions, 0.5)
    assert (c["counted_boxes"], c["precision50"], c["recall50"]) == (3, 0.5, 1.0)
    # a.jpg: 2 counted for 1 face (+1 difficult): not off; e.jpg: 1 for none
    assert c["count_error_per_image"] == 0.5
    # a.jpg's only bare face is difficult: in neither count, whatever it was labelled
    assert (c["images_with_non_compliant"], c["missed"]) == (0, 0)
    assert (c["images_without_non_compliant"], c["flagged_wrongly"]) == (1, 0)
    assert c["shares"]["without_mask"]["annotated"] == 0.0
    # counting nobody on a.jpg's difficult face is not off either
    c = score_counting(VOC_SCENES, [predictions[0][:1], []], 0.5)
    assert (c["count_error_per_image"], c["precision50"]) == (0.0, 1.0)


def test_evaluate_detection_same_on_voc_and_its_manifest(tmp_path, capsys, monkeypatch):
    """`data split` carries difficult faces and face-free photos into the manifest, so
    evaluate-detection scores it as the VOC folder it came from."""
    monkeypatch.setattr(pipeline, "_load_classifier", lambda c, t, threshold=None: SkinClassifier())
    root = tmp_path / "voc"
    (root / "annotations").mkdir(parents=True)
    layouts = {"a": ((40, 60, 200, False), (360, 60, 200, True)),
               "b": ((200, 100, 160, True),), "c": ((200, 100, 160, False),)}
    for name, layout in layouts.items():
        img, boxes = scene(faces=layout)
        write_image(root / "images" / f"{name}.jpg", img)
        objs = [("with_mask" if f[3] else "without_mask", tuple(round(v) for v in b),
                 name == "a" and k == 1) for k, (f, b) in enumerate(zip(layout, boxes))]
        if name == "c":  # a face drawn there, but the photo is annotated as holding none
            objs = []
        (root / "annotations" / f"{name}.xml").write_text(voc_xml(f"{name}.jpg", objs))
    _grey(root / "images" / "d.jpg", (320, 240))
    (root / "annotations" / "d.xml").write_text(voc_xml("d.jpg", []))
    assert main(["data", "split", str(root), "--out", str(tmp_path / "m"), "--ratios", "1",
                 "0", "--quiet", "--workers", "1"]) == 0
    capsys.readouterr()
    reports = []
    for data in (root, tmp_path / "m" / "manifest.csv"):
        assert main(["evaluate-detection", "--data", str(data), "--json", "--quiet",
                     "--threads", "1"]) == 0
        report = json.loads(capsys.readouterr().out)
        report.pop("ms_per_image")
        reports.append(report)
    assert reports[0] == reports[1]
    r = reports[0]
    assert (r["images"], r["faces"], r["difficult_faces"], r["images_without_faces"]) == (
        4, 2, 1, 2)
    assert r["false_boxes_per_image"] >= 0.25  # the face on c.jpg


def test_scenes_of_one_split(tmp_path, capsys):
    """--split keeps the scenes `data split` put in a split, face-free photos included (a
    manifest keeps their split); data without splits is read whole; a split the data lacks
    is one line naming those it has."""
    from maskwatch.data import Sample, write_manifest

    def img(name: str):
        return tmp_path / f"{name}.jpg"

    samples = [Sample(img("a"), "with_mask", "train", "s", "a", (0, 0, 10, 10)),
               Sample(img("b"), "without_mask", "test", "s", "b", (0, 0, 10, 10)),
               Sample(img("b"), "with_mask", "test", "s", "b", (20, 0, 30, 10))]
    m = write_manifest(tmp_path / "m.csv", samples,
                       empty_images=[(img("e"), "test"), (img("f"), "train"), img("g")])

    def names(split: str) -> list[str]:
        return [s.path.name for s in load_scenes(m, split=split)]

    assert names("all") == ["a.jpg", "b.jpg", "e.jpg", "f.jpg", "g.jpg"]
    assert names("test") == ["b.jpg", "e.jpg"] and names("train") == ["a.jpg", "f.jpg"]
    with pytest.raises(LayoutError, match=r"no scene in split 'val' \(the data has: none, "
                                          r"test, train\)"):
        load_scenes(m, split="val")
    assert main(["evaluate-detection", "--data", str(m), "--split", "val", "-q"]) == 2
    assert "no scene in split 'val'" in capsys.readouterr().err
    whole = write_manifest(tmp_path / "n.csv", [Sample(img("a"), "with_mask", None, "s", "a",
                                                       (0, 0, 10, 10))])
    assert [s.path.name for s in load_scenes(whole, split="test")] == ["a.jpg"]


def test_no_face_found_scores_zero_map_and_unread_photos_are_said(tmp_path, capsys,
                                                                  monkeypatch):
    """A classifier that gets no face scores mAP 0, not no mAP at all; the text report
    says how many photos could not be read."""
    monkeypatch.setattr(pipeline, "_load_classifier", lambda c, t, threshold=None: SkinClassifier())
    root = tmp_path / "blank"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    write_image(root / "images" / "b0.png", np.full((240, 320, 3), 120, np.uint8))
    (root / "images" / "b1.png").write_bytes(b"not an image")
    for name in ("b0", "b1"):
        (root / "annotations" / f"{name}.xml").write_text(voc_xml(f"{name}.png", [
            ("with_mask", (20, 20, 80, 90)), ("without_mask", (150, 20, 210, 90))]))
    argv = ["evaluate-detection", "--data", str(root), "--quiet", "--threads", "1"]
    assert main(argv + ["--json"]) == 1
    r = json.loads(capsys.readouterr().out)
    assert r["recall"] == 0.0 and r["failed"] == 1
    assert r["ap50"] == {"with_mask": 0.0, "without_mask": 0.0} and r["map50"] == 0.0
    assert r["threshold"] == 0.5
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "1 scenes (1 could not be read), 2 faces" in out
    assert "mAP (with_mask, without_mask): at IoU 0.5 0.0%" in out
