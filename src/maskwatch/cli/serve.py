"""`maskwatch serve`: the web page and HTTP API."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from maskwatch.argtypes import positive_int
from maskwatch.cli.common import (
    add_command,
    add_model_argument,
    add_threads_argument,
    add_threshold_argument,
    warn_unused_site,
)
from maskwatch.errors import MaskwatchError

ORDER = 60


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "serve",
        help="run the web page (live webcam check) and the HTTP API",
        description="Run the web page (live webcam check, image and video upload) and the "
        "HTTP API (/api/detect, /api/classify, /api/video; schema at /openapi.json, docs at "
        "/docs). Binds 127.0.0.1 unless told otherwise.\n\n"
        "With --db (a `maskwatch watch` database) it also serves /dashboard (compliance over\n"
        "time, people per class, latest events) and /api/events, /api/stats.",
        examples=["maskwatch serve                      # http://127.0.0.1:8000/",
                  "maskwatch serve --detector yunet -t 0.5",
                  "maskwatch serve --db events.sqlite   # http://127.0.0.1:8000/dashboard",
                  "MASKWATCH_API_KEY=secret maskwatch serve --host 0.0.0.0"],
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    add_model_argument(p)
    p.add_argument(
        "--detector", default=None,
        help="face detector: centerface (accurate, int8), centerface-fp32 or yunet (fast); if "
        "not given, the pipeline's default",
    )
    add_threads_argument(p)
    p.add_argument(
        "--api-key", default=None,
        help="require this key in the X-API-Key header on /api/*; when not given, the "
        "environment variable MASKWATCH_API_KEY is used if set (safer than the command line)",
    )
    p.add_argument(
        "--insecure-no-key", action="store_true",
        help="allow a non-loopback --host without --api-key (anyone who can reach it may use it)",
    )
    add_threshold_argument(p)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image upload, MB")
    p.add_argument("--max-video-mb", type=float, default=100.0, help="largest video upload, MB")
    p.add_argument(
        "--max-pixels", type=positive_int, default=40_000_000, metavar="N",
        help="largest image or video frame the server accepts, in pixels (width x height): "
        "larger images get 422, larger videos 413; the MASKWATCH_MAX_PIXELS variable of the "
        "other commands does not apply to the server (default: 40,000,000)",
    )
    p.add_argument(
        "--max-concurrency", type=int, default=2,
        help="inference requests run at once; others wait briefly, then get 503",
    )
    p.add_argument(
        "--max-video-jobs", type=int, default=4, help="video jobs queued or running at once"
    )
    p.add_argument(
        "--video-budget", type=float, default=3000.0, metavar="MPX",
        help="most frames x pixels one video job may cost, in megapixels (3000: 48 s of "
        "1080p at 30 fps); larger uploads get 413 from their header, before any work",
    )
    p.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="a host name the server may be reached by, besides its address and loopback "
        "names (repeatable; requests naming another Host get 403: DNS rebinding); default: none",
    )
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client has to send its request headers (then 408)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds an upload may stall before the server gives up (408)")
    p.add_argument("--db", default=None, metavar="PATH",
                   help="a `maskwatch watch` database (SQLite file or postgresql:// URL): adds "
                   "/dashboard, /api/events and /api/stats")
    p.add_argument("--snapshots", default=None, metavar="DIR",
                   help="serve event snapshots from this folder (default: the folder `watch "
                   "--snapshots` recorded in the database)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level")
    p.set_defaults(func=run)


def check_args(args) -> None:
    """Refuse unsafe or impossible settings with one clear message."""
    from maskwatch.serving.app import is_loopback

    if args.api_key is None:
        args.api_key = os.environ.get("MASKWATCH_API_KEY") or None
    if not is_loopback(args.host) and not args.api_key and not args.insecure_no_key:
        raise MaskwatchError(
            f"refusing to listen on {args.host} without --api-key: anyone on the network could "
            "use the server (pass --api-key KEY, or --insecure-no-key if you mean it)"
        )
    if not 0 < args.port < 65536:
        raise MaskwatchError(f"--port must be 1-65535, got {args.port}")
    for name in ("max_upload_mb", "max_video_mb", "max_concurrency", "max_video_jobs",
                 "header_timeout", "body_timeout", "video_budget"):
        if getattr(args, name) <= 0:
            raise MaskwatchError(f"--{name.replace('_', '-')} must be positive")
    if args.api_key is not None and not args.api_key.strip():
        raise MaskwatchError("--api-key must not be empty")


def run(args) -> int:
    check_args(args)
    try:
        import uvicorn
    except ImportError:
        raise MaskwatchError(
            "serving needs FastAPI and uvicorn: pip install 'maskwatch[serve]'"
        ) from None
    from maskwatch.detection.pipeline import Detector
    from maskwatch.serving.app import Settings, create_app

    settings = Settings(
        api_key=args.api_key,
        max_upload_mb=args.max_upload_mb,
        max_video_mb=args.max_video_mb,
        max_pixels=args.max_pixels,
        max_concurrency=args.max_concurrency,
        max_video_jobs=args.max_video_jobs,
        video_budget_mpx=args.video_budget,
        model=args.model,
        detector=args.detector,
        threads=args.threads,
        threshold=args.threshold,
        host=args.host,
        allowed_hosts=tuple(args.allowed_host),
        body_timeout_s=args.body_timeout,
        db=args.db,
        snapshots_dir=Path(args.snapshots) if args.snapshots else None,
    )
    # Load the models before binding, so a bad --model is one clear error, not a traceback.
    kwargs = {"classifier": args.model, "threads": args.threads, "threshold": args.threshold}
    if args.detector:
        kwargs["face_detector"] = args.detector
    detector = Detector(**kwargs)
    warn_unused_site(detector, args.model)
    app = create_app(detector=detector, settings=settings)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"maskwatch: serving on http://{shown}:{args.port}/ (Ctrl+C to stop)", file=sys.stderr)
    if args.db:
        print(f"maskwatch: dashboard on http://{shown}:{args.port}/dashboard", file=sys.stderr)
    from maskwatch.serving.server import server_config

    uvicorn.Server(server_config(app, args.host, args.port, args.header_timeout,
                                 args.log_level)).run()
    return 0
