"""`detect` at its edges, as an audit of the command found them: a frame limit, a
variable frame rate, Ctrl+C while a video is saved, folders named like cameras, outputs
that would replace inputs, bad alert settings and empty run folders."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from detection_helpers import SkinClassifier, head, paste
from PIL import Image

from maskwatch.cli import main
from maskwatch.detection import pipeline
from maskwatch.detection.alerts import AlertHook
from maskwatch.detection.pipeline import Face
from maskwatch.detection.runner import run_detect
from maskwatch.detection.video import TrackedVideo, VideoSource, VideoWriter, is_camera
from maskwatch.errors import MaskwatchError

W, H, N = 160, 120, 20


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("edges") / "walk.mp4"
    with VideoWriter(path, 10.0, (W, H)) as w:
        for i in range(N):
            canvas = np.full((H, W, 3), 110, np.uint8)
            paste(canvas, head(), 5 + i * 3, 20, 60)
            w.write(canvas)
    return path


@pytest.fixture
def skin(monkeypatch):
    monkeypatch.setattr(pipeline, "_load_classifier",
                        lambda c, t, threshold=None: SkinClassifier())


def test_a_frame_limit_is_not_a_failed_video(clip, capsys, skin):
    src = VideoSource(str(clip))
    assert len(list(src.frames(max_frames=5))) == 5 and not src.ended_early()
    assert main(["detect", str(clip), "--max-frames", "5", "--no-save", "-q",
                 "--threads", "1"]) == 0
    assert "failed" not in capsys.readouterr().err


def _vfr_clip(folder: Path) -> Path:
    """40 frames, 20 of them 0.5 s apart, then 20 0.05 s apart: OpenCV estimates 120."""
    import imageio_ffmpeg

    vfr = folder / "vfr.webm"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc=size=160x120:rate=10", "-frames:v", "40", "-vf",
                    "setpts='if(lt(N,20),N*0.5/TB,(10+(N-20)*0.05)/TB)'", "-fps_mode", "vfr",
                    "-c:v", "libvpx", "-b:v", "200k", str(vfr)], check=True)
    return vfr


def test_a_variable_frame_rate_file_read_to_its_end_is_whole(tmp_path):
    """A file with fewer frames than its container's estimate (duration x average rate)
    read to the end of its time line did not fail; a file cut short still does."""
    vfr = _vfr_clip(tmp_path)
    src = VideoSource(str(vfr))
    assert src.frame_count > 40  # OpenCV's estimate
    assert len(list(src.frames())) == 40 and not src.ended_early()
    # an MJPEG AVI cut to a third: it stops well short of its time line
    avi = tmp_path / "long.avi"
    import cv2

    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for i in range(60):
        writer.write(np.full((H, W, 3), i * 4, np.uint8))
    writer.release()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(avi.read_bytes()[: avi.stat().st_size // 3])
    src = VideoSource(str(cut))
    frames = len(list(src.frames()))
    assert 0 < frames < 40 and src.ended_early()


def test_resuming_a_finished_video_writes_no_second_copy(tmp_path):
    """Its container overstates its length, so --resume cannot tell from the count that
    --results holds every frame: it runs it again, records nothing new, and keeps the one
    copy."""
    vfr = _vfr_clip(tmp_path)
    options = dict(face_detector=_NoFaces(), classifier=SkinClassifier(), threads=1)
    results = tmp_path / "r.jsonl"
    for resume in (False, True, True):
        assert run_detect([str(vfr)], options, out=tmp_path / "out", results=results,
                          resume=resume, quiet=True) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["vfr.mp4"]
    frames = [json.loads(line)["frame"] for line in results.read_text().splitlines()]
    assert frames == list(range(40))


def _slow_to_interrupt(at: int):
    def detect(rgb):
        detect.calls += 1
        if detect.calls == at:
            raise KeyboardInterrupt
        return [Face([10, 10, 40, 40], 0.9, "without_mask", 0.9,
                     {"without_mask": 0.9, "with_mask": 0.1})]

    detect.calls = 0
    return detect


def test_ctrl_c_while_a_file_is_saved_stops_the_run_and_drops_its_partial_copy(clip, tmp_path):
    out = tmp_path / "copy.mp4"
    video = TrackedVideo(VideoSource(str(clip)), _slow_to_interrupt(8), out)
    with pytest.raises(KeyboardInterrupt):  # not a write error: the run stops
        for _ in video:
            pass
    assert not out.exists() and not list(tmp_path.glob("*.part*"))


def test_ctrl_c_keeps_a_cameras_recording(clip, tmp_path):
    class Live(VideoSource):
        def __init__(self, spec):
            super().__init__(spec)
            self.live = True

    out = tmp_path / "camera.mp4"
    video = TrackedVideo(Live(str(clip)), _slow_to_interrupt(8), out)
    with pytest.raises(KeyboardInterrupt):
        for _ in video:
            pass
    assert video.written == out and VideoSource(str(out)).frame_count == 7


def test_a_folder_named_like_a_camera_is_a_folder(tmp_path, monkeypatch, capsys, skin):
    monkeypatch.chdir(tmp_path)
    assert is_camera("7")
    (tmp_path / "2024").mkdir()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / "2024" / "a.png")
    assert not is_camera("2024")
    assert main(["detect", "2024", "--no-save", "-q", "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"].endswith("a.png")


def test_overwrite_never_replaces_another_input_of_the_run(clip, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for folder, colour in (("in", (200, 90, 90)), ("out", (90, 200, 90))):
        Image.new("RGB", (80, 60), colour).save(tmp_path / folder / "x.png")
    (tmp_path / "out" / "walk.mp4").write_bytes(clip.read_bytes())
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    options = dict(face_detector=_NoFaces(), classifier=SkinClassifier(), threads=1)
    inputs = [str(tmp_path / "in" / "x.png"), str(tmp_path / "out" / "x.png"), str(clip),
              str(tmp_path / "out" / "walk.mp4")]
    assert run_detect(inputs, options, out=tmp_path / "out", overwrite=True, quiet=True) == 0
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert all(after[name] == data for name, data in before.items())  # inputs untouched
    assert sorted(after) == ["walk-1.mp4", "walk-2.mp4", "walk.mp4", "x-1.png", "x-2.png",
                             "x.png"]


class _NoFaces(pipeline.FaceDetector):
    def __init__(self):
        super().__init__(threshold=0.5)

    def detect(self, rgb, min_side: float = 0.0):
        return []


def test_bad_alert_settings_fail_before_the_run(tmp_path):
    with pytest.raises(MaskwatchError, match="must be an http"):
        AlertHook(url="http://[::1/x")
    with pytest.raises(MaskwatchError, match="is not a command found"):
        AlertHook(command=str(tmp_path / "nonexistent-command"))
    with pytest.raises(MaskwatchError, match="--alert-command"):
        AlertHook(command="echo 'unclosed")
    assert AlertHook(command="true").argv == ["true"]


def test_out_naming_a_file_and_empty_run_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKWATCH_RUNS", str(tmp_path / "runs"))
    (tmp_path / "afile").write_text("x")
    assert main(["detect", str(tmp_path), "-o", str(tmp_path / "afile"), "-q"]) == 2
    assert "afile: not a folder" in capsys.readouterr().err
    # a run that fails before writing anything leaves no empty runs/detect/N behind
    assert main(["detect", str(tmp_path / "nonexistent.jpg"), "-q"]) == 1
    assert main(["detect", str(tmp_path / "nonexistent.jpg"), "-q", "-r", "x.txt"]) == 2
    assert list((tmp_path / "runs" / "detect").iterdir()) == []


def test_resume_knows_names_that_start_with_an_apostrophe(tmp_path, monkeypatch, capsys):
    """``'=x.jpg`` was written as it is and read back as ``=x.jpg`` (the escape of
    ``=y.jpg``), so --resume recorded it again: the escape is now reversible."""
    monkeypatch.chdir(tmp_path)  # relative inputs: the file name starts the cell
    for name in ("'=x.jpg", "=y.jpg", "'plain.jpg"):
        Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / name)
    options = dict(face_detector=_NoFaces(), classifier=SkinClassifier(), threads=1)
    inputs = ["'=x.jpg", "=y.jpg", "'plain.jpg"]
    assert run_detect(inputs, options, results="x.csv", quiet=True) == 0
    first = (tmp_path / "x.csv").read_text()
    assert run_detect(inputs, options, results="x.csv", resume=True, quiet=True) == 0
    assert (tmp_path / "x.csv").read_text() == first  # nothing recorded twice
    assert "3 image(s) already in x.csv" in capsys.readouterr().err
    import csv

    with open(tmp_path / "x.csv", newline="") as f:
        cells = [r["path"] for r in csv.DictReader(f)]
    assert cells == ["''=x.jpg", "'=y.jpg", "'plain.jpg"]  # still no cell a formula


def test_the_summary_of_a_resumed_video_counts_the_frames_it_recorded(clip, tmp_path,
                                                                       capsys):
    """Frames already in --results are detected again to rebuild the tracker; the summary
    counted them with the frames recorded now, while its face counts cover only these."""
    options = dict(face_detector=_NoFaces(), classifier=SkinClassifier(), threads=1)
    results = tmp_path / "r.jsonl"
    assert run_detect([str(clip)], options, results=results, max_frames=8, quiet=True) == 0
    assert "8 video frame(s)" in capsys.readouterr().out
    assert run_detect([str(clip)], options, results=results, resume=True, quiet=True) == 0
    out = capsys.readouterr().out
    assert f"0 image(s), {N - 8} video frame(s), 0 face(s)" in out
    assert "also detected again, not counted: 8 video frame(s)" in out
    frames = [json.loads(line)["frame"] for line in results.read_text().splitlines()]
    assert frames == list(range(N))


class _TwoWalkers(pipeline.FaceDetector):
    """One person in frames 0-5 (left), another in frames 12-19 (right), by call order."""

    def __init__(self):
        super().__init__(threshold=0.5)
        self.calls = 0

    def detect(self, rgb, min_side: float = 0.0):
        i, self.calls = self.calls, self.calls + 1
        if i <= 5:
            return [(10, 30, 50, 80, 0.9)]
        return [(100, 30, 140, 80, 0.9)] if i >= 12 else []


def test_a_resumed_videos_people_are_those_of_the_frames_it_recorded(clip, tmp_path, capsys):
    """The first person left before frame 8: the resumed run (frames 8-19) counts only the
    second one; the whole run counts both."""
    results = tmp_path / "r.jsonl"

    def run(**kw) -> str:
        options = dict(face_detector=_TwoWalkers(), classifier=SkinClassifier(), threads=1)
        assert run_detect([str(clip)], options, results=results, quiet=True, **kw) == 0
        return capsys.readouterr().out

    def people(out: str) -> int:
        line = next(x for x in out.splitlines() if "people" in x)
        return sum(int(n) for n in line.split("people", 1)[1].replace(",", " ").split()
                   if n.isdigit())

    assert people(run(max_frames=8)) == 1
    assert people(run(resume=True)) == 1  # the first person is not counted again
    results.unlink()
    assert people(run()) == 2
