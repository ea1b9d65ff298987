"""Face detectors: ``detect(rgb) -> [(x1, y1, x2, y2, score), ...]`` in original pixels.

Two back-ends, both with weights that install with maskwatch:

* ``centerface`` ("accurate", the default): the CenterFace ONNX model (MIT) shipped in
  maskwatch's assets, run with onnxruntime; it finds masked faces much more often than
  classic detectors do. The default runs its int8 copy (``scripts/quantise_centerface.py``;
  on a CPU with int8 dot products (AVX-512 VNNI) ``detect`` ran 1.7x faster on the held-out
  scenes, mAP@0.5 0.008 lower, 0.002 on the validation scenes); ``centerface-fp32`` runs
  the published one.
* ``yunet`` ("fast"): libfacedetection's YuNet through the ``yuface`` package.
"""

from __future__ import annotations

import os
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from maskwatch.boxes import iou, nms
from maskwatch.errors import MaskwatchError, ModelError

Box = tuple[int, int, int, int, float]

#: Detector names accepted by :func:`make_face_detector`, with their aliases.
ALIASES = {"accurate": "centerface", "fast": "yunet", "centerface": "centerface",
           "centerface-fp32": "centerface-fp32", "yunet": "yunet"}
DEFAULT_DETECTOR = "centerface"
#: Default score thresholds per back-end (chosen on the 853-scene set's training and
#: validation scenes, see MODEL_CARD.md).
DEFAULT_THRESHOLDS = {"centerface": 0.2, "yunet": 0.5}
#: Default (detect size, refine size) per back-end: the size (see :func:`pass_scales`) of
#: the first detection pass (larger photos are shrunk to it) and of a finer second pass, run only
#: where the first pass found small faces (0: never). CenterFace's were chosen on the
#: 853-scene set's training and validation scenes; YuNet misses faces that small at
#: 320 px, so it keeps one pass at 960 px.
DEFAULT_SIZES = {"centerface": (320, 800), "yunet": (960, 0)}
#: A first-pass face whose shorter side is under this many first-pass pixels is "small":
#: CenterFace finds and places such faces poorly, so the finer pass looks at them again.
#: On the tuning scenes (see DEFAULT_SIZES), as they are and enlarged to 800 px JPEGs,
#: 24 scored mAP@0.5 0.880 / 0.889 against 0.882 / 0.886 for 32, with 22% fewer pixels in
#: finer passes (20: 0.873 / 0.886, 37% fewer).
REFINE_BELOW = 24
#: First-pass boxes down to this score can start the finer pass. On the tuning scenes
#: (see DEFAULT_SIZES) 0.2 scored higher mAP@0.5 than 0.1 (0.867 against 0.863) and ran
#: the finer pass on fewer pixels (287k against 326k a photo): boxes between 0.1 and 0.2
#: were mostly not faces.
REFINE_TRIGGER = 0.2
#: A box with more than this share of its area inside a bigger, better-scored box is
#: dropped (see :func:`drop_nested`).
NESTED = 0.5
#: When the area to refine covers more than this share of the photo, refine it whole.
REFINE_WHOLE = 0.6

