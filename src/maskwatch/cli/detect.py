"""`maskwatch detect`, `maskwatch evaluate-detection` and `maskwatch demo`."""

from __future__ import annotations

import argparse

from maskwatch.cli.common import (
    DETECTORS,
    add_alert_arguments,
    add_alias,
    add_batch_arguments,
    add_command,
    add_detector_arguments,
    add_model_argument,
    add_overwrite_argument,
    add_save_arguments,
    add_threads_argument,
    detector_options,
    margin,
    non_negative_int,
    number,
    output_folder,
    positive_int,
    print_json,
    warn_unused_site,
)

ORDER = 40

def _add_drawing_arguments(p: argparse.ArgumentParser) -> None:
    from maskwatch.detection.draw import BLUR_CHOICES

    g = p.add_argument_group("drawing (annotated copies)")
    g.add_argument("--no-labels", action="store_true",
                   help="boxes only: no caption over each face and no count overlay")
    g.add_argument("--no-scores", action="store_true",
                   help="captions without the probability (e.g. 'no mask')")
    g.add_argument("--line-width", type=positive_int, default=None, metavar="PX",
                   help="box line width in pixels (default: grows with face and image size)")
    g.add_argument("--blur", nargs="?", const="all", default=None, choices=BLUR_CHOICES,
                   help="blur faces in everything written: all of them (--blur), or only "
                   "--blur masked / --blur unmasked (default: no blur)")


def _annotator(args: argparse.Namespace):
    from maskwatch.detection.draw import Annotator

    return Annotator(labels=not args.no_labels, scores=not args.no_scores,
                     width=args.line_width, blur=args.blur)


