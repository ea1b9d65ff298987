"""maskwatch: train, evaluate and run face-mask detectors."""

from __future__ import annotations

import os

# OpenMP busy-waiting makes torch and yuface many times slower on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# maskwatch reports unreadable cameras and files itself, in one line each.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"

__all__ = ["__version__", "Detector", "Classifier", "default_cache_dir"]


def default_cache_dir():
    """Where maskwatch keeps what it can rebuild (decoded faces, rewritten models):
    ``$XDG_CACHE_HOME/maskwatch``, else ``~/.cache/maskwatch``."""
    from pathlib import Path

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "maskwatch"


def __getattr__(name: str):  # lazy, so `import maskwatch` stays cheap
    if name == "Detector":
        from maskwatch.detection.pipeline import Detector

        return Detector
    if name == "Classifier":
        from maskwatch.inference.classifier import Classifier

        return Classifier
    raise AttributeError(name)
