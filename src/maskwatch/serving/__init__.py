"""Web app and HTTP API (``maskwatch serve``); needs the ``serve`` extra (FastAPI, uvicorn)."""

from __future__ import annotations

__all__ = ["Settings", "create_app"]


def __getattr__(name: str):  # lazy, so importing the package does not import FastAPI
    if name in __all__:
        from maskwatch.serving import app

        return getattr(app, name)
    raise AttributeError(name)
