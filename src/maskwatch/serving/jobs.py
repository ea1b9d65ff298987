"""Background video jobs for the web API: a bounded queue, worker threads and a temp folder."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskwatch.detection.draw import COPY_SIZE
from maskwatch.errors import MaskwatchError
from maskwatch.labels import is_counted

#: Job states, in order.
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "error", "cancelled"
#: A finished job deleted by its client: forgotten, its files gone (the DELETE answer says it).
DELETED = "deleted"


class JobsBusy(MaskwatchError):
    """Too many video jobs are queued or running."""


class JobCancelled(Exception):
    """Raised inside a job when the server shuts down or the job is deleted."""


class OverBudget(MaskwatchError):
    """A video whose frames x pixels exceed the job budget."""


@dataclass
class VideoFacts:
    """What a video container's header says, read before a job is accepted."""

    width: int
    height: int
    frames: int | None  # None when the container does not say
    fps: float

    def work(self, max_frames: int) -> int | None:
        """Pixels to process (frames x width x height, frames capped), None if unknown."""
        if self.frames is None:
            return None
        return min(self.frames, max_frames) * self.width * self.height


def probe_video(path: Path, name: str) -> VideoFacts:
    """Read a video's size, frame count and rate from its header (no frame is decoded
    beyond what OpenCV needs to open it); MaskwatchError when it cannot be opened."""
    from maskwatch.detection.video import VideoSource

    try:
        src = VideoSource(str(path))
    except MaskwatchError:
        raise MaskwatchError(f"{name}: not a video file that can be read") from None
    try:
        if src.width <= 0 or src.height <= 0:
            raise MaskwatchError(f"{name}: the video does not say its frame size")
        return VideoFacts(src.width, src.height, src.frame_count, src.fps)
    finally:
        src.close()


def check_budget(facts: VideoFacts, name: str, max_frames: int, max_pixels: int,
                 budget: int) -> None:
    """Refuse a video over the pixel cap or the job budget, before any work is queued."""
    w, h = facts.width, facts.height
    if w * h > max_pixels:
        raise OverBudget(f"{name}: {w}x{h} frames are over the limit of {max_pixels:,} pixels")
    work = facts.work(max_frames)
    if work is not None and work > budget:
        raise OverBudget(
            f"{name}: {w}x{h} x {min(facts.frames or 0, max_frames):,} frames is "
            f"{work / 1e6:,.0f} megapixel-frames, over this server's job budget of "
            f"{budget / 1e6:,.0f} (send a shorter or smaller clip)"
        )


@dataclass
class Job:
    """One uploaded video and what processing it produced so far."""

    id: str
    dir: Path
    input_path: Path
    filename: str
    status: str = QUEUED
    frames_done: int = 0
    frames_total: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    truncated: bool = False
    error: str | None = None
    records: list[dict] = field(default_factory=list)
    people: dict[str, int] | None = None
    blur: str | None = None  # which faces the annotated video blurs: all, masked, unmasked
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def output_path(self) -> Path:
        return self.dir / "annotated.mp4"

    @property
    def active(self) -> bool:
        return self.status in (QUEUED, RUNNING)

    def progress(self) -> float:
        """Fraction done, 0..1 (1 once finished)."""
        if self.status == DONE or (self.status == DELETED and self.frames_total is not None
                                   and self.frames_done >= self.frames_total):
            return 1.0
        if self.frames_total:
            return min(0.99, self.frames_done / self.frames_total)
        return 0.0

    def counts(self) -> dict[str, int]:
        """Counted face detections per label summed over all frames (one person in 8 frames
        counts 8; see ``people``), the ``uncounted`` (uncertain) face boxes, and the most
        counted faces in one frame."""
        totals: dict[str, int] = {}
        most = uncounted = 0
        for rec in self.records:
            faces = [f for f in rec["faces"] if is_counted(f)]
            uncounted += len(rec["faces"]) - len(faces)
            most = max(most, len(faces))
            for face in faces:
                label = str(face.get("label"))
                totals[label] = totals.get(label, 0) + 1
        totals["uncounted"] = uncounted
        totals["max_faces_in_frame"] = most
        return totals


#: process(job, stop_event) does the work and fills the job in; it raises JobCancelled
#: when stop_event is set, MaskwatchError for a bad video.
Processor = Callable[[Job, threading.Event], None]


