"""Face detectors, the detect pipeline, drawing and the `detect`/`demo` commands."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from detection_helpers import SkinClassifier, head, scene, write_image

from maskwatch.boxes import iou
from maskwatch.cli import main
from maskwatch.detection import faces as faces_mod
from maskwatch.detection import pipeline
from maskwatch.detection.draw import COLOURS, draw_faces
from maskwatch.detection.faces import (
    CenterFaceDetector,
    decode_centerface,
    make_face_detector,
)
from maskwatch.detection.pipeline import Detector, Face
from maskwatch.errors import MaskwatchError, ModelError


@pytest.fixture(scope="module", params=["centerface", "centerface-fp32", "yunet"])
def face_detector(request):
    return make_face_detector(request.param, threads=1)


@pytest.fixture(scope="module")
def detector():
    return Detector("centerface", classifier=SkinClassifier(), threads=1)


def _matches(found, expected, thr=0.4):
    return [max((iou(f[:4], e) for f in found), default=0.0) >= thr for e in expected]


def test_detectors_find_real_faces_masked_and_not(face_detector):
    img, boxes = scene()
    found = face_detector.detect(img)
    assert all(_matches(found, boxes)), (found, boxes)
    assert len(found) == 2
    for x1, y1, x2, y2, score in found:
        assert 0 <= x1 < x2 <= img.shape[1] and 0 <= y1 < y2 <= img.shape[0]
        assert isinstance(x1, int) and 0 < score <= 1


def test_small_and_border_faces(face_detector):
    img, boxes = scene(faces=((-60, 100, 200, False), (500, 300, 60, True), (300, 20, 40, False)))
    found = face_detector.detect(img)
    # the classic detector may miss the small masked face; the published CenterFace must
    # find all three. Its int8 copy scores that face lower in the first pass (under the
    # 0.2 that starts the finer pass) and finds it from face threshold 0.1.
    int8 = isinstance(face_detector, CenterFaceDetector) and face_detector.precision == "int8"
    expected = (boxes if face_detector.name == "centerface" and not int8
                else [boxes[0], boxes[2]])
    assert all(_matches(found, expected)), (found, boxes)
    if int8:
        low = make_face_detector("centerface", threshold=0.1, threads=1).detect(img)
        assert all(_matches(low, boxes)), (low, boxes)
    left = max(found, key=lambda b: iou(b[:4], boxes[0]))
    assert left[0] <= 8  # the face cut by the left edge starts at the edge


def test_large_photo_is_resized_and_boxes_map_back():
    det = make_face_detector("centerface", detect_size=480, threads=1)
    img, boxes = scene(width=4000, height=1000, faces=((3000, 300, 600, False),))
    found = det.detect(img)
    assert len(found) == 1 and iou(found[0][:4], boxes[0]) > 0.5


def test_no_face_and_bad_arguments():
    det = make_face_detector("centerface", threads=1)
    assert det.detect(np.full((100, 120, 3), 127, np.uint8)) == []
    with pytest.raises(MaskwatchError, match="HxWx3"):
        det.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(MaskwatchError, match="unknown face detector"):
        make_face_detector("haar")
    with pytest.raises(MaskwatchError, match="threshold"):
        make_face_detector("yunet", threshold=2.0)


def test_centerface_ships_with_its_licence(monkeypatch):
    path = faces_mod.centerface_path()
    assert path.parent.name == "assets" and path.parent.parent.name == "maskwatch"
    licence = (path.parent / "CENTERFACE-LICENSE.txt").read_text()
    assert "MIT License" in licence and f"{path.stat().st_size:,} bytes" in licence
    fp32 = faces_mod.centerface_path("fp32")
    assert fp32 != path and f"{fp32.stat().st_size:,} bytes" in licence
    assert path.stat().st_size < fp32.stat().st_size / 3  # the int8 copy is the default
    monkeypatch.setattr(faces_mod, "CENTERFACE_INT8_FILE", "missing.onnx")
    with pytest.raises(ModelError, match="reinstall maskwatch"):
        make_face_detector("centerface")
    make_face_detector("centerface-fp32")  # the published network is still there
    monkeypatch.setattr(faces_mod, "CENTERFACE_FILE", "missing.onnx")
    with pytest.raises(ModelError, match="reinstall maskwatch"):
        make_face_detector("centerface-fp32")


def test_centerface_is_fed_the_rgb_planes_of_any_view_padded_to_32():
    fd = make_face_detector("centerface", threads=1)
    feeds = []

    class Spy:
        def __init__(self, session):
            self.session = session

        def run(self, names, feed):
            feeds.append(next(iter(feed.values())).copy())
            return self.session.run(names, feed)

    fd.session = Spy(fd.session)
    rgb = np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8)
    view = rgb[5:45, 10:60]  # rows not contiguous, as the finer pass's region is
    assert fd._detect_scaled(view, 1.0, 0.3) == fd._detect_scaled(view.copy(), 1.0, 0.3)
    blob = feeds[0]
    assert blob.shape == (1, 3, 64, 64) and blob.dtype == np.float32
    assert np.array_equal(blob[0, :, :40, :50], view.transpose(2, 0, 1))  # R, G, B planes
    assert not blob[0, :, 40:].any() and not blob[0, :, :, 50:].any()
    assert np.array_equal(feeds[0], feeds[1])


def test_detector_builds_its_two_models_at_once(monkeypatch):
    import threading

    started = {"faces": threading.Event(), "classifier": threading.Event()}
    real_faces, real_classifier = pipeline.make_face_detector, pipeline._load_classifier
    overlapped = []

    def meet(me: str, other: str) -> None:  # each waits for the other: in vain one by one
        started[me].set()
        overlapped.append(started[other].wait(timeout=5))

    def faces(*args, **kwargs):
        meet("faces", "classifier")
        return real_faces(*args, **kwargs)

    def classifier(*args):
        meet("classifier", "faces")
        return real_classifier(*args)

    monkeypatch.setattr(pipeline, "make_face_detector", faces)
    monkeypatch.setattr(pipeline, "_load_classifier", classifier)
    d = Detector(threads=1)
    assert overlapped == [True, True] and d.classifier is not None
    with pytest.raises(ModelError, match="not found"):
        Detector(classifier="missing.onnx", threads=1)


def test_centerface_decoding():
    heat = np.zeros((8, 8), np.float32)
    heat[2, 3] = 0.9  # centre at ((3 + 0.5) * 4, (2 + 0.5) * 4) = (14, 10)
    heat[2, 4] = 0.6  # same face one cell over: suppressed by NMS
    scale = np.zeros((2, 8, 8), np.float32)
    scale[:, 2, 3] = np.log(2.0)  # 2 * 4 = 8 px high and wide
    scale[:, 2, 4] = np.log(2.0)
    offset = np.zeros((2, 8, 8), np.float32)
    out = decode_centerface(heat, scale, offset, 0.5, (32, 32))
    assert len(out) == 1
    assert np.allclose(out[0][:4], (10, 6, 18, 14)) and out[0][4] == pytest.approx(0.9)


def test_pipeline_labels_and_batches(detector):
    img, boxes = scene()
    detector.classifier.batches.clear()
    faces = detector.detect(img)
    assert detector.classifier.batches == [2]  # one batch per frame
    by_x = sorted(faces, key=lambda f: f.box[0])
    assert [f.label for f in by_x] == ["without_mask", "with_mask"]
    d = by_x[0].to_dict()
    assert set(d) == {"box", "label", "score", "face_score", "scores", "counted"}
    assert all(isinstance(v, int) for v in d["box"]) and len(d["box"]) == 4
    assert set(d["scores"]) == {"with_mask", "without_mask"}
    assert Face([1, 2, 3, 4], 0.5, track_id=7).to_dict()["track_id"] == 7


def test_draw_colours_and_sizes():
    img = np.zeros((200, 300, 3), np.uint8)
    faces = [Face([10, 60, 100, 150], 0.9, "with_mask", 0.9),
             Face([150, 60, 250, 150], 0.9, "without_mask", 0.8)]
    out = draw_faces(img, faces)
    assert not img.any()  # input untouched
    assert tuple(out[100, 10]) == COLOURS["with_mask"]
    assert tuple(out[100, 150]) == COLOURS["without_mask"]
    for shape in ((12, 12, 3), (3000, 4000, 3)):
        big = draw_faces(np.zeros(shape, np.uint8), [Face([0, 0, shape[1], shape[0]], 0.5,
                                                          "incorrect_mask", 0.5)])
        assert (big == COLOURS["incorrect_mask"]).all(axis=2).any()


@pytest.fixture
def fake_classifier(monkeypatch):
    fake = SkinClassifier()
    monkeypatch.setattr(pipeline, "_load_classifier", lambda c, t, threshold=None: fake)
    return fake


def test_cli_detect_images_json_csv_and_bad_inputs(tmp_path, capsys, fake_classifier):
    img, _ = scene()
    good = write_image(tmp_path / "in" / "people.jpg", img)
    write_image(tmp_path / "in" / "sub" / "empty_room.png", np.full((80, 90, 3), 200, np.uint8))
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "in" / "notes.txt").write_text("ignored in folders")
    bad_video = tmp_path / "clip.mp4"
    bad_video.write_bytes(os.urandom(2000))
    wide, wide_boxes = scene(width=10000, height=400, faces=((8000, 50, 250, False),))
    write_image(tmp_path / "wide.jpg", wide)
    out = tmp_path / "out"
    code = main(["detect", str(tmp_path / "in"), str(tmp_path / "missing.jpg"), str(bad_video),
                 str(tmp_path / "wide.jpg"), "--out", str(out), "--json", "--quiet",
                 "--csv", str(tmp_path / "faces.csv"), "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 1
    records = [json.loads(line) for line in captured.out.splitlines()]
    by_name = {os.path.basename(r["path"]): r for r in records}
    assert set(by_name) == {"people.jpg", "empty_room.png", "wide.jpg"}
    for r in records:
        assert r["frame"] is None
        for f in r["faces"]:
            assert set(f) == {"box", "label", "score", "face_score", "scores", "counted"}
    assert sorted(f["label"] for f in by_name["people.jpg"]["faces"]) == [
        "with_mask", "without_mask"]
    assert by_name["empty_room.png"]["faces"] == []
    assert iou(by_name["wide.jpg"]["faces"][0]["box"], wide_boxes[0]) > 0.5
    err = captured.err
    assert "broken.jpg" in err and "missing.jpg" in err and "clip.mp4" in err
    assert "empty_room.png: no face found" in err
    assert "without mask: " in err  # summary goes to stderr with --json
    assert (out / "people.jpg").is_file() and (out / "wide.jpg").is_file()
    rows = (tmp_path / "faces.csv").read_text().splitlines()
    assert rows[0].startswith("path,frame,face,x1,y1,x2,y2,label")
    assert len(rows) == 1 + 3 + 1  # a row per face, and one for the image without a face
    # a second run never overwrites earlier output or the CSV
    assert main(["detect", str(good), "--out", str(out), "--quiet"]) == 0
    assert (out / "people-1.jpg").is_file()
    assert main(["detect", str(good), "--csv", str(tmp_path / "faces.csv")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_demo(tmp_path, capsys, fake_classifier):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].endswith("maskwatch-demo.jpg") and os.path.isfile(lines[-1])
    assert any("without_mask" in s for s in lines) and any("with_mask (" in s for s in lines)


def test_demo_into_a_folder_it_cannot_make_fails_before_detecting(tmp_path, capsys,
                                                                   monkeypatch):
    import maskwatch.detection.pipeline as pipeline_module

    def no_models(*args, **kwargs):
        raise AssertionError("the models were loaded before the folder was checked")

    monkeypatch.setattr(pipeline_module, "Detector", no_models)
    (tmp_path / "a-file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "a-file" / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot make this folder" in err and len(err.strip().splitlines()) == 1


def test_head_fixture_is_the_sample_photo():
    assert head().shape == (300, 270, 3)


def test_box_calibration_moves_boxes_onto_annotation_style():
    from maskwatch.detection.faces import CenterFaceDetector, calibrate_box

    assert calibrate_box((0, 0, 100, 100), (1.0, 1.0, 0.0, 0.0)) == (0, 0, 100, 100)
    x1, y1, x2, y2 = calibrate_box((0, 0, 100, 200), (1.0, 0.9, 0.0, 0.11))
    assert (x1, x2) == (0, 100)
    assert y2 - y1 == pytest.approx(180)  # 0.9 of the height
    assert (y1 + y2) / 2 == pytest.approx(100 + 22)  # centre 0.11 heights lower
    assert CenterFaceDetector.box_calibration is not None


def test_centerface_rewritten_once_for_any_size_then_cached(tmp_path, monkeypatch):
    import onnxruntime as ort

    from maskwatch.detection.faces import centerface_path, load_dynamic_centerface

    model = load_dynamic_centerface(centerface_path("fp32"), tmp_path)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    assert shape[1] == 3 and all(isinstance(d, str) for d in (shape[0], shape[2], shape[3]))
    heat = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, 64, 96),
                                                                     np.float32)})[0]
    assert heat.shape == (2, 1, 16, 24)
    assert len(list(tmp_path.glob("centerface-dynamic-*.onnx"))) == 1

    def no_rewrite(path):
        raise AssertionError("the cached model should have been used")

    monkeypatch.setattr(faces_mod, "dynamic_centerface", no_rewrite)
    assert load_dynamic_centerface(centerface_path("fp32"), tmp_path) == model



def test_int8_centerface_finds_the_faces_the_published_one_does():
    """The shipped int8 copy and the published network box the sample photo's face alike."""
    from maskwatch.detection.demo import sample_photo
    from maskwatch.imaging import load_rgb

    rgb = load_rgb(sample_photo())
    int8 = make_face_detector("centerface").detect(rgb)
    fp32 = make_face_detector("centerface-fp32").detect(rgb)
    assert len(int8) == len(fp32) == 1
    assert iou(int8[0][:4], fp32[0][:4]) > 0.85
    assert abs(int8[0][4] - fp32[0][4]) < 0.1


