"""``classify`` in one process: chunks run side by side, one a thread, each decoded and
then labelled by its own run of the shared model; the process ends without the
interpreter's teardown once its output is flushed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

import pytest

from maskwatch.cli import main
from maskwatch.cli.common import fast_exit_allowed
from maskwatch.inference import batch


@pytest.fixture
def files(tmp_path, make_face):
    paths = [str(make_face(tmp_path / f"{i}.jpg", seed=i, masked=i % 2 == 1, size=48 + 8 * i))
             for i in range(7)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    paths.insert(3, str(bad))
    return paths


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_chunks_side_by_side_give_the_same_results_in_order(files, workers):
    batch.init_classifier(None, 1, 4)
    chunks = [files[:3], files[3:6], files[6:]]
    streamed = list(batch.classify_chunks(iter(chunks), workers=workers))
    assert streamed == [batch.classify_chunk(c) for c in chunks]
    flat = [r for chunk in streamed for r in chunk]
    assert [p for p, _, _ in flat] == files
    (bad,) = [r for r in flat if r[1] is None]
    assert bad[0].endswith("bad.jpg") and "bad.jpg" in bad[2]
    assert all(r[1]["label"] in ("with_mask", "without_mask", "incorrect_mask")
               for r in flat if r[1] is not None)
    assert list(batch.classify_chunks(iter([]))) == []


def test_the_next_chunk_is_read_while_this_one_is_labelled(files, monkeypatch):
    """With two threads, one decodes while the other labels."""
    batch.init_classifier(None, 1, 4)
    chunks = [files[:3], files[3:6], files[6:]]
    started = {i: threading.Event() for i in range(len(chunks))}
    seen_ahead = []
    read, label = batch.read_chunk, batch.label_chunk

    def reading(paths, parallel=True):
        started[chunks.index(paths)].set()
        return read(paths, parallel)

    def labelling(paths, decoded):
        i = chunks.index(paths)
        if i + 1 < len(chunks):  # without prefetching this waits in vain
            seen_ahead.append(started[i + 1].wait(timeout=5))
        return label(paths, decoded)

    monkeypatch.setattr(batch, "read_chunk", reading)
    monkeypatch.setattr(batch, "label_chunk", labelling)
    assert len(list(batch.classify_chunks(iter(chunks), workers=2))) == 3
    assert seen_ahead == [True, True]


def test_two_chunks_are_labelled_at_once(files, monkeypatch):
    """The model runs of two chunks overlap (each waits to see the other under way)."""
    batch.init_classifier(None, 1, 4)
    chunks = [files[:4], files[4:]]
    inside = threading.Barrier(2, timeout=5)
    label = batch.label_chunk
    met = []

    def labelling(paths, decoded):
        try:
            inside.wait()
            met.append(True)
        except threading.BrokenBarrierError:
            met.append(False)
        return label(paths, decoded)

    monkeypatch.setattr(batch, "label_chunk", labelling)
    assert len(list(batch.classify_chunks(iter(chunks), workers=2))) == 2
    assert met == [True, True]


def test_chunks_decode_while_the_model_loads_and_wait_for_it_to_label(files, monkeypatch):
    batch.init_classifier(None, 1, 4)
    chunks = [files[:4], files[4:]]
    loading: Future = Future()
    read, label = batch.read_chunk, batch.label_chunk
    both_read = threading.Barrier(3, timeout=5)
    labelled_early = []

    def reading(paths, parallel=True):
        out = read(paths, parallel)
        both_read.wait()
        return out

    def labelling(paths, decoded):
        labelled_early.append(not loading.done())
        return label(paths, decoded)

    monkeypatch.setattr(batch, "read_chunk", reading)
    monkeypatch.setattr(batch, "label_chunk", labelling)
    stream = batch.classify_chunks(iter(chunks), workers=2, loading=loading)
    both_read.wait()  # both chunks decoded, the model not "loaded" yet
    time.sleep(0.2)
    assert labelled_early == []
    loading.set_result(None)
    assert len(list(stream)) == 2
    assert labelled_early == [False, False]


def test_closing_before_labelling_cancels_the_reads_not_started(files, monkeypatch):
    """As `classify` does when the model fails to load: no more files are decoded."""
    batch.init_classifier(None, 1, 4)
    chunks = [files[:2], files[2:4], files[4:6], files[6:]]
    first_started, release = threading.Event(), threading.Event()
    read_calls = []

    def reading(paths, parallel=True):
        read_calls.append(paths)
        first_started.set()
        release.wait(timeout=5)
        return batch.label_chunk  # never labelled

    monkeypatch.setattr(batch, "read_chunk", reading)
    stream = batch.classify_chunks(iter(chunks), workers=1, ahead=3)
    assert first_started.wait(timeout=5)
    threading.Timer(0.2, release.set).start()
    stream.close()  # waits for the chunk under way, cancels the two queued
    release.wait(timeout=5)
    time.sleep(0.3)  # time enough for a queued read to start, were it not cancelled
    assert read_calls == [chunks[0]]
    assert list(stream) == []


def test_classify_in_one_process_allows_the_fast_exit_and_with_workers_not(files, capsys):
    good = [f for f in files if not f.endswith("bad.jpg")]
    assert main(["classify", *good[:2], "--json"]) == 0
    assert fast_exit_allowed()
    assert main(["classify", *good[:2], "--json", "--workers", "2"]) == 0
    assert not fast_exit_allowed()  # child processes: the normal exit joins them
    assert main(["classify", *good[:2], "--model", "/no/such/model.onnx"]) == 2
    assert not fast_exit_allowed()  # an error: the usual way out
    capsys.readouterr()


def _buffered_env() -> dict:
    """The environment with stdout block-buffered into a file, as on most machines."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def _classify_to_file(tmp_path, folder, *args):
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        done = subprocess.run([sys.executable, "-m", "maskwatch", "classify", str(folder),
                               *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                              env=_buffered_env(), timeout=120)
    return done, out.read_text()


def test_the_fast_exit_loses_no_output(tmp_path, make_face):
    """stdout to a file is block-buffered, and what is not flushed before ``os._exit`` is
    lost: every record must be there, and the status kept (1: a file was unreadable)."""
    folder = tmp_path / "crops"
    folder.mkdir()
    for i in range(300):
        make_face(folder / f"{i:04d}.jpg", seed=i % 7, masked=i % 2 == 1, size=48)
    (folder / "zz-broken.jpg").write_bytes(b"not a jpeg")
    done, text = _classify_to_file(tmp_path, folder, "--json")
    assert done.returncode == 1
    assert "zz-broken.jpg" in done.stderr
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["path"].rsplit("/", 1)[-1] for r in records] == [f"{i:04d}.jpg"
                                                                for i in range(300)]


def test_the_fast_exit_flushes_what_a_command_left_in_the_buffer(tmp_path):
    """``run`` with a command that writes without flushing and allows the fast exit: the
    text is there and the status is the command's."""
    script = ("import sys\n"
              "import maskwatch.cli as cli\n"
              "from maskwatch.cli.common import allow_fast_exit\n"
              "def command(argv=None):\n"
              "    sys.stdout.write('left in the buffer\\n')\n"
              "    allow_fast_exit()\n"
              "    return 3\n"
              "cli.main = command\n"
              "cli.run()\n")
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        done = subprocess.run([sys.executable, "-c", script], stdout=stdout,
                              env=_buffered_env(), timeout=60)
    assert done.returncode == 3
    assert out.read_text() == "left in the buffer\n"
