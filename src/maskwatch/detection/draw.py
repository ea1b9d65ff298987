"""Draw face boxes, labels and counts onto a frame (pure: array in, new array out).

``Annotator`` bundles the drawing options of ``detect``, ``demo`` and the web server
(labels, scores, line width, a count overlay, blurring) into one callable
``annotate(rgb, faces) -> rgb``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from maskwatch.labels import CANONICAL, INCORRECT_MASK, WITH_MASK, WITHOUT_MASK, is_counted

#: Box colours (RGB): green with mask, red without, amber worn wrongly, grey unclassified.
COLOURS = {
    WITH_MASK: (0, 200, 70),
    WITHOUT_MASK: (230, 30, 30),
    INCORRECT_MASK: (255, 176, 0),
    None: (160, 160, 160),
}
SHORT = {WITH_MASK: "mask", WITHOUT_MASK: "no mask", INCORRECT_MASK: "worn wrongly"}
#: Word put before a label the model gives less than even odds (picked only because the
#: decision threshold is low, e.g. without_mask from P = 0.0615 with the bundled model).
UNSURE = "maybe"
#: Mark before the caption of a face that is not counted (face score under the count
#: threshold: ``Face.counted``); its box is drawn with a thinner line.
UNCOUNTED = "?"
#: Where a label may go, relative to its face box, in order of preference.
PLACES = ("above", "below", "inside-top", "inside-bottom")

_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def label_text(face, scores: bool = True) -> str:
    """Caption for a face, e.g. ``no mask 0.93``, ``maybe no mask 0.12``, ``#4 mask 0.98``.

    The number is the probability of the shown label; ``maybe`` marks a label below 0.5
    (chosen because P(without_mask) reached the model's low threshold); ``?`` marks a
    face that is not counted (an uncertain face box).
    """
    if face.label is None:
        text = "face" + (f" {face.face_score:.2f}" if scores else "")
    else:
        text = SHORT.get(face.label, str(face.label))
        if face.score is not None:
            if face.score < 0.5:
                text = f"{UNSURE} {text}"
            if scores:
                text += f" {face.score:.2f}"
    if face.track_id is not None:
        text = f"#{face.track_id} {text}"
    if not is_counted(face):
        text = f"{UNCOUNTED} {text}"
    return text


def line_width(box, image_shape: Sequence[int]) -> int:
    """Box line width in pixels: grows with the face, within bounds set by the image size
    (1-2 px on a thumbnail, up to ~1/300 of the long side on a large photo)."""
    base = max(image_shape[:2])
    lo, hi = max(1, round(base / 900)), max(1, round(base / 300))
    return int(np.clip(round((box[2] - box[0]) / 40), lo, hi))


def font_scale(box, image_shape: Sequence[int]) -> float:
    """OpenCV font scale: cap height about a ninth of the face width, never below what
    stays readable when the whole image is viewed on a screen, never above ~1/20 of it."""
    base = max(image_shape[:2])
    lo, hi = max(0.4, base / 2500), max(0.4, base / 400)
    return float(np.clip((box[2] - box[0]) / 200, lo, hi))


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return float(w * h) if w > 0 and h > 0 else 0.0


def place_labels(
    boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]], image_wh: tuple[int, int]
) -> list[tuple[int, int]]:
    """Top-left corner for each face's label of size (w, h), inside the image.

    Each label goes in the first of PLACES (above, below, inside the top, inside the
    bottom of its box; flush left, else flush right) that covers no other face and no
    label placed before it; when every place covers something, the one covering the
    least area is used.
    """
    width, height = image_wh
    placed: list[tuple[int, int, int, int]] = []
    for i, (box, (lw, lh)) in enumerate(zip(boxes, sizes)):
        x1, y1, x2, y2 = (int(v) for v in box[:4])
        others = [b for j, b in enumerate(boxes) if j != i]
        best, best_cost = None, None
        for place in PLACES:
            ty = {"above": y1 - lh, "below": y2, "inside-top": y1, "inside-bottom": y2 - lh}[place]
            ty = int(np.clip(ty, 0, max(0, height - lh)))
            for tx in (x1, x2 - lw):  # flush with the box's left edge, else its right edge
                tx = int(np.clip(tx, 0, max(0, width - lw)))
                rect = (tx, ty, tx + lw, ty + lh)
                cost = (sum(_overlap(rect, b) for b in others)
                        + sum(_overlap(rect, r) for r in placed))
                if best_cost is None or cost < best_cost:
                    best, best_cost = rect, cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        placed.append(best)
    return [r[:2] for r in placed]


def draw_faces(
    rgb: np.ndarray,
    faces: Iterable,
    copy: bool = True,
    labels: bool = True,
    scores: bool = True,
    width: int | None = None,
) -> np.ndarray:
    """Return ``rgb`` with a coloured box and a legible caption for every face.

    Line width and font follow the face and the image size (``width`` fixes the line
    width); captions go where they cover no other face (see ``place_labels``). Faces that
    are not counted get half the line width and a ``?`` caption.
    ``labels=False`` draws boxes only; ``scores=False`` leaves the numbers out.
    """
    import cv2

    out = np.ascontiguousarray(rgb.copy() if copy else rgb)
    h, w = out.shape[:2]
    faces = list(faces)
    boxes = [[int(v) for v in f.box[:4]] for f in faces]
    for face, (x1, y1, x2, y2) in zip(faces, boxes):
        colour = COLOURS.get(face.label, COLOURS[None])
        thick = width or line_width((x1, y1, x2, y2), out.shape)
        if not is_counted(face):
            thick = max(1, thick // 2)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, int(thick), cv2.LINE_8)
    if not labels:
        return out
    captions = []
    for face, box in zip(faces, boxes):
        text = label_text(face, scores)
        scale = font_scale(box, out.shape)
        t = max(1, round(scale * 1.5))
        (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, t)
        pad = max(2, th // 4)
        captions.append((text, scale, t, th, pad, (tw + 2 * pad, th + baseline + 2 * pad)))
    corners = place_labels(boxes, [c[-1] for c in captions], (w, h))
    for face, (text, scale, t, th, pad, (bw, bh)), (tx, ty) in zip(faces, captions, corners):
        colour = COLOURS.get(face.label, COLOURS[None])
        cv2.rectangle(out, (tx, ty), (tx + bw - 1, ty + bh - 1), colour, -1)
        text_colour = (0, 0, 0) if sum(colour) > 400 else (255, 255, 255)
        cv2.putText(out, text, (tx + pad, ty + pad + th), _FONT, scale, text_colour, t,
                    cv2.LINE_AA)
    return out


def face_counts(faces: Iterable) -> dict[str, int]:
    """Counted faces per label, in canonical order (unclassified faces as ``face``)."""
    counts = Counter(f.label or "face" for f in faces if is_counted(f))
    order = [*CANONICAL, "face"]
    return {k: counts[k] for k in sorted(counts, key=lambda k: order.index(k)
                                         if k in order else 99)}


def draw_summary(rgb: np.ndarray, counts: dict[str, int], copy: bool = True,
                 avoid: Sequence[Sequence[float]] = ()) -> np.ndarray:
    """Write per-class counts (e.g. ``mask: 3  no mask: 1``) in a corner: the top-left
    one, or the corner covering the least of the ``avoid`` boxes (the faces)."""
    import cv2

    out = np.ascontiguousarray(rgb.copy() if copy else rgb)
    parts = [f"{SHORT.get(k, k)}: {v}" for k, v in counts.items() if v]
    if not parts:
        return out
    text = "  ".join(parts)
    h, w = out.shape[:2]
    scale = max(0.4, max(h, w) / 1600)
    t = max(1, round(scale * 1.5))
    (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, t)
    pad = max(4, th // 3)
    bw, bh = min(w, tw + 2 * pad), min(h, th + baseline + 2 * pad)
    corners = [(0, 0), (w - bw, 0), (0, h - bh), (w - bw, h - bh)]
    x, y = min(corners, key=lambda c: sum(_overlap((*c, c[0] + bw, c[1] + bh), b)
                                          for b in avoid))
    cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), (0, 0, 0), -1)
    cv2.putText(out, text, (x + pad, y + pad + th), _FONT, scale, (255, 255, 255), t,
                cv2.LINE_AA)
    return out


BLUR_CHOICES = ("all", "masked", "unmasked")
#: Annotated copies are shrunk by 2, 4 or 8 while their long side stays at least this
#: many pixels: a 4032 x 3024 photo's copy is 2016 x 1512 (a JPEG decoded at that scale:
#: decoding and drawing the full 12 MP cost more than detecting), a 3840 x 2160 video is
#: written at 1920 x 1080. 0: full size.
COPY_SIZE = 1600


def shrink_for_copy(rgb: np.ndarray, faces: Iterable, copy_size: int = COPY_SIZE
                    ) -> tuple[np.ndarray, list]:
    """``rgb`` shrunk by ``imaging.copy_factor`` (area averaging) and the faces with boxes
    in its pixels: what an annotated copy is drawn on. Unchanged when the factor is 1."""
    from maskwatch.imaging import copy_factor

    faces = list(faces)
    h, w = rgb.shape[:2]
    k = copy_factor(w, h, copy_size)
    if k == 1:
        return rgb, faces
    import cv2

    from maskwatch.detection.pipeline import scaled_faces

    size = (w // k, h // k)
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return small, scaled_faces(faces, size[0] / w, size[1] / h)


def faces_to_blur(faces: Iterable, which: str | None) -> list:
    """The faces ``--blur which`` hides: all, masked (with a mask, worn well or not) or
    unmasked (without_mask and unclassified faces); none when ``which`` is None."""
    faces = list(faces)
    if which is None:
        return []
    if which not in BLUR_CHOICES:
        raise ValueError(f"blur must be one of {', '.join(BLUR_CHOICES)}, got {which!r}")
    if which == "all":
        return faces
    masked = {WITH_MASK, INCORRECT_MASK}
    return [f for f in faces if (f.label in masked) == (which == "masked")]


@dataclass(frozen=True)
class Annotator:
    """What ``detect``, ``demo`` and the server draw on a frame: ``annotate(rgb, faces)``.

    ``blur`` ("all", "masked", "unmasked" or None) anonymises those faces before anything
    is drawn; ``summary`` adds the per-class count of the frame in the top-left corner.
    """

    labels: bool = True
    scores: bool = True
    width: int | None = None
    summary: bool = False
    blur: str | None = None

    def __call__(self, rgb: np.ndarray, faces: Iterable) -> np.ndarray:
        faces = list(faces)
        out = rgb
        hidden = faces_to_blur(faces, self.blur)
        if hidden:
            from maskwatch.detection.privacy import blur_faces

            out = blur_faces(rgb, [f.box for f in hidden])
        out = draw_faces(out, faces, copy=out is rgb, labels=self.labels, scores=self.scores,
                         width=self.width)
        if self.summary:
            # labels usually sit just above or below their face: keep clear of those too
            avoid = [(b[0], b[1] - (b[3] - b[1]) / 3, b[2], b[3] + (b[3] - b[1]) / 3)
                     for b in (f.box for f in faces)]
            out = draw_summary(out, face_counts(faces), copy=False, avoid=avoid)
        return out
