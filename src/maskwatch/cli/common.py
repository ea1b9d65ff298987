"""Helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from maskwatch.errors import MaskwatchError


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
        help="classifier: an .onnx file with its .json beside it, or a .safetensors "
        "checkpoint (needs torch); default: the bundled model",
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
    stream.write(json.dumps(obj, separators=(",", ":")) + "\n")
    stream.flush()


def expand_inputs(
    inputs: Iterable[str], suffixes: set[str] | None = None, keep_unmatched: bool = False
) -> Iterator[Path]:
    """Yield files from paths, folders (recursive, sorted) and glob patterns.

    A path that does not exist and matches no glob raises MaskwatchError, unless
    ``keep_unmatched`` (then it is yielded so the caller can report it and go on).
    """
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                if suffixes is None or f.suffix.lower() in suffixes:
                    yield f
        elif path.is_file():
            yield path
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches and not keep_unmatched:
                raise MaskwatchError(f"{item}: no file matches this pattern")
            for m in matches:
                if Path(m).is_file() and (suffixes is None or Path(m).suffix.lower() in suffixes):
                    yield Path(m)
        elif keep_unmatched:
            yield path
        else:
            raise MaskwatchError(f"{item}: no such file or folder")
