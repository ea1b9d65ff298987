"""`maskwatch export`: checkpoint -> ONNX (and int8), checked against torch."""

from __future__ import annotations

import sys

from maskwatch.cli.common import (
    add_command,
    add_overwrite_argument,
    non_negative_int,
    positive_int,
    print_json,
)

ORDER = 35


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "export",
        help="export a trained checkpoint to ONNX, optionally quantised to int8",
        description="Export a .safetensors checkpoint to ONNX (dynamic batch), compare its "
        "probabilities with torch on real face images, and optionally quantise it to int8 "
        "with ONNX Runtime, measuring the accuracy change on held-out images.",
        examples=["maskwatch export -m runs/r1/best.safetensors",
                  "maskwatch export -m runs/r1/best.safetensors --int8 --check-data val.csv "
                  "-o model.onnx"],
    )
    p.add_argument("-m", "--model", required=True,
                   help="checkpoint (.safetensors) from maskwatch train")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    p.add_argument("-o", "--out", default=None,
                   help="output .onnx path (default: beside the model)")
    p.add_argument("--int8", action="store_true", help="also write an int8-quantised model")
    p.add_argument(
        "--check-data", default=None,
        help="dataset whose faces check torch vs ONNX and calibrate int8 (default: random images)",
    )
    p.add_argument(
        "--eval-data", default=None,
        help="held-out dataset on which the fp32 and int8 accuracies are measured",
    )
    p.add_argument("--limit", type=positive_int, default=300, help="images taken from each dataset")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for picking images")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset")
    add_overwrite_argument(p, "replace existing output files")
    p.add_argument("-j", "--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)


def _faces(path: str | None, limit: int, seed: int, margin: float = 0.0,
           classes: list[str] | None = None, option: str = "--check-data"):
    """Up to ``limit`` face crops and their labels from a dataset, picked at random
    (boxes grown by ``margin``, as the model's training crops were). With ``classes``,
    faces of other classes are left out (and counted on stderr), as evaluate does; a
    dataset without one readable face is an error naming ``option``."""
    import numpy as np

    if path is None:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(32)], []
    from maskwatch.data import load_dataset, read_face
    from maskwatch.errors import ImageError, MaskwatchError

    samples = list(load_dataset(path).samples)
    if classes is not None:
        kept = [s for s in samples if s.label in classes]
        if len(kept) < len(samples):
            print(f"maskwatch: {option} {path}: left out {len(samples) - len(kept)} face(s) "
                  f"of classes the model lacks", file=sys.stderr)
        samples = kept
    order = np.random.default_rng(seed).permutation(len(samples))[:limit]
    faces, labels = [], []
    for i in order:
        try:
            faces.append(read_face(samples[i], margin))
            labels.append(samples[i].label)
        except ImageError as exc:  # a bad file is reported and skipped
            print(f"maskwatch: skipping {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - reported and skipped too
            print(f"maskwatch: skipping {samples[i].path}: {exc}", file=sys.stderr)
    if not faces:
        raise MaskwatchError(f"{option} {path}: no readable face"
                             + (f" of the model's classes {', '.join(classes)}" if classes
                                else ""))
    return faces, labels


def run(args) -> int:
    from pathlib import Path

    from maskwatch.errors import MaskwatchError
    from maskwatch.models.checkpoint import load_checkpoint

    src = Path(args.model)
    if src.suffix.lower() == ".onnx":
        raise MaskwatchError(f"{src}: is an ONNX model already; export takes a .safetensors "
                             "checkpoint from maskwatch train")
    out = Path(args.out) if args.out else src.with_suffix(".onnx")
    int8_out = out.with_name(out.stem + ".int8.onnx")
    targets = [out, out.with_suffix(".json")] + ([int8_out] if args.int8 else [])
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise MaskwatchError(f"{existing[0]} exists; pass --overwrite to replace it")

    model, info = load_checkpoint(src, device="cpu")
    try:
        report = _export_and_check(args, model, info, out, int8_out)
    except BaseException:  # a model that failed its checks must not be found and used
        for target in targets:
            target.unlink(missing_ok=True)
        raise
    if args.json:
        print_json(report)
    else:
        for key, value in report.items():
            shown = f"{value:.6f}" if isinstance(value, float) else value
            print(f"{key:>22}: {shown}")
    return 0


def _export_and_check(args, model, info, out, int8_out) -> dict:
    """Write the ONNX model (and its int8 copy), check them against torch: the report."""
    import numpy as np

    from maskwatch.export import accuracy, export_onnx, quantise_int8, torch_probabilities
    from maskwatch.inference.classifier import Classifier

    export_onnx(model, info, out, opset=args.opset)
    margin = float(info.extra.get("margin", 0.0))
    faces, _ = _faces(args.check_data, args.limit, args.seed, margin)
    ref = torch_probabilities(model, info, faces)
    fp32_model = Classifier(out)
    fp32 = fp32_model.predict_proba(faces)
    report = {
        "onnx": str(out),
        "checked_images": len(faces),
        "check_data": args.check_data or "random noise images",
        "max_prob_diff": float(np.abs(ref - fp32).max()) if len(faces) else 0.0,
    }
    eval_faces, eval_labels = _faces(args.eval_data, args.limit, args.seed + 1, margin,
                                     info.classes, "--eval-data")
    if args.eval_data:
        report["eval_images"] = len(eval_faces)
        report["accuracy_torch"] = accuracy(torch_probabilities(model, info, eval_faces),
                                            eval_labels, info)
        report["accuracy_fp32"] = accuracy(fp32_model.predict_proba(eval_faces), eval_labels,
                                           info)
    if args.int8:
        quantise_int8(out, int8_out, info, faces)
        int8_model = Classifier(int8_out)
        q = int8_model.predict_proba(faces)
        report["int8"] = str(int8_out)
        report["int8_max_prob_diff"] = float(np.abs(ref - q).max()) if len(faces) else 0.0
        if args.eval_data:
            report["accuracy_int8"] = accuracy(
                int8_model.predict_proba(eval_faces), eval_labels, info
            )
            report["accuracy_change_int8"] = report["accuracy_int8"] - report["accuracy_fp32"]
    return report
