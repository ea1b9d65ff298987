"""`maskwatch data`: audit, split, crop datasets and make synthetic incorrect_mask faces."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskwatch.cli.common import (
    add_command,
    add_overwrite_argument,
    margin,
    non_negative_int,
    number,
    positive_int,
    print_json,
)

ORDER = 10


def _add_loading(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH",
                   help="dataset folder (class folders, VOC, YOLO, CSV of boxes) or manifest CSV")
    p.add_argument("--map", dest="mapping", default=None,
                   help='class names to ours, e.g. "face_with_mask=with_mask,'
                   'face_no_mask=without_mask" (unknown classes are skipped and counted)')
    p.add_argument("--names", default=None,
                   help="YOLO class names, comma separated, in class-id order")
    p.add_argument("--images", default=None, help="folder of the images of a CSV of boxes")
    p.add_argument("--workers", type=positive_int, default=2, help="processes that decode images")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no warnings about skipped boxes or files (the "
                   "summary still counts them)")


def _add_split(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--ratios", nargs="+", type=number(0.0), default=[0.8, 0.1, 0.1],
                   metavar="R", help="train val [test] fractions")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="random seed (same seed, same split)")
    add_overwrite_argument(p, "replace/write into existing output")
    p.add_argument("-j", "--json", action="store_true", help="print a JSON summary on stdout")


def register(subparsers) -> None:
    p = add_command(subparsers, "data", help="audit, split and crop datasets",
                    examples=["maskwatch data audit faces/",
                              "maskwatch data split faces/ -o split/",
                              "maskwatch data crop scenes/ -o crops/ --margin 0.15"])
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    a = add_command(sub, "audit", help="report counts, sizes, bad files, duplicates and "
                    "leakage of a dataset (changes nothing)",
                    examples=["maskwatch data audit faces/",
                              "maskwatch data audit boxes.csv --images photos/ -j"])
    _add_loading(a)
    a.add_argument("-j", "--json", action="store_true", help="print one JSON object on stdout")
    a.add_argument("--examples", type=non_negative_int, default=5,
                   help="examples listed per finding")
    a.set_defaults(func=run_audit)

    s = add_command(sub, "split", help="group- and near-duplicate-aware stratified split, "
                    "written as DIR/manifest.csv",
                    examples=["maskwatch data split faces/ -o split/ --ratios 0.8 0.1 0.1",
                              "maskwatch data split yolo/ --names mask,no_mask -o split/ -j"])
    _add_loading(s)
    _add_split(s)
    s.set_defaults(func=run_split)

    c = add_command(sub, "crop", help="crop the faces of a box dataset into "
                    "DIR/<split>/<class>/, splitting by scene",
                    examples=["maskwatch data crop scenes/ -o crops/",
                              "maskwatch data crop boxes.csv --images photos/ -o crops/ "
                              "--margin 0.15 --overwrite"])
    _add_loading(c)
    _add_split(c)
    c.add_argument("--margin", type=margin, default=0.1,
                   help="grow each box by this fraction of its size on each side")
    c.add_argument("--min-size", type=non_negative_int, default=16,
                   help="skip faces smaller than this (px)")
    c.set_defaults(func=run_crop)

    y = add_command(
        sub, "synth-incorrect",
        help="make training-only incorrect_mask faces: masks drawn (or taken from masked "
        "faces) under the nose or on the chin of bare faces, and masks of masked faces "
        "moved down (and, with worn, drawn masks worn right as with_mask faces)",
        description="Make incorrect_mask faces for training from real faces: on bare faces\n"
        "(without_mask) a mask is drawn just under the nose (nose) or on the chin (chin),\n"
        "placed from YuNet's five landmarks; on masked faces (with_mask) the mask is moved\n"
        "down (moved). swap-nose and swap-chin paste a real mask instead of a drawn one:\n"
        "the lower face of another masked face of the input, aligned by the landmarks of\n"
        "both and moved down under the nose or onto the chin. worn draws the same mask\n"
        "worn right, over nose and mouth, as a with_mask face: the counterpart that keeps\n"
        "a model from learning that a drawn mask means worn wrongly (swap-worn: the same\n"
        "for pasted masks). Writes DIR/LABEL/*.jpg and DIR/manifest.csv, where every row\n"
        "has split train and source synthetic:KIND:ORIGINAL_PATH: splits, validation and\n"
        "evaluate keep such faces out of every val/test set.",
        examples=["maskwatch data synth-incorrect split/manifest.csv -o synth/ --split train",
                  "maskwatch data synth-incorrect faces/ -o synth/ --kinds nose,chin -j"],
    )
    _add_loading(y)
    y.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    y.add_argument("--split", default="train",
                   help="take faces of this split only: train, val, test or all; data without "
                   "splits counts as train (default: train, so no test face is copied)")
    y.add_argument("--kinds", default="nose,chin,moved",
                   help="kinds to make, comma separated, among nose, chin, moved, swap-nose, "
                   "swap-chin (worn wrongly), worn and swap-worn (worn right) (default: "
                   "nose,chin,moved)")
    y.add_argument("--per-face", type=positive_int, default=1,
                   help="variants per face and kind (default: 1)")
    y.add_argument("--limit", type=positive_int, default=None,
                   help="use at most this many source faces, chosen at random (default: all)")
    y.add_argument("--margin", type=margin, default=0.1,
                   help="grow boxes by this fraction per side (datasets with boxes; default: 0.1)")
    y.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    add_overwrite_argument(y, "replace DIR/manifest.csv")
    y.add_argument("-j", "--json", action="store_true", help="print a JSON summary on stdout")
    y.set_defaults(func=run_synth)


def _load(args):
    from maskwatch.data import load_dataset

    ds = load_dataset(args.path, mapping=args.mapping, names=args.names, images=args.images)
    if not args.quiet:
        for line in ds.loading_warnings(hint=False):
            print(f"maskwatch: warning: {line}", file=sys.stderr)
    return ds


def run_audit(args) -> int:
    import time

    from maskwatch.data import audit_dataset, format_report

    start = time.perf_counter()
    ds = _load(args)
    report = audit_dataset(ds, workers=args.workers, progress=not args.quiet)
    report["seconds"] = round(time.perf_counter() - start, 2)
    if args.json:
        print_json(report)
    else:
        print(format_report(report, args.examples))
        print(f"\n(audited in {report['seconds']:.1f} s)")
    return 0


def _print_summary(summary: dict, args) -> None:
    for name in summary.get("empty_splits", ()):
        print(f"maskwatch: warning: split {name} is empty: too few faces or groups for "
              f"--ratios {' '.join(map(str, args.ratios))}", file=sys.stderr)
    if args.json:
        print_json(summary)
        return
    for name, counts in summary["splits"].items():
        total = sum(counts.values())
        detail = ", ".join(f"{k} {v:,}" for k, v in counts.items())
        print(f"{name:5s} {total:7,}  ({detail})")
    if summary.get("images_without_faces"):
        detail = ", ".join(f"{k} {v:,}" for k, v in summary["images_without_faces"].items())
        print(f"photos annotated as holding no face: {detail}")
    if summary.get("unreadable"):
        print(f"left out {len(summary['unreadable'])} unreadable image(s)")


def run_split(args) -> int:
    from maskwatch.data import parse_ratios, write_split

    parse_ratios(args.ratios)
    ds = _load(args)
    manifest, summary = write_split(ds, args.out, args.ratios, args.seed, force=args.overwrite,
                                    workers=args.workers, progress=not args.quiet)
    _print_summary(summary, args)
    if not args.json:
        print(f"wrote {manifest} ({summary['samples']:,} samples, "
              f"{summary['clusters']:,} groups kept whole)")
    return 0


def run_crop(args) -> int:
    from maskwatch.data import crop_dataset, parse_ratios

    parse_ratios(args.ratios)
    ds = _load(args)
    summary = crop_dataset(ds, args.out, args.ratios, margin=args.margin, seed=args.seed,
                           min_size=args.min_size, force=args.overwrite, workers=args.workers,
                           progress=not args.quiet)
    _print_summary(summary, args)
    if not args.json:
        print(f"wrote {summary['written']:,} faces to {summary['out']} "
              f"(skipped {summary['too_small']:,} smaller than {args.min_size} px)")
    return 0


def run_synth(args) -> int:
    from maskwatch.data.synth import synthesise
    from maskwatch.errors import MaskwatchError

    ds = _load(args)
    out, root = Path(args.out).resolve(), ds.root.resolve()
    if ds.layout == "class-folders" and (out == root or root in out.parents):
        raise MaskwatchError(f"-o {args.out}: inside the dataset folder {ds.root}, where a "
                             "later run would read the made-up faces as real ones; choose a "
                             "folder outside it")
    if args.split == "all":
        samples = ds.samples
    else:
        samples = [s for s in ds.samples if s.split in (args.split, None)]
    if not samples:
        raise MaskwatchError(f"{args.path}: no face in split {args.split!r}")
    summary = synthesise(samples, args.out, [k.strip() for k in args.kinds.split(",")],
                         args.per_face, args.seed, args.margin, args.limit, args.overwrite,
                         progress=not args.quiet)
    if args.json:
        print_json(summary)
    else:
        kinds = ", ".join(f"{k} {v:,}" for k, v in summary["kinds"].items()) or "none"
        skipped = ", ".join(f"{k} {v:,}" for k, v in summary["skipped"].items())
        print(f"wrote {summary['written']:,} synthetic faces ({kinds}) from "
              f"{summary['from_faces']:,} faces to {summary['manifest']}"
              + (f"; skipped: {skipped}" if skipped else ""))
    return 0
