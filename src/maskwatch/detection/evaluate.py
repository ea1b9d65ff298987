"""Detection metrics on Pascal-VOC scenes: VOC AP at IoU 0.5, recall, false boxes."""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskwatch.boxes import greedy_pairs, iou_matrix
from maskwatch.detection.pipeline import BGRWarning
from maskwatch.errors import LayoutError, MaskwatchError
from maskwatch.labels import CANONICAL, INCORRECT_MASK, WITH_MASK, WITHOUT_MASK

#: Classes averaged into ``map50`` (incorrect_mask is rare and reported on its own).
MAP_CLASSES = (WITH_MASK, WITHOUT_MASK)


@dataclass
class Scene:
    """One annotated image: its path and ground-truth boxes with canonical labels.

    ``difficult``: per box, whether the annotation marks it difficult (Pascal VOC); such a
    face is neither found nor missed, and a detection matching it best is ignored. A scene
    without boxes is a photo annotated as holding no face: every detection there is false.
    """

    path: Path
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)


def load_scenes(root: str | Path, limit: int | None = None,
                warn: Callable[[str], None] | None = None, split: str = "all") -> list[Scene]:
    """Annotated scenes of a dataset with boxes, read with ``maskwatch.data.load_dataset``
    (any layout it knows: VOC, YOLO, CSV), with each box's difficult flag; images annotated
    as holding no face (``Dataset.empty_images``) are scenes without boxes. ``warn`` gets
    each line of what reading left out (``Dataset.loading_warnings``). ``split``: only the
    scenes of that split (train, val, test; ``all``: every one); data without splits is
    read whole, and a split the data lacks is an error naming those it has."""
    from maskwatch.data import load_dataset, normalise_split

    ds = load_dataset(root)
    if warn is not None:
        for line in ds.loading_warnings():
            warn(line)
    wanted = None if split == "all" else normalise_split(split) or split
    present = ({s.split for s in ds.samples if s.box is not None}
               | {ds.empty_image_splits.get(p) for p in ds.empty_images})
    if wanted is not None and present - {None}:
        if wanted not in present:
            names = ", ".join(sorted(p or "none" for p in present))
            raise LayoutError(f"{root}: no scene in split {split!r} (the data has: {names})")
    else:
        wanted = None
    scenes: dict[Path, Scene] = {}
    for s in ds.samples:
        if s.box is None or (wanted is not None and s.split != wanted):
            continue
        scene = scenes.setdefault(Path(s.path), Scene(path=Path(s.path)))
        scene.boxes.append(tuple(int(round(v)) for v in s.box))
        scene.labels.append(s.label)
        scene.difficult.append(bool(s.difficult))
    for path in ds.empty_images:  # an image annotated in two places keeps its boxes
        if wanted is None or ds.empty_image_splits.get(path) == wanted:
            scenes.setdefault(Path(path), Scene(path=Path(path)))
    if not scenes:
        raise LayoutError(f"{root}: no face boxes found (need a dataset of scenes with boxes)")
    out = sorted(scenes.values(), key=lambda sc: _natural(sc.path.name))
    return out[:limit] if limit else out


def difficult_flags(scene: Scene) -> list[bool]:
    """The scene's difficult flags, one per box (missing ones: False)."""
    flags = [bool(d) for d in scene.difficult][:len(scene.boxes)]
    return flags + [False] * (len(scene.boxes) - len(flags))


def one_to_one(
    ious: np.ndarray, difficult: Sequence[bool], threshold: float
) -> tuple[list[tuple[int, int]], int]:
    """One-to-one matches of truths (rows) and detections (columns) at ``threshold``, as
    :func:`maskwatch.boxes.greedy_pairs`, the VOC way for difficult truths: a detection
    whose best truth is a difficult one at ``threshold`` or more is ignored, and difficult
    truths are never matched. Returns (pairs, number of detections ignored); with no
    difficult truth exactly ``greedy_pairs(ious, threshold)`` and 0."""
    hard = np.asarray(difficult, bool).reshape(-1)
    if not hard.any() or ious.size == 0:
        return greedy_pairs(ious, threshold), 0
    ignored = hard[ious.argmax(axis=0)] & (ious.max(axis=0) >= threshold)
    rows, cols = np.flatnonzero(~hard), np.flatnonzero(~ignored)
    pairs = greedy_pairs(ious[np.ix_(rows, cols)], threshold)
    return [(int(rows[r]), int(cols[c])) for r, c in pairs], int(ignored.sum())


