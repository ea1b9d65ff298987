"""The model shipped in the package: it loads without torch and gets the demo photo right."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from maskwatch.inference.classifier import Classifier, bundled_model_path


def test_bundled_model_is_shipped_with_its_metadata():
    path = bundled_model_path()
    assert path.is_file(), "the bundled ONNX model is missing from the package"
    assert path.stat().st_size < 16 * 1024 * 1024  # a few MB
    clf = Classifier()
    assert clf.classes == ["with_mask", "without_mask", "incorrect_mask"]
    assert 0.0 < clf.threshold <= 0.5
    assert clf.info.extra.get("margin") is not None


def test_bundled_model_on_the_demo_photo_masked_and_unmasked():
    from maskwatch.detection.demo import draw_mask, sample_photo
    from maskwatch.detection.pipeline import Detector
    from maskwatch.imaging import load_rgb

    rgb = load_rgb(sample_photo())
    detector = Detector()
    faces = detector.detect(rgb)
    assert len(faces) == 1 and faces[0].label == "without_mask"
    masked = draw_mask(rgb, faces[0].box)  # from mid-nose down: worn wrongly
    again = detector.detect(masked, check_bgr=False)
    assert len(again) == 1 and again[0].label == "incorrect_mask"
    assert again[0].scores["without_mask"] < 0.05


def test_classify_runs_without_torch(tmp_path):
    """The inference path needs numpy, OpenCV/Pillow and onnxruntime, not torch."""
    from maskwatch.imaging import save_rgb

    image = tmp_path / "face.jpg"
    save_rgb(image, np.full((64, 64, 3), 128, np.uint8))
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
        "from maskwatch.cli import main\n"
        f"raise SystemExit(main(['classify', {str(image)!r}, '--json']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[0])
    assert record["label"] in ("with_mask", "without_mask", "incorrect_mask")
    assert set(record["scores"]) == {"with_mask", "without_mask", "incorrect_mask"}
    assert sum(record["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    assert record["score"] == pytest.approx(record["scores"][record["label"]], abs=1e-3)


def test_threshold_option_overrides_the_models(tmp_path, capsys):
    """--threshold 0 calls every face unmasked; --threshold 1 only certain ones."""
    from maskwatch.cli import main
    from maskwatch.imaging import save_rgb

    image = tmp_path / "grey.jpg"
    save_rgb(image, np.full((64, 64, 3), 128, np.uint8))
    assert main(["classify", str(image), "--json", "--threshold", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == "without_mask"
    assert main(["classify", str(image), "--json", "--threshold", "1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["label"] != "without_mask" or record["scores"]["without_mask"] == 1.0
    assert Classifier(threshold=0.25).threshold == 0.25
    assert main(["classify", str(image), "--threshold", "2"]) == 2
    assert "threshold" in capsys.readouterr().err
