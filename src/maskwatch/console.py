"""Messages on stderr that do not break a progress bar drawn there."""

from __future__ import annotations

import sys


def note(msg: str) -> None:
    """Print ``maskwatch: msg`` on stderr on a line of its own: a tqdm bar in progress is
    cleared first and drawn again below the message."""
    from tqdm import tqdm

    tqdm.write(f"maskwatch: {msg}", file=sys.stderr)
    sys.stderr.flush()