Raw = tuple[float, float, float, float, float]


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise MaskwatchError(f"expected an HxWx3 RGB image, got shape {shape}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise MaskwatchError("image has no pixels")
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return rgb


def calibrate_box(box, calibration: tuple[float, float, float, float]):
    """Scale a box's width and height and shift its centre (shifts in box widths/heights)."""
    x1, y1, x2, y2 = box
    ws, hs, dx, dy = calibration
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + dx * w, (y1 + y2) / 2 + dy * h
    return cx - ws * w / 2, cy - hs * h / 2, cx + ws * w / 2, cy + hs * h / 2


def pass_scales(width: int, height: int, detect_size: int, refine_size: int = 0,
                upscale: bool = False) -> tuple[float, float | None]:
    """Resize factors of the two detection passes for a ``width`` x ``height`` photo.

    A size S stands for the pixel count of a 4:3 photo whose long side is S (S x 0.75 S):
    the cost of a pass follows its pixel count, and a panorama keeps enough height to show
    its faces. First pass: ``detect_size`` (only shrinking unless ``upscale``). Second
    pass: ``refine_size`` (enlarging too: small photos hold small faces), or None when it
    is off or would not be at least 1.25x finer than the first.
    """
    area = float(width) * float(height)
    first = detect_size * (0.75 / area) ** 0.5
    if not upscale:
        first = min(1.0, first)
    if not refine_size:
        return first, None
    second = refine_size * (0.75 / area) ** 0.5
    return first, (second if second >= 1.25 * first else None)


def _side(box) -> float:
    return min(box[2] - box[0], box[3] - box[1])


def refine_region(small: list, first_scale: float, width: int, height: int,
                  below: int = REFINE_BELOW, whole: float = REFINE_WHOLE
                  ) -> tuple[int, int, int, int]:
    """The part of the photo a finer pass looks at: every small first-pass box with room
    around it (the largest box side plus ``below`` first-pass pixels), or the whole photo
    when that part covers more than ``whole`` of it. ``(x1, y1, x2, y2)`` in photo pixels."""
    arr = np.asarray([b[:4] for b in small], np.float64).reshape(-1, 4)
    pad = float((arr[:, 2:] - arr[:, :2]).max()) + below / first_scale
    x1 = int(max(0.0, arr[:, 0].min() - pad))
    y1 = int(max(0.0, arr[:, 1].min() - pad))
    x2 = int(min(float(width), np.ceil(arr[:, 2].max() + pad)))
    y2 = int(min(float(height), np.ceil(arr[:, 3].max() + pad)))
    if (x2 - x1) * (y2 - y1) > whole * width * height:
        return 0, 0, width, height
    return x1, y1, x2, y2


def merge_passes(first: list, second: list, first_scale: float, region, width: int,
                 height: int, below: int = REFINE_BELOW) -> list:
    """Faces of both passes, in photo pixels: the big ones of the first pass, and every
    second-pass face (it places small faces better) that no kept big face overlaps, except
    those cut by an inner edge of ``region``."""
    rx1, ry1, rx2, ry2 = region
    big = [b for b in first if _side(b) * first_scale >= below]
    out = list(big)
    for b in second:
        cut = ((b[0] <= rx1 + 1 and rx1 > 0) or (b[1] <= ry1 + 1 and ry1 > 0)
               or (b[2] >= rx2 - 1 and rx2 < width) or (b[3] >= ry2 - 1 and ry2 < height))
        if not cut and all(iou(b[:4], k[:4]) < 0.3 for k in big):
            out.append(b)
    return out


def drop_nested(boxes: list, inside: float = NESTED) -> list:
    """``boxes`` (best first) without those lying mostly (over ``inside`` of their area)
    within a bigger, better-scored box: a face holds no smaller face, so such a box is
    part of one (an eye, a mask). Real scenes hardly have them (on the tuning scenes:
    mAP@0.5 unchanged, 1% fewer false boxes); drawn and unusual faces do."""
    kept: list = []
    for b in boxes:
        area = (b[2] - b[0]) * (b[3] - b[1])
        if not any(
            (k[2] - k[0]) * (k[3] - k[1]) > area
            and max(0, min(b[2], k[2]) - max(b[0], k[0]))
            * max(0, min(b[3], k[3]) - max(b[1], k[1])) > inside * area
            for k in kept
        ):
            kept.append(b)
    return kept


class FaceDetector:
    """Finds faces in an RGB image. Subclasses implement :meth:`_detect` on a resized image.

    Detection runs in up to two passes: the photo at ``detect_size``, then,
    only where that pass found small faces, the surrounding part of the photo at
    ``refine_size`` (0: one pass). Big faces come from the first pass, small ones from the
    second, so ordinary photos cost one small pass and crowds of tiny faces get the detail
    they need.
    """

    name = "base"
    #: The channel order :meth:`_detect` takes ("bgr" or "rgb").
    channel_order = "bgr"
    #: (width scale, height scale, centre x shift in widths, centre y shift in heights) that
    #: moves this detector's boxes onto the eyebrows-to-chin boxes people annotate (and that
    #: the classifier's training crops were cut from); None leaves boxes as they come.
    box_calibration: tuple[float, float, float, float] | None = None

    def __init__(self, threshold: float | None = None, detect_size: int | None = None,
                 upscale: bool = False, calibrate: bool = True,
                 refine_size: int | None = None, refine_below: int = REFINE_BELOW):
        self.upscale = bool(upscale)
        self.calibration = self.box_calibration if calibrate else None
        self.threshold = DEFAULT_THRESHOLDS.get(self.name, 0.5) if threshold is None else threshold
        if not 0.0 <= self.threshold <= 1.0:
            raise MaskwatchError(f"face threshold must be in [0, 1], got {self.threshold}")
        default_detect, default_refine = DEFAULT_SIZES.get(self.name, (320, 0))
        detect_size = default_detect if detect_size is None else detect_size
        refine_size = default_refine if refine_size is None else refine_size
        if detect_size < 64:
            raise MaskwatchError(f"--detect-size must be at least 64 px, got {detect_size}")
        if refine_size and refine_size < 64:
            raise MaskwatchError(f"--refine-size must be 0 (off) or at least 64 px, got "
                                 f"{refine_size}")
        self.detect_size = int(detect_size)
        self.refine_size = int(refine_size or 0)
        self.refine_below = int(refine_below)

    @property
    def pass_pixels(self) -> int:
        """The most pixels a detection pass sees (see :func:`pass_scales`): a photo decoded
        with at least this many loses nothing for detection."""
        size = max(self.detect_size, self.refine_size)
        return int(size * size * 0.75)

    def detect(self, rgb: np.ndarray, min_side: float = 0.0) -> list[Box]:
        """Return face boxes ``(x1, y1, x2, y2, score)`` in the pixels of ``rgb``, best first.

        The first pass sees the photo shrunk to ``detect_size`` (or enlarged to it when
        ``upscale``); the second pass (see the class) sees the part with small faces
        enlarged to ``refine_size`` (sizes as in :func:`pass_scales`). Boxes are scaled
        back. ``min_side``: first-pass faces whose shorter side is under this many photo
        pixels start no finer pass (for callers that drop faces that small anyway).
        """
        rgb = _check_rgb(rgb)
        h, w = rgb.shape[:2]
        boxes, small, first_scale, second_scale = self._first_pass(rgb, min_side)
        if second_scale and small:
            region = refine_region(small, first_scale, w, h, self.refine_below)
            x1, y1, x2, y2 = region
            finer = [(a + x1, b + y1, c + x1, d + y1, s) for a, b, c, d, s in
                     self._detect_scaled(rgb[y1:y2, x1:x2], second_scale, self.threshold)]
            boxes = merge_passes(boxes, finer, first_scale, region, w, h, self.refine_below)
        out: list[Box] = []
        for x1, y1, x2, y2, score in boxes:
            if score < self.threshold:
                continue
            bx1 = int(np.clip(np.floor(x1), 0, w - 1))
            by1 = int(np.clip(np.floor(y1), 0, h - 1))
            bx2 = int(np.clip(np.ceil(x2), bx1 + 1, w))
            by2 = int(np.clip(np.ceil(y2), by1 + 1, h))
            out.append((bx1, by1, bx2, by2, float(score)))
        out.sort(key=lambda b: -b[4])
        return drop_nested(out)

    def _first_pass(self, rgb: np.ndarray, min_side: float = 0.0
                    ) -> tuple[list[Raw], list[Raw], float, float | None]:
        """The first pass on ``rgb``: its boxes (down to the finer pass's trigger score),
        those small enough for a finer pass (and at least ``min_side`` photo pixels), and
        both passes' scales (see :func:`pass_scales`; the second is None when no finer pass
        can run)."""
        h, w = rgb.shape[:2]
        first_scale, second_scale = pass_scales(w, h, self.detect_size, self.refine_size,
                                                self.upscale)
        if second_scale and min_side > 0:
            # the finer pass need only show a face of min_side as big as the first pass
            # shows the faces it keeps (refine_below pixels)
            second_scale = min(second_scale, max(self.refine_below / min_side,
                                                 1.25 * first_scale))
        low = min(self.threshold, REFINE_TRIGGER) if second_scale else self.threshold
        boxes = self._detect_scaled(rgb, first_scale, low)
        small = [b for b in boxes
                 if min_side <= _side(b) and _side(b) * first_scale < self.refine_below]
        return boxes, small, first_scale, second_scale

    def passes(self, rgb: np.ndarray, min_side: float = 0.0) -> int:
        """How many passes :meth:`detect` runs on ``rgb``: 1, or 2 where the first finds
        small faces (``maskwatch bench`` picks the photos that cost one pass with it)."""
        _, small, _, second_scale = self._first_pass(_check_rgb(rgb), min_side)
        return 2 if second_scale and small else 1

    def _detect_scaled(self, rgb: np.ndarray, scale: float, threshold: float) -> list[Raw]:
        """One pass on ``rgb`` resized by ``scale``: calibrated float boxes in ``rgb``'s
        pixels with scores, down to ``threshold``."""
        import cv2

        h, w = rgb.shape[:2]
        small = rgb
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            small = cv2.resize(rgb, size, interpolation=interp)
        if self.channel_order == "bgr":
            small = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        sy = h / small.shape[0]
        sx = w / small.shape[1]
        out = []
        for x1, y1, x2, y2, score in self._detect(small, threshold):
            if self.calibration is not None:
                x1, y1, x2, y2 = calibrate_box((x1, y1, x2, y2), self.calibration)
            out.append((x1 * sx, y1 * sy, x2 * sx, y2 * sy, float(score)))
        return out

    def _detect(self, image: np.ndarray, threshold: float) -> list[Raw]:
        """Boxes in ``image`` (uint8, in :attr:`channel_order`) down to ``threshold``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(threshold={self.threshold}, "
                f"detect_size={self.detect_size}, refine_size={self.refine_size})")


_YUFACE_LOCK = threading.Lock()


class YuNetDetector(FaceDetector):
    """YuNet (libfacedetection) via ``yuface``: fast, but misses many masked faces."""

    name = "yunet"

    def __init__(self, threshold: float | None = None, detect_size: int | None = None,
                 upscale: bool = False, refine_size: int | None = None):
        super().__init__(threshold, detect_size, upscale, refine_size=refine_size)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import yuface
        except ImportError as exc:  # pragma: no cover - yuface is a dependency
            raise ModelError("the yunet detector needs `pip install yuface==2023.5.1`") from exc
        self._yuface = yuface

    def _detect(self, bgr, threshold):
        # yuface returns confidences 0..100; filter ourselves so no size warning is printed.
        # libfacedetection keeps internal buffers: one call at a time (the server is threaded).
        with _YUFACE_LOCK:
            result = self._yuface.c_detect(np.ascontiguousarray(bgr))
        out = []
        rows = np.asarray(result)
        rows = rows.reshape(len(rows), -1) if rows.size else np.zeros((0, 5))
        for row in rows:
            score = float(row[0]) / 100.0
            if score < threshold:
                continue
            x, y, bw, bh = (float(v) for v in row[1:5])
            if bw <= 0 or bh <= 0:
                continue
            out.append((x, y, x + bw, y + bh, score))
        return out


# --- CenterFace ------------------------------------------------------------------------

def dynamic_centerface(path: str | Path) -> bytes:
    """The CenterFace graph made to accept any batch, height and width.

    The published model declares a fixed 10x3x32x32 input. Its declared input and output
    shapes get symbolic batch, height and width (``onnx.tools.update_model_dims``), and
    the initializers it also lists as graph inputs are dropped from the inputs so
    onnxruntime can fold them as constants.
    """
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(path))
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.value_info[:]  # shapes of intermediates, stale once the input size is free

    def free(values, height: str, width: str) -> dict[str, list]:
        return {v.name: ["batch", v.type.tensor_type.shape.dim[1].dim_value, height, width]
                for v in values}

    model = update_inputs_outputs_dims(model, free(graph.input, "height", "width"),
                                       free(graph.output, "map_height", "map_width"))
    return model.SerializeToString()


def load_dynamic_centerface(path: str | Path, cache_dir: str | Path | None = None) -> bytes:
    """:func:`dynamic_centerface`, rewritten once and then read from ``cache_dir``
    (default: ``default_cache_dir()``), so later starts need neither ``onnx`` nor the
    rewrite. The cached file is named by the source model's hash; an unwritable cache only
    costs the rewrite."""
    import hashlib

    from maskwatch import default_cache_dir

    path = Path(path)
    key = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = Path(cache_dir or default_cache_dir()) / f"centerface-dynamic-{key}.onnx"
    if cached.is_file():
        return cached.read_bytes()
    model = dynamic_centerface(path)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(model)
        os.replace(tmp, cached)
    except OSError:
        tmp.unlink(missing_ok=True)
    return model


#: The CenterFace model shipped in maskwatch's assets, with CENTERFACE-LICENSE.txt beside it:
#: the published network, and its int8 copy (the default).
CENTERFACE_FILE = "centerface.onnx"
CENTERFACE_INT8_FILE = "centerface_int8.onnx"


def centerface_path(precision: str = "int8") -> Path:
    """The CenterFace ONNX file shipped inside the package (MIT; see its licence file):
    ``precision`` "int8" (the default) or "fp32" (the published network)."""
    if precision not in ("int8", "fp32"):
        raise MaskwatchError(f"CenterFace precision is int8 or fp32, got {precision!r}")
    name = CENTERFACE_INT8_FILE if precision == "int8" else CENTERFACE_FILE
    path = Path(str(resources.files("maskwatch") / "assets" / name))
    if not path.is_file():
        raise ModelError(f"{path}: the bundled CenterFace model is missing; reinstall maskwatch")
    return path


class CenterFaceDetector(FaceDetector):
    """CenterFace (anchor-free, 4x down-sampled heat map) run with onnxruntime."""

    name = "centerface"
    channel_order = "rgb"
    # Measured on 843 matched faces of the 853-scene set's training scenes (median of
    # annotation / detection): same width, 0.90 of the height, centre 0.11 heights lower.
    box_calibration = (1.0, 0.90, 0.0, 0.11)

    def __init__(
        self,
        threshold: float | None = None,
        detect_size: int | None = None,
        threads: int = 0,
        nms_iou: float = 0.3,
        model_path: str | Path | None = None,
        upscale: bool = False,
        calibrate: bool = True,
        refine_size: int | None = None,
        precision: str = "int8",
    ):
        super().__init__(threshold, detect_size, upscale, calibrate, refine_size)
        import onnxruntime as ort

        self.precision = "custom" if model_path else precision
        path = Path(model_path) if model_path else centerface_path(precision)
        try:
            model = load_dynamic_centerface(path)
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if threads > 0:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in ort.get_available_providers()]
            self.session = ort.InferenceSession(model, opts, providers=providers)
        except (OSError, IndexError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: cannot load CenterFace model ({exc})") from None
        except Exception as exc:  # onnxruntime's own exception types
            raise ModelError(f"{path}: cannot load CenterFace model ({exc})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.nms_iou = nms_iou

    def _detect(self, rgb, threshold):
        import cv2

        h, w = rgb.shape[:2]
        # the network down-samples 32x: pad (not stretch) to multiples of 32
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        # raw 0..255 values in RGB order: measured on the 853-scene set, RGB input finds
        # more faces than BGR at the same number of false boxes. One plane at a time (7x
        # faster than numpy's strided transpose, the same values).
        for c, plane in enumerate(cv2.split(rgb)):
            blob[0, c, :h, :w] = plane
        heat, scale, offset, _landmarks = self.session.run(None, {self.input_name: blob})
        return decode_centerface(heat[0, 0], scale[0], offset[0], threshold,
                                 (h, w), self.nms_iou)


def decode_centerface(
    heat: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    threshold: float,
    image_hw: tuple[int, int],
    nms_iou: float = 0.3,
    stride: int = 4,
) -> list[tuple[float, float, float, float, float]]:
    """Turn CenterFace's heat map (h x w), log-scales (2 x h x w: height, width) and
    centre offsets (2 x h x w: dy, dx) into boxes in input pixels, after NMS."""
    ys, xs = np.nonzero(heat > threshold)
    if len(ys) == 0:
        return []
    scores = heat[ys, xs].astype(np.float32)
    bh = np.exp(scale[0, ys, xs]) * stride
    bw = np.exp(scale[1, ys, xs]) * stride
    cy = (ys + offset[0, ys, xs] + 0.5) * stride
    cx = (xs + offset[1, ys, xs] + 0.5) * stride
    ih, iw = image_hw
    boxes = np.stack([
        np.clip(cx - bw / 2, 0, iw), np.clip(cy - bh / 2, 0, ih),
        np.clip(cx + bw / 2, 0, iw), np.clip(cy + bh / 2, 0, ih),
    ], axis=1)
    ok = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
    boxes, scores = boxes[ok], scores[ok]
    keep = nms(boxes, scores, nms_iou)
    return [(*map(float, boxes[i]), float(scores[i])) for i in keep]


def make_face_detector(
    name: str | FaceDetector = DEFAULT_DETECTOR,
    threshold: float | None = None,
    detect_size: int | None = None,
    threads: int = 0,
    upscale: bool = False,
    refine_size: int | None = None,
) -> FaceDetector:
    """Build a face detector by name: ``centerface``/``accurate`` (int8),
    ``centerface-fp32``, or ``yunet``/``fast``."""
    if isinstance(name, FaceDetector):
        return name
    key = ALIASES.get(str(name).strip().lower())
    if key is None:
        raise MaskwatchError(
            f"unknown face detector {name!r}; choose from {', '.join(sorted(ALIASES))}"
        )
    if key == "yunet":
        return YuNetDetector(threshold, detect_size, upscale=upscale, refine_size=refine_size)
    return CenterFaceDetector(threshold, detect_size, threads=threads, upscale=upscale,
                              refine_size=refine_size,
                              precision="fp32" if key == "centerface-fp32" else "int8")
