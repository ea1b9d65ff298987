"""Face detection + mask classification on one RGB frame (no file or video I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskwatch.boxes import crop
from maskwatch.detection.faces import DEFAULT_DETECT_SIZE, DEFAULT_DETECTOR, make_face_detector
from maskwatch.errors import MaskwatchError

#: Default margin added around each face box before classification, as a fraction of the
#: box size on each side.
DEFAULT_MARGIN = 0.15


@dataclass
class Face:
    """One detected face: box ``[x1, y1, x2, y2]`` in original pixels and its mask label."""

    box: list[int]
    face_score: float
    label: str | None = None
    score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    track_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: box, label, score, face_score, scores (and track_id if tracked)."""
        out: dict[str, Any] = {
            "box": [int(v) for v in self.box],
            "label": self.label,
            "score": None if self.score is None else round(float(self.score), 4),
            "face_score": round(float(self.face_score), 4),
            "scores": {k: round(float(v), 4) for k, v in self.scores.items()},
        }
        if self.track_id is not None:
            out["track_id"] = int(self.track_id)
        return out


def _load_classifier(classifier, threads: int, threshold: float | None = None):
    if classifier is False:
        return None
    if classifier is None or isinstance(classifier, (str, Path)):
        from maskwatch.inference.classifier import Classifier

        return Classifier(classifier, threads=threads, threshold=threshold)
    if not hasattr(classifier, "classify"):
        raise MaskwatchError(f"classifier must be a path or a Classifier, got {classifier!r}")
    return classifier


class Detector:
    """Finds faces and tells whether each wears a mask.

    ``face_detector``: "centerface"/"accurate" (default) or "yunet"/"fast", or a FaceDetector.
    ``classifier``: None for the bundled model, a model path, a Classifier-like object (with
    ``classify(faces)``), or False to only detect faces (labels are then None).
    """

    def __init__(
        self,
        face_detector: Any = DEFAULT_DETECTOR,
        classifier: Any = None,
        threads: int = 0,
        face_threshold: float | None = None,
        margin: float = DEFAULT_MARGIN,
        detect_size: int = DEFAULT_DETECT_SIZE,
        min_face: int = 0,
        upscale: bool = False,
        threshold: float | None = None,
    ):
        if not 0.0 <= margin <= 1.0:
            raise MaskwatchError(f"margin must be in [0, 1], got {margin}")
        self.face_detector = make_face_detector(
            face_detector, threshold=face_threshold, detect_size=detect_size, threads=threads,
            upscale=upscale,
        )
        self.classifier = _load_classifier(classifier, threads, threshold)
        self.margin = float(margin)
        self.min_face = int(min_face)

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes) if self.classifier is not None else []

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Detect and classify all faces in one HxWx3 uint8 RGB frame (one classifier batch)."""
        boxes = [
            b for b in self.face_detector.detect(rgb)
            if min(b[2] - b[0], b[3] - b[1]) >= self.min_face
        ]
        faces = [Face(box=[int(v) for v in b[:4]], face_score=float(b[4])) for b in boxes]
        if faces and self.classifier is not None:
            crops = [crop(rgb, f.box, self.margin) for f in faces]
            for face, pred in zip(faces, self.classifier.classify(crops)):
                face.label = pred.label
                face.score = float(pred.score)
                face.scores = {k: float(v) for k, v in pred.scores.items()}
        return faces

    __call__ = detect
