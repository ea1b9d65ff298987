"""`maskwatch demo`: a sample photo, unmasked and with a drawn-on mask, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskwatch.errors import MaskwatchError
from maskwatch.files import make_folder


def sample_photo() -> Path:
    """The public-domain portrait of Grace Hopper that ships with matplotlib."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise MaskwatchError(f"{path}: matplotlib's sample photo is missing; reinstall matplotlib")
    return path


def draw_mask(rgb: np.ndarray, box, colour=(170, 205, 235)) -> np.ndarray:
    """Return a copy of ``rgb`` with a simple surgical-style mask over the face in ``box``:
    from mid-nose to the chin, with pleats and ear straps. The bundled three-class model
    reads it as worn wrongly (the nose bridge shows; drawn higher, its answer is unsteady:
    drawn masks are not what it was trained on)."""
    import cv2

    out = rgb.copy()
    x1, y1, x2, y2 = (int(v) for v in box[:4])
    w, h = x2 - x1, y2 - y1
    top, bottom = y1 + int(0.47 * h), y1 + int(0.98 * h)
    left, right = x1 + int(0.12 * w), x2 - int(0.12 * w)
    pts = np.array([
        [left, top], [right, top], [right + int(0.03 * w), (top + bottom) // 2],
        [x2 - int(0.22 * w), bottom], [x1 + int(0.22 * w), bottom],
        [left - int(0.03 * w), (top + bottom) // 2],
    ], np.int32)
    cv2.fillPoly(out, [pts], colour, cv2.LINE_AA)
    shade = tuple(int(c * 0.8) for c in colour)
    thick = max(1, w // 80)
    for k in range(1, 4):
        y = top + k * (bottom - top) // 4
        cv2.line(out, (left + w // 20, y), (right - w // 20, y), shade, thick, cv2.LINE_AA)
    for side in (left, right):
        cv2.line(out, (side, top + thick), (x1 if side == left else x2, y1 + int(0.45 * h)),
                 (235, 235, 235), max(1, w // 60), cv2.LINE_AA)
    return out


def make_demo_image(face_detector) -> np.ndarray:
    """The sample photo twice, side by side: as it is, and with a mask drawn on."""
    from maskwatch.imaging import load_rgb

    rgb = load_rgb(sample_photo())
    boxes = face_detector.detect(rgb)
    if not boxes:
        raise MaskwatchError("no face found in the sample photo")
    masked = draw_mask(rgb, boxes[0])
    gap = np.full((rgb.shape[0], 16, 3), 255, np.uint8)
    return np.concatenate([rgb, gap, masked], axis=1)


def run_demo(out: str | Path | None = ".", face_detector: str = "centerface",
             model: str | None = None, threads: int = 0, overwrite: bool = False,
             annotate=None) -> int:
    """Detect on the demo image and save ``maskwatch-demo.jpg`` in ``out`` (a ``-N``
    suffix instead of replacing an existing one, unless ``overwrite``; nothing when
    ``out`` is None), drawn by ``annotate`` (an Annotator)."""
    from maskwatch.detection.draw import Annotator
    from maskwatch.detection.pipeline import Detector
    from maskwatch.imaging import save_rgb

    if out is not None:  # before the models load: a folder that cannot be made fails first
        make_folder(out, f"{out}: cannot make this folder")
    detector = Detector(face_detector=face_detector, classifier=model, threads=threads)
    scene = make_demo_image(detector.face_detector)
    faces = detector.detect(scene, check_bgr=False)  # made here, RGB (the mask is blue)
    for f in faces:
        print(f"face at {f.box}: {f.label} ({f.score:.2f})")
    if out is None:
        return 0
    out_dir = Path(out)
    path = out_dir / "maskwatch-demo.jpg"
    n = 0
    while path.exists() and not overwrite:
        n += 1
        path = out_dir / f"maskwatch-demo-{n}.jpg"
    save_rgb(path, (annotate or Annotator())(scene, faces))
    print(path)
    return 0
