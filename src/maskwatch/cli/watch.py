"""`maskwatch watch`: watch cameras, streams or videos for days and keep one event per person."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from maskwatch.cli.common import (
    add_alert_arguments,
    add_command,
    add_detector_arguments,
    add_model_argument,
    add_threads_argument,
    detector_options,
    margin,
    positive_int,
    print_json,
    warn_unused_site,
)

ORDER = 45


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def register(subparsers) -> None:
    p = add_command(
        subparsers, "watch",
        help="watch cameras, streams or videos and store one event per person (for days)",
        description="Watch each SOURCE in its own thread: find faces, track people, and store\n"
        "one event per tracked person (source, track id, majority label, first/last seen,\n"
        "frames, mean score) and per-minute counts in a database (SQLite by default, or\n"
        "PostgreSQL: --db postgresql://user:pass@host/db). See them with\n"
        "`maskwatch serve --db PATH` on /dashboard and /api/events.\n\n"
        "SOURCE: a camera index (0), a stream URL (rtsp://, http://...) or a video file;\n"
        "NAME=SOURCE names it (events record the name, never a stream's password).\n"
        "A camera or stream that cannot be opened (at start too: camera 7 may be plugged in\n"
        "later) or drops is retried with backoff (1 s, 2 s, ... up to 60 s) until stopped; a\n"
        "video file ends its source. Ctrl+C or SIGTERM stops: people in view are stored.",
        examples=["maskwatch watch clip.mp4 --db events.sqlite",
                  "maskwatch watch 0 door=rtsp://cam.local/stream --db events.sqlite "
                  "--keep-days 30 --snapshots snaps/ --blur"],
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="camera index, stream URL or video file (or NAME=SOURCE)")
    p.add_argument("--db", default="maskwatch.db",
                   help="SQLite file, or a SQLAlchemy URL such as postgresql://user:pass@host/db")
    p.add_argument("--snapshots", default=None, metavar="DIR",
                   help="keep one JPEG per event here (the frame where the face was seen best); "
                   "default: no snapshots")
    p.add_argument("--blur", action="store_true",
                   help="blur every face in snapshots (the box and label stay)")
    p.add_argument("--keep-days", type=_positive_float, default=None, metavar="N",
                   help="delete events, counts and snapshots older than N days (at start, then "
                   "hourly); default: keep everything")
    p.add_argument("--min-frames", type=positive_int, default=3, metavar="N",
                   help="a track seen in fewer frames is noise, not a person")
    p.add_argument("--max-missed", type=positive_int, default=10, metavar="N",
                   help="frames a person may be out of view before their event ends")
    p.add_argument("--max-frames", type=positive_int, default=None,
                   help="stop each source after this many frames")
    p.add_argument("--reconnect-max", type=_positive_float, default=60.0, metavar="SECONDS",
                   help="longest wait between two tries to reopen a dropped stream")
    add_model_argument(p)
    p.add_argument("--faces-only", action="store_true",
                   help="only detect faces, without the mask classifier (events have no label)")
    add_detector_arguments(p)
    p.add_argument("--margin", type=margin, default=0.15,
                   help="context added around each face before classification")
    add_alert_arguments(p, "alerts", per=", per source")
    add_threads_argument(p)
    p.add_argument("--json", action="store_true",
                   help="print each stored event as one JSON line (after it is committed), and "
                   "the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no event lines")
    p.set_defaults(func=run_watch)


def run_watch(args) -> int:
    from pathlib import Path

    from maskwatch.detection.pipeline import Detector
    from maskwatch.monitoring.service import watch
    from maskwatch.monitoring.store import iso
    from maskwatch.monitoring.watcher import WatchConfig

    config = WatchConfig(
        min_frames=args.min_frames, max_missed=args.max_missed,
        snapshots=Path(args.snapshots) if args.snapshots else None, blur=args.blur,
        max_frames=args.max_frames, reconnect_max=args.reconnect_max,
        reconnect_min=min(1.0, args.reconnect_max),
    )
    options = detector_options(args)
    # a bad --model is one clear error before anything starts; this one serves the 1st source
    built = [Detector(**options)]
    warn_unused_site(built[0], args.model)

    make_alert = None
    if args.alert_command or args.alert_url:
        from maskwatch.detection.alerts import AlertHook

        def make_alert():
            return AlertHook(args.alert_after, args.alert_command, args.alert_url,
                             args.alert_interval, non_compliant=args.non_compliant)

        make_alert()  # a bad --alert-url is one clear error before anything starts

    stop = threading.Event()

    def on_event(row: dict) -> None:
        record = {**row, "first_seen": iso(row["first_seen"]), "last_seen": iso(row["last_seen"])}
        try:
            if args.json:
                print_json(record)
            elif not args.quiet:
                label = record["label"] or "face"
                print(f"{record['source']} #{record['track_id']}: {label} ({record['frames']} "
                      f"frames, score {record['score']:.2f}) {record['first_seen']} .. "
                      f"{record['last_seen']}", flush=True)
        except BrokenPipeError:  # `| head -1`: stop as a pipe's writer does, storing the rest
            if not stop.is_set():
                print("maskwatch: output closed: stopping", file=sys.stderr, flush=True)
            args.quiet, args.json = True, False
            stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    summary = watch(
        args.sources, args.db, lambda: built.pop() if built else Detector(**options), config,
        keep_days=args.keep_days,
        make_alert=make_alert, on_event=on_event, stop=stop,
        progress=not args.quiet and not args.json,
    )
    failed = [s for s, v in summary["sources"].items() if v["error"]] or summary["lost"]
    if args.json:
        print_json({"summary": summary})
    else:
        parts = [f"{summary['events']} event(s) stored in {summary['db']}"
                 + (f", {summary['lost']} lost (the database could not be written)"
                    if summary["lost"] else "")]
        for name, s in summary["sources"].items():
            parts.append(f"{name}: {s['frames']} frame(s), {s['events']} person(s)"
                         + (f", {s['reconnects']} reconnection(s)" if s["reconnects"] else "")
                         + (f", error: {s['error']}" if s["error"] else ""))
        print("\n".join(parts), file=sys.stderr if args.quiet else sys.stdout)
    return 1 if failed else 0
