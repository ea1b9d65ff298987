"""Slows one maskwatch function down, for the tests that kill a run halfway.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; the kill/resume tests
put this folder there (see ``slow_env`` in slowdown.py), so every process of the run,
spawned workers and torchrun's ranks included, wraps ``module:function`` named by
``MASKWATCH_TESTS_SLOW`` (``"module:function=seconds"``) with a sleep before each call.
Only the tests set that variable; maskwatch itself never reads it.
"""

import os

_spec = os.environ.get("MASKWATCH_TESTS_SLOW")
if _spec:
    import functools
    import importlib
    import time

    _target, _seconds = _spec.rsplit("=", 1)
    _module_name, _name = _target.split(":")
    _module = importlib.import_module(_module_name)
    _original = getattr(_module, _name)

    @functools.wraps(_original)
    def _slowed(*args, **kwargs):
        time.sleep(float(_seconds))
        return _original(*args, **kwargs)

    setattr(_module, _name, _slowed)
