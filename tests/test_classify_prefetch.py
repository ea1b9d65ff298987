"""``classify`` in one process: the next chunk decodes while the model labels this one."""

from __future__ import annotations

import threading
import time

import pytest

from maskwatch.inference import batch


@pytest.fixture
def files(tmp_path, make_face):
    paths = [str(make_face(tmp_path / f"{i}.jpg", seed=i, masked=i % 2 == 1, size=48 + 8 * i))
             for i in range(7)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    paths.insert(3, str(bad))
    return paths


def test_prefetching_gives_the_same_results_in_order(files):
    batch.init_classifier(None, 1, 4)
    chunks = [files[:3], files[3:6], files[6:]]
    streamed = list(batch.classify_chunks(iter(chunks)))
    assert streamed == [batch.classify_chunk(c) for c in chunks]
    flat = [r for chunk in streamed for r in chunk]
    assert [p for p, _, _ in flat] == files
    (bad,) = [r for r in flat if r[1] is None]
    assert bad[0].endswith("bad.jpg") and "bad.jpg" in bad[2]
    assert all(r[1]["label"] in ("with_mask", "without_mask", "incorrect_mask")
               for r in flat if r[1] is not None)
    assert list(batch.classify_chunks(iter([]))) == []


def test_the_next_chunk_is_read_while_this_one_is_labelled(files, monkeypatch):
    batch.init_classifier(None, 1, 4)
    chunks = [files[:3], files[3:6], files[6:]]
    started = {i: threading.Event() for i in range(len(chunks))}
    seen_ahead = []
    read, label = batch.read_chunk, batch.label_chunk

    def reading(paths):
        started[chunks.index(paths)].set()
        return read(paths)

    def labelling(paths, decoded):
        i = chunks.index(paths)
        if i + 1 < len(chunks):  # without prefetching this waits in vain
            seen_ahead.append(started[i + 1].wait(timeout=5))
        return label(paths, decoded)

    monkeypatch.setattr(batch, "read_chunk", reading)
    monkeypatch.setattr(batch, "label_chunk", labelling)
    assert len(list(batch.classify_chunks(iter(chunks)))) == 3
    assert seen_ahead == [True, True]


def test_closing_before_labelling_cancels_the_reads_not_started(files, monkeypatch):
    """As `classify` does when the model fails to load: no more files are decoded."""
    batch.init_classifier(None, 1, 4)
    chunks = [files[:2], files[2:4], files[4:6], files[6:]]
    first_started, release = threading.Event(), threading.Event()
    read_calls = []

    def reading(paths):
        read_calls.append(paths)
        first_started.set()
        release.wait(timeout=5)
        return batch.label_chunk  # never labelled

    monkeypatch.setattr(batch, "read_chunk", reading)
    stream = batch.classify_chunks(iter(chunks), ahead=3)
    assert first_started.wait(timeout=5)
    threading.Timer(0.2, release.set).start()
    stream.close()  # waits for the read under way, cancels the two queued
    release.wait(timeout=5)
    time.sleep(0.3)  # time enough for a queued read to start, were it not cancelled
    assert read_calls == [chunks[0]]
    assert list(stream) == []
