"""Batch inference: worker processes, streamed output, kill + --resume, and --shard."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")

from detection_helpers import write_image  # noqa: E402
from slowdown import slow_env  # noqa: E402

from maskwatch.cli import main as cli_main  # noqa: E402


@pytest.fixture
def model(tiny_model) -> Path:
    return tiny_model


@pytest.fixture
def folder(face_folder) -> Path:
    return face_folder


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _children(pid: int) -> list[int]:
    """Live child process ids of ``pid`` (Linux /proc; empty elsewhere)."""
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _env(**extra: str) -> dict:
    return dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **extra)


def test_kill_halfway_then_resume_has_no_gaps_or_duplicates(tmp_path, model, folder):
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "maskwatch", "classify", str(folder), "--model", str(model),
            "--output", str(out), "--workers", "2"]
    proc = subprocess.Popen(argv, env=slow_env("maskwatch.imaging:load_rgb", 0.1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not out.exists() or out.read_text().count("\n") < 8:
            assert proc.poll() is None, "classify ended before it was killed"
            assert time.time() < deadline, "no results within a minute"
            time.sleep(0.02)
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    first = _records(out)
    assert 8 <= len(first) < 40  # killed halfway; every line written is a whole record
    everything = sorted(str(p) for p in folder.rglob("*.png"))
    # the output keeps the input order (folder listing order), with no hole
    assert [r["path"] for r in first] == everything[: len(first)]
    if Path("/proc/self/stat").exists():  # its worker processes do not outlive it
        assert len(workers) >= 2
        deadline = time.time() + 10
        while any(_alive(pid) for pid in workers):
            assert time.time() < deadline, "worker processes outlived the killed run"
            time.sleep(0.1)

    # without --resume an existing output file is never touched
    before = out.read_bytes()
    assert cli_main(["classify", str(folder), "--model", str(model), "--output", str(out)]) == 2
    assert out.read_bytes() == before
    rc = subprocess.run(argv + ["--resume"], env=_env(), capture_output=True, text=True,
                        timeout=60)
    assert rc.returncode == 0, rc.stderr
    assert f"{40 - len(first)} image(s) written" in rc.stderr
    final = _records(out)
    assert [r["path"] for r in final] == everything  # each file exactly once, in order
    assert final[: len(first)] == first  # what was there is kept as it was
    from maskwatch.imaging import load_rgb
    from maskwatch.inference.classifier import Classifier

    clf = Classifier(model)
    for r in final[:: 7]:
        expected = clf.classify([load_rgb(r["path"])])[0]
        assert r["label"] == expected.label and r["score"] == pytest.approx(expected.score)


def test_classify_shards_cover_every_file_once(tmp_path, model, folder, capsys):
    parts = []
    for i in range(3):
        path = tmp_path / f"part{i}.csv"
        assert cli_main(["classify", str(folder), "--model", str(model), "--shard", f"{i}/3",
                         "--output", str(path)]) == 0
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["path", "label", "score", "p_with_mask", "p_without_mask"]
        parts.append([r["path"] for r in rows])
    assert sorted(len(p) for p in parts) == [13, 13, 14]
    joined = [p for part in parts for p in part]
    assert sorted(joined) == sorted(str(p) for p in folder.rglob("*.png"))
    capsys.readouterr()
    # the same split whatever order the inputs are named in
    assert cli_main(["classify", str(folder / "b"), str(folder / "a"), "--model", str(model),
                     "--shard", "1/3", "--json"]) == 0
    again = [json.loads(x)["path"] for x in capsys.readouterr().out.splitlines()]
    assert sorted(again) == sorted(parts[1])
    # a CSV output resumes too: nothing is added twice
    assert cli_main(["classify", str(folder), "--model", str(model), "--output",
                     str(tmp_path / "part0.csv"), "--resume"]) == 0
    with open(tmp_path / "part0.csv", newline="") as f:
        paths = [r["path"] for r in csv.DictReader(f)]
    assert sorted(paths) == sorted(joined)


def test_classify_a_folder_without_images_is_one_line(tmp_path, model, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    out = tmp_path / "out.csv"
    for extra in ([], ["--json"], ["--output", str(out)]):
        assert cli_main(["classify", str(empty), "--model", str(model), *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and f"{empty}: no image file here" in captured.err
    assert not out.exists()
    # a resumed run with nothing left to do is not an error
    face = tmp_path / "one"
    face.mkdir()
    write_image(face / "a.png", np.full((40, 40, 3), 120, np.uint8))
    for _ in range(2):
        assert cli_main(["classify", str(face), "--model", str(model), "--output", str(out),
                         "--resume"]) == 0
    assert len(out.read_text().splitlines()) == 2  # header + one row


def test_bad_shard_and_output_arguments(tmp_path, model, folder, capsys):
    with pytest.raises(SystemExit) as stop:  # argparse rejects it
        cli_main(["classify", str(folder), "--model", str(model), "--shard", "3/3"])
    assert stop.value.code == 2 and "0 <= I < N" in capsys.readouterr().err
    assert cli_main(["classify", str(folder), "--model", str(model), "--resume"]) == 2
    assert "--resume needs --results" in capsys.readouterr().err
    assert cli_main(["classify", str(folder), "--model", str(model), "--output",
                     str(tmp_path / "x.txt")]) == 2
    assert "must end in .jsonl or .csv" in capsys.readouterr().err


def test_detect_shards_resume_and_workers(tmp_path, make_face):
    pytest.importorskip("cv2")
    from detection_helpers import scene, write_image

    root = tmp_path / "scenes"
    img, _ = scene(width=320, height=240, faces=((20, 30, 110, False), (180, 30, 110, True)))
    for i in range(3):
        write_image(root / f"people{i}.jpg", img)
    for i in range(5):
        make_face(root / f"crop{i}.png", seed=i, size=32)
    common = ["--faces-only", "--detect-size", "320", "--threads", "1", "--quiet", "--no-save"]
    parts = []
    for i in range(2):
        out = tmp_path / f"d{i}.jsonl"
        assert cli_main(["detect", str(root), "--shard", f"{i}/2", "--output", str(out),
                         *common]) == 0
        parts.append(_records(out))
    names = sorted(Path(r["path"]).name for part in parts for r in part)
    assert names == sorted(p.name for p in root.iterdir())  # each image once, faces or not
    # resume shard 0's file over the whole folder: only the other shard's images are added
    merged = tmp_path / "d0.jsonl"
    assert cli_main(["detect", str(root), "--output", str(merged), "--resume", *common]) == 0
    records = _records(merged)
    assert sorted(Path(r["path"]).name for r in records) == names
    # worker processes give the same results as this process, in the same order
    pooled = tmp_path / "pooled.csv"
    assert cli_main(["detect", str(root), "--output", str(pooled), "--workers", "2",
                     *common]) == 0
    with open(pooled, newline="") as f:
        rows = list(csv.DictReader(f))
    by_path = {r["path"]: r["faces"] for r in records}
    seen = []
    for row in rows:
        if row["path"] not in seen:
            seen.append(row["path"])
    assert seen == sorted(by_path)  # one or more rows per image, input order
    for path, faces in by_path.items():
        boxes = [[int(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in rows
                 if r["path"] == path and r["face"] != ""]
        assert boxes == [f["box"] for f in faces]
    assert sum(len(f) for f in by_path.values()) >= 6  # the scenes' faces were found
