"""How small may a face crop be before the classifier's answer changes?

`detect` reads big JPEG photos at 1/2, 1/4 or 1/8 size (`Detector.read`) and cuts face
crops from that smaller array unless a crop would be under `pipeline.CROP_MIN_SIDE`
pixels. This measures what shrinking costs the bundled classifier: real photos of the
7,553 set (mostly one face each, with_mask and without_mask folders) whose shorter side is
at least --min-side, classified as they are and after shrinking 2x, 3x, 4x and 6x
(cv2 INTER_AREA, close to libjpeg's DCT scaling), binned by the shorter side after
shrinking. Prints one JSON line per (factor, bin): two-class accuracy as they are and
shrunk, agreement of the answers, and the mean change of P(without_mask). The bundled
model trained on part of these photos: read the differences, not the accuracies.

Usage: python scripts/reduced_crops.py ../shared/datasets/face-mask-7553 [--per-class 1200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from maskwatch.errors import MaskwatchError  # noqa: E402
from maskwatch.imaging import IMAGE_SUFFIXES, load_rgb  # noqa: E402
from maskwatch.inference.classifier import Classifier  # noqa: E402

FACTORS = (2, 3, 4, 6)
BINS = ((0, 48), (48, 64), (64, 96), (96, 1 << 20))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the 7,553 set (holds data/with_mask, ...)")
    ap.add_argument("--per-class", type=int, default=1200,
                    help="photos drawn from each class folder (default: 1200)")
    ap.add_argument("--min-side", type=int, default=128,
                    help="keep photos whose shorter side is at least this (default: 128)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0)")
    args = ap.parse_args()

    clf = Classifier(threads=2)
    without = list(clf.classes).index("without_mask")
    rows = []  # (side, truth, P(without) as it is, then per factor)
    for label in ("with_mask", "without_mask"):
        files = sorted(p for p in (args.root / "data" / label).iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES)
        random.Random(args.seed).shuffle(files)
        for path in files[:args.per_class]:
            try:
                rgb = load_rgb(path)
            except MaskwatchError:
                continue
            side = min(rgb.shape[:2])
            if side < args.min_side:
                continue
            shrunk = [rgb] + [cv2.resize(rgb, (max(1, round(rgb.shape[1] / k)),
                                               max(1, round(rgb.shape[0] / k))),
                                         interpolation=cv2.INTER_AREA) for k in FACTORS]
            probs = clf.predict_proba(shrunk)[:, without]
            rows.append((side, label == "without_mask", probs))
    print(json.dumps({"photos": len(rows), "threshold": clf.threshold}))
    for i, k in enumerate(FACTORS, start=1):
        for lo, hi in BINS:
            sel = [r for r in rows if lo <= r[0] / k < hi]
            if len(sel) < 20:
                continue
            truth = np.array([r[1] for r in sel])
            as_is = np.array([r[2][0] for r in sel]) >= clf.threshold
            small = np.array([r[2][i] for r in sel]) >= clf.threshold
            print(json.dumps({
                "factor": k, "shrunk_side": f"{lo}-{hi if hi < 1 << 20 else 'up'}",
                "photos": len(sel),
                "accuracy_as_is": round(float(np.mean(as_is == truth)), 4),
                "accuracy_shrunk": round(float(np.mean(small == truth)), 4),
                "agreement": round(float(np.mean(as_is == small)), 4),
                "mean_abs_change_p_without": round(float(np.mean(
                    [abs(r[2][i] - r[2][0]) for r in sel])), 4),
            }))


if __name__ == "__main__":
    main()
