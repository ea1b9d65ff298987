"""Fit the detect pipeline to one site's annotated scenes (``maskwatch calibrate``).

The detector runs once over the scenes at a low face threshold; every setting is then
fitted on those cached boxes and class scores, without running a network again:

- the box convention: median width/height scale and centre shift from the detector's boxes
  to the annotated ones (e.g. tight faces vs whole heads), matched at a loose IoU, then
  again with the mapped boxes;
- the smallest face the site annotates: a low percentile of the annotated faces' sides;
- the face-score threshold;
- the without_mask decision threshold, on the faces that were found.

Each setting replaces the default only when it raises mAP@0.5 (the box map also when it
keeps mAP@0.5 and raises mAP@0.75, which shows a closer fit to the site's boxes; the mask
threshold: balanced accuracy, without losing without_mask recall) on the fitting scenes,
in at least 90% of bootstrap resamples of them, and the whole fit is dropped unless it
beats the defaults there by ``margin`` in the same way. A seeded part of the scenes is
held out and scored before and after.

Truths are read as ``evaluate-detection`` reads them (Pascal VOC): a face annotated
difficult is neither found nor missed, so it drives neither the box map, nor the smallest
face, nor the mask threshold, and a detection matching it best is left out of each; a
scene annotated as holding no face counts, every box there false, in every mAP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from maskwatch.boxes import iou_matrix
from maskwatch.detection.evaluate import (
    Scene,
    detect_scenes,
    difficult_flags,
    one_to_one,
    scene_outcomes,
    score_detections,
    subset_map,
)
from maskwatch.detection.pipeline import (
    Detector,
    refine_min_side,
    site_boxes,
)
from maskwatch.errors import MaskwatchError
from maskwatch.inference.modelfile import DEFAULT_BOX_MAPS, SiteParams
from maskwatch.inference.preprocess import decide
from maskwatch.labels import WITH_MASK, WITHOUT_MASK

#: Lowest face threshold tried (the detector runs once at this, or at its default if lower).
LOWEST_FACE_THRESHOLD = 0.2
#: Face thresholds tried, from the lowest up.
FACE_THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.2, 0.91, 0.05))
#: Annotated-size percentiles tried as the smallest face (times MIN_FACE_SLACK).
MIN_FACE_PERCENTILES = (1, 2, 5, 10)
MIN_FACE_SLACK = 0.8
#: mAP gain a single setting needs on the fitting scenes to replace its default.
STEP_GAIN = 0.002
#: A box map that keeps mAP@0.5 may still fit the site's boxes better, which mAP at this
#: stricter IoU shows (the default boxes already match whole heads at 0.5 when they are
#: found well, never at 0.75).
BOX_FIT_IOU = 0.75
#: Balanced-accuracy gain the mask threshold needs to replace the model's, and the fewest
#: found faces of each class (with_mask, without_mask) it is fitted on.
MASK_GAIN = 0.01
MASK_MIN_FACES = 20
#: A gain counts only if it holds in this share of bootstrap resamples of the fitting
#: scenes (or faces): small sets must not trade a default for noise.
BOOTSTRAP = 100
CONFIDENCE = 0.9
IDENTITY = (1.0, 1.0, 0.0, 0.0)


@dataclass
class Cached:
    """One scene's detector output at the low threshold: native boxes, face scores, class
    probabilities (one row per box, in ``classes`` order) and the image size."""

    boxes: np.ndarray
    scores: np.ndarray
    probs: np.ndarray
    size: tuple[int, int]


@dataclass(frozen=True)
class Settings:
    """The settings being fitted."""

    box_map: tuple[float, float, float, float] = IDENTITY
    min_face: int = 0
    face_threshold: float = 0.4
    mask_threshold: float = 0.5


@dataclass
class Fit:
    """What ``fit_site`` found: the settings, the defaults, and what it measured."""

    settings: Settings
    defaults: Settings
    report: dict = field(default_factory=dict)


def run_detector(
    scenes: Sequence[Scene], detector: Detector, progress: bool = True,
    on_error: Callable[[str], None] | None = None,
) -> list[Cached | None]:
    """Run ``detector`` (its own boxes, no site settings) once per scene, reading each as
    ``detect`` does (:meth:`Detector.read`); None where the image cannot be read."""
    classes = detector.classes
    sizes: list[tuple[int, int]] = []

    def detect(rgb: np.ndarray, scale=(1.0, 1.0), source=None) -> list:
        sizes.append((round(rgb.shape[1] * scale[0]), round(rgb.shape[0] * scale[1])))
        return detector.detect(rgb, check_bgr=False, scale=scale, source=source)

    found, _ = detect_scenes(scenes, detect, progress, on_error, read=detector.read)
    size_of = iter(sizes)  # one per scene that was read, in order
    return [None if faces is None else Cached(
        boxes=np.asarray([f[0] for f in faces], np.float64).reshape(-1, 4),
        scores=np.asarray([f[1] for f in faces], np.float64),
        probs=np.asarray([[f[3].get(c, 0.0) for c in classes] for f in faces],
                         np.float64).reshape(-1, len(classes)),
        size=next(size_of),
    ) for faces in found]


def _mapped(c: Cached, s: Settings) -> tuple[np.ndarray, np.ndarray]:
    """(kept indices, their boxes) under settings ``s``."""
    keep = np.flatnonzero(c.scores >= s.face_threshold)
    boxes = c.boxes[keep]
    if s.box_map != IDENTITY:
        boxes = site_boxes(boxes, s.box_map, *c.size).astype(np.float64)
    if s.min_face > 0 and len(boxes):
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep, boxes = keep[side >= s.min_face], boxes[side >= s.min_face]
    return keep, boxes


def predictions(cache: Sequence[Cached | None], s: Settings, classes: Sequence[str]) -> list:
    """The pipeline's faces under settings ``s``, as :func:`score_detections` takes them."""
    out: list = []
    for c in cache:
        if c is None:
            out.append(None)
            continue
        keep, boxes = _mapped(c, s)
        out.append([
            (tuple(b), float(c.scores[i]), "face", dict(zip(classes, map(float, c.probs[i]))))
            for i, b in zip(keep, boxes)
        ])
    return out


