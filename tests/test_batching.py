"""maskwatch.batching: the append writer, the ordered process pool and shards."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from maskwatch import batching
from maskwatch.errors import MaskwatchError


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writer_cuts_a_half_written_record(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"path":"a.png","label":"with_mask"}\n{"path":"b.p')
    assert batching.read_done(out) == {os.path.abspath("a.png"): -1}
    with pytest.raises(MaskwatchError, match="already exists"):
        batching.AppendWriter(out)
    w = batching.AppendWriter(out, resume=True)
    w.write({"path": "b.png"})
    w.close()
    assert [r["path"] for r in _records(out)] == ["a.png", "b.png"]
    (tmp_path / "bad.jsonl").write_text("hello\n")
    with pytest.raises(MaskwatchError, match="not a JSON line"):
        batching.read_done(tmp_path / "bad.jsonl")


def test_ordered_map_keeps_order_with_bounded_workers():
    tasks = [3, 1, 2, 0, 5, 4]
    assert list(batching.ordered_map(_slow_square, tasks, workers=2, max_in_flight=3)) == [
        9, 1, 4, 0, 25, 16]
    assert list(batching.ordered_map(_slow_square, tasks, workers=1)) == [9, 1, 4, 0, 25, 16]
    assert batching.select_shard(list("dcba"), (0, 2)) == ["c", "a"]


def _slow_square(x: int) -> int:
    time.sleep(0.02 * x)
    return x * x


@pytest.mark.parametrize("stop", ["interrupt", "close"])
def test_ordered_map_hands_over_work_finished_after_the_caller_stopped(stop):
    """Ctrl+C while waiting on a result (or closing early): tasks already running finish,
    and every finished result reaches the caller, yielded or through ``leftover`` - none is
    done and then dropped (a written file without its record)."""
    import threading

    ran, got, left = [], [], []
    lock = threading.Lock()

    def work(x: int) -> int:
        time.sleep(0.05 if x == 0 else 0.6)
        with lock:
            ran.append(x)
        return x

    results = batching.ordered_map(work, range(20), workers=3, threads=True,
                                   max_in_flight=4, leftover=left.append)
    got.append(next(results))  # task 0
    if stop == "interrupt":
        # a real SIGINT to the main thread wakes it from its wait, as Ctrl+C does
        # (_thread.interrupt_main only takes effect once the wait is over)
        # (Python's own handler: a shell starts background jobs with SIGINT ignored)
        main = threading.main_thread().ident
        timer = threading.Timer(0.05, lambda: signal.pthread_kill(main, signal.SIGINT))
        before = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                got.append(next(results))  # interrupted while waiting on task 1
            timer.join()
        finally:
            signal.signal(signal.SIGINT, before)
    else:
        results.close()
    assert sorted(got + left) == sorted(ran) and len(ran) < 20
    assert len(left) >= 1 and not set(got) & set(left)


def test_a_model_shipped_to_a_ray_actor_leaves_no_folder_behind(tmp_path):
    """Each actor writes the shipped model to a temporary folder to load it; the folder
    goes once the model is loaded, or failed to load (it used to stay, one per actor)."""
    from maskwatch.ray_batch import ShippedFile, _Worker

    model = tmp_path / "site.onnx"
    model.write_bytes(b"onnx bytes")
    model.with_suffix(".json").write_text("{}")
    seen: dict = {}

    def load(options: dict) -> None:
        path = Path(options["classifier"])
        seen["path"], seen["files"] = path, sorted(p.name for p in path.parent.iterdir())
        seen["bytes"] = path.read_bytes()

    _Worker(str, load, ({"classifier": ShippedFile.of(model), "threads": 1},))
    assert seen["files"] == ["site.json", "site.onnx"] and seen["bytes"] == b"onnx bytes"
    assert not seen["path"].parent.exists()

    def fail(path: str) -> None:
        seen["path"] = Path(path)
        raise ValueError("not a model")

    with pytest.raises(ValueError):
        _Worker(str, fail, (ShippedFile.of(model),))
    assert seen["path"].name == "site.onnx" and not seen["path"].parent.exists()
