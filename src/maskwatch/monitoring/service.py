"""A whole watch: the store, its one writer, one thread per source, retention, shutdown."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from maskwatch.errors import MaskwatchError
from maskwatch.monitoring.store import Store, StoreWriter, display_url
from maskwatch.monitoring.watcher import SourceWatcher, WatchConfig, retention_done, split_source

#: Seconds between two retention passes while watching.
RETENTION_EVERY = 3600.0
#: Seconds to wait for each source to finish after Ctrl+C.
STOP_WAIT = 15.0


def watch(
    sources: list[str],
    db: str | Path,
    make_detector: Callable[[], object],
    config: WatchConfig,
    keep_days: float | None = None,
    make_alert: Callable[[], object] | None = None,
    on_event: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    progress: bool = False,
    retention_every: float = RETENTION_EVERY,
) -> dict:
    """Watch every source in its own thread until all have ended or ``stop`` is set.

    ``make_detector()`` is called once per source (each thread gets its own models);
    ``make_alert()`` likewise, so each source's alerts are rate-limited on their own.
    Returns a summary: frames, events and reconnections per source, and errors.
    """
    log = log or (lambda msg: print(f"maskwatch: {msg}", file=sys.stderr, flush=True))
    stop = stop or threading.Event()
    if not sources:
        raise MaskwatchError("no source to watch")
    if keep_days is not None and keep_days <= 0:
        raise MaskwatchError(f"--keep-days must be positive, got {keep_days}")
    named = [split_source(s) for s in sources]
    names = [n for n, _ in named]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MaskwatchError(f"two sources are named {dupes[0]!r}: name them as NAME=SOURCE")
    store = Store(db)
    if config.snapshots is not None:
        Path(config.snapshots).mkdir(parents=True, exist_ok=True)
        store.set_meta("snapshots_dir", str(Path(config.snapshots).resolve()))
    writer = StoreWriter(store, on_event=on_event, log=log)
    watchers = []
    bars = []
    try:
        for i, (name, spec) in enumerate(named):
            bar = _bar(name, spec, i, progress)
            bars.append(bar)
            watchers.append(SourceWatcher(
                spec, name, make_detector(), writer, config, stop=stop,
                alert=make_alert() if make_alert else None, log=log,
                on_frame=bar.update if bar is not None else None,
            ))
        next_retention = time.monotonic()
        threads = [threading.Thread(target=w.run, name=f"maskwatch-watch-{w.name}", daemon=True)
                   for w in watchers]
        for t in threads:
            t.start()
        log(f"watching {len(threads)} source(s) into {display_url(str(db))}")
        try:
            while any(t.is_alive() for t in threads):
                if keep_days is not None and time.monotonic() >= next_retention:
                    cutoff = time.time() - keep_days * 86400
                    writer.retention(cutoff, retention_done(config.snapshots, cutoff, log))
                    next_retention = time.monotonic() + retention_every
                for t in threads:
                    t.join(0.2)
        except KeyboardInterrupt:
            log("interrupted: finishing the people in view")
            stop.set()
            for t in threads:  # a camera stuck in a read cannot hold the exit for long
                t.join(STOP_WAIT)
                if t.is_alive():
                    log(f"{t.name}: still reading after {STOP_WAIT:g}s; leaving it")
    finally:
        stop.set()
        for bar in bars:
            if bar is not None:
                bar.close()
        writer.close()
        store.close()
        for w in watchers:
            if w.alert is not None:
                w.alert.wait(10)
    return {
        "db": display_url(str(db)),
        "events": writer.events_written,
        "deleted": writer.deleted,
        "sources": {w.name: {"frames": w.frames, "events": w.events,
                             "reconnects": w.reconnects, "error": w.error} for w in watchers},
    }


def _bar(name: str, spec: str, position: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(desc=name, unit="frame", position=position, file=sys.stderr,
                dynamic_ncols=True, leave=True)