def test_quantise_centerface_writes_a_working_int8_detector(tmp_path):
    """scripts/quantise_centerface.py's function: calibrated on photos, it loads as a
    detector that still finds the face, at a third of the size."""
    from maskwatch.detection.demo import sample_photo
    from maskwatch.detection.faces import CenterFaceDetector, centerface_path
    from maskwatch.export import quantise_centerface
    from maskwatch.imaging import load_rgb

    rgb = load_rgb(sample_photo())
    out = quantise_centerface(tmp_path / "cf8.onnx", [rgb, rgb[:, ::-1].copy()])
    assert out.stat().st_size < centerface_path("fp32").stat().st_size / 3
    faces = CenterFaceDetector(model_path=out, threads=1).detect(rgb)
    truth = make_face_detector("centerface-fp32").detect(rgb)
    assert len(faces) == 1 and iou(faces[0][:4], truth[0][:4]) > 0.8


def test_a_site_model_for_another_detector_is_not_applied_and_said(tmp_path, capsys):
    """Site settings fitted for YuNet's boxes would misplace CenterFace's: not applied,
    and `detect` (through run_detect) says so, --quiet or not."""
    from maskwatch.detection.runner import run_detect
    from maskwatch.inference.modelfile import SiteParams

    site = SiteParams(detector="yunet", box_map=[1.3, 1.4, 0.0, -0.1], min_face=30,
                      face_threshold=0.6)
    options = dict(face_detector="centerface", classifier=SkinClassifier(), threads=1,
                   site=site)
    detector = Detector(**options)
    assert detector.site is None and detector.unused_site is site
    assert detector.face_detector.threshold != 0.6 and detector.min_face != 30
    said = detector.unused_site_warning("site.onnx")
    assert said.startswith("warning: site.onnx: its site settings were fitted for the yunet")
    same = SiteParams(detector="centerface", min_face=30)
    fitted = Detector(**{**options, "site": same})
    assert fitted.unused_site_warning("x") is None and fitted.min_face == 30
    photo = tmp_path / "blank.png"
    write_image(photo, np.full((60, 80, 3), 128, np.uint8))
    assert run_detect([str(photo)], options, quiet=True) == 0
    assert "fitted for the yunet detector" in capsys.readouterr().err
