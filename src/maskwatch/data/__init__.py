"""Datasets: the one data model the rest of maskwatch reads.

Stable API (used by training, evaluation and the CLI)::

    from maskwatch.data import load_dataset, read_face, Sample, Dataset

    ds = load_dataset(path)            # folder (any known layout) or manifest/box CSV
    ds.layout                          # "class-folders", "voc", "csv", "yolo", "manifest"
    ds.classes                         # labels present, canonical order
    for s in ds.samples:   # Sample(path, label, split, source, group, box, difficult)
        if s.split == "train":         # "train", "val", "test" or None
            rgb = read_face(s, margin=0.0)   # HxWx3 uint8 RGB: box crop or whole image

- ``load_dataset(path, mapping=None, names=None, images=None) -> Dataset`` recognises: one
  folder per class (optionally under split folders), Pascal VOC (images/ + annotations/),
  a CSV of boxes, YOLO (images/ + labels/), a manifest CSV. Labels are canonical
  (maskwatch.labels.CANONICAL). Raises LayoutError naming the expected layouts.
- ``read_face(sample, margin=0.0) -> np.ndarray``; raises ImageError for a bad file.
- ``read_manifest(path) -> list[Sample]``, ``write_manifest(path, samples, force=False,
  empty_images=())``; columns path,label,split,source,group,x1,y1,x2,y2 (paths relative to
  the manifest's folder when under it), then ``difficult`` (1/0) when a face is difficult
  (optional on reading); a row with a path but no label and no box is an image annotated
  as holding no face (``Dataset.empty_images``, not a sample).
- ``is_synthetic(sample)``: made-up faces (source ``synthetic:...``, see ``data.synth``) are
  for training only: splits put them in train, evaluation and validation skip them.
- ``Sample.group``: samples sharing it (one scene; an image and its ``Augmented_<base>_<n>``
  copies) must stay in one split. ``split_dataset`` / ``write_split`` / ``crop_dataset``
  make such splits (``split_with_empty`` / ``write_split`` also the face-free images);
  ``audit_dataset`` reports problems without changing anything.
"""

from maskwatch.boxes import clip_box, expand_box
from maskwatch.data.audit import audit_dataset, format_report, inspect_image
from maskwatch.data.layouts import EXPECTED_LAYOUTS, load_dataset, parse_mapping, parse_voc
from maskwatch.data.model import (
    DIFFICULT_COLUMN,
    MANIFEST_COLUMNS,
    SPLITS,
    SYNTHETIC_SOURCE,
    Dataset,
    Sample,
    is_synthetic,
    normalise_split,
    read_face,
    read_manifest,
    write_manifest,
)
from maskwatch.data.split import (
    crop_dataset,
    parse_ratios,
    split_dataset,
    split_with_empty,
    write_split,
)

__all__ = [
    "DIFFICULT_COLUMN", "EXPECTED_LAYOUTS", "MANIFEST_COLUMNS", "SPLITS", "SYNTHETIC_SOURCE",
    "Dataset", "Sample",
    "audit_dataset", "clip_box", "crop_dataset", "expand_box", "format_report",
    "inspect_image", "is_synthetic",
    "load_dataset", "normalise_split", "parse_mapping", "parse_ratios", "parse_voc",
    "read_face", "read_manifest", "split_dataset", "split_with_empty", "write_manifest",
    "write_split",
]
