"""Score a labelled dataset with a Classifier and compute the metrics."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskwatch.errors import ImageError, MaskwatchError, ModelError
from maskwatch.evaluation.metrics import evaluate_predictions, threshold_for_recall
from maskwatch.inference.preprocess import decide
from maskwatch.labels import INCORRECT_MASK, WITH_MASK, WITHOUT_MASK

#: The rule `evaluate` follows when the dataset lacks some of the model's classes (e.g. a
#: three-class model on with/without folders); it is stated in every report.
RESTRICTED_RULE = (
    "decision restricted to the dataset's classes: a model class the dataset lacks (other "
    "than with_mask and without_mask) is never answered; a face is without_mask when "
    "P(without_mask) >= threshold, as deployed, else the likelier of the remaining classes"
)


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
    model_classes: list[str] = field(default_factory=list)
    answers_left_out: int = 0  # faces the unrestricted model gave a class left out here

    @property
    def y_pred(self) -> np.ndarray:
        return decide(self.probs, self.classes, self.threshold)

    def metrics(self, threshold: float | None = None) -> dict:
        t = self.threshold if threshold is None else threshold
        pred = decide(self.probs, self.classes, t) if len(self.probs) else np.zeros(0, int)
        out = evaluate_predictions(self.y_true, self.probs, self.classes, pred)
        out["threshold"] = t
        out["decision"] = self.decision()
        return out

    def decision(self) -> dict:
        """How predictions were made: the model's classes, the ones scored, and the rule."""
        model = self.model_classes or self.classes
        left_out = [c for c in model if c not in self.classes]
        return {
            "rule": RESTRICTED_RULE if left_out else "the model's decision over all its classes",
            "model_classes": list(model), "scored_classes": list(self.classes),
            "left_out": left_out, "answers_left_out": self.answers_left_out,
        }


def trained_on(extra: dict, data: str | Path) -> list[str]:
    """The entries of a model's ``trained_on`` metadata that name the dataset at ``data``.

    An entry is a path (``maskwatch train`` records ``--data`` and ``--val-data``) or a
    dataset name with a note, e.g. ``face-mask-7553 (train part)``: a path matches when one
    holds the other, a name when it is one of the folder names of ``data``.
    """
    path = Path(data).resolve()
    names = {p.lower() for p in path.parts}
    hits = []
    for entry in extra.get("trained_on") or []:
        name = str(entry).split(" (")[0].strip()
        if not name:
            continue
        other = Path(name)
        if other.is_absolute():
            hit = other == path or other in path.parents or path in other.parents
        else:
            hit = name.lower() in names
        if hit:
            hits.append(str(entry))
    return hits


def select_split(samples: list, split: str) -> list:
    """Samples of ``split`` ('all' for every one). A dataset without splits counts as one
    test set; asking for a split the data lacks is an error. Synthetic samples are never
    evaluated."""
    from maskwatch.data.model import is_synthetic

    samples = [s for s in samples if not is_synthetic(s)]
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


def scored_classes(model_classes: list[str], dataset_classes) -> list[str]:
    """The model's classes an evaluation may answer with: those the dataset has, and
    with_mask and without_mask always (so a one-class folder is still a real test)."""
    have = set(dataset_classes)
    return [c for c in model_classes if c in have or c in (WITH_MASK, WITHOUT_MASK)]


def map_label(label: str, classes: list[str], incorrect: str = "drop") -> str | None:
    """A sample's label as a model with ``classes`` scores it (None: not scored)."""
    if label == INCORRECT_MASK and label not in classes and incorrect == "merge":
        label = WITHOUT_MASK
    return label if label in classes else None


def map_labels(samples: list, classes: list[str], incorrect: str = "drop"):
    """(kept samples, label indices) for a model's classes; ``incorrect``: what to do with
    incorrect_mask faces for a model without that class ('drop' or 'merge' into
    without_mask). Labels the model cannot predict are dropped."""
    kept, labels, dropped = [], [], 0
    for s in samples:
        label = map_label(s.label, classes, incorrect)
        if label is None:
            dropped += 1
            continue
        kept.append(s)
        labels.append(classes.index(label))
    return kept, np.asarray(labels, dtype=np.int64), dropped


