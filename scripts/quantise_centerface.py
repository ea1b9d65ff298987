"""Build the int8 CenterFace shipped as src/maskwatch/assets/centerface_int8.onnx.

Static int8 (QDQ, per-channel weights, MinMax activation ranges) of the published
CenterFace network, calibrated on the inputs the detector itself feeds the network (both
passes, default sizes) for photos of the 853 set's training scenes only, so the held-out
scenes that MODEL_CARD scores stay unseen.

Usage: python scripts/quantise_centerface.py --scenes runs/bundled/s853-train.csv
(the manifest `scripts/train_bundled.py` writes; any scene layout `data` reads works).
The variants MODEL_CARD compares: `--stem-convs 0 --quantise-heads` (every layer int8) and
`--stem-convs 0` (only the output convolutions float), each with `--out OTHER.onnx`, then
`maskwatch evaluate-detection --data runs/bundled/s853-val.csv --json` with a detector
built on it (Python: `CenterFaceDetector(model_path=OTHER.onnx)`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from maskwatch.detection.evaluate import load_scenes  # noqa: E402
from maskwatch.export import FLOAT_STEM_CONVS, quantise_centerface  # noqa: E402
from maskwatch.imaging import load_rgb  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "src" / "maskwatch" / "assets"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="runs/bundled/s853-train.csv",
                    help="calibration scenes (training scenes only)")
    ap.add_argument("--limit", type=int, default=60, help="scenes used for calibration")
    ap.add_argument("--seed", type=int, default=0, help="seed for picking the scenes")
    ap.add_argument("--out", default=str(ASSETS / "centerface_int8.onnx"),
                    help="int8 model to write")
    ap.add_argument("--stem-convs", type=int, default=FLOAT_STEM_CONVS,
                    help="first convolutions kept in float (0: quantise them too)")
    ap.add_argument("--quantise-heads", action="store_true",
                    help="quantise the output convolutions too (kept float by default)")
    args = ap.parse_args()
    scenes = load_scenes(args.scenes)
    random.Random(args.seed).shuffle(scenes)
    photos = [load_rgb(sc.path) for sc in scenes[:args.limit]]
    out = quantise_centerface(Path(args.out), photos, stem_convs=args.stem_convs,
                              float_heads=not args.quantise_heads)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}: {out.stat().st_size:,} bytes, SHA-256 {digest}, "
          f"calibrated on {len(photos)} photos of {args.scenes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
