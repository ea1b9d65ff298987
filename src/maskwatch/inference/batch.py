"""The worker side of ``maskwatch classify`` over large collections: each process loads
its classifier once (``init_classifier``) and labels chunks of files (``classify_chunk``);
the pool, shards and output file are in :mod:`maskwatch.batching`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
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


def classify_chunk(paths: list[str]) -> list[tuple[str, dict | None, str | None]]:
    """(path, prediction dict, None) or (path, None, error) for each image, in order."""
    clf = _STATE["classifier"]
    size = int(clf.info.input_size)

    def read(path: str):
        try:  # JPEGs decode at the smallest DCT scale that still covers the model's input
            return load_rgb(path, min_size=size), None
        except ImageError as exc:
            return None, str(exc)

    faces, ok, out = [], [], []
    for p, (rgb, err) in zip(paths, _decoder_pool(_STATE.get("threads", 0)).map(read, paths)):
        if rgb is None:
            out.append((p, None, err))
        else:
            faces.append(rgb)
            ok.append(p)
    preds = dict(zip(ok, (pr.to_dict() for pr in clf.classify(faces)))) if faces else {}
    results = {p: (p, None, err) for p, _, err in out}
    return [results.get(p) or (p, preds[p], None) for p in paths]
