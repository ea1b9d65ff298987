"""argparse types that check a value's range, so a bad option ends in argparse's one
line (``maskwatch COMMAND: error: argument --lr: must be above 0, got nan``), not in a
traceback or a silently wrong result. Used by ``cli/`` and ``training.options``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def number(low: float | None = None, high: float | None = None, *,
           above: float | None = None, below: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number within ``[low, high]`` and, when given, strictly
    above ``above`` and below ``below`` (NaN and infinities are refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        for limit, ok, words in ((low, lambda v, x: v >= x, "at least"),
                                 (above, lambda v, x: v > x, "above"),
                                 (high, lambda v, x: v <= x, "at most"),
                                 (below, lambda v, x: v < x, "below")):
            if limit is not None and not ok(value, limit):
                raise argparse.ArgumentTypeError(f"must be {words} {limit:g}, got {text}")
        return value

    parse.__name__ = "number"  # argparse names the type in its own messages
    return parse


#: Shares and probabilities: 0 to 1.
fraction = number(0.0, 1.0)
#: How far a face box grows per side (0: the box as drawn; 1: a box three times as wide).
margin = number(0.0, 1.0)
