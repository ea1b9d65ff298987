"""Group-aware stratified splits and face cropping of box datasets."""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from maskwatch.data.audit import inspect_all
from maskwatch.data.hashing import NEAR_DISTANCE, connected_groups, near_pairs
from maskwatch.data.model import SPLITS, Dataset, Sample, is_synthetic, write_manifest
from maskwatch.errors import MaskwatchError
from maskwatch.files import remove_created


def parse_ratios(ratios) -> tuple[float, ...]:
    """Check 2 or 3 non-negative ratios (train, val[, test]) and scale them to sum to 1."""
    values = [float(r) for r in ratios]
    if (len(values) not in (2, 3) or not all(0 <= v < math.inf for v in values)
            or not 0 < sum(values) < math.inf):  # NaN fails every comparison
        raise MaskwatchError(f"--ratios {' '.join(map(str, ratios))}: give 2 or 3 "
                             "non-negative numbers (train val [test]) with a positive sum")
    if values[0] <= 0:
        raise MaskwatchError("--ratios: the train ratio must be positive")
    total = sum(values)
    return tuple(v / total for v in values)


def _clusters(ds: Dataset, max_distance: int, workers: int, progress: bool):
    """Clusters of sample indices that must share a split, and the unreadable files."""
    paths = ds.images()
    facts = inspect_all(paths, workers=workers, progress=progress)
    bad = {Path(f.path): f.error for f in facts if f.error}
    index = {p: i for i, p in enumerate(paths)}
    edges: list[tuple[int, int]] = []  # samples that must share a split
    first_of_image: dict[int, int] = {}
    first_of_group: dict[str, int] = {}
    for k, s in enumerate(ds.samples):
        img = index[s.path]
        if img in first_of_image:
            edges.append((first_of_image[img], k))
        else:
            first_of_image[img] = k
        if s.group:
            if s.group in first_of_group:
                edges.append((first_of_group[s.group], k))
            else:
                first_of_group[s.group] = k
    by_sha: dict[str, int] = {}
    for i, f in enumerate(facts):
        if f.sha1 and i in first_of_image:
            if f.sha1 in by_sha:
                edges.append((first_of_image[by_sha[f.sha1]], first_of_image[i]))
            else:
                by_sha[f.sha1] = i
    for a, b, _ in near_pairs([f.phash for f in facts], max_distance):
        edges.append((first_of_image[a], first_of_image[b]))
    return connected_groups(len(ds.samples), edges), bad


def assign_splits(ds: Dataset, clusters: list[list[int]], ratios, seed: int) -> list[Sample]:
    """Give each cluster one split, keeping every class near the ratios (greedy, seeded).

    A cluster holding a synthetic sample goes to train, with the real faces it was made
    from, so no made-up face (nor its original's twin) reaches val or test."""
    ratios = parse_ratios(ratios)
    names = SPLITS[: len(ratios)]
    rng = random.Random(seed)
    clusters = [list(c) for c in clusters]
    rng.shuffle(clusters)
    clusters.sort(key=len, reverse=True)
    totals = Counter(s.label for s in ds.samples)
    target = {n: {lab: r * totals[lab] for lab in totals} for n, r in zip(names, ratios)}
    current = {n: Counter() for n in names}
    out: dict[int, Sample] = {}
    for cluster in clusters:
        counts = Counter(ds.samples[k].label for k in cluster)
        best, best_score = names[0], None
        synthetic = any(is_synthetic(ds.samples[k]) for k in cluster)
        for n, r in zip(names, ratios):
            if r <= 0 or (synthetic and n != "train"):
                continue
            score = sum(c * (target[n][lab] - current[n][lab]) / max(target[n][lab], 1.0)
                        for lab, c in counts.items())
            if best_score is None or score > best_score + 1e-12:
                best, best_score = n, score
        current[best].update(counts)
        for k in cluster:
            out[k] = replace(ds.samples[k], split=best)
    return [out[k] for k in sorted(out)]


def split_dataset(
    ds: Dataset,
    ratios=(0.8, 0.1, 0.1),
    seed: int = 0,
    max_distance: int = NEAR_DISTANCE,
    workers: int = 2,
    progress: bool = True,
) -> tuple[list[Sample], dict]:
    """Split a dataset so groups and near-duplicate clusters stay on one side.

    Returns the samples with ``split`` set (unreadable images left out) and a summary
    (see :func:`split_with_empty` for the dataset's face-free images too).
    """
    kept, _, summary = split_with_empty(ds, ratios, seed, max_distance, workers, progress)
    return kept, summary


def split_with_empty(
    ds: Dataset,
    ratios=(0.8, 0.1, 0.1),
    seed: int = 0,
    max_distance: int = NEAR_DISTANCE,
    workers: int = 2,
    progress: bool = True,
) -> tuple[list[Sample], list[tuple[Path, str]], dict]:
    """As :func:`split_dataset`, and also split ``ds.empty_images`` (photos annotated as
    holding no face, kept for detection metrics): each takes part in the clustering as an
    image of its own (near-duplicates stay together) and is spread over the splits by the
    ratios as a class of its own would be. Returns (samples, [(face-free image, split)],
    summary); the summary gains ``images_without_faces`` per split when there are any. An
    image that also has faces (annotated twice) is one of those scenes, not face-free.
    With no face-free image the samples are exactly :func:`split_dataset`'s."""
    with_faces = {s.path for s in ds.samples}
    empty = [p for p in dict.fromkeys(ds.empty_images) if p not in with_faces]
    work = ds
    if empty:  # placeholders with no label: a class of their own for the stratification
        work = replace(ds, samples=[*ds.samples, *(Sample(p, "") for p in empty)])
    clusters, bad = _clusters(work, max_distance, workers, progress)
    assigned = assign_splits(work, clusters, ratios, seed)
    kept = [s for s in assigned[:len(ds.samples)] if s.path not in bad]
    kept_empty = [(s.path, s.split) for s in assigned[len(ds.samples):] if s.path not in bad]
    summary = {
        "samples": len(kept),
        "clusters": len(clusters),
        "unreadable": sorted(str(p) for p in bad),
        "splits": {n: dict(sorted(Counter(s.label for s in kept if s.split == n).items()))
                   for n in SPLITS if any(s.split == n for s in kept)},
    }
    summary["empty_splits"] = empty_splits(summary["splits"], ratios)
    if kept_empty:
        counts = Counter(split for _, split in kept_empty)
        summary["images_without_faces"] = {n: counts[n] for n in SPLITS if counts[n]}
    return kept, kept_empty, summary


