"""``maskwatch evaluate`` (metrics on a labelled dataset) and ``maskwatch classify``."""

from __future__ import annotations

import os
import sys

ORDER = 30


def register(subparsers) -> None:
    from maskwatch.cli.common import (
        add_batch_arguments,
        add_command,
        add_model_argument,
        add_overwrite_argument,
        add_save_arguments,
        add_threads_argument,
        add_threshold_argument,
        margin,
        positive_int,
    )

    p = add_command(
        subparsers, "evaluate", help="measure a classifier on a labelled dataset",
        description="Measure a classifier on a labelled dataset: accuracy, balanced accuracy, "
        "per-class precision/recall/F1, the confusion matrix (3x3 for a three-class model), "
        "specificity and ROC-AUC (without_mask vs rest).\n\n"
        "A dataset that lacks some of the model's classes (a three-class model on\n"
        "with/without folders) is scored with the decision restricted to the dataset's\n"
        "classes: without_mask when P(without_mask) >= threshold, as deployed, else the\n"
        "likelier of the classes left; with_mask and without_mask always stay. The report\n"
        "states the rule and how many faces the full model answered with a left-out class.\n\n"
        "The report (metrics.json, confusion matrix and ROC plots, a gallery of the mistakes)\n"
        "goes to a new folder runs/evaluate/N, named at the end; -o DIR chooses it, --no-save\n"
        "skips it. A warning says when the model's metadata lists the dataset among its\n"
        "training data: scores on data the model saw are optimistic.",
        examples=[
            "maskwatch evaluate -d faces/ -m runs/r1/best.safetensors",
            "maskwatch evaluate -d split/manifest.csv --split test -t 0.5 -j",
            "maskwatch evaluate -d val.csv -m model.onnx --target-recall 0.98 --write-threshold",
            "maskwatch evaluate -d val.csv -m model.onnx --target-recall 0.98 "
            "--max-false-alarms 0.02",
        ],
    )
    p.add_argument("-d", "--data", required=True, help="dataset folder, CSV or manifest")
    add_model_argument(p)
    add_threshold_argument(p)
    p.add_argument("--split", default="test",
                   help="split to score: train, val, test or all (data without splits: all)")
    p.add_argument("--margin", type=margin, default=None,
                   help="grow face boxes by this fraction per side (default: the model's, "
                   "else 0.1)")
    p.add_argument("--mapping", default=None, help="dataset class name -> label mapping")
    p.add_argument("--incorrect", choices=("drop", "merge"), default="drop",
                   help="incorrect_mask faces for a 2-class model: drop them, or count them "
                   "as without_mask (default: drop)")
    add_save_arguments(p, "the report: metrics, confusion/ROC plots, a gallery of mistakes")
    p.add_argument("--target-recall", type=float, default=None,
                   help="choose the without_mask threshold reaching this recall (e.g. 0.98)")
    p.add_argument("--max-false-alarms", type=float, default=None, metavar="SHARE",
                   help="with --target-recall: never choose a threshold that flags more than "
                   "this share of the with_mask faces (e.g. 0.02); recall may then fall "
                   "short of the target, and the output says so (default: no cap)")
    p.add_argument("--write-threshold", action="store_true",
                   help="store the chosen threshold in a copy of the model beside it "
                   "(<name>.recallR.*), or in the model itself with --overwrite")
    add_overwrite_argument(p, "allow replacing the model (--write-threshold) or files in -o")
    p.add_argument("--batch-size", type=positive_int, default=64, help="faces per inference batch")
    p.add_argument("-j", "--json", action="store_true", help="print one JSON object")
    add_threads_argument(p)
    p.set_defaults(func=run_evaluate)

    c = add_command(
        subparsers, "classify", help="label face images (mask / no mask)",
        description="Label face crops: each image is taken as one face.\n\n"
        "Large collections: --workers N runs N processes (own model, 1 thread each unless\n"
        "--threads); results keep the input order. -r FILE.jsonl|.csv writes each\n"
        "result as it comes (flushed, so a crash keeps what was written); --resume skips\n"
        "images already in FILE; --shard I/N spreads one job over N machines by hand.\n"
        "--ray [ADDRESS] runs on a Ray cluster's actors instead (same output, Ray retries\n"
        "failed workers): see README, \"Several GPUs, machines, or millions of images\".",
        examples=[
            "maskwatch classify face.jpg crops/ \"more/*.png\"",
            "maskwatch classify crops/ -t 0.5 -j",
            "maskwatch classify /data/crops -w 4 -r crops.jsonl --resume",
            "maskwatch classify /data/crops --ray auto -r crops.jsonl",
        ],
    )
    c.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs")
    add_model_argument(c)
    c.add_argument("-j", "--json", action="store_true",
                   help="one JSON object per image: path, label, score, scores")
    c.add_argument("--batch-size", type=positive_int, default=32, help="faces per inference batch")
    add_threshold_argument(c)
    add_threads_argument(c)
    add_batch_arguments(c)
    add_overwrite_argument(c, "replace an existing --results file")
    c.set_defaults(func=run_classify)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _human(m: dict, threshold_info: dict | None, failed: int, dropped: int) -> str:
    d = m["decision"]
    lines = []
    if d["left_out"]:
        lines += [f"the dataset has no {', '.join(d['left_out'])}: {d['rule']} "
                  f"({d['answers_left_out']} face(s) the full model answers "
                  f"{' or '.join(d['left_out'])})", ""]
    lines += [
        f"faces: {m['n']}" + (f" ({failed} unreadable skipped)" if failed else "")
        + (f" ({dropped} of classes the model lacks dropped)" if dropped else ""),
        f"threshold (without_mask): {m['threshold']:.4f}",
        f"accuracy:          {_fmt(m['accuracy'])}",
        f"balanced accuracy: {_fmt(m['balanced_accuracy'])}",
        f"recall without_mask: {_fmt(m['recall_positive'])}   "
        f"specificity: {_fmt(m['specificity'])}   ROC-AUC: {_fmt(m['roc_auc'])}",
        "",
        f"{'class':16s} {'precision':>9s} {'recall':>7s} {'f1':>7s} {'support':>8s}",
    ]
    for name, r in m["classes"].items():
        lines.append(f"{name:16s} {r['precision']:9.4f} {r['recall']:7.4f} {r['f1']:7.4f} "
                     f"{r['support']:8d}")
    lines += ["", "confusion matrix (rows true, columns predicted):",
              " " * 16 + "".join(f"{c[:14]:>15s}" for c in m["labels"])]
    for name, row in zip(m["labels"], m["confusion_matrix"]):
        lines.append(f"{name:16s}" + "".join(f"{v:15d}" for v in row))
    if threshold_info:
        t = threshold_info
        lines += ["", f"threshold for recall >= {t['target_recall']}: {t['threshold']:.4f} "
                  f"(was {t['previous']:.4f}): recall {t['recall']:.4f}, "
                  f"specificity {_fmt(t['specificity'])}"]
        if t.get("false_alarms") is not None:
            lines.append(f"with_mask faces flagged at it: {t['false_alarms']:.4f}"
                         + (f" (cap {t['max_false_alarms']:g})"
                            if t["max_false_alarms"] is not None else ""))
        if not t["reached"] and t["max_false_alarms"] is not None:
            lines.append(f"the target recall is not reached: the cap (at most "
                         f"{t['max_false_alarms']:g} of with_mask faces flagged) holds the "
                         f"threshold up")
        if t.get("written_to"):
            lines.append(f"written to {t['written_to']}")
    return "\n".join(lines)


