"""A whole watch: the store, its one writer, one thread per source, retention, shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from maskwatch.errors import MaskwatchError
from maskwatch.files import make_folder
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
    if config.snapshots is not None:
        make_folder(config.snapshots, f"--snapshots {config.snapshots}: cannot make this folder")
    store = Store(db)
    if store.path is not None and not all(
            os.access(p, os.W_OK) for p in (store.path, store.path.resolve().parent)):
        store.close()
        raise MaskwatchError(f"{store.path}: read-only (watch writes events to it)")
    if config.snapshots is not None:
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
        # Each thread says itself when it is done; the main thread never waits in
        # Thread.join or is_alive (on Python 3.11 a Ctrl+C landing there can mark a running
        # thread as stopped, and the store was then closed under the people still in view).
        done = [threading.Event() for _ in watchers]
        threads = [threading.Thread(target=_run_until_done, args=(w, flag), daemon=True,
                                    name=f"maskwatch-watch-{w.name}")
                   for w, flag in zip(watchers, done)]
        log(f"watching {len(threads)} source(s) into {display_url(str(db))}")
        for t in threads:
            t.start()
        with _ctrl_c_stops(stop, log):
            deadline = None
            while not all(flag.is_set() for flag in done):
                if stop.is_set():  # Ctrl+C, SIGTERM or the caller: finish within STOP_WAIT
                    deadline = deadline or time.monotonic() + STOP_WAIT
                    if time.monotonic() >= deadline:  # a camera stuck in a read
                        for t, flag in zip(threads, done):
                            if not flag.is_set():
                                log(f"{t.name}: still reading after {STOP_WAIT:g}s; leaving it")
                        break
                elif keep_days is not None and time.monotonic() >= next_retention:
                    cutoff = time.time() - keep_days * 86400
                    writer.retention(cutoff, retention_done(config.snapshots, cutoff, log))
                    next_retention = time.monotonic() + retention_every
                time.sleep(0.05 if stop.is_set() else 0.2)
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
        "lost": writer.lost,
        "sources": {w.name: {"frames": w.frames, "events": w.events,
                             "reconnects": w.reconnects, "error": w.error} for w in watchers},
    }


@contextlib.contextmanager
def _ctrl_c_stops(stop: threading.Event, log: Callable[[str], None]):
    """While in the block, Ctrl+C (SIGINT) sets ``stop`` instead of raising
    KeyboardInterrupt (which could land anywhere, even in the store's writer), however
    often it is pressed; outside the main thread there is nothing to catch."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame) -> None:
        if not stop.is_set():
            log("interrupted: finishing the people in view")
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_until_done(watcher: SourceWatcher, done: threading.Event) -> None:
    try:
        watcher.run()
    except Exception as exc:  # a bug must not pass for a source that ended well
        watcher.error = f"{watcher.name}: stopped by {type(exc).__name__}: {exc}"
        watcher.log(f"error: {watcher.error}")
        raise
    finally:
        done.set()


def _bar(name: str, spec: str, position: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(desc=name, unit="frame", position=position, file=sys.stderr,
                dynamic_ncols=True, leave=True)
