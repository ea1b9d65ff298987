"""Model metadata that travels with every classifier (ONNX's .json, a checkpoint's header)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from maskwatch.errors import ModelError
from maskwatch.labels import WITHOUT_MASK

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ModelInfo:
    """What a program needs to run a classifier: classes, input and decision rule.

    ``head``: "softmax" (one logit per class) or "sigmoid" (one logit, P(classes[1])).
    ``threshold``: without_mask is chosen whenever P(without_mask) >= threshold, since a
    missed alarm costs more than a false alarm; otherwise the most likely other class.
    """

    name: str
    classes: list[str]
    input_size: int
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    threshold: float = 0.5
    head: str = "softmax"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head not in ("softmax", "sigmoid"):
            raise ModelError(f"unknown head {self.head!r} (expected softmax or sigmoid)")
        if self.head == "sigmoid" and len(self.classes) != 2:
            raise ModelError("a sigmoid head needs exactly 2 classes")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ModelError(f"threshold {self.threshold} is outside 0..1")

    @property
    def positive_index(self) -> int | None:
        """Index of without_mask in ``classes`` (None if the model lacks it)."""
        return self.classes.index(WITHOUT_MASK) if WITHOUT_MASK in self.classes else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        try:
            known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            return cls(**known)
        except TypeError as exc:
            raise ModelError(f"model metadata is incomplete: {exc}") from None

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> ModelInfo:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: model metadata file not found")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
