"""Property-based fuzzing (hypothesis) of every reader of outside input, and a schema-driven
run (schemathesis) against the web app, so the defects of issue 12 stay found.

The property everywhere: bad input gives the reader's one-line error (a MaskwatchError
subclass), or a result that holds together; never another exception. Runs are
derandomized (the same examples on every run) and bounded to keep CI fast.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from maskwatch.data import load_dataset  # noqa: E402
from maskwatch.data.model import CANONICAL, Dataset  # noqa: E402
from maskwatch.errors import ImageError, MaskwatchError, ModelError  # noqa: E402
from maskwatch.imaging import decode_bytes, decode_upload  # noqa: E402
from maskwatch.inference.modelfile import ModelInfo, check_arch  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
FEW = settings(FUZZ, max_examples=15)

# ---------------------------------------------------------------- building blocks

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**30, 10**30).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-1", "0", "12", "3.5", "", " ", "0x10",
                     "1_000", "９"]),
)
WORDS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["a.png", "b.jpg", "A.PNG", "with_mask", "without_mask", "mask",
                     "no-mask", "incorrect_mask", "=cmd()", "../a.png", "/dev/zero", "train",
                     "val", "test", ""]),
)
CELLS = st.one_of(NUMBERS, WORDS)


def tiny_images(folder: Path) -> None:
    """Two small images every fuzzed annotation may point at."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 20, 20)).save(folder / "a.png")
    Image.new("RGB", (30, 40), (20, 200, 20)).save(folder / "b.jpg")


def check_dataset(ds: Dataset) -> None:
    """A loaded dataset holds together: known labels, boxes inside their images."""
    assert isinstance(ds, Dataset)
    for s in ds.samples:
        assert s.label in CANONICAL
        if s.box is not None:
            x1, y1, x2, y2 = s.box
            assert all(isinstance(v, int) for v in s.box)
            assert x2 > x1 and y2 > y1
    assert all(isinstance(n, str) and "\n" not in n for n in ds.notes)


def load_or_refuse(path, **kwargs) -> None:
    try:
        ds = load_dataset(path, **kwargs)
    except MaskwatchError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    check_dataset(ds)


# ---------------------------------------------------------------- dataset readers


@FUZZ
@given(st.lists(st.lists(CELLS, min_size=0, max_size=8), max_size=6),
       st.sampled_from(["name,x1,x2,y1,y2,classname", "filename,xmin,ymin,xmax,ymax,class"]))
def test_fuzz_box_csv(rows, header):
    import csv

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        tiny_images(root)
        with open(root / "boxes.csv", "w", newline="", encoding="utf-8") as f:
            f.write(header + "\n")
            csv.writer(f).writerows(rows)
        load_or_refuse(root / "boxes.csv", mapping="mask=with_mask,no-mask=without_mask")


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_box_csv_raw_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        tiny_images(root)
        (root / "boxes.csv").write_bytes(b"name,x1,x2,y1,y2,classname\n" + data)
        load_or_refuse(root / "boxes.csv")


VOC_FIELDS = st.fixed_dictionaries({
    "filename": WORDS, "width": NUMBERS, "height": NUMBERS,
    "objects": st.lists(st.tuples(WORDS, NUMBERS, NUMBERS, NUMBERS, NUMBERS), max_size=3),
})


@FUZZ
@given(st.one_of(VOC_FIELDS, st.binary(max_size=200)))
def test_fuzz_voc(doc):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        tiny_images(root / "images")
        (root / "annotations").mkdir()
        if isinstance(doc, bytes):
            (root / "annotations" / "a.xml").write_bytes(doc)
        else:
            objs = "".join(
                f"<object><name>{escape(n)}</name><bndbox><xmin>{escape(a)}</xmin>"
                f"<ymin>{escape(b)}</ymin><xmax>{escape(c)}</xmax><ymax>{escape(e)}</ymax>"
                "</bndbox></object>" for n, a, b, c, e in doc["objects"])
            text = (f"<annotation><filename>{escape(doc['filename'])}</filename><size>"
                    f"<width>{escape(doc['width'])}</width><height>{escape(doc['height'])}"
                    f"</height></size>{objs}</annotation>")
            (root / "annotations" / "a.xml").write_text(text, encoding="utf-8",
                                                        errors="surrogatepass")
        load_or_refuse(root)


@FUZZ
@given(st.one_of(
    st.lists(st.lists(CELLS, max_size=6).map(" ".join), max_size=5).map("\n".join)
    .map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=120)),
    st.lists(WORDS.filter(lambda w: w.strip() and "\n" not in w), max_size=4))
