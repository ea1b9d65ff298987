"""The `maskwatch` command line.

Each module in this package that defines ``register(subparsers)`` adds one or more
sub-commands; ``ORDER`` (an int) sets its place in ``--help``. Modules import their heavy
dependencies inside the command function, so ``maskwatch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import pkgutil
import re
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


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                None)


def _option(parser: argparse.ArgumentParser, token: str) -> argparse.Action | None:
    """The option ``token`` names as argparse would read it: exactly, or by a unique
    abbreviation of a long option (no ``=VALUE`` part)."""
    actions = parser._option_string_actions
    if token in actions:
        return actions[token]
    if token.startswith("--") and "=" not in token and parser.allow_abbrev:
        hits = {id(a): a for o, a in actions.items() if o.startswith(token)}
        if len(hits) == 1:
            return next(iter(hits.values()))
    return None


#: A token argparse takes for an unknown option where a value was meant: ``-1/2``, ``-1e3``.
_NEGATIVE = re.compile(r"-\.?\d")


def _looks_like_a_typo(token: str, choices) -> bool:
    """``--blur unmask``: close to a choice, and no such file to be an input."""
    return (bool(difflib.get_close_matches(token.lower(), list(choices), n=1, cutoff=0.75))
            and not os.path.exists(token))


def _prepare(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with two argparse pitfalls taken out, for the sub-command it names:

    - an option with an optional value among fixed choices (``--blur [all|masked|unmasked]``)
      followed by a token that is none of them: the option alone (its const) and the token
      left for the inputs, so ``detect --blur photos/`` blurs all faces in ``photos/``;
    - an option taking one value followed by one that starts like a negative number
      (``--shard -1/2``): joined (``--shard=-1/2``), so its type says what is wrong instead
      of argparse's "expected one argument".
    """
    where, start = parser, 0
    for i, token in enumerate(argv):  # the (sub-)command parser: `detect`, `data split`...
        if token == "--":
            break
        sub = _subparsers(where)
        if sub is not None and token in sub.choices:
            where, start = sub.choices[token], i + 1
    takes_inputs = any(not a.option_strings for a in where._actions)
    out = list(argv[:start])
    i = start
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out.extend(argv[i:])
            break
        action = _option(where, token) if token.startswith("-") else None
        after = argv[i + 1] if i + 1 < len(argv) else None
        if action is not None and after is not None:
            name = max(action.option_strings, key=len)
            if (action.nargs is None and _NEGATIVE.match(after)
                    and not where._has_negative_number_optionals):
                out.append(f"{name}={after}")
                i += 2
                continue
            if (action.nargs == "?" and action.choices and action.const in action.choices
                    and takes_inputs and after not in action.choices
                    and not after.startswith("-")
                    and not _looks_like_a_typo(after, action.choices)):
                out.append(f"{name}={action.const}")
                i += 1
                continue
        out.append(token)
        i += 1
    return out


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, with the sub-command's usage in the error for an unknown
    option (argparse shows the top level's), and no empty value anywhere: ``-d ""``
    (an unset shell variable) would otherwise read the current folder. ``argv`` goes
    through :func:`_prepare` first (``--blur photos/``, ``--shard -1/2``)."""
    argv = _prepare(parser, sys.argv[1:] if argv is None else list(argv))
    args, extras = parser.parse_known_args(argv)
    where = parser  # the (sub-)command parser that took the arguments: `data split`, ...
    while True:
        sub = _subparsers(where)
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