def run_evaluate(args) -> int:
    from pathlib import Path

    from maskwatch.cli.common import print_json, save_folder
    from maskwatch.console import note
    from maskwatch.data import load_dataset, read_face
    from maskwatch.errors import MaskwatchError
    from maskwatch.evaluation.evaluate import (
        choose_threshold,
        map_label,
        map_labels,
        score_samples,
        scored_classes,
        select_split,
        trained_on,
        write_threshold,
    )
    from maskwatch.inference.classifier import Classifier

    if args.write_threshold and args.target_recall is None:
        raise MaskwatchError("--write-threshold needs --target-recall")
    if args.write_threshold and not args.model:
        raise MaskwatchError("--write-threshold needs --model (the bundled model is read-only)")
    if args.target_recall is not None and not 0 < args.target_recall <= 1:
        raise MaskwatchError("--target-recall must be between 0 and 1")
    if args.max_false_alarms is not None:
        if args.target_recall is None:
            raise MaskwatchError("--max-false-alarms needs --target-recall")
        if not 0 <= args.max_false_alarms <= 1:
            raise MaskwatchError("--max-false-alarms must be between 0 and 1")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and any(out.iterdir()) and not args.overwrite:
        raise MaskwatchError(f"{out}: folder is not empty; choose another -o or pass "
                             "--overwrite")
    ds = load_dataset(args.data, mapping=args.mapping)
    for line in ds.loading_warnings():  # an unknown class folder, bad rows: said
        note(f"warning: {line}")
    # chunks of faces side by side, one a thread, each with a one-thread model run
    workers = args.threads or os.cpu_count() or 1
    clf = Classifier(args.model, threads=1, batch_size=args.batch_size,
                     threshold=args.threshold)
    seen = trained_on(clf.info.extra, args.data)
    if seen:
        note(f"warning: the model's metadata lists {', '.join(seen)} among its training "
             f"data: scores on {args.data} are optimistic unless this split was held out")
    # the dataset's classes: of all its real faces, whatever the split
    classes = scored_classes(clf.classes, {map_label(s.label, clf.classes, args.incorrect)
                                           for s in select_split(ds.samples, "all")})
    samples = select_split(ds.samples, args.split)
    samples, labels, dropped = map_labels(samples, classes, args.incorrect)
    if not samples:
        raise MaskwatchError(f"{args.data}: no face of the model's classes {clf.classes}")
    margin = args.margin
    if margin is None:
        margin = float(clf.info.extra.get("margin", 0.1))
    scenes = {s.path for s in samples if s.box is not None}
    if scenes:
        note(f"the faces are the annotated boxes of {len(scenes)} image(s) of the {ds.layout} "
             f"dataset, cropped with margin {margin:g} (detector metrics: maskwatch "
             "evaluate-detection)")
    result = score_samples(clf, samples, labels, margin, args.batch_size,
                           progress=not args.json or sys.stderr.isatty(), classes=classes,
                           workers=workers)
    result.dropped = dropped
    for err in result.failed[:5]:
        print(f"maskwatch: skipped {err}", file=sys.stderr)
    if not len(result.y_true):
        raise MaskwatchError("no face could be read")
    metrics = result.metrics()
    tinfo = None
    if args.target_recall is not None:
        tinfo = choose_threshold(result, args.target_recall, args.max_false_alarms)
        if args.write_threshold:
            tag = f"recall{args.target_recall:g}"
            tinfo["written_to"] = str(write_threshold(args.model, tinfo["threshold"], tag,
                                                      args.overwrite))
    out = save_folder(args, "evaluate")
    if out is not None:
        from maskwatch.evaluation.report import plot_confusion, plot_roc, write_gallery
        from maskwatch.labels import WITHOUT_MASK

        out.mkdir(parents=True, exist_ok=True)
        plot_confusion(out / "confusion_matrix.png", metrics["confusion_matrix"],
                       result.classes)
        if WITHOUT_MASK in result.classes:
            p = result.classes.index(WITHOUT_MASK)
            plot_roc(out / "roc.png", result.y_true == p, result.probs[:, p], result.threshold)
        write_gallery(out, result, read_face, margin)
        import json

        (out / "metrics.json").write_text(json.dumps({**metrics, "threshold_choice": tinfo},
                                                     indent=2) + "\n")
    if args.json:
        obj = {**metrics, "model": str(clf.path), "data": str(args.data), "split": args.split,
               "unreadable": len(result.failed), "dropped": dropped}
        if tinfo:
            obj["threshold_choice"] = tinfo
        obj["report"] = None if out is None else str(out)
        obj["trained_on_this_data"] = seen
        print_json(obj)
    else:
        print(_human(metrics, tinfo, len(result.failed), dropped))
    if out is not None:
        print(f"report in {out} (metrics.json, confusion_matrix.png, roc.png, errors.html)",
              file=sys.stderr if args.json else sys.stdout)
    return 0


