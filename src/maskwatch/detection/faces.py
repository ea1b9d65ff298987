"""Face detectors: ``detect(rgb) -> [(x1, y1, x2, y2, score), ...]`` in original pixels.

Two back-ends, both with weights that install with maskwatch:

* ``centerface`` ("accurate", the default): the CenterFace ONNX model (MIT) shipped in
  maskwatch's assets, run with onnxruntime; it finds masked faces much more often than
  classic detectors do.
* ``yunet`` ("fast"): libfacedetection's YuNet through the ``yuface`` package.
"""

from __future__ import annotations

import os
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from maskwatch.boxes import nms
from maskwatch.errors import MaskwatchError, ModelError

Box = tuple[int, int, int, int, float]

#: Detector names accepted by :func:`make_face_detector`, with their aliases.
ALIASES = {"accurate": "centerface", "fast": "yunet", "centerface": "centerface",
           "yunet": "yunet"}
DEFAULT_DETECTOR = "centerface"
#: Default score thresholds per back-end (chosen on the 853-scene set, see README).
DEFAULT_THRESHOLDS = {"centerface": 0.4, "yunet": 0.5}
#: Default long side, in pixels, that images are resized to for detection.
DEFAULT_DETECT_SIZE = 960


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


class FaceDetector:
    """Finds faces in an RGB image. Subclasses implement :meth:`_detect` on a resized image."""

    name = "base"
    #: (width scale, height scale, centre x shift in widths, centre y shift in heights) that
    #: moves this detector's boxes onto the eyebrows-to-chin boxes people annotate (and that
    #: the classifier's training crops were cut from); None leaves boxes as they come.
    box_calibration: tuple[float, float, float, float] | None = None

    def __init__(self, threshold: float | None = None, detect_size: int = DEFAULT_DETECT_SIZE,
                 upscale: bool = False, calibrate: bool = True):
        self.upscale = bool(upscale)
        self.calibration = self.box_calibration if calibrate else None
        self.threshold = DEFAULT_THRESHOLDS.get(self.name, 0.5) if threshold is None else threshold
        if not 0.0 <= self.threshold <= 1.0:
            raise MaskwatchError(f"face threshold must be in [0, 1], got {self.threshold}")
        if detect_size < 64:
            raise MaskwatchError(f"--detect-size must be at least 64 px, got {detect_size}")
        self.detect_size = int(detect_size)

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Return face boxes ``(x1, y1, x2, y2, score)`` in the pixels of ``rgb``, best first.

        Images whose long side exceeds ``detect_size`` are shrunk for detection and the
        boxes scaled back; smaller images are used as they are, or enlarged to
        ``detect_size`` when ``upscale`` (finds more tiny faces, several times slower).
        """
        import cv2

        rgb = _check_rgb(rgb)
        h, w = rgb.shape[:2]
        scale = self.detect_size / max(h, w)
        if not self.upscale:
            scale = min(1.0, scale)
        small = rgb
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            small = cv2.resize(rgb, size, interpolation=interp)
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        raw = self._detect(bgr)
        sy = h / small.shape[0]
        sx = w / small.shape[1]
        out: list[Box] = []
        for x1, y1, x2, y2, score in raw:
            if self.calibration is not None:
                x1, y1, x2, y2 = calibrate_box((x1, y1, x2, y2), self.calibration)
            bx1 = int(np.clip(np.floor(x1 * sx), 0, w - 1))
            by1 = int(np.clip(np.floor(y1 * sy), 0, h - 1))
            bx2 = int(np.clip(np.ceil(x2 * sx), bx1 + 1, w))
            by2 = int(np.clip(np.ceil(y2 * sy), by1 + 1, h))
            out.append((bx1, by1, bx2, by2, float(score)))
        out.sort(key=lambda b: -b[4])
        return out

    def _detect(self, bgr: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold}, detect_size={self.detect_size})"


_YUFACE_LOCK = threading.Lock()


class YuNetDetector(FaceDetector):
    """YuNet (libfacedetection) via ``yuface``: fast, but misses many masked faces."""

    name = "yunet"

    def __init__(self, threshold: float | None = None, detect_size: int = DEFAULT_DETECT_SIZE,
                 upscale: bool = False):
        super().__init__(threshold, detect_size, upscale)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import yuface
        except ImportError as exc:  # pragma: no cover - yuface is a dependency
            raise ModelError("the yunet detector needs `pip install yuface==2023.5.1`") from exc
        self._yuface = yuface

    def _detect(self, bgr):
        # yuface returns confidences 0..100; filter ourselves so no size warning is printed.
        # libfacedetection keeps internal buffers: one call at a time (the server is threaded).
        with _YUFACE_LOCK:
            result = self._yuface.c_detect(np.ascontiguousarray(bgr))
        out = []
        rows = np.asarray(result)
        rows = rows.reshape(len(rows), -1) if rows.size else np.zeros((0, 5))
        for row in rows:
            score = float(row[0]) / 100.0
            if score < self.threshold:
                continue
            x, y, bw, bh = (float(v) for v in row[1:5])
            if bw <= 0 or bh <= 0:
                continue
            out.append((x, y, x + bw, y + bh, score))
        return out


# --- CenterFace ------------------------------------------------------------------------

def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: bytes) -> list[tuple[int, int, bytes]]:
    """Split a protobuf message into (field number, wire type, raw payload) triples."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        num, wire = key >> 3, key & 7
        start = pos
        if wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            start = pos
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ModelError(f"unsupported protobuf wire type {wire}")
        out.append((num, wire, buf[start:pos]))
    return out