def register(subparsers) -> None:
    p = add_command(
        subparsers, "detect",
        help="find faces in images, videos, cameras or streams and label each one's mask",
        description="Find faces and label each: with_mask, without_mask (or incorrect_mask).\n"
        "INPUT: image files, folders (recursive), globs, video files, a camera index (0) or\n"
        "a stream URL (rtsp://, http://). Exit status 1 if an input failed.\n\n"
        "Annotated copies (boxes, labels; videos as H.264 .mp4 with their audio) are saved\n"
        "to a new folder runs/detect/N, named at the end; -o DIR chooses the folder and\n"
        "--no-save skips them. Cameras and streams are saved only with -o. A caption reads\n"
        "'no mask 0.93': the label and its probability; 'maybe' marks a label below 0.5,\n"
        "chosen because P(no mask) reached the model's low threshold (see -t).\n\n"
        "Several images: with --threads 0 (default) one image per CPU core is in flight,\n"
        "each model on one thread; --threads N runs one image at a time on N threads.\n\n"
        "Large collections: -w N spreads the images over N processes (own detector,\n"
        "1 thread each unless --threads); results are recorded in input order. Videos are\n"
        "not split: each runs in the main process, frame by frame, after the images.\n"
        "-r FILE.jsonl|.csv writes each image's (or frame's) result as it comes, flushed;\n"
        "--resume skips what FILE holds; --shard I/N takes part I of N of the inputs.\n"
        "--ray [ADDRESS] runs the images on a Ray cluster's actors instead (same output).",
        examples=[
            "maskwatch detect street.jpg                  # saved to runs/detect/N",
            "maskwatch detect photos/ clip.mp4 -o annotated/ --blur unmasked",
            "maskwatch detect 0 --alert-command ./notify.sh --no-save   # camera 0",
            "maskwatch detect /data/photos -w 8 -r faces.csv --no-save -q",
            "maskwatch detect /shared/photos --ray 10.0.0.5:6379 -r faces.csv --no-save -q",
        ],
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, globs, videos, "
                   "camera index or stream URL")
    add_save_arguments(p, "annotated copies (images keep their name, videos become .mp4)")
    p.add_argument("-j", "--json", action="store_true",
                   help="print one JSON object per image or video frame on stdout")
    add_overwrite_argument(p, "replace existing files (annotated copies, --results) instead "
                           "of adding -1, -2... to names or refusing")
    add_model_argument(p)
    p.add_argument("--faces-only", action="store_true",
                   help="only detect faces, without the mask classifier")
    add_detector_arguments(p)
    p.add_argument("--margin", type=margin, default=0.15,
                   help="context added around each face before classification (fraction of "
                   "the box per side)")
    p.add_argument("--max-frames", type=positive_int, default=None,
                   help="stop each video, camera or stream after this many frames")
    _add_drawing_arguments(p)
    from maskwatch.detection.draw import COPY_SIZE

    p.add_argument("--copy-size", type=non_negative_int, default=COPY_SIZE, metavar="PX",
                   help="annotated copies of larger photos and videos are drawn at 1/2, "
                   "1/4 or 1/8 size, keeping a long side of at least PX (0: full size; "
                   f"default: {COPY_SIZE}). Boxes stay in the input's own pixels")
    p.add_argument("--detect-every", type=positive_int, default=1, metavar="N",
                   help="videos, cameras, streams: detect on every Nth frame only; frames "
                   "between carry the tracked faces forward (default: 1, every frame; see "
                   "README for what N costs in accuracy)")
    add_alert_arguments(p, "alerts (videos, cameras, streams)")
    add_threads_argument(p)
    add_batch_arguments(p)  # --workers, --results, --resume, --shard
    add_alias(p, "--csv", "results")  # the old per-face CSV: now --results FILE.csv
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_detect)

    e = add_command(
        subparsers, "evaluate-detection",
        help="score face detection + mask labels on annotated scenes (VOC mAP, recall)",
        description="Score the detect pipeline on scenes with boxes (any layout `maskwatch\n"
        "data` reads: VOC, box CSV, YOLO, manifest), and explain the score:\n"
        "  - VOC AP per class and their mean over with_mask/without_mask, at IoU 0.5 and 0.3;\n"
        "  - face recall and precision whatever the class, at IoU 0.5 and 0.3;\n"
        "  - false boxes per image by box size (small unannotated background faces?);\n"
        "  - the share of boxes that match only at IoU 0.3-0.5 (a high share hints that\n"
        "    the annotators draw boxes another way: see `maskwatch calibrate`).\n"
        "--faces-only scores the face detector alone.",
        examples=[
            "maskwatch evaluate-detection -d face-mask-detection/",
            "maskwatch evaluate-detection -d scenes.csv --upscale --face-threshold 0.2 -j",
            "maskwatch evaluate-detection -d split/manifest.csv --split test",
        ],
    )
    e.add_argument("-d", "--data", required=True, metavar="DIR",
                   help="dataset with boxes, e.g. annotations/*.xml + images/")
    e.add_argument("-j", "--json", action="store_true", help="print one JSON object on stdout")
    e.add_argument("--limit", type=positive_int, default=None, help="only the first N scenes")
    e.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="only the scenes of this split, as `data split` assigned them "
                   "(data without splits is read whole) (default: all)")
    add_model_argument(e)
    e.add_argument("--faces-only", action="store_true",
                   help="score the face detector alone (no classifier, no AP)")
    add_detector_arguments(e)
    e.add_argument("--margin", type=margin, default=0.15,
                   help="context added around each face before classification")
    e.add_argument("--recall-iou", type=number(above=0.0, high=1.0), default=0.4,
                   help="IoU at which a ground-truth face counts as found for recall and "
                   "false boxes")
    add_threads_argument(e)
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=run_evaluate)

    d = add_command(
        subparsers, "demo",
        help="run the pipeline on a sample photo (unmasked + masked copy) and save the result",
        description="Run the pipeline on the sample portrait that ships with matplotlib, once\n"
        "as it is and once with a mask drawn on, and save maskwatch-demo.jpg.",
        examples=["maskwatch demo                 # saved to runs/demo/N",
                  "maskwatch demo -o out/demo --blur"],
    )
    add_save_arguments(d, "maskwatch-demo.jpg")
    add_overwrite_argument(d, "replace an existing demo image")
    add_model_argument(d)
    d.add_argument("--detector", default="centerface", choices=DETECTORS, help="face detector")
    _add_drawing_arguments(d)
    add_threads_argument(d)
    d.set_defaults(func=run_demo)


def run_detect(args: argparse.Namespace) -> int:
    from maskwatch.detection.runner import run_detect as _run
    from maskwatch.detection.video import is_camera, is_stream

    live_only = all(is_camera(i) or is_stream(i) for i in args.inputs)
    if live_only and not args.out:
        return _run(args.inputs, detector_options(args), out=None, **_run_options(args))
    with output_folder(args, "detect") as out:
        return _run(args.inputs, detector_options(args), out=out, **_run_options(args))


def _run_options(args: argparse.Namespace) -> dict:
    return dict(
        save_live=bool(args.out), annotate=_annotator(args), json_lines=args.json,
        overwrite=args.overwrite, max_frames=args.max_frames,
        detect_every=args.detect_every,
        alert_after=args.alert_after, alert_command=args.alert_command,
        alert_url=args.alert_url, alert_interval=args.alert_interval, workers=args.workers,
        results=args.results, resume=args.resume, shard=args.shard, ray=args.ray,
        quiet=args.quiet, non_compliant=args.non_compliant, copy_size=args.copy_size,
    )


def run_demo(args) -> int:
    from maskwatch.detection.demo import run_demo as _run

    with output_folder(args, "demo") as out:
        return _run(out, args.detector, args.model, args.threads, args.overwrite,
                    _annotator(args))


