"""The core data model: one ``Sample`` per face, a ``Dataset`` of them, and manifests."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskwatch.batching import ENCODING, csv_text, csv_uncell
from maskwatch.boxes import Box, bad_box, crop
from maskwatch.errors import ImageError, LayoutError
from maskwatch.files import write_atomic
from maskwatch.labels import CANONICAL, sort_classes

#: Canonical split names used in ``Sample.split`` and in manifests.
SPLITS = ("train", "val", "test")

_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}

MANIFEST_COLUMNS = ("path", "label", "split", "source", "group", "x1", "y1", "x2", "y2")
#: Column added after ``MANIFEST_COLUMNS`` when a face is difficult (1); optional on reading.
DIFFICULT_COLUMN = "difficult"

#: ``Sample.source`` of made-up faces starts with this (``synthetic:KIND:ORIGINAL_PATH``).
#: Such samples are for training only: splits put them in train, evaluation skips them.
SYNTHETIC_SOURCE = "synthetic"


def normalise_split(name: str | None) -> str | None:
    """Return 'train', 'val' or 'test' for a split folder's name, else None."""
    if not name:
        return None
    return _SPLIT_ALIASES.get(name.strip().lower())


@dataclass(frozen=True)
class Sample:
    """One labelled face.

    ``box`` is ``(x1, y1, x2, y2)`` in pixels of the upright image (x2, y2 exclusive) for
    datasets of scene photos with boxes, and None when the file is itself a face crop.
    ``group``: samples that share a group (one scene, or an image and its augmentations)
    must stay on one side of a split. ``difficult``: the annotation marks the face as hard
    to make out (Pascal VOC ``<difficult>1</difficult>``); detection metrics count such a
    face neither as found nor as missed. Manifests keep it (column ``difficult``).
    """

    path: Path
    label: str
    split: str | None = None
    source: str = ""
    group: str = ""
    box: Box | None = None
    difficult: bool = False


@dataclass
class Dataset:
    """The samples of a dataset and how it was recognised.

    ``empty_images``: images annotated as holding no face (a Pascal VOC file without
    ``<object>``, an empty YOLO label file); they have no samples, but a detector's boxes
    there are false ones (see ``maskwatch.detection.evaluate.load_scenes``). Manifests keep
    them as rows without label and box. ``empty_image_splits``: the split of such an
    image where the data says it (a manifest row's split, a YOLO ``labels/<split>/``
    folder).
    """

    root: Path
    layout: str
    samples: list[Sample]
    skipped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    clipped: int = 0
    empty_images: list[Path] = field(default_factory=list)
    empty_image_splits: dict[Path, str] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Labels present, in canonical order."""
        return sort_classes(s.label for s in self.samples)

    @property
    def splits(self) -> list[str | None]:
        """Splits present (None for samples without one)."""
        present = {s.split for s in self.samples}
        return [s for s in (*SPLITS, None) if s in present]

    def loading_warnings(self, limit: int = 10, hint: bool = True) -> list[str]:
        """What reading the dataset left out, as lines for a user: its notes (the first
        ``limit``, then how many more) and a count of what was skipped, by reason (with
        ``hint``, pointing to ``maskwatch data audit``)."""
        lines = list(self.notes[:limit])
        if len(self.notes) > limit:
            lines.append(f"... {len(self.notes) - limit} more")
        if self.skipped:
            reasons = ", ".join(f"{k}: {v:,}" for k, v in self.skipped.most_common())
            lines.append(f"{self.root}: left out while reading ({reasons})"
                         + ("; `maskwatch data audit` shows the dataset as read" if hint
                            else ""))
        return lines

    def counts(self) -> dict[str, dict[str, int]]:
        """Samples per split ('-' for none) and label."""
        out: dict[str, dict[str, int]] = {}
        for s in self.samples:
            row = out.setdefault(s.split or "-", {})
            row[s.label] = row.get(s.label, 0) + 1
        return out

    def images(self) -> list[Path]:
        """Distinct image files, in order of first appearance."""
        return list(dict.fromkeys(s.path for s in self.samples))

    def __len__(self) -> int:
        return len(self.samples)


def is_synthetic(sample: Sample) -> bool:
    """True for a made-up face (``source`` ``synthetic:...``), which no val/test set may hold."""
    return sample.source.split(":", 1)[0].strip().lower() == SYNTHETIC_SOURCE


def csv_rows(f, path, skipped: Counter, notes: list[str]):
    """Yield (line number, row) of a CSV file; a row the csv module refuses (a field over
    its size limit, a stray NUL) is counted and noted in one line, and reading goes on."""
    reader = csv.reader(f)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            skipped["bad CSV row"] += 1
            notes.append(f"{path}:{reader.line_num}: {exc}")
            continue
        yield reader.line_num, row


def read_face(sample: Sample, margin: float = 0.0) -> np.ndarray:
    """Return the sample's face as an HxWx3 uint8 RGB array.

    For a sample with a box: the box grown by ``margin`` (fraction of the box size on each
    side) and clipped to the image; otherwise the whole (upright) image. Raises ImageError.
    """
    from maskwatch.imaging import load_rgb

    rgb = load_rgb(sample.path)
    try:
        return crop(rgb, sample.box, margin)
    except ImageError as exc:
        raise ImageError(f"{sample.path}: {exc}") from None


def _fmt_path(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def write_manifest(path: str | Path, samples, force: bool = False, empty_images=()) -> Path:
    """Write samples to a manifest CSV (columns: path,label,split,source,group,x1,y1,x2,y2,
    and ``difficult`` (1 or 0) after them when a sample is difficult).

    ``empty_images``: images annotated as holding no face (``Dataset.empty_images``), each
    a path or a (path, split) pair; written after the samples as rows with a path (and
    split) but no label and no box. Image paths under the manifest's folder are written
    relative to it, others absolute. An existing file is never replaced unless ``force``.
    """
    from maskwatch.errors import MaskwatchError

    path = Path(path)
    if path.exists() and not force:
        raise MaskwatchError(f"{path}: already exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    samples = list(samples)
    hard = any(s.difficult for s in samples)  # old readers and files stay as they were
    rows: list = [(*MANIFEST_COLUMNS, DIFFICULT_COLUMN) if hard else MANIFEST_COLUMNS]
    for s in samples:
        box = s.box if s.box is not None else ("", "", "", "")
        rows.append([_fmt_path(s.path, base), s.label, s.split or "", s.source, s.group, *box,
                     *([int(bool(s.difficult))] if hard else [])])
    for item in empty_images:
        image, split = item if isinstance(item, tuple) else (item, None)
        rows.append([_fmt_path(image, base), "", split or "", "", "", "", "", "", "",
                     *([""] if hard else [])])

    def write(tmp: Path) -> None:  # cells a spreadsheet would run are escaped (csv_cell)
        with open(tmp, "w", newline="", **ENCODING) as f:
            f.write(csv_text(rows))

    return write_atomic(path, write, "manifest")


def is_manifest(path: str | Path) -> bool:
    """True for a CSV file whose header has at least ``path`` and ``label``."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() != ".csv":
        return False
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            header = next(csv.reader(f), [])
    except (OSError, csv.Error):
        return False
    cols = {c.strip().lower() for c in header}
    return {"path", "label"} <= cols


