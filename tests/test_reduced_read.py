"""Big photos are read no larger than detection needs (JPEG DCT scaling): boxes stay in the
photo's pixels, small faces are cropped from a finer decode, copies keep --copy-size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from detection_helpers import SkinClassifier
from PIL import Image

from maskwatch.cli import main
from maskwatch.detection import pipeline
from maskwatch.detection.evaluate import Scene, evaluate_detection
from maskwatch.detection.faces import FaceDetector
from maskwatch.detection.pipeline import CROP_MIN_SIDE, Detector
from maskwatch.detection.runner import run_detect
from maskwatch.imaging import load_rgb_reduced, open_image_scaled

BIG = (4000, 3000)
#: Faces in the big photo's pixels: a large one and one small enough that its crop falls
#: under CROP_MIN_SIDE in the 1/2-size read (60 px -> 30 px, 39 px with the margin).
LARGE, SMALL = (400, 500, 1000, 1300), (2600, 1200, 2660, 1280)


def _photo(path, size=BIG, exif: bytes | None = None):
    """A smooth, detailed JPEG (a gradient with stripes: DCT scaling keeps it recognisable)."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    rgb = np.stack([np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)),
                    np.broadcast_to((x + y) / 2, (h, w))], axis=2).astype(np.uint8)
    rgb[::40] = 0
    kwargs = {"exif": exif} if exif else {}
    Image.fromarray(rgb).save(path, "JPEG", quality=90, **kwargs)
    return path


class FixedFaces(FaceDetector):
    """Stand-in detector: the same faces, given in full-photo pixels, found in any size of
    that photo (scaled to the array it is shown)."""

    def __init__(self, boxes, full_width: int = BIG[0]):
        super().__init__(threshold=0.1, detect_size=320, refine_size=800)  # CenterFace's
        self.boxes, self.full_width = boxes, full_width
        self.shapes: list[tuple[int, ...]] = []

    def detect(self, rgb, min_side: float = 0.0):
        self.shapes.append(rgb.shape)
        f = rgb.shape[1] / self.full_width
        return [(x1 * f, y1 * f, x2 * f, y2 * f, 0.9) for x1, y1, x2, y2 in self.boxes]


class CropRecorder(SkinClassifier):
    def __init__(self):
        super().__init__()
        self.crops: list[tuple[int, ...]] = []

    def classify(self, faces):
        faces = list(faces)
        self.crops += [f.shape for f in faces]
        return super().classify(faces)


def _detector(boxes=(LARGE, SMALL)) -> tuple[Detector, CropRecorder]:
    clf = CropRecorder()
    return Detector(face_detector=FixedFaces(list(boxes)), classifier=clf, threads=1,
                    count_threshold=0.0), clf


def test_reduced_read_takes_a_dct_scale_and_says_how_far(tmp_path):
    path = _photo(tmp_path / "p.jpg", (1600, 1200))
    for wanted, shape in ((4, (300, 400)), (3.9, (600, 800)), (1, (1200, 1600)),
                          (100, (150, 200))):
        rgb, scale = load_rgb_reduced(path, lambda w, h, k=wanted: k)
        assert rgb.shape[:2] == shape
        assert scale == pytest.approx((1600 / shape[1], 1200 / shape[0]))
        assert np.array_equal(rgb, np.asarray(open_image_scaled(
            path, reduce=lambda w, h, k=wanted: k)[0]))  # Pillow's path gives the same
    # turned by its EXIF orientation: the factors follow the upright photo
    exif = Image.Exif()
    exif[274] = 6
    turned = _photo(tmp_path / "t.jpg", (1600, 1200), exif.tobytes())
    rgb, scale = load_rgb_reduced(turned, lambda w, h: 2)
    assert rgb.shape[:2] == (800, 600) and scale == pytest.approx((2.0, 2.0))
    # other formats are read whole
    png = tmp_path / "p.png"
    Image.open(path).save(png)
    rgb, scale = load_rgb_reduced(png, lambda w, h: 4)
    assert rgb.shape[:2] == (1200, 1600) and scale == (1.0, 1.0)


