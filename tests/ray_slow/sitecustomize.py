"""Test-only slow-down for Ray workers: on PYTHONPATH of the tests' Ray head.

When MASKWATCH_SLOW_FILE is set, ``maskwatch.imaging.load_rgb`` sleeps for the number of
seconds written in that file (0 or missing file: no sleep) before each image, so a test
can kill a worker while a run is under way.
"""

import os

if os.environ.get("MASKWATCH_SLOW_FILE"):
    import time

    import maskwatch.imaging as _imaging

    _load_rgb = _imaging.load_rgb

    def _slow_load_rgb(*args, **kwargs):
        try:
            with open(os.environ["MASKWATCH_SLOW_FILE"]) as f:
                delay = float(f.read() or 0)
        except (OSError, ValueError):
            delay = 0.0
        if delay:
            time.sleep(delay)
        return _load_rgb(*args, **kwargs)

    _imaging.load_rgb = _slow_load_rgb
