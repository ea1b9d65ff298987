"""Training data: sample selection, group-aware validation split and the decoded-face cache."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskwatch.data.model import is_synthetic
from maskwatch.errors import ImageError, MaskwatchError
from maskwatch.labels import INCORRECT_MASK, WITH_MASK, WITHOUT_MASK

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "maskwatch"


def class_list(num_classes: int) -> list[str]:
    """The label set a model of ``num_classes`` (2 or 3) predicts."""
    if num_classes == 2:
        return [WITH_MASK, WITHOUT_MASK]
    if num_classes == 3:
        return [WITH_MASK, WITHOUT_MASK, INCORRECT_MASK]
    raise MaskwatchError(f"--classes must be 2 or 3, got {num_classes}")


def relabel(samples: Sequence, classes: list[str], merge_incorrect: bool = False):
    """Samples -> (kept samples, label indices into ``classes``).

    With 2 classes incorrect_mask samples are dropped, or counted as without_mask when
    ``merge_incorrect``.
    """
    kept, labels = [], []
    for s in samples:
        label = s.label
        if label == INCORRECT_MASK and INCORRECT_MASK not in classes:
            if not merge_incorrect:
                continue
            label = WITHOUT_MASK
        if label not in classes:
            continue
        kept.append(s)
        labels.append(classes.index(label))
    return kept, np.asarray(labels, dtype=np.int64)


def group_split(samples: Sequence, labels: np.ndarray, fraction: float, seed: int):
    """Split indices into (train, val) so that no ``sample.group`` spans both.

    Groups are shuffled with ``seed`` and taken per majority label until each label has
    about ``fraction`` of its samples in validation. Groups with a synthetic sample stay in
    train.
    """
    if not 0.0 < fraction < 1.0:
        raise MaskwatchError(f"--val-fraction must be between 0 and 1, got {fraction}")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group or str(s.path), []).append(i)
    by_label: dict[int, list[str]] = {}
    for key, idx in groups.items():
        if any(is_synthetic(samples[i]) for i in idx):
            continue  # made-up faces and their originals stay in train
        majority = int(np.bincount(labels[idx]).argmax())
        by_label.setdefault(majority, []).append(key)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for label in sorted(by_label):
        keys = sorted(by_label[label])
        rng.shuffle(keys)
        target = fraction * sum(len(groups[k]) for k in keys)
        taken = 0
        for k in keys[:-1]:  # the last group stays in train, so train keeps every label
            if taken >= target:
                break
            val.extend(groups[k])
            taken += len(groups[k])
    val_set = set(val)
    train = [i for i in range(len(samples)) if i not in val_set]
    return np.asarray(train, dtype=np.int64), np.asarray(sorted(val_set), dtype=np.int64)


# ------------------------------------------------------------------ decoded-face cache


def _file_key(s) -> list:
    p = Path(s.path)
    try:
        st = p.stat()
        stamp = [st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = [None, None]
    return [str(p.resolve()), list(s.box) if s.box else None, *stamp]


def cache_key(samples: Sequence, size: int, margin: float) -> str:
    """Hash of the sample files (path, box, size, mtime) + face size + margin."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, size, round(float(margin), 6)]).encode())
    for s in samples:
        h.update(json.dumps(_file_key(s)).encode())
    return h.hexdigest()[:24]


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def _decode(job):
    i, sample, size, margin = job
    from maskwatch.data.model import read_face
    from maskwatch.inference.preprocess import resize_face

    try:
        return i, resize_face(read_face(sample, margin), size), None
    except ImageError as exc:
        return i, None, str(exc)
    except Exception as exc:  # a worker must never take the pool down
        return i, None, f"{sample.path}: {type(exc).__name__}: {exc}"


@dataclass
class FaceArray:
    """Decoded faces: ``images`` N x S x S x 3 uint8 and which ones could be read."""

    images: np.ndarray
    ok: np.ndarray
    errors: list[str]


def decode_faces(
    samples: Sequence,
    size: int,
    margin: float = 0.0,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
    desc: str = "decoding",
) -> FaceArray:
    """Decode and resize every sample once; reuse the .npy cache when its key matches.

    ``cache_dir=None`` disables the cache. ``workers``: decoding processes (0: CPU count).
    """
    from tqdm import tqdm

    key = cache_key(samples, size, margin)
    npy = json_path = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir).expanduser()
        npy = cache_dir / f"faces-{key}.npy"
        json_path = cache_dir / f"faces-{key}.json"
        if npy.is_file() and json_path.is_file():
            try:
                meta = json.loads(json_path.read_text())
                images = np.load(npy, mmap_mode="r", allow_pickle=False)
                if images.shape == (len(samples), size, size, 3) and images.dtype == np.uint8:
                    ok = np.ones(len(samples), bool)
                    ok[meta.get("failed", [])] = False
                    return FaceArray(images, ok, meta.get("errors", []))
            except (OSError, ValueError, json.JSONDecodeError):
                pass  # unreadable cache: decode again
    n = len(samples)
    images = np.zeros((n, size, size, 3), np.uint8)
    ok = np.zeros(n, bool)
    errors: list[str] = []
    jobs = [(i, s, size, margin) for i, s in enumerate(samples)]
    workers = workers or (os.cpu_count() or 1)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr)
    if workers <= 1 or n < 256:
        results = map(_decode, jobs)
        pool = None
    else:
        # fork: workers inherit the loaded modules and need no importable __main__
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(min(workers, 16), initializer=_init_worker)
        results = pool.imap_unordered(_decode, jobs, chunksize=32)
    try:
        for i, face, err in results:
            if face is not None:
                images[i] = face
                ok[i] = True
            else:
                errors.append(err)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    if npy is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, images, allow_pickle=False)
        os.replace(tmp, npy)
        failed = [int(i) for i in np.flatnonzero(~ok)]
        json_path.write_text(json.dumps({"failed": failed, "errors": errors, "n": n}))
    return FaceArray(images, ok, errors)
