"""Recognise a dataset's layout and read its samples (see ``load_dataset``)."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

from maskwatch.boxes import bad_box, clip_box
from maskwatch.data.model import (
    Dataset,
    Sample,
    csv_rows,
    is_manifest,
    load_manifest,
    normalise_split,
)
from maskwatch.errors import LayoutError
from maskwatch.imaging import IMAGE_SUFFIXES
from maskwatch.labels import normalise_label

EXPECTED_LAYOUTS = (
    "expected one of: (1) one folder per class (with_mask/WithMask/mask, "
    "without_mask/WithoutMask/no_mask, incorrect_mask/mask_weared_incorrect), optionally "
    "under train/val/test folders; (2) Pascal VOC: images/ + annotations/*.xml; "
    "(3) a CSV of boxes (name,x1,x2,y1,y2,classname) next to its images; "
    "(4) YOLO: images/ + labels/*.txt with classes.txt or data.yaml; "
    "(5) a manifest CSV (path,label,split,...)"
)

_AUGMENTED = re.compile(r"^Augmented_(.+)_\d+$")

_CSV_COLUMNS = {
    "name": ("name", "filename", "file_name", "file", "image", "image_name", "img",
             "image_id", "path", "img_name"),
    "x1": ("x1", "xmin", "x_min", "left"),
    "y1": ("y1", "ymin", "y_min", "top"),
    "x2": ("x2", "xmax", "x_max", "right"),
    "y2": ("y2", "ymax", "y_max", "bottom"),
    "label": ("classname", "class", "label", "class_name", "category", "labelname"),
}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def _image_size(path: Path) -> tuple[int, int] | None:
    """Upright (width, height) from the file header, or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(274, 1)
    except Exception:  # noqa: BLE001 - any unreadable file: the audit reports it
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def parse_mapping(text: str | dict | None) -> dict[str, str] | None:
    """Parse ``"face_with_mask=with_mask,face_no_mask=without_mask"`` into a dict."""
    if text is None or isinstance(text, dict):
        return text
    mapping: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise LayoutError(f"--map entry {part.strip()!r}: expected SOURCE=TARGET")
        src, dst = (s.strip() for s in part.split("=", 1))
        target = normalise_label(dst) if dst else ""
        if dst and target is None:
            raise LayoutError(f"--map entry {part.strip()!r}: unknown class {dst!r}")
        mapping[src] = target or ""
    return mapping


# ---------------------------------------------------------------- class folders


def _class_folder_group(label: str, split: str | None, rel: Path) -> str:
    """Group key: ``Augmented_<base>_<n>`` joins ``<base>`` (the train/unsplit original)."""
    stem = rel.with_suffix("").as_posix()
    m = _AUGMENTED.match(rel.stem)
    if m:
        return f"{label}/{(rel.parent / m.group(1)).as_posix()}"
    if split in (None, "train"):
        return f"{label}/{stem}"
    return f"{split}:{label}/{stem}"


def _load_class_folders(root: Path, mapping) -> Dataset | None:
    samples: list[Sample] = []
    skipped: Counter = Counter()
    notes: list[str] = []
    source = root.name

    def add_class_dir(folder: Path, label: str, split: str | None) -> None:
        for f in sorted(folder.rglob("*")):
            if not f.is_file():
                if f.is_symlink() and not f.exists():
                    skipped["broken link"] += 1
                    notes.append(f"{f}: broken link (what it points to is missing)")
                elif f.exists() and not f.is_dir():  # a pipe or a device: never read
                    skipped["not a regular file"] += 1
                    notes.append(f"{f}: not a regular file (a pipe or a device), not read")
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                skipped["not an image file"] += 1
                continue
            rel = f.relative_to(folder)
            group = _class_folder_group(label, split, rel)
            samples.append(Sample(f, label, split, source, group, None))

    def walk(folder: Path, split: str | None, depth: int) -> None:
        children = sorted(p for p in folder.iterdir() if p.is_dir())
        found_class = False
        for child in children:
            label = normalise_label(child.name, mapping)
            if label:
                add_class_dir(child, label, split)
                found_class = True
        for child in children:
            if normalise_label(child.name, mapping):
                continue
            child_split = normalise_split(child.name)
            if child_split and split is None:
                walk(child, child_split, depth + 1)
            elif found_class:
                if any(_is_image(p) for p in child.rglob("*")):
                    notes.append(f"skipped folder {child}: not a known class name")
                    skipped["unknown class folder"] += 1
            elif depth < 3:
                walk(child, split, depth + 1)

    walk(root, normalise_split(root.name), 0)
    root_label = normalise_label(root.name, mapping)
    if not samples and root_label:  # one class's folder; a dataset named `good` or
        add_class_dir(root, root_label, None)  # `masks` holding class folders is not one
    if not samples:
        return None
    return Dataset(root, "class-folders", samples, skipped, notes)


