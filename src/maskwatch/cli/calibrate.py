"""``maskwatch calibrate``: fit the detect pipeline to a site's own annotated scenes."""

from __future__ import annotations

ORDER = 45


def register(subparsers) -> None:
    from maskwatch.cli.common import (
        add_command,
        add_model_argument,
        add_overwrite_argument,
        add_threads_argument,
        fraction,
        non_negative_int,
    )
    from maskwatch.cli.detect import DETECTORS

    p = add_command(
        subparsers, "calibrate",
        help="fit maskwatch to a site's own annotated photos (box convention, smallest face, "
        "thresholds)",
        description="Fit the detect pipeline to 20-200 annotated scenes of one site (any layout\n"
        "`maskwatch data` reads: VOC, box CSV, YOLO, manifest) and write a copy of the\n"
        "classifier that carries the fitted settings; give it to detect, serve, classify or\n"
        "evaluate-detection as --model SITE.onnx (their explicit options still win).\n\n"
        "Fitted: the box convention (scale and centre shift from the detector's boxes to the\n"
        "annotated ones, e.g. whole heads), the smallest face the site annotates, the face\n"
        "threshold and the without_mask threshold. It fits conventions and thresholds, not\n"
        "new faces: faces the detector cannot find stay unfound. A setting replaces its\n"
        "default only when it scores better on the fitting scenes, and the whole fit only\n"
        "when it beats the defaults there by --margin (mAP@0.5). Faces marked difficult\n"
        "count neither way and photos annotated as holding no face count, as in\n"
        "evaluate-detection. A site model given as --model is fitted again from the\n"
        "defaults: its settings are replaced, not built on. Prints one JSON object, with\n"
        "mAP before and after on a held-out part of the scenes; exit status 1 when some\n"
        "photos could not be read.",
        examples=["maskwatch calibrate site-photos/ -o site.onnx",
                  "maskwatch detect camera1/ -m site.onnx -j"],
    )
    p.add_argument("scenes", metavar="SCENES", help="annotated scenes: a folder, CSV or manifest")
    p.add_argument("-o", "--out", required=True, metavar="SITE.onnx",
                   help="the fitted model to write (an .onnx with its .json beside it)")
    add_model_argument(p)
    p.add_argument("--detector", default="centerface", choices=DETECTORS,
                   help="face detector to fit for")
    p.add_argument("--detect-size", type=int, default=None,
                   help="long side images are shrunk to for face detection (default: as "
                   "detect does)")
    p.add_argument("--upscale", action="store_true", default=None,
                   help="also enlarge small images for detection (as detect --upscale)")
    p.add_argument("--holdout", type=float, default=0.3,
                   help="share of the scenes held out from fitting and scored before/after "
                   "(0: fit on all, no before/after)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the held-out choice")
    p.add_argument("--margin", type=fraction, default=0.01,
                   help="mAP@0.5 the fit must gain on the fitting scenes to replace the "
                   "detector's own settings (default: 0.01)")
    add_overwrite_argument(p, "replace an existing --out")
    add_threads_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from maskwatch.cli.common import print_json
    from maskwatch.console import note
    from maskwatch.detection.calibrate import calibrate

    report = calibrate(
        args.scenes, args.out, model=args.model, detector=args.detector,
        detect_size=args.detect_size, upscale=args.upscale, holdout=args.holdout,
        seed=args.seed, margin=args.margin, threads=args.threads, force=args.overwrite,
        progress=not args.quiet,
        on_error=lambda msg: note(f"error: {msg}"),
    )
    print_json(report)
    return 1 if report["unreadable_scenes"] else 0  # as detect and evaluate-detection
