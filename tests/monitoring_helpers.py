"""Shared helpers for the watch tests: a short clip with two people, and a scripted detector."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from detection_helpers import head, masked_head, paste

from maskwatch.detection.pipeline import Face

W, H, N, FPS = 320, 240, 40, 10.0


def people_frames() -> list[np.ndarray]:
    """An unmasked person crossing (frames 0-17), then nobody, then a masked one (22-39)."""
    frames = []
    for i in range(N):
        canvas = np.full((H, W, 3), 110, np.uint8)
        if i < 18:
            paste(canvas, head(), 5 + i * 6, 40, 110)
        if i >= 22:
            paste(canvas, masked_head(), 200 - (i - 22) * 4, 60, 100)
        frames.append(canvas)
    return frames


def write_clip(path: Path) -> Path:
    from maskwatch.detection.video import VideoWriter

    with VideoWriter(path, FPS, (W, H)) as w:
        for f in people_frames():
            w.write(f)
    return path


class ScriptedDetector:
    """Faces from a script: ``script[i]`` is the list of (box, label, p) of frame ``i`` (the
    frame index is read from pixel (0, 0), channel 0, of the frame)."""

    classes = ["with_mask", "without_mask"]

    def __init__(self, script: dict[int, list]):
        self.script = script

    def detect(self, rgb: np.ndarray) -> list[Face]:
        faces = []
        for box, label, p in self.script.get(int(rgb[0, 0, 0]), []):
            other = "with_mask" if label == "without_mask" else "without_mask"
            faces.append(Face(list(box), 0.9, label, p, {label: p, other: 1 - p}))
        return faces


class ListSource:
    """A stand-in for VideoSource: numbered frames (index in pixel (0, 0))."""

    def __init__(self, n: int, fps: float = 10.0, start: int = 0, size=(64, 48)):
        self.n, self.fps, self.start, self.size = n, fps, start, size
        self.closed = False

    def frames(self, max_frames=None):
        for i in range(self.n if max_frames is None else min(self.n, max_frames)):
            frame = np.full((self.size[1], self.size[0], 3), 100, np.uint8)
            frame[0, 0, 0] = self.start + i
            yield frame

    def close(self):
        self.closed = True


class NoDetector:
    """The dashboard needs no model; the app still wants a detector and a classifier."""

    classifier = SimpleNamespace(classes=["with_mask", "without_mask"], info=None)

    def detect(self, rgb):
        return []