# ---------------------------------------------------------------- Pascal VOC


def parse_voc(xml_path: Path) -> tuple[str | None, tuple[int, int] | None, list]:
    """Parse one Pascal VOC file: (filename, (width, height) or None, [(name, box)]).

    Uses defusedxml: files with entities or DTDs are refused. Raises LayoutError.
    """
    filename, size, objects, _ = _read_voc(xml_path)
    return filename, size, [(name, box) for name, box, _ in objects]


def _is_set(text: str | None) -> bool:
    """A VOC flag such as ``<difficult>``: 1 (or true/yes) is set; 0, empty or junk is not."""
    t = (text or "").strip().lower()
    if t in ("true", "yes"):
        return True
    try:
        return float(t) == 1.0
    except ValueError:
        return False


def _read_voc(xml_path: Path) -> tuple[str | None, tuple[int, int] | None, list, int]:
    """As :func:`parse_voc`, with each object's ``<difficult>`` flag, ``[(name, box,
    difficult)]``, and the number of ``<object>`` elements (with a box or not)."""
    import defusedxml
    import defusedxml.ElementTree as ET

    try:
        root = ET.parse(xml_path).getroot()
    except defusedxml.DefusedXmlException as exc:
        raise LayoutError(
            f"{xml_path}: XML refused: it declares entities or a DTD ({type(exc).__name__})"
        ) from None
    except ET.ParseError as exc:
        raise LayoutError(f"{xml_path}: not valid XML ({exc})") from None
    except OSError as exc:
        raise LayoutError(f"{xml_path}: cannot read ({exc.strerror or exc})") from None

    def num(el, tag):
        text = el.findtext(tag)
        try:
            return float(text)
        except (TypeError, ValueError):
            raise LayoutError(f"{xml_path}: <{tag}> is {text!r}, not a number") from None

    filename = (root.findtext("filename") or "").strip() or None
    size = None
    size_el = root.find("size")
    if size_el is not None:
        try:
            w, h = int(float(size_el.findtext("width"))), int(float(size_el.findtext("height")))
            size = (w, h) if 0 < w <= 1_000_000 and 0 < h <= 1_000_000 else None
        except (TypeError, ValueError, OverflowError):
            size = None
    objects = []
    elements = list(root.iter("object"))
    for obj in elements:
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            continue
        box = (num(bb, "xmin"), num(bb, "ymin"), num(bb, "xmax"), num(bb, "ymax"))
        objects.append((name, box, _is_set(obj.findtext("difficult"))))
    return filename, size, objects, len(elements)


def _find_subdir(root: Path, names: tuple[str, ...]) -> Path | None:
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if child.name.lower() in names:
            return child
    return None


