"""Shared fixtures: the real datasets folder and small generated face-like images."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]

# commands that save by default (runs/COMMAND/N) write into a temporary folder, not the repo
if "MASKWATCH_RUNS" not in os.environ:
    os.environ["MASKWATCH_RUNS"] = tempfile.mkdtemp(prefix="maskwatch-test-runs-")
    atexit.register(shutil.rmtree, os.environ["MASKWATCH_RUNS"], True)


def datasets_path() -> Path:
    """The real datasets folder: env MASKWATCH_DATASETS, else ``<repo>/../shared/datasets``."""
    env = os.environ.get("MASKWATCH_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def require_dataset(name: str = "") -> Path:
    """Return ``datasets_path()/name``, or skip the test with a clear reason when absent."""
    root = datasets_path()
    path = root / name if name else root
    if not path.exists():
        pytest.skip(f"real dataset {path} is absent (set MASKWATCH_DATASETS to its folder)")
    return path


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The real datasets folder (read-only); skips the test when it is absent."""
    return require_dataset()


def face_array(seed: int = 0, masked: bool = False, size: int = 64) -> np.ndarray:
    """A small face-like RGB uint8 image: seeded background blocks, skin oval, eyes, mouth
    (or a blue mask over the lower half when ``masked``). Different seeds give images far
    apart in perceptual hash; the same seed gives the same image."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    cell = max(1, size // 6)
    for y in range(0, size, cell):
        for x in range(0, size, cell):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
    s = size / 64
    skin = tuple(int(v) for v in rng.integers(150, 230, 3))
    draw.ellipse([20 * s, 12 * s, 44 * s, 52 * s], fill=skin)
    draw.ellipse([22 * s, 22 * s, 28 * s, 28 * s], fill=(30, 30, 30))
    draw.ellipse([36 * s, 22 * s, 42 * s, 28 * s], fill=(30, 30, 30))
    if masked:
        draw.rectangle([17 * s, 34 * s, 47 * s, 52 * s], fill=(70, 130, 220))
    else:
        draw.rectangle([26 * s, 42 * s, 38 * s, 46 * s], fill=(150, 40, 40))
    return np.asarray(img)


def write_face(path: str | Path, seed: int = 0, masked: bool = False, size: int = 64,
               format: str | None = None) -> Path:
    """Write ``face_array(seed, masked, size)`` to ``path`` (format from the suffix unless
    ``format`` is given, e.g. "PNG" to write a PNG under a .jpg name); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(face_array(seed, masked, size)).save(path, format=format)
    return path


@pytest.fixture
def make_face():
    """The ``write_face(path, seed=0, masked=False, size=64, format=None)`` helper."""
    return write_face


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of a throw-away PostgreSQL server started for this session (see
    postgres_helpers); skips with the reason when none can be started."""
    from postgres_helpers import Unavailable, postgres_server

    server = postgres_server()
    try:
        url = server.__enter__()
    except Unavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield url
    server.__exit__(None, None, None)


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    """A tiny ONNX classifier (needs onnx): with_mask follows the mean blue, without_mask
    the mean red."""
    pytest.importorskip("onnx")
    from onnx_helpers import write_tiny_onnx

    return write_tiny_onnx(tmp_path / "tiny.onnx", [[0, 8], [0, 0], [8, 0]],
                           mean=[0.5] * 3, std=[0.5] * 3)


@pytest.fixture
def face_folder(tmp_path) -> Path:
    """faces/a and faces/b: 40 small faces (every third masked) and a text file in a/."""
    root = tmp_path / "faces"
    for i in range(40):
        write_face(root / ("a" if i % 2 else "b") / f"face{i:02d}.png", seed=i,
                   masked=i % 3 == 0, size=24)
    (root / "a" / "readme.txt").write_text("not an image")
    return root


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file."""
    import json

    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture
def interrupt_saves(monkeypatch):
    """``interrupt_saves(n)``: ``maskwatch.imaging.save_rgb`` raises KeyboardInterrupt
    (Ctrl+C) at its n-th call; ``interrupt_saves(None)`` saves normally again."""
    import maskwatch.imaging

    real = maskwatch.imaging.save_rgb

    def arm(after: int | None) -> None:
        calls = []

        def save_then_stop(path, rgb, *args, **kwargs):
            calls.append(path)
            if len(calls) == after:
                raise KeyboardInterrupt
            return real(path, rgb, *args, **kwargs)

        monkeypatch.setattr(maskwatch.imaging, "save_rgb", real if after is None
                            else save_then_stop)

    return arm