def run_classify(args) -> int:
    import math

    from maskwatch import batching
    from maskwatch.cli.common import allow_fast_exit, print_json
    from maskwatch.console import note
    from maskwatch.errors import MaskwatchError
    from maskwatch.imaging import list_images
    from maskwatch.inference import batch

    batching.check_batch_options(args.workers, args.resume, args.results, args.shard,
                                 args.ray)
    workers = args.workers or 1
    here = workers == 1 and not args.ray  # one process: this one
    threads = args.threads if here else (args.threads or 1)
    # the model is loaded here too: a bad --model fails once, with one line, before any
    # worker starts or the results file is touched, and the CSV columns need its classes;
    # in one process it loads on a thread while the files are listed and decoding starts
    # in this process, chunks run side by side, each on one of ``threads`` threads with a
    # one-thread model run (see batch.ChunkStream)
    loading = batch.start_classifier(args.model, 1 if here else threads, args.batch_size,
                                     args.threshold)
    files = list_images(args.paths)
    if not files:
        raise MaskwatchError(f"{', '.join(args.paths)}: no image file here")
    files = batching.select_shard(files, args.shard)
    done = batching.read_done(args.results) if args.results and args.resume else {}
    skipped = 0
    if done:
        before = len(files)
        files = [f for f in files if batching.same_file_key(f) not in done]
        skipped = before - len(files)
    size = args.batch_size
    if workers > 1:  # small tasks so results stream and the workers stay busy
        size = max(1, min(size, math.ceil(len(files) / (4 * workers))))
    tasks = batching.chunks([str(f) for f in files], size)
    local = (batch.classify_chunks(tasks, workers=threads or os.cpu_count() or 1,
                                   loading=loading)
             if here else None)  # the first chunks start now
    try:
        loading.result()
    except BaseException:
        if local is not None:
            local.close()  # no more reads for a model that did not load
        raise
    classes = batch.loaded_classifier().classes
    writer = None
    if args.results:
        writer = batching.AppendWriter(args.results, ["path", "label", "score",
                                                  *[f"p_{c}" for c in classes]], args.resume,
                                        args.overwrite)
    table = not args.json and writer is None
    if table:
        print(f"{'path':60s} {'label':15s} score")
    failed = done_count = 0
    bar = None
    if writer is not None:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="classify", unit="img", file=sys.stderr)
    try:
        if args.ray:  # the same chunks on Ray actors; results come back the same way
            from maskwatch.ray_batch import ray_map, ship

            results = ray_map(batch.classify_chunk, tasks, args.workers, batch.init_classifier,
                              (ship(args.model), threads, size, args.threshold),
                              address=args.ray, cpus_per_actor=threads)
        elif workers > 1:
            results = batching.ordered_map(batch.classify_chunk, tasks, workers,
                                           batch.init_classifier,
                                           (args.model, threads, size, args.threshold))
        else:  # loaded above; the next chunks decode while this one is labelled
            results = local
        for chunk in results:
            for path, pred, err in chunk:
                if bar is not None:
                    bar.update(1)
                if pred is None:
                    failed += 1
                    note(f"error: {err}")
                    continue
                done_count += 1
                record = {"path": path, **pred}
                if writer is not None:
                    writer.write(record, [[path, pred["label"], f"{pred['score']:.6f}",
                                           *[f"{pred['scores'].get(c, 0.0):.6f}"
                                             for c in classes]]])
                if args.json:
                    print_json(record)
                elif table:
                    print(f"{path:60s} {pred['label']:15s} {pred['score']:.4f}", flush=True)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    if writer is not None:
        print(f"maskwatch: {done_count} image(s) written to {args.results}"
              + (f", {skipped} already there" if skipped else "")
              + (f", {failed} unreadable" if failed else ""), file=sys.stderr)
    if here:  # everything is written and every thread has ended
        allow_fast_exit()
    return 1 if failed else 0
