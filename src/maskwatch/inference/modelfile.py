"""Model metadata that travels with every classifier (ONNX's .json, a checkpoint's header)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from maskwatch.errors import ModelError
from maskwatch.labels import WITHOUT_MASK

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class SiteParams:
    """How one site's annotators draw faces, fitted by ``maskwatch calibrate``.

    ``detector``: the face detector these were fitted for (ignored with another one).
    ``box_map``: (width scale, height scale, centre x shift in box widths, centre y shift
    in box heights) taking the detector's boxes to the site's. ``min_face``: shorter side,
    in pixels, of the smallest face kept (after ``box_map``). ``face_threshold``: face
    score threshold (None: the detector's default). ``fitted``: what the fit measured.
    """

    detector: str
    box_map: list[float] = field(default_factory=lambda: [1.0, 1.0, 0.0, 0.0])
    min_face: int = 0
    face_threshold: float | None = None
    fitted: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not isinstance(self.detector, str) or not self.detector:
            raise ModelError("site parameters: detector must be a detector name")
        bm = self.box_map
        if not isinstance(bm, (list, tuple)) or len(bm) != 4 or not all(map(number, bm)):
            raise ModelError("site parameters: box_map must be 4 numbers")
        if not (0.25 <= bm[0] <= 4 and 0.25 <= bm[1] <= 4 and abs(bm[2]) <= 1
                and abs(bm[3]) <= 1):
            raise ModelError(f"site parameters: box_map {list(bm)} is out of range (scales "
                             "0.25-4, shifts -1..1)")
        self.box_map = [float(v) for v in bm]
        if not number(self.min_face) or not 0 <= self.min_face <= 4096:
            raise ModelError(f"site parameters: min_face {self.min_face!r} is not 0-4096 px")
        self.min_face = int(self.min_face)
        ft = self.face_threshold
        if ft is not None and (not number(ft) or not 0.0 <= ft <= 1.0):
            raise ModelError(f"site parameters: face_threshold {ft!r} is outside 0..1")
        if not isinstance(self.fitted, dict):
            raise ModelError("site parameters: fitted must be an object")

    @property
    def is_default(self) -> bool:
        """True when applying these changes nothing."""
        return (self.box_map == [1.0, 1.0, 0.0, 0.0] and self.min_face == 0
                and self.face_threshold is None)

    @classmethod
    def from_dict(cls, data) -> SiteParams:
        if not isinstance(data, dict):
            raise ModelError("site parameters must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelError(f"site parameters: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelError(f"site parameters are incomplete: {exc}") from None


@dataclass
class ModelInfo:
    """What a program needs to run a classifier: classes, input and decision rule.

    ``head``: "softmax" (one logit per class) or "sigmoid" (one logit, P(classes[1])).
    ``threshold``: without_mask is chosen whenever P(without_mask) >= threshold, since a
    missed alarm costs more than a false alarm; otherwise the most likely other class.
    ``site``: detection settings fitted to one site (see :class:`SiteParams`), or None.
    """

    name: str
    classes: list[str]
    input_size: int
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    threshold: float = 0.5
    head: str = "softmax"
    extra: dict = field(default_factory=dict)
    site: SiteParams | None = None

    def __post_init__(self) -> None:
        if self.site is not None and not isinstance(self.site, SiteParams):
            self.site = SiteParams.from_dict(self.site)
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


def read_site(model: str | Path) -> SiteParams | None:
    """Site parameters stored beside an ONNX model (None for other files or when none are
    stored); used where the classifier itself is not loaded (``--faces-only``)."""
    path = Path(model)
    if path.suffix.lower() != ".onnx":
        return None
    return ModelInfo.load_json(path.with_suffix(".json")).site


def copy_onnx_model(src: str | Path, dst: str | Path, info: ModelInfo,
                    force: bool = False) -> Path:
    """Copy the ONNX model ``src`` to ``dst`` with ``info`` as its metadata (the .json
    beside it); never replaces an existing file without ``force``, nor ``src`` itself."""
    import shutil

    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise ModelError(f"{dst}: is the source model; write the copy elsewhere")
    for p in (dst, dst.with_suffix(".json")):
        if p.exists() and not force:
            raise ModelError(f"{p}: exists; pass --force to overwrite it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    info.save_json(dst.with_suffix(".json"))
    return dst
