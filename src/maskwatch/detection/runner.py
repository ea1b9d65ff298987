"""`maskwatch detect`: run the pipeline over images, videos, cameras and streams."""

from __future__ import annotations

import csv
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from maskwatch.cli.common import expand_inputs, print_json
from maskwatch.detection.draw import draw_faces
from maskwatch.detection.video import (
    BackgroundWriter,
    VideoSource,
    VideoWriter,
    is_camera,
    is_stream,
    prefetch,
)
from maskwatch.errors import MaskwatchError
from maskwatch.imaging import IMAGE_SUFFIXES, VIDEO_SUFFIXES, is_video_path, load_rgb, save_rgb
from maskwatch.labels import CANONICAL, WITHOUT_MASK


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
    """Output paths under ``out``: keep the input's name; never overwrite an input file or
    (without ``overwrite``) an existing file - a ``-1``, ``-2``... suffix is added instead."""

    def __init__(self, out: Path, overwrite: bool = False):
        self.out = out
        self.overwrite = overwrite
        self.used: set[Path] = set()

    def path(self, name: str, source: str | None = None) -> Path:
        base = self.out / name
        stem, suffix = base.stem, base.suffix
        candidate, n = base, 0
        src = Path(source).resolve() if source and Path(source).exists() else None
        while (
            candidate in self.used
            or (src is not None and candidate.resolve() == src)
            or (candidate.exists() and not self.overwrite)
        ):
            n += 1
            candidate = base.with_name(f"{stem}-{n}{suffix}")
        self.used.add(candidate)
        return candidate


