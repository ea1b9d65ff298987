"""Boxes ``(x1, y1, x2, y2)`` in pixels (x2, y2 exclusive): clip, expand, crop, IoU, NMS
and greedy IoU matching.

One home for box arithmetic, shared by the data tools (training crops), the detection
pipeline (inference crops), the face detectors (NMS), the tracker, the detection
metrics and site calibration (IoU, matching), so training and inference cut faces with
the same rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from maskwatch.errors import ImageError

Box = tuple[int, int, int, int]

#: Largest coordinate a box may have, in pixels (far beyond any image that can be read).
MAX_COORD = 1_000_000


def bad_box(box) -> str | None:
    """Why a box's coordinates cannot be used (not 4 numbers, NaN, infinite, huge), or None."""
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        return f"box {box!r} is not numeric"
    if len(values) != 4:
        return f"box has {len(values)} coordinates, not 4"
    if not all(math.isfinite(v) for v in values):
        return f"box {tuple(values)} has a NaN or infinite coordinate"
    if any(abs(v) > MAX_COORD for v in values):
        return f"box {tuple(values)} has a coordinate beyond {MAX_COORD:,} pixels"
    return None


def clip_box(box, width: int, height: int) -> Box | None:
    """Round a box to whole pixels and clip it to the image; None when nothing is left."""
    x1, y1, x2, y2 = (int(round(v)) for v in box[:4])
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(width, x2), min(height, y2)
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def expand_box(box, margin: float, width: int, height: int) -> Box | None:
    """Grow a box by ``margin`` times its width/height on each side, then clip it."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return clip_box((x1 - dx, y1 - dy, x2 + dx, y2 + dy), width, height)


def crop(rgb: np.ndarray, box, margin: float = 0.0) -> np.ndarray:
    """Cut ``box`` grown by ``margin`` (fraction of its size per side, clipped) out of an
    image; the whole image when ``box`` is None. Raises ImageError when the box lies
    outside the image."""
    if box is None:
        return rgb
    h, w = rgb.shape[:2]
    grown = expand_box(box, margin, w, h)
    if grown is None:
        raise ImageError(f"box {tuple(box[:4])} lies outside the {w}x{h} image")
    x1, y1, x2, y2 = grown
    return np.ascontiguousarray(rgb[y1:y2, x1:x2])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes."""
    return float(iou_matrix([a[:4]], [b[:4]])[0, 0])


def iou_matrix(a, b) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (Nx4) and ``b`` (Mx4) -> NxM."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]),
                0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]),
                0, None)
    inter = w * h
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes, scores, iou_threshold: float = 0.4) -> list[int]:
    """Greedy non-maximum suppression: indices kept, best score first; a box is dropped
    when its IoU with a kept one exceeds ``iou_threshold``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou_matrix(boxes[i], boxes[rest])[0] <= iou_threshold]
    return keep


def greedy_pairs(ious: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (row, column) matches of an IoU matrix with IoU >= ``threshold``, best
    pairs first (ties in row-major order)."""
    if ious.size == 0:
        return []
    pairs = np.argwhere(ious >= threshold)
    order = np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_rows, used_cols, out = set(), set(), []
    for r, c in pairs[order].tolist():
        if r in used_rows or c in used_cols:
            continue
        used_rows.add(r)
        used_cols.add(c)
        out.append((r, c))
    return out

