"""Alert hook: run a command or POST JSON when a non-compliant face stays in view."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from urllib.parse import urlparse

from maskwatch.console import note
from maskwatch.errors import MaskwatchError
from maskwatch.labels import CANONICAL, INCORRECT_MASK, WITHOUT_MASK, is_counted, normalise_label

#: Labels that count as non-compliant (and can fire an alert) unless told otherwise.
NON_COMPLIANT = (WITHOUT_MASK, INCORRECT_MASK)


def parse_labels(text: str) -> tuple[str, ...]:
    """``"without_mask,incorrect_mask"`` -> a tuple of canonical labels (one-line error)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if normalise_label(t) is None]
    if not names or unknown:
        which = f"{', '.join(map(repr, unknown))} unknown; " if unknown else ""
        raise MaskwatchError(f"--non-compliant {text!r}: {which}give labels among "
                             f"{', '.join(CANONICAL)}, comma separated")
    return tuple(dict.fromkeys(normalise_label(t) for t in names))  # no_mask: without_mask


class AlertHook:
    """Fires when a non-compliant face has been seen for ``after`` consecutive frames.

    Faces that are not counted (``Face.counted`` False: an uncertain face box) never
    alert. ``non_compliant``: the labels that count (default without_mask and incorrect_mask); the
    event keeps its name ``unmasked_face`` and the face's own label says which it was.

    With tracked faces (``track_id`` set) the streak is counted per person; otherwise per
    frame (any unmasked face in view). At most one alert per ``interval`` seconds. The alert
    runs ``command`` (no shell; the JSON event on its stdin and in $MASKWATCH_ALERT) and/or
    POSTs the JSON event to ``url``, in a background thread so frames keep flowing.
    """

    def __init__(
        self,
        after: int = 10,
        command: str | None = None,
        url: str | None = None,
        interval: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
        non_compliant: tuple[str, ...] = NON_COMPLIANT,
    ):
        if after < 1:
            raise MaskwatchError(f"--alert-after must be at least 1 frame, got {after}")
        if interval < 0:
            raise MaskwatchError(f"--alert-interval must be >= 0 seconds, got {interval}")
        if not command and not url:
            raise MaskwatchError("an alert needs --alert-command or --alert-url")
        if url:
            try:
                parsed = urlparse(url)
                parsed.port  # noqa: B018 - raises ValueError for a port out of range
            except ValueError:  # "http://[::1/x": an unclosed IPv6 bracket
                parsed = None
            if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise MaskwatchError(f"--alert-url must be an http(s) URL, got {url!r}")
        try:
            self.argv = shlex.split(command) if command else None
        except ValueError as exc:  # an unclosed quote
            raise MaskwatchError(f"--alert-command {command!r}: {exc}") from None
        if command is not None and not self.argv:
            raise MaskwatchError("--alert-command is empty")
        if self.argv and shutil.which(self.argv[0]) is None:  # found now, not at the 1st alert
            raise MaskwatchError(f"--alert-command: {self.argv[0]!r} is not a command found "
                                 "on PATH or an executable file")
        self.url = url
        self.non_compliant = frozenset(non_compliant)
        self.after = int(after)
        self.interval = float(interval)
        self.timeout = timeout
        self.clock = clock
        self.log = log or note
        self._streaks: dict[object, int] = {}
        self._last_fired: float | None = None
        self._threads: list[threading.Thread] = []
        self.fired: list[dict] = []
        self.suppressed = 0
        self.errors: list[str] = []

    def reset(self) -> None:
        """Forget streaks (call between independent videos)."""
        self._streaks.clear()

    def update(self, faces: list, source: str = "", frame: int | None = None) -> dict | None:
        """Feed one frame's faces; returns the event if an alert fired on this frame."""
        unmasked = [f for f in faces
                    if f.label in self.non_compliant and is_counted(f)]
        keys = {f.track_id if f.track_id is not None else "frame" for f in unmasked}
        self._streaks = {k: self._streaks.get(k, 0) + 1 for k in keys}
        due = [k for k, n in self._streaks.items() if n >= self.after]
        if not due:
            return None
        now = self.clock()
        if self._last_fired is not None and now - self._last_fired < self.interval:
            self.suppressed += 1
            return None
        self._last_fired = now
        face = next(f for f in unmasked
                    if (f.track_id if f.track_id is not None else "frame") in due)
        event = {
            "event": "unmasked_face",
            "source": source,
            "frame": frame,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "consecutive_frames": max(self._streaks[k] for k in due),
            "unmasked_faces": len(unmasked),
            "face": face.to_dict(),
        }
        self.fired.append(event)
        thread = threading.Thread(target=self._send, args=(event,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return event

    def _send(self, event: dict) -> None:
        body = json.dumps(event).encode()
        if self.argv:
            try:
                subprocess.run(
                    self.argv, input=body, timeout=self.timeout, check=True,
                    env={**__import__("os").environ, "MASKWATCH_ALERT": body.decode()},
                    stdout=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                self._error(f"alert command timed out after {self.timeout:g} s: "
                            f"{shlex.join(self.argv)}")
            except (OSError, subprocess.SubprocessError) as exc:
                self._error(f"alert command failed: {exc}")
        if self.url:
            req = urllib.request.Request(
                self.url, data=body, method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "maskwatch"},
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    resp.read(1024)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                self._error(f"alert POST to {self.url} failed: {exc}")

    def _error(self, msg: str) -> None:
        self.errors.append(msg)
        self.log(msg)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for alerts still being sent (call before exit)."""
        for t in self._threads:
            t.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]
