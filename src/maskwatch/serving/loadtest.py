"""A small load generator for a running ``maskwatch serve`` (loopback addresses only)."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import numpy as np

from maskwatch.errors import MaskwatchError


def _check_loopback(url: str) -> str:
    """Return the detect URL for ``url``; refuse anything but a loopback host."""
    from maskwatch.serving.app import is_loopback

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MaskwatchError(f"{url}: expected an http:// URL")
    if not is_loopback(parts.hostname):
        raise MaskwatchError(f"{url}: load tests only run against this machine (127.0.0.1)")
    if parts.path in ("", "/"):
        return url.rstrip("/") + "/api/detect"
    return url


def run_load(
    url: str,
    image_bytes: bytes,
    clients: int = 8,
    seconds: float = 20.0,
    content_type: str = "image/jpeg",
    api_key: str | None = None,
    timeout: float = 30.0,
) -> dict:
    """Send ``image_bytes`` to ``url`` (``/api/detect`` if only a base URL is given) from
    ``clients`` threads, each with one request in flight, for ``seconds``.

    Returns ``{"requests", "rps", "p50_ms", "p95_ms", "p99_ms", "errors", "busy_503",
    "status"}``: requests answered (any status), successful answers per second, latency
    percentiles of the successful ones, failed requests (non-200 or connection errors),
    503 answers (server busy) and a count per status.
    """
    import httpx

    target = _check_loopback(url)
    if clients < 1 or seconds <= 0:
        raise MaskwatchError("clients must be >= 1 and seconds > 0")
    headers = {"content-type": content_type}
    if api_key:
        headers["x-api-key"] = api_key
    lock = threading.Lock()
    latencies: list[float] = []
    status: dict[str, int] = {}
    start = time.perf_counter()
    deadline = start + seconds

    def worker() -> None:
        with httpx.Client(timeout=timeout) as client:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    code = str(client.post(target, content=image_bytes, headers=headers)
                               .status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    status[code] = status.get(code, 0) + 1
                    if code == "200":
                        latencies.append(ms)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ok = np.asarray(latencies) if latencies else None
    total = sum(status.values())
    return {
        "requests": total,
        "rps": round(len(latencies) / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": round(float(np.percentile(ok, 50)), 1) if ok is not None else None,
        "p95_ms": round(float(np.percentile(ok, 95)), 1) if ok is not None else None,
        "p99_ms": round(float(np.percentile(ok, 99)), 1) if ok is not None else None,
        "errors": total - len(latencies),
        "busy_503": status.get("503", 0),
        "status": dict(sorted(status.items())),
    }
