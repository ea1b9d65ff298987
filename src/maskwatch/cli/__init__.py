"""The `maskwatch` command line.

Each module in this package that defines ``register(subparsers)`` adds one or more
sub-commands; ``ORDER`` (an int) sets its place in ``--help``. Modules import their heavy
dependencies inside the command function, so ``maskwatch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from maskwatch import __version__
from maskwatch.cli.common import HelpFormatter, allow_fast_exit, fast_exit_allowed
from maskwatch.errors import MaskwatchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskwatch",
        description="Train, evaluate and run face-mask detectors.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  maskwatch demo\n  maskwatch detect street.jpg clip.mp4\n"
        "  maskwatch serve\n\n`maskwatch COMMAND --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"maskwatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        module.register(subparsers)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, with the sub-command's usage in the error for an unknown
    option (argparse shows the top level's), and no empty value anywhere: ``-d ""``
    (an unset shell variable) would otherwise read the current folder."""
    args, extras = parser.parse_known_args(argv)
    where = parser  # the (sub-)command parser that took the arguments: `data split`, ...
    while True:
        sub = next((a for a in where._actions if isinstance(a, argparse._SubParsersAction)),
                   None)
        chosen = getattr(args, sub.dest, None) if sub else None
        if chosen not in (sub.choices if sub else {}):
            break
        where = sub.choices[chosen]
    if extras:
        where.error(f"unrecognized arguments: {' '.join(extras)}")
    for action in where._actions:
        value = getattr(args, action.dest, None)
        if value == "" or (isinstance(value, list) and "" in value):
            name = "/".join(action.option_strings) or action.metavar or action.dest
            where.error(f"argument {name}: an empty value (an unset shell variable?)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    allow_fast_exit(False)
    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MaskwatchError as exc:
        print(f"maskwatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maskwatch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a full disk, a lost mount: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"maskwatch: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


def run() -> None:
    """The console entry point: :func:`main`, then exit with its status, without the
    interpreter's teardown when the command allowed it (:func:`common.allow_fast_exit`)."""
    code = main()
    if fast_exit_allowed():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be written
                pass
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