class MapScorer:
    """mAP@0.5 (with_mask, without_mask) of settings on the given scenes, remembered per
    settings, and whether one setting's gain over another holds across bootstrap
    resamples of the scenes."""

    def __init__(self, scenes, cache, classes, iou: float = 0.5):
        self.scenes, self.cache, self.classes, self.iou = scenes, cache, classes, iou
        self._outcomes: dict[Settings, dict] = {}

    def outcomes(self, s: Settings) -> dict:
        if s not in self._outcomes:
            self._outcomes[s] = scene_outcomes(
                self.scenes, predictions(self.cache, s, self.classes), self.iou)
        return self._outcomes[s]

    def __call__(self, s: Settings) -> float:
        return subset_map(self.outcomes(s), range(len(self.scenes)))

    def gain_holds(self, a: Settings, b: Settings) -> bool:
        """Whether ``b`` beats ``a`` in at least ``CONFIDENCE`` of the resamples."""
        oa, ob = self.outcomes(a), self.outcomes(b)
        return gain_holds(lambda idx: subset_map(ob, idx) - subset_map(oa, idx),
                          len(self.scenes))


def gain_holds(gain: Callable[[np.ndarray], float], n: int, seed: int = 0) -> bool:
    """Whether ``gain(indices)`` is positive in at least ``CONFIDENCE`` of ``BOOTSTRAP``
    resamples (with replacement) of ``n`` items."""
    rng = np.random.default_rng(seed)
    wins = sum(gain(rng.integers(0, n, n)) > 0 for _ in range(BOOTSTRAP))
    return wins >= CONFIDENCE * BOOTSTRAP


