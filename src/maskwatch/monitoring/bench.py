"""The ``watch`` section of ``maskwatch bench``: watch speed, API latency on a big history,
and database size per million events."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

LABELS = ("with_mask", "without_mask", "incorrect_mask")


def door_frames(n: int = 250, every: int = 25, cross: int = 60) -> Iterator[np.ndarray]:
    """640x480 frames of a door: a person enters every ``every`` frames and crosses the
    frame in ``cross`` frames; every other one wears a mask."""
    import cv2

    from maskwatch.detection.demo import draw_mask, sample_photo
    from maskwatch.imaging import load_rgb

    photo = load_rgb(sample_photo())
    h, w = photo.shape[:2]
    masked = draw_mask(photo, (int(0.3 * w), int(0.12 * h), int(0.72 * w), int(0.55 * h)))
    tiles = [cv2.resize(p, (130, int(130 * h / w))) for p in (photo, masked)]
    for i in range(n):
        frame = np.full((480, 640, 3), 90, np.uint8)
        for k in range(i // every + 1):
            age = i - k * every
            if not 0 <= age < cross:
                continue
            tile = tiles[k % 2]
            x = int(-40 + (640 - 90) * age / cross)
            y = 60 + 150 * (k % 2)
            x1, x2 = max(0, x), min(640, x + tile.shape[1])
            frame[y:y + tile.shape[0], x1:x2] = tile[:, x1 - x:x2 - x]
        yield frame


def synthetic_events(n: int, sources: int = 4, days: float = 30.0, seed: int = 0,
                     end: float | None = None) -> Iterator[dict]:
    """``n`` plausible events spread over ``days`` before ``end`` (now), in time order."""
    rng = np.random.default_rng(seed)
    end = time.time() if end is None else end
    start = end - days * 86400
    step = (end - start) / max(1, n)
    for i in range(n):
        first = start + i * step + float(rng.uniform(0, step))
        frames = int(rng.integers(5, 200))
        yield {
            "source": f"door{i % sources}", "track_id": i // sources + 1,
            "label": LABELS[int(rng.choice(3, p=(0.7, 0.25, 0.05)))],
            "first_seen": first, "last_seen": first + frames / 25.0, "frames": frames,
            "score": float(rng.uniform(0.5, 1.0)), "snapshot": None,
        }


def _latency(get, path: str, repeats: int) -> dict:
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        response = get(path)
        times.append(time.perf_counter() - t)
        assert response.status_code == 200, response.text
    times = sorted(times[1:])  # the first warms the caches
    return {"p50_ms": round(1000 * statistics.median(times), 2),
            "p95_ms": round(1000 * times[int(0.95 * (len(times) - 1))], 2)}


def bench_watch(model: Path, threads: int, tmp: Path, events: int = 1_000_000,
                frames: int = 250, repeats: int = 20) -> dict:
    """Watch a generated 640x480 clip into SQLite; time /api/events and /api/stats on a
    database of ``events`` generated events; its size per million events."""
    from fastapi.testclient import TestClient

    from maskwatch.detection.pipeline import Detector
    from maskwatch.detection.video import VideoWriter
    from maskwatch.monitoring.service import watch
    from maskwatch.monitoring.store import Store
    from maskwatch.monitoring.watcher import WatchConfig
    from maskwatch.serving.app import Settings, create_app

    clip = tmp / "door.mp4"
    with VideoWriter(clip, 25.0, (640, 480)) as writer:
        for frame in door_frames(frames):
            writer.write(frame)
    db = tmp / "watch.sqlite"
    detector = Detector(classifier=model, threads=threads)
    start = time.perf_counter()
    summary = watch([str(clip)], db, lambda: detector, WatchConfig(), log=lambda m: None,
                    stop=threading.Event())
    seconds = time.perf_counter() - start
    watched = summary["sources"]["door"]
    result: dict = {"watch": {
        "video": f"640x480, {frames} frames, a person entering every second",
        "detector": detector.face_detector.name, "threads": threads,
        "frames_per_s": round(watched["frames"] / seconds, 1),
        "events": summary["events"], "events_per_s": round(summary["events"] / seconds, 2),
    }}

    big = tmp / "million.sqlite"
    store = Store(big)
    start = time.perf_counter()
    batch: list[dict] = []
    for row in synthetic_events(events):
        batch.append(row)
        if len(batch) == 50_000:
            store.add_events(batch, ids=False)
            batch = []
    store.add_events(batch, ids=False)
    fill = time.perf_counter() - start
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    size = store.size_bytes()
    result["database"] = {
        "events": events, "insert_events_per_s": round(events / fill),
        "sqlite_mb_per_million_events": round(size / events * 1e6 / 2**20, 1),
    }
    app = create_app(detector=detector, settings=Settings(db=str(big)))
    queries = {
        "latest_100": "/api/events?limit=100",
        "by_source_100": "/api/events?source=door1&limit=100",
        "by_label_100": "/api/events?label=incorrect_mask&limit=100",
        "last_hour": f"/api/events?since={time.time() - 3600:.0f}&limit=1000",
        "stats_hour_24h": "/api/stats?bucket=hour",
        "stats_day_30d": "/api/stats?bucket=day",
    }
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:  # Host check
        result["api_latency"] = {name: _latency(client.get, q, repeats)
                                 for name, q in queries.items()}
    result["api_latency"]["note"] = (f"in-process requests on {events} events (SQLite, WAL); "
                                     "stats_day_30d reads every event")
    store.close()
    return result
