"""Detection metrics on Pascal-VOC scenes: VOC AP at IoU 0.5, recall, false boxes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskwatch.boxes import iou_matrix
from maskwatch.errors import LayoutError, MaskwatchError
from maskwatch.labels import CANONICAL, INCORRECT_MASK, WITH_MASK, WITHOUT_MASK, normalise_label

#: Classes averaged into ``map50`` (incorrect_mask is rare and reported on its own).
MAP_CLASSES = (WITH_MASK, WITHOUT_MASK)


@dataclass
class Scene:
    """One annotated image: its path and ground-truth boxes with canonical labels."""

    path: Path
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)


def _int(text: str | None) -> int:
    return int(round(float(text or 0)))


def parse_voc_xml(xml_path: Path, images_dir: Path | None = None) -> Scene:
    """Read one Pascal-VOC annotation (with defusedxml); unknown class names are skipped."""
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    try:
        root = ElementTree.parse(str(xml_path)).getroot()
    except (ElementTree.ParseError, DefusedXmlException, OSError) as exc:
        raise LayoutError(f"{xml_path}: not a readable VOC annotation ({exc})") from None
    images_dir = images_dir or xml_path.parent.parent / "images"
    name = (root.findtext("filename") or "").strip()
    path = images_dir / name if name else None
    if path is None or not path.is_file():
        found = sorted(images_dir.glob(xml_path.stem + ".*"))
        path = found[0] if found else images_dir / (name or xml_path.stem + ".jpg")
    scene = Scene(path=path)
    for obj in root.iter("object"):
        label = normalise_label(obj.findtext("name") or "")
        box = obj.find("bndbox")
        if label is None or box is None:
            continue
        x1, y1 = _int(box.findtext("xmin")), _int(box.findtext("ymin"))
        x2, y2 = _int(box.findtext("xmax")), _int(box.findtext("ymax"))
        if x2 <= x1 or y2 <= y1:
            continue
        scene.boxes.append((x1, y1, x2, y2))
        scene.labels.append(label)
        scene.difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return scene


def load_scenes(root: str | Path, limit: int | None = None) -> list[Scene]:
    """Annotated scenes of a dataset with boxes, read with ``maskwatch.data.load_dataset``
    (any layout it knows: VOC, YOLO, CSV); falls back to :func:`load_voc`."""
    try:
        from maskwatch.data import load_dataset
    except ImportError:
        return load_voc(root, limit)
    ds = load_dataset(root)
    scenes: dict[Path, Scene] = {}
    for s in ds.samples:
        if s.box is None:
            continue
        scene = scenes.setdefault(Path(s.path), Scene(path=Path(s.path)))
        scene.boxes.append(tuple(int(round(v)) for v in s.box))
        scene.labels.append(s.label)
        scene.difficult.append(False)
    if not scenes:
        raise LayoutError(f"{root}: no face boxes found (need a dataset of scenes with boxes)")
    out = sorted(scenes.values(), key=lambda sc: _natural(sc.path.name))
    return out[:limit] if limit else out


def load_voc(root: str | Path, limit: int | None = None) -> list[Scene]:
    """Load a VOC folder: ``annotations/*.xml`` (or ``Annotations``) + ``images/``."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: no such folder")
    ann = next((root / d for d in ("annotations", "Annotations") if (root / d).is_dir()), None)
    if ann is None:
        if any(root.glob("*.xml")):
            ann = root
        else:
            raise LayoutError(f"{root}: no annotations/*.xml here (expected Pascal VOC)")
    img_dir = next((root / d for d in ("images", "JPEGImages") if (root / d).is_dir()), ann)
    xmls = sorted(ann.glob("*.xml"), key=lambda p: _natural(p.stem))
    if not xmls:
        raise LayoutError(f"{ann}: no .xml annotations")
    if limit:
        xmls = xmls[:limit]
    return [parse_voc_xml(x, img_dir) for x in xmls]


def _natural(text: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def voc_ap(recall: Sequence[float], precision: Sequence[float]) -> float:
    """VOC all-point interpolated AP: area under the monotone precision envelope."""
    mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


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
    used = {i: np.zeros(len(b), bool) for i, b in truths.items()}
    tp = np.zeros(len(dets))
    fp = np.zeros(len(dets))
    for k, (img, _score, box) in enumerate(dets):
        gts = truths.get(img, [])
        if not gts:
            fp[k] = 1
            continue
        ious = iou_matrix(np.asarray([box]), np.asarray(gts))[0]
        j = int(np.argmax(ious))
        if ious[j] >= iou:
            if (difficult.get(img) or [False] * len(gts))[j]:
                continue
            if not used[img][j]:
                used[img][j] = True
                tp[k] = 1
            else:
                fp[k] = 1
        else:
            fp[k] = 1
    if n_truth == 0:
        return float("nan"), 0, 0
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = ctp / n_truth
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec), int(tp.sum()), n_truth


def _faces_of(result) -> list[tuple[tuple[int, int, int, int], float, str | None, dict]]:
    """Normalise pipeline Faces or raw detector tuples to (box, face_score, label, scores)."""
    out = []
    for r in result:
        if hasattr(r, "box"):
            out.append((tuple(r.box), float(r.face_score), r.label, dict(r.scores or {})))
        else:
            out.append((tuple(int(v) for v in r[:4]), float(r[4]), None, {}))
    return out


def evaluate_detection(
    scenes: Sequence[Scene],
    detect: Callable[[np.ndarray], list],
    recall_iou: float = 0.4,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
) -> dict:
    """Run ``detect`` (a pipeline ``Detector.detect`` or a ``FaceDetector.detect``) on every
    scene and score it.

    Reports detector recall (all faces, per class, faces >= 32 px) and false boxes per image
    at IoU >= ``recall_iou``; precision/recall at 0.5; with a classifier also VOC AP50 per
    class (detection score = face score x class probability) and ``map50`` over with_mask
    and without_mask.
    """
    from tqdm import tqdm

    from maskwatch.imaging import load_rgb

    if not scenes:
        raise MaskwatchError("no annotated scenes to evaluate")
    per_class_dets: dict[str, list] = {c: [] for c in CANONICAL}
    truths: dict[str, dict[int, list]] = {c: {} for c in CANONICAL}
    hard: dict[str, dict[int, list]] = {c: {} for c in CANONICAL}
    n_gt = {c: 0 for c in CANONICAL}
    hit = {c: 0 for c in CANONICAL}
    big_gt = big_hit = 0
    false_boxes = n_boxes = tp50 = n_images = 0
    gt_total = 0
    classified = False
    seconds = 0.0
    failed = []
    for idx, scene in enumerate(tqdm(scenes, desc="evaluate", unit="img", disable=not progress)):
        try:
            rgb = load_rgb(scene.path)
        except MaskwatchError as exc:
            failed.append(str(exc))
            if on_error:
                on_error(str(exc))
            continue
        t0 = time.perf_counter()
        faces = _faces_of(detect(rgb))
        seconds += time.perf_counter() - t0
        n_images += 1
        gt = np.asarray(scene.boxes, np.float64).reshape(-1, 4)
        pred = np.asarray([f[0] for f in faces], np.float64).reshape(-1, 4)
        ious = iou_matrix(gt, pred)
        n_boxes += len(pred)
        gt_total += len(gt)
        for j, label in enumerate(scene.labels):
            n_gt[label] += 1
            found = bool(ious.shape[1] and ious[j].max() >= recall_iou)
            hit[label] += found
            x1, y1, x2, y2 = scene.boxes[j]
            if max(x2 - x1, y2 - y1) >= 32:
                big_gt += 1
                big_hit += found
        if len(pred):
            best = ious.max(axis=0) if len(gt) else np.zeros(len(pred))
            false_boxes += int(np.sum(best < recall_iou))
            tp50 += _greedy_matches(ious, 0.5)
        for c in CANONICAL:
            truths[c][idx] = [b for b, lab in zip(scene.boxes, scene.labels) if lab == c]
            hard[c][idx] = [d for d, lab in zip(scene.difficult, scene.labels) if lab == c]
        for box, face_score, label, scores in faces:
            if label is None:
                continue
            classified = True
            for c in CANONICAL:
                if c in scores:
                    per_class_dets[c].append((idx, face_score * scores[c], box))
    if n_images == 0:
        raise MaskwatchError("none of the scenes could be read")
    report: dict = {
        "images": n_images,
        "faces": gt_total,
        "failed": len(failed),
        "recall_iou": recall_iou,
        "recall": _ratio(sum(hit.values()), gt_total),
        "recall_by_class": {c: _ratio(hit[c], n_gt[c]) for c in CANONICAL if n_gt[c]},
        "recall_32px": _ratio(big_hit, big_gt),
        "false_boxes_per_image": round(false_boxes / n_images, 4),
        "precision50": _ratio(tp50, n_boxes),
        "recall50": _ratio(tp50, gt_total),
        "ms_per_image": round(1000 * seconds / n_images, 2),
    }
    if classified:
        ap = {}
        for c in CANONICAL:
            value, _, count = average_precision(per_class_dets[c], truths[c], 0.5, hard[c])
            if count:
                ap[c] = round(value, 4)
        report["ap50"] = ap
        both = [ap[c] for c in MAP_CLASSES if c in ap]
        report["map50"] = round(float(np.mean(both)), 4) if both else None
        if INCORRECT_MASK in ap:
            report["incorrect_mask_ap50"] = ap[INCORRECT_MASK]
    return report


def _greedy_matches(ious: np.ndarray, threshold: float) -> int:
    """Number of one-to-one matches with IoU >= threshold, best pairs first."""
    if ious.size == 0:
        return 0
    pairs = np.argwhere(ious >= threshold)
    order = np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_g, used_p, n = set(), set(), 0
    for g, p in pairs[order]:
        if g in used_g or p in used_p:
            continue
        used_g.add(g)
        used_p.add(p)
        n += 1
    return n


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None
