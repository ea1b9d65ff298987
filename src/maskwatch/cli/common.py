"""Helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from maskwatch.argtypes import fraction, margin, non_negative_int, number, positive_int
from maskwatch.batching import json_line

__all__ = ["fraction", "margin", "non_negative_int", "number", "positive_int"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps descriptions' line breaks.

    Required options, flags and options whose help already names the default say nothing
    more; an option with no default says "default: none".
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.required
            or action.default is argparse.SUPPRESS
            or not action.option_strings
            or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        ):
            return text
        if action.default is None:
            return text + " (default: none)"
        return text + " (default: %(default)s)"


def add_command(subparsers, name: str, help: str, description: str | None = None,
                examples: list[str] | None = None):
    """Add a sub-command parser that uses the project's help formatter; ``examples``
    (command lines, ``# comment`` allowed) end its ``--help``."""
    epilog = None
    if examples:
        epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    return subparsers.add_parser(
        name, help=help, description=description or help, formatter_class=HelpFormatter,
        epilog=epilog,
    )


def add_alias(parser, old: str, dest: str, **kwargs) -> None:
    """Accept the old spelling ``old`` of an option without listing it in ``--help``
    (kept for one release)."""
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, **kwargs)


def add_overwrite_argument(parser, help: str) -> None:
    """``--overwrite`` (``--force`` still works): the one name for replacing files."""
    parser.add_argument("--overwrite", action="store_true", help=help)
    add_alias(parser, "--force", "overwrite", action="store_true")


#: Where results go when no --out is given: RUNS/COMMAND/N, a new numbered folder each run.
RUNS_DIR = "runs"


def add_save_arguments(parser, what: str) -> None:
    """``-o/--out DIR`` and ``--no-save``: ``what`` is saved by default to a new numbered
    folder ``runs/COMMAND/N`` (``$MASKWATCH_RUNS`` instead of ``runs``)."""
    parser.add_argument("-o", "--out", default=None, metavar="DIR",
                        help=f"folder for {what} (default: a new numbered folder "
                        "runs/COMMAND/N, printed at the end)")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {what}")


def save_folder(args: argparse.Namespace, command: str) -> Path | None:
    """The folder chosen by ``--out``/``--no-save``: None with --no-save, else --out, else
    the next free ``runs/COMMAND/N`` (created)."""
    if args.no_save:
        return None
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            from maskwatch.errors import MaskwatchError

            raise MaskwatchError(f"{out}: not a folder (-o/--out names the folder for the "
                                 "output files)")
        return out
    return new_run_folder(command)


@contextlib.contextmanager
def output_folder(args: argparse.Namespace, command: str):
    """:func:`save_folder` for the block's run; a new ``runs/COMMAND/N`` that the run
    left empty (it failed before writing) is removed afterwards."""
    folder = save_folder(args, command)
    try:
        yield folder
    finally:
        if folder is not None and not args.out:
            with contextlib.suppress(OSError):  # not empty, or gone: leave it
                folder.rmdir()


def new_run_folder(command: str) -> Path:
    """Create and return ``RUNS/command/N`` with N one more than the largest there."""
    root = Path(os.environ.get("MASKWATCH_RUNS") or RUNS_DIR) / command
    root.mkdir(parents=True, exist_ok=True)
    n = max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0) + 1
    while True:
        try:
            (root / str(n)).mkdir()
            return root / str(n)
        except FileExistsError:  # another run took it
            n += 1


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m", "--model",
        default=None,
        help="classifier: an .onnx file with its .json beside it (one written by `maskwatch "
        "calibrate` also carries its site's box convention, smallest face and thresholds), "
        "or a .safetensors checkpoint (needs torch); default: the bundled model",
    )


def add_threshold_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-t", "--threshold", type=float, default=None,
        help="call a face without_mask when its probability reaches this (0-1); lower misses "
        "fewer unmasked faces and raises more false alarms (default: the model's, see "
        "MODEL_CARD.md)",
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=non_negative_int, default=0,
        help="CPU threads for inference (0: all cores)"
    )


#: Whether the command that just ran let :func:`maskwatch.cli.run` skip the teardown.
_EXIT = {"fast": False}


def allow_fast_exit(allowed: bool = True) -> None:
    """Let the console entry point end this process without the interpreter's teardown,
    which takes 30-40 ms once numpy, OpenCV and ONNX Runtime are loaded (a twentieth of
    classifying 1,000 crops). Only for a command that leaves no child process, thread, open
    file or exit hook with work to finish: its output is flushed, then ``os._exit``."""
    _EXIT["fast"] = allowed


def fast_exit_allowed() -> bool:
    return _EXIT["fast"]


def print_json(obj, stream=None) -> None:
    """Print one JSON object on one line."""
    stream = stream or sys.stdout
    stream.write(json_line(obj))
    stream.flush()