def fit_box_map(scenes, cache, face_threshold: float, rounds: int = 3) -> tuple[tuple, int]:
    """Median (width scale, height scale, x shift, y shift) from the detector's boxes to
    the annotated ones, and the number of pairs behind it. Pairs are matched one to one at
    IoU >= 0.25, then at 0.4 with the boxes mapped by the previous round; boxes touching
    the image edge (clipped) are left out, and so are difficult faces and the detections
    matching one best (:func:`one_to_one`)."""
    box_map, n = IDENTITY, 0
    for r in range(rounds):
        rows = []
        for scene, c in zip(scenes, cache):
            if c is None or not scene.boxes:
                continue
            keep, mapped = _mapped(c, Settings(box_map=box_map, face_threshold=face_threshold))
            gt = np.asarray(scene.boxes, np.float64)
            ious = iou_matrix(gt, mapped)
            w, h = c.size
            pairs, _ = one_to_one(ious, difficult_flags(scene), 0.25 if r == 0 else 0.4)
            for g, p in pairs:
                a, d = gt[g], c.boxes[keep[p]]
                if _touches_edge(a, w, h) or _touches_edge(d, w, h):
                    continue
                dw, dh = d[2] - d[0], d[3] - d[1]
                rows.append(((a[2] - a[0]) / dw, (a[3] - a[1]) / dh,
                             ((a[0] + a[2]) - (d[0] + d[2])) / 2 / dw,
                             ((a[1] + a[3]) - (d[1] + d[3])) / 2 / dh))
        if len(rows) < 5:
            return box_map, len(rows)
        med = np.median(np.asarray(rows), axis=0)
        box_map, n = (float(np.clip(med[0], 0.25, 4)), float(np.clip(med[1], 0.25, 4)),
                      float(np.clip(med[2], -1, 1)), float(np.clip(med[3], -1, 1))), len(rows)
    return tuple(round(v, 4) for v in box_map), n


def _touches_edge(b, w: int, h: int, px: float = 2.0) -> bool:
    return b[0] <= px or b[1] <= px or b[2] >= w - px or b[3] >= h - px


def face_sides(scenes) -> np.ndarray:
    """Shorter side of every annotated face that is not difficult."""
    return np.asarray([min(b[2] - b[0], b[3] - b[1]) for sc in scenes
                       for b, hard in zip(sc.boxes, difficult_flags(sc)) if not hard], np.float64)


