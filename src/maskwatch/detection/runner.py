"""`maskwatch detect`: run the pipeline over images, videos, cameras and streams."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

from maskwatch.batching import (
    AppendWriter,
    check_batch_options,
    json_line,
    ordered_map,
    read_done,
    same_file_key,
    select_shard,
)
from maskwatch.console import note
from maskwatch.detection.alerts import NON_COMPLIANT
from maskwatch.detection.draw import COPY_SIZE, Annotator
from maskwatch.detection.images import detect_image, init_detector, process_image
from maskwatch.detection.pipeline import detect_decoded
from maskwatch.detection.tracker import IoUTracker
from maskwatch.detection.video import (
    TrackedVideo,
    VideoSource,
    VideoWriteError,
    is_camera,
    is_stream,
)
from maskwatch.errors import MaskwatchError
from maskwatch.imaging import (
    HEIF_SUFFIXES,
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    expand_inputs,
    is_video_path,
)
from maskwatch.labels import CANONICAL, INCORRECT_MASK, WITHOUT_MASK, is_counted


def iter_sources(items: list[str], report) -> Iterator[tuple[str, str]]:
    """Yield ("image"|"video", spec) for every input; bad items are reported, not raised."""
    for item in items:
        if is_camera(item) or is_stream(item):
            yield "video", item
            continue
        try:
            files = list(expand_inputs([item], keep_unmatched=True))
        except MaskwatchError as exc:
            report(str(exc))
            continue
        if not files:
            report(f"{item}: no image or video file here")
        folder = Path(item).is_dir()
        for f in files:
            suffix = f.suffix.lower()
            if folder and suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                continue
            if not f.exists():
                report(f"{f}: no such file or folder")
                continue
            yield ("video" if is_video_path(f) else "image"), str(f)


class OutputNamer:
    """Output paths under ``out``: keep the input's name; never overwrite an input file (the
    one being written, or any in ``protected``: the run's other inputs) or (without
    ``overwrite``) an existing file - a ``-1``, ``-2``... suffix is added instead."""

    def __init__(self, out: Path, overwrite: bool = False, protected: Iterable[Path] = ()):
        self.out = out
        self.overwrite = overwrite
        self.used: set[Path] = set()
        self.protected = {Path(p).resolve() for p in protected}

    def path(self, name: str, source: str | None = None) -> Path:
        base = self.out / name
        stem, suffix = base.stem, base.suffix
        candidate, n = base, 0
        src = Path(source).resolve() if source and Path(source).exists() else None
        while (
            candidate in self.used
            or (src is not None and candidate.resolve() == src)
            or (candidate.exists() and (not self.overwrite
                                        or candidate.resolve() in self.protected))
        ):
            n += 1
            candidate = base.with_name(f"{stem}-{n}{suffix}")
        self.used.add(candidate)
        return candidate


CSV_COLUMNS = ["path", "frame", "face", "x1", "y1", "x2", "y2", "label", "score", "face_score",
               "track_id", "counted"]


class Run:
    """State of one `detect` run: outputs, counts, failures.

    ``out``: folder for annotated copies (``save_live``: also of cameras and streams);
    ``annotate``: what is drawn on them; ``results``: the append-only result file, .jsonl
    or .csv (``resume``: skip what it holds; ``overwrite``: replace it and existing copies);
    ``json_lines``: print each record on ``stdout``; ``alert_*``: see
    :class:`~maskwatch.detection.alerts.AlertHook`.
    """

    def __init__(self, detector, *, out: str | Path | None = None, save_live: bool = True,
                 annotate: Annotator | None = None, json_lines: bool = False,
                 overwrite: bool = False, results: str | Path | None = None,
                 resume: bool = False, max_frames: int | None = None, alert_after: int = 10,
                 alert_command: str | None = None, alert_url: str | None = None,
                 alert_interval: float = 60.0, quiet: bool = False, stdout=None,
                 non_compliant: tuple[str, ...] = NON_COMPLIANT, detect_every: int = 1,
                 copy_size: int = COPY_SIZE):
        self.detector = detector
        self.copy_size = copy_size
        self.detect_every = detect_every
        self.out = out
        self.save_live = save_live
        self.annotate = annotate or Annotator()
        self.json_lines = json_lines
        self.results_path = results
        self.max_frames = max_frames
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.failures: list[str] = []
        self.face_counts: Counter = Counter()
        #: each class's probability summed over the counted faces (see :meth:`summary`)
        self.probability_sums: Counter = Counter()
        self.uncounted = 0
        self.images = 0
        #: video frames recorded by this run: those the face counts cover
        self.frames = 0
        #: with --resume, frames already in --results detected again to rebuild the tracker
        self.redetected = 0
        self.images_without_face = 0
        self.people: dict[str, dict[str, int]] = {}
        self.outputs: list[Path] = []
        self.namer = OutputNamer(Path(out), overwrite) if out else None
        self.classes = [c for c in CANONICAL if c in detector.classes] or list(detector.classes)
        # --results FILE (.jsonl/.csv), appended per input; --resume: what it already holds
        self.results = None
        self.done: dict[str, int] = {}
        if results:
            if resume:
                self.done = read_done(results)
            self.results = AppendWriter(results,
                                        [*CSV_COLUMNS, *[f"p_{c}" for c in self.classes]],
                                        resume, overwrite)
        self.alert = None
        if alert_command or alert_url:
            from maskwatch.detection.alerts import AlertHook

            self.alert = AlertHook(alert_after, alert_command, alert_url, alert_interval,
                                   non_compliant=non_compliant)

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        self.note(f"error: {msg}")

    @staticmethod
    def note(msg: str) -> None:
        note(msg)

    def _rows(self, path: str, frame: int | None, faces) -> list[list]:
        return [[
            path, "" if frame is None else frame, i, *f.box, f.label or "",
            "" if f.score is None else f"{f.score:.4f}", f"{f.face_score:.4f}",
            "" if f.track_id is None else f.track_id, int(is_counted(f)),
            *[f"{f.scores[c]:.4f}" if c in f.scores else "" for c in self.classes],
        ] for i, f in enumerate(faces)]

    def emit(self, path: str, frame: int | None, faces) -> None:
        for f in faces:
            if is_counted(f):
                self.face_counts[f.label or "face"] += 1
                self.probability_sums.update(f.scores or {})
            else:
                self.uncounted += 1
        record = {"path": path, "frame": frame, "faces": [f.to_dict() for f in faces]}
        if self.json_lines:
            self.stdout.write(json_line(record))
            self.stdout.flush()
        if self.results is not None:
            # a face-less input still gets a row (no face fields), so --resume sees it
            rows = self._rows(path, frame, faces) or [
                [path, "" if frame is None else frame] + [""] * (len(CSV_COLUMNS) - 2
                                                                 + len(self.classes))]
            self.results.write(record, rows)

    def recorded(self, spec: str) -> int | None:
        """With --resume: the last frame of ``spec`` already in --results (-1: an image)."""
        if not self.done:
            return None
        return self.done.get(same_file_key(spec))

    def out_path(self, spec: str) -> Path | None:
        """Where the annotated copy of image ``spec`` goes: its own name, but a HEIC/HEIF
        photo's copy is a JPEG (viewable everywhere, and ~0.2 s less to encode)."""
        if self.namer is None:
            return None
        name = Path(spec).name
        if Path(name).suffix.lower() in HEIF_SUFFIXES:
            name = Path(name).with_suffix(".jpg").name
        return self.namer.path(name, spec)

    def image(self, spec: str) -> None:
        out = None
        if self.namer is not None:
            out = lambda: self.out_path(spec)  # noqa: E731 - named only once it is read
        self.image_done(spec, *process_image(self.detector, spec, out, self.annotate,
                                             self.copy_size))

    def image_done(self, spec: str, faces, error: str | None, written) -> None:
        """Count, report and record one image's result (from here or a worker)."""
        if faces is None:
            self.fail(error)
            return
        self.images += 1
        if not faces:
            self.images_without_face += 1
            self.note(f"{spec}: no face found")
        self.emit(spec, None, faces)
        if error:
            self.fail(error)
        elif written is not None:
            self.outputs.append(Path(written))

    def video(self, spec: str) -> None:
        from tqdm import tqdm

        try:
            src = VideoSource(spec)
        except MaskwatchError as exc:
            self.fail(str(exc))
            return
        if self.alert:
            self.alert.reset()
        # --resume: frames already in --results are detected again (the tracker needs
        # them) but not written twice; a video recorded to its end is skipped
        last = self.recorded(spec)
        last = -1 if last is None else last
        end = min(n for n in (src.frame_count, self.max_frames, float("inf"))
                  if n is not None)
        if last >= 0 and last + 1 >= end:
            self.note(f"{spec}: already in {self.results_path}")
            src.close()
            return
        out = None
        if self.namer is not None and (self.save_live or not src.live):
            out = lambda: self.namer.path(f"{src.name}.mp4", spec)  # noqa: E731
        # video frames also show how many faces of each kind are in view
        video = TrackedVideo(src, partial(detect_decoded, self.detector), out,
                             self.max_frames,
                             annotate=replace(self.annotate, summary=self.annotate.labels),
                             tracker=IoUTracker(threshold=self.detector.threshold),
                             detect_every=self.detect_every, copy_size=self.copy_size)
        write_failed: VideoWriteError | None = None
        bar = tqdm(total=self.max_frames or src.frame_count, desc=src.name, unit="frame",
                   disable=self.quiet, file=sys.stderr, dynamic_ncols=True)
        seen_before: dict[int, int] = {}  # --resume: each track's hits in recorded frames
        try:
            for index, _rgb, faces in video:
                if index == last:
                    seen_before = {t.track_id: t.hits for t in video.tracker.all_tracks()}
                if self.alert and index > last:
                    event = self.alert.update(faces, spec, index)
                    if event:
                        self.note(f"alert: non-compliant face ({event['face']['label']}) in "
                                  f"{spec} at frame {index}")
                if index > last:
                    self.emit(spec, index, faces)
                    self.frames += 1
                else:
                    self.redetected += 1
                bar.update(1)
        except VideoWriteError as exc:
            write_failed = exc
        finally:
            bar.close()
            src.close()
            # the people of the frames recorded now: tracks not seen since are left out
            self.people[spec] = video.people(leaving_out={
                t.track_id for t in video.tracker.all_tracks()
                if t.hits <= seen_before.get(t.track_id, -1)})
            if video.written is not None:
                self.outputs.append(video.written)
        if 0 <= last and 0 < video.frames <= last + 1 and write_failed is None:
            # resumed, but --results already held every frame (its container overstated its
            # length): the copy of the run that recorded them is whole; drop this one
            if video.written is not None:
                video.written.unlink(missing_ok=True)
                self.outputs.remove(video.written)
            self.note(f"{spec}: already in {self.results_path}")
            return
        if write_failed is not None:  # ffmpeg failed (a full disk): no file was kept
            self.fail(str(write_failed))
        elif video.frames == 0:
            self.fail(f"{spec}: no frame could be decoded")
        elif src.ended_early():
            self.fail(f"{spec}: stopped at frame {src.frames_read} of {src.frame_count} "
                      "(a frame failed to decode)")

    def close(self) -> None:
        if self.results is not None:
            self.results.close()
        if self.alert:
            self.alert.wait(10)

    def share_text(self, label: str, total: int) -> str:
        """The share of counted faces given ``label``, and beside it the share the
        classifier's probabilities estimate: the labels follow the alarm rule, which
        flags a doubtful face as unmasked so as to miss few bare faces, so they overstate
        the unmasked share (MODEL_CARD, "Shares")."""
        flagged = f"{100 * self.face_counts.get(label, 0) / total:.1f}% of faces"
        if not self.probability_sums:
            return flagged
        estimate = 100 * self.probability_sums.get(label, 0.0) / total
        why = " (doubtful faces are flagged)" if label == WITHOUT_MASK else ""
        return f"{flagged} by label{why}, {estimate:.1f}% by mean probability"

    def summary(self) -> str:
        total = sum(self.face_counts.values())
        parts = [f"{self.images} image(s), {self.frames} video frame(s), {total} face(s)"]
        if total:
            parts.append(", ".join(f"{k}: {v}" for k, v in sorted(self.face_counts.items())))
            shares = [(WITHOUT_MASK, "without mask")] if self.detector.classes else []
            if INCORRECT_MASK in self.detector.classes:
                shares.append((INCORRECT_MASK, "mask worn wrongly"))
            for label, name in shares:
                parts.append(f"{name}: {self.share_text(label, total)}")
        if self.redetected:
            parts.append(f"also detected again, not counted: {self.redetected} video frame(s) "
                         "already in the results file (--resume), to rebuild the tracker")
        if self.uncounted:
            least = getattr(self.detector, "count_threshold", None)
            below = "" if least is None else f" (face score under {least:g})"
            parts.append(f"not counted: {self.uncounted} uncertain face box(es){below}, "
                         "drawn with thin lines and listed with \"counted\": false")
        for spec, counts in self.people.items():
            people = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "nobody tracked"
            parts.append(f"{spec}: people {people}")
        if self.outputs:
            parts.append(f"saved {len(self.outputs)} annotated file(s) to {self.out}")
        if self.results is not None:
            parts.append(f"results in {self.results_path}")
        if self.failures:
            parts.append(f"{len(self.failures)} input(s) failed")
        return "\n".join(parts)


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_detect(
    inputs: list[str],
    detector_options: dict,
    *,
    out: str | Path | None = None,
    save_live: bool = True,
    annotate: Annotator | None = None,
    json_lines: bool = False,
    overwrite: bool = False,
    max_frames: int | None = None,
    detect_every: int = 1,
    alert_after: int = 10,
    alert_command: str | None = None,
    alert_url: str | None = None,
    alert_interval: float = 60.0,
    workers: int | None = None,
    results: str | Path | None = None,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    ray: str | None = None,
    quiet: bool = False,
    non_compliant: tuple[str, ...] = NON_COMPLIANT,
    copy_size: int = COPY_SIZE,
) -> int:
    """Detect over ``inputs``; returns the exit status (0, 1 if an input failed, 130 when
    interrupted).

    ``detector_options``: keyword arguments of :class:`~maskwatch.detection.pipeline.Detector`.
    Photos are read no larger than detection needs, their annotated copies with a long
    side of at least ``copy_size`` pixels (0: full size; see ``images.process_image``).
    Images go to ``workers`` processes (default 1: this one; results recorded in input
    order); with one worker and ``threads`` 0 (auto), one image per CPU core is in flight
    in threads of this process, each model running single-threaded. With ``ray`` (a
    cluster address, or "local") they go to Ray actors instead (``workers`` of them,
    default one per CPU). Videos, cameras and streams always run here, one after the
    other, frame by frame.
    """
    from maskwatch.detection.pipeline import Detector

    check_batch_options(workers, resume, results, shard, ray)
    actors, workers = workers, workers or 1
    if detect_every < 1:
        raise MaskwatchError("--detect-every must be at least 1")
    options = dict(detector_options)
    problems: list[str] = []
    sources = list(iter_sources(inputs, problems.append))
    sources = select_shard(sources, shard, key=lambda s: s[1])
    images = [s for kind, s in sources if kind == "image"]
    # one image per core beats one image on all cores: ONNX Runtime's threads scale poorly
    # on a few cores, and decoding, resizing and drawing then overlap inference
    in_flight = (min(len(images), cpu_cores())
                 if workers <= 1 and not options.get("threads") and not ray else 1)
    if in_flight > 1:
        options["threads"] = 1
    detector = Detector(**options)
    unused = detector.unused_site_warning(options.get("classifier"))
    if unused:  # a warning, shown with --quiet too (that only hides progress bars)
        note(unused)
    annotate = annotate or Annotator()
    run = Run(detector, out=out, save_live=save_live, annotate=annotate, json_lines=json_lines,
              overwrite=overwrite, results=results, resume=resume, max_frames=max_frames,
              alert_after=alert_after, alert_command=alert_command, alert_url=alert_url,
              alert_interval=alert_interval, quiet=quiet, non_compliant=non_compliant,
              detect_every=detect_every, copy_size=copy_size)
    if run.namer is not None:  # --overwrite never replaces an input still to be read
        run.namer.protected |= {Path(s).resolve() for _, s in sources if Path(s).exists()}
    for problem in problems:
        run.fail(problem)
    if run.done:
        before = len(images)
        images = [s for s in images if run.recorded(s) is None]
        if before > len(images):
            run.note(f"{before - len(images)} image(s) already in {results}")
    interrupted = False
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(images), desc="images", unit="img", file=sys.stderr,
                   disable=quiet or len(images) < 2)
        if workers <= 1 and in_flight <= 1 and not ray:
            for spec in images:
                run.image(spec)
                bar.update(1)
        else:
            # output names are chosen here, in input order, so they never depend on timing
            jobs = ((s, None if run.namer is None else str(run.out_path(s))) for s in images)
            if ray:
                from maskwatch.ray_batch import ray_map, ship

                options["threads"] = options.get("threads") or 1
                options["classifier"] = ship(options.get("classifier"))
                results = ray_map(detect_image, jobs, actors, init_detector,
                                  (options, annotate, copy_size), address=ray,
                                  cpus_per_actor=options["threads"], batch_size=4)
            elif workers > 1:
                options["threads"] = options.get("threads") or 1
                results = ordered_map(detect_image, jobs, workers, init_detector,
                                      (options, annotate, copy_size),
                                      leftover=lambda r: run.image_done(*r))
            else:
                def job(task: tuple[str, str | None]):
                    spec, path = task
                    return (spec, *process_image(detector, spec, Path(path) if path else None,
                                                 annotate, copy_size))

                # on Ctrl+C the photos in flight are finished and recorded (leftover), so
                # no annotated copy is left without its record (a resume would copy it again)
                results = ordered_map(job, jobs, in_flight, threads=True,
                                      leftover=lambda r: run.image_done(*r))
            try:
                for spec, faces, error, written in results:
                    run.image_done(spec, faces, error, written)
                    bar.update(1)
            finally:
                getattr(results, "close", lambda: None)()  # now, while the run is open
        bar.close()
        for kind, spec in sources:
            if kind == "video":
                run.video(spec)
    except KeyboardInterrupt:
        interrupted = True
        run.note("interrupted: outputs written so far are complete")
    finally:
        run.close()
    summary = run.summary()
    print(summary, file=sys.stderr if json_lines else sys.stdout)
    if interrupted:
        return 130
    return 1 if run.failures else 0
