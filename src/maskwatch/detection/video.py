"""Video I/O: read frames from files, cameras and streams; write H.264 MP4 (with audio)."""

from __future__ import annotations

import contextlib
import queue
import re
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from maskwatch.console import note
from maskwatch.errors import MaskwatchError

STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
DEFAULT_FPS = 25.0


def is_camera(spec: str) -> bool:
    """A camera index (``0``), unless a file or folder of that name exists (``2024/``)."""
    return str(spec).isdigit() and not Path(str(spec)).exists()


def is_stream(spec: str) -> bool:
    return str(spec).lower().startswith(STREAM_PREFIXES)


def safe_spec(spec: str) -> str:
    """The source as safe to print: a stream URL without its user and password."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", str(spec))


def source_name(spec: str) -> str:
    """A file-name-safe name for a source: the file stem, ``camera0``, or the stream host."""
    spec = str(spec)
    if is_camera(spec):
        return f"camera{int(spec)}"
    if is_stream(spec):
        rest = spec.split("://", 1)[1].split("@")[-1]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", rest).strip("._-")[:80] or "stream"
    return Path(spec).stem


class VideoSource:
    """Frames from a video file, a camera index or a stream URL, as RGB arrays.

    Raises MaskwatchError with one clear line if the source cannot be opened.
    """

    def __init__(self, spec: str | int):
        import cv2

        self.spec = str(spec)
        self.live = is_camera(self.spec) or is_stream(self.spec)
        if is_camera(self.spec):
            self._cap = cv2.VideoCapture(int(self.spec))
            if not self._cap.isOpened():
                raise MaskwatchError(f"camera {self.spec}: cannot open (no such camera?)")
        else:
            if not self.live:
                path = Path(self.spec)
                if not path.is_file():
                    raise MaskwatchError(f"{self.spec}: no such video file")
                if path.stat().st_size == 0:
                    raise MaskwatchError(f"{self.spec}: empty file (0 bytes)")
            self._cap = cv2.VideoCapture(self.spec)
            if not self._cap.isOpened():
                what = "stream" if self.live else "video"
                raise MaskwatchError(f"{safe_spec(self.spec)}: cannot open this {what} with "
                                     "OpenCV")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.5 <= fps <= 1000 else DEFAULT_FPS
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: int | None = count if count > 0 and not self.live else None
        self.frames_read = 0
        self.name = source_name(self.spec)
        self._limited = False  # stopped by max_frames
        self._last_ms = 0.0  # the last frame's time stamp

    def frames(self, max_frames: int | None = None) -> Iterator[np.ndarray]:
        """Yield RGB frames until the end, an unreadable frame, or ``max_frames``."""
        import cv2

        while True:
            if max_frames is not None and self.frames_read >= max_frames:
                self._limited = True
                break
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                break
            self.frames_read += 1
            self._last_ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
            if bgr.ndim == 2:
                yield cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
            else:
                yield np.ascontiguousarray(bgr[:, :, 2::-1])

    def ended_early(self) -> bool:
        """True when a file stopped well before its end (a frame failed to decode); not when
        ``max_frames`` stopped it. The container's frame count is only an estimate
        (duration x average frame rate: a variable-frame-rate file has fewer frames), so
        short of it, the last frame's time stamp must also fall short of the duration."""
        if self.frame_count is None or self._limited or self.frames_read >= self.frame_count - 1:
            return False
        duration_ms = 1000.0 * self.frame_count / self.fps
        return self._last_ms < duration_ms - max(1000.0, 0.05 * duration_ms)

    def close(self) -> None:
        self._cap.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VideoWriteError(MaskwatchError):
    """The annotated video could not be written (ffmpeg failed: a full disk...)."""


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def has_audio(path: str | Path) -> bool:
    """Whether ffmpeg sees an audio stream in ``path``."""
    try:
        res = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-i", str(path)],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(re.search(r"Stream #\d+:\d+.*: Audio:", res.stderr))


