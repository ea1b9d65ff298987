"""Faces under the count threshold: shown and listed, left out of counts, alerts and
monitoring (``Face.counted``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from detection_helpers import BlobDetector, SkinClassifier, draw_blob_face, write_image

from maskwatch.cli import main
from maskwatch.detection import counted, pipeline
from maskwatch.detection.alerts import AlertHook
from maskwatch.detection.draw import draw_faces, face_counts, label_text
from maskwatch.detection.evaluate import Scene, score_counting
from maskwatch.detection.pipeline import COUNT_THRESHOLDS, Detector, Face
from maskwatch.detection.runner import CSV_COLUMNS, run_detect
from maskwatch.detection.tracker import IoUTracker
from maskwatch.errors import MaskwatchError

SURE, UNSURE = (40, 40, 120, 140), (250, 60, 310, 130)


def _photo() -> np.ndarray:
    """Two bare blob faces: one the detector is sure of (0.8), one it is not (0.2)."""
    canvas = np.full((240, 360, 3), 120, np.uint8)
    draw_blob_face(canvas, SURE, 0.8, masked=False)
    draw_blob_face(canvas, UNSURE, 0.2, masked=False)
    return canvas


def _detector(**kw) -> Detector:
    return Detector(face_detector=BlobDetector(threshold=0.1), classifier=SkinClassifier(),
                    threads=1, **kw)


def test_faces_under_the_count_threshold_are_kept_but_not_counted():
    det = _detector()
    assert det.count_threshold == COUNT_THRESHOLDS["centerface"] == 0.3
    faces = sorted(det.detect(_photo()), key=lambda f: f.box[0])
    assert [round(f.face_score, 2) for f in faces] == [0.8, 0.2]
    assert [f.label for f in faces] == ["without_mask", "without_mask"]  # both classified
    assert [f.counted for f in faces] == [True, False]
    assert [f.to_dict()["counted"] for f in faces] == [True, False]
    assert counted(faces) == faces[:1]
    # a lower count threshold counts both; one above both counts none
    assert all(f.counted for f in _detector(count_threshold=0.15).detect(_photo()))
    assert not any(f.counted for f in _detector(count_threshold=0.9).detect(_photo()))


def test_count_threshold_is_never_below_the_face_threshold_and_is_checked():
    assert _detector(count_threshold=0.05).count_threshold == pytest.approx(0.1)
    strict = Detector(face_detector=BlobDetector(threshold=0.5), classifier=False)
    assert strict.count_threshold == 0.5  # the face threshold is above the default 0.3
    with pytest.raises(MaskwatchError, match="count-threshold"):
        _detector(count_threshold=1.5)
    # a detector without a count threshold of its own counts every face it returns
    yunet = Detector(face_detector="yunet", classifier=False, threads=1)
    assert yunet.count_threshold == pytest.approx(yunet.face_detector.threshold)


def test_detect_lists_uncertain_faces_but_leaves_them_out_of_the_summary(
        tmp_path, capsys, monkeypatch):
    write_image(tmp_path / "in" / "photo.png", _photo())
    results = tmp_path / "faces.csv"
    options = dict(face_detector=BlobDetector(threshold=0.1), classifier=SkinClassifier(),
                   threads=1)
    assert run_detect([str(tmp_path / "in")], options, out=tmp_path / "out", json_lines=True,
                      results=results, quiet=True) == 0
    out, err = capsys.readouterr()
    record = json.loads(out.splitlines()[0])
    assert [f["counted"] for f in record["faces"]] == [True, False]
    rows = list(csv.DictReader(results.open()))
    assert list(rows[0])[:len(CSV_COLUMNS)] == CSV_COLUMNS
    assert [r["counted"] for r in rows] == ["1", "0"]
    summary = out + err
    assert "1 face(s)" in summary and "without_mask: 1" in summary
    assert "not counted: 1 uncertain face box(es) (face score under 0.3)" in summary
    # the labels' share, and the share the counted face's probability gives
    p = record["faces"][0]["scores"]["without_mask"]
    assert 0.5 < p < 0.99
    assert (f"without mask: 100.0% of faces by label (doubtful faces are flagged), "
            f"{100 * p:.1f}% by mean probability") in summary


def test_cli_count_threshold_reaches_the_detector(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "_load_classifier",
                        lambda c, t, threshold=None: SkinClassifier())
    monkeypatch.setattr(pipeline, "make_face_detector",
                        lambda name, threshold=None, **kw: BlobDetector(threshold))
    write_image(tmp_path / "photo.png", _photo())
    args = ["detect", str(tmp_path / "photo.png"), "--json", "--quiet", "--no-save",
            "--face-threshold", "0.1", "--threads", "1"]
    assert main(args) == 0
    assert [f["counted"] for f in json.loads(capsys.readouterr().out)["faces"]] == [True, False]
    assert main([*args, "--count-threshold", "0.1"]) == 0
    assert [f["counted"] for f in json.loads(capsys.readouterr().out)["faces"]] == [True, True]
    assert main([*args, "--count-threshold", "2"]) == 2
    assert "count-threshold must be in [0, 1]" in capsys.readouterr().err


def test_uncounted_faces_are_drawn_thin_with_a_mark_and_left_out_of_counts():
    sure = Face([20, 20, 120, 120], 0.8, "without_mask", 0.9)
    unsure = Face([160, 20, 260, 120], 0.25, "without_mask", 0.9, counted=False)
    assert label_text(unsure) == "? no mask 0.90" and label_text(sure) == "no mask 0.90"
    assert face_counts([sure, unsure]) == {"without_mask": 1}
    out = draw_faces(np.zeros((200, 300, 3), np.uint8), [sure, unsure], labels=False,
                     width=6)

    def edge_width(x):  # inked columns across the box's left edge, halfway down
        return int((out[70, x - 10:x + 10].max(axis=1) > 0).sum())
    assert edge_width(160) < edge_width(20)
    # exactly as a counted face drawn at half the width
    as_counted = Face(unsure.box, 0.8, "without_mask", 0.9)
    half = draw_faces(np.zeros((200, 300, 3), np.uint8), [sure, as_counted], labels=False,
                      width=3)
    assert np.array_equal(out[:, 140:], half[:, 140:])


def test_uncounted_faces_never_alert():
    hook = AlertHook(after=1, command="true")
    unsure = Face([0, 0, 50, 50], 0.25, "without_mask", 0.9, counted=False)
    assert hook.update([unsure], "cam", 0) is None
    sure = Face([0, 0, 50, 50], 0.8, "without_mask", 0.9)
    assert hook.update([unsure, sure], "cam", 1)["face"]["face_score"] == 0.8
    hook.wait(10)
    assert hook.errors == []


def _tracked(x, counted_face):
    return Face([x, 50, x + 60, 110], 0.9 if counted_face else 0.25, "without_mask", 0.9,
                {"without_mask": 0.9, "with_mask": 0.1}, counted=counted_face)


def test_a_person_counts_when_most_of_its_detections_count():
    tracker = IoUTracker(min_hits=3)
    # person A: counted in 2 of 5 frames; person B: in 4 of 5
    pattern_a = [False, True, False, True, False]
    pattern_b = [True, True, False, True, True]
    seen = []
    for i, (a, b) in enumerate(zip(pattern_a, pattern_b)):
        faces = tracker.update([_tracked(10 + 2 * i, a), _tracked(250 + 2 * i, b)])
        seen.append([f.counted for f in sorted(faces, key=lambda f: f.box[0])])
    # a face carries its person's standing, not its own frame's
    assert seen[-1] == [False, True]
    assert tracker.people() == 1
    assert tracker.counts() == {"without_mask": 1}
    assert all(not f.counted for f in tracker.carry() if f.box[0] < 200)


def test_counting_score_explains_what_a_user_reads_off_a_photo():
    scenes = [
        Scene(Path("a.jpg"), [(0, 0, 100, 100)], ["with_mask"], [False]),
        Scene(Path("b.jpg"), [(0, 0, 100, 100), (200, 0, 300, 100)],
              ["with_mask", "without_mask"], [False, False]),
    ]
    predictions = [
        [((0, 0, 100, 100), 0.9, "with_mask", {}),
         ((300, 300, 320, 320), 0.25, "without_mask", {})],  # an uncertain false box
        [((0, 0, 100, 100), 0.9, "with_mask", {}),
         ((200, 0, 300, 100), 0.28, "without_mask", {})],  # the real bare face, uncertain
    ]
    every = score_counting(scenes, predictions, 0.2)
    assert (every["counted_boxes"], every["precision50"], every["recall50"]) == (4, 0.75, 1.0)
    assert every["count_error_per_image"] == 0.5
    assert (every["flagged_wrongly"], every["images_without_non_compliant"]) == (1, 1)
    assert (every["missed"], every["images_with_non_compliant"]) == (0, 1)
    sure = score_counting(scenes, predictions, 0.3)
    assert (sure["counted_boxes"], sure["precision50"], sure["recall50"]) == (2, 1.0, 0.6667)
    assert sure["count_error_per_image"] == 0.5
    assert (sure["flagged_wrongly"], sure["missed"]) == (0, 1)
    # each class's share: annotated, by the counted faces' labels, by their mean probability
    with_p = [[(b, s, lab, {"with_mask": 0.2 if lab == "without_mask" else 0.9,
                            "without_mask": 0.8 if lab == "without_mask" else 0.1})
               for b, s, lab, _ in p] for p in predictions]
    shares = score_counting(scenes, with_p, 0.2)["shares"]
    assert shares["without_mask"] == {"annotated": 0.3333, "labelled": 0.5,
                                      "mean_probability": 0.45}
    assert shares["with_mask"] == {"annotated": 0.6667, "labelled": 0.5,
                                   "mean_probability": 0.55}
    assert "incorrect_mask" not in shares
    assert score_counting(scenes, with_p, 0.3)["shares"]["without_mask"] == {
        "annotated": 0.3333, "labelled": 0.0, "mean_probability": 0.1}
    # faces without labels: no photo flags
    faces_only = [[(b, s, None, {}) for b, s, _, _ in p] for p in predictions]
    assert "missed" not in score_counting(scenes, faces_only, 0.3)


def test_resuming_a_csv_without_the_counted_column_says_what_differs(tmp_path):
    write_image(tmp_path / "in" / "photo.png", _photo())
    old = tmp_path / "old.csv"
    old.write_text(",".join(c for c in CSV_COLUMNS if c != "counted")
                   + ",p_with_mask,p_without_mask\n")
    options = dict(face_detector=BlobDetector(threshold=0.1), classifier=SkinClassifier(),
                   threads=1)
    with pytest.raises(MaskwatchError, match="this run adds counted"):
        run_detect([str(tmp_path / "in")], options, results=old, resume=True, quiet=True)
