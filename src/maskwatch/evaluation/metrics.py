"""Classification metrics in plain numpy (no scikit-learn).

``positive`` is the without_mask class: recall of it is the share of bare faces caught,
specificity is TN / (TN + FP), the share of other faces not flagged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """C x C counts; rows are true classes, columns predictions."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def per_class(cm: np.ndarray) -> list[dict]:
    """Precision, recall, F1 and support of each class from a confusion matrix."""
    out = []
    for c in range(cm.shape[0]):
        tp = cm[c, c]
        precision = _div(tp, cm[:, c].sum())
        recall = _div(tp, cm[c, :].sum())
        f1 = _div(2 * precision * recall, precision + recall)
        out.append(
            {"precision": precision, "recall": recall, "f1": f1, "support": int(cm[c, :].sum())}
        )
    return out


def roc_auc(y_positive, scores) -> float | None:
    """Area under the ROC curve from ranks (Mann-Whitney U, ties count half).

    None when one of the two groups is empty.
    """
    y = np.asarray(y_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_positive, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds descending."""
    y = np.asarray(y_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.flatnonzero(np.diff(s)) if len(s) else np.zeros(0, np.int64)
    cut = np.r_[distinct, len(s) - 1] if len(s) else np.zeros(0, np.int64)
    tps = np.cumsum(y)[cut] if len(s) else np.zeros(0)
    fps = (cut + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s[cut]] if len(s) else np.array([np.inf])
    return fpr, tpr, thresholds


def threshold_for_recall(
    y_positive, scores, target: float, current: float = 0.5,
    max_false_alarms: float | None = None,
) -> tuple[float, float]:
    """The threshold closest to ``current`` at which recall (score >= t) reaches ``target``.

    Recall only falls as the threshold rises, so the answer is ``min(current, t_max)``
    where ``t_max`` is the highest threshold that still reaches the target. With
    ``max_false_alarms`` the threshold never drops below the lowest one that flags at most
    that share of the negatives: a few positives scored near zero then cost recall instead
    of dragging the threshold down to where most negatives alarm. Returns (threshold,
    recall at it).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target recall must be in (0, 1], got {target}")
    if max_false_alarms is not None and not 0.0 <= max_false_alarms <= 1.0:
        raise ValueError(f"the false-alarm cap must be in [0, 1], got {max_false_alarms}")
    y = np.asarray(y_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos = np.sort(s[y])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive sample: recall is undefined")
    k = max(1, math.ceil(target * len(pos) - 1e-9))
    t_max = float(pos[k - 1])
    t = min(float(current), t_max)
    if max_false_alarms is not None:
        t = max(t, false_alarm_floor(s[~y], max_false_alarms))
    return t, float((pos >= t).mean())


def false_alarm_floor(negative_scores, max_false_alarms: float) -> float:
    """The lowest threshold at which at most ``max_false_alarms`` of the negatives score
    at or above it (0.0 when every threshold does)."""
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    allowed = math.floor(max_false_alarms * len(neg) + 1e-9)
    if allowed >= len(neg):
        return 0.0
    return float(np.nextafter(neg[allowed], np.inf))


def evaluate_predictions(
    y_true: Sequence[int],
    probs: np.ndarray,
    classes: Sequence[str],
    y_pred: Sequence[int] | None = None,
    positive: str = "without_mask",
) -> dict:
    """All metrics for true labels, N x C probabilities and predictions (default argmax)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(1) if y_pred is None else np.asarray(y_pred, dtype=np.int64)
    c = len(classes)
    cm = confusion_matrix(y_true, y_pred, c)
    rows = per_class(cm)
    present = [r["recall"] for r in rows if r["support"] > 0]
    out = {
        "n": int(len(y_true)),
        "accuracy": _div(np.trace(cm), cm.sum()),
        "balanced_accuracy": float(np.mean(present)) if present else 0.0,
        "classes": {name: r for name, r in zip(classes, rows)},
        "confusion_matrix": cm.tolist(),
        "labels": list(classes),
        "positive": None,
        "specificity": None,
        "recall_positive": None,
        "roc_auc": None,
    }
    if positive in classes:
        p = list(classes).index(positive)
        is_pos = y_true == p
        flagged = y_pred == p
        tn = int((~is_pos & ~flagged).sum())
        fp = int((~is_pos & flagged).sum())
        out.update(
            positive=positive,
            specificity=_div(tn, tn + fp) if (tn + fp) else None,
            recall_positive=rows[p]["recall"] if rows[p]["support"] else None,
            roc_auc=roc_auc(is_pos, probs[:, p]) if len(y_true) else None,
        )
    return out
