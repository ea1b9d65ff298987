"""Synthetic ``incorrect_mask`` faces, for training only.

Two ways, as MaskedFace-Net did for its wrongly worn masks:

* ``nose`` / ``chin``: a surgical-style mask drawn on a bare face, placed from YuNet's five
  landmarks (eyes, nose tip, mouth corners) just under the nose or down on the chin;
* ``moved``: the mask of a masked face moved down, so the nose (filled in from the skin
  around it) shows above it;
* ``swap-nose`` / ``swap-chin``: a real mask cut from another, masked face of the input
  (aligned by both faces' landmarks) and pasted on a bare face just under the nose
  or on the chin: the real mask's fabric, folds and light, without a drawn mask's look
  and without ``moved``'s filled-in strip; ``swap-worn``, its counterpart, pastes it worn
  right (from the nose bridge) as a ``with_mask`` face.

And, as MaskedFace-Net also did, their correctly worn counterpart: ``worn``, the same drawn
mask over nose and mouth, labelled ``with_mask``. Without it a model learns that a drawn
mask means "worn wrongly" (the bundled model called the demo's drawn mask incorrect_mask
at 0.98) instead of learning where the mask sits.

Every written sample's ``source`` starts with ``synthetic:`` (``is_synthetic``); splits,
validation carving and evaluation keep such samples out of every val/test set.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskwatch.data.model import SYNTHETIC_SOURCE, Sample, write_manifest
from maskwatch.errors import ImageError, MaskwatchError
from maskwatch.files import remove_created
from maskwatch.labels import INCORRECT_MASK, WITH_MASK, WITHOUT_MASK

#: The faces ``synthesise`` makes: masks worn wrongly, and ``worn`` ones worn right.
KINDS = ("nose", "chin", "moved", "worn", "swap-nose", "swap-chin", "swap-worn")
#: The label of each kind's faces.
KIND_LABELS = {"nose": INCORRECT_MASK, "chin": INCORRECT_MASK, "moved": INCORRECT_MASK,
               "worn": WITH_MASK, "swap-nose": INCORRECT_MASK, "swap-chin": INCORRECT_MASK,
               "swap-worn": WITH_MASK}
#: Kinds drawn on bare faces (the rest move the mask of a masked face).
DRAWN = ("nose", "chin", "worn")
#: Kinds made on bare faces with the mask of another, masked face.
SWAPPED = ("swap-nose", "swap-chin", "swap-worn")

#: Mask colours (RGB): light blue, white, black, grey, navy, pink, pale green.
PALETTE = ((165, 200, 230), (238, 238, 235), (35, 35, 38), (150, 152, 158), (40, 50, 90),
           (235, 185, 200), (170, 215, 190))


@dataclass
class Landmarks:
    """Five face points in image pixels (x, y): two eyes, the nose tip, two mouth corners."""

    eyes: np.ndarray  # 2 x 2, left to right in the image
    nose: np.ndarray  # 2
    mouth: np.ndarray  # 2 x 2, left to right in the image

    @property
    def angle(self) -> float:
        """Roll of the eye line, radians."""
        d = self.eyes[1] - self.eyes[0]
        return math.atan2(float(d[1]), float(d[0]))

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.eyes[1] - self.eyes[0]))

    @property
    def eye_to_mouth(self) -> float:
        """Distance from the eyes' midpoint to the mouth's (the face's vertical unit)."""
        return float(np.linalg.norm(self.mouth.mean(0) - self.eyes.mean(0)))


def find_landmarks(rgb: np.ndarray, min_confidence: float = 0.5) -> Landmarks | None:
    """YuNet's landmarks of the face nearest the centre of a face crop, or None.

    The crop is padded and enlarged first, since YuNet misses faces that fill the image
    or are only a few dozen pixels wide.
    """
    import cv2
    import yuface

    from maskwatch.detection.faces import _YUFACE_LOCK

    h, w = rgb.shape[:2]
    pad = int(0.3 * max(h, w))
    scale = max(1.0, 160.0 / max(h, w))
    big = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    if scale > 1.0:
        big = cv2.resize(big, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    with _YUFACE_LOCK:
        found = yuface.c_detect(np.ascontiguousarray(big[:, :, ::-1]))
    best, best_dist = None, None
    for row in np.asarray(found, dtype=np.float64).reshape(-1, 16):
        if row[0] < 100 * min_confidence:
            continue
        pts = row[5:15].reshape(5, 2) / scale - pad
        centre = pts.mean(0)
        dist = float(np.hypot(centre[0] - w / 2, centre[1] - h / 2))
        if best_dist is None or dist < best_dist:
            best, best_dist = pts, dist
    if best is None or best_dist > 0.35 * max(h, w):
        return None
    eyes = best[np.argsort(best[:2, 0])]
    mouth = best[3:5][np.argsort(best[3:5, 0])]
    return Landmarks(eyes, best[2].copy(), mouth)


def _to_image(lm: Landmarks, pts) -> np.ndarray:
    """Face-frame points (u along the eye line, v down; origin between the eyes, unit the
    eye-to-mouth distance) -> image pixels."""
    a = lm.angle
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return lm.eyes.mean(0) + (np.asarray(pts, np.float64) * lm.eye_to_mouth) @ rot.T


def _v(lm: Landmarks, point) -> float:
    """A landmark's v (down the face) in face-frame units."""
    a = lm.angle
    d = np.asarray(point, np.float64) - lm.eyes.mean(0)
    return float((-math.sin(a) * d[0] + math.cos(a) * d[1]) / lm.eye_to_mouth)


def _mask_outline(lm: Landmarks, top: float, bottom: float, half: float,
                  chin: float) -> np.ndarray:
    """Image pixels (N x 2, int32) of a mask's six-sided outline: ``top`` and ``bottom``
    in face-frame v, ``half`` its half width at mid-height, ``chin`` the bottom edge's
    share of that width."""
    mid = (top + bottom) / 2
    outline = [(-half * 0.92, top), (half * 0.92, top), (half, mid),
               (half * chin, bottom), (-half * chin, bottom), (-half, mid)]
    return np.round(_to_image(lm, outline)).astype(np.int32)


def _feathered(shape: tuple[int, ...], poly: np.ndarray, unit: float) -> np.ndarray:
    """An H x W x 1 blending weight: 1 inside ``poly``, with edges softened in proportion
    to the face's size (``unit``: its eye-to-mouth distance in pixels)."""
    import cv2

    alpha = np.zeros(shape[:2], np.float32)
    cv2.fillPoly(alpha, [poly], 1.0, cv2.LINE_AA)
    soft = max(1, round(unit / 25)) * 2 + 1
    return cv2.GaussianBlur(alpha, (soft, soft), 0)[:, :, None]


def draw_worn_mask(rgb: np.ndarray, lm: Landmarks, kind: str,
                   rng: np.random.Generator) -> np.ndarray:
    """A copy of a bare face with a drawn mask: worn wrongly, ``nose`` (top edge just under
    the nose tip, mouth covered) or ``chin`` (top edge under the mouth, on the chin), or
    worn right, ``worn`` (top edge on the nose bridge, nose and mouth covered)."""
    import cv2

    if kind not in DRAWN:
        raise ValueError(f"kind must be one of {', '.join(DRAWN)}, got {kind!r}")
    mouth_v = _v(lm, lm.mouth.mean(0))
    top = _top_edge(lm, kind, rng)
    bottom = mouth_v + rng.uniform(0.75, 0.95)
    half = 0.5 * lm.eye_distance / lm.eye_to_mouth * rng.uniform(1.9, 2.2)
    poly = _mask_outline(lm, top, bottom, half, chin=0.62)
    colour = np.array(PALETTE[rng.integers(len(PALETTE))], np.float64)
    colour = np.clip(colour * rng.uniform(0.85, 1.1), 0, 255)
    h, w = rgb.shape[:2]
    # shading: lighter at the top, darker towards the chin, a little noise for fabric
    ys = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    top_y, bottom_y = poly[:, 1].min() / max(h, 1), poly[:, 1].max() / max(h, 1)
    t = np.clip((ys - top_y) / max(bottom_y - top_y, 1e-3), 0, 1)
    shade = 1.05 - 0.2 * t + rng.normal(0, 0.03, (h, w)).astype(np.float32)
    fabric = colour[None, None, :] * shade[:, :, None]
    unit = lm.eye_to_mouth
    thick = max(1, round(unit / 30))
    pleat = colour * 0.78
    for k in (0.3, 0.55, 0.8):
        v = top + k * (bottom - top)
        a, b = _to_image(lm, [(-half * 0.8, v), (half * 0.8, v)]).round().astype(int)
        cv2.line(fabric, tuple(int(x) for x in a), tuple(int(x) for x in b), pleat.tolist(),
                 thick, cv2.LINE_AA)
    alpha = _feathered(rgb.shape, poly, unit)
    out = rgb.astype(np.float32) * (1 - alpha) + np.clip(fabric, 0, 255) * alpha
    out = out.astype(np.uint8)
    strap = (235, 235, 235) if colour.mean() < 200 else (200, 200, 200)
    for side in (-1, 1):
        a, b = _to_image(lm, [(side * half * 0.95, top + 0.05), (side * half * 1.25, -0.05)])
        cv2.line(out, tuple(int(x) for x in a.round()), tuple(int(x) for x in b.round()), strap,
                 max(1, round(unit / 20)), cv2.LINE_AA)
    return out


def _top_edge(lm: Landmarks, where: str, rng: np.random.Generator) -> float:
    """Face-frame v of a mask's top edge: worn right, on the nose bridge (``worn``), or
    wrongly, just under the nose tip (``nose``) or under the mouth (``chin``)."""
    nose_v = _v(lm, lm.nose)
    mouth_v = _v(lm, lm.mouth.mean(0))
    if where == "worn":
        return nose_v * rng.uniform(0.35, 0.6)
    if where == "nose":
        return nose_v + rng.uniform(0.05, 0.2) * (mouth_v - nose_v)
    return mouth_v + rng.uniform(0.1, 0.3)


def paste_donor_mask(rgb: np.ndarray, lm: Landmarks, donor: np.ndarray, donor_lm: Landmarks,
                     where: str, rng: np.random.Generator) -> np.ndarray:
    """A copy of a bare face wearing the mask of ``donor`` (a masked face).

    The donor's lower face, from between its nose bridge and nose tip down to its chin (the
    mask's fabric if the donor wears it right), is aligned to the bare face by both faces'
    landmarks, moved so that its top edge lies just under the nose (``where="nose"``),
    under the mouth (``"chin"``) or on the nose bridge (``"worn"``, worn right), and
    blended in with soft edges."""
    import cv2

    if where not in ("nose", "chin", "worn"):
        raise ValueError(f"where must be nose, chin or worn, got {where!r}")
    d_top = _v(donor_lm, donor_lm.nose) * rng.uniform(0.55, 0.85)
    d_bottom = _v(donor_lm, donor_lm.mouth.mean(0)) + rng.uniform(0.7, 0.85)
    top = _top_edge(lm, where, rng)
    shift = top - d_top
    bottom = min(d_bottom + shift, _v(lm, lm.mouth.mean(0)) + rng.uniform(0.8, 1.0))
    if bottom - top < 0.25:
        raise ImageError("too little of the donor's mask would show")
    # the donor's face frame onto the bare face's, moved down by ``shift``
    frame = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    src = _to_image(donor_lm, frame).astype(np.float32)
    dst = _to_image(lm, [(u, v + shift) for u, v in frame]).astype(np.float32)
    h, w = rgb.shape[:2]
    warped = cv2.warpAffine(donor, cv2.getAffineTransform(src, dst), (w, h),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    half = 0.5 * lm.eye_distance / lm.eye_to_mouth * rng.uniform(1.8, 2.1)
    alpha = _feathered(rgb.shape, _mask_outline(lm, top, bottom, half, chin=0.65),
                       lm.eye_to_mouth)
    out = rgb.astype(np.float32) * (1 - alpha) + warped.astype(np.float32) * alpha
    return out.astype(np.uint8)


def move_mask_down(rgb: np.ndarray, lm: Landmarks | None,
                   rng: np.random.Generator) -> np.ndarray:
    """A copy of a masked face with everything below the nose bridge (the mask) moved down
    by about half the eye-to-mouth distance; the uncovered strip is filled from the skin
    around it. Without landmarks the usual layout of a face crop is assumed."""
    import cv2

    h, w = rgb.shape[:2]
    if lm is not None:
        eye_y, unit = float(lm.eyes[:, 1].mean()), lm.eye_to_mouth
    else:  # eyes at ~40% of a face crop, mouth at ~75%
        eye_y, unit = 0.4 * h, 0.35 * h
    top = int(round(eye_y + rng.uniform(0.2, 0.3) * unit))
    shift = int(round(rng.uniform(0.4, 0.55) * unit))
    if top < 0 or shift < 1 or top + shift >= h - 1:
        raise ImageError("the face is too small or too close to the edge to move its mask")
    out = rgb.copy()
    out[top + shift:] = rgb[top:h - shift]  # whole rows: no seams at the sides
    hole = np.zeros((h, w), np.uint8)
    hole[top:top + shift] = 255
    return cv2.inpaint(np.ascontiguousarray(out), hole, max(3, shift // 2), cv2.INPAINT_TELEA)


#: YuNet's confidence a donor face needs: a mask is cut out by the landmarks, so they must
#: be sure (0.5 let through masked faces whose misplaced landmarks gave background patches).
DONOR_CONFIDENCE = 0.8


def lower_face_inside(shape: tuple[int, ...], lm: Landmarks, tolerance: float = 0.08) -> bool:
    """Whether a face's lower half (eye line to below the chin, cheek to cheek) lies within
    an image of ``shape``: a donor cut off there would lend smeared edge pixels."""
    h, w = shape[:2]
    half = 0.5 * lm.eye_distance / lm.eye_to_mouth * 2.1
    bottom = _v(lm, lm.mouth.mean(0)) + 0.7
    pts = _to_image(lm, [(-half, 0.0), (half, 0.0), (-0.65 * half, bottom),
                         (0.65 * half, bottom)])  # the outline paste_donor_mask cuts
    tx, ty = tolerance * w, tolerance * h
    return bool((pts[:, 0] >= -tx).all() and (pts[:, 0] <= w + tx).all()
                and (pts[:, 1] >= -ty).all() and (pts[:, 1] <= h + ty).all())


class _Donors:
    """Masked faces to take masks from, drawn at random (with their own random stream, so
    the other kinds' faces stay the same); only faces whose landmarks YuNet is sure of and
    whose lower half is in the picture; each face is judged once."""

    TRIES = 8

    def __init__(self, samples: list[Sample], margin: float, seed: int):
        self.samples = samples
        self.margin = margin
        self.rng = np.random.default_rng([seed, 1])
        self._landmarks: dict[int, Landmarks | None] = {}

    def draw(self) -> tuple[np.ndarray, Landmarks]:
        """A masked face and its landmarks; LookupError when several draws find none."""
        from maskwatch.data.model import read_face

        for _ in range(self.TRIES):
            i = int(self.rng.integers(len(self.samples)))
            if self._landmarks.get(i, True) is None:
                continue
            try:
                face = read_face(self.samples[i], self.margin)
            except ImageError:
                self._landmarks[i] = None
                continue
            if i not in self._landmarks:
                lm = (find_landmarks(face, DONOR_CONFIDENCE) if min(face.shape[:2]) >= 24
                      else None)
                ok = lm is not None and lower_face_inside(face.shape, lm)
                self._landmarks[i] = lm if ok else None
            lm = self._landmarks[i]
            if lm is not None:
                return face, lm
        raise LookupError("no masked face with sure landmarks")


def synthesise(
    samples: list[Sample],
    out_dir: str | Path,
    kinds=KINDS,
    per_face: int = 1,
    seed: int = 0,
    margin: float = 0.1,
    limit: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Write faces made from ``samples`` into ``out_dir/LABEL/`` (``incorrect_mask``, and
    ``with_mask`` for ``worn``) and ``out_dir/manifest.csv`` (split ``train``, source
    ``synthetic:KIND:ORIGINAL_PATH``, the original's group, so a group-aware split keeps
    both on one side).

    Bare faces (without_mask) give ``nose``/``chin``/``worn`` faces and, with masks taken
    from the masked faces among ``samples``, ``swap-nose``/``swap-chin`` ones; masked faces
    give ``moved`` ones; ``per_face`` variants of each chosen kind; faces YuNet finds no
    landmarks on are skipped for the drawn kinds. Returns a summary; MaskwatchError (and
    no manifest) when no face has the label a kind needs or none could be made; a run that
    stops early (Ctrl+C) removes the faces it wrote."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise MaskwatchError(f"--kinds: choose among {', '.join(KINDS)}")
    if per_face < 1:
        raise MaskwatchError("--per-face must be at least 1")
    out = Path(out_dir)
    manifest = out / "manifest.csv"
    if manifest.exists() and not force:
        raise MaskwatchError(f"{manifest}: already exists (use --overwrite to replace it)")
    wanted = {WITHOUT_MASK: [k for k in kinds if k in DRAWN or k in SWAPPED],
              WITH_MASK: [k for k in kinds if k == "moved"]}
    chosen = [s for s in samples if wanted.get(s.label)]
    if not chosen:
        need = [f"{label} faces for {', '.join(ks)}" for label, ks in wanted.items() if ks]
        raise MaskwatchError(f"no face to make synthetic ones from: {' and '.join(need)} "
                             "are needed")
    rng = np.random.default_rng(seed)
    rng.shuffle(chosen)
    if limit is not None:
        chosen = chosen[:limit]
    donors = _Donors([s for s in samples if s.label == WITH_MASK], margin, seed)
    if any(k in SWAPPED for k in kinds) and not donors.samples:
        raise MaskwatchError("swap-nose, swap-chin and swap-worn need masked (with_mask) faces "
                             "to take masks from")
    written: list[Sample] = []
    created: list[Path] = []  # removed if the run stops early (Ctrl+C): without their
    try:  # manifest the faces would read as a real incorrect_mask class folder
        made, skipped = _synthesise_all(chosen, wanted, out, margin, per_face, rng, donors,
                                        progress, written, created)
        if not written:
            why = ", ".join(f"{k} {v:,}" for k, v in skipped.items()) or "none"
            raise MaskwatchError(f"no synthetic face made from {len(chosen):,} faces "
                                 f"(skipped: {why}); nothing written")
        write_manifest(manifest, written, force=True)
    except BaseException:
        remove_created(created, out)
        raise
    return {"manifest": str(manifest), "written": len(written), "from_faces": len(chosen),
            "kinds": dict(made), "skipped": dict(skipped)}


def _synthesise_all(chosen, wanted, out: Path, margin: float, per_face: int, rng, donors,
                    progress: bool, written: list, created: list) -> tuple[Counter, Counter]:
    """The loop of :func:`synthesise`: each face read once, its kinds made and saved
    (``written`` gets their samples, ``created`` the files that did not exist before)."""
    from tqdm import tqdm

    from maskwatch.data.model import read_face
    from maskwatch.imaging import save_rgb

    made, skipped = Counter(), Counter()
    for n, s in enumerate(tqdm(chosen, desc="synthesise", unit="face", disable=not progress)):
        try:
            face = read_face(s, margin)
        except ImageError:
            skipped["unreadable"] += 1
            continue
        lm = find_landmarks(face) if min(face.shape[:2]) >= 24 else None
        for kind in wanted[s.label]:
            if kind != "moved" and lm is None:
                skipped["no landmarks"] += 1
                continue
            for v in range(per_face):
                try:
                    if kind == "moved":
                        img = move_mask_down(face, lm, rng)
                    elif kind in SWAPPED:
                        donor, donor_lm = donors.draw()
                        img = paste_donor_mask(face, lm, donor, donor_lm,
                                               kind.split("-")[1], donors.rng)
                    else:
                        img = draw_worn_mask(face, lm, kind, rng)
                except ImageError:
                    skipped["too small"] += 1
                    continue
                except LookupError:
                    skipped["no donor with landmarks"] += 1
                    continue
                dest = out / KIND_LABELS[kind] / f"{n:06d}_{kind}_{v}.jpg"
                if not dest.exists():
                    created.append(dest)
                save_rgb(dest, img)
                written.append(Sample(dest, KIND_LABELS[kind], "train",
                                      f"{SYNTHETIC_SOURCE}:{kind}:{s.path}",
                                      s.group or str(s.path), None))
                made[kind] += 1
    return made, skipped
