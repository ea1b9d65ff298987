"""Measure `maskwatch calibrate` on the held-out 853 scenes, as two simulated sites.

The 853 set's held-out test scenes (the split scripts/train_bundled.py makes: ratios
0.7/0.15/0.15, seed 0; only the split is redone here, nothing is trained) are shuffled
(seeded) into 10% to calibrate on and 90% to score on, for two sites:

  faces  the boxes as annotated (the convention maskwatch's defaults were set on);
  heads  the same scenes with every box grown into a whole-head box by a fixed rule
         (width x1.4, height x1.6, centre 0.15 face heights up, clipped to the image).

For each site it runs `maskwatch calibrate` on the 10% (all of it fitted: --holdout 0) and
`maskwatch evaluate-detection` on the 90% with the bundled model and with the site model
(mAP, and the pipeline's milliseconds per photo), printing each command and, at the end,
one JSON summary.

Usage: python scripts/site_calibration.py --datasets ../shared/datasets --out runs/site
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from maskwatch.data import load_dataset, split_dataset, write_manifest  # noqa: E402
from maskwatch.detection.faces import calibrate_box  # noqa: E402

#: Whole-head boxes from face boxes: width, height scale; centre x, y shift (box sizes).
HEAD_RULE = (1.4, 1.6, 0.0, -0.15)
SPLIT_RATIOS = (0.7, 0.15, 0.15)  # as scripts/train_bundled.py splits the 853 set


def head_box(box, width: int, height: int):
    x1, y1, x2, y2 = calibrate_box(box, HEAD_RULE)
    return (max(0, round(x1)), max(0, round(y1)), min(width, round(x2)), min(height, round(y2)))


def run(cmd: list[str]) -> dict:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="../shared/datasets", help="datasets folder")
    ap.add_argument("--out", default="runs/site", help="folder for manifests and models")
    ap.add_argument("--seed", type=int, default=0, help="seed of the 10%% / 90%% shuffle")
    ap.add_argument("--fraction", type=float, default=0.1, help="share to calibrate on")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ds = load_dataset(Path(args.datasets) / "face-mask-detection-853")
    split, _ = split_dataset(ds, SPLIT_RATIOS, seed=0, workers=2)
    test = [s for s in split if s.split == "test"]
    write_manifest(out / "s853-test-scenes.csv", test, force=True)
    images = sorted({str(s.path) for s in test})
    order = np.random.default_rng(args.seed).permutation(len(images))
    k = round(len(images) * args.fraction)
    calib = {images[i] for i in order[:k]}
    sizes = {}
    for p in images:
        with Image.open(p) as im:
            sizes[p] = im.size
    parts = {}
    for site in ("faces", "heads"):
        samples = test
        if site == "heads":
            samples = [replace(s, box=head_box(s.box, *sizes[str(s.path)])) for s in test]
        for part, keep in (("calib", True), ("rest", False)):
            path = out / f"{site}-{part}.csv"
            write_manifest(path, [replace(s, split=None) for s in samples
                                  if (str(s.path) in calib) == keep], force=True)
            parts[site, part] = path
    mw = [sys.executable, "-m", "maskwatch"]
    common = ["--threads", str(args.threads), "--quiet"]
    summary: dict = {"scenes": len(images), "calibrate_scenes": k,
                     "scored_scenes": len(images) - k, "head_rule": HEAD_RULE, "sites": {}}
    for site in ("faces", "heads"):
        model = out / f"{site}.onnx"
        fitted = run([*mw, "calibrate", str(parts[site, "calib"]), "--out", str(model),
                      "--holdout", "0", "--force", *common])
        before = run([*mw, "evaluate-detection", "--data", str(parts[site, "rest"]), "--json",
                      *common])
        after = run([*mw, "evaluate-detection", "--data", str(parts[site, "rest"]), "--json",
                     "--model", str(model), *common])
        keys = ("map50", "map30", "precision50", "recall50", "false_boxes_per_image",
                "loose_match_share", "ms_per_image")
        summary["sites"][site] = {
            "fitted": {k: fitted[k] for k in ("box_map", "min_face", "face_threshold",
                                               "mask_threshold")},
            "kept_default": fitted["fit"]["kept_default"],
            "before": {k: before[k] for k in keys},
            "after": {k: after[k] for k in keys},
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