class Run:
    """State of one `detect` run: outputs, counts, failures."""

    def __init__(self, args, detector, stdout=None):
        self.args = args
        self.detector = detector
        self.stdout = stdout or sys.stdout
        self.failures: list[str] = []
        self.face_counts: Counter = Counter()
        self.images = 0
        self.frames = 0
        self.images_without_face = 0
        self.people: dict[str, dict[str, int]] = {}
        self.outputs: list[Path] = []
        self.namer = OutputNamer(Path(args.out), args.overwrite) if args.out else None
        self.classes = [c for c in CANONICAL if c in detector.classes] or list(detector.classes)
        self._csv_file = None
        self._csv = None
        if args.csv:
            path = Path(args.csv)
            if path.exists() and not args.overwrite:
                raise MaskwatchError(f"{path}: already exists (use --overwrite to replace it)")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._csv_file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(["path", "frame", "face", "x1", "y1", "x2", "y2", "label", "score",
                                "face_score", "track_id", *[f"p_{c}" for c in self.classes]])
        self.alert = None
        if args.alert_command or args.alert_url:
            from maskwatch.detection.alerts import AlertHook

            self.alert = AlertHook(args.alert_after, args.alert_command, args.alert_url,
                                   args.alert_interval)

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        self.note(f"error: {msg}")

    @staticmethod
    def note(msg: str) -> None:
        sys.stderr.write(f"maskwatch: {msg}\n")
        sys.stderr.flush()

    def emit(self, path: str, frame: int | None, faces) -> None:
        for f in faces:
            self.face_counts[f.label or "face"] += 1
        if self.args.json:
            print_json({"path": path, "frame": frame, "faces": [f.to_dict() for f in faces]},
                       self.stdout)
        if self._csv is not None:
            for i, f in enumerate(faces):
                self._csv.writerow([
                    path, "" if frame is None else frame, i, *f.box, f.label or "",
                    "" if f.score is None else f"{f.score:.4f}", f"{f.face_score:.4f}",
                    "" if f.track_id is None else f.track_id,
                    *[f"{f.scores[c]:.4f}" if c in f.scores else "" for c in self.classes],
                ])

    def image(self, spec: str) -> None:
        try:
            rgb = load_rgb(spec)
        except MaskwatchError as exc:
            self.fail(str(exc))
            return
        faces = self.detector.detect(rgb)
        self.images += 1
        if not faces:
            self.images_without_face += 1
            self.note(f"{spec}: no face found")
        self.emit(spec, None, faces)
        if self.namer is not None:
            out = self.namer.path(Path(spec).name, spec)
            try:
                save_rgb(out, draw_faces(rgb, faces))
            except (OSError, ValueError) as exc:
                self.fail(f"{out}: cannot write ({exc})")
                return
            self.outputs.append(out)

    def video(self, spec: str) -> None:
        from tqdm import tqdm

        from maskwatch.detection.tracker import IoUTracker

        try:
            src = VideoSource(spec)
        except MaskwatchError as exc:
            self.fail(str(exc))
            return
        tracker = IoUTracker()
        if self.alert:
            self.alert.reset()
        writer = None
        frames = 0
        bar = tqdm(total=self.args.max_frames or src.frame_count, desc=src.name, unit="frame",
                   disable=self.args.quiet, file=sys.stderr, dynamic_ncols=True)
        try:
            # decoding (reader thread), detection (here) and drawing + encoding (writer
            # thread) overlap, so the CPU does not sit idle waiting for video I/O
            for rgb in prefetch(src.frames(self.args.max_frames)):
                faces = tracker.update(self.detector.detect(rgb))
                if self.alert:
                    event = self.alert.update(faces, spec, frames)
                    if event:
                        self.note(f"alert: unmasked face in {spec} at frame {frames}")
                self.emit(spec, frames, faces)
                if self.namer is not None:
                    if writer is None:
                        h, w = rgb.shape[:2]
                        out = self.namer.path(f"{src.name}.mp4", spec)
                        writer = BackgroundWriter(
                            VideoWriter(out, src.fps, (w, h),
                                        audio_from=None if src.live else spec),
                            draw_faces,
                        )
                    writer.write(rgb, faces)
                frames += 1
                bar.update(1)
        finally:
            bar.close()
            src.close()
            self.frames += frames
            self.people[spec] = tracker.counts()
            if writer is not None:
                self.outputs.append(writer.close())
        if frames == 0:
            self.fail(f"{spec}: no frame could be decoded")
        elif src.ended_early():
            self.fail(f"{spec}: stopped at frame {src.frames_read} of {src.frame_count} "
                      "(a frame failed to decode)")

    def close(self) -> None:
        if self._csv_file is not None:
            self._csv_file.close()
        if self.alert:
            self.alert.wait(10)

    def summary(self) -> str:
        total = sum(self.face_counts.values())
        parts = [f"{self.images} image(s), {self.frames} video frame(s), {total} face(s)"]
        if total:
            parts.append(", ".join(f"{k}: {v}" for k, v in sorted(self.face_counts.items())))
            if self.detector.classes:
                share = self.face_counts.get(WITHOUT_MASK, 0) / total
                parts.append(f"without mask: {100 * share:.1f}% of faces")
        for spec, counts in self.people.items():
            people = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "nobody tracked"
            parts.append(f"{spec}: people {people}")
        if self.outputs:
            parts.append(f"annotated output in {self.args.out}")
        if self.failures:
            parts.append(f"{len(self.failures)} input(s) failed")
        return "\n".join(parts)


def run_detect(args) -> int:
    from maskwatch.detection.pipeline import Detector

    detector = Detector(
        face_detector=args.detector,
        classifier=False if args.faces_only else args.model,
        threads=args.threads,
        face_threshold=args.face_threshold,
        margin=args.margin,
        detect_size=args.detect_size,
        min_face=args.min_face,
        upscale=args.upscale,
    )
    run = Run(args, detector)
    sources = list(iter_sources(args.inputs, run.fail))
    images = [s for kind, s in sources if kind == "image"]
    interrupted = False
    try:
        from tqdm import tqdm

        for spec in tqdm(images, desc="images", unit="img", file=sys.stderr,
                         disable=args.quiet or len(images) < 2):
            run.image(spec)
        for kind, spec in sources:
            if kind == "video":
                run.video(spec)
    except KeyboardInterrupt:
        interrupted = True
        run.note("interrupted: outputs written so far are complete")
    finally:
        run.close()
    summary = run.summary()
    print(summary, file=sys.stderr if args.json else sys.stdout)
    if interrupted:
        return 130
    return 1 if run.failures else 0
