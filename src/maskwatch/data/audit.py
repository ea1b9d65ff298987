"""Audit a dataset without changing it: counts, sizes, bad files, duplicates, leakage."""

from __future__ import annotations

import hashlib
import io
import os
import statistics
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from maskwatch.data.hashing import NEAR_DISTANCE, connected_groups, near_pairs
from maskwatch.data.model import Dataset


@dataclass
class ImageFacts:
    """What one decode of an image file tells the audit."""

    path: str
    error: str | None = None
    sha1: str | None = None
    phash: int | None = None
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    misnamed: bool = False


_FORMAT_SUFFIXES = {
    "JPEG": {".jpg", ".jpeg", ".jfif"}, "PNG": {".png"}, "BMP": {".bmp"}, "WEBP": {".webp"},
    "TIFF": {".tif", ".tiff"}, "GIF": {".gif"}, "MPO": {".jpg", ".jpeg"},
}


def inspect_image(path: str | Path) -> ImageFacts:
    """Read a file once: sha1 of its bytes, format, mode, upright size and perceptual hash.

    Never raises for a bad image: the reason is returned in ``error``.
    """
    from PIL import Image

    from maskwatch.data.hashing import phash_int
    from maskwatch.errors import ImageError
    from maskwatch.imaging import MAX_PIXELS, open_image, read_file_bytes

    facts = ImageFacts(str(path))
    try:  # regular files only, size-capped: not /dev/zero, not a FIFO
        data = read_file_bytes(path)
    except ImageError as exc:
        facts.error = str(exc)
        return facts
    if not data:
        facts.error = f"{path}: empty file (0 bytes)"
        return facts
    facts.sha1 = hashlib.sha1(data).hexdigest()
    try:
        buf = io.BytesIO(data)
        buf.name = str(path)
        img = open_image(buf, MAX_PIXELS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as head:
                facts.format, facts.mode = head.format, head.mode
    except ImageError as exc:
        facts.error = str(exc)
        return facts
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds; report, go on
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        facts.error = f"{path}: not an image file Pillow can read ({msg})"
        return facts
    facts.width, facts.height = img.size
    suffix = Path(path).suffix.lower()
    facts.misnamed = suffix not in _FORMAT_SUFFIXES.get(facts.format or "", {suffix})
    facts.phash = phash_int(img)
    return facts


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def inspect_all(paths: list[Path], workers: int = 2, progress: bool = True) -> list[ImageFacts]:
    """Inspect files in a process pool (``workers`` <= 1: in this process), in order."""
    from tqdm import tqdm

    items = [str(p) for p in paths]
    bar = tqdm(total=len(items), desc="audit", unit="img", disable=not progress, leave=False)
    out: list[ImageFacts] = []
    try:
        if workers <= 1 or len(items) < 64:
            for p in items:
                out.append(inspect_image(p))
                bar.update()
        else:
            from concurrent.futures import ProcessPoolExecutor

            chunk = max(8, min(64, len(items) // (workers * 16) or 1))
            with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
                for facts in pool.map(inspect_image, items, chunksize=chunk):
                    out.append(facts)
                    bar.update()
    finally:
        bar.close()
    return out


def _stats(values: list[int]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def audit_dataset(
    ds: Dataset, workers: int = 2, progress: bool = True, max_distance: int = NEAR_DISTANCE
) -> dict:
    """Audit a loaded dataset and return a JSON-ready report (changes nothing).

    Keys: images, samples, layout, root, classes, splits (per split and class), balance,
    sizes, formats, modes, unreadable, misnamed, duplicate_groups (same bytes),
    near_duplicate_groups (phash clusters), cross_split_duplicates, leakage (per split
    pair: images with a near-duplicate in the other split), cross_label_duplicates (face-crop
    datasets only: a scene with boxes legitimately holds several labels),
    cross_split_groups (groups such as an image and its augmentations found in more than
    one split) with cross_split_group_samples (their samples per split), skipped and notes.
    Photos annotated as holding no face (``ds.empty_images``) are read too:
    images_without_faces counts them, their unreadable ones join ``unreadable``, and
    faceless_duplicates lists those that are the same or a near-same photo as one with
    annotated faces (one of the two annotations is wrong).
    """
    paths = ds.images()
    facts = inspect_all(paths, workers=workers, progress=progress)
    index = {p: i for i, p in enumerate(paths)}
    labels: list[set] = [set() for _ in paths]
    splits: list[set] = [set() for _ in paths]
    for s in ds.samples:
        i = index[s.path]
        labels[i].add(s.label)
        splits[i].add(s.split or "-")

    ok = [f for f in facts if f.error is None]
    per_split: dict[str, Counter] = defaultdict(Counter)
    for s in ds.samples:
        per_split[s.split or "-"][s.label] += 1
    classes = Counter(s.label for s in ds.samples)
    total = sum(classes.values()) or 1

    def describe(i: int) -> dict:
        return {"path": str(paths[i]), "label": sorted(labels[i]), "split": sorted(splits[i])}

    # exact duplicates
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(facts):
        if f.sha1:
            by_sha[f.sha1].append(i)
    dup_groups = [g for g in by_sha.values() if len(g) > 1]

    # near duplicates: pairs, clusters
    pairs = near_pairs([f.phash for f in facts], max_distance)
    clusters = [g for g in connected_groups(len(paths), pairs) if len(g) > 1]

    leak: dict[str, set] = defaultdict(set)
    for a, b, _ in pairs:
        for sa in splits[a]:
            for sb in splits[b]:
                if sa != sb:
                    leak[f"{sa}->{sb}"].add(a)
                    leak[f"{sb}->{sa}"].add(b)
    cross_split = [g for g in clusters if len(set().union(*(splits[i] for i in g))) > 1]
    # a scene photo holds faces of several labels: only face crops can be mislabelled copies
    crops = all(s.box is None for s in ds.samples)
    cross_label = [g for g in clusters
                   if crops and len(set().union(*(labels[i] for i in g))) > 1]
    exact_cross_split = [g for g in dup_groups if len(set().union(*(splits[i] for i in g))) > 1]
    exact_cross_label = [g for g in dup_groups
                         if crops and len(set().union(*(labels[i] for i in g))) > 1]

    group_splits: dict[str, set] = defaultdict(set)
    for s in ds.samples:
        if s.group:
            group_splits[s.group].add(s.split or "-")
    spanning = {g for g, sp in group_splits.items() if len(sp) > 1}
    group_leak = Counter(s.split or "-" for s in ds.samples if s.group in spanning)

    empty = [p for p in dict.fromkeys(ds.empty_images) if p not in index]
    empty_facts = inspect_all(empty, workers=workers, progress=False) if empty else []
    faceless = []  # a photo annotated as empty that is a photo annotated with faces
    if empty:
        both = near_pairs([f.phash for f in facts] + [f.phash for f in empty_facts],
                          max_distance)
        n = len(paths)
        faceless = sorted({(str(empty[max(a, b) - n]), str(paths[min(a, b)]))
                           for a, b, _ in both if (a < n) != (b < n)})

    return {
        "root": str(ds.root),
        "layout": ds.layout,
        "images": len(paths),
        "samples": len(ds.samples),
        "classes": dict(sorted(classes.items())),
        "splits": {k: dict(sorted(v.items())) for k, v in sorted(per_split.items())},
        "balance": {k: round(v / total, 4) for k, v in sorted(classes.items())},
        "sizes": {"width": _stats([f.width for f in ok]), "height": _stats([f.height for f in ok])},
        "formats": dict(Counter(f.format for f in ok).most_common()),
        "modes": dict(Counter(f.mode for f in ok).most_common()),
        "unreadable": [{"path": f.path, "error": f.error}
                       for f in (*facts, *empty_facts) if f.error],
        "misnamed": [{"path": f.path, "format": f.format} for f in ok if f.misnamed],
        "duplicate_groups": [[str(paths[i]) for i in g] for g in dup_groups],
        "duplicate_groups_cross_split": len(exact_cross_split),
        "duplicate_groups_cross_label": len(exact_cross_label),
        "near_distance": max_distance,
        "near_duplicate_pairs": len(pairs),
        "near_duplicate_groups": [[str(paths[i]) for i in g] for g in clusters],
        "cross_split_duplicates": [[describe(i) for i in g] for g in cross_split],
        "leakage": {k: len(v) for k, v in sorted(leak.items())},
        "cross_label_duplicates": [[describe(i) for i in g] for g in cross_label],
        "cross_split_groups": len(spanning),
        "cross_split_group_samples": dict(sorted(group_leak.items())),
        "skipped": dict(ds.skipped),
        "clipped_boxes": ds.clipped,
        "notes": ds.notes[:50],
        "images_without_faces": len(empty),
        "faceless_duplicates": [list(pair) for pair in faceless],
    }


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in
                       enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + ln for ln in lines)


def format_report(r: dict, examples: int = 5) -> str:
    """Human-readable audit report (paths shown relative to the dataset's folder)."""
    prefix = r["root"].rstrip("/") + "/"

    def rel(path: str) -> str:
        return path[len(prefix):] if path.startswith(prefix) else path

    out = [f"Dataset {r['root']} ({r['layout']} layout): {r['images']:,} images, "
           f"{r['samples']:,} samples"]
    classes = list(r["classes"])
    rows = [[s, *[f"{r['splits'][s].get(c, 0):,}" for c in classes],
             f"{sum(r['splits'][s].values()):,}"] for s in r["splits"]]
    rows.append(["all", *[f"{r['classes'][c]:,}" for c in classes], f"{r['samples']:,}"])
    out += ["", "Samples per split and class:", _table(rows, ["split", *classes, "total"])]
    out += ["", "Class balance: " + ", ".join(f"{c} {v:.1%}" for c, v in r["balance"].items())]
    size_rows = [[k, v["min"], v["median"], v["max"]] for k, v in r["sizes"].items()]
    out += ["", "Image sizes (px):", _table(size_rows, ["", "min", "median", "max"])]
    out += ["", "Formats: " + ", ".join(f"{k} {v:,}" for k, v in r["formats"].items()),
            "Colour modes: " + ", ".join(f"{k} {v:,}" for k, v in r["modes"].items())]
    if r["skipped"] or r["clipped_boxes"]:
        out += ["", "Loading: " + ", ".join(f"{k}: {v}" for k, v in r["skipped"].items())
                + (f"; boxes clipped to the image: {r['clipped_boxes']}"
                   if r["clipped_boxes"] else "")]

    def listing(title: str, items: list[str]) -> None:
        out.extend(["", f"{title}: {len(items):,}"])
        out.extend(f"  {x}" for x in items[:examples])
        if len(items) > examples:
            out.append(f"  ... and {len(items) - examples:,} more (--json lists all)")

    listing("Unreadable files", [rel(u["error"]) for u in r["unreadable"]])
    listing("Files whose suffix does not match their format",
            [f"{rel(m['path'])} (is {m['format']})" for m in r["misnamed"]])
    listing(f"Groups of byte-identical files ({r['duplicate_groups_cross_split']} across "
            f"splits, {r['duplicate_groups_cross_label']} across labels)",
            [" = ".join(map(rel, g)) for g in r["duplicate_groups"]])
    n_near = sum(len(g) for g in r["near_duplicate_groups"])
    listing(f"Near-duplicate clusters (phash distance <= {r['near_distance']}, "
            f"{n_near:,} images)",
            [" ~ ".join(map(rel, g[:4])) for g in r["near_duplicate_groups"]])

    def fmt_group(g):
        return " ~ ".join(f"{rel(d['path'])} [{'/'.join(d['split'])}, {'/'.join(d['label'])}]"
                          for d in g[:3])

    listing("Near-duplicate clusters spanning splits (leakage)",
            [fmt_group(g) for g in r["cross_split_duplicates"]])
    if r["leakage"]:
        rows = [[k.split("->")[0], k.split("->")[1], f"{v:,}"] for k, v in r["leakage"].items()]
        out += ["Images with a near-duplicate in another split:",
                _table(rows, ["split", "has a near-duplicate in", "images"])]
    if r["cross_split_groups"]:
        out += ["", f"Groups (an image and its augmentations, or one scene) found in more than "
                f"one split: {r['cross_split_groups']:,}; their samples per split: "
                + ", ".join(f"{k} {v:,}" for k, v in r["cross_split_group_samples"].items())]
    listing("Near-duplicate clusters under more than one label",
            [fmt_group(g) for g in r["cross_label_duplicates"]])
    if r.get("images_without_faces"):
        out += ["", f"Photos annotated as holding no face: {r['images_without_faces']:,}"]
        listing("Of them the same or a near-same photo as one with annotated faces",
                [f"{rel(a)} ~ {rel(b)}" for a, b in r["faceless_duplicates"]])
    return "\n".join(out)