def score_samples(
    classifier, samples: list, labels: np.ndarray, margin: float, batch: int = 64,
    progress: bool = True, classes: list[str] | None = None, workers: int = 1,
) -> EvalResult:
    """Read each face (box grown by ``margin``), score it; unreadable ones are listed.

    Chunks of ``batch`` faces run on ``workers`` threads side by side, each read and then
    scored by its own run of the shared classifier (give it one thread each, as
    ``maskwatch evaluate`` does); the results keep the samples' order. ``classes``
    (default: the classifier's) restricts the decision to those of the model's classes
    (see ``RESTRICTED_RULE``); ``labels`` index into them."""
    from tqdm import tqdm

    from maskwatch.batching import ordered_map
    from maskwatch.data import read_face

    def score_chunk(start: int):
        faces, read, errors = [], [], []
        for i in range(start, min(start + batch, len(samples))):
            try:
                faces.append(read_face(samples[i], margin))
                read.append(i)
            except ImageError as exc:
                errors.append(str(exc))
        return read, errors, classifier.predict_proba(faces) if faces else None

    kept, y, probs, failed = [], [], [], []
    bar = tqdm(total=len(samples), desc="scoring", unit="face", disable=not progress,
               file=sys.stderr)
    # a few chunks ahead of the one collected; those not started are dropped on an error
    for read, errors, p in ordered_map(score_chunk, range(0, len(samples), max(1, batch)),
                                       workers, threads=True):
        failed.extend(errors)
        if p is not None:
            probs.append(p)
        kept.extend(samples[i] for i in read)
        y.extend(int(labels[i]) for i in read)
        bar.update(len(read) + len(errors))
    bar.close()
    model_classes = list(classifier.classes)
    p = np.concatenate(probs) if probs else np.zeros((0, len(model_classes)))
    classes = list(classes or model_classes)
    left_out = [i for i, c in enumerate(model_classes) if c not in classes]
    moved = 0
    if left_out and len(p):
        moved = int(np.isin(decide(p, model_classes, classifier.threshold), left_out).sum())
    p = p[:, [model_classes.index(c) for c in classes]]
    return EvalResult(classes, kept, np.asarray(y, np.int64), p, classifier.threshold, failed,
                      model_classes=model_classes, answers_left_out=moved)


def choose_threshold(result: EvalResult, target: float,
                     max_false_alarms: float | None = None) -> dict:
    """The without_mask threshold closest to the current one that reaches ``target`` recall;
    with ``max_false_alarms``, never one that flags more than that share of the with_mask
    faces (recall then falls short of the target, and says so)."""
    if WITHOUT_MASK not in result.classes:
        raise MaskwatchError("--target-recall needs a model with a without_mask class")
    pos = result.classes.index(WITHOUT_MASK)
    # the floor counts alarms on masked faces; an incorrect_mask face flagged is no false alarm
    neg = (result.y_true == result.classes.index(WITH_MASK) if WITH_MASK in result.classes
           else np.zeros(len(result.y_true), bool))
    both = (result.y_true == pos) | neg
    try:
        t, recall = threshold_for_recall(result.y_true[both] == pos, result.probs[both, pos],
                                         target, result.threshold, max_false_alarms)
    except ValueError as exc:
        raise MaskwatchError(f"--target-recall: {exc}") from None
    at = result.metrics(t)
    alarms = float((result.probs[neg, pos] >= t).mean()) if neg.any() else None
    return {
        # unrounded: rounding could flag a face the cap keeps out, or drop one the target needs
        "target_recall": target, "previous": result.threshold, "threshold": t,
        "recall": recall, "reached": recall >= target - 1e-9,
        "max_false_alarms": max_false_alarms, "false_alarms": alarms,
        "specificity": at["specificity"], "accuracy": at["accuracy"],
        "balanced_accuracy": at["balanced_accuracy"],
    }


def write_threshold(model: str | Path, threshold: float, tag: str, force: bool = False) -> Path:
    """Store ``threshold`` in a model: beside it as ``<stem>.<tag>.*``, or in place with force.

    ONNX: the .json metadata (in place), or a copy of the .onnx + new .json. Checkpoint:
    a rewritten .safetensors. Never replaces an existing file without ``force``.
    """
    from maskwatch.inference.modelfile import ModelInfo, copy_onnx_model

    src = Path(model)
    suffix = src.suffix.lower()
    if suffix == ".onnx":
        info = ModelInfo.load_json(src.with_suffix(".json"))
        info.threshold = float(threshold)
        if force:
            info.save_json(src.with_suffix(".json"))
            return src
        return copy_onnx_model(src, src.with_name(f"{src.stem}.{tag}.onnx"), info)
    if suffix == ".safetensors":
        from maskwatch.models.checkpoint import read_header, rewrite_info

        info = ModelInfo.from_dict(read_header(src))
        info.threshold = float(threshold)
        dst = src if force else src.with_name(f"{src.stem}.{tag}.safetensors")
        rewrite_info(src, dst, info, force=force)
        return dst
    raise ModelError(f"{src}: cannot store a threshold in this file type")
