"""Per-image detection work: read, detect, save an annotated copy (``process_image``),
and its worker-process side for ``detect --workers`` (``init_detector``,
``detect_image``).

``MASKWATCH_TEST_DELAY`` (seconds): ``detect_image`` sleeps this long per file. It
exists for the tests that kill a run halfway; leave it unset.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from maskwatch.detection.draw import draw_faces
from maskwatch.errors import MaskwatchError
from maskwatch.imaging import load_rgb, save_rgb

_STATE: dict = {}


def process_image(detector, spec: str, out) -> tuple[list | None, str | None, Path | None]:
    """Read, detect and (when ``out`` is a path, or a callable giving one) save an
    annotated copy: (faces, None, written) or (None, error, None) when unreadable;
    (faces, error, None) when only the copy could not be written."""
    try:
        rgb = load_rgb(spec)
    except MaskwatchError as exc:
        return None, str(exc), None
    faces = detector.detect(rgb)
    if out is None:
        return faces, None, None
    path = out() if callable(out) else out
    try:
        save_rgb(path, draw_faces(rgb, faces))  # no partial file is left on failure
    except MaskwatchError as exc:
        return faces, str(exc), None
    except (OSError, ValueError) as exc:
        return faces, f"{path}: cannot write ({exc})", None
    return faces, None, path


def init_detector(kwargs: dict) -> None:
    """Build the detect pipeline once per process (kept for ``detect_image``)."""
    from maskwatch.detection.pipeline import Detector

    _STATE["detector"] = Detector(**kwargs)


def detect_image(job: tuple[str, str | None]):
    """(spec, faces or None, error or None, annotated copy written or None)."""
    spec, out = job
    try:
        delay = float(os.environ.get("MASKWATCH_TEST_DELAY", "0") or 0)
    except ValueError:
        delay = 0.0
    if delay:
        time.sleep(delay)
    return (spec, *process_image(_STATE["detector"], spec, Path(out) if out else None))