class VideoWriter:
    """H.264 (libx264, yuv420p) MP4 writer through imageio-ffmpeg's bundled ffmpeg.

    Frames are piped to ffmpeg, which writes ``<out>.part.mp4``, renamed on :meth:`close`;
    if ``audio_from`` has an audio track it is muxed in, otherwise (or if that fails) a
    warning says it was dropped. Odd widths/heights are padded by one pixel (yuv420p needs
    even sizes). If ffmpeg fails (a full disk: "Error writing trailer"), the partial file
    is removed and MaskwatchError says why in one line.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int],
                 audio_from: str | Path | None = None, quality: int = 23):
        import tempfile

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.stem + ".part.mp4")
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.audio_from = audio_from
        self.frames = 0
        self.warnings: list[str] = []
        params = ["-crf", str(quality), "-preset", "veryfast", "-movflags", "+faststart"]
        if self.size[0] % 2 or self.size[1] % 2:
            params += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-s", f"{self.size[0]}x{self.size[1]}",
               "-r", f"{self.fps:.3f}", "-i", "-", "-an", "-c:v", "libx264",
               "-pix_fmt", "yuv420p", *params, str(self.tmp)]
        self._log = tempfile.TemporaryFile()  # ffmpeg's errors, read when it fails
        # its own session: a Ctrl+C in the terminal reaches maskwatch only, which then
        # closes the file (a camera's recording) or drops it (a file's partial copy)
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._log, start_new_session=True)
        self._closed = False

    def write(self, rgb: np.ndarray) -> None:
        if rgb.shape[1] != self.size[0] or rgb.shape[0] != self.size[1]:
            import cv2

            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        try:
            self._proc.stdin.write(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
        except OSError:  # ffmpeg quit (a full disk, a bad size): say why, drop the file
            self._fail()
        self.frames += 1

    def _ffmpeg_error(self) -> str:
        self._log.seek(0)
        lines = [ln.strip() for ln in self._log.read().decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        return lines[-1][:300] if lines else f"exit status {self._proc.returncode}"

    def _fail(self) -> None:
        """Stop ffmpeg, remove the partial file and raise its error as one line."""
        self._closed = True
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        msg = self._ffmpeg_error()
        self._log.close()
        self.tmp.unlink(missing_ok=True)
        raise VideoWriteError(f"{self.path}: cannot write the video ({msg})")

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file (the work was cancelled or failed)."""
        if self._closed:
            return
        self._closed = True
        self._proc.kill()
        self._proc.wait()
        self._log.close()
        self.tmp.unlink(missing_ok=True)

    def close(self) -> Path:
        """Finish the file (also after Ctrl-C) and mux the source's audio; returns the path.

        Raises MaskwatchError (and removes the partial file) when ffmpeg failed."""
        if self._closed:
            return self.path
        try:
            self._proc.stdin.close()
        except OSError:
            self._fail()
        if self._proc.wait() != 0 or not self.tmp.is_file() or self.frames == 0:
            self._fail()
        self._closed = True
        self._log.close()
        if self.audio_from is not None and not is_camera(str(self.audio_from)) and (
            has_audio(self.audio_from)
        ):
            muxed = self.path.with_name(self.path.stem + ".mux.mp4")
            cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(self.tmp),
                   "-i", str(self.audio_from), "-map", "0:v:0", "-map", "1:a:0?", "-c:v",
                   "copy", "-c:a", "aac", "-shortest", "-movflags", "+faststart", str(muxed)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
                ok = res.returncode == 0 and muxed.is_file()
                err = res.stderr.strip().splitlines()[-1:] if res.stderr else []
            except (OSError, subprocess.SubprocessError) as exc:
                ok, err = False, [str(exc)]
            if ok:
                self.tmp.unlink()
                muxed.replace(self.tmp)
            else:
                if muxed.exists():
                    muxed.unlink()
                self._warn(f"{self.path.name}: audio dropped (mux failed: {' '.join(err)})")
        try:
            self.tmp.replace(self.path)
        except OSError as exc:
            self.tmp.unlink(missing_ok=True)
            raise VideoWriteError(f"{self.path}: cannot write the video "
                                 f"({exc.strerror or exc})") from None
        return self.path

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        note(f"warning: {msg}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_DONE = object()


def prefetch(items: Iterable, depth: int = 4) -> Iterator:
    """Yield ``items`` produced by a background thread, at most ``depth`` ahead.

    Video decoding (OpenCV releases the GIL) then overlaps with detection. An exception in
    the producer is raised in the consumer; leaving the loop early stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, name="maskwatch-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class BackgroundWriter:
    """Draws and encodes frames in a background thread, so encoding overlaps detection.

    ``render(frame, faces) -> rgb`` runs in that thread; ``write`` blocks only when
    ``depth`` frames are waiting. ``close`` finishes the file (also after Ctrl-C).
    """

    def __init__(self, writer: VideoWriter, render, depth: int = 8):
        self.writer = writer
        self.render = render
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="maskwatch-encode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is None:
                try:
                    self.writer.write(self.render(*item))
                except BaseException as exc:  # reported on the next write or on close
                    self._error = exc

    def write(self, frame: np.ndarray, faces) -> None:
        if self._error is not None:
            raise self._error
        self._q.put((frame, faces))

    def abort(self) -> None:
        """Stop encoding and remove the partial file (the work failed or was cancelled)."""
        self._error = self._error or VideoWriteError("aborted")
        self._q.put(_DONE)
        self._thread.join()
        self.writer.abort()

    def close(self) -> Path:
        self._q.put(_DONE)
        self._thread.join()
        if self._error is not None:
            self.writer.abort()
            raise self._error
        return self.writer.close()


class TrackedVideo:
    """The one video path: decode a source, detect and track every frame, and optionally
    draw and encode the annotated H.264 MP4 (with the source's audio), as ``detect`` and
    the web API's video jobs both do.

    Iterating yields ``(index, rgb, faces)``; decoding runs in a reader thread and drawing
    plus encoding in a writer thread, so they overlap detection. ``out``: the MP4 path, or
    a callable giving it (asked at the first frame), or None; ``annotate(rgb, faces)`` draws
    its frames (default: an ``Annotator()``). After the loop, ``written`` is the finished
    file and :meth:`people` the people per label the tracker counted.
    ``detect_every``: detect on every Nth frame only (from the first); the frames between
    carry the tracker's faces, moved on at their speed (see ``IoUTracker.carry``).
    ``copy_size``: frames are drawn and encoded shrunk by 2, 4 or 8 while their long side
    stays at least this (0: full size; ``detect`` is always given the whole frame).
    """

    def __init__(self, source: VideoSource, detect, out=None, max_frames: int | None = None,
                 tracker=None, annotate=None, detect_every: int = 1, copy_size: int = 0):
        from maskwatch.detection.draw import Annotator
        from maskwatch.detection.tracker import IoUTracker

        self.source = source
        self.detect = detect
        self.out = out
        self.max_frames = max_frames
        self.tracker = tracker if tracker is not None else IoUTracker()
        self.annotate = annotate if annotate is not None else Annotator()
        self.written: Path | None = None
        self.frames = 0
        if detect_every < 1:
            raise MaskwatchError(f"--detect-every must be at least 1, got {detect_every}")
        self.detect_every = int(detect_every)
        self.copy_size = int(copy_size)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, list]]:
        src = self.source
        writer = None
        try:
            for rgb in prefetch(src.frames(self.max_frames)):
                if self.frames % self.detect_every == 0:
                    faces = self.tracker.update(self.detect(rgb))
                else:
                    faces = self.tracker.carry()
                yield self.frames, rgb, faces
                if self.out is not None:
                    if writer is None:
                        path = self.out() if callable(self.out) else self.out
                        size, render = self._renderer(*rgb.shape[1::-1])
                        writer = BackgroundWriter(
                            VideoWriter(path, src.fps, size,
                                        audio_from=None if src.live else src.spec),
                            render,
                        )
                    writer.write(rgb, faces)
                self.frames += 1
        except KeyboardInterrupt:  # Ctrl-C on a camera: keep what was recorded; a file's
            if writer is not None:  # partial copy is dropped (a rerun writes it whole)
                if src.live:
                    with contextlib.suppress(VideoWriteError):  # never hides the Ctrl-C
                        self.written = writer.close()
                else:
                    writer.abort()
            raise  # never replaced by a write error: the run stops
        except BaseException:  # failed, cancelled, or the loop left early: no partial file
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            self.written = writer.close()  # VideoWriteError (file removed) if ffmpeg failed

    def _renderer(self, width: int, height: int):
        """The written frames' (width, height) and ``render(frame, faces)`` drawing one:
        shrunk by the whole factor ``copy_size`` allows, boxes with it."""
        from maskwatch.detection.draw import shrink_for_copy
        from maskwatch.imaging import copy_factor

        k = copy_factor(width, height, self.copy_size)
        if k == 1:
            return (width, height), self.annotate

        def render(frame: np.ndarray, faces) -> np.ndarray:
            return self.annotate(*shrink_for_copy(frame, faces, self.copy_size))

        return (width // k, height // k), render

    def people(self, leaving_out: set[int] = frozenset()) -> dict[str, int]:
        """People per label: each track seen long enough counts once (see IoUTracker),
        but those whose track ids are in ``leaving_out``."""
        return self.tracker.counts(leaving_out)