def mask_outcomes(scenes, cache, s: Settings, classes) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and truths (True: without_mask) of the annotated with_mask /
    without_mask faces found at IoU >= 0.5 under settings ``s`` (one to one; difficult
    faces, and detections matching one best, left out: :func:`one_to_one`)."""
    probs, truth = [], []
    for scene, c in zip(scenes, cache):
        if c is None:
            continue
        keep, boxes = _mapped(c, s)
        ious = iou_matrix(np.asarray(scene.boxes, np.float64).reshape(-1, 4), boxes)
        pairs, _ = one_to_one(ious, difficult_flags(scene), 0.5)
        for g, p in pairs:
            if scene.labels[g] in (WITH_MASK, WITHOUT_MASK):
                probs.append(c.probs[keep[p]])
                truth.append(scene.labels[g] == WITHOUT_MASK)
    return np.asarray(probs, np.float64).reshape(-1, len(classes)), np.asarray(truth, bool)


def mask_rates(probs, truth, classes, threshold: float) -> tuple[float, float]:
    """(balanced accuracy, without_mask recall) of the decision rule at ``threshold``."""
    if not len(truth) or truth.all() or not truth.any():
        return float("nan"), float("nan")
    labels = np.asarray(classes)[decide(probs, classes, threshold)]
    rec_without = float(np.mean(labels[truth] == WITHOUT_MASK))
    rec_with = float(np.mean(labels[~truth] == WITH_MASK))
    return (rec_without + rec_with) / 2, rec_without


def fit_mask_threshold(probs, truth, classes, default: float,
                       min_faces: int = MASK_MIN_FACES) -> float:
    """The threshold with the best balanced accuracy among those that keep at least the
    default's without_mask recall (the middle of the best ones); the default unless it
    gains ``MASK_GAIN``, and does so over bootstrap resamples of the faces."""
    if WITHOUT_MASK not in classes or min(truth.sum(), (~truth).sum()) < min_faces:
        return default
    base_ba, base_rec = mask_rates(probs, truth, classes, default)
    grid = np.round(np.arange(0.02, 0.99, 0.01), 2)
    rates = [mask_rates(probs, truth, classes, float(t)) for t in grid]
    allowed = [(ba, float(t)) for t, (ba, rec) in zip(grid, rates) if rec >= base_rec]
    if not allowed:
        return default
    best_ba = max(ba for ba, _ in allowed)
    if best_ba < base_ba + MASK_GAIN:
        return default
    best = [t for ba, t in allowed if ba >= best_ba - 1e-9]
    chosen = best[len(best) // 2]

    def gain(idx) -> float:
        p, t = probs[idx], truth[idx]
        new, new_rec = mask_rates(p, t, classes, chosen)
        old, old_rec = mask_rates(p, t, classes, default)
        if np.isnan(new) or np.isnan(old) or new_rec < old_rec:
            return -1.0
        return new - old

    return chosen if gain_holds(gain, len(truth)) else default


def _best(options, score) -> tuple:
    """(option, score) with the highest score; ties go to the later option."""
    scored = [(score(o), i, o) for i, o in enumerate(options)]
    value, _, option = max(scored)
    return option, value


def fit_site(scenes, cache, classes, defaults: Settings, margin: float = 0.01) -> Fit:
    """Fit settings on ``scenes`` (with their cached detector output); see the module doc."""
    m = MapScorer(scenes, cache, classes)
    strict = MapScorer(scenes, cache, classes, iou=BOX_FIT_IOU)

    def better(current: Settings, trial: Settings, gain: float = STEP_GAIN) -> bool:
        return m(trial) > m(current) + gain and m.gain_holds(current, trial)

    def fits_better(current: Settings, trial: Settings, gain: float = STEP_GAIN) -> bool:
        """Better at IoU 0.5, or as good there and better at ``BOX_FIT_IOU``."""
        return better(current, trial, gain) or (
            m(trial) >= m(current) and strict(trial) > strict(current) + gain
            and strict.gain_holds(current, trial))

    base = m(defaults)
    s = replace(defaults)
    report: dict = {"map50_default": round(base, 4)}
    # 1. box convention
    box_map, pairs = fit_box_map(scenes, cache, defaults.face_threshold)
    report["box_pairs"] = pairs
    report["box_map_fitted"] = list(box_map)
    if box_map != s.box_map and fits_better(s, replace(s, box_map=box_map)):
        s = replace(s, box_map=box_map)
    # 2. smallest face, in the site's convention (ties go to the smaller face)
    sides = face_sides(scenes)
    if len(sides):
        report["annotated_face_px"] = {f"p{q}": round(float(np.percentile(sides, q)), 1)
                                       for q in (1, 5, 50)}
        options = sorted({0, *(int(MIN_FACE_SLACK * np.percentile(sides, q))
                               for q in MIN_FACE_PERCENTILES)}, reverse=True)
        chosen, _ = _best(options, lambda v: m(replace(s, min_face=v)))
        if better(s, replace(s, min_face=chosen)):
            s = replace(s, min_face=chosen)
    # 3. face threshold (ties go to the higher threshold: fewer false boxes)
    options = sorted({*FACE_THRESHOLDS, defaults.face_threshold})
    options = [t for t in options if t >= min(LOWEST_FACE_THRESHOLD, defaults.face_threshold)]
    chosen, _ = _best(options, lambda t: m(replace(s, face_threshold=t)))
    if better(s, replace(s, face_threshold=chosen)):
        s = replace(s, face_threshold=chosen)
    # the whole fit must beat the defaults by the margin
    if s != defaults and not fits_better(defaults, s, margin):
        s = replace(defaults)
    report["kept_default"] = s == defaults
    report["map50_fitted"] = round(m(s), 4)
    # 4. mask decision on the faces found
    probs, truth = mask_outcomes(scenes, cache, s, classes)
    report["mask_faces"] = int(len(truth))
    report["mask_faces_by_class"] = {WITH_MASK: int((~truth).sum()),
                                     WITHOUT_MASK: int(truth.sum())}
    s = replace(s, mask_threshold=fit_mask_threshold(probs, truth, classes,
                                                     defaults.mask_threshold))
    report["mask_fit"] = mask_fit_note(truth, classes, s.mask_threshold,
                                       defaults.mask_threshold)
    return Fit(settings=s, defaults=defaults, report=report)


def mask_fit_note(truth, classes, chosen: float, default: float) -> str:
    """Why the without_mask threshold is what it is, in a line."""
    if WITHOUT_MASK not in classes:
        return "kept the model's: it has no without_mask class"
    n_without, n_with = int(truth.sum()), int((~truth).sum())
    if min(n_with, n_without) < MASK_MIN_FACES:
        return (f"kept the model's ({default:g}): fitting it needs {MASK_MIN_FACES} found "
                f"faces of each class, the fitting scenes gave {n_with} with_mask and "
                f"{n_without} without_mask")
    if chosen == default:
        return "kept the model's: no threshold did better on the fitting scenes"
    return f"fitted: {chosen:g} (the model's: {default:g})"


def held_out_report(scenes, cache, classes, before: Settings, after: Settings,
                    after_cache=None) -> dict:
    """mAP at 0.5 / 0.3, loose-match share and mask balanced accuracy, before and after
    (``after_cache``: the detector's output as the fitted settings run it, when it differs
    from ``cache``)."""
    out: dict = {"scenes": len(scenes)}
    for name, s, c in (("before", before, cache), ("after", after, after_cache or cache)):
        r = score_detections(scenes, predictions(c, s, classes), classified=True)
        probs, truth = mask_outcomes(scenes, c, s, classes)
        ba, rec = mask_rates(probs, truth, classes, s.mask_threshold)
        out[name] = {
            "map50": r.get("map50"), "map30": r.get("map30"),
            "face_precision50": r["precision50"], "face_recall50": r["recall50"],
            "false_boxes_per_image": r["false_boxes_per_image"],
            "loose_match_share": r["loose_match_share"],
            "mask_balanced_accuracy": None if np.isnan(ba) else round(ba, 4),
            "without_mask_recall": None if np.isnan(rec) else round(rec, 4),
        }
    return out


def split_scenes(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (fit, held-out) scene indices; ``holdout`` is the held-out fraction."""
    if not 0.0 <= holdout < 1.0:
        raise MaskwatchError(f"--holdout must be in [0, 1), got {holdout}")
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(n * holdout))
    if holdout > 0:
        k = max(1, k)
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


