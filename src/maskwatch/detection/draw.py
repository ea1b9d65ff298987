"""Draw face boxes and labels onto a frame (pure: array in, new array out)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from maskwatch.labels import INCORRECT_MASK, WITH_MASK, WITHOUT_MASK

#: Box colours (RGB): green with mask, red without, amber worn wrongly, grey unclassified.
COLOURS = {
    WITH_MASK: (0, 200, 70),
    WITHOUT_MASK: (230, 30, 30),
    INCORRECT_MASK: (255, 176, 0),
    None: (160, 160, 160),
}
SHORT = {WITH_MASK: "mask", WITHOUT_MASK: "no mask", INCORRECT_MASK: "mask worn wrongly"}


def label_text(face) -> str:
    """Caption for a face: short label and score (and track id), e.g. ``no mask 0.93``."""
    if face.label is None:
        text = f"face {face.face_score:.2f}"
    else:
        text = SHORT.get(face.label, str(face.label))
        if face.score is not None:
            text += f" {face.score:.2f}"
    if getattr(face, "track_id", None) is not None:
        text = f"#{face.track_id} {text}"
    return text


def draw_faces(rgb: np.ndarray, faces: Iterable, copy: bool = True) -> np.ndarray:
    """Return ``rgb`` with a coloured box and a legible caption for every face.

    Line width and font scale follow the image size, so captions stay readable on
    thumbnails and on 10,000 px photos alike; captions move inside the image at the edges.
    """
    import cv2

    out = np.ascontiguousarray(rgb.copy() if copy else rgb)
    h, w = out.shape[:2]
    base = max(h, w)
    thick = max(1, round(base / 400))
    font = cv2.FONT_HERSHEY_SIMPLEX
    for face in faces:
        x1, y1, x2, y2 = (int(v) for v in face.box)
        colour = COLOURS.get(face.label, COLOURS[None])
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, thick, cv2.LINE_8)
        text = label_text(face)
        # font grows with the image, but never below a readable ~11 px cap height
        scale = max(0.4, base / 1400, (x2 - x1) / 300)
        scale = min(scale, base / 300)
        t = max(1, round(scale * 1.5))
        (tw, th), baseline = cv2.getTextSize(text, font, scale, t)
        pad = max(2, th // 4)
        bw, bh = tw + 2 * pad, th + baseline + 2 * pad
        tx = int(np.clip(x1, 0, max(0, w - bw)))
        ty = y1 - bh if y1 - bh >= 0 else min(y2, h - bh) if y2 + bh <= h else max(0, y1)
        ty = int(np.clip(ty, 0, max(0, h - bh)))
        cv2.rectangle(out, (tx, ty), (tx + bw, ty + bh), colour, -1)
        text_colour = (0, 0, 0) if sum(colour) > 400 else (255, 255, 255)
        cv2.putText(out, text, (tx + pad, ty + pad + th), font, scale, text_colour, t,
                    cv2.LINE_AA)
    return out


def draw_summary(rgb: np.ndarray, counts: dict[str, int], copy: bool = True) -> np.ndarray:
    """Write per-class counts in the top-left corner (used on video frames)."""
    import cv2

    out = np.ascontiguousarray(rgb.copy() if copy else rgb)
    parts = [f"{SHORT.get(k, k)}: {v}" for k, v in counts.items() if v]
    if not parts:
        return out
    text = "  ".join(parts)
    base = max(out.shape[:2])
    scale = max(0.4, base / 1600)
    t = max(1, round(scale * 1.5))
    (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, t)
    cv2.rectangle(out, (0, 0), (tw + 8, th + baseline + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), t,
                cv2.LINE_AA)
    return out
