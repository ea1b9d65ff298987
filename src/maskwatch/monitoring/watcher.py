"""One thread per source: decode, detect, track, and write one event per tracked person.

A person's event is written when their track ends (out of view for ``max_missed`` frames,
or the source ended or dropped): source, track id, the label the track carried most often,
first/last seen, frames, mean classifier score, and optionally a snapshot (the frame where
the face was seen best, the person boxed, faces blurred with ``blur``). Per-minute counts
(face-frames and distinct people per label) are handed over when each minute closes.

Times: a camera or stream uses the wall clock; a video file is laid on the wall clock so
that it ends when its watch started (frame ``i`` of ``n`` is at ``start - (n - i) / fps``).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from maskwatch.detection.pipeline import detect_decoded
from maskwatch.detection.tracker import IoUTracker, Track
from maskwatch.detection.video import (
    TrackedVideo,
    VideoSource,
    is_camera,
    is_stream,
    safe_spec,
    source_name,
)
from maskwatch.errors import MaskwatchError
from maskwatch.labels import is_counted

#: Longest side of a snapshot, in pixels.
SNAPSHOT_SIZE = 640
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"


def split_source(item: str) -> tuple[str, str]:
    """``NAME=SPEC`` -> (NAME, SPEC); a plain SPEC is named by :func:`source_name`.

    The name is what events record (a stream's password never is)."""
    item = str(item)
    if "=" in item and not Path(item).exists():
        name, spec = item.split("=", 1)
        if name and all(c in NAME_CHARS for c in name) and spec:
            return _check_name(name, item), spec
        if name and not any(c in name for c in "/\\:"):  # meant as NAME=SOURCE
            if not spec:
                raise MaskwatchError(f"{item}: no source after '=' (NAME=SOURCE)")
            raise MaskwatchError(f"{safe_spec(item)}: a source name may only use letters, digits, "
                                 "'.', '_' and '-'")
    return _check_name(source_name(item), item), item


def _check_name(name: str, item: str) -> str:
    # the name is a folder under --snapshots: "." or ".." would put snapshots outside it
    if not name.strip("."):
        raise MaskwatchError(f"{safe_spec(item)}: {name!r} cannot name a source (NAME=SOURCE)")
    return name


@dataclass
class WatchConfig:
    """How each source is watched."""

    min_frames: int = 3  # a track seen in fewer frames is noise, not a person
    max_missed: int = 10  # frames a person may be out of view before their track ends
    snapshots: Path | None = None
    blur: bool = False
    max_frames: int | None = None  # per source, over all reconnections
    reconnect_min: float = 1.0  # first wait after a drop, seconds (doubles each failure)
    reconnect_max: float = 60.0
    max_reconnects: int | None = None  # None: forever

    def __post_init__(self):
        if self.min_frames < 1:
            raise MaskwatchError(f"--min-frames must be at least 1, got {self.min_frames}")
        if self.reconnect_min <= 0 or self.reconnect_max < self.reconnect_min:
            raise MaskwatchError("reconnect delays must be positive, the maximum >= the minimum")


@dataclass
class _Person:
    """What the watcher gathers about one track while it lives."""

    first_seen: float
    last_seen: float = 0.0
    frames: int = 0
    scores: dict = field(default_factory=dict)  # sums of raw classifier scores
    face_scores: float = 0.0
    best: float = -1.0  # snapshot quality: face area x face score
    frame: np.ndarray | None = None
    boxes: list = field(default_factory=list)  # all faces in that frame (for blurring)
    box: list | None = None


class SourceWatcher:
    """Watch one source until it ends (a file), ``stop`` is set, or it cannot be reopened.

    ``detector``: ``detect(rgb) -> faces`` (this thread's own). ``writer``: a
    :class:`~maskwatch.monitoring.store.StoreWriter` or anything with ``add_event`` and
    ``add_counts``. ``alert``: an :class:`~maskwatch.detection.alerts.AlertHook` fed every
    frame. ``open_source(spec)`` defaults to :class:`VideoSource`.
    """

    def __init__(self, spec: str, name: str, detector, writer, config: WatchConfig,
                 stop: threading.Event | None = None, alert=None,
                 log: Callable[[str], None] | None = None,
                 open_source: Callable = VideoSource, clock: Callable[[], float] = time.time,
                 on_frame: Callable[[int], None] | None = None):
        self.spec, self.name = str(spec), name
        self.detector, self.writer, self.config = detector, writer, config
        self.stop = stop or threading.Event()
        self.alert = alert
        self.log = log or (lambda msg: print(f"maskwatch: {msg}", file=sys.stderr, flush=True))
        self.open_source = open_source
        self.clock = clock
        self.on_frame = on_frame
        self.live = is_camera(self.spec) or is_stream(self.spec)
        self.tracker = IoUTracker(max_missed=config.max_missed, min_hits=config.min_frames,
                                  threshold=getattr(detector, "threshold", None))
        self.frames = 0
        self.events = 0
        self.reconnects = 0
        self.error: str | None = None
        self._people: dict[int, _Person] = {}
        self._minute: float | None = None
        self._minute_faces: dict[str, int] = {}
        self._minute_people: dict[str, set] = {}
        self._raw: list[dict] = []

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        failures = 0
        try:
            while not self.stop.is_set():
                try:
                    src = self.open_source(self.spec)
                except MaskwatchError as exc:
                    if not self.live:
                        self.error = str(exc)
                        self.log(f"error: {exc}")
                        return
                    if not self._wait_reconnect(failures, f"cannot open ({exc})"):
                        return
                    failures += 1
                    continue
                got = self._read(src)
                self._end_tracks()
                if not self.live:
                    if got == 0 and not self.stop.is_set():
                        self.error = f"{self.spec}: no frame could be decoded"
                        self.log(f"error: {self.error}")
                    return
                if self.stop.is_set() or self._frames_done():
                    return
                failures = 0 if got else failures
                if not self._wait_reconnect(failures, f"stream dropped after {got} frame(s)"):
                    return
                failures += 1
        finally:
            self._end_tracks()
            self._flush_minute()

    def _frames_done(self) -> bool:
        return self.config.max_frames is not None and self.frames >= self.config.max_frames

    def _wait_reconnect(self, failures: int, why: str) -> bool:
        """Log and wait before the next try; False when there will be none."""
        cfg = self.config
        if cfg.max_reconnects is not None and self.reconnects >= cfg.max_reconnects:
            self.error = f"{self.name}: {why}; gave up after {self.reconnects} reconnection(s)"
            self.log(f"error: {self.error}")
            return False
        delay = min(cfg.reconnect_max, cfg.reconnect_min * 2 ** failures)
        self.reconnects += 1
        self.log(f"{self.name}: {why}; reconnecting in {delay:g}s (attempt {self.reconnects})")
        return not self.stop.wait(delay)

    def _read(self, src) -> int:
        """Process frames from an opened source; returns how many were read."""
        fps = float(getattr(src, "fps", 0) or 25.0)
        got = 0
        left = None if self.config.max_frames is None else self.config.max_frames - self.frames
        # a file is laid on the wall clock so that it ends when its watch starts: no event
        # lies in the future, and a clip watched now shows among the last hour's events
        length = getattr(src, "frame_count", None)
        if length and left is not None:
            length = min(length, left)
        start = self.clock() - (length / fps if length and not self.live else 0.0)
        # the one video path (as detect and the web's video jobs): decoding in a reader
        # thread, detection and tracking here, with this source's tracker across reconnects
        video = TrackedVideo(src, self._detect, max_frames=left, tracker=self.tracker)
        try:
            for _index, rgb, faces in video:
                if self.stop.is_set():
                    break
                self._observe(rgb, faces, self.clock() if self.live else start + got / fps)
                got += 1
        finally:
            src.close()
        return got

    # ------------------------------------------------------------ one frame

    def _detect(self, rgb: np.ndarray) -> list:
        faces = detect_decoded(self.detector, rgb)
        self._raw = [dict(f.scores) for f in faces]  # the tracker smooths scores in place
        return faces

    def _observe(self, rgb: np.ndarray, faces: list, t: float) -> None:
        """Count one tracked frame taken at time ``t``; store the people who left."""
        raw = self._raw
        minute = float(math.floor(t / 60) * 60)
        if self._minute is not None and minute != self._minute:
            self._flush_minute()
        self._minute = minute
        snap_frame = None
        for i, (face, scores) in enumerate(zip(faces, raw)):
            person = self._people.get(face.track_id)
            if person is None:
                person = self._people[face.track_id] = _Person(first_seen=t)
            person.last_seen = t
            person.frames += 1
            person.face_scores += float(face.face_score)
            for k, v in scores.items():
                person.scores[k] = person.scores.get(k, 0.0) + float(v)
            label = face.label or "face"
            if is_counted(face):  # uncertain face boxes are not counted
                self._minute_faces[label] = self._minute_faces.get(label, 0) + 1
                self._minute_people.setdefault(label, set()).add(face.track_id)
            if self.config.snapshots is not None:
                x1, y1, x2, y2 = face.box[:4]
                quality = max(0, x2 - x1) * max(0, y2 - y1) * float(face.face_score)
                if quality > person.best * 1.05:
                    if snap_frame is None:
                        snap_frame = _shrink(rgb, faces)
                    person.best = quality
                    person.frame, person.boxes = snap_frame[0], snap_frame[1]
                    person.box = snap_frame[1][i]
        self.frames += 1
        if self.alert is not None:
            if self.alert.update(faces, self.name, self.frames - 1):
                self.log(f"alert: non-compliant face in {self.name}")
        self._emit(self.tracker.finished)
        self.tracker.finished.clear()  # days of tracks must not pile up in memory
        if self.on_frame is not None:
            self.on_frame(1)

    def _end_tracks(self) -> None:
        """The source ended or dropped: every person in view leaves now."""
        self._emit(list(self.tracker.finished) + list(self.tracker.tracks.values()))
        self.tracker.finished.clear()
        self.tracker.tracks.clear()

    def _emit(self, tracks: list[Track]) -> None:
        for track in tracks:
            person = self._people.pop(track.track_id, None)
            if person is None or track.hits < self.config.min_frames or not track.counted:
                continue
            label = track.labels_seen.most_common(1)[0][0] if track.labels_seen else None
            if label is not None and person.scores.get(label) is not None:
                score = person.scores[label] / person.frames
            else:
                score = person.face_scores / person.frames
            row = {
                "source": self.name, "track_id": int(track.track_id), "label": label,
                "first_seen": person.first_seen, "last_seen": person.last_seen,
                "frames": person.frames, "score": round(float(score), 6), "snapshot": None,
            }
            if person.frame is not None:
                row["snapshot"] = self._snapshot(person, track, label, score)
            self.events += 1
            self.writer.add_event(row)

    def _snapshot(self, person: _Person, track: Track, label, score) -> str | None:
        from maskwatch.detection.draw import draw_faces
        from maskwatch.detection.pipeline import Face
        from maskwatch.imaging import save_rgb

        frame = person.frame
        if self.config.blur:
            from maskwatch.detection.privacy import blur_faces

            frame = blur_faces(frame, person.boxes)
        face = Face(box=person.box, face_score=1.0, label=label, score=score,
                    track_id=track.track_id)
        when = datetime.fromtimestamp(person.first_seen, timezone.utc)
        folder = Path(self.config.snapshots) / self.name / when.strftime("%Y-%m-%d")
        path = folder / f"{self.name}-{when.strftime('%H%M%S.%f')[:-3]}-t{track.track_id}.jpg"
        try:
            save_rgb(path, draw_faces(frame, [face]), quality=85)
        except (OSError, MaskwatchError) as exc:  # a full disk: the event is kept without it
            self.log(f"snapshot not written: {exc}")
            return None
        return str(path.resolve())

    def _flush_minute(self) -> None:
        if self._minute is None:
            return
        rows = [{"source": self.name, "minute": self._minute, "label": label, "faces": n,
                 "people": len(self._minute_people.get(label, ()))}
                for label, n in self._minute_faces.items()]
        self.writer.add_counts(rows)
        self._minute_faces, self._minute_people = {}, {}


def _shrink(rgb: np.ndarray, faces: list) -> tuple[np.ndarray, list]:
    """A copy of the frame at most SNAPSHOT_SIZE on its long side, and the boxes scaled."""
    h, w = rgb.shape[:2]
    scale = min(1.0, SNAPSHOT_SIZE / max(h, w))
    boxes = [[int(round(v * scale)) for v in f.box[:4]] for f in faces]
    if scale == 1.0:
        return rgb.copy(), boxes
    import cv2

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), boxes


# ---------------------------------------------------------------- retention


def retention_done(snapshots: Path | None, cutoff: float,
                   log: Callable[[str], None]) -> Callable[[int, list[str]], None]:
    """The writer's callback after old events are deleted: delete their snapshots, and any
    snapshot file under ``snapshots`` older than ``cutoff`` (left by a killed run)."""

    def done(n: int, paths: list[str]) -> None:
        removed = 0
        for p in paths:
            try:
                Path(p).unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log(f"{p}: cannot delete ({exc})")
        if snapshots is not None and Path(snapshots).is_dir():
            for p in sorted(Path(snapshots).rglob("*.jpg")):
                try:
                    if p.stat().st_mtime < cutoff:
                        p.unlink()
                        removed += 1
                except OSError:
                    continue
            for d in sorted(Path(snapshots).rglob("*"), key=lambda q: -len(q.parts)):
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
        if n or removed:
            log(f"retention: deleted {n} event(s) and {removed} snapshot(s) older than "
                f"{datetime.fromtimestamp(cutoff, timezone.utc).isoformat(timespec='seconds')}")

    return done
