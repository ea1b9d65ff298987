"""Evaluation pictures: confusion matrix, ROC curve and a gallery of the mistakes."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from maskwatch.evaluation.metrics import roc_auc, roc_curve
from maskwatch.labels import WITHOUT_MASK


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path: Path, cm, classes: list[str]) -> None:
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.6 * len(classes) + 2, 1.4 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=20)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    hi = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > hi / 2 else "black")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(path: Path, y_positive, scores, threshold: float | None = None) -> None:
    plt = _plt()
    fpr, tpr, thr = roc_curve(y_positive, scores)
    auc = roc_auc(y_positive, scores)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC {auc:.4f}" if auc is not None else "AUC n/a")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    if threshold is not None and len(thr) > 1:
        i = int(np.searchsorted(-thr[1:], -threshold, side="right"))
        ax.plot(fpr[i], tpr[i], "o", color="red", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("false alarm rate (1 - specificity)")
    ax.set_ylabel(f"recall of {WITHOUT_MASK}")
    ax.set_title(f"ROC: {WITHOUT_MASK} vs rest")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_gallery(out: Path, result, read_face, margin: float, limit: int = 200,
                  thumb: int = 96) -> int:
    """Thumbnails of wrong predictions, a PNG grid and an HTML page; returns the count."""
    from maskwatch.imaging import save_rgb
    from maskwatch.inference.preprocess import resize_face

    pred = result.y_pred
    wrong = np.flatnonzero(pred != result.y_true)
    # most confident mistakes first
    conf = result.probs[wrong, pred[wrong]] if len(wrong) else np.zeros(0)
    wrong = wrong[np.argsort(-conf, kind="mergesort")][:limit]
    thumbs_dir = out / "errors"
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    rows, tiles = [], []
    for k, i in enumerate(wrong):
        s = result.samples[i]
        try:
            face = resize_face(read_face(s, margin), thumb)
        except Exception:  # the file changed since scoring
            continue
        name = f"{k:04d}.jpg"
        save_rgb(thumbs_dir / name, face)
        tiles.append((face, result.classes[result.y_true[i]], result.classes[pred[i]],
                      float(result.probs[i, pred[i]])))
        scores = ", ".join(f"{c} {p:.3f}" for c, p in zip(result.classes, result.probs[i]))
        rows.append(
            f"<tr><td><img src='errors/{name}' width={thumb} height={thumb}></td>"
            f"<td>{html.escape(result.classes[result.y_true[i]])}</td>"
            f"<td>{html.escape(result.classes[pred[i]])}</td><td>{html.escape(scores)}</td>"
            f"<td>{html.escape(str(s.path))}{' ' + html.escape(str(s.box)) if s.box else ''}"
            "</td></tr>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>maskwatch errors</title>"
        "<style>body{font-family:sans-serif}td{padding:4px;border-bottom:1px solid #ddd}"
        "</style></head><body>"
        f"<h1>{len(rows)} wrong predictions (threshold {result.threshold:.3f})</h1>"
        "<table><tr><th>face</th><th>true</th><th>predicted</th><th>scores</th>"
        "<th>file</th></tr>" + "".join(rows) + "</table></body></html>\n"
    )
    (out / "errors.html").write_text(page, encoding="utf-8")
    _grid(out / "errors.png", tiles, thumb)
    return len(rows)


def _grid(path: Path, tiles, thumb: int, cols: int = 8) -> None:
    plt = _plt()
    n = max(len(tiles), 1)
    cols = min(cols, n)  # a few mistakes make a small picture, not a wide blank strip
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.75), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (face, true, pred, score) in zip(axes.ravel(), tiles):
        ax.imshow(face)
        ax.set_title(f"{true}\n-> {pred} {score:.2f}", fontsize=6)
    if not tiles:
        axes[0, 0].text(0.5, 0.5, "no errors", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
