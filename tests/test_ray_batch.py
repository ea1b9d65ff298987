"""classify/detect --ray against a real Ray head on 127.0.0.1 (one head for the session)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'maskwatch[ray]')")
pytest.importorskip("onnx")

from conftest import read_jsonl  # noqa: E402

from maskwatch.cli import main as cli_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SLOW = Path(__file__).resolve().parent / "ray_slow"
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ray's token authentication with a token of the session's own, whatever ~/.ray holds
TOKEN = secrets.token_hex(32)


def _ray_env(*first_on_path: Path, **extra: str) -> dict:
    """Environment for the head and the drivers: loopback only, no usage stats, this
    session's auth token, this checkout's maskwatch first on the path."""
    path = [*map(str, first_on_path), str(REPO / "src"), os.environ.get("PYTHONPATH")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return dict(env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
                RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN, OMP_WAIT_POLICY="PASSIVE",
                PYTHONPATH=os.pathsep.join(p for p in path if p), **extra)


class Head:
    def __init__(self, proc: subprocess.Popen, address: str, slow_file: Path):
        self.proc = proc
        self.address = address
        self.slow_file = slow_file

    def processes(self) -> dict[int, str]:
        """pid -> command line of this head's processes and their children (Ray workers
        start their own sessions, so the process group is not enough)."""
        table = {}
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if stat[0] != "Z":
                table[int(entry.name)] = (int(stat[1]), int(stat[3]), cmd)  # ppid, pgid
        ours = {pid for pid, (_, pgid, _) in table.items() if pgid == self.proc.pid}
        kids = {pid for pid, (ppid, _, _) in table.items() if ppid in ours}
        return {pid: table[pid][2] for pid in ours | kids}


@pytest.fixture(scope="session")
def ray_head():
    """`ray start --head` on 127.0.0.1 with 2 CPUs, stopped (its whole process group
    killed) at the end of the session."""
    tmp = Path(tempfile.mkdtemp(prefix="mwray"))  # short: Ray's socket paths are limited
    slow_file = tmp / "slow"
    port = _free_port()
    env = _ray_env(SLOW, MASKWATCH_SLOW_FILE=str(slow_file))
    cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
           "--disable-usage-stats", "--temp-dir", str(tmp / "t")]
    log = open(tmp / "head.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while b"Ray runtime started" not in (tmp / "head.log").read_bytes():
            assert proc.poll() is None, (tmp / "head.log").read_text()[-2000:]
            assert time.time() < deadline, "the Ray head did not start within 2 minutes"
            time.sleep(0.2)
        yield Head(proc, address, slow_file)
    finally:
        pids = Head(proc, address, slow_file).processes()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in pids:  # workers in their own sessions
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(30)
        log.close()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


@pytest.fixture
def folder(face_folder) -> Path:
    """The shared face folder with an unreadable .png added."""
    (face_folder / "a" / "broken.png").write_bytes(b"not an image")
    return face_folder


def _maskwatch(args: list[str], head: Head, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskwatch", *args], env=_ray_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_classify_on_ray_matches_a_local_run_and_resumes(tmp_path, ray_head, tiny_model, folder,
                                                        capsys):
    local = tmp_path / "local.jsonl"
    assert cli_main(["classify", str(folder), "--model", str(tiny_model), "--output",
                     str(local)]) == 1  # broken.png
    capsys.readouterr()
    expected = read_jsonl(local)
    assert len(expected) == 40
    # a run with the first 15 records already written (and a torn 16th) goes on from there
    out = tmp_path / "ray.jsonl"
    lines = local.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:15]) + lines[15][:20])
    rc = _maskwatch(["classify", str(folder), "--model", str(tiny_model), "--output", str(out),
                     "--resume", "--ray", ray_head.address], ray_head)
    assert rc.returncode == 1, rc.stderr  # broken.png reported, as locally
    assert "broken.png" in rc.stderr and "25 image(s) written" in rc.stderr
    got = read_jsonl(out)
    assert [r["path"] for r in got] == [r["path"] for r in expected]  # each once, in order
    for a, b in zip(got, expected):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_detect_on_ray_matches_a_local_run(tmp_path, ray_head, tiny_model, make_face):
    pytest.importorskip("cv2")
    from detection_helpers import scene, write_image

    root = tmp_path / "scenes"
    img, _ = scene(width=320, height=240, faces=((20, 30, 110, False), (180, 30, 110, True)))
    for i in range(3):
        write_image(root / f"people{i}.jpg", img)
    for i in range(3):
        make_face(root / f"crop{i}.png", seed=i, size=32)
    common = ["--model", str(tiny_model), "--detect-size", "320", "--threads", "1", "--quiet"]
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert cli_main(["detect", str(root), "--output", str(local), *common]) == 0
    rc = _maskwatch(["detect", str(root), "--output", str(remote), "--ray", ray_head.address,
                     "--out", str(tmp_path / "annotated"), *common], ray_head)
    assert rc.returncode == 0, rc.stderr
    assert remote.read_text() == local.read_text()
    assert "face(s)" in rc.stdout
    assert sorted(p.name for p in (tmp_path / "annotated").iterdir()) == sorted(
        p.name for p in root.iterdir())  # annotated copies written by the actors


def test_a_killed_worker_is_survived(tmp_path, ray_head, tiny_model, folder):
    out = tmp_path / "killed.jsonl"
    ray_head.slow_file.write_text("0.1")  # 0.1 s per image on the head's workers
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "maskwatch", "classify", str(folder), "--model", str(tiny_model),
             "--output", str(out), "--ray", ray_head.address, "--batch-size", "2"],
            env=_ray_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        victim = None
        deadline = time.time() + 180
        while victim is None:
            assert proc.poll() is None, f"classify ended before a worker was killed: " \
                                        f"{proc.stderr.read()}"
            assert time.time() < deadline, "no map worker came up within 3 minutes"
            done = out.read_text().count("\n") if out.exists() else 0
            workers = [pid for pid, cmd in ray_head.processes().items() if "MapWorker" in cmd]
            if done >= 4 and workers:
                victim = workers[0]
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=240)
    finally:
        ray_head.slow_file.write_text("0")
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err  # broken.png only
    assert done < 40  # the kill came mid-run
    got = read_jsonl(out)
    paths = sorted(str(p) for p in folder.rglob("*.png") if p.name != "broken.png")
    assert sorted(r["path"] for r in got) == paths  # each file exactly once


def test_ray_options_fail_in_one_line(tiny_model, folder, capsys):
    port = _free_port()  # nothing listens there
    assert cli_main(["classify", str(folder), "--model", str(tiny_model), "--ray",
                     f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskwatch: error: cannot join") and err.count("\n") == 1
    assert cli_main(["classify", str(folder), "--model", str(tiny_model), "--ray",
                     "--shard", "0/2"]) == 2
    assert "--shard and --ray do not mix" in capsys.readouterr().err