def empty_splits(splits: dict, ratios) -> list[str]:
    """The splits given a positive ratio that got no face (too few groups for the ratios)."""
    return [n for n, r in zip(SPLITS, parse_ratios(ratios)) if r > 0 and not splits.get(n)]


def write_split(ds: Dataset, out_dir: str | Path, ratios, seed: int, force: bool = False,
                workers: int = 2, progress: bool = True) -> tuple[Path, dict]:
    """Split ``ds`` and write ``out_dir/manifest.csv`` (never replaced unless ``force``),
    face-free images included (see :func:`split_with_empty`)."""
    manifest = Path(out_dir) / "manifest.csv"
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise MaskwatchError(f"{out_dir}: exists and is not a folder")
    if manifest.exists() and not force:
        raise MaskwatchError(f"{manifest}: already exists (use --overwrite to replace it)")
    samples, empty, summary = split_with_empty(ds, ratios, seed, workers=workers,
                                               progress=progress)
    write_manifest(manifest, samples, force=force, empty_images=empty)
    summary["manifest"] = str(manifest)
    return manifest, summary


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "face"


def crop_dataset(
    ds: Dataset,
    out_dir: str | Path,
    ratios=(0.8, 0.1, 0.1),
    margin: float = 0.1,
    seed: int = 0,
    min_size: int = 16,
    force: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Crop every box into ``out_dir/<split>/<label>/``, all faces of a scene in one split.

    Faces whose box is smaller than ``min_size`` px (width or height) are skipped. Writes
    ``out_dir/manifest.csv`` (group = scene). Difficult faces are real faces: they are
    cropped like the others and keep their flag; images annotated as holding no face have
    nothing to crop. Refuses a non-empty ``out_dir`` unless ``force``; never deletes
    anything but the crops of a run that stops early (Ctrl-C), which it removes, so no
    partial set is taken for a whole one. MaskwatchError when no face can be cropped.
    """
    from tqdm import tqdm

    from maskwatch.boxes import crop
    from maskwatch.errors import ImageError
    from maskwatch.imaging import load_rgb, save_rgb

    out = Path(out_dir)
    if all(s.box is None for s in ds.samples):
        raise MaskwatchError(f"{ds.root}: {ds.layout} dataset has no boxes to crop "
                             "(crop needs Pascal VOC, CSV or YOLO boxes)")
    if out.exists() and not out.is_dir():
        raise MaskwatchError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise MaskwatchError(f"{out}: folder is not empty (use --overwrite to write into it)")
    if margin < 0:
        raise MaskwatchError(f"--margin {margin}: must be >= 0")
    if not any(s.box and min(s.box[2] - s.box[0], s.box[3] - s.box[1]) >= min_size
               for s in ds.samples):
        raise MaskwatchError(f"{ds.root}: all {len(ds.samples):,} faces are smaller than "
                             f"--min-size {min_size} px; nothing to crop")
    samples, summary = split_dataset(ds, ratios, seed, workers=workers, progress=progress)
    by_image: dict[Path, list[Sample]] = defaultdict(list)
    for s in samples:
        by_image[s.path].append(s)
    written: list[Sample] = []
    new_files: list[Path] = []  # written by this run over nothing: removed if it stops
    small, failed = 0, []
    try:
        for path, faces in tqdm(by_image.items(), desc="crop", unit="scene",
                                disable=not progress, leave=False):
            try:
                rgb = load_rgb(path)
            except ImageError as exc:
                failed.append(str(exc))
                continue
            for k, s in enumerate(faces):
                x1, y1, x2, y2 = s.box
                if min(x2 - x1, y2 - y1) < min_size:
                    small += 1
                    continue
                try:
                    face = crop(rgb, s.box, margin)
                except ImageError:
                    small += 1
                    continue
                dest = out / s.split / s.label / f"{_safe(s.group or path.stem)}_{k}.jpg"
                if not dest.exists():
                    new_files.append(dest)
                save_rgb(dest, face)
                written.append(Sample(dest, s.label, s.split, s.source, s.group, None,
                                      s.difficult))
        if not written:
            raise MaskwatchError(f"{ds.root}: no face cropped ({small:,} too small, "
                                 f"{len(failed):,} unreadable image(s)); nothing written")
        write_manifest(out / "manifest.csv", written, force=True)
    except BaseException:  # Ctrl-C, a full disk: no partial set of crops left behind
        remove_created(new_files, out)
        raise
    summary.update({
        "written": len(written), "too_small": small, "unreadable": failed, "out": str(out),
        "splits": {n: dict(sorted(Counter(s.label for s in written if s.split == n).items()))
                   for n in SPLITS if any(s.split == n for s in written)},
    })
    summary["empty_splits"] = empty_splits(summary["splits"], ratios)
    return summary
