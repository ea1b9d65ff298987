"""`maskwatch train` under torchrun: 2 CPU processes with gloo, metrics, files and resume."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import torch.distributed as dist  # noqa: E402
from slowdown import slow_env  # noqa: E402

from maskwatch.training.distributed import DistEnv, shard_order  # noqa: E402

STEP = "maskwatch.training.augment:augment_batch"  # called once per training step

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with the gloo back-end is not available in this torch build",
                allow_module_level=True)

torch.set_num_threads(1)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(_port()),
            "-m", "maskwatch", *argv]


def _env(tmp: Path, slow_step: float = 0.0) -> dict:
    """The environment for torchrun; ``slow_step``: seconds each training step sleeps.
    Temporary files go under ``tmp`` (torchrun leaves a torchelastic_* folder there)."""
    env = (slow_env(STEP, slow_step) if slow_step
           else dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        env.pop(key, None)
    (tmp / "tmp").mkdir(exist_ok=True)
    return dict(env, TMPDIR=str(tmp / "tmp"))


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (torchrun starts its workers in their own sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL a whole torchrun job, as a crash or a lost machine would stop it."""
    for p in [pid, *_descendants(pid)]:
        try:
            os.kill(p, signal.SIGSTOP)  # freeze first so nothing restarts or goes on
        except ProcessLookupError:
            pass
    for p in [pid, *_descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _train_argv(data: Path, out: Path, cache: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--model", "seed_cnn128",
            "--input-size", "32", "--batch-size", "4", "--eval-batch-size", "2",
            "--epochs", "3", "--val-fraction", "0.2", "--workers", "1", "--cache-dir",
            str(cache), "--no-progress", "--lr", "3e-3", "--dropout", "0.2"]


@pytest.fixture
def faces(tmp_path, make_face) -> Path:
    root = tmp_path / "faces"
    for i in range(16):
        make_face(root / "with_mask" / f"m{i}.png", seed=i, masked=True, size=40)
        make_face(root / "without_mask" / f"u{i}.png", seed=100 + i, size=40)
    return root


def test_shards_are_disjoint_and_equal():
    order = np.random.default_rng(0).permutation(11)
    parts = [shard_order(order, r, 3) for r in range(3)]
    assert all(len(p) == 3 for p in parts)
    joined = np.concatenate(parts)
    assert len(set(joined.tolist())) == 9 and set(joined.tolist()) <= set(order.tolist())
    assert shard_order(order, 0, 1) is order
    assert not DistEnv().distributed and DistEnv().all_reduce_sum([1, 2]).tolist() == [1, 2]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_torchrun_two_processes_metrics_files_and_resume(tmp_path, faces):
    from maskwatch.models.checkpoint import load_checkpoint, read_header
    from maskwatch.training.data import load_data
    from maskwatch.training.losses import create_criterion
    from maskwatch.training.train import evaluate

    cache = tmp_path / "cache"
    full = tmp_path / "full"
    proc = subprocess.run(_torchrun(*_train_argv(faces, full, cache)), env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # only rank 0 reports and logs
    assert proc.stdout.count("best checkpoint") == 1
    assert proc.stderr.count("epoch 1/3:") == 1 and "2 processes x batch 4" in proc.stderr
    names = sorted(p.name for p in full.iterdir())
    assert names == sorted(["best.safetensors", "last.safetensors", "last_state.safetensors",
                            "metrics.csv", "metrics.json", "curves.png", "config.json",
                            "summary.json"])  # one set of files, no per-rank leftovers
    config = json.loads((full / "config.json").read_text())
    assert config["world_size"] == 2
    history = json.loads((full / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]

    # re-evaluate best.safetensors in this (single) process on the same validation faces:
    # the figures rank 0 recorded were summed over both ranks' halves of the batches
    summary = json.loads((full / "summary.json").read_text())
    best = history[summary["best_epoch"] - 1]
    args = argparse.Namespace(**config["args"])
    args.no_progress = True
    data = load_data(args, config["input_size"])
    assert len(data.val) >= 4  # two eval batches at least: each rank scored a part
    model, info = load_checkpoint(full / "best.safetensors")
    crit = create_criterion(args, data.train.labels, 2, torch.device("cpu"))
    again = evaluate(model, crit, data.val, torch.device("cpu"), args, config["mean"],
                     config["std"])
    assert again["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5, abs=1e-6)
    assert again["val_acc"] == best["val_acc"]
    assert again["val_balanced_acc"] == best["val_balanced_acc"]
    header = read_header(full / "best.safetensors")
    assert header["extra"]["epoch"] == summary["best_epoch"]
    assert header["extra"]["val_loss"] == pytest.approx(best["val_loss"], abs=1e-6)
    # the training figures cover both shards: every train face seen once per epoch
    n_train = len(data.train)
    assert n_train % 2 == 0
    for row in history:
        assert row["train_acc"] * n_train == pytest.approx(round(row["train_acc"] * n_train))

    # kill a distributed run during epoch 2, then resume it with torchrun
    if not Path("/proc/self/stat").exists():
        pytest.skip("killing a torchrun job's workers needs /proc (Linux)")
    killed = tmp_path / "killed"
    runner = subprocess.Popen(_torchrun(*_train_argv(faces, killed, cache)),
                              env=_env(tmp_path, slow_step=0.3),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (killed / "metrics.json").exists():
            assert runner.poll() is None, "torchrun ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within a minute"
            time.sleep(0.05)
        time.sleep(0.5)  # into epoch 2 (4 steps of 0.3 s per epoch)
        assert runner.poll() is None
    finally:
        _kill_tree(runner.pid)
        runner.wait(30)
    assert [r["epoch"] for r in json.loads((killed / "metrics.json").read_text())] == [1]
    resumed = subprocess.run(
        _torchrun("train", "--resume", str(killed), "--no-progress", "--cache-dir", str(cache)),
        env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "after epoch 1" in resumed.stderr and "epoch 1/3:" not in resumed.stderr
    assert resumed.stderr.count("epoch 3/3:") == 1
    # the resumed run ends exactly where the uninterrupted one did
    for name in ("last.safetensors", "best.safetensors"):
        a, b = _weights(full / name), _weights(killed / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    hist = json.loads((killed / "metrics.json").read_text())
    assert [r["train_loss"] for r in hist] == [r["train_loss"] for r in history]
    assert not list(killed.glob(".*.tmp*"))  # no half-written file left from rank 0