def _natural(text: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def voc_ap(recall: Sequence[float], precision: Sequence[float]) -> float:
    """VOC all-point interpolated AP: area under the monotone precision envelope."""
    mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def match_image(
    boxes: Sequence[Sequence[float]], truths: Sequence[Sequence[float]],
    difficult: Sequence[bool] | None, iou: float,
) -> np.ndarray:
    """Outcome of one image's detections, taken in the given (best-first) order: 1 true
    positive, 0 false positive (nothing at ``iou``, or a truth already matched), -1 ignored
    (a difficult truth)."""
    out = np.zeros(len(boxes))
    if not len(boxes) or not len(truths):
        return out
    difficult = difficult or [False] * len(truths)
    ious = iou_matrix(np.asarray(boxes), np.asarray(truths))
    used = np.zeros(len(truths), bool)
    for k, row in enumerate(ious):
        j = int(np.argmax(row))
        if row[j] < iou:
            continue
        if difficult[j]:
            out[k] = -1
        elif not used[j]:
            used[j] = True
            out[k] = 1
    return out


def ap_from_outcomes(outcomes: np.ndarray, n_truth: int) -> float:
    """VOC AP from the outcomes (see :func:`match_image`) of detections ranked best first."""
    outcomes = np.asarray(outcomes)
    outcomes = outcomes[outcomes >= 0]
    if n_truth == 0:
        return float("nan")
    ctp = np.cumsum(outcomes == 1)
    cfp = np.cumsum(outcomes == 0)
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return voc_ap(ctp / n_truth, prec)


def average_precision(
    detections: Iterable[tuple[int, float, Sequence[float]]],
    truths: dict[int, list[Sequence[float]]],
    iou: float = 0.5,
    difficult: dict[int, list[bool]] | None = None,
) -> tuple[float, int, int]:
    """AP of one class. ``detections``: (image id, score, box); ``truths``: image id -> boxes.

    Each ground-truth box is matched at most once, highest scores first; a second match is
    a false positive. Difficult boxes count neither way. Returns (AP, true pos., #truths).
    """
    difficult = difficult or {}
    n_truth = sum(
        sum(1 for j in range(len(b)) if not (difficult.get(i) or [False] * len(b))[j])
        for i, b in truths.items()
    )
    dets = sorted(detections, key=lambda d: -d[1])
    per_image: dict[int, list[int]] = {}
    for k, d in enumerate(dets):
        per_image.setdefault(d[0], []).append(k)
    outcomes = np.zeros(len(dets))
    for img, ks in per_image.items():
        outcomes[ks] = match_image([dets[k][2] for k in ks], truths.get(img, []),
                                   difficult.get(img), iou)
    if n_truth == 0:
        return float("nan"), 0, 0
    return ap_from_outcomes(outcomes, n_truth), int(np.sum(outcomes == 1)), n_truth


def _faces_of(result) -> list[tuple[tuple[int, int, int, int], float, str | None, dict]]:
    """Normalise pipeline Faces or raw detector tuples to (box, face_score, label, scores)."""
    out = []
    for r in result:
        if hasattr(r, "box"):
            out.append((tuple(r.box), float(r.face_score), r.label, dict(r.scores or {})))
        else:
            out.append((tuple(int(v) for v in r[:4]), float(r[4]), None, {}))
    return out


#: Size bins (longer box side, pixels) for false boxes per image: (name, low, high).
SIZE_BINS = (("<32px", 0, 32), ("32-64px", 32, 64), ("64-128px", 64, 128),
             (">=128px", 128, float("inf")))


def detect_scenes(
    scenes: Sequence[Scene],
    detect: Callable[[np.ndarray], list],
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    read: Callable[[Path], tuple[np.ndarray, tuple[float, float]]] | None = None,
) -> tuple[list[list | None], float]:
    """Run ``detect`` on every scene: (normalised faces per scene, None where the image
    could not be read; seconds spent in ``detect``). ``read``: how to decode a scene's
    file when not at full size (``Detector.read``: the array and its scale, which
    ``detect`` is then given with the file, as ``Detector.detect`` takes them)."""
    from tqdm import tqdm

    from maskwatch.imaging import load_rgb

    predictions: list[list | None] = []
    seconds = 0.0
    for scene in tqdm(scenes, desc="detect", unit="img", disable=not progress):
        try:
            rgb, scale = read(scene.path) if read else (load_rgb(scene.path), (1.0, 1.0))
        except MaskwatchError as exc:
            predictions.append(None)
            if on_error:
                on_error(str(exc))
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # decoded here, so RGB: the BGR check is moot
            warnings.simplefilter("ignore", BGRWarning)
            found = (detect(rgb) if scale == (1.0, 1.0)
                     else detect(rgb, scale=scale, source=scene.path))
            predictions.append(_faces_of(found))
        seconds += time.perf_counter() - t0
    return predictions, seconds


def class_aps(
    scenes: Sequence[Scene], predictions: Sequence[list | None], iou: float = 0.5,
    classes: Sequence[str] = CANONICAL,
) -> dict[str, float]:
    """VOC AP per class (detection score = face score x class probability) over the scenes
    that were read; classes without ground truth are left out."""
    dets: dict[str, list] = {c: [] for c in classes}
    truths: dict[str, dict[int, list]] = {c: {} for c in classes}
    hard: dict[str, dict[int, list]] = {c: {} for c in classes}
    for idx, (scene, faces) in enumerate(zip(scenes, predictions)):
        if faces is None:
            continue
        for c in classes:
            truths[c][idx] = [b for b, lab in zip(scene.boxes, scene.labels) if lab == c]
            hard[c][idx] = [d for d, lab in zip(difficult_flags(scene), scene.labels) if lab == c]
        for box, face_score, _label, scores in faces:
            for c in classes:
                if c in scores:
                    dets[c].append((idx, face_score * scores[c], box))
    out = {}
    for c in classes:
        value, _, count = average_precision(dets[c], truths[c], iou, hard[c])
        if count:
            out[c] = round(value, 4)
    return out


def mean_ap(aps: dict[str, float]) -> float | None:
    """Mean of the with_mask and without_mask APs (None when neither has ground truth)."""
    both = [aps[c] for c in MAP_CLASSES if c in aps]
    return round(float(np.mean(both)), 4) if both else None


def scene_outcomes(
    scenes: Sequence[Scene], predictions: Sequence[list | None], iou: float = 0.5,
    classes: Sequence[str] = MAP_CLASSES,
) -> dict[str, list]:
    """Per class, per scene: (detection scores, outcomes, number of truths), so that the AP
    of any subset of the scenes (a bootstrap resample) is quick to compute with
    :func:`subset_map`. None for scenes that were not read."""
    out: dict[str, list] = {c: [] for c in classes}
    for scene, faces in zip(scenes, predictions):
        for c in classes:
            if faces is None:
                out[c].append(None)
                continue
            dets = sorted(((f[1] * f[3][c], f[0]) for f in faces if c in f[3]),
                          key=lambda d: -d[0])
            gts = [(b, d) for b, lab, d in zip(scene.boxes, scene.labels, difficult_flags(scene))
                   if lab == c]
            hard = [d for _, d in gts]
            outcomes = match_image([d[1] for d in dets], [b for b, _ in gts], hard, iou)
            out[c].append((np.asarray([d[0] for d in dets]), outcomes,
                           sum(1 for h in hard if not h)))
    return out


def subset_map(outcomes: dict[str, list], idx: Sequence[int]) -> float:
    """Mean AP over the classes of :func:`scene_outcomes` for the scenes ``idx`` (repeats
    allowed); 0 when no class has a truth there."""
    aps = []
    for per_scene in outcomes.values():
        parts = [per_scene[i] for i in idx if per_scene[i] is not None]
        n_truth = sum(p[2] for p in parts)
        if not n_truth:
            continue
        scores = np.concatenate([p[0] for p in parts])
        order = np.argsort(-scores, kind="stable")
        aps.append(ap_from_outcomes(np.concatenate([p[1] for p in parts])[order], n_truth))
    return float(np.mean(aps)) if aps else 0.0


def face_ap(scenes: Sequence[Scene], predictions: Sequence[list | None], iou: float
            ) -> float | None:
    """VOC AP of finding faces whatever their class (ranked by face score); difficult
    faces count neither way. None when the scenes read hold no (non-difficult) face."""
    dets, truths, hard = [], {}, {}
    for idx, (scene, faces) in enumerate(zip(scenes, predictions)):
        if faces is None:
            continue
        truths[idx] = list(scene.boxes)
        hard[idx] = difficult_flags(scene)
        dets += [(idx, f[1], f[0]) for f in faces]
    value, _, n_truth = average_precision(dets, truths, iou, hard)
    return round(value, 4) if n_truth else None


def _side(box) -> float:
    return max(box[2] - box[0], box[3] - box[1])


def score_detections(
    scenes: Sequence[Scene], predictions: Sequence[list | None], recall_iou: float = 0.4,
    classified: bool = False,
) -> dict:
    """Score normalised predictions (see :func:`detect_scenes`) against the scenes.

    Face finding, whatever the class: recall at ``recall_iou`` (all faces, per class, faces
    >= 32 px), false boxes per image (best IoU below ``recall_iou``; also by box size), and
    one-to-one precision/recall at IoU 0.5 and 0.3. ``loose_match_share``: of the boxes that
    match a face at IoU >= 0.3, the share below 0.5 - high when the annotators draw boxes
    another way (e.g. whole heads). With class scores: VOC AP per class at IoU 0.5 and 0.3
    and their means over with_mask and without_mask (``map50``, ``map30``); ``classified``:
    score them even when no box was found (a classifier that got no face scores 0 AP).

    Difficult faces (VOC) are neither found nor missed: they are left out of ``faces``
    and every recall, a box matching one is not false, and a box whose best match at IoU
    0.5 (0.3) is one counts neither way in ``precision50`` (``precision30``). Scenes
    without faces count as images: every box there is false. ``difficult_faces`` and
    ``images_without_faces`` say how many the scenes read held.
    """
    n_gt = {c: 0 for c in CANONICAL}
    hit = {c: 0 for c in CANONICAL}
    big_gt = big_hit = 0
    n_boxes = tp50 = tp30 = loose = n_images = gt_total = 0
    ignored50 = ignored30 = n_hard = faceless = 0
    false_sizes: list[float] = []
    face_sizes: list[float] = []
    for scene, faces in zip(scenes, predictions):
        if faces is None:
            continue
        n_images += 1
        gt = np.asarray(scene.boxes, np.float64).reshape(-1, 4)
        hard = difficult_flags(scene)
        pred = np.asarray([f[0] for f in faces], np.float64).reshape(-1, 4)
        ious = iou_matrix(gt, pred)
        n_boxes += len(pred)
        gt_total += hard.count(False)
        n_hard += hard.count(True)
        faceless += not len(gt)
        classified = classified or any(f[2] is not None for f in faces)
        for j, label in enumerate(scene.labels):
            if hard[j]:
                continue
            n_gt[label] += 1
            found = bool(ious.shape[1] and ious[j].max() >= recall_iou)
            hit[label] += found
            face_sizes.append(_side(scene.boxes[j]))
            if face_sizes[-1] >= 32:
                big_gt += 1
                big_hit += found
        if len(pred):
            best = ious.max(axis=0) if len(gt) else np.zeros(len(pred))
            false_sizes += [_side(b) for b, v in zip(pred, best) if v < recall_iou]
            pairs50, ignored = one_to_one(ious, hard, 0.5)
            tp50 += len(pairs50)
            ignored50 += ignored
            pairs30, ignored = one_to_one(ious, hard, 0.3)
            tp30 += len(pairs30)
            ignored30 += ignored
            loose += sum(1 for g, p in pairs30 if ious[g, p] < 0.5)
    if n_images == 0:
        raise MaskwatchError("none of the scenes could be read")
    report: dict = {
        "images": n_images,
        "faces": gt_total,
        "difficult_faces": n_hard,
        "images_without_faces": faceless,
        "failed": sum(1 for f in predictions if f is None),
        "recall_iou": recall_iou,
        "recall": _ratio(sum(hit.values()), gt_total),
        "recall_by_class": {c: _ratio(hit[c], n_gt[c]) for c in CANONICAL if n_gt[c]},
        "recall_32px": _ratio(big_hit, big_gt),
        "false_boxes_per_image": round(len(false_sizes) / n_images, 4),
        "false_boxes_by_size": {
            name: round(sum(1 for s in false_sizes if lo <= s < hi) / n_images, 4)
            for name, lo, hi in SIZE_BINS
        },
        "false_box_px_median": round(float(np.median(false_sizes)), 1) if false_sizes else None,
        "face_px_median": round(float(np.median(face_sizes)), 1) if face_sizes else None,
        "precision50": _ratio(tp50, n_boxes - ignored50),
        "recall50": _ratio(tp50, gt_total),
        "precision30": _ratio(tp30, n_boxes - ignored30),
        "recall30": _ratio(tp30, gt_total),
        "loose_match_share": _ratio(loose, tp30),
        "face_ap50": face_ap(scenes, predictions, 0.5),
        "face_ap30": face_ap(scenes, predictions, 0.3),
    }
    if classified:
        for iou, key in ((0.5, "50"), (0.3, "30")):
            ap = class_aps(scenes, predictions, iou)
            report[f"ap{key}"] = ap
            report[f"map{key}"] = mean_ap(ap)
            if INCORRECT_MASK in ap:
                report[f"incorrect_mask_ap{key}"] = ap[INCORRECT_MASK]
    return report


def score_counting(
    scenes: Sequence[Scene],
    predictions: Sequence[list | None],
    count_threshold: float,
    non_compliant: Sequence[str] = ("without_mask", "incorrect_mask"),
) -> dict:
    """What a user reads off the faces that count (face score >= ``count_threshold``), photo
    by photo: how far the face count is off, and, with class labels, how often a photo is
    flagged as holding a non-compliant face that it does not hold, or not flagged when it
    does. Also the counted boxes' precision and recall at IoU 0.5.

    Difficult faces (VOC) count neither way: the face count is off only when outside the
    range from the faces to the faces plus the difficult ones, a box matching a difficult
    face best is left out of the precision, and a photo whose only non-compliant faces are
    difficult is in neither flag count. Photos without faces count as photos."""
    images = count_error = boxes = tp50 = faces = ignored50 = 0
    flagged_wrongly = clean = missed = holding = 0
    annotated: Counter = Counter()
    labelled: Counter = Counter()
    probabilities: Counter = Counter()
    for scene, found in zip(scenes, predictions):
        if found is None:
            continue
        kept = [f for f in found if f[1] >= count_threshold]
        hard = difficult_flags(scene)
        easy = [label for label, h in zip(scene.labels, hard) if not h]
        annotated.update(easy)
        labelled.update(f[2] for f in kept)
        for f in kept:
            probabilities.update(f[3])
        images += 1
        boxes += len(kept)
        faces += len(easy)
        count_error += max(len(easy) - len(kept), len(kept) - len(scene.labels), 0)
        gt = np.asarray(scene.boxes, np.float64).reshape(-1, 4)
        pred = np.asarray([f[0] for f in kept], np.float64).reshape(-1, 4)
        pairs, ignored = one_to_one(iou_matrix(gt, pred), hard, 0.5)
        tp50 += len(pairs)
        ignored50 += ignored
        truly = any(label in non_compliant for label in easy)
        maybe = any(label in non_compliant for label in scene.labels)  # difficult ones too
        said = any(f[2] in non_compliant for f in kept)
        holding += truly
        missed += truly and not said
        clean += not maybe
        flagged_wrongly += said and not maybe
    out = {
        "count_threshold": round(float(count_threshold), 4),
        "counted_boxes": boxes,
        "precision50": _ratio(tp50, boxes - ignored50),
        "recall50": _ratio(tp50, faces),
        "count_error_per_image": round(count_error / images, 4) if images else None,
    }
    if any(f[2] is not None for found in predictions if found for f in found):
        out.update({
            "non_compliant": list(non_compliant),
            "images_without_non_compliant": clean,
            "flagged_wrongly": flagged_wrongly,
            "images_with_non_compliant": holding,
            "missed": missed,
            # each class's share of the annotated faces, of the counted faces' labels, and
            # the counted faces' mean probability of it (what `detect` prints)
            "shares": {c: {"annotated": _ratio(annotated[c], faces),
                           "labelled": _ratio(labelled[c], boxes),
                           "mean_probability": (round(probabilities[c] / boxes, 4)
                                                if boxes else None)}
                       for c in CANONICAL if annotated[c] or labelled[c] or probabilities[c]},
        })
    return out


def evaluate_detection(
    scenes: Sequence[Scene],
    detect: Callable[[np.ndarray], list],
    recall_iou: float = 0.4,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    count_threshold: float | None = None,
    read: Callable[[Path], tuple[np.ndarray, tuple[float, float]]] | None = None,
    classified: bool = False,
) -> dict:
    """Run ``detect`` (a pipeline ``Detector.detect`` or a ``FaceDetector.detect``) on every
    scene and score it with :func:`score_detections` (plus ``ms_per_image``, and with
    ``count_threshold`` a ``counting`` section from :func:`score_counting`). ``read`` and
    ``classified`` as in :func:`detect_scenes` and :func:`score_detections`."""
    if not scenes:
        raise MaskwatchError("no annotated scenes to evaluate")
    predictions, seconds = detect_scenes(scenes, detect, progress, on_error, read)
    report = score_detections(scenes, predictions, recall_iou, classified)
    if count_threshold is not None:
        report["counting"] = score_counting(scenes, predictions, count_threshold)
    report["ms_per_image"] = round(1000 * seconds / report["images"], 2)
    return report


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None
