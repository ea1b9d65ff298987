"""Anonymise faces in a frame (pure: array in, new array out)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

#: Fraction of the face box added on each side, so hair, ears and chin are hidden too.
DEFAULT_BLUR_MARGIN = 0.15
#: Mosaic cells across a face before smoothing: few enough that nobody can be recognised.
CELLS = 6


def blur_faces(
    rgb: np.ndarray,
    boxes: Iterable[Sequence[float]],
    margin: float = DEFAULT_BLUR_MARGIN,
    copy: bool = True,
) -> np.ndarray:
    """Return ``rgb`` with an elliptical, heavily blurred patch over every box.

    Each face (box ``[x1, y1, x2, y2, ...]`` grown by ``margin``) is reduced to a mosaic of
    about ``CELLS`` cells across and then smoothed, so the blur cannot be undone by
    sharpening and shows no block edges. Pixels outside the ellipses are untouched.
    """
    import cv2

    out = np.ascontiguousarray(rgb.copy() if copy else rgb)
    h, w = out.shape[:2]
    for box in boxes:
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        bw, bh = x2 - x1, y2 - y1
        if bw <= 0 or bh <= 0:
            continue
        rx1 = int(np.clip(np.floor(x1 - bw * margin), 0, w))
        ry1 = int(np.clip(np.floor(y1 - bh * margin), 0, h))
        rx2 = int(np.clip(np.ceil(x2 + bw * margin), 0, w))
        ry2 = int(np.clip(np.ceil(y2 + bh * margin), 0, h))
        if rx2 - rx1 < 2 or ry2 - ry1 < 2:
            continue
        region = out[ry1:ry2, rx1:rx2]
        rw, rh = rx2 - rx1, ry2 - ry1
        cells = (max(1, round(CELLS * rw / max(bw, 1.0))), max(1, round(CELLS * rh / max(bh, 1.0))))
        small = cv2.resize(region, cells, interpolation=cv2.INTER_AREA)
        blurred = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_LINEAR)
        blurred = cv2.GaussianBlur(blurred, (0, 0), max(1.0, min(rw, rh) / 12))
        mask = np.zeros((rh, rw), np.uint8)
        cv2.ellipse(mask, (rw // 2, rh // 2), (max(1, rw // 2), max(1, rh // 2)), 0, 0, 360,
                    255, -1)
        inside = mask > 0
        region[inside] = blurred[inside]
    return out
