"""Helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import sys

from maskwatch.batching import json_line


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


def add_command(subparsers, name: str, help: str, description: str | None = None):
    """Add a sub-command parser that uses the project's help formatter."""
    return subparsers.add_parser(
        name, help=help, description=description or help, formatter_class=HelpFormatter
    )


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="classifier: an .onnx file with its .json beside it (one written by `maskwatch "
        "calibrate` also carries its site's box convention, smallest face and thresholds), "
        "or a .safetensors checkpoint (needs torch); default: the bundled model",
    )


def add_threshold_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold", type=float, default=None,
        help="call a face without_mask when its probability reaches this (0-1); lower misses "
        "fewer unmasked faces and raises more false alarms (default: the model's, see "
        "MODEL_CARD.md)",
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for inference (0: all cores)"
    )


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
    """--workers, --output, --resume and --shard (classify and detect)."""
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, each with its own model (1: this process)")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="append results to FILE (.jsonl or .csv) as they come, one flushed "
                   "record per input; an existing FILE needs --resume")
    p.add_argument("--resume", action="store_true",
                   help="with --output: skip inputs already recorded in FILE and append")
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="only part I of N (0-based) of the inputs: the k-th file by sorted "
                   "path goes to part k mod N")
