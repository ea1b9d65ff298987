"""Per-image detection work: read, detect, save an annotated copy (``process_image``),
and its worker-process side for ``detect --workers`` (``init_detector``,
``detect_image``).
"""

from __future__ import annotations

from pathlib import Path

from maskwatch.detection.draw import COPY_SIZE, Annotator, shrink_for_copy
from maskwatch.detection.pipeline import Detector, detect_decoded, scaled_faces
from maskwatch.errors import MaskwatchError
from maskwatch.imaging import load_rgb, save_rgb

_STATE: dict = {}


def process_image(detector, spec: str, out, annotate: Annotator | None = None,
                  copy_size: int = COPY_SIZE) -> tuple[list | None, str | None, Path | None]:
    """Read, detect and (when ``out`` is a path, or a callable giving one) save a copy
    drawn by ``annotate``: (faces, None, written) or (None, error, None) when unreadable;
    (faces, error, None) when only the copy could not be written. A :class:`Detector`
    reads the file no larger than it needs (see :meth:`Detector.read`; the copy's long
    side at least ``copy_size``); boxes are in the file's pixels either way. An
    unexpected failure on one photo (a bug its oddity reveals) is that photo's error, so
    a long run goes on with the others."""
    try:
        return _process_image(detector, spec, out, annotate, copy_size)
    except MaskwatchError:
        raise  # the model's or the run's own error (a broken model file): it ends the run
    except Exception as exc:  # one photo must not end a run over thousands
        said = " ".join(str(exc).split())  # one line (OpenCV's messages span several)
        return None, (f"{spec}: failed ({type(exc).__name__}: {said}); please report this "
                      "with the photo"), None


def _process_image(detector, spec: str, out, annotate: Annotator | None,
                   copy_size: int) -> tuple[list | None, str | None, Path | None]:
    scale = (1.0, 1.0)
    try:
        if isinstance(detector, Detector):
            rgb, scale = detector.read(spec, None if out is None else copy_size)
        else:
            rgb = load_rgb(spec)
    except MaskwatchError as exc:
        return None, str(exc), None
    if isinstance(detector, Detector):
        faces = detector.detect(rgb, check_bgr=False, scale=scale, source=spec)
    else:
        faces = detect_decoded(detector, rgb)  # decoded here: RGB
    if out is None:
        return faces, None, None
    path = out() if callable(out) else out
    drawn = faces if scale == (1.0, 1.0) else scaled_faces(faces, 1 / scale[0], 1 / scale[1])
    picture, drawn = shrink_for_copy(rgb, drawn, copy_size)  # a PNG, HEIC... read whole
    try:
        save_rgb(path, (annotate or Annotator())(picture, drawn))  # no partial file is left
    except MaskwatchError as exc:
        return faces, str(exc), None
    except (OSError, ValueError) as exc:
        return faces, f"{path}: cannot write ({exc})", None
    return faces, None, path


def init_detector(kwargs: dict, annotate: Annotator | None = None,
                  copy_size: int = COPY_SIZE) -> None:
    """Build the detect pipeline once per process (kept for ``detect_image``), and keep
    what to draw on the copies and at what size."""
    _STATE["detector"] = Detector(**kwargs)
    _STATE["annotate"] = annotate
    _STATE["copy_size"] = copy_size


def detect_image(job: tuple[str, str | None]):
    """(spec, faces or None, error or None, annotated copy written or None)."""
    spec, out = job
    return (spec, *process_image(_STATE["detector"], spec, Path(out) if out else None,
                                 _STATE.get("annotate"), _STATE.get("copy_size", COPY_SIZE)))