def test_fuzz_yolo(labels, names):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        tiny_images(root / "images")
        (root / "labels").mkdir()
        (root / "labels" / "a.txt").write_bytes(labels)
        (root / "labels" / "b.txt").write_text("0 0.5 0.5 0.5 0.5\n")
        (root / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8",
                                          errors="surrogatepass")
        load_or_refuse(root, mapping="mask=with_mask")


@FUZZ
@given(st.lists(st.lists(CELLS, min_size=0, max_size=10), max_size=6))
def test_fuzz_manifest(rows):
    import csv

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        tiny_images(root)
        with open(root / "m.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "split", "source", "group", "x1", "y1", "x2", "y2"])
            w.writerows(rows)
        load_or_refuse(root / "m.csv")


# ---------------------------------------------------------------- model metadata, checkpoints

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
GOOD = {"name": "m", "classes": ["with_mask", "without_mask"], "input_size": 32,
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "threshold": 0.5, "head": "softmax",
        "arch": "seed_cnn128", "num_outputs": 2, "arch_args": {"input_size": 32}}
HEADERS = st.one_of(
    JSON,
    st.fixed_dictionaries({k: st.one_of(st.just(v), JSON) for k, v in GOOD.items()}),
    st.fixed_dictionaries({
        **{k: st.just(v) for k, v in GOOD.items()},
        "arch_args": st.dictionaries(
            st.sampled_from(["input_size", "dropout", "width_mult", "aux_logits", "x"]),
            st.one_of(st.integers(-10**9, 10**9), st.floats(), st.booleans()), max_size=3),
    }),
)


@FUZZ
@given(HEADERS)
def test_fuzz_model_metadata(header):
    try:
        info = ModelInfo.from_dict(header)
    except ModelError as exc:
        assert "\n" not in str(exc)
    else:
        assert 8 <= info.input_size <= 1024 and len(info.classes) >= 2
        assert 0 <= info.threshold <= 1 and all(v > 0 for v in info.std)
    if isinstance(header, dict):
        try:
            arch, outputs, args = check_arch(header)
        except ModelError:
            pass
        else:
            assert 1 <= outputs <= 64 and isinstance(arch, str) and isinstance(args, dict)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_model_json_file(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.json"
        path.write_bytes(data)
        with pytest.raises(ModelError):
            ModelInfo.load_json(path)


def _safetensors_bytes(meta_json: str, tensor_bytes: bytes = b"\0" * 16) -> bytes:
    """A safetensors file by hand: 8-byte header length, JSON header, data."""
    head = json.dumps({"__metadata__": {"maskwatch": meta_json},
                       "w": {"dtype": "F32", "shape": [len(tensor_bytes) // 4],
                             "data_offsets": [0, len(tensor_bytes)]}}).encode()
    return len(head).to_bytes(8, "little") + head + tensor_bytes


@FEW
@given(st.one_of(
    st.binary(max_size=200),
    st.binary(min_size=1, max_size=80).map(lambda b: len(b).to_bytes(8, "little") + b),
    HEADERS.map(lambda h: _safetensors_bytes(json.dumps(h, allow_nan=True))),
    st.text(max_size=40).map(_safetensors_bytes),
))
def test_fuzz_checkpoint_reader(data):
    pytest.importorskip("safetensors")
    pytest.importorskip("torch")
    from maskwatch.models.checkpoint import load_checkpoint, read_header

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.safetensors"
        path.write_bytes(data)
        for reader in (read_header, load_checkpoint):
            try:
                reader(path)
            except ModelError as exc:
                assert "\n" not in str(exc)


# ---------------------------------------------------------------- image decoding


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    rgb = (np.arange(12 * 10 * 3) % 251).astype(np.uint8).reshape(10, 12, 3)
    Image.fromarray(rgb).convert(mode).save(buf, fmt)
    return buf.getvalue()


SEEDS = [_encoded("PNG"), _encoded("JPEG"), _encoded("GIF", "P"), _encoded("BMP"),
         _encoded("TIFF"), _encoded("WEBP"), _encoded("PNG", "1"), _encoded("PNG", "I;16")]


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:at + draw(st.integers(1, 64))]
            if not data:
                data = bytearray(b"\0")
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def check_decoded(rgb: np.ndarray) -> None:
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[0] > 0 and rgb.shape[1] > 0


@FUZZ
@given(st.one_of(st.binary(max_size=200), mutated_images()), st.sampled_from([None, 40]))
def test_fuzz_image_decoding(data, work_pixels):
    try:
        if work_pixels is None:
            check_decoded(decode_bytes(data, max_pixels=1_000_000))
        else:
            rgb, (sx, sy) = decode_upload(data, 1_000_000, work_pixels)
            check_decoded(rgb)
            assert math.isfinite(sx) and math.isfinite(sy) and sx >= 1 and sy >= 1
    except ImageError as exc:
        assert "\n" not in str(exc)


#: The modes each format can hold (Pillow writes them).
WRITABLE = {"JPEG": {"RGB", "L", "CMYK", "1"}, "WEBP": {"RGB", "RGBA", "L", "LA", "P"},
            "GIF": {"P", "L", "1", "RGB"}, "BMP": {"RGB", "L", "P", "1"},
            "PNG": {"RGB", "L", "RGBA", "LA", "P", "1", "I;16", "I"},
            "TIFF": {"RGB", "L", "RGBA", "LA", "P", "1", "I;16", "I", "F", "CMYK"}}


@st.composite
def odd_photos(draw) -> tuple[tuple[int, int], str, str]:
    """(width, height), Pillow mode and format of a valid photo of an odd shape or kind:
    strips a pixel or a few high, tiny, and mid-size ones in every mode a camera, a scanner
    or an editor writes."""
    short = draw(st.integers(1, 6))
    long_ = draw(st.sampled_from([1, 7, 300, 1700, 5000, 40000]))
    size = (long_, short) if draw(st.booleans()) else (short, long_)
    if draw(st.booleans()):
        size = (draw(st.integers(1, 900)), draw(st.integers(1, 900)))
    fmt = draw(st.sampled_from(sorted(WRITABLE)))
    if fmt == "WEBP":  # its sides stop at 16,383 px
        size = (min(size[0], 16383), min(size[1], 16383))
    return size, draw(st.sampled_from(sorted(WRITABLE[fmt]))), fmt


@FUZZ
@given(odd_photos(), st.sampled_from([1600, 0, 50]))
def test_fuzz_detect_on_odd_photos(photo, copy_size):
    """Any valid photo, however thin or odd its kind, is read, detected and drawn: no
    error, and an annotated copy at least a pixel across (a 20000 x 3 strip once crashed
    the whole run)."""
    from detection_helpers import BlobDetector, SkinClassifier

    from maskwatch.detection.images import _process_image
    from maskwatch.detection.pipeline import Detector

    (w, h), mode, fmt = photo
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : max(1, w // 2)] = (200, 150, 170)  # half of it a "face" for BlobDetector
    det = Detector(face_detector=BlobDetector(), classifier=SkinClassifier(), threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"odd.{fmt.lower()}"
        Image.fromarray(rgb).convert(mode).save(path, fmt)
        faces, error, written = _process_image(det, str(path), Path(tmp) / "copy.png", None,
                                               copy_size)
        assert error is None and faces is not None
        cw, ch = Image.open(written).size
        assert min(cw, ch) >= 1 and max(cw, ch) >= min(max(w, h), copy_size or max(w, h))


# ---------------------------------------------------------------- the web API, from its schema


def test_schema_driven_run_against_the_app():
    """schemathesis sends requests generated from /openapi.json to the app: no 5xx, every
    answer conforms to the schema (status, content type, body). A valid image cannot be
    told from bytes by the schema, so 'schema-valid data accepted' is not checked."""
    schemathesis = pytest.importorskip("schemathesis")
    pytest.importorskip("fastapi")
    from schemathesis.specs.openapi.checks import positive_data_acceptance
    from test_serving import FakeDetector

    from maskwatch.serving.app import Settings, create_app

    with tempfile.TemporaryDirectory() as jobs:
        app = create_app(detector=FakeDetector(), settings=Settings(
            allowed_hosts=("testserver",), max_video_jobs=2, max_video_mb=1.0,
            jobs_dir=Path(jobs)))
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        failures: list[str] = []
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(FUZZ, max_examples=12)
            @given(case=operation.as_strategy())
            def run(case) -> None:
                case.call_and_validate(excluded_checks=[positive_data_acceptance])

            try:
                run()
            except Exception as exc:  # noqa: BLE001 - collect, report all operations at once
                failures.append(f"{operation.label}: {str(exc)[:2000]}")
        assert not failures, "\n\n".join(failures)
    assert os.path.isdir(tempfile.gettempdir())
