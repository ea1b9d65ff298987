"""The command line as a new user meets it: examples in every --help, one name per idea with
short flags (old spellings still accepted), saving by default and saying where, notes that
do not break the progress bar, drawing options, and what `evaluate` tells."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
from detection_helpers import SkinClassifier, scene, write_image
from onnx_helpers import write_tiny_onnx

from maskwatch.cli import build_parser, main
from maskwatch.detection import pipeline


def _commands(parser, name="maskwatch"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _commands(p, f"{name} {sub}")


def test_every_help_ends_with_examples():
    names = []
    for name, parser in _commands(build_parser()):
        names.append(name)
        text = parser.format_help()
        assert "examples:\n  maskwatch " in text or "examples:\n  MASKWATCH_" in text, name
    assert {"maskwatch detect", "maskwatch evaluate", "maskwatch data split",
            "maskwatch serve"} <= set(names)


def test_one_name_per_idea_short_flags_and_hidden_old_spellings():
    parse = build_parser().parse_args
    a = parse(["detect", "x.jpg", "-o", "d", "-r", "f.csv", "-m", "m.onnx", "-t", "0.3", "-j",
               "-q", "-w", "2", "--overwrite"])
    assert (a.out, a.results, a.model, a.threshold, a.json, a.quiet, a.workers,
            a.overwrite) == ("d", "f.csv", "m.onnx", 0.3, True, True, 2, True)
    # the old spellings still work for one release, and are not shown
    assert parse(["detect", "x.jpg", "--csv", "f.csv"]).results == "f.csv"
    assert parse(["detect", "x.jpg", "--output", "f.jsonl"]).results == "f.jsonl"
    assert parse(["classify", "x.jpg", "--output", "f.jsonl"]).results == "f.jsonl"
    for argv in (["evaluate", "-d", "x", "--force"], ["export", "-m", "c", "--force"],
                 ["data", "split", "x", "-o", "y", "--force"]):
        assert parse(argv).overwrite is True, argv
    helps = {name: p.format_help() for name, p in _commands(build_parser())}
    for name, text in helps.items():
        assert "--force" not in text and "--csv" not in text, name
        assert not re.search(r"--output\b", text), name
    for name in ("maskwatch detect", "maskwatch evaluate", "maskwatch export",
                 "maskwatch data split", "maskwatch classify"):
        assert "--overwrite" in helps[name], name


@pytest.fixture
def skin(monkeypatch):
    fake = SkinClassifier()
    monkeypatch.setattr(pipeline, "_load_classifier", lambda c, t, threshold=None: fake)
    return fake


def test_detect_saves_to_a_new_numbered_folder_and_says_where(tmp_path, monkeypatch, capsys,
                                                               skin):
    monkeypatch.setenv("MASKWATCH_RUNS", str(tmp_path / "runs"))
    img, _ = scene()
    photo = write_image(tmp_path / "people.jpg", img)
    assert main(["detect", str(photo), "--threads", "1", "-q"]) == 0
    assert main(["detect", str(photo), "--threads", "1", "-q"]) == 0
    out = capsys.readouterr().out
    first, second = tmp_path / "runs" / "detect" / "1", tmp_path / "runs" / "detect" / "2"
    assert (first / "people.jpg").is_file() and (second / "people.jpg").is_file()
    assert f"saved 1 annotated file(s) to {first}" in out
    assert f"saved 1 annotated file(s) to {second}" in out
    assert main(["detect", str(photo), "--threads", "1", "-q", "--no-save"]) == 0
    assert not (tmp_path / "runs" / "detect" / "3").exists()
    assert "saved" not in capsys.readouterr().out
    # a camera or stream is saved only when asked (-o): it never ends by itself
    assert main(["detect", "rtsp://127.0.0.1:9/none", "--threads", "1", "-q"]) == 1
    assert not (tmp_path / "runs" / "detect" / "3").exists()


def test_demo_saves_by_default(tmp_path, monkeypatch, capsys, skin):
    monkeypatch.setenv("MASKWATCH_RUNS", str(tmp_path / "runs"))
    assert main(["demo", "--threads", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(
        tmp_path / "runs" / "demo" / "1" / "maskwatch-demo.jpg")


def test_notes_print_on_their_own_line_during_the_progress_bar(tmp_path, capsys, skin):
    img, _ = scene()
    folder = tmp_path / "in"
    write_image(folder / "a_people.jpg", img)
    write_image(folder / "b_empty.png", np.full((80, 90, 3), 200, np.uint8))
    write_image(folder / "c_people.jpg", img)
    assert main(["detect", str(folder), "--threads", "1", "--no-save"]) == 0
    err = capsys.readouterr().err
    assert "images:" in err  # the bar was drawn
    # the note starts a fresh line: the bar is cleared (\r) before it, not written into
    assert re.search(r"(^|\n|\r)\s*maskwatch: \S*b_empty.png: no face found\n", err), err
    assert not re.search(r"\]maskwatch:", err)


def _red(rgb: np.ndarray) -> int:
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


def test_detect_drawing_options(tmp_path, capsys, skin):
    from maskwatch.imaging import load_rgb

    img, boxes = scene()
    photo = write_image(tmp_path / "people.png", img)

    def run(name, *flags):
        out = tmp_path / name
        assert main(["detect", str(photo), "--threads", "1", "-q", "-o", str(out),
                     *flags]) == 0
        return load_rgb(out / "people.png")

    plain = run("plain")
    boxes_only = run("boxes", "--no-labels")
    no_scores = run("noscores", "--no-scores")
    thick = run("thick", "--no-labels", "--line-width", "8")
    blurred = run("blur", "--blur", "unmasked")
    assert _red(boxes_only) < _red(no_scores) < _red(plain)  # captions shrink, then go
    assert _red(thick) > 2.5 * _red(boxes_only)  # 8 px lines instead of 2
    # the unmasked face (left) loses its detail; the masked one (right) keeps it
    x1, y1, x2, y2 = (int(v) for v in boxes[0])
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    patch = (slice(cy - 15, cy + 15), slice(cx - 15, cx + 15))
    detail = lambda a: float(np.abs(np.diff(a[patch].astype(int), axis=1)).mean())  # noqa: E731
    assert detail(blurred) < detail(plain) / 3
    mx1, my1, mx2, my2 = (int(v) for v in boxes[1])
    mpatch = (slice(my1 + 10, my1 + 40), slice(mx1 + 20, mx2 - 20))
    assert np.abs(blurred[mpatch].astype(int) - plain[mpatch].astype(int)).mean() < 1


def _tiny_model(tmp_path, trained_on):
    model = write_tiny_onnx(tmp_path / "tiny.onnx", [[0, 0], [0, 0], [1, -1]])  # blue: mask
    meta = json.loads(model.with_suffix(".json").read_text())
    meta["extra"] = {"trained_on": trained_on}
    model.with_suffix(".json").write_text(json.dumps(meta))
    return model


def _dataset(root, n=4):
    from PIL import Image

    for label, colour in (("with_mask", (30, 40, 220)), ("without_mask", (220, 120, 90))):
        d = root / label
        d.mkdir(parents=True)
        for i in range(n):
            rgb = np.zeros((24, 24, 3), np.uint8)
            rgb[:] = colour
            rgb[i, i] = 255
            Image.fromarray(rgb).save(d / f"{i}.png")
    # one face that looks masked but is labelled unmasked: exactly one mistake
    rgb = np.zeros((24, 24, 3), np.uint8)
    rgb[:] = (30, 40, 220)
    Image.fromarray(rgb).save(root / "without_mask" / "odd.png")
    return root


def test_evaluate_threshold_report_path_warning_and_small_gallery(tmp_path, monkeypatch,
                                                                   capsys):
    from PIL import Image

    monkeypatch.setenv("MASKWATCH_RUNS", str(tmp_path / "runs"))
    data = _dataset(tmp_path / "face-mask-7553")
    model = _tiny_model(tmp_path, ["face-mask-7553 (train part)", "face-mask-12k (train part)"])
    assert main(["evaluate", "-d", str(data), "-m", str(model), "-j", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    folder = tmp_path / "runs" / "evaluate" / "1"
    assert report["report"] == str(folder) and (folder / "metrics.json").is_file()
    assert f"report in {folder}" in captured.err
    assert "warning: the model's metadata lists face-mask-7553 (train part)" in captured.err
    assert report["trained_on_this_data"] == ["face-mask-7553 (train part)"]
    assert report["threshold"] == 0.5 and report["n"] == 9
    # one mistake: a small picture, not a 1200 px wide strip
    with Image.open(folder / "errors.png") as grid:
        assert grid.width < 300
    # --threshold: everything is unmasked from P = 0, so every masked face is a mistake
    assert main(["evaluate", "-d", str(data), "-m", str(model), "-j", "-t", "0.0",
                 "--no-save"]) == 0
    captured = capsys.readouterr()
    low = json.loads(captured.out)
    assert low["threshold"] == 0.0 and low["classes"]["with_mask"]["recall"] == 0.0
    assert low["report"] is None and "report in" not in captured.err
    assert not (tmp_path / "runs" / "evaluate" / "2").exists()


def test_trained_on_matches_names_and_paths(tmp_path):
    from maskwatch.evaluation.evaluate import trained_on

    data = tmp_path / "datasets" / "face-mask-12k" / "Test"
    data.mkdir(parents=True)
    extra = {"trained_on": ["face-mask-12k (train part)", "face-mask-7553 (train part)",
                            str(tmp_path / "datasets" / "face-mask-12k")]}
    assert trained_on(extra, data) == ["face-mask-12k (train part)",
                                       str(tmp_path / "datasets" / "face-mask-12k")]
    assert trained_on(extra, tmp_path / "other") == []
    assert trained_on({}, data) == []
