"""The worker side of ``maskwatch classify`` over large collections: each process loads
its classifier once (``init_classifier``) and labels chunks of files (``classify_chunk``);
the pool, shards and output file are in :mod:`maskwatch.batching`.
"""

from __future__ import annotations

from typing import Any

from maskwatch.errors import ImageError
from maskwatch.imaging import load_rgb

_STATE: dict[str, Any] = {}


def init_classifier(model: str | None, threads: int, batch_size: int,
                    threshold: float | None = None) -> None:
    """Load the classifier once per process (kept for ``classify_chunk``)."""
    from maskwatch.inference.classifier import Classifier

    key = (model, threads, batch_size, threshold)
    if _STATE.get("classifier_key") != key:
        _STATE["classifier"] = Classifier(model, threads=threads, batch_size=batch_size,
                                          threshold=threshold)
        _STATE["classifier_key"] = key


def loaded_classifier():
    return _STATE["classifier"]


def classify_chunk(paths: list[str]) -> list[tuple[str, dict | None, str | None]]:
    """(path, prediction dict, None) or (path, None, error) for each image, in order."""
    clf = _STATE["classifier"]
    faces, ok, out = [], [], []
    for p in paths:
        try:
            faces.append(load_rgb(p))
            ok.append(p)
        except ImageError as exc:
            out.append((p, None, str(exc)))
    preds = dict(zip(ok, (pr.to_dict() for pr in clf.classify(faces)))) if faces else {}
    results = {p: (p, None, err) for p, _, err in out}
    return [results.get(p) or (p, preds[p], None) for p in paths]
