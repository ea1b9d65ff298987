"""What a training run reports: log lines on stderr (rank 0 only), metrics.csv,
metrics.json and curves.png."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from maskwatch.files import write_atomic

_LOGGING = {"enabled": True}  # off on ranks other than 0 (see set_logging)


def log(msg: str) -> None:
    if _LOGGING["enabled"]:
        print(msg, file=sys.stderr, flush=True)


def set_logging(enabled: bool) -> None:
    """Turn :func:`log` on or off for this process (off on ranks other than 0)."""
    _LOGGING["enabled"] = enabled


METRIC_COLUMNS = [
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
    "train_images_per_s", "train_seconds",
]


def write_metrics(out: Path, history: list[dict]) -> None:
    """metrics.csv, metrics.json and curves.png from the per-epoch history."""
    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, METRIC_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for row in history:
                w.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})

    # each file whole or not at all: a full disk fails the run in one line
    write_atomic(out / "metrics.csv", write_csv, "metrics")
    write_atomic(out / "metrics.json",
                 lambda tmp: tmp.write_text(json.dumps(history, indent=2) + "\n"), "metrics")
    write_atomic(out / "curves.png", lambda tmp: plot_curves(tmp, history), "plot")


def plot_curves(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        if any(f"val_{key}" in h for h in history):
            ax.plot(epochs, [h.get(f"val_{key}", float("nan")) for h in history], "o-",
                    label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