def _image_index(folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for p in _image_files(folder):
        index.setdefault(p.name.lower(), p)
        index.setdefault(p.stem.lower(), p)
    return index


def _add_box(samples, skipped, notes, path, name, box, size, mapping, source, group, split,
             where=None, difficult=False):
    """Add one labelled box, or count and note why it is skipped (``where``: its row)."""
    why = bad_box(box)
    if why:
        skipped["bad box"] += 1
        notes.append(f"{where or path}: {why}")
        return
    label = normalise_label(name, mapping) if name else None
    if label is None:
        skipped[f"class {name!r}"] += 1
        return
    if size is None:
        size = _image_size(path)
    rounded = tuple(int(round(v)) for v in box)
    if rounded[2] == rounded[0] or rounded[3] == rounded[1]:  # (swapped corners are fixed)
        skipped["empty box"] += 1
        notes.append(f"{where or path}: box {rounded} has no area")
        return
    if size is not None:
        clipped = clip_box(box, *size)
        if clipped is None:
            skipped["box outside the image"] += 1
            notes.append(f"{path}: box {tuple(round(v) for v in box)} lies outside the image")
            return
        if clipped != tuple(int(round(v)) for v in box):
            skipped["_clipped"] += 1
        box = clipped
    else:
        box = rounded
        if box[2] <= box[0] or box[3] <= box[1]:
            skipped["empty box"] += 1
            return
    samples.append(Sample(path, label, split, source, group, box, difficult))


def _load_voc(root: Path, ann_dir: Path, mapping) -> Dataset:
    img_dir = _find_subdir(root, ("images", "jpegimages", "imgs")) or root
    index = _image_index(img_dir)
    samples: list[Sample] = []
    skipped: Counter = Counter()
    notes: list[str] = []
    empty: list[Path] = []  # annotated as holding no face
    xmls = sorted(ann_dir.rglob("*.xml"))
    for xml in xmls:
        try:
            filename, size, objects, n_objects = _read_voc(xml)
        except LayoutError as exc:
            skipped["bad annotation file"] += 1
            notes.append(str(exc))
            continue
        img = None
        if filename:
            img = index.get(filename.lower()) or index.get(Path(filename).stem.lower())
        img = img or index.get(xml.stem.lower())
        if img is None:
            skipped["image not found"] += 1
            notes.append(f"{xml}: no image {filename or xml.stem} in {img_dir}")
            continue
        rel = xml.relative_to(ann_dir)
        split = normalise_split(rel.parts[0]) if len(rel.parts) > 1 else None
        group = img.relative_to(img_dir).with_suffix("").as_posix()
        if not n_objects:
            empty.append(img)
        for name, box, difficult in objects:
            _add_box(samples, skipped, notes, img, name, box, size, mapping, root.name, group,
                     split, where=xml, difficult=difficult)
    if not samples and skipped.get("bad annotation file") == len(xmls) and notes:
        raise LayoutError(notes[0])
    return Dataset(root, "voc", samples, skipped, notes,
                   empty_images=list(dict.fromkeys(empty)))


# ---------------------------------------------------------------- CSV of boxes


def _csv_columns(header: list[str]) -> dict[str, int] | None:
    lowered = [h.strip().lower() for h in header]
    cols = {}
    for key, names in _CSV_COLUMNS.items():
        for n in names:
            if n in lowered:
                cols[key] = lowered.index(n)
                break
        else:
            return None
    return cols


def _is_box_csv(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            return _csv_columns(next(csv.reader(f), [])) is not None
    except (OSError, csv.Error):
        return False


def _load_box_csv(csv_path: Path, mapping, images: Path | None) -> Dataset:
    folder = images or csv_path.parent
    index = _image_index(folder)
    samples: list[Sample] = []
    skipped: Counter = Counter()
    notes: list[str] = []
    sizes: dict[Path, tuple[int, int] | None] = {}
    # file names that are not UTF-8 come back as the same bytes (surrogateescape)
    with open(csv_path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        rows = csv_rows(f, csv_path, skipped, notes)
        cols = _csv_columns(next(rows, (1, []))[1])
        if cols is None:
            raise LayoutError(f"{csv_path}: no box columns (name,x1,x2,y1,y2,classname)")
        for n, row in rows:
            if not any(c.strip() for c in row):
                continue
            try:
                name = row[cols["name"]].strip()
                box = tuple(float(row[cols[k]]) for k in ("x1", "y1", "x2", "y2"))
                cls = row[cols["label"]].strip()
            except (IndexError, ValueError):
                skipped["bad CSV row"] += 1
                notes.append(f"{csv_path}:{n}: bad row {str(row)[:200]}")
                continue
            img = index.get(Path(name).name.lower()) or index.get(Path(name).stem.lower())
            if img is None:
                skipped["image not found"] += 1
                continue
            if img not in sizes:
                sizes[img] = _image_size(img)
            group = img.relative_to(folder).with_suffix("").as_posix()
            _add_box(samples, skipped, notes, img, cls, box, sizes[img], mapping,
                     csv_path.parent.name, group, None, where=f"{csv_path}:{n}")
    return Dataset(csv_path.parent, "csv", samples, skipped, notes)


# ---------------------------------------------------------------- YOLO


def _yaml_names(path: Path) -> list[str] | None:
    """Read ``names:`` from a YOLO data.yaml (flow list, block list or index map)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^names\s*:\s*(.*)$", line)
        if not m:
            continue
        rest = m.group(1).split("#")[0].strip()
        if rest.startswith("["):
            return [s.strip().strip("'\"") for s in rest.strip("[]").split(",") if s.strip()]
        items: dict[int, str] = {}
        for sub in lines[i + 1:]:
            if not sub.strip():
                continue
            if not sub.startswith((" ", "\t", "-")):
                break
            s = sub.strip()
            if s.startswith("-"):
                items[len(items)] = s[1:].strip().strip("'\"")
            elif ":" in s:
                k, v = s.split(":", 1)
                try:
                    items[int(k)] = v.strip().strip("'\"")
                except ValueError:
                    break
        return [items[k] for k in sorted(items)] or None
    return None


def _yolo_names(root: Path, labels: Path, names) -> list[str]:
    if names:
        return [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    for folder in (root, labels):
        f = folder / "classes.txt"
        if f.is_file():
            text = f.read_text(encoding="utf-8", errors="replace")
            return [ln.strip() for ln in text.splitlines() if ln.strip()]
    for f in (root / "data.yaml", root / "dataset.yaml"):
        if f.is_file():
            found = _yaml_names(f)
            if found:
                return found
    raise LayoutError(
        f"{root}: YOLO labels found but no class names: add classes.txt, a data.yaml "
        "with names:, or pass --names"
    )


def _load_yolo(root: Path, labels: Path, img_dir: Path, mapping, names) -> Dataset:
    class_names = _yolo_names(root, labels, names)
    samples: list[Sample] = []
    skipped: Counter = Counter()
    notes: list[str] = []
    empty: list[Path] = []  # an empty label file: annotated as holding no face
    empty_image_splits: dict[Path, str] = {}
    for txt in sorted(labels.rglob("*.txt")):
        if txt.name == "classes.txt":
            continue
        rel = txt.relative_to(labels)
        img = next((p for p in (img_dir / rel.parent).glob(rel.stem + ".*")
                    if p.suffix.lower() in IMAGE_SUFFIXES), None)
        if img is None:
            skipped["image not found"] += 1
            notes.append(f"{txt}: no image {rel.stem}.* in {img_dir / rel.parent}")
            continue
        split = normalise_split(rel.parts[0]) if len(rel.parts) > 1 else None
        size = _image_size(img)
        group = img.relative_to(img_dir).with_suffix("").as_posix()
        try:
            text = txt.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            skipped["bad label file"] += 1
            notes.append(f"{txt}: cannot read ({getattr(exc, 'reason', None) or exc})")
            continue
        if not text.strip():
            empty.append(img)
            if split is not None:
                empty_image_splits[img] = split
            continue
        for n, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                cid = int(parts[0])
                cx, cy, w, h = (float(v) for v in parts[1:5])
                if not 0 <= cid < len(class_names):  # -1 must not mean the last class
                    raise IndexError(cid)
                name = class_names[cid]
            except (ValueError, IndexError):
                skipped["bad label line"] += 1
                notes.append(f"{txt}:{n}: bad line {line.strip()[:200]!r}")
                continue
            if size is None:
                skipped["unreadable image"] += 1
                continue
            W, H = size
            box = ((cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H)
            _add_box(samples, skipped, notes, img, name, box, size, mapping, root.name, group,
                     split, where=f"{txt}:{n}")
    return Dataset(root, "yolo", samples, skipped, notes,
                   empty_images=list(dict.fromkeys(empty)), empty_image_splits=empty_image_splits)


# ---------------------------------------------------------------- entry point


def load_dataset(
    path: str | Path,
    mapping: str | dict[str, str] | None = None,
    names: str | list[str] | None = None,
    images: str | Path | None = None,
) -> Dataset:
    """Recognise the layout of ``path`` and return its samples as a Dataset.

    ``mapping``: dataset class name -> canonical label (dict or "a=with_mask,b=...");
    ``names``: YOLO class names (comma separated or list); ``images``: where a CSV of
    boxes finds its images (default: beside it). Raises LayoutError naming the layouts
    expected when none fits.
    """
    path = Path(path)
    mapping = parse_mapping(mapping)
    if not path.exists():
        raise LayoutError(f"{path}: no such file or folder")
    if path.is_file():
        if is_manifest(path):
            return load_manifest(path)
        if path.suffix.lower() == ".csv" and _is_box_csv(path):
            return _check(_load_box_csv(path, mapping, Path(images) if images else None), path)
        raise LayoutError(f"{path}: not a dataset file; {EXPECTED_LAYOUTS}")
    if not any(p.is_file() for p in path.rglob("*")):
        raise LayoutError(f"{path}: folder is empty")
    ann = _find_subdir(path, ("annotations", "annotation", "xml", "xmls"))
    if ann is not None and any(ann.rglob("*.xml")):
        return _check(_load_voc(path, ann, mapping), path)
    labels = _find_subdir(path, ("labels",))
    img_dir = _find_subdir(path, ("images",))
    if labels is not None and img_dir is not None and any(labels.rglob("*.txt")):
        return _check(_load_yolo(path, labels, img_dir, mapping, names), path)
    csvs = [p for p in sorted(path.glob("*.csv")) if not is_manifest(p) and _is_box_csv(p)]
    if csvs:
        if len(csvs) > 1:
            raise LayoutError(f"{path}: several CSV files of boxes; pass one of them: "
                              + ", ".join(p.name for p in csvs))
        return _check(_load_box_csv(csvs[0], mapping, Path(images) if images else None), path)
    found = _load_class_folders(path, mapping)
    if found is not None:
        return found
    raise LayoutError(f"{path}: no known dataset layout; {EXPECTED_LAYOUTS}")


def _check(ds: Dataset, path: Path) -> Dataset:
    ds.clipped = ds.skipped.pop("_clipped", 0)
    if not ds.samples:
        why = ", ".join(f"{k}: {v}" for k, v in ds.skipped.most_common(4)) or "nothing found"
        raise LayoutError(f"{path}: {ds.layout} layout but no usable face ({why})")
    return ds
