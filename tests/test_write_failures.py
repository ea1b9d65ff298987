"""Failed writes and hostile file names (issue 12, items 2, 4, 9, 10, 12): a full disk fails
the command in one line and leaves no partial file; CSV outputs survive file names that are
not UTF-8 and never hold a cell a spreadsheet would run."""

from __future__ import annotations

import csv
import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskwatch.cli import main
from maskwatch.errors import MaskwatchError

SRC = str(Path(__file__).resolve().parents[1] / "src")
NOT_UTF8 = os.fsdecode(b"caf\xe9-\xff.png")  # a Latin-1 name: not valid UTF-8
FORMULAS = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM(1).png"]


def _faces(folder: Path, rgb: np.ndarray | None = None) -> list[str]:
    """The same image under a plain, a non-UTF-8 and four formula-like names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["plain.png", NOT_UTF8, *FORMULAS]
    if rgb is None:
        rgb = np.random.default_rng(0).integers(0, 255, (32, 30, 3), dtype=np.uint8)
    for name in names:
        Image.fromarray(rgb).save(folder / name)
    return names


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_cells(path: Path) -> None:
    """Every input has its row, the non-UTF-8 name keeps its bytes, and no cell would run
    as a formula: the formula-like names are there with a leading quote."""
    rows = _rows(path)
    paths = {r["path"] for r in rows}
    assert NOT_UTF8 in paths and "plain.png" in paths
    assert {"'" + f for f in FORMULAS} <= paths
    for r in rows:
        for value in r.values():
            assert not value.startswith(("=", "+", "-", "@")) or _is_number(value), value


# ---------------------------------------------------------------- items 4 and 12: CSV


@pytest.fixture
def model(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from maskwatch.inference.modelfile import ModelInfo
    from maskwatch.models import create_model
    from maskwatch.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("seed_cnn128", 2, input_size=32),
                    ModelInfo("seed_cnn128", ["with_mask", "without_mask"], 32))
    return path


def test_classify_output_csv_with_odd_and_formula_names(tmp_path, model, monkeypatch):
    folder = tmp_path / "faces"
    _faces(folder)
    monkeypatch.chdir(folder)  # relative inputs: the file name starts the cell
    out = tmp_path / "o.csv"
    assert main(["classify", ".", "--model", str(model), "--output", str(out)]) == 0
    assert len(_rows(out)) == 6
    _check_cells(out)
    # --resume matches the escaped and the non-UTF-8 names: nothing is added twice
    assert main(["classify", ".", "--model", str(model), "--output", str(out),
                 "--resume"]) == 0
    assert len(_rows(out)) == 6


def test_detect_csv_and_output_with_odd_and_formula_names(tmp_path, monkeypatch):
    from detection_helpers import scene

    folder = tmp_path / "faces"
    img, _ = scene(width=320, height=240, faces=((20, 30, 110, False), (180, 30, 110, True)))
    _faces(folder, img)
    monkeypatch.chdir(folder)
    table, output = tmp_path / "x.csv", tmp_path / "o.csv"
    # --csv is now the old spelling of --results (as --output is): one file per run
    for flag, path in (("--csv", table), ("--results", output)):
        assert main(["detect", ".", "--faces-only", "--detect-size", "320", "--quiet",
                     "--threads", "1", "--no-save", flag, str(path)]) == 0
    for path in (table, output):
        assert len(_rows(path)) == 12, path  # two faces in each of the six images
        _check_cells(path)


def test_manifest_escapes_formulas_and_reads_them_back(tmp_path):
    from maskwatch.data import Sample, read_manifest, write_manifest

    names = _faces(tmp_path)
    samples = [Sample(tmp_path / n, "with_mask", "train", "=src", "@grp") for n in names]
    path = write_manifest(tmp_path / "m.csv", samples)  # names relative: they start cells
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    assert "'=HYPERLINK" in text and "'=src" in text and "\n=" not in text and ",=" not in text
    back = read_manifest(path)
    assert [s.path.name for s in back] == names
    assert {s.source for s in back} == {"=src"} and {s.group for s in back} == {"@grp"}


# ---------------------------------------------------------------- items 2 and 9: full disk


def test_detect_video_on_a_full_disk_fails_and_removes_the_file(tmp_path, capsys, monkeypatch):
    from detection_helpers import SkinClassifier, head, paste

    from maskwatch.detection import pipeline
    from maskwatch.detection.video import VideoWriter

    monkeypatch.setattr(pipeline, "_load_classifier",
                        lambda c, t, threshold=None: SkinClassifier())
    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, 10.0, (160, 120)) as w:
        for i in range(6):
            canvas = np.full((120, 160, 3), 110, np.uint8)
            paste(canvas, head(), 5 + 4 * i, 10, 90)
            w.write(canvas)
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.part.mp4").symlink_to("/dev/full")  # ffmpeg's writes fail: ENOSPC
    code = main(["detect", str(clip), "--out", str(out), "--quiet", "--threads", "1"])
    err = capsys.readouterr().err
    assert code != 0
    line = next(ln for ln in err.splitlines() if "cannot write the video" in ln)
    assert "No space left on device" in line or "error" in line.lower()
    assert "Traceback" not in err
    assert not (out / "clip.mp4").exists() and not (out / "clip.part.mp4").exists()


def _limited(max_bytes: int):
    def limit() -> None:  # files cannot grow past max_bytes: writes fail as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return limit


def test_classify_output_on_a_full_disk_is_one_line(tmp_path, model):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(40):
        Image.new("RGB", (30, 30), (i * 6, 90, 40)).save(folder / f"{'x' * 60}{i}.png")
    out = tmp_path / "o.csv"
    res = subprocess.run(
        [sys.executable, "-m", "maskwatch", "classify", str(folder), "--model", str(model),
         "--output", str(out)],
        capture_output=True, text=True, timeout=300, preexec_fn=_limited(1500),
        env={**os.environ, "PYTHONPATH": SRC, "OMP_WAIT_POLICY": "PASSIVE"})
    assert res.returncode == 2, res.stderr[-800:]
    assert "Traceback" not in res.stderr
    assert f"{out}: cannot write" in res.stderr


def test_write_atomic_leaves_no_partial_file(tmp_path):
    from maskwatch.files import write_atomic

    def half(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(MaskwatchError, match=r"m\.csv: cannot write the metrics \(No space"):
        write_atomic(tmp_path / "m.csv", half, "metrics")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_save_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    from maskwatch.errors import ModelError
    from maskwatch.models.checkpoint import save_state

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ModelError, match="cannot write the checkpoint"):
        save_state(tmp_path / "best.safetensors", {"w": torch.zeros(2)}, {})
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_os_errors_in_one_line(tmp_path, capsys, monkeypatch):
    import maskwatch.cli.serve as serve_cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(serve_cli, "run", full)  # the parser is built (and bound) per call
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"maskwatch: error: {tmp_path / 'x'}: No space left on device"


# ---------------------------------------------------------------- item 10: killed saves


def test_temporaries_of_a_killed_save_are_removed(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from maskwatch.models.checkpoint import save_state

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".last.safetensors.{dead.pid}.tmp"
        stale.write_bytes(b"\0" * 1000)  # what kill -9 during a save leaves
        busy = tmp_path / f".last.safetensors.{alive.pid}.tmp"
        busy.write_bytes(b"\0" * 10)  # another process is saving right now
        other = tmp_path / f".best.safetensors.{dead.pid}.tmp"
        other.write_bytes(b"\0")
        save_state(tmp_path / "last.safetensors", {"w": torch.zeros(2)}, {"a": 1})
        assert not stale.exists() and busy.exists() and other.exists()
        assert (tmp_path / "last.safetensors").is_file()
    finally:
        alive.kill()
        alive.wait()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 300 KB tmpfs: a real full disk (needs root; skipped where mount is refused)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); /dev/full tests cover it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def test_video_writer_on_a_really_full_disk(tiny_disk):
    """ffmpeg fills the disk ("Error closing file"/"writing trailer"): one line, no file."""
    from maskwatch.detection.video import VideoWriteError, VideoWriter

    rng = np.random.default_rng(0)
    writer = VideoWriter(tiny_disk / "out.mp4", 10, (320, 240))
    with pytest.raises(VideoWriteError, match="No space left on device"):
        for _ in range(60):
            writer.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
        writer.close()
    assert list(tiny_disk.iterdir()) == []


def test_writing_many_files_lists_their_folder_once(tmp_path, monkeypatch):
    """A folder is listed once per process, not once per file (that made n writes cost n^2);
    a killed writer's temporary found then is still removed when its name is written."""
    from maskwatch import files

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".photo-7.jpg.{dead.pid}.tmp"
    stale.write_bytes(b"\0")
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(files.os, "scandir", lambda p: listed.append(p) or real_scandir(p))
    for i in range(20):
        files.write_atomic(tmp_path / f"photo-{i}.jpg", lambda p: p.write_bytes(b"x"))
    assert listed == [tmp_path]
    assert not stale.exists() and (tmp_path / "photo-7.jpg").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"photo-{i}.jpg" for i in range(20))
