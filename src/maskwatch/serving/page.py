"""What the web page needs besides the API, all served from this machine (no CDN): the API
docs (Swagger UI 5, whose files the ``fastapi-offline`` package ships), the favicon and an
example photo."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = "/docs/assets"


def swagger_ui_dir() -> Path:
    """Swagger UI's files in the installed ``fastapi-offline`` package. (The
    ``swagger-ui-bundle`` package ships Swagger UI 4, which cannot read FastAPI's OpenAPI
    3.1 schema.)"""
    import fastapi_offline

    return Path(fastapi_offline.__file__).with_name("static")


@lru_cache(maxsize=1)
def favicon_ico() -> bytes:
    """maskwatch's icon, drawn here: a face with a green mask on a blue tile (16-48 px)."""
    from PIL import Image, ImageDraw

    size = 96
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle([0, 0, size - 1, size - 1], radius=20, fill=(11, 95, 209, 255))
    draw.ellipse([22, 12, 74, 84], fill=(246, 214, 190, 255))
    draw.rounded_rectangle([18, 46, 78, 80], radius=12, fill=(0, 200, 70, 255))
    buf = io.BytesIO()
    img.save(buf, "ICO", sizes=[(16, 16), (32, 32), (48, 48)])
    return buf.getvalue()


def example_jpeg(face_detector=None) -> bytes:
    """The demo's example photo: the sample portrait as it is and with a mask drawn on,
    side by side (just the portrait when no face detector is given)."""
    from maskwatch.detection.demo import make_demo_image, sample_photo

    if face_detector is None:
        return sample_photo().read_bytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(make_demo_image(face_detector)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def add_page_routes(app: FastAPI, face_detector: Callable[[], object]) -> None:
    """Add ``/docs`` (Swagger UI, local files), ``/favicon.ico`` and ``/example.jpg``.

    ``face_detector()`` gives the loaded face detector (or None) once the app has started.
    """
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_dir()), name="docs-assets")
    cache: dict[str, bytes] = {}

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url="/favicon.ico",
        )

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(favicon_ico(), media_type="image/x-icon",
                        headers={"Cache-Control": "max-age=86400"})

    @app.get("/example.jpg", include_in_schema=False)
    async def example() -> Response:
        if "jpeg" not in cache:
            cache["jpeg"] = await asyncio.to_thread(example_jpeg, face_detector())
        return Response(cache["jpeg"], media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})
