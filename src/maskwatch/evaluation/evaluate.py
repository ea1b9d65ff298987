"""Score a labelled dataset with a Classifier and compute the metrics."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskwatch.errors import ImageError, MaskwatchError, ModelError
from maskwatch.evaluation.metrics import evaluate_predictions, threshold_for_recall
from maskwatch.inference.preprocess import decide
from maskwatch.labels import INCORRECT_MASK, WITHOUT_MASK


@dataclass
class EvalResult:
    """Per-face scores of an evaluation run."""

    classes: list[str]
    samples: list  # the Sample of each scored face
    y_true: np.ndarray
    probs: np.ndarray
    threshold: float
    failed: list[str] = field(default_factory=list)
    dropped: int = 0

    @property
    def y_pred(self) -> np.ndarray:
        return decide(self.probs, self.classes, self.threshold)

    def metrics(self, threshold: float | None = None) -> dict:
        t = self.threshold if threshold is None else threshold
        pred = decide(self.probs, self.classes, t) if len(self.probs) else np.zeros(0, int)
        out = evaluate_predictions(self.y_true, self.probs, self.classes, pred)
        out["threshold"] = t
        return out


def select_split(samples: list, split: str) -> list:
    """Samples of ``split`` ('all' for every one). A dataset without splits counts as one
    test set; asking for a split the data lacks is an error."""
    if split == "all":
        return list(samples)
    present = {s.split for s in samples}
    if present == {None}:
        return list(samples)
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        names = ", ".join(sorted(p or "none" for p in present))
        raise MaskwatchError(f"no sample in split {split!r} (the data has: {names}); use --split")
    return chosen


def map_labels(samples: list, classes: list[str], incorrect: str = "drop"):
    """(kept samples, label indices) for a model's classes; ``incorrect``: what to do with
    incorrect_mask faces for a model without that class ('drop' or 'merge' into
    without_mask). Labels the model cannot predict are dropped."""
    kept, labels, dropped = [], [], 0
    for s in samples:
        label = s.label
        if label == INCORRECT_MASK and label not in classes and incorrect == "merge":
            label = WITHOUT_MASK
        if label not in classes:
            dropped += 1
            continue
        kept.append(s)
        labels.append(classes.index(label))
    return kept, np.asarray(labels, dtype=np.int64), dropped


def score_samples(
    classifier, samples: list, labels: np.ndarray, margin: float, batch: int = 64,
    progress: bool = True,
) -> EvalResult:
    """Read each face (box grown by ``margin``), score it; unreadable ones are listed."""
    from tqdm import tqdm

    from maskwatch.data import read_face

    kept, y, probs, failed = [], [], [], []
    faces, pending = [], []
    bar = tqdm(total=len(samples), desc="scoring", unit="face", disable=not progress,
               file=sys.stderr)

    def flush() -> None:
        if faces:
            probs.append(classifier.predict_proba(faces))
            kept.extend(s for s, _ in pending)
            y.extend(lbl for _, lbl in pending)
            bar.update(len(faces))
            faces.clear()
            pending.clear()

    for s, lbl in zip(samples, labels):
        try:
            faces.append(read_face(s, margin))
            pending.append((s, int(lbl)))
        except ImageError as exc:
            failed.append(str(exc))
            bar.update(1)
        if len(faces) >= batch:
            flush()
    flush()
    bar.close()
    p = np.concatenate(probs) if probs else np.zeros((0, len(classifier.classes)))
    return EvalResult(list(classifier.classes), kept, np.asarray(y, np.int64), p,
                      classifier.threshold, failed)


def choose_threshold(result: EvalResult, target: float) -> dict:
    """The without_mask threshold closest to the current one that reaches ``target`` recall."""
    if WITHOUT_MASK not in result.classes:
        raise MaskwatchError("--target-recall needs a model with a without_mask class")
    pos = result.classes.index(WITHOUT_MASK)
    try:
        t, recall = threshold_for_recall(result.y_true == pos, result.probs[:, pos], target,
                                         result.threshold)
    except ValueError as exc:
        raise MaskwatchError(f"--target-recall: {exc}") from None
    at = result.metrics(t)
    return {
        "target_recall": target, "previous": result.threshold, "threshold": round(t, 6),
        "recall": recall, "specificity": at["specificity"], "accuracy": at["accuracy"],
        "balanced_accuracy": at["balanced_accuracy"],
    }


def write_threshold(model: str | Path, threshold: float, tag: str, force: bool = False) -> Path:
    """Store ``threshold`` in a model: beside it as ``<stem>.<tag>.*``, or in place with force.

    ONNX: the .json metadata (in place), or a copy of the .onnx + new .json. Checkpoint:
    a rewritten .safetensors. Never replaces an existing file without ``force``.
    """
    from maskwatch.inference.modelfile import ModelInfo

    src = Path(model)
    suffix = src.suffix.lower()
    if suffix == ".onnx":
        info = ModelInfo.load_json(src.with_suffix(".json"))
        info.threshold = float(threshold)
        if force:
            dst = src
        else:
            dst = src.with_name(f"{src.stem}.{tag}.onnx")
            for p in (dst, dst.with_suffix(".json")):
                if p.exists():
                    raise MaskwatchError(f"{p}: exists; pass --force to overwrite the model")
            shutil.copyfile(src, dst)
        info.save_json(dst.with_suffix(".json"))
        return dst
    if suffix == ".safetensors":
        from maskwatch.models.checkpoint import read_header, rewrite_info

        info = ModelInfo.from_dict(read_header(src))
        info.threshold = float(threshold)
        dst = src if force else src.with_name(f"{src.stem}.{tag}.safetensors")
        rewrite_info(src, dst, info, force=force)
        return dst
    raise ModelError(f"{src}: cannot store a threshold in this file type")
