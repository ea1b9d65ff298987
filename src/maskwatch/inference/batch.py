"""The worker side of ``maskwatch classify`` over large collections: each process loads
its classifier once (``init_classifier``) and labels chunks of files (``classify_chunk``);
the pool, shards and output file are in :mod:`maskwatch.batching`.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

import numpy as np

from maskwatch.errors import ImageError
from maskwatch.imaging import load_rgb

_STATE: dict[str, Any] = {}


def _decoder_pool(threads: int) -> ThreadPoolExecutor:
    """Threads that decode a chunk's files side by side (Pillow decodes without the GIL):
    as many as the classifier's threads, or one a core."""
    pool = _STATE.get("pool")
    if pool is None:
        pool = ThreadPoolExecutor(max(1, threads or os.cpu_count() or 1),
                                  thread_name_prefix="maskwatch-decode")
        _STATE["pool"] = pool
    return pool


def init_classifier(model: str | None, threads: int, batch_size: int,
                    threshold: float | None = None) -> None:
    """Load the classifier once per process (kept for ``classify_chunk``)."""
    from maskwatch.inference.classifier import Classifier

    key = (model, threads, batch_size, threshold)
    if _STATE.get("classifier_key") != key:
        _STATE["classifier"] = Classifier(model, threads=threads, batch_size=batch_size,
                                          threshold=threshold)
        _STATE["classifier_key"] = key
        _STATE["threads"] = threads
    _STATE["info"] = _STATE["classifier"].info


def start_classifier(model: str | None, threads: int, batch_size: int,
                     threshold: float | None = None) -> Future:
    """:func:`init_classifier` on a thread: ONNX Runtime loads while the caller lists and
    starts decoding the files (:func:`read_chunk` knows the input size from the model's
    metadata file, or waits). ``.result()`` gives None or raises the loading error."""
    from maskwatch.inference.classifier import peek_model_info

    _STATE["threads"] = threads
    _STATE["info"] = peek_model_info(model)
    loader = ThreadPoolExecutor(1, thread_name_prefix="maskwatch-load")
    future = loader.submit(init_classifier, model, threads, batch_size, threshold)
    loader.shutdown(wait=False)
    _STATE["loading"] = future
    return future


def loaded_classifier():
    return _STATE["classifier"]


def _model_info():
    info = _STATE.get("info")
    if info is None:  # not known before the model loads: wait for it
        _STATE["loading"].result()
        info = _STATE["info"]
    return info


#: What :func:`read_chunk` gives: the model's input batch of the files that decoded, and
#: for each file None or why it could not be read.
Decoded = tuple[np.ndarray, list[str | None]]


def read_chunk(paths: list[str], parallel: bool = True) -> Decoded:
    """Decode ``paths`` (side by side on the decoding threads when ``parallel``, else one
    after another on this thread), shrink each to the model's input, and make the
    normalised batch of those that decoded."""
    from maskwatch.inference.preprocess import prepare, resize_face

    info = _model_info()
    size = int(info.input_size)

    def read(path: str):
        try:  # JPEGs decode at the smallest DCT scale that still covers the model's input
            return resize_face(load_rgb(path, min_size=size), size), None
        except ImageError as exc:
            return None, str(exc)

    if parallel:
        decoded = list(_decoder_pool(_STATE.get("threads", 0)).map(read, paths))
    else:
        decoded = [read(path) for path in paths]
    faces = [face for face, _ in decoded if face is not None]
    return prepare(faces, size, info.mean, info.std), [err for _, err in decoded]


def label_chunk(paths: list[str], decoded: Decoded) -> list[tuple[str, dict | None,
                                                                   str | None]]:
    """(path, prediction dict, None) or (path, None, error) for each file of a chunk."""
    x, errors = decoded
    clf = _STATE["classifier"]
    preds = iter([pr.to_dict() for pr in clf.predictions(clf.batch_proba(x))] if len(x)
                 else [])
    return [(p, None, err) if err is not None else (p, next(preds), None)
            for p, err in zip(paths, errors)]


def classify_chunk(paths: list[str]) -> list[tuple[str, dict | None, str | None]]:
    """(path, prediction dict, None) or (path, None, error) for each image, in order."""
    return label_chunk(paths, read_chunk(paths))


class ChunkStream:
    """:func:`classify_chunk` over ``tasks`` in this process, on ``workers`` threads: each
    decodes a chunk, then labels it with its own run of the shared model (ONNX Runtime runs
    are thread-safe; load the model with one thread, see :func:`start_classifier`). Whole
    chunks side by side kept both cores busier than one model run spread over both while
    other threads decode (README, Speed). Up to ``ahead`` chunks are under way at once from
    the start: given the ``loading`` future of :func:`start_classifier`, they decode while
    the model loads and label once it has. Iterate for the results, in order; :meth:`close`
    (called when the iteration ends or is left) cancels the chunks not started and waits
    for those under way."""

    def __init__(self, tasks: Iterable[list[str]], workers: int = 1, ahead: int = 4,
                 loading: Future | None = None):
        self._tasks = iter(tasks)
        self._loading = loading
        self._closed = False
        workers = max(1, workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="maskwatch-chunk")
        self._pending = deque(self._pool.submit(self._run, paths)
                              for paths in islice(self._tasks, max(ahead, workers)))

    def _run(self, paths: list[str]):
        decoded = read_chunk(paths, parallel=False)
        if self._closed:
            return None
        if self._loading is not None:
            self._loading.result()
        return label_chunk(paths, decoded)

    def __iter__(self) -> Iterator[list[tuple[str, dict | None, str | None]]]:
        try:
            while self._pending:
                labelled = self._pending.popleft().result()
                self._pending.extend(self._pool.submit(self._run, nxt)
                                     for nxt in islice(self._tasks, 1))
                yield labelled
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)


def classify_chunks(tasks: Iterable[list[str]], workers: int = 1, ahead: int = 4,
                    loading: Future | None = None) -> ChunkStream:
    """A :class:`ChunkStream` over ``tasks``: its first chunks start now."""
    return ChunkStream(tasks, workers, ahead, loading)
