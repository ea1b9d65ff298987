"""The worker side of ``maskwatch classify`` over large collections: each process loads
its classifier once (``init_classifier``) and labels chunks of files (``classify_chunk``);
the pool, shards and output file are in :mod:`maskwatch.batching`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

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


def loaded_classifier():
    return _STATE["classifier"]


def read_chunk(paths: list[str]) -> list[tuple[object, str | None]]:
    """Decode ``paths`` side by side and shrink each to the model's input: (face, None)
    or (None, error) for each, in order."""
    from maskwatch.inference.preprocess import resize_face

    size = int(_STATE["classifier"].info.input_size)

    def read(path: str):
        try:  # JPEGs decode at the smallest DCT scale that still covers the model's input
            return resize_face(load_rgb(path, min_size=size), size), None
        except ImageError as exc:
            return None, str(exc)

    return list(_decoder_pool(_STATE.get("threads", 0)).map(read, paths))


def label_chunk(paths: list[str], decoded: list[tuple[object, str | None]]
                ) -> list[tuple[str, dict | None, str | None]]:
    """(path, prediction dict, None) or (path, None, error) for each decoded image."""
    faces = [rgb for rgb, _ in decoded if rgb is not None]
    preds = iter([pr.to_dict() for pr in _STATE["classifier"].classify(faces)] if faces
                 else [])
    return [(p, None, err) if rgb is None else (p, next(preds), None)
            for p, (rgb, err) in zip(paths, decoded)]


def classify_chunk(paths: list[str]) -> list[tuple[str, dict | None, str | None]]:
    """(path, prediction dict, None) or (path, None, error) for each image, in order."""
    return label_chunk(paths, read_chunk(paths))


def classify_chunks(tasks: Iterable[list[str]]) -> Iterator[list[tuple[str, dict | None,
                                                                       str | None]]]:
    """:func:`classify_chunk` over ``tasks`` in this process, the next chunk decoding
    while the model labels this one (so decoding and inference share the cores)."""
    it = iter(tasks)
    with ThreadPoolExecutor(1, thread_name_prefix="maskwatch-prefetch") as ahead:
        pending = [(paths, ahead.submit(read_chunk, paths)) for paths in islice(it, 1)]
        while pending:
            paths, future = pending.pop()
            decoded = future.result()
            pending += [(nxt, ahead.submit(read_chunk, nxt)) for nxt in islice(it, 1)]
            yield label_chunk(paths, decoded)
