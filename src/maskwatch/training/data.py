"""Training data: sample selection, group-aware validation split, the decoded-face cache,
and the decoded splits (``load_data``) with their epoch order and batches."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from maskwatch import default_cache_dir
from maskwatch.data.model import is_synthetic
from maskwatch.errors import ImageError, MaskwatchError
from maskwatch.labels import INCORRECT_MASK, WITH_MASK, WITHOUT_MASK
from maskwatch.training.logs import log

CACHE_VERSION = 1


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
    start_method: str | None = None,
) -> FaceArray:
    """Decode and resize every sample once; reuse the .npy cache when its key matches.

    ``cache_dir=None`` disables the cache. ``workers``: decoding processes (0: CPU count).
    ``start_method``: how they start (default ``fork`` where there is one: no importable
    ``__main__`` needed). A script guarded by ``if __name__ == "__main__"`` that has run
    threads (OpenCV, ONNX Runtime, torch) before should pass ``"forkserver"``: a child
    forked from a threaded process can wait forever on a lock another thread held.
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
        method = start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
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


# ----------------------------------------------------------- decoded splits and batches


@dataclass
class Split:
    """Decoded faces of one split and their label indices."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TrainData:
    train: Split
    val: Split | None
    classes: list[str]
    summary: dict


def _load_split_samples(path: str, args):
    """The dataset at ``path``; what its reader skipped (an unknown class folder, bad
    rows...) is said, not dropped silently."""
    from maskwatch.data import load_dataset

    ds = load_dataset(path, mapping=args.mapping)
    for line in ds.loading_warnings():
        log(f"warning: {line}")
    return ds


def _note_dropped(path: str, samples: Sequence, kept: Sequence, classes: list[str]) -> None:
    """Say how many faces of a class the model does not learn were left out."""
    if len(kept) < len(samples):
        n = len(samples) - len(kept)
        why = (" (--merge-incorrect counts incorrect_mask as without_mask)"
               if INCORRECT_MASK not in classes else "")
        log(f"note: {path}: left out {n} face(s) of classes other than "
            f"{', '.join(classes)}{why}")


def _note_conflicts(splits: list[Split], classes: list[str]) -> None:
    """Warn about faces that decode to the same pixels under different labels."""
    seen: dict[bytes, tuple[int, str]] = {}
    conflicts: list[str] = []
    for split in splits:
        for i in range(len(split)):
            key = hashlib.blake2b(np.ascontiguousarray(split.images[i]).tobytes(),
                                  digest_size=16).digest()
            label, path = int(split.labels[i]), split.paths[i]
            first = seen.setdefault(key, (label, path))
            if first[0] != label:
                conflicts.append(f"{first[1]} ({classes[first[0]]}) and {path} "
                                 f"({classes[label]})")
    if conflicts:
        log(f"warning: {len(conflicts)} face(s) are the same image as one of another class, "
            f"e.g. {conflicts[0]}: check the labels (maskwatch data audit lists duplicates)")


def _decode_split(samples, labels, size, args, desc) -> Split:
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    faces = decode_faces(
        samples, size, args.margin, cache, args.workers, not args.no_progress, desc
    )
    if faces.errors:
        log(f"skipped {len(faces.errors)} unreadable image(s) in {desc}, e.g. {faces.errors[0]}")
    keep = np.flatnonzero(faces.ok)
    if len(keep) == len(samples):
        images = faces.images
    else:
        images = np.asarray(faces.images[keep])
    return Split(images, labels[keep], [str(samples[i].path) for i in keep])


def load_data(args, input_size: int) -> TrainData:
    """Read the dataset(s), choose train/val samples and decode them (cached)."""
    classes = class_list(args.classes)
    if args.loss == "sigmoid" and len(classes) != 2:
        raise MaskwatchError("--loss sigmoid needs --classes 2")
    ds = _load_split_samples(args.data, args)
    samples, labels = relabel(ds.samples, classes, args.merge_incorrect)
    _note_dropped(args.data, ds.samples, samples, classes)
    if not samples:
        raise MaskwatchError(f"{args.data}: no sample of the classes {', '.join(classes)}")
    splits = np.asarray([s.split or "" for s in samples])
    val_idx = np.flatnonzero(splits == "val")
    train_idx = np.flatnonzero((splits == "train") | (splits == ""))
    if len(train_idx) == 0:
        raise MaskwatchError(f"{args.data}: no training samples (split 'train' or none)")
    val_samples, val_labels, val_source = [], np.zeros(0, np.int64), "none"
    if args.val_data:
        vds = _load_split_samples(args.val_data, args)
        vs, vl = relabel(vds.samples, classes, args.merge_incorrect)
        _note_dropped(args.val_data, vds.samples, vs, classes)
        real = [i for i, s in enumerate(vs) if not is_synthetic(s)]  # never validate on them
        if not real:
            raise MaskwatchError(f"--val-data {args.val_data}: no real face of the classes "
                                 f"{', '.join(classes)}")
        wanted = [i for i in real if vs[i].split in ("val", None)] or real
        val_samples, val_labels = [vs[i] for i in wanted], vl[wanted]
        val_source = f"--val-data {args.val_data}"
    elif len(val_idx):
        val_samples, val_labels = [samples[i] for i in val_idx], labels[val_idx]
        val_source = "the data's val split"
    elif args.val_fraction > 0:
        sub = [samples[i] for i in train_idx]
        tr, va = group_split(sub, labels[train_idx], args.val_fraction, args.seed)
        val_samples, val_labels = [sub[i] for i in va], labels[train_idx][va]
        train_idx = train_idx[tr]
        val_source = f"{args.val_fraction:g} of train by group (seed {args.seed})"
    train_samples, train_labels = [samples[i] for i in train_idx], labels[train_idx]
    missing = [c for i, c in enumerate(classes) if not (train_labels == i).any()]
    if missing:
        raise MaskwatchError(f"no training sample of class {', '.join(missing)}")
    train = _decode_split(train_samples, train_labels, input_size, args, "decoding train")
    unread = [c for i, c in enumerate(classes) if not (train.labels == i).any()]
    if unread:
        raise MaskwatchError(f"no readable training image of class {', '.join(unread)} "
                             "(each one failed to decode; see the skipped images above)")
    val = None
    if len(val_samples):
        val = _decode_split(val_samples, val_labels, input_size, args, "decoding val")
        if not len(val):
            raise MaskwatchError(f"none of the {len(val_samples)} validation image(s) "
                                 f"({val_source}) could be read")
        absent = [c for i, c in enumerate(classes) if not (val.labels == i).any()]
        if absent:
            log(f"note: the validation faces ({val_source}) have no {', '.join(absent)}: "
                "their accuracy says nothing about that class")
    _note_conflicts([train] + ([val] if val is not None else []), classes)
    summary = {
        "classes": classes,
        "train_counts": {c: int((train.labels == i).sum()) for i, c in enumerate(classes)},
        "val_counts": (
            {c: int((val.labels == i).sum()) for i, c in enumerate(classes)} if val else {}
        ),
        "validation": val_source,
        "layout": ds.layout,
    }
    return TrainData(train, val, classes, summary)


def epoch_order(labels: np.ndarray, balance: str, seed: int, epoch: int) -> np.ndarray:
    """Sample indices for one epoch: a permutation, or a class-balanced draw."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(labels)
    if balance == "sampler":
        counts = np.bincount(labels, minlength=labels.max() + 1).astype(np.float64)
        weights = torch.from_numpy(1.0 / counts[labels])
        return torch.multinomial(weights, n, replacement=True, generator=g).numpy()
    return torch.randperm(n, generator=g).numpy()


class BatchLoader:
    """Yields (uint8 N x S x S x 3 tensor, label tensor) batches in a given order."""

    def __init__(self, split: Split, order: np.ndarray, batch_size: int, drop_small: bool = True):
        self.split, self.order, self.batch_size = split, order, batch_size
        self.drop_small = drop_small  # a batch of 1 breaks batch norm in training mode

    def __len__(self) -> int:
        n = len(self.order)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest > (1 if self.drop_small else 0) else 0)

    def __iter__(self):
        for b in range(len(self)):
            idx = np.sort(self.order[b * self.batch_size : (b + 1) * self.batch_size])
            images = torch.from_numpy(np.ascontiguousarray(self.split.images[idx]))
            labels = torch.from_numpy(self.split.labels[idx])
            yield images, labels
