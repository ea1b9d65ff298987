"""Per-image detection work: read, detect, save an annotated copy (``process_image``),
and its worker-process side for ``detect --workers`` (``init_detector``,
``detect_image``).
"""

from __future__ import annotations

from pathlib import Path

from maskwatch.detection.draw import Annotator
from maskwatch.detection.pipeline import detect_decoded
from maskwatch.errors import MaskwatchError
from maskwatch.imaging import load_rgb, save_rgb

_STATE: dict = {}


def process_image(detector, spec: str, out, annotate: Annotator | None = None
                  ) -> tuple[list | None, str | None, Path | None]:
    """Read, detect and (when ``out`` is a path, or a callable giving one) save a copy
    drawn by ``annotate``: (faces, None, written) or (None, error, None) when unreadable;
    (faces, error, None) when only the copy could not be written."""
    try:
        rgb = load_rgb(spec)
    except MaskwatchError as exc:
        return None, str(exc), None
    faces = detect_decoded(detector, rgb)  # decoded here: RGB
    if out is None:
        return faces, None, None
    path = out() if callable(out) else out
    try:
        save_rgb(path, (annotate or Annotator())(rgb, faces))  # no partial file is left on failure
    except MaskwatchError as exc:
        return faces, str(exc), None
    except (OSError, ValueError) as exc:
        return faces, f"{path}: cannot write ({exc})", None
    return faces, None, path


def init_detector(kwargs: dict, annotate: Annotator | None = None) -> None:
    """Build the detect pipeline once per process (kept for ``detect_image``), and keep
    what to draw on the copies."""
    from maskwatch.detection.pipeline import Detector

    _STATE["detector"] = Detector(**kwargs)
    _STATE["annotate"] = annotate


def detect_image(job: tuple[str, str | None]):
    """(spec, faces or None, error or None, annotated copy written or None)."""
    spec, out = job
    return (spec, *process_image(_STATE["detector"], spec, Path(out) if out else None,
                                 _STATE.get("annotate")))