def site_params(fit: Fit, detector_name: str, fitted: dict) -> SiteParams:
    """The settings that differ from the defaults, as stored in the model's metadata."""
    s, d = fit.settings, fit.defaults
    return SiteParams(
        detector=detector_name,
        box_map=list(s.box_map),
        min_face=s.min_face,
        face_threshold=None if s.face_threshold == d.face_threshold else s.face_threshold,
        fitted=fitted,
    )


#: Fewest fitting scenes accepted, and the count below which a warning is printed.
MIN_FIT_SCENES = 5
FEW_SCENES = 20
#: Held-out scenes (read) under which before/after is flagged as a rough guide.
FEW_HELD_OUT = 10


def calibrate(
    data, out, model=None, detector: str = "centerface", detect_size: int | None = None,
    upscale: bool | None = None, holdout: float = 0.3, seed: int = 0, margin: float = 0.01,
    threads: int = 0, force: bool = False, progress: bool = True,
    on_error: Callable[[str], None] | None = None, face_detector=None, classifier=None,
) -> dict:
    """Fit site settings on the scenes at ``data`` and write them with a copy of ``model``
    (default: the bundled one) to ``out``; returns the JSON-ready report.

    ``detect_size`` / ``upscale``: None leaves the pipeline's defaults, as ``detect`` does.
    ``face_detector`` / ``classifier`` replace the ones built from ``detector`` / ``model``
    (the written copy is still of ``model``)."""
    import sys
    from pathlib import Path

    from maskwatch.detection.evaluate import load_scenes
    from maskwatch.inference.classifier import bundled_model_path
    from maskwatch.inference.modelfile import ModelInfo, copy_onnx_model

    src = Path(model) if model else bundled_model_path()
    out = Path(out)
    if src.suffix.lower() != ".onnx" or out.suffix.lower() != ".onnx":
        raise MaskwatchError("calibrate reads and writes ONNX models (--model and --out .onnx)")
    for path in (out, out.with_suffix(".json")):  # before the detector runs, not after
        if path.is_dir():
            raise MaskwatchError(f"{path}: is a folder; --out names the .onnx file to write")
        if path.exists() and not force:
            raise MaskwatchError(f"{path}: exists; choose another --out or pass --overwrite")
    if out.resolve() == src.resolve():
        raise MaskwatchError(f"{out}: is the source model; write the copy elsewhere")
    info = ModelInfo.load_json(src.with_suffix(".json"))
    warn = lambda m: print(f"maskwatch: warning: {m}", file=sys.stderr)  # noqa: E731
    # a site model is refitted from the defaults: its settings are replaced, never stacked
    previous = info.site
    model_threshold = float(info.threshold)
    if previous is not None:
        model_threshold = float(previous.fitted.get("model_threshold", model_threshold))
        warn(f"{src.name} is a site model: calibrate fits from the detector's own boxes and "
             f"the model's own thresholds (without_mask {model_threshold:g}) again; its site "
             "settings are replaced, not built on")
    scenes = load_scenes(data, warn=warn)
    fit_idx, held_idx = split_scenes(len(scenes), holdout, seed)
    if len(fit_idx) < MIN_FIT_SCENES:
        raise MaskwatchError(f"{data}: {len(fit_idx)} scene(s) to fit on; calibrate needs at "
                             f"least {MIN_FIT_SCENES} (20-200 recommended)")
    if len(scenes) < FEW_SCENES:
        print(f"maskwatch: only {len(scenes)} scenes: the fit will be rough (20-200 "
              "recommended)", file=sys.stderr)
    given = {k: v for k, v in (("detect_size", detect_size), ("upscale", upscale))
             if v is not None}
    det = Detector(face_detector=face_detector or detector,
                   classifier=classifier if classifier is not None else str(src),
                   threads=threads, min_face=0, site=False, **given)
    defaults = Settings(box_map=DEFAULT_BOX_MAPS.get(det.face_detector.name, IDENTITY),
                        face_threshold=float(det.face_detector.threshold),
                        mask_threshold=model_threshold)
    det.face_detector.threshold = min(LOWEST_FACE_THRESHOLD, defaults.face_threshold)
    cache = run_detector(scenes, det, progress, on_error)
    if all(c is None for c in cache):
        raise MaskwatchError(f"{data}: none of the scenes could be read")
    classes = det.classes
    found = score_detections(scenes, predictions(cache, Settings(face_threshold=0.0), classes))
    if found["faces"] and not found["recall30"]:
        raise MaskwatchError(
            f"{data}: the face detector ({det.face_detector.name}) found none of the "
            f"{found['faces']} annotated faces (median side {found['face_px_median']} px); "
            "calibrate fits conventions and thresholds, not new faces: nothing to fit")
    pick = lambda idx: ([scenes[i] for i in idx], [cache[i] for i in idx])  # noqa: E731
    fit = fit_site(*pick(fit_idx), classes, defaults, margin)
    s = fit.settings
    report: dict = {
        "scenes": len(scenes),
        "unreadable_scenes": sum(c is None for c in cache),
        "fit_scenes": len(fit_idx),
        "held_out_scenes": len(held_idx),
        "seed": seed,
        "detector": det.face_detector.name,
        "box_map": list(s.box_map),
        "min_face": s.min_face,
        "face_threshold": s.face_threshold,
        "mask_threshold": s.mask_threshold,
        "defaults": {"face_threshold": defaults.face_threshold,
                     "mask_threshold": defaults.mask_threshold},
        "fit": fit.report,
    }
    if previous is not None:
        report["replaced_site"] = {k: v for k, v in asdict(previous).items() if k != "fitted"}
    by_class = fit.report["mask_faces_by_class"]
    if WITHOUT_MASK not in classes or min(by_class.values()) < MASK_MIN_FACES:
        warn(f"without_mask threshold {fit.report['mask_fit']}")
    if held_idx:
        after_cache = None
        if s.min_face > 0:  # the site's finer pass skips faces under min_face: run it so
            det.refine_min_side = refine_min_side(s.min_face, s.box_map)
            after_cache = run_detector([scenes[i] for i in held_idx], det, False, None)
        report["held_out"] = held_out_report(*pick(held_idx), classes, defaults, s,
                                             after_cache)
        read = sum(cache[i] is not None for i in held_idx)
        if read < FEW_HELD_OUT:
            report["held_out"]["note"] = (f"only {read} held-out scene(s) read: before/after "
                                          "is a rough guide")
            warn(f"mAP before/after is on {read} held-out scene(s) only: a rough guide")
    fitted = {k: report[k] for k in ("scenes", "fit_scenes", "held_out_scenes", "seed")}
    fitted.update(given, source_model=(previous.fitted.get("source_model", src.name)
                                       if previous is not None else src.name),
                  model_threshold=model_threshold)
    if held_idx:
        fitted["held_out_map50"] = {k: report["held_out"][k]["map50"]
                                    for k in ("before", "after")}
    site = site_params(fit, det.face_detector.name, fitted)
    copy_onnx_model(src, out, replace(info, threshold=s.mask_threshold, site=site), force)
    report["model"] = str(out)
    return report
