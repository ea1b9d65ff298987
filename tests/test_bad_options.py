"""Bad option values and damaged inputs end in one line, never in a traceback or a
silently wrong result (found by auditing every command with odd values)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from PIL import Image

from maskwatch.argtypes import number
from maskwatch.cli import _parse, build_parser, main
from maskwatch.errors import MaskwatchError, ModelError

BAD = [
    (["classify", "x.png", "--batch-size", "-3"], "--batch-size: must be at least 1"),
    (["classify", "x.png", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["classify", "x.png", "--threads", "-1"], "--threads: must be at least 0"),
    (["classify", "x.png", "-w", "0"], "--workers: must be at least 1"),
    (["evaluate", "-d", "x", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["evaluate", "-d", "x", "--margin", "nan"], "--margin: must be a finite number"),
    (["evaluate", "-d", "x", "--margin", "-0.6"], "--margin: must be at least 0"),
    (["detect", "x.png", "--margin", "1e300"], "--margin: must be at most 1"),
    (["detect", "x.png", "--min-face", "-2"], "--min-face: must be at least 0"),
    (["detect", "x.png", "--alert-interval", "inf"], "--alert-interval: must be a finite"),
    (["evaluate-detection", "-d", "x", "--recall-iou", "nan"], "--recall-iou: must be a"),
    (["evaluate-detection", "-d", "x", "--recall-iou", "0"], "--recall-iou: must be above 0"),
    (["evaluate-detection", "-d", "x", "--recall-iou", "2"], "--recall-iou: must be at most 1"),
    (["calibrate", "x", "-o", "s.onnx", "--seed", "-1"], "--seed: must be at least 0"),
    (["calibrate", "x", "-o", "s.onnx", "--margin", "nan"], "--margin: must be a finite"),
    (["export", "-m", "x.safetensors", "--seed", "-1"], "--seed: must be at least 0"),
    (["export", "-m", "x.safetensors", "--opset", "0"], "--opset: must be at least 1"),
    (["data", "split", "x", "-o", "y", "--ratios", "nan", "0.5"], "--ratios: must be a finite"),
    (["data", "crop", "x", "-o", "y", "--margin", "nan"], "--margin: must be a finite"),
    (["data", "crop", "x", "-o", "y", "--min-size", "-5"], "--min-size: must be at least 0"),
    (["train", "-d", "x", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["train", "-d", "x", "--eval-batch-size", "0"], "--eval-batch-size: must be at least 1"),
    (["train", "-d", "x", "--epochs", "0"], "--epochs: must be at least 1"),
    (["train", "-d", "x", "--lr", "nan"], "--lr: must be a finite number"),
    (["train", "-d", "x", "--lr", "-1"], "--lr: must be at least 0"),
    (["train", "-d", "x", "--weight-decay", "nan"], "--weight-decay: must be a finite"),
    (["train", "-d", "x", "--dropout", "1.5"], "--dropout: must be below 1"),
    (["train", "-d", "x", "--label-smoothing", "2"], "--label-smoothing: must be at most 1"),
    (["train", "-d", "x", "--warmup-epochs", "nan"], "--warmup-epochs: must be a finite"),
    (["train", "-d", "x", "--val-fraction", "-0.2"], "--val-fraction: must be at least 0"),
    (["train", "-d", "x", "--patience", "-1"], "--patience: must be at least 0"),
    (["train", "-d", "x", "--workers", "-3"], "--workers: must be at least 0"),
    (["train", "-d", "x", "--input-size", "0"], "--input-size: must be at least 1"),
    # an unset shell variable: not "the current folder"
    (["classify", ""], "argument PATH: an empty value"),
    (["evaluate", "-d", ""], "argument -d/--data: an empty value"),
    (["detect", "x.png", "-m", ""], "argument -m/--model: an empty value"),
    (["classify", "x.png", "-r", ""], "argument -r/--results: an empty value"),
    (["data", "split", "", "-o", "y"], "argument PATH: an empty value"),
    # a negative shard reaches --shard's own check, not argparse's "expected one argument"
    (["detect", "x.png", "--shard", "-1/2"], "argument --shard: need 0 <= I < N, got '-1/2'"),
    (["classify", "x.png", "--shard", "-1/2"], "argument --shard: need 0 <= I < N"),
    (["detect", "x.png", "--margin", "-1e3"], "--margin: must be at least 0"),
    # --blur's optional value: a near miss of a choice is still refused, not taken as an input
    (["detect", "--blur", "unmask", "x.png"], "argument --blur: invalid choice: 'unmask'"),
    (["demo", "--blur", "photos/"], "argument --blur: invalid choice: 'photos/'"),
]


@pytest.mark.parametrize(("argv", "said"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_option_values_are_refused_in_one_line(argv, said, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert f"maskwatch {argv[0]}" in err.splitlines()[-1]  # the sub-command's own usage


def test_blur_before_an_input_blurs_all_faces(capsys):
    """``--blur`` takes an optional value: ``detect --blur photos/`` read the folder as its
    value (an invalid choice); a token that is not a choice is now an input."""
    parser = build_parser()
    cases = [
        (["detect", "--blur", "photos/"], "all", ["photos/"]),
        (["detect", "--blur", "photos/", "clip.mp4"], "all", ["photos/", "clip.mp4"]),
        (["detect", "--blu", "photos/"], "all", ["photos/"]),  # an abbreviation
        (["detect", "--blur", "-q", "photos/"], "all", ["photos/"]),
        (["detect", "photos/", "--blur"], "all", ["photos/"]),
        (["detect", "--blur", "masked", "photos/"], "masked", ["photos/"]),
        (["detect", "--blur=unmasked", "photos/"], "unmasked", ["photos/"]),
        (["detect", "photos/"], None, ["photos/"]),
        (["detect", "--blur", "--", "-odd.jpg"], "all", ["-odd.jpg"]),
    ]
    for argv, blur, inputs in cases:
        args = _parse(parser, argv)
        assert (args.blur, args.inputs) == (blur, inputs), argv
    for argv, blur in ((["demo", "--blur"], "all"), (["demo", "--blur", "-o", "d"], "all"),
                       (["demo", "--blur", "masked"], "masked"), (["demo"], None)):
        assert _parse(parser, argv).blur == blur, argv
    # watch's --blur is a flag: left alone
    args = _parse(parser, ["watch", "--blur", "0"])
    assert args.blur is True
    with pytest.raises(SystemExit):
        main(["detect", "--help"])
    assert "(default: no blur)" in " ".join(capsys.readouterr().out.split())


def test_an_unknown_option_shows_the_sub_commands_usage(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "-d", "x", "-q"])
    err = capsys.readouterr().err
    assert err.startswith("usage: maskwatch evaluate") and "unrecognized arguments: -q" in err
    with pytest.raises(SystemExit):
        main(["data", "split", "x", "-o", "y", "-z"])
    assert "maskwatch data split: error: unrecognized arguments: -z" in capsys.readouterr().err


def test_number_type_limits():
    assert number(0.0, 1.0)("0.5") == 0.5 and number(above=0.0)("1e-9") == 1e-9
    for text in ("nan", "inf", "-inf", "abc", "-0.1", "1.1"):
        with pytest.raises(argparse.ArgumentTypeError):
            number(0.0, 1.0)(text)
    with pytest.raises(argparse.ArgumentTypeError, match="below 1"):
        number(below=1.0)("1")


def test_classifier_refuses_a_bad_batch_size_and_non_finite_probabilities(tiny_model):
    from maskwatch.inference.classifier import Classifier

    with pytest.raises(MaskwatchError, match="batch size must be at least 1"):
        Classifier(tiny_model, batch_size=0)
    clf = Classifier(tiny_model)
    face = np.full((24, 24, 3), 120, np.uint8)
    assert np.isfinite(clf.predict_proba([face])).all()
    clf._backend.logits = lambda x: np.full((len(x), len(clf.classes)), np.nan, np.float32)
    with pytest.raises(ModelError, match="non-finite probabilities"):
        clf.classify([face])


def test_a_damaged_csv_results_file_is_not_resumed_into(tmp_path, tiny_model, capsys):
    for i in range(3):
        Image.new("RGB", (24, 24), (40 * i, 90, 90)).save(tmp_path / f"f{i}.png")
    results = tmp_path / "r.csv"
    base = ["classify", str(tmp_path / "f0.png"), str(tmp_path / "f1.png"), "-m",
            str(tiny_model), "-r"]
    assert main([*base, str(results)]) == 0
    good = results.read_text().splitlines()
    cases = {"quote.csv": [*good[:2], '"an,unclosed quote', *good[2:]],
             "short.csv": [*good[:2], "a,b", *good[2:]],
             "long.csv": [*good[:2], ",".join(["x"] * 20), *good[2:]]}
    for name, lines in cases.items():
        damaged = tmp_path / name
        damaged.write_text("\n".join(lines) + "\n")
        before = damaged.read_bytes()
        assert main([*base, str(damaged), "--resume"]) == 2
        err = capsys.readouterr().err
        assert "is this a maskwatch output file?" in err and name in err
        assert damaged.read_bytes() == before  # nothing appended
    # a CSV cut mid-record (a crash) still resumes: that last record is dropped
    cut = tmp_path / "cut.csv"
    cut.write_text("\n".join(good) + "\n" + good[1][: len(good[1]) // 2])
    assert main([*base, str(cut), "--resume"]) == 0


def test_training_that_diverges_stops_with_one_line(tmp_path, capsys):
    pytest.importorskip("torch")
    from test_training import make_dataset, train_argv

    data = make_dataset(tmp_path / "ds", per_class=6)
    argv = train_argv(data, tmp_path / "run", tmp_path / "cache", "--epochs", "2")
    argv[argv.index("--lr") + 1] = "1e30"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training diverged: the loss became" in err and "Traceback" not in err


def test_export_that_fails_leaves_no_model_behind(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from maskwatch.inference.modelfile import ModelInfo
    from maskwatch.models import create_model
    from maskwatch.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("seed_cnn128", 2, input_size=32).eval()
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, model, ModelInfo("seed_cnn128", ["with_mask", "without_mask"], 32))
    for opset in ("99", "5"):  # one torch cannot write, one ONNX Runtime cannot load
        out = tmp_path / f"m{opset}.onnx"
        assert main(["export", "-m", str(ckpt), "-o", str(out), "--opset", opset]) == 2
        err = capsys.readouterr().err
        assert err.startswith("maskwatch: error:") and "Traceback" not in err
        assert not out.exists() and not out.with_suffix(".json").exists()
    assert main(["export", "-m", str(ckpt), "-o", str(tmp_path / "ok.onnx")]) == 0
    assert (tmp_path / "ok.onnx").is_file()
    assert math.isfinite(float(capsys.readouterr().out.split("max_prob_diff:")[1].split()[0]))


def test_a_folder_given_as_the_model_is_named_as_such(tmp_path):
    from maskwatch.inference.classifier import Classifier

    with pytest.raises(ModelError, match="is a folder; give a model file"):
        Classifier(tmp_path)
    with pytest.raises(ModelError, match="model file not found"):
        Classifier(tmp_path / "nope.onnx")
