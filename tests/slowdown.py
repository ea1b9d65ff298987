"""``slow_env``: an environment in which one maskwatch function sleeps before each call,
in every process of a run (see slow_site/sitecustomize.py)."""

from __future__ import annotations

import os
from pathlib import Path

SITE = Path(__file__).resolve().parent / "slow_site"


def slow_env(target: str, seconds: float, **extra: str) -> dict:
    """``os.environ`` plus ``extra``, with ``target`` ("module:function") slowed by
    ``seconds`` per call and OMP_WAIT_POLICY=PASSIVE."""
    path = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=path,
                MASKWATCH_TESTS_SLOW=f"{target}={seconds}", **extra)