def parse_shard(text: str) -> tuple[int, int]:
    """argparse type for ``I/N`` (0-based part I of N)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"need 0 <= I < N, got {text!r}")
    return i, n


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    """--workers, --ray, --results, --resume and --shard (classify and detect)."""
    p.add_argument("-w", "--workers", type=positive_int, default=None,
                   help="worker processes, each with its own model (default: 1, this "
                   "process); with --ray, Ray actors (default: one per CPU of the cluster)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster: HOST:PORT of its head, or auto (the one this "
                   "machine belongs to); --ray alone starts Ray on this machine. Inputs must "
                   "be readable on every node (shared filesystem, s3:// or gs://); needs "
                   "pip install 'maskwatch[ray]'")
    p.add_argument("-r", "--results", default=None, metavar="FILE",
                   help="write results to FILE (.jsonl or .csv) as they come, one flushed "
                   "record per input; an existing FILE needs --resume or --overwrite")
    add_alias(p, "--output", "results")
    p.add_argument("--resume", action="store_true",
                   help="with --results: skip inputs already recorded in FILE and append")
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="only part I of N (0-based) of the inputs: the k-th file by sorted "
                   "path goes to part k mod N")


DETECTORS = ["centerface", "centerface-fp32", "yunet", "accurate", "fast"]


def add_detector_arguments(p: argparse.ArgumentParser) -> None:
    """The face detector's options (detect, evaluate-detection, watch)."""
    p.add_argument(
        "--detector", default="centerface", choices=DETECTORS,
        help="face detector: centerface (= accurate; finds masked faces far more often; its "
        "int8 copy), centerface-fp32 (the published network: 1.7x slower, mAP@0.5 0.008 "
        "higher on the held-out scenes, see MODEL_CARD.md) or yunet (= fast)",
    )
    p.add_argument(
        "--face-threshold", type=float, default=None,
        help="face score threshold (default: the site model's, else 0.2 for centerface, 0.5 "
        "for yunet); lower finds more faces and more false boxes",
    )
    p.add_argument(
        "--count-threshold", type=float, default=None,
        help="faces under this face score are drawn with thin lines and listed with "
        "\"counted\": false, but left out of counts, shares, alerts and monitoring "
        "(default: 0.3 for centerface, the face threshold for yunet; never below the face "
        "threshold)",
    )
    add_threshold_argument(p)
    p.add_argument(
        "--detect-size", type=int, default=None,
        help="first face-detection pass: photos are shrunk to the pixel count of a 4:3 "
        "photo with this long side (default: 320 for centerface, 960 for yunet); boxes are "
        "mapped back and faces cropped from the original",
    )
    p.add_argument(
        "--refine-size", type=int, default=None,
        help="size, as for --detect-size, of a finer second pass over the part of a photo "
        "where the first pass found small faces (default: 800 for centerface, 0 for yunet; "
        "0: one pass only)",
    )
    p.add_argument(
        "--upscale", action="store_true",
        help="also enlarge images smaller than --detect-size in the first pass",
    )
    p.add_argument("--min-face", type=non_negative_int, default=None,
                   help="ignore faces whose shorter side is below this many pixels; it also "
                   "spares the finer detection pass work on faces that small, so detection "
                   "runs faster (default: the site model's, else 0)")


def detector_options(args: argparse.Namespace) -> dict:
    """Detector keyword arguments from the options `detect`, `evaluate-detection` and `watch`
    share
    (with --faces-only, a site model's settings are read from its metadata)."""
    from maskwatch.inference.modelfile import read_site

    site = read_site(args.model) if args.faces_only and args.model else None
    return dict(
        face_detector=args.detector,
        classifier=False if args.faces_only else args.model,
        threads=args.threads,
        face_threshold=args.face_threshold,
        margin=args.margin,
        detect_size=args.detect_size,
        min_face=args.min_face,
        upscale=args.upscale,
        threshold=args.threshold,
        site=site,
        refine_size=args.refine_size,
        count_threshold=args.count_threshold,
    )


def _labels(text: str) -> tuple[str, ...]:
    from maskwatch.detection.alerts import parse_labels
    from maskwatch.errors import MaskwatchError

    try:
        return parse_labels(text)
    except MaskwatchError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None


def add_alert_arguments(p: argparse.ArgumentParser, title: str, per: str = "") -> None:
    """--alert-after, --non-compliant, --alert-command, --alert-url, --alert-interval (detect
    and watch)."""
    alert = p.add_argument_group(title)
    alert.add_argument("--alert-after", type=positive_int, default=10, metavar="N",
                       help="alert when a non-compliant face has been seen for N consecutive "
                       "frames (default: 10)")
    alert.add_argument("--non-compliant", default="without_mask,incorrect_mask",
                       type=_labels, metavar="LABELS",
                       help="labels that count as non-compliant for alerts, comma separated "
                       "(default: without_mask,incorrect_mask)")
    alert.add_argument("--alert-command", default=None, metavar="CMD",
                       help="command to run on an alert (no shell; the JSON event arrives on "
                       "stdin and in $MASKWATCH_ALERT)")
    alert.add_argument("--alert-url", default=None, metavar="URL",
                       help="POST the JSON event to this http(s) URL on an alert")
    alert.add_argument("--alert-interval", type=number(0.0), default=60.0, metavar="SECONDS",
                       help="at most one alert per this many seconds" + per)


def warn_unused_site(detector, model) -> None:
    """Say when ``model`` is a site model whose settings ``detector`` does not apply."""
    said = getattr(detector, "unused_site_warning", None)  # stand-ins in tests lack it
    unused = said(model) if said else None
    if unused:
        from maskwatch.console import note

        note(unused)
