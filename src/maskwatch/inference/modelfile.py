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

#: Bounds on what a model file may ask for, checked before anything is built or allocated.
MAX_INPUT_SIZE = 1024
MAX_CLASSES = 64
#: Builder options a checkpoint may carry, and their allowed ranges.
ARCH_ARG_RANGES: dict[str, tuple[float, float]] = {
    "dropout": (0.0, 1.0),
    "width_mult": (0.1, 4.0),
    "input_size": (8, MAX_INPUT_SIZE),
}
#: Builder options that are true/false.
ARCH_FLAGS = {"aux_logits"}


def _number(value, what: str, lo: float, hi: float, integer: bool = False) -> float:
    """``value`` as a finite number in lo..hi, else a one-line ModelError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok or not math.isfinite(value) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ModelError(f"{what} is {str(value)[:60]!r}; expected {kind} in {lo:g}..{hi:g}")
    return value


def check_arch(header: dict, source: str = "checkpoint") -> tuple[str, int, dict]:
    """(arch, num_outputs, arch_args) of a checkpoint header, checked before building:
    known option names in sane ranges and an output count that fits the classes."""
    arch, outputs, args = header.get("arch"), header.get("num_outputs"), header.get("arch_args")
    if not isinstance(arch, str) or not isinstance(args, dict) or outputs is None:
        raise ModelError(f"{source}: checkpoint header lacks its architecture")
    outputs = int(_number(outputs, f"{source}: num_outputs", 1, MAX_CLASSES, integer=True))
    classes = header.get("classes")
    if isinstance(classes, list) and outputs not in (len(classes), 1):
        raise ModelError(f"{source}: num_outputs {outputs} does not fit {len(classes)} classes")
    for key, value in args.items():
        if key in ARCH_FLAGS and isinstance(value, bool):
            continue
        if key not in ARCH_ARG_RANGES:
            raise ModelError(f"{source}: unknown architecture option {str(key)[:40]!r}")
        lo, hi = ARCH_ARG_RANGES[key]
        _number(value, f"{source}: arch_args.{key}", lo, hi, integer=key == "input_size")
    return arch, outputs, args


#: Boxes reported without a site's own mapping (``maskwatch calibrate``), per detector:
#: (width scale, height scale, x shift, y shift) as ``SiteParams.box_map``. A little larger
#: than the tight eyebrows-to-chin box, so that more boxes still match at IoU 0.5 where
#: annotators draw whole heads. Chosen on the 853 set's 127 validation scenes by
#: scripts/box_convention_sweep.py: of a grid of maps, the one scoring best against those
#: annotations grown into whole heads (x1.4 wide, x1.6 tall, centre 0.15 up: mAP@0.5
#: 0.097 -> 0.536) among those costing at most 0.01 of mAP@0.5 against the annotations as
#: drawn (0.851 -> 0.844). See MODEL_CARD.
DEFAULT_BOX_MAPS = {"centerface": (1.1, 1.1, 0.0, -0.02)}


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
        """True when applying these changes nothing (the detector's default box map, no
        smallest face, its own face threshold)."""
        default_map = list(DEFAULT_BOX_MAPS.get(self.detector, (1.0, 1.0, 0.0, 0.0)))
        return (self.box_map == default_map and self.min_face == 0
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
        """Check every field, so a hostile model file fails in one line before any use."""
        if not isinstance(self.name, str) or len(self.name) > 200:
            raise ModelError("model name must be a string of at most 200 characters")
        if (not isinstance(self.classes, list) or not 2 <= len(self.classes) <= MAX_CLASSES
                or not all(isinstance(c, str) and 0 < len(c) <= 100 for c in self.classes)
                or len(set(self.classes)) != len(self.classes)):
            raise ModelError(f"classes must be 2-{MAX_CLASSES} distinct names, got "
                             f"{str(self.classes)[:80]}")
        _number(self.input_size, "input_size", 8, MAX_INPUT_SIZE, integer=True)
        self.input_size = int(self.input_size)
        for what, values, lo in (("mean", self.mean, -10.0), ("std", self.std, 1e-6)):
            if not isinstance(values, list) or len(values) != 3:
                raise ModelError(f"{what} must be 3 numbers, got {str(values)[:60]}")
            for v in values:
                _number(v, what, lo, 10.0)
        _number(self.threshold, "threshold", 0.0, 1.0)
        if self.site is not None and not isinstance(self.site, SiteParams):
            self.site = SiteParams.from_dict(self.site)
        if self.head not in ("softmax", "sigmoid"):
            raise ModelError(f"unknown head {str(self.head)[:40]!r} (expected softmax or sigmoid)")
        if self.head == "sigmoid" and len(self.classes) != 2:
            raise ModelError("a sigmoid head needs exactly 2 classes")
        if not isinstance(self.extra, dict):
            raise ModelError("extra must be a JSON object")

    @property
    def positive_index(self) -> int | None:
        """Index of without_mask in ``classes`` (None if the model lacks it)."""
        return self.classes.index(WITHOUT_MASK) if WITHOUT_MASK in self.classes else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        if not isinstance(data, dict):
            raise ModelError("model metadata is not a JSON object")
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
        if path.stat().st_size > 1024 * 1024:
            raise ModelError(f"{path}: model metadata over 1 MB")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
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
            raise ModelError(f"{p}: exists; pass --overwrite to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    info.save_json(dst.with_suffix(".json"))
    return dst
