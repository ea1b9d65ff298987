"""`maskwatch classify`: per-image labels, JSON lines, unreadable files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from maskwatch.cli import main as cli_main  # noqa: E402


@pytest.fixture
def model(tmp_path):
    from maskwatch.inference.modelfile import ModelInfo
    from maskwatch.models import create_model
    from maskwatch.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("seed_cnn128", 2, input_size=32),
                    ModelInfo("seed_cnn128", ["with_mask", "without_mask"], 32))
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (30 + i, 28, 3), dtype=np.uint8)).save(
            folder / f"f{i}.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_json_lines_per_image(model, images, capsys):
    assert cli_main(["classify", str(images), "--model", str(model), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3  # notes.txt inside the folder is skipped
    from maskwatch.imaging import load_rgb
    from maskwatch.inference.classifier import Classifier

    clf = Classifier(model)
    for line in lines:
        obj = json.loads(line)
        assert set(obj) == {"path", "label", "score", "scores"}
        expected = clf.classify([load_rgb(obj["path"])])[0]
        assert obj["label"] == expected.label
        assert obj["score"] == pytest.approx(expected.score)
        assert sum(obj["scores"].values()) == pytest.approx(1.0, abs=1e-3)


def test_unreadable_image_reported_and_run_goes_on(model, images, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    rc = cli_main(["classify", str(bad), str(images / "f0.jpg"), str(tmp_path / "gone.png"),
                   "--model", str(model)])
    assert rc == 1
    captured = capsys.readouterr()
    table = captured.out.strip().splitlines()
    assert table[0].split() == ["path", "label", "score"]
    assert len(table) == 2 and "f0.jpg" in table[1]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2
    assert "broken.jpg" in errors[0] and "gone.png" in errors[1]


def test_glob_patterns(model, images, capsys):
    assert cli_main(["classify", str(images / "f[01].jpg"), "--model", str(model),
                     "--json"]) == 0
    paths = [json.loads(x)["path"] for x in capsys.readouterr().out.strip().splitlines()]
    assert [p.rsplit("/", 1)[1] for p in paths] == ["f0.jpg", "f1.jpg"]