def _join(fields: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray()
    for num, wire, payload in fields:
        out += _varint(num << 3 | wire)
        if wire == 2:
            out += _varint(len(payload))
        out += payload
    return bytes(out)


def _free_dims(value_info: bytes, free: tuple[int, ...]) -> bytes:
    """Replace the fixed sizes of the given dims of an ONNX ValueInfoProto with symbols."""

    def edit_shape(shape: bytes) -> bytes:
        dims = _fields(shape)
        new, k = [], 0
        for num, wire, payload in dims:
            if num == 1:
                if k in free:
                    payload = _join([(2, 2, f"d{k}".encode())])
                k += 1
            new.append((num, wire, payload))
        return _join(new)

    def edit_tensor(t: bytes) -> bytes:
        return _join([(n, w, edit_shape(p) if n == 2 else p) for n, w, p in _fields(t)])

    def edit_type(t: bytes) -> bytes:
        return _join([(n, w, edit_tensor(p) if n == 1 else p) for n, w, p in _fields(t)])

    return _join([(n, w, edit_type(p) if n == 2 else p) for n, w, p in _fields(value_info)])


def _name_of(message: bytes, field: int) -> str:
    for num, wire, payload in _fields(message):
        if num == field and wire == 2:
            return payload.decode("utf-8", "replace")
    return ""


def dynamic_centerface(model: bytes) -> bytes:
    """Make the CenterFace graph accept any batch/height/width.

    The published model declares a fixed 10x3x32x32 input. This rewrites the declared
    input and output shapes (batch, height, width become symbolic) and drops initializers
    listed as graph inputs, so onnxruntime can fold them as constants. Pure protobuf
    wire-format editing, so the ``onnx`` package is not needed at run time.
    """
    top = _fields(model)
    new_top = []
    for num, wire, payload in top:
        if num == 7 and wire == 2:  # ModelProto.graph
            graph = _fields(payload)
            inits = {_name_of(p, 8) for n, w, p in graph if n == 5 and w == 2}
            new_graph = []
            for n, w, p in graph:
                if n == 11 and w == 2:  # GraphProto.input
                    if _name_of(p, 1) in inits:
                        continue
                    p = _free_dims(p, (0, 2, 3))
                elif n == 12 and w == 2:  # GraphProto.output
                    p = _free_dims(p, (0, 2, 3))
                elif n == 13 and w == 2:  # value_info: shapes of intermediates, now stale
                    continue
                new_graph.append((n, w, p))
            payload = _join(new_graph)
        new_top.append((num, wire, payload))
    return _join(new_top)


#: The CenterFace model shipped in maskwatch's assets, with CENTERFACE-LICENSE.txt beside it.
CENTERFACE_FILE = "centerface.onnx"


def centerface_path() -> Path:
    """The CenterFace ONNX file shipped inside the package (MIT; see its licence file)."""
    path = Path(str(resources.files("maskwatch") / "assets" / CENTERFACE_FILE))
    if not path.is_file():
        raise ModelError(f"{path}: the bundled CenterFace model is missing; reinstall maskwatch")
    return path


class CenterFaceDetector(FaceDetector):
    """CenterFace (anchor-free, 4x down-sampled heat map) run with onnxruntime."""

    name = "centerface"
    # Measured on 843 matched faces of the 853-scene set's training scenes (median of
    # annotation / detection): same width, 0.90 of the height, centre 0.11 heights lower.
    box_calibration = (1.0, 0.90, 0.0, 0.11)

    def __init__(
        self,
        threshold: float | None = None,
        detect_size: int = DEFAULT_DETECT_SIZE,
        threads: int = 0,
        nms_iou: float = 0.3,
        model_path: str | Path | None = None,
        upscale: bool = False,
        calibrate: bool = True,
    ):
        super().__init__(threshold, detect_size, upscale, calibrate)
        import onnxruntime as ort

        path = Path(model_path) if model_path else centerface_path()
        try:
            model = dynamic_centerface(path.read_bytes())
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

    def _detect(self, bgr):
        h, w = bgr.shape[:2]
        # the network down-samples 32x: pad (not stretch) to multiples of 32
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        # raw 0..255 values in RGB order: measured on the 853-scene set, RGB input finds
        # more faces than BGR at the same number of false boxes
        blob[0, :, :h, :w] = bgr[:, :, ::-1].transpose(2, 0, 1)
        heat, scale, offset, _landmarks = self.session.run(None, {self.input_name: blob})
        return decode_centerface(heat[0, 0], scale[0], offset[0], self.threshold,
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
    detect_size: int = DEFAULT_DETECT_SIZE,
    threads: int = 0,
    upscale: bool = False,
) -> FaceDetector:
    """Build a face detector by name: ``centerface``/``accurate`` or ``yunet``/``fast``."""
    if isinstance(name, FaceDetector):
        return name
    key = ALIASES.get(str(name).strip().lower())
    if key is None:
        raise MaskwatchError(
            f"unknown face detector {name!r}; choose from {', '.join(sorted(ALIASES))}"
        )
    if key == "yunet":
        return YuNetDetector(threshold, detect_size, upscale=upscale)
    return CenterFaceDetector(threshold, detect_size, threads=threads, upscale=upscale)