class JobManager:
    """Runs video jobs in a small thread pool; keeps a bounded number of jobs and files."""

    def __init__(
        self,
        process: Processor,
        max_active: int = 4,
        keep_finished: int = 20,
        workers: int = 1,
        root: Path | None = None,
    ) -> None:
        self._process = process
        self.max_active = max_active
        self.keep_finished = keep_finished
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="maskwatch-serve-"))
        self._own_root = root is None
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maskwatch-job")

    def new_job(self, filename: str, suffix: str) -> Job:
        """Reserve a job slot and its folder; raises JobsBusy when the queue is full."""
        with self._lock:
            if self._stop.is_set():
                raise JobsBusy("the server is shutting down")
            active = sum(1 for j in self._jobs.values() if j.active)
            if active >= self.max_active:
                raise JobsBusy(
                    f"{active} video jobs are already queued or running; try again later"
                )
            job_id = secrets.token_urlsafe(12)
            folder = self.root / job_id
            folder.mkdir(parents=True)
            job = Job(
                id=job_id, dir=folder, input_path=folder / f"input{suffix}", filename=filename
            )
            self._jobs[job_id] = job
            self._evict_locked()
            return job

    def discard(self, job: Job) -> None:
        """Forget a job that was never started (its upload failed)."""
        with self._lock:
            self._jobs.pop(job.id, None)
        shutil.rmtree(job.dir, ignore_errors=True)

    def start(self, job: Job) -> None:
        """Queue a reserved job whose input file has been written."""
        self._pool.submit(self._run, job)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Stop a queued or running job and delete its files (it stays, ``cancelled``); a
        finished job is forgotten with its files (``deleted``). None when there is no such
        job. A running job stops at its next frame."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job.cancel.set()
            if job.status == QUEUED:
                job.status = CANCELLED
                shutil.rmtree(job.dir, ignore_errors=True)
            elif not job.active:  # done, error or cancelled: nothing left to fetch
                job.status = DELETED
                del self._jobs[job_id]
                shutil.rmtree(job.dir, ignore_errors=True)
            return job

    def _run(self, job: Job) -> None:
        if self._stop.is_set() or job.cancel.is_set():
            job.status = CANCELLED
            shutil.rmtree(job.dir, ignore_errors=True)
            return
        job.status, job.started = RUNNING, time.time()
        try:
            self._process(job, _Either(self._stop, job.cancel))
            job.status = DONE
        except JobCancelled:
            job.status = CANCELLED
        except MaskwatchError as exc:
            job.status, job.error = FAILED, str(exc)
        except Exception as exc:  # a bug or a codec failure: report it on the job, keep serving
            job.status, job.error = FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = time.time()
            job.input_path.unlink(missing_ok=True)
            if job.status != DONE:  # no half-written video is ever served
                job.output_path.unlink(missing_ok=True)
            if job.cancel.is_set():
                if job.status != DELETED:  # deleted the moment it finished: stays so
                    job.status = CANCELLED
                shutil.rmtree(job.dir, ignore_errors=True)

    def _evict_locked(self) -> None:
        finished = sorted((j for j in self._jobs.values() if not j.active), key=lambda j: j.created)
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]
            shutil.rmtree(job.dir, ignore_errors=True)

    def shutdown(self) -> None:
        """Cancel running jobs, wait for the workers, and delete every job's files."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for job in self._jobs.values():
                if job.active:
                    job.status = CANCELLED
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            for job in list(self._jobs.values()):
                shutil.rmtree(job.dir, ignore_errors=True)


class _Either:
    """Set when either event is (the server stops, or the job is deleted)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def process_video(
    job: Job,
    stop: threading.Event,
    detect: Callable[[np.ndarray], list],
    max_frames: int,
    max_pixels: int,
    budget: int | None = None,
    annotate: Callable[[np.ndarray, list], np.ndarray] | None = None,
    threshold: float | None = None,
    copy_size: int = COPY_SIZE,
) -> None:
    """Detect and track faces in every frame of job.input_path and write the annotated
    H.264 MP4 with the source's audio: the same video path as ``maskwatch detect``.

    Fills job.records with ``{"frame", "time", "faces"}`` per frame and job.people with
    the people per label the tracker counted. ``budget`` bounds frames x pixels also while
    decoding, for containers whose header lies or is silent. A failed write (a full disk)
    fails the job, and no partial file is kept. ``annotate(rgb, faces)``
    draws the frames (default: boxes, labels and the count of faces in view).
    ``threshold``: the model's without_mask decision threshold, which tracks follow.
    ``copy_size``: the annotated MP4 is shrunk as ``detect``'s are (records keep the
    frames' own pixels).
    """
    from maskwatch.detection.tracker import IoUTracker
    from maskwatch.detection.video import TrackedVideo, VideoSource

    try:
        src = VideoSource(job.input_path)
    except MaskwatchError:
        raise MaskwatchError(f"{job.filename}: not a video file that can be read") from None
    try:
        if src.width * src.height > max_pixels:
            raise MaskwatchError(f"{job.filename}: {src.width}x{src.height} frames are over "
                                 f"the limit of {max_pixels:,} pixels")
        job.fps = src.fps
        job.frames_total = min(src.frame_count, max_frames) if src.frame_count else None
        video = TrackedVideo(src, detect, job.output_path, max_frames, annotate=annotate,
                             tracker=IoUTracker(threshold=threshold), copy_size=copy_size)
        for index, rgb, faces in video:
            if stop.is_set():
                raise JobCancelled()
            h, w = rgb.shape[:2]
            if w * h > max_pixels:
                raise MaskwatchError(
                    f"{job.filename}: {w}x{h} frames are over the limit of {max_pixels:,} "
                    "pixels"
                )
            if budget is not None and (index + 1) * w * h > budget:
                raise OverBudget(f"{job.filename}: stopped at frame {index}: over this "
                                 f"server's job budget of {budget / 1e6:,.0f} megapixel-frames")
            job.width, job.height = w, h
            job.records.append({"frame": index, "time": round(index / src.fps, 4),
                                "faces": [f.to_dict() for f in faces]})
            job.frames_done = index + 1
        if video.frames == 0:
            raise MaskwatchError(f"{job.filename}: no frames could be decoded")
        job.truncated = video.frames >= max_frames and (
            src.frame_count is None or src.frame_count > max_frames)
        job.frames_total = video.frames
        job.people = video.people()
    finally:
        src.close()
