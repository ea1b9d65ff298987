"""`maskwatch calibrate`: fitting a site's box convention and thresholds, site models."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from detection_helpers import HEAD_BOXES, BlobDetector, SkinClassifier, draw_blob_face, site_scenes
from onnx_helpers import write_tiny_onnx

from maskwatch.cli import main
from maskwatch.detection import calibrate as cal
from maskwatch.detection import pipeline
from maskwatch.errors import ModelError
from maskwatch.inference.classifier import Classifier
from maskwatch.inference.modelfile import ModelInfo, SiteParams

#: Tiny ONNX classifier weights: P(without_mask) about 0.41 on unmasked blob faces and 0.20
#: on masked ones, so the default threshold 0.5 calls every face with_mask.
WEAK_WEIGHTS = [[0, -1.6], [0, 2.17], [0, 0]]


@pytest.fixture
def tiny_model(tmp_path):
    return write_tiny_onnx(tmp_path / "base.onnx", WEAK_WEIGHTS)


def _calibrate(tmp_path, tiny_model, convention, n=30, **kw):
    csv = site_scenes(tmp_path / "site", n, convention)
    return cal.calibrate(csv, tmp_path / "site.onnx", model=tiny_model, progress=False,
                         face_detector=BlobDetector(), classifier=SkinClassifier(), **kw)


def test_calibrate_recovers_a_head_box_convention(tmp_path, tiny_model):
    r = _calibrate(tmp_path, tiny_model, HEAD_BOXES)
    assert (r["fit_scenes"], r["held_out_scenes"]) == (21, 9)
    assert r["box_map"] == pytest.approx(HEAD_BOXES, abs=0.03)
    # the 10-13 px background faces (14-18 px as heads) are dropped, the smallest annotated
    # heads (56 px) kept; the 0.25 false patches stay out, the 0.35 faces come in
    assert 18 < r["min_face"] <= 56
    assert 0.25 < r["face_threshold"] <= 0.35
    before, after = r["held_out"]["before"], r["held_out"]["after"]
    # the default boxes, a little larger than faces, match these heads only just (IoU
    # about 0.52 for a perfect face box): the fitted boxes match them closely
    assert before["map50"] < 0.9 and after["map50"] > 0.95
    assert after["false_boxes_per_image"] < before["false_boxes_per_image"]
    # the copy carries what was fitted
    info = ModelInfo.load_json(tmp_path / "site.json")
    assert info.site.box_map == r["box_map"] and info.site.min_face == r["min_face"]
    assert info.site.face_threshold == r["face_threshold"]
    assert info.site.fitted["held_out_map50"] == {"before": before["map50"],
                                                  "after": after["map50"]}
    assert (tmp_path / "site.onnx").read_bytes() == tiny_model.read_bytes()


def test_held_out_scenes_are_rerun_as_the_site_model_runs_them(tmp_path, tiny_model):
    """A site model with a smallest face runs a coarser finer pass (or none): the held-out
    'after' figures come from the detector run that way, not from the fitting run."""
    finder = BlobDetector()
    csv = site_scenes(tmp_path / "site", 30, HEAD_BOXES)
    r = cal.calibrate(csv, tmp_path / "site.onnx", model=tiny_model, progress=False,
                      face_detector=finder, classifier=SkinClassifier())
    assert r["min_face"] > 0
    wanted = pipeline.refine_min_side(r["min_face"], r["box_map"])
    assert 0 < wanted < r["min_face"]
    assert finder.min_sides == [0.0] * 30 + [pytest.approx(wanted)] * r["held_out_scenes"]


def test_a_site_annotating_like_the_detector_keeps_the_box_convention(tmp_path, tiny_model):
    r = _calibrate(tmp_path, tiny_model, (1.0, 1.0, 0.0, 0.0))
    # the default box map matches such faces as well at IoU 0.5 (0.87 for a perfect box),
    # so there is nothing to gain and it stays
    assert r["box_map"] == list(pipeline.DEFAULT_BOX_MAPS["centerface"])
    assert r["held_out"]["after"]["map50"] >= r["held_out"]["before"]["map50"]


def test_nothing_to_gain_keeps_every_default(tmp_path, tiny_model):
    """Scenes whose faces all score above the default threshold, without background faces
    or false patches: the defaults are already best, and must be kept."""
    csv = site_scenes(tmp_path / "site", 24, (1.0, 1.0, 0.0, 0.0), scores=(0.45, 0.85),
                      extras=False)
    r = cal.calibrate(csv, tmp_path / "site.onnx", model=tiny_model, progress=False,
                      face_detector=BlobDetector(), classifier=SkinClassifier())
    assert r["fit"]["kept_default"]
    assert (r["box_map"], r["min_face"]) == (list(pipeline.DEFAULT_BOX_MAPS["centerface"]), 0)
    assert r["face_threshold"] == 0.4
    assert r["held_out"]["after"] == r["held_out"]["before"]
    assert ModelInfo.load_json(tmp_path / "site.json").site.is_default


def test_mask_threshold_keeps_without_mask_recall():
    classes = ["with_mask", "without_mask"]
    rng = np.random.default_rng(0)
    p_without = np.concatenate([rng.uniform(0.25, 0.45, 20), rng.uniform(0.02, 0.2, 20)])
    probs = np.stack([1 - p_without, p_without], axis=1)
    truth = np.arange(40) < 20
    t = cal.fit_mask_threshold(probs, truth, classes, default=0.5)
    assert 0.2 <= t <= 0.25
    assert cal.mask_rates(probs, truth, classes, t) == (1.0, 1.0)
    # already right: nothing to gain, the model's threshold stays
    assert cal.fit_mask_threshold(probs, truth, classes, default=0.22) == 0.22
    # too few faces of a class: no fit
    assert cal.fit_mask_threshold(probs[:24], truth[:24], classes, default=0.5) == 0.5


def test_split_is_seeded_and_disjoint():
    fit, held = cal.split_scenes(40, 0.25, seed=3)
    assert len(held) == 10 and not set(fit) & set(held) and len(fit) + len(held) == 40
    assert cal.split_scenes(40, 0.25, seed=3) == (fit, held)
    assert cal.split_scenes(40, 0.25, seed=4) != (fit, held)
    assert cal.split_scenes(10, 0.0, 0) == (list(range(10)), [])


def test_site_metadata_round_trip_and_rejection(tmp_path, tiny_model):
    info = ModelInfo.load_json(tiny_model.with_suffix(".json"))
    site = SiteParams("centerface", [1.3, 1.5, 0.0, -0.1], 24, 0.35, {"scenes": 40})
    info.site = site
    info.save_json(tmp_path / "m.json")
    back = ModelInfo.load_json(tmp_path / "m.json")
    assert back.site == site and back == info
    good = json.loads((tmp_path / "m.json").read_text())
    bad_sites = {
        "box_map of 3 numbers": {"box_map": [1, 1, 0]},
        "out of range": {"box_map": [10, 1, 0, 0]},
        "4 numbers": {"box_map": [1, "x", 0, 0]},
        "0-4096": {"min_face": -3},
        "outside 0..1": {"face_threshold": 1.5},
        "unknown field": {"colour": "red"},
    }
    for message, change in bad_sites.items():
        data = {**good, "site": {**good["site"], **change}}
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(ModelError, match=message.split(" of ")[0]):
            ModelInfo.load_json(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({**good, "site": [1, 2]}))
    with pytest.raises(ModelError, match="JSON object"):
        ModelInfo.load_json(tmp_path / "bad.json")
    # a model whose metadata is bad fails in one line on the command line
    (tmp_path / "bad.onnx").write_bytes(tiny_model.read_bytes())
    (tmp_path / "bad.json").write_text(json.dumps({**good, "site": {"detector": "x",
                                                                   "min_face": 1e9}}))
    with pytest.raises(ModelError):
        Classifier(tmp_path / "bad.onnx")


def _faces(capsys, argv) -> list[dict]:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.splitlines()[0])["faces"]


def test_cli_calibrate_then_detect_with_the_site_model(tmp_path, tiny_model, capsys,
                                                       monkeypatch):
    monkeypatch.setattr(pipeline, "make_face_detector",
                        lambda name, threshold=None, **kw: BlobDetector(threshold))
    csv = site_scenes(tmp_path / "site", 30, HEAD_BOXES)
    site = tmp_path / "site.onnx"
    assert main(["calibrate", str(csv), "--out", str(site), "--model", str(tiny_model),
                 "--quiet", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["box_map"] == pytest.approx(HEAD_BOXES, abs=0.03)
    # the weak classifier calls every face with_mask at 0.5: the site threshold fixes that
    assert report["mask_threshold"] < 0.41
    held = report["held_out"]
    assert held["after"]["mask_balanced_accuracy"] == 1.0
    assert held["after"]["map50"] > held["before"]["map50"] + 0.2
    assert Classifier(site).threshold == report["mask_threshold"]
    # an existing --out is refused
    assert main(["calibrate", str(csv), "--out", str(site), "--model", str(tiny_model),
                 "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err

    image = str(tmp_path / "site" / "s0.png")
    annotated = [tuple(int(v) for v in row.split(",")[1:5])
                 for row in csv.read_text().splitlines() if row.startswith("s0.png,")]
    base = _faces(capsys, ["detect", image, "--model", str(tiny_model), "--json", "--quiet"])
    fitted = _faces(capsys, ["detect", image, "--model", str(site), "--json", "--quiet"])
    assert len(base) == 4 and len(fitted) == 3  # the background face is dropped
    assert {f["label"] for f in base} == {"with_mask"}
    for box in annotated:  # fitted boxes sit on the annotated heads
        assert min(np.abs(np.subtract(f["box"], box)).max() for f in fitted) <= 2
    labels = {f["label"] for f in fitted}
    assert labels <= {"with_mask", "without_mask"} and "without_mask" in labels
    # explicit options still win over the site's
    small = _faces(capsys, ["detect", image, "--model", str(site), "--json", "--quiet",
                            "--min-face", "0", "--threshold", "0.5"])
    assert len(small) == 4 and {f["label"] for f in small} == {"with_mask"}

    def map50(model):
        assert main(["evaluate-detection", "--data", str(csv), "--model", str(model),
                     "--json", "--quiet"]) == 0
        return json.loads(capsys.readouterr().out)

    base_r, site_r = map50(tiny_model), map50(site)
    assert site_r["map50"] > base_r["map50"] + 0.2
    assert site_r["box_map"] == report["box_map"] and site_r["min_face"] == report["min_face"]
    assert site_r["site"] and not base_r["site"]
    assert base_r["box_map"] == list(pipeline.DEFAULT_BOX_MAPS["centerface"])
    assert site_r["loose_match_share"] < 0.1


def test_serve_applies_and_reports_the_site_model(tmp_path, tiny_model):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from maskwatch.detection.pipeline import Detector
    from maskwatch.serving.app import create_app

    csv = site_scenes(tmp_path / "site", 30, HEAD_BOXES)
    site = tmp_path / "site.onnx"
    r = cal.calibrate(csv, site, model=tiny_model, progress=False,
                      face_detector=BlobDetector())
    detector = Detector(face_detector=BlobDetector(), classifier=str(site))
    with TestClient(create_app(detector=detector), base_url="http://127.0.0.1") as c:
        info = c.get("/api/model").json()
        assert info["site"]["box_map"] == r["box_map"]
        assert info["threshold"] == r["mask_threshold"]
        image = (tmp_path / "site" / "s0.png").read_bytes()
        faces = c.post("/api/detect", files={"file": ("s0.png", image, "image/png")}).json()
    assert len(faces["faces"]) == 3  # the background face is dropped by the site's min_face


def test_faces_only_reads_the_site_from_the_model(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "make_face_detector",
                        lambda name, threshold=None, **kw: BlobDetector(threshold))
    csv = site_scenes(tmp_path / "site", 24, HEAD_BOXES)
    site = tmp_path / "site.onnx"
    cal.calibrate(csv, site, model=tiny_model, progress=False, face_detector=BlobDetector())
    assert main(["evaluate-detection", "--data", str(csv), "--model", str(site),
                 "--faces-only", "--json", "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["box_map"] == pytest.approx(HEAD_BOXES, abs=0.03)
    assert r["precision50"] == 1.0 and "map50" not in r


@pytest.mark.realdata
def test_real_scenes_with_head_boxes(tmp_path):
    """24 scenes of the 853 set, boxes grown to whole heads: the real detector's boxes are
    mapped onto them, and mAP on the held-out scenes rises."""
    from conftest import require_dataset

    from maskwatch.detection.evaluate import load_scenes
    from maskwatch.detection.faces import calibrate_box

    scenes = load_scenes(require_dataset("face-mask-detection-853"), limit=24)
    rows = ["name,x1,y1,x2,y2,classname"]
    for sc in scenes:
        (tmp_path / sc.path.name).symlink_to(sc.path)
        for box, label in zip(sc.boxes, sc.labels):
            x1, y1, x2, y2 = (round(v) for v in calibrate_box(box, HEAD_BOXES))
            rows.append(f"{sc.path.name},{x1},{y1},{x2},{y2},{label}")
    (tmp_path / "heads.csv").write_text("\n".join(rows) + "\n")
    r = cal.calibrate(tmp_path / "heads.csv", tmp_path / "site.onnx", threads=1,
                      holdout=0.25, progress=False)
    sw, sh, _, dy = r["box_map"]
    assert 1.2 < sw < 1.7 and 1.4 < sh < 2.0 and dy < -0.05
    assert r["held_out"]["after"]["map50"] > r["held_out"]["before"]["map50"] + 0.2


def test_default_boxes_are_a_little_larger_and_calibrate_sees_the_detectors_own():
    canvas = np.full((240, 320, 3), 120, np.uint8)
    draw_blob_face(canvas, (100, 60, 180, 160), 0.8, masked=False)
    raw = (100, 60, 180, 160)
    mapped = pipeline.calibrate_box(raw, pipeline.DEFAULT_BOX_MAPS["centerface"])
    default = pipeline.Detector(face_detector=BlobDetector(), classifier=SkinClassifier())
    assert default.detect(canvas)[0].box == [round(v) for v in mapped]
    own = pipeline.Detector(face_detector=BlobDetector(), classifier=SkinClassifier(),
                            site=False)
    assert own.detect(canvas)[0].box == list(raw)
    # a detector without a default box map reports its own boxes
    yunet = pipeline.Detector(face_detector="yunet", classifier=False, threads=1)
    assert yunet.box_map is None


# ---------------------------------------------------------------- difficult faces, face-free


def test_difficult_tiny_faces_do_not_set_the_smallest_face(tmp_path, tiny_model):
    """A tiny face annotated difficult (VOC) in every scene is neither found nor missed, as
    evaluate-detection counts it: it must not pull the smallest face down to its size, so
    the unannotated background faces of the same size are still dropped."""
    site_scenes(tmp_path / "site", 30, HEAD_BOXES, difficult=True)
    r = cal.calibrate(tmp_path / "site", tmp_path / "site.onnx", model=tiny_model,
                      progress=False, face_detector=BlobDetector(),
                      classifier=SkinClassifier())
    assert r["fit"]["annotated_face_px"]["p1"] > 50  # the 40-70 px faces as heads only
    assert 18 < r["min_face"] <= 56
    assert r["box_map"] == pytest.approx(HEAD_BOXES, abs=0.03)
    assert r["held_out"]["after"]["map50"] > 0.95


def _found(*boxes):
    """Cached detector output: one box per (box, P(without_mask)), face score 0.9."""
    return cal.Cached(boxes=np.asarray([b for b, _ in boxes], np.float64).reshape(-1, 4),
                      scores=np.full(len(boxes), 0.9),
                      probs=np.asarray([[1 - p, p] for _, p in boxes]).reshape(-1, 2),
                      size=(400, 200))


def test_difficult_faces_drive_neither_the_mask_threshold_nor_the_box_map():
    from maskwatch.detection.evaluate import Scene

    classes = ["with_mask", "without_mask"]
    scenes = [Scene("a.png", [(50, 50, 100, 100), (200, 50, 250, 100)],
                    ["without_mask", "with_mask"], [False, True]),
              Scene("e.png")]  # annotated as holding no face
    cache = [_found(((50, 50, 100, 100), 0.8), ((200, 50, 250, 100), 0.1)),
             _found(((10, 10, 60, 60), 0.7))]
    probs, truth = cal.mask_outcomes(scenes, cache, cal.Settings(), classes)
    assert probs.tolist() == [[pytest.approx(0.2), 0.8]] and truth.tolist() == [True]
    assert cal.face_sides(scenes).tolist() == [50.0]
    # scenes whose plain faces are annotated 1.5x wider than found, and whose difficult
    # faces (a detection on each) are annotated as found: the map is 1.5 x 1 all the same
    many = [Scene(f"s{k}.png", [(45, 50, 105, 100), (200, 50, 250, 100)],
                  ["with_mask", "with_mask"], [False, True]) for k in range(9)]
    found = [_found(((55, 50, 95, 100), 0.1), ((200, 50, 250, 100), 0.1))] * 9
    box_map, pairs = cal.fit_box_map(many, found, 0.4)
    assert pairs == 9 and box_map == pytest.approx((1.5, 1.0, 0.0, 0.0))


# ---------------------------------------------------------------- odd data and outputs


def _blank_scenes(root, n=12):
    """Grey photos whose CSV annotates two faces each: the detector finds none."""
    from detection_helpers import write_image

    root.mkdir(parents=True, exist_ok=True)
    rows = ["name,x1,y1,x2,y2,classname"]
    for k in range(n):
        write_image(root / f"b{k}.png", np.full((360, 480, 3), 120, np.uint8))
        rows += [f"b{k}.png,40,40,100,110,with_mask", f"b{k}.png,200,40,260,110,without_mask"]
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root / "boxes.csv"


def test_scenes_whose_faces_are_never_found_are_refused(tmp_path, tiny_model, capsys):
    """No annotated face found at all: nothing can be fitted, so no 'site model' of
    defaults is written with before/after mAP of None."""
    csv = _blank_scenes(tmp_path / "blank")
    with pytest.raises(cal.MaskwatchError, match="found none of the 24 annotated faces"):
        cal.calibrate(csv, tmp_path / "site.onnx", model=tiny_model, progress=False,
                      face_detector=BlobDetector(), classifier=SkinClassifier())
    assert not (tmp_path / "site.onnx").exists()


def test_one_class_sites_say_the_mask_threshold_was_kept(tmp_path, tiny_model, capsys):
    csv = site_scenes(tmp_path / "site", 30, HEAD_BOXES)
    csv.write_text(csv.read_text().replace(",with_mask", ",without_mask"))
    r = cal.calibrate(csv, tmp_path / "site.onnx", model=tiny_model, progress=False,
                      face_detector=BlobDetector(), classifier=SkinClassifier())
    assert r["mask_threshold"] == 0.5
    assert r["fit"]["mask_faces_by_class"]["with_mask"] == 0
    assert "kept the model's (0.5)" in r["fit"]["mask_fit"]
    assert "0 with_mask" in capsys.readouterr().err


def test_out_is_checked_before_the_detector_runs(tmp_path, tiny_model):
    csv = site_scenes(tmp_path / "site", 8, HEAD_BOXES)
    (tmp_path / "taken.json").write_text("{}")
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "dir.onnx").mkdir()
    for out, force, why in (("taken.onnx", False, "taken.json: exists"),
                            ("folder.onnx", True, "folder.json: is a folder"),
                            ("dir.onnx", True, "dir.onnx: is a folder"),
                            ("base.onnx", True, "is the source model")):
        finder = BlobDetector()
        with pytest.raises(cal.MaskwatchError, match=why):
            cal.calibrate(csv, tmp_path / out, model=tiny_model, progress=False, force=force,
                          face_detector=finder, classifier=SkinClassifier())
        assert finder.calls == 0
    assert not (tmp_path / "folder.onnx").exists()


def test_unreadable_scenes_are_counted_and_exit_1(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "make_face_detector",
                        lambda name, threshold=None, **kw: BlobDetector(threshold))
    csv = site_scenes(tmp_path / "site", 24, HEAD_BOXES)
    (tmp_path / "site" / "s3.png").write_bytes(b"not an image")
    assert main(["calibrate", str(csv), "--out", str(tmp_path / "site.onnx"), "--model",
                 str(tiny_model), "--quiet", "--threads", "1"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unreadable_scenes"] == 1
    assert "s3.png" in captured.err


def test_calibrating_a_site_model_starts_again_from_the_defaults(tmp_path, tiny_model, capsys):
    csv = site_scenes(tmp_path / "site", 30, HEAD_BOXES)
    first = cal.calibrate(csv, tmp_path / "site.onnx", model=tiny_model, progress=False,
                          face_detector=BlobDetector())
    assert first["mask_threshold"] < 0.41  # the weak model's threshold is refitted
    capsys.readouterr()
    again = cal.calibrate(csv, tmp_path / "again.onnx", model=tmp_path / "site.onnx",
                          progress=False, face_detector=BlobDetector())
    assert "replaced, not built on" in capsys.readouterr().err
    # the defaults are the base model's, not the first fit's; box maps do not stack
    assert again["defaults"]["mask_threshold"] == 0.5
    assert again["replaced_site"]["box_map"] == first["box_map"]
    assert again["box_map"] == pytest.approx(first["box_map"], abs=0.01)
    fitted = ModelInfo.load_json(tmp_path / "again.json").site.fitted
    assert fitted["source_model"] == "base.onnx" and fitted["model_threshold"] == 0.5


def test_a_tiny_held_out_part_is_flagged(tmp_path, tiny_model, capsys):
    r = _calibrate(tmp_path, tiny_model, HEAD_BOXES, n=25, holdout=0.2)
    assert r["held_out_scenes"] == 5
    assert "rough guide" in r["held_out"]["note"] and "5 held-out" in capsys.readouterr().err
    r = cal.calibrate(tmp_path / "site" / "boxes.csv", tmp_path / "all.onnx",
                      model=tiny_model, progress=False, holdout=0, face_detector=BlobDetector(),
                      classifier=SkinClassifier())
    assert "held_out" not in r and r["held_out_scenes"] == 0


def test_evaluate_detection_says_a_site_model_is_used_or_not(tmp_path, tiny_model, capsys,
                                                             monkeypatch):
    csv = site_scenes(tmp_path / "site", 24, HEAD_BOXES)
    site = tmp_path / "site.onnx"
    r = cal.calibrate(csv, site, model=tiny_model, progress=False, face_detector=BlobDetector())
    monkeypatch.setattr(pipeline, "make_face_detector",
                        lambda name, threshold=None, **kw: BlobDetector(threshold))
    argv = ["evaluate-detection", "--data", str(csv), "--model", str(site), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (f"site model's settings: box map {r['box_map']}, smallest face {r['min_face']} px, "
            f"face threshold {r['face_threshold']}, without_mask threshold "
            f"{r['mask_threshold']}") in out
    # fitted for another detector: not applied, and said so
    yunet = type("YuNet", (BlobDetector,), {"name": "yunet"})
    monkeypatch.setattr(pipeline, "make_face_detector",
                        lambda name, threshold=None, **kw: yunet(threshold))
    assert main(argv + ["--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["site"] is False
    assert ("its site settings were fitted for the centerface detector, so they are not "
            "applied with yunet") in captured.err