#: Cells of the ``difficult`` column, read case-insensitively.
_FLAGS = {"": False, "0": False, "false": False, "no": False,
          "1": True, "true": True, "yes": True}


def load_manifest(path: str | Path) -> Dataset:
    """Read a manifest written by ``write_manifest`` (relative paths: to its folder).

    A row with a path but neither label nor box is an image annotated as holding no face
    (``Dataset.empty_images``); the ``difficult`` column is optional (missing: not
    difficult). A bad row (unknown label or split, a box that is not numbers, NaN,
    infinite or huge, a difficult flag other than 1/0/true/false/yes/no/empty, a field the
    csv module refuses) is skipped and noted in one line; the rest is read. LayoutError
    when no row is usable (or there is none).
    """
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: no such manifest file")
    base = path.parent
    out: list[Sample] = []
    empty: list[Path] = []
    empty_image_splits: dict[Path, str] = {}
    skipped: Counter = Counter()
    notes: list[str] = []

    def skip(n: int, why: str) -> None:
        skipped["bad manifest row"] += 1
        notes.append(f"{path}:{n}: {why}")

    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        rows = csv_rows(f, path, skipped, notes)
        header = [c.strip().lower() for c in next(rows, (1, []))[1]]
        if not {"path", "label"} <= set(header):
            raise LayoutError(f"{path}: not a manifest (needs columns path,label)")
        for n, values in rows:
            row = {k: csv_uncell(v.strip()) for k, v in zip(header, values) if k}
            if not any(row.values()):
                continue
            label = row.get("label", "")
            coords = [row.get(k, "") for k in ("x1", "y1", "x2", "y2")]
            if not label and not any(coords) and row.get("path"):  # nobody there
                split = row.get("split") or None
                if split is not None and split not in SPLITS:
                    skip(n, f"unknown split {split[:80]!r} (train, val, test)")
                    continue
                p = Path(row["path"])
                p = p if p.is_absolute() else base / p
                empty.append(p)
                if split is not None:
                    empty_image_splits[p] = split
                continue
            if label not in CANONICAL:
                skip(n, f"unknown label {label[:80]!r}")
                continue
            if not row.get("path"):
                skip(n, "no path")
                continue
            p = Path(row["path"])
            if not p.is_absolute():
                p = base / p
            box = None
            if all(coords):
                why = bad_box(coords)
                if why:
                    skip(n, why[:200])
                    continue
                box = tuple(int(float(c)) for c in coords)
            split = row.get("split") or None
            if split is not None and split not in SPLITS:
                skip(n, f"unknown split {split[:80]!r} (train, val, test)")
                continue
            flag = row.get(DIFFICULT_COLUMN, "").lower()
            if flag not in _FLAGS:
                skip(n, f"difficult is {flag[:80]!r}, not 1 or 0")
                continue
            sample = Sample(p, label, split, row.get("source", ""), row.get("group", ""), box,
                            _FLAGS[flag])
            if split in ("val", "test") and is_synthetic(sample):  # a data error, not a typo
                raise LayoutError(f"{path}:{n}: synthetic sample in split {split!r}; made-up "
                                  "faces may only be in train")
            out.append(sample)
    if not out and not empty:  # nothing usable: the first reason is the error
        raise LayoutError(notes[0] if notes else f"{path}: manifest has no rows (only a "
                          "header): no face to read")
    return Dataset(base, "manifest", out, skipped, notes,
                   empty_images=list(dict.fromkeys(empty)), empty_image_splits=empty_image_splits)


def read_manifest(path: str | Path) -> list[Sample]:
    """The samples of a manifest (see ``load_manifest``; bad rows are skipped)."""
    return load_manifest(path).samples