def test_detector_reads_no_larger_than_its_finest_pass_or_the_copy_needs(tmp_path):
    det = Detector(classifier=False, threads=1)
    assert det.face_detector.pass_pixels == 800 * 600 and det.read_pixels == 2
    path = _photo(tmp_path / "big.jpg")
    # 12 MP -> 1/2 (3 MP): 1/4 would hold under twice the finest pass's 480k pixels
    assert det.read(path)[0].shape[:2] == (1500, 2000)
    det.read_pixels = 1.0
    assert det.read(path)[0].shape[:2] == (750, 1000)
    assert det.read(path, copy_side=1600)[0].shape[:2] == (1500, 2000)
    assert det.read(path, copy_side=0)[0].shape[:2] == (3000, 4000)
    det.read_pixels = 2.0
    assert det.read(path, copy_side=2500)[0].shape[:2] == (3000, 4000)
    small = _photo(tmp_path / "small.jpg", (1600, 1200))
    assert det.read(small)[0].shape[:2] == (1200, 1600)  # 1/2 would hold too few pixels


def test_boxes_of_a_reduced_read_are_in_the_photos_pixels(tmp_path):
    path = _photo(tmp_path / "big.jpg")
    det, _ = _detector()
    rgb, scale = det.read(path)
    assert scale == (2.0, 2.0)
    faces = det.detect(rgb, check_bgr=False, scale=scale, source=path)
    whole = det.detect(det.read(path, copy_side=0)[0], check_bgr=False)
    for face, expected in zip(faces, (LARGE, SMALL)):
        assert face.box == pytest.approx(list(expected), abs=4)
    assert np.allclose([f.box for f in faces], [f.box for f in whole], atol=4)
    # a path given to detect is read the same way
    det.face_detector.shapes.clear()
    assert [f.box for f in det.detect(path)] == [f.box for f in faces]
    assert det.face_detector.shapes == [(1500, 2000, 3)]
    # min_face is in the photo's pixels too: the 60 px face goes, the 600 px one stays
    det.min_face = 100
    assert len(det.detect(rgb, check_bgr=False, scale=scale, source=path)) == 1
    # evaluate-detection reads as detect does and scores in the photo's pixels
    scene = Scene(path, [LARGE, SMALL], ["without_mask", "without_mask"], [False, False])
    det.min_face = 0
    report = evaluate_detection([scene], det.detect, progress=False, read=det.read)
    assert report["recall"] == 1.0


def test_small_faces_are_cropped_from_a_finer_decode(tmp_path, monkeypatch):
    path = _photo(tmp_path / "big.jpg")
    det, clf = _detector()
    rgb, scale = det.read(path)
    det.detect(rgb, check_bgr=False, scale=scale, source=path)
    large, small = clf.crops
    # the large face is cut from the 1/2 read (780 px with margins -> 390), the small one
    # from a read fine enough to give it at least CROP_MIN_SIDE pixels (here whole: 78 px)
    assert min(large[:2]) == pytest.approx(390, abs=3)
    assert min(small[:2]) >= CROP_MIN_SIDE and min(small[:2]) == pytest.approx(78, abs=3)
    # without the file (an array from elsewhere) the small crop stays as it is
    clf.crops.clear()
    det.detect(rgb, check_bgr=False, scale=scale)
    assert min(clf.crops[1][:2]) < CROP_MIN_SIDE
    # a file that cannot be read again: the crops from the reduced read are used
    clf.crops.clear()
    path.write_bytes(b"gone")
    assert len(det.detect(rgb, check_bgr=False, scale=scale, source=path)) == 2
    assert min(clf.crops[1][:2]) < CROP_MIN_SIDE
    monkeypatch.setattr(pipeline, "CROP_MIN_SIDE", 0)  # nothing small: no second read
    clf.crops.clear()
    det.detect(rgb, check_bgr=False, scale=scale, source=tmp_path / "missing.jpg")
    assert len(clf.crops) == 2


