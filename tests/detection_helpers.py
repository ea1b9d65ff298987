"""Shared helpers for the detection tests: a sample face, scenes, and a fake classifier."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from maskwatch.detection.demo import draw_mask, sample_photo
from maskwatch.detection.faces import FaceDetector
from maskwatch.imaging import load_rgb

# where the face sits in matplotlib's grace_hopper.jpg (512x600), with some context
HEAD = (130, 90, 400, 390)  # x1, y1, x2, y2 of the crop we paste
FACE_IN_HEAD = (41, 39, 231, 248)  # the face box inside that crop


@lru_cache(maxsize=1)
def head() -> np.ndarray:
    """A head-and-shoulders crop of the sample photo (270 x 300 px)."""
    rgb = load_rgb(sample_photo())
    x1, y1, x2, y2 = HEAD
    return np.ascontiguousarray(rgb[y1:y2, x1:x2])


def masked_head() -> np.ndarray:
    return draw_mask(head(), FACE_IN_HEAD)


def paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int, width: int):
    """Paste ``patch`` resized to ``width`` at (x, y), clipped at the canvas edges; returns
    the expected face box in canvas pixels (clipped)."""
    scale = width / patch.shape[1]
    p = cv2.resize(patch, (width, round(patch.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    h, w = canvas.shape[:2]
    cx1, cy1 = max(0, x), max(0, y)
    cx2, cy2 = min(w, x + p.shape[1]), min(h, y + p.shape[0])
    canvas[cy1:cy2, cx1:cx2] = p[cy1 - y:cy2 - y, cx1 - x:cx2 - x]
    fx1, fy1, fx2, fy2 = (v * scale for v in FACE_IN_HEAD)
    return (max(0, x + fx1), max(0, y + fy1), min(w, x + fx2), min(h, y + fy2))


def scene(width=640, height=480, faces=((40, 60, 200, False), (360, 60, 200, True))):
    """A grey scene with the sample head pasted at (x, y, width, masked) positions; returns
    the image and the expected face boxes."""
    canvas = np.full((height, width, 3), 120, np.uint8)
    boxes = []
    for x, y, w, masked in faces:
        boxes.append(paste(canvas, masked_head() if masked else head(), x, y, w))
    return canvas, boxes




@dataclass
class Prediction:
    label: str
    score: float
    scores: dict


@dataclass
class Info:
    classes: list


class SkinClassifier:
    """Test stand-in for maskwatch's Classifier: "without_mask" when the lower half of the
    crop is mostly skin-coloured, else "with_mask"."""

    classes = ["with_mask", "without_mask"]
    info = Info(classes=["with_mask", "without_mask"])
    threshold = 0.5  # its labels are the most likely class

    def __init__(self):
        self.batches: list[int] = []

    def predict_proba(self, faces) -> np.ndarray:
        out = []
        for f in faces:
            h, w = f.shape[:2]
            lower = f[h // 2 + h // 8: h - h // 8, w // 4: w - w // 4].reshape(-1, 3).astype(int)
            r, g, b = lower[:, 0], lower[:, 1], lower[:, 2]
            skin = float(np.mean((r > 95) & (r > g + 10) & (r > b + 15))) if len(lower) else 0
            p = float(np.clip(skin * 1.6, 0.02, 0.98))
            out.append([1 - p, p])
        return np.asarray(out).reshape(-1, 2)

    def classify(self, faces):
        faces = list(faces)
        self.batches.append(len(faces))
        out = []
        for p in self.predict_proba(faces):
            i = int(np.argmax(p))
            out.append(Prediction(self.classes[i], float(p[i]),
                                  dict(zip(self.classes, map(float, p)))))
        return out


def write_image(path: Path, rgb: np.ndarray) -> Path:
    from maskwatch.imaging import save_rgb

    save_rgb(path, rgb)
    return path


# ---------------------------------------------------------------- a site's scenes

#: Red value of every face pixel; skin pixels have green SKIN_G and a blue that encodes the
#: face score; masked faces' lower halves are MASK coloured.
FACE_R, SKIN_G = 200, 150
MASK = (200, 60, 240)
#: A "whole head" annotation rule: width x1.4, height x1.6, centre 0.15 face heights up.
HEAD_BOXES = (1.4, 1.6, 0.0, -0.15)


class BlobDetector(FaceDetector):
    """Test stand-in for the face detector: every connected patch of red FACE_R is a face,
    boxed tightly; its score is (blue - 50) / 150 over its skin pixels. Named like the
    default detector, so site settings fitted with it apply to it."""

    name = "centerface"

    def __init__(self, threshold: float | None = None, **_ignored):
        self.threshold = 0.4 if threshold is None else float(threshold)
        self.calls = 0
        self.min_sides: list[float] = []  # what the pipeline asked for, call by call

    def detect(self, rgb, min_side: float = 0.0):
        self.calls += 1
        self.min_sides.append(min_side)
        mask = (rgb[:, :, 0] == FACE_R).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        out = []
        for i in range(1, n):
            x, y, w, h = (int(v) for v in stats[i, :4])
            part = rgb[labels == i]
            skin = part[part[:, 1] == SKIN_G]
            score = (float(skin[:, 2].mean()) - 50) / 150 if len(skin) else 0.0
            if score >= self.threshold:
                out.append((x, y, x + w, y + h, score))
        return sorted(out, key=lambda b: -b[4])


def draw_blob_face(canvas, box, score: float, masked: bool) -> None:
    x1, y1, x2, y2 = box
    canvas[y1:y2, x1:x2] = (FACE_R, SKIN_G, round(50 + 150 * score))
    if masked:
        canvas[(y1 + y2) // 2:y2, x1:x2] = MASK


def voc_xml(name: str, objects) -> str:
    """A Pascal VOC file; objects are (label, box) or (label, box, difficult)."""
    objs = "".join(
        f"<object><name>{o[0]}</name><difficult>{int(o[2]) if len(o) > 2 else 0}</difficult>"
        f"<bndbox><xmin>{o[1][0]}</xmin><ymin>{o[1][1]}</ymin><xmax>{o[1][2]}</xmax>"
        f"<ymax>{o[1][3]}</ymax></bndbox></object>"
        for o in objects
    )
    return f"<annotation><filename>{name}</filename>{objs}</annotation>"


def site_scenes(root: Path, n: int, convention=HEAD_BOXES, seed: int = 0,
                scores=(0.35, 0.85), extras: bool = True, difficult: bool = False) -> Path:
    """Write ``n`` PNG scenes of blob faces and a box CSV whose boxes follow ``convention``
    (a box map from the tight blob boxes to the annotated ones). Each scene has three
    annotated faces (40-70 px, scores drawn from ``scores``, half masked) and, with
    ``extras``, a small unannotated background face (10-13 px, score 0.8) and, in every
    other scene, an unannotated false patch (score 0.25). Returns the CSV path.

    ``difficult``: also a tiny bare face (10-13 px, score 0.8) in the sixth cell, annotated
    as difficult in Pascal VOC files written beside the CSV (``root/annotations``, which
    the CSV does not know of): ``root`` then reads as a VOC dataset."""
    from maskwatch.detection.faces import calibrate_box

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["name,x1,y1,x2,y2,classname"]
    if difficult:
        (root / "annotations").mkdir(exist_ok=True)
    for k in range(n):
        canvas = np.full((360, 480, 3), 120, np.uint8)
        cells = rng.permutation(6)
        objects = []
        for j, cell in enumerate(cells[:5]):
            cx, cy = 80 + 160 * (cell % 3), 90 + 180 * (cell // 3)
            if j < 3:
                side = int(rng.integers(40, 71))
                score, masked = float(rng.uniform(*scores)), bool(rng.random() < 0.5)
            elif not extras:
                continue
            elif j == 3:
                side, score, masked = int(rng.integers(10, 14)), 0.8, False
            elif k % 2:
                side, score, masked = 30, 0.25, False
            else:
                continue
            box = (cx - side // 2, cy - side // 2, cx + side // 2, cy + side * 6 // 10)
            draw_blob_face(canvas, box, score, masked)
            if j < 3:
                a = [round(v) for v in calibrate_box(box, convention)]
                label = "with_mask" if masked else "without_mask"
                rows.append(f"s{k}.png,{a[0]},{a[1]},{a[2]},{a[3]},{label}")
                objects.append((label, a, 0))
        if difficult:
            cx, cy, side = 80 + 160 * (cells[5] % 3), 90 + 180 * (cells[5] // 3), 10 + k % 4
            box = (cx - side // 2, cy - side // 2, cx + side // 2, cy + side * 6 // 10)
            draw_blob_face(canvas, box, 0.8, False)
            objects.append(("without_mask", [round(v) for v in calibrate_box(box, convention)],
                            1))
            (root / "annotations" / f"s{k}.xml").write_text(voc_xml(f"s{k}.png", objects))
        write_image(root / f"s{k}.png", canvas)
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root / "boxes.csv"
