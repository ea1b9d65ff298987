"""Ctrl+C on `watch`: the people in view and the minute's counts are stored, exit 0, however
the interrupt lands (pressed twice, as `timeout` forwards it, or while waiting on threads)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from maskwatch.detection.pipeline import Face
    from maskwatch.monitoring import service
    from maskwatch.monitoring.watcher import SourceWatcher, WatchConfig

    class Endless:  # a camera: frames until stopped
        fps, size, live, frame_count = 10.0, (64, 48), True, None
        def frames(self, max_frames=None):
            while True:
                yield np.full((48, 64, 3), 100, np.uint8)
        def close(self):
            pass

    class Slow:  # one bare face always in view; slow, so a stop finds it mid-frame
        classes = ["with_mask", "without_mask"]
        calls = 0
        def detect(self, rgb):
            Slow.calls += 1
            if Slow.calls == 5:
                print("ready", flush=True)
            time.sleep(0.05)
            return [Face([10, 10, 40, 40], 0.9, "without_mask", 0.9,
                         {"without_mask": 0.9, "with_mask": 0.1})]

    class Watcher(SourceWatcher):
        def __init__(self, *a, **kw):
            super().__init__(*a, open_source=lambda spec: Endless(), **kw)

    service.SourceWatcher = Watcher
    summary = service.watch(["door=cam"], sys.argv[1], Slow, WatchConfig(max_missed=2),
                            log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(summary), flush=True)
""")


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stores_the_people_in_view(tmp_path, presses):
    db = tmp_path / "w.sqlite"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(0.3)
        for _ in range(presses):  # `timeout` sends SIGINT to the process and its group
            proc.send_signal(signal.SIGINT)
            time.sleep(0.01)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "interrupted: finishing the people in view" in err and "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    frames = summary["sources"]["door"]["frames"]
    assert summary["events"] == 1 and frames >= 5

    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT label, frames FROM events").fetchall() == [
            ("without_mask", frames)]
        # every frame's face is in the per-minute counts
        assert con.execute("SELECT sum(faces) FROM minute_counts").fetchone() == (frames,)
    finally:
        con.close()