def test_detect_writes_boxes_in_photo_pixels_and_copies_at_copy_size(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    _photo(tmp_path / "in" / "big.jpg")
    options = dict(face_detector=FixedFaces([LARGE, SMALL]), classifier=CropRecorder(),
                   threads=1, count_threshold=0.0)
    for copy_size, copy_shape in ((1600, (2000, 1500)), (0, BIG), (2500, BIG)):
        out = tmp_path / f"out{copy_size}"
        assert run_detect([str(tmp_path / "in")], options, out=out, json_lines=True,
                          quiet=True, copy_size=copy_size) == 0
        record = json.loads(capsys.readouterr().out.splitlines()[0])
        assert np.allclose([f["box"] for f in record["faces"]], [LARGE, SMALL], atol=4)
        with Image.open(out / "big.jpg") as copy:
            assert copy.size == copy_shape
        drawn = np.asarray(Image.open(out / "big.jpg"))
        f = copy_shape[0] / BIG[0]  # the box is drawn where the face is in the copy
        x1, y1 = round(LARGE[0] * f), round((LARGE[1] + LARGE[3]) / 2 * f)
        assert drawn[y1, x1].max() - drawn[y1, x1].min() > 60  # a coloured line, not grey


def test_cli_copy_size_option(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "_load_classifier",
                        lambda c, t, threshold=None: SkinClassifier())
    monkeypatch.setattr(pipeline, "make_face_detector",
                        lambda name, threshold=None, **kw: FixedFaces([LARGE]))
    path = _photo(tmp_path / "big.jpg")
    assert main(["detect", str(path), "-o", str(tmp_path / "o"), "--copy-size", "0",
                 "--quiet", "--threads", "1"]) == 0
    with Image.open(tmp_path / "o" / "big.jpg") as copy:
        assert copy.size == BIG
    with pytest.raises(SystemExit):
        main(["detect", str(path), "--copy-size", "-5", "--no-save"])
    assert "--copy-size" in capsys.readouterr().err


def test_api_detect_reads_uploads_no_larger_than_detection_needs(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from maskwatch.serving.app import Settings, create_app

    data = _photo(tmp_path / "big.jpg").read_bytes()
    det, clf = _detector()
    app = create_app(detector=det, settings=Settings())
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        r = client.post("/api/detect", files={"file": ("big.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == BIG
    assert np.allclose([f["box"] for f in body["faces"]], [LARGE, SMALL], atol=4)
    assert det.face_detector.shapes == [(1500, 2000, 3)]  # the 1/2 read, not 12 MP
    assert min(clf.crops[1][:2]) >= CROP_MIN_SIDE  # the small face from a finer read


def test_calibrate_reads_scenes_as_detect_does(tmp_path):
    from maskwatch.detection.calibrate import run_detector

    path = _photo(tmp_path / "big.jpg")
    det, _ = _detector()
    scene = Scene(path, [LARGE], ["without_mask"], [False])
    (cached,) = run_detector([scene], det, progress=False)
    assert cached.size == BIG  # the photo's size, not the read's
    assert np.allclose(cached.boxes, [LARGE, SMALL], atol=4)
    assert det.face_detector.shapes == [(1500, 2000, 3)]


def test_big_arrays_are_shrunk_before_detection_and_cropped_whole(tmp_path):
    rgb = np.asarray(Image.open(_photo(tmp_path / "big.jpg")))
    det, clf = _detector()
    faces = det.detect(rgb, check_bgr=False)
    assert det.face_detector.shapes == [(1500, 2000, 3)]  # a 4K frame is detected at half
    assert np.allclose([f.box for f in faces], [LARGE, SMALL], atol=4)
    large, small = clf.crops
    assert min(large[:2]) == pytest.approx(390, abs=3)  # from the half-size array
    assert min(small[:2]) == pytest.approx(78, abs=3)  # from the whole one
    # arrays that hold no more than detection needs are left as they are
    det.face_detector.shapes.clear()
    det.detect(rgb[:1200, :1600], check_bgr=False)
    assert det.face_detector.shapes == [(1200, 1600, 3)]


def test_big_png_files_are_read_whole_then_shrunk_for_detection(tmp_path):
    png = tmp_path / "big.png"
    Image.open(_photo(tmp_path / "big.jpg", (2400, 1800))).save(png)
    clf = CropRecorder()
    det = Detector(face_detector=FixedFaces([(240, 300, 600, 780)], full_width=2400),
                   classifier=clf, threads=1, count_threshold=0.0)
    rgb, scale = det.read(png)
    assert rgb.shape[:2] == (1800, 2400) and scale == (1.0, 1.0)  # no DCT scale for PNG
    faces = det.detect(rgb, check_bgr=False, scale=scale, source=png)
    assert det.face_detector.shapes == [(900, 1200, 3)]
    assert np.allclose(faces[0].box, [240, 300, 600, 780], atol=3)
    # its annotated copy is shrunk too (a long side of at least --copy-size), box with it
    from maskwatch.detection.images import process_image

    for copy_size, size in ((1000, (1200, 900)), (0, (2400, 1800))):
        found, error, written = process_image(det, str(png), tmp_path / f"c{copy_size}.png",
                                               copy_size=copy_size)
        assert error is None and np.allclose(found[0].box, [240, 300, 600, 780], atol=3)
        copy = np.asarray(Image.open(written))
        assert copy.shape[1::-1] == size
        f = size[0] / 2400  # the box's left edge, halfway down, is coloured
        pixel = copy[round(540 * f), round(240 * f)].astype(int)
        assert pixel.max() - pixel.min() > 60


def test_heic_photos_get_jpeg_copies(tmp_path, capsys):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    (tmp_path / "in").mkdir()
    Image.open(_photo(tmp_path / "p.jpg", (400, 300))).save(tmp_path / "in" / "phone.heic")
    Image.open(tmp_path / "p.jpg").save(tmp_path / "in" / "phone.jpg")
    options = dict(face_detector=FixedFaces([(40, 50, 100, 130)], full_width=400),
                   classifier=CropRecorder(), threads=1, count_threshold=0.0)
    assert run_detect([str(tmp_path / "in")], options, out=tmp_path / "out", json_lines=True,
                      quiet=True) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["phone.heic", "phone.jpg"]
    assert all(len(r["faces"]) == 1 for r in records)
    copies = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert copies == ["phone-1.jpg", "phone.jpg"]  # the HEIC photo's copy is a JPEG too
    for name in copies:
        with Image.open(tmp_path / "out" / name) as copy:
            assert copy.format == "JPEG"


@pytest.mark.parametrize("size", [(20000, 3), (3, 20000), (9000, 1)])
def test_thin_strips_are_never_shrunk_to_no_pixels(tmp_path, size):
    """A panorama strip a few pixels high: its copy and its detection keep at least one
    pixel across (it crashed the whole run when its copy was shrunk to 2500 x 0)."""
    from maskwatch.detection.images import process_image
    from maskwatch.imaging import copy_factor

    assert copy_factor(*size, 1600) <= min(size)
    png = tmp_path / "strip.png"
    Image.new("RGB", size, (200, 150, 120)).save(png)
    det, _ = _detector(boxes=[])
    found, error, written = process_image(det, str(png), tmp_path / "copy.png", copy_size=1600)
    assert error is None and found == []
    w, h = Image.open(written).size
    assert min(w, h) >= 1 and max(w, h) >= 1600
    rgb = np.zeros((size[1], size[0], 3), np.uint8)
    det.detect(rgb, check_bgr=False)
    assert min(det.face_detector.shapes[-1][:2]) >= 1


class FailsOnBlue(FixedFaces):
    """Raises an unexpected error on a photo whose first pixel is blue (a stand-in for a
    bug that one odd photo reveals)."""

    def detect(self, rgb, min_side: float = 0.0):
        if rgb[0, 0, 2] > 200 and rgb[0, 0, 0] < 50:
            raise RuntimeError("boom\nsecond line")
        return super().detect(rgb, min_side)


@pytest.mark.parametrize("threads", [1, 0])  # one photo at a time, and one per core
def test_an_unexpected_failure_on_one_photo_does_not_end_the_run(tmp_path, capsys, threads):
    (tmp_path / "in").mkdir()
    for name, colour in (("a", (200, 90, 90)), ("b", (0, 0, 255)), ("c", (90, 200, 90))):
        Image.new("RGB", (400, 300), colour).save(tmp_path / "in" / f"{name}.png")
    options = dict(face_detector=FailsOnBlue([(40, 40, 140, 160)], full_width=400),
                   classifier=SkinClassifier(), threads=threads, count_threshold=0.0)
    rc = run_detect([str(tmp_path / "in")], options, out=tmp_path / "out", json_lines=True,
                    quiet=True)
    out, err = capsys.readouterr()
    assert rc == 1
    assert [Path(json.loads(line)["path"]).name for line in out.splitlines()] == ["a.png",
                                                                                  "c.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    failed = [line for line in err.splitlines() if "b.png" in line]
    assert len(failed) == 1 and "RuntimeError: boom second line" in failed[0]
    assert "1 input(s) failed" in err