def run_evaluate(args) -> int:
    from maskwatch.console import note
    from maskwatch.detection.evaluate import evaluate_detection, load_scenes
    from maskwatch.detection.pipeline import Detector

    scenes = load_scenes(args.data, args.limit, warn=lambda m: note(f"warning: {m}"),
                         split=args.split)  # --quiet hides progress bars, not warnings
    detector = Detector(**detector_options(args))
    warn_unused_site(detector, args.model)
    report = evaluate_detection(
        scenes, detector.detect, recall_iou=args.recall_iou, progress=not args.quiet,
        on_error=lambda msg: note(f"error: {msg}"),
        count_threshold=detector.count_threshold, read=detector.read,  # as detect reads
        classified=not args.faces_only,
    )
    report["split"] = args.split
    report["detector"] = detector.face_detector.name
    report["face_threshold"] = detector.face_detector.threshold
    report["min_face"] = detector.min_face
    report["box_map"] = list(detector.box_map) if detector.box_map else None
    report["threshold"] = detector.threshold
    report["site"] = detector.site is not None
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    return 1 if report["failed"] else 0


#: loose_match_share above which evaluate-detection suggests `maskwatch calibrate`.
LOOSE_HINT = 0.3


def _print_report(r: dict) -> None:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    split = "" if r.get("split", "all") == "all" else f" of split {r['split']}"
    failed = f" ({r['failed']} could not be read)" if r.get("failed") else ""
    print(f"{r['images']} scenes{split}{failed}, {r['faces']} faces; detector {r['detector']} "
          f"(threshold {r['face_threshold']}), {r['ms_per_image']:.1f} ms per image")
    if r.get("difficult_faces") or r.get("images_without_faces"):
        print(f"  also {r.get('difficult_faces', 0)} difficult faces (neither found nor "
              f"missed) and {r.get('images_without_faces', 0)} scenes without a face (every "
              "box there is false)")
    if r.get("site") or r.get("min_face"):
        site = "site model's settings" if r.get("site") else "settings"
        mask = "" if r.get("threshold") is None else f", without_mask threshold {r['threshold']}"
        print(f"{site}: box map {r.get('box_map')}, smallest face {r['min_face']} px, face "
              f"threshold {r['face_threshold']}{mask}")
    print(f"face recall (IoU >= {r['recall_iou']}): {pct(r['recall'])} "
          f"(faces >= 32 px: {pct(r['recall_32px'])})")
    for c, v in r["recall_by_class"].items():
        print(f"  {c:<16} {pct(v)}")
    print("faces, whatever the class: "
          f"at IoU 0.5 precision {pct(r['precision50'])}, recall {pct(r['recall50'])}, "
          f"AP {pct(r['face_ap50'])}; at IoU 0.3 precision {pct(r['precision30'])}, "
          f"recall {pct(r['recall30'])}, AP {pct(r['face_ap30'])}")
    sizes = ", ".join(f"{k} {v:.2f}" for k, v in r["false_boxes_by_size"].items())
    print(f"false boxes per image: {r['false_boxes_per_image']:.2f} ({sizes}); median side "
          f"{r['false_box_px_median'] or '-'} px vs annotated faces {r['face_px_median']} px")
    print(f"boxes matching only at IoU 0.3-0.5: {pct(r['loose_match_share'])}")
    if (r["loose_match_share"] or 0) > LOOSE_HINT:
        print("  hint: many boxes sit loosely on the annotated ones - the annotators may draw "
              "boxes another way (e.g. whole heads); `maskwatch calibrate` fits that")
    if "ap50" in r:
        for c, v in r["ap50"].items():
            print(f"AP50 {c:<16} {pct(v)}   AP30 {pct(r['ap30'].get(c))}")
        print(f"mAP (with_mask, without_mask): at IoU 0.5 {pct(r['map50'])}, "
              f"at IoU 0.3 {pct(r['map30'])}")
    c = r.get("counting")
    if c:
        print(f"counted faces (face score >= {c['count_threshold']:g}): {c['counted_boxes']} "
              f"boxes, at IoU 0.5 precision {pct(c['precision50'])}, recall "
              f"{pct(c['recall50'])}; face count off by {c['count_error_per_image']:.2f} "
              "a photo")
        if "missed" in c:
            print(f"  photos flagged as holding a {'/'.join(c['non_compliant'])} face: "
                  f"wrongly {c['flagged_wrongly']} of {c['images_without_non_compliant']} "
                  f"without one; missed {c['missed']} of {c['images_with_non_compliant']} "
                  "with one")
        for label, share in c.get("shares", {}).items():
            if label != "with_mask":
                print(f"  {label} share: annotated {pct(share['annotated'])}, by label "
                      f"{pct(share['labelled'])}, by mean probability "
                      f"{pct(share['mean_probability'])}")
