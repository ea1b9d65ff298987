"""The Python API a new user reaches first: ``maskwatch.Detector().detect(...)`` takes a path,
a Pillow image or an RGB array, and warns when an array looks BGR."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from detection_helpers import SkinClassifier, head, scene, write_image
from PIL import Image

import maskwatch
from maskwatch.detection.evaluate import Scene, evaluate_detection
from maskwatch.detection.pipeline import BGRWarning, looks_bgr
from maskwatch.errors import ImageError
from maskwatch.imaging import as_rgb


@pytest.fixture(scope="module")
def detector():
    return maskwatch.Detector("yunet", classifier=SkinClassifier(), threads=1)


def test_as_rgb_accepts_paths_pil_and_arrays(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    path = write_image(tmp_path / "red.png", rgb)
    assert (as_rgb(path) == rgb).all() and (as_rgb(str(path)) == rgb).all()
    assert (as_rgb(Image.fromarray(rgb)) == rgb).all()
    assert as_rgb(Image.fromarray(rgb[..., 0])).shape == (20, 30, 3)  # grey Pillow image
    assert as_rgb(rgb) is rgb
    assert as_rgb(rgb[..., 0]).shape == (20, 30, 3)  # grey array
    rgba = np.dstack([rgb, np.full((20, 30), 255, np.uint8)])
    assert (as_rgb(rgba) == rgb).all()
    assert as_rgb(rgb.astype(np.float32)).dtype == np.uint8
    with pytest.raises(ImageError, match="float array in 0..1"):
        as_rgb(np.full((4, 4, 3), 0.5, np.float32))
    with pytest.raises(ImageError, match="HxWx3"):
        as_rgb(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageError, match="path, a PIL image or an RGB array"):
        as_rgb([[1, 2, 3]])
    with pytest.raises(ImageError, match="no such file"):
        as_rgb(tmp_path / "missing.jpg")


def test_looks_bgr_on_skin_bands():
    skin = np.zeros((100, 100, 3), np.uint8)
    skin[:] = (205, 150, 120)  # light skin; darker tones keep red above blue too
    dark = np.zeros((100, 100, 3), np.uint8)
    dark[:] = (95, 62, 48)
    box = (10, 10, 90, 90)
    assert not looks_bgr(skin, [box]) and not looks_bgr(dark, [box])
    assert looks_bgr(skin[..., ::-1], [box]) and looks_bgr(dark[..., ::-1], [box])
    grey = np.full((100, 100, 3), 128, np.uint8)
    assert not looks_bgr(grey, [box])  # no colour cast: no claim
    assert not looks_bgr(skin[..., ::-1], [])  # no face: no claim
    # the majority of faces decides: one blue-lit face among skin-toned ones is not BGR
    two = np.concatenate([skin, skin, skin[..., ::-1]], axis=1)
    boxes = [(10, 10, 90, 90), (110, 10, 190, 90), (210, 10, 290, 90)]
    assert not looks_bgr(two, boxes)
    assert looks_bgr(two[..., ::-1], boxes)


def test_detect_takes_path_pil_or_array_alike(detector, tmp_path):
    img, _ = scene()
    path = write_image(tmp_path / "scene.png", img)
    results = [detector.detect(x) for x in (img, path, str(path), Image.open(path))]
    boxes = [[f.box for f in faces] for faces in results]
    assert len(boxes[0]) == 2
    assert all(b == boxes[0] for b in boxes)


def test_detect_warns_on_bgr_array_only(detector, tmp_path):
    rgb = np.ascontiguousarray(head())
    with warnings.catch_warnings():
        warnings.simplefilter("error", BGRWarning)
        assert detector.detect(rgb)  # RGB: no warning
    with pytest.warns(BGRWarning, match=r"bgr\[\.\.\., ::-1\]"):
        faces = detector.detect(np.ascontiguousarray(rgb[..., ::-1]))
    assert faces  # it still answers
    # a file is decoded by maskwatch itself, so it is never BGR: no warning
    path = write_image(tmp_path / "head.png", rgb)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BGRWarning)
        detector.detect(path)


def test_arrays_maskwatch_decoded_itself_are_not_checked_for_bgr(detector, tmp_path):
    """`detect` DIR decodes each photo itself and passes the array on: a blue-lit photo
    (faces bluer than red, as the check reads BGR) must not warn there."""
    from maskwatch.detection.images import process_image

    blue = np.ascontiguousarray(head()[..., ::-1])  # skin bluer than red, read as RGB
    assert looks_bgr(blue, [f.box for f in detector.detect(blue, check_bgr=False)])
    path = write_image(tmp_path / "blue-lit.png", blue)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BGRWarning)
        faces, error, _ = process_image(detector, str(path), None)
        assert faces and error is None
        assert detector.detect(blue, check_bgr=False)
        # evaluate-detection and calibrate decode their scenes themselves too
        scenes = [Scene(path=path, boxes=[tuple(f.box) for f in faces],
                        labels=["without_mask"] * len(faces))]
        assert evaluate_detection(scenes, detector.detect, progress=False)["recall"] == 1.0


def test_detect_decoded_calls_stand_in_detectors_plainly():
    """Serving, watch and detect take any object with detect(rgb) (tests pass stand-ins)."""
    from maskwatch.detection.pipeline import detect_decoded

    class StandIn:
        def detect(self, rgb):
            return [rgb.shape]

    assert detect_decoded(StandIn(), np.zeros((4, 5, 3), np.uint8)) == [(4, 5, 3)]


def _readme_block(marker: str) -> str:
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if marker in b)


def test_readme_video_loop_runs(tmp_path, monkeypatch):
    import imageio_ffmpeg

    from maskwatch.detection.video import VideoSource

    frames = [scene(width=160, height=120, faces=((10 + 4 * i, 10, 70, False),))[0]
              for i in range(8)]
    writer = imageio_ffmpeg.write_frames(str(tmp_path / "door.mp4"), (160, 120), fps=8,
                                         codec="libx264", macro_block_size=1,
                                         ffmpeg_log_level="error")
    writer.send(None)
    for f in frames:
        writer.send(f)
    writer.close()
    monkeypatch.chdir(tmp_path)
    code = _readme_block("VideoSource(")
    assert len(code.strip().splitlines()) <= 12  # the promised ten-line loop
    printed = []
    exec(compile(code, "README.md", "exec"), {"print": printed.append})  # noqa: S102
    out = VideoSource("door-checked.mp4")
    assert (out.width, out.height) == (160, 120) and len(list(out.frames())) == 8
    counts = printed[-1]
    assert isinstance(counts, dict) and sum(counts.values()) == 1  # one person walking


def test_readme_first_python_example_runs(tmp_path, monkeypatch):
    img, _ = scene()
    write_image(tmp_path / "street.jpg", img)
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(_readme_block("Detector().detect("), "README.md", "exec"),  # noqa: S102
         {"print": printed.append})
    # one bare face, one with a drawn mask (below the nose bridge: worn wrongly)
    assert sorted(label for label, _ in printed[-1]) == ["incorrect_mask", "without_mask"]
