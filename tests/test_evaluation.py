"""Metrics against hand-computed values, threshold choice and `maskwatch evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maskwatch.evaluation.metrics import (
    confusion_matrix,
    evaluate_predictions,
    false_alarm_floor,
    roc_auc,
    roc_curve,
    threshold_for_recall,
)

CLASSES = ["with_mask", "without_mask", "incorrect_mask"]


def test_confusion_and_per_class_metrics_by_hand():
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 0, 2, 1, 2]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    probs = np.eye(3)[y_pred] * 0.8 + 0.2 / 3
    m = evaluate_predictions(y_true, probs, CLASSES, y_pred)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.6)
    # recalls 2/4, 2/3, 2/3
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    w = m["classes"]["with_mask"]
    assert (w["precision"], w["recall"], w["support"]) == (pytest.approx(2 / 3), 0.5, 4)
    assert w["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    wo = m["classes"]["without_mask"]
    assert wo["precision"] == pytest.approx(0.5) and wo["recall"] == pytest.approx(2 / 3)
    # without_mask positive: negatives are the 7 others, 2 of them flagged
    assert m["specificity"] == pytest.approx(5 / 7)
    assert m["confusion_matrix"] == cm.tolist()


def test_class_with_no_support_is_left_out_of_balanced_accuracy():
    m = evaluate_predictions([0, 0, 1], np.array([[.9, .1], [.4, .6], [.2, .8]]),
                             ["with_mask", "without_mask"])
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    m3 = evaluate_predictions([0, 1], np.array([[.9, .1, 0], [.2, .8, 0]]), CLASSES)
    assert m3["balanced_accuracy"] == 1.0
    assert m3["classes"]["incorrect_mask"]["support"] == 0


def test_roc_auc_counts_ties_as_half():
    assert roc_auc([1, 0, 1, 0], [0.9, 0.9, 0.2, 0.1]) == pytest.approx(0.625)
    assert roc_auc([1, 1, 0, 0], [0.8, 0.7, 0.3, 0.1]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([1, 1], [0.1, 0.2]) is None
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300).astype(bool)
    s = rng.random(300) + y * 0.3
    pairs = (s[y][:, None] > s[~y][None, :]).mean()
    assert roc_auc(y, s) == pytest.approx(pairs)


def test_roc_curve_points():
    fpr, tpr, thr = roc_curve([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1])
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0, 0.5, 0.5, 1.0, 1.0]
    assert thr[1:].tolist() == [0.9, 0.8, 0.4, 0.1]
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1]))


def test_threshold_for_recall():
    y = [1, 1, 1, 1, 0, 0]
    s = [0.9, 0.6, 0.4, 0.3, 0.35, 0.1]
    # 0.75 recall needs 3 of 4 positives: the highest such threshold is 0.4 (< 0.5)
    assert threshold_for_recall(y, s, 0.75, current=0.5) == (0.4, 0.75)
    # already reached at the current threshold: no change
    assert threshold_for_recall(y, s, 0.5, current=0.5) == (0.5, 0.5)
    assert threshold_for_recall(y, s, 1.0, current=0.5) == (0.3, 1.0)
    with pytest.raises(ValueError):
        threshold_for_recall([0, 0], [0.1, 0.2], 0.9)


def test_false_alarm_cap_holds_the_threshold_up():
    # one bare face scored near zero: full recall would flag every masked face
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.6, 0.01, 0.3, 0.2, 0.1, 0.05, 0.02]
    assert threshold_for_recall(y, s, 1.0) == (0.01, 1.0)
    t, recall = threshold_for_recall(y, s, 1.0, max_false_alarms=0.2)
    # at most 1 of 5 masked faces may alarm: the threshold rises just above the second one
    assert 0.2 < t < 0.3 + 1e-12 and t == pytest.approx(0.2)
    assert recall == 0.75
    assert sum(v >= t for v, lab in zip(s, y) if lab == 0) == 1
    # a cap the recall rule already meets changes nothing
    assert threshold_for_recall(y, s, 0.75, max_false_alarms=0.2) == (0.5, 0.75)
    assert threshold_for_recall(y, s, 1.0, max_false_alarms=1.0) == (0.01, 1.0)
    # cap 0: no masked face may alarm
    t0, _ = threshold_for_recall(y, s, 1.0, max_false_alarms=0.0)
    assert t0 > 0.3
    assert false_alarm_floor([], 0.0) == 0.0
    with pytest.raises(ValueError):
        threshold_for_recall(y, s, 1.0, max_false_alarms=1.5)


# ---------------------------------------------------------------- the CLI

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from maskwatch.cli import main as cli_main  # noqa: E402


def _faces(root: Path, per_class: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for label in ("with_mask", "without_mask"):
        d = root / "test" / label
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)
            if label == "with_mask":
                img[20:] = 230
            Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture
def checkpoint(tmp_path):
    from maskwatch.inference.modelfile import ModelInfo
    from maskwatch.models import create_model
    from maskwatch.models.checkpoint import save_checkpoint

    torch.manual_seed(3)
    model = create_model("seed_cnn128", 2, input_size=32)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, ModelInfo("seed_cnn128", ["with_mask", "without_mask"], 32,
                                           [0.5] * 3, [0.5] * 3, extra={"margin": 0.0}))
    return path


def _independent_scores(model_path, data: Path):
    """P(without_mask) and labels computed with the Classifier directly."""
    from maskwatch.imaging import load_rgb
    from maskwatch.inference.classifier import Classifier

    clf = Classifier(model_path)
    files = sorted(data.rglob("*.png"))
    probs = clf.predict_proba([load_rgb(f) for f in files])
    y = np.array([1 if f.parent.name == "without_mask" else 0 for f in files])
    return probs[:, 1], y


def test_evaluate_json_matches_direct_scoring(tmp_path, checkpoint, capsys):
    data = _faces(tmp_path / "ds")
    rc = cli_main(["evaluate", "--data", str(data), "--model", str(checkpoint), "--json",
                   "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    m = json.loads(out[0])
    p, y = _independent_scores(checkpoint, data)
    pred = (p >= 0.5).astype(int)
    assert m["n"] == 12
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    tn = int(((pred == 0) & (y == 0)).sum())
    assert m["specificity"] == pytest.approx(tn / 6)
    assert m["roc_auc"] == pytest.approx(roc_auc(y, p))
    assert np.array(m["confusion_matrix"]).sum() == 12
    for key in ("balanced_accuracy", "classes"):
        assert key in m
    assert set(m["classes"]["with_mask"]) >= {"precision", "recall", "f1", "support"}


@pytest.mark.parametrize("bundled", [False, True])
def test_scoring_side_by_side_keeps_order_and_results(tmp_path, checkpoint, bundled):
    """Chunks on several threads give what one thread gives, in the samples' order, with
    the unreadable face listed (torch and ONNX Runtime backends)."""
    from maskwatch.data import load_dataset
    from maskwatch.evaluation.evaluate import score_samples
    from maskwatch.inference.classifier import Classifier

    data = _faces(tmp_path / "ds", per_class=9)
    (data / "test" / "with_mask" / "broken.png").write_bytes(b"not a png")
    samples = sorted(load_dataset(data).samples, key=lambda s: str(s.path))
    labels = np.array([0 if s.label == "with_mask" else 1 for s in samples])
    clf = Classifier(None if bundled else checkpoint, threads=1)
    one = score_samples(clf, samples, labels, 0.0, batch=4, progress=False, workers=1)
    many = score_samples(clf, samples, labels, 0.0, batch=4, progress=False, workers=3)
    assert len(one.failed) == len(many.failed) == 1 and "broken.png" in many.failed[0]
    assert [s.path for s in many.samples] == [s.path for s in one.samples]
    assert [s.path for s in many.samples] == [s.path for s in samples
                                              if s.path.name != "broken.png"]
    assert many.y_true.tolist() == one.y_true.tolist()
    np.testing.assert_allclose(many.probs, one.probs, rtol=1e-5, atol=1e-6)


def test_target_recall_written_beside_the_model(tmp_path, checkpoint, capsys):
    from maskwatch.models.checkpoint import read_header

    data = _faces(tmp_path / "ds")
    original = checkpoint.read_bytes()
    argv = ["evaluate", "--data", str(data), "--model", str(checkpoint), "--json",
            "--target-recall", "1.0", "--write-threshold", "--threads", "1"]
    assert cli_main(argv) == 0
    m = json.loads(capsys.readouterr().out)
    choice = m["threshold_choice"]
    p, y = _independent_scores(checkpoint, data)
    assert choice["threshold"] == pytest.approx(min(0.5, p[y == 1].min()), abs=1e-6)
    assert choice["recall"] == 1.0
    written = Path(choice["written_to"])
    assert written.name == "model.recall1.safetensors"
    assert checkpoint.read_bytes() == original  # the model itself is untouched
    assert read_header(written)["threshold"] == pytest.approx(choice["threshold"])
    # evaluating the new file at its own threshold reaches the recall
    assert cli_main(["evaluate", "--data", str(data), "--model", str(written), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recall_positive"] == 1.0
    # a second write would replace the copy: refused without --overwrite
    assert cli_main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_max_false_alarms_caps_the_chosen_threshold(tmp_path, checkpoint, capsys):
    data = _faces(tmp_path / "ds")
    p, y = _independent_scores(checkpoint, data)
    base = ["evaluate", "--data", str(data), "--model", str(checkpoint), "--json",
            "--threads", "1", "--target-recall", "1.0"]
    assert cli_main(base) == 0
    free = json.loads(capsys.readouterr().out)["threshold_choice"]
    flagged = (p[y == 0] >= free["threshold"]).mean()
    assert free["false_alarms"] == pytest.approx(flagged)
    assert free["reached"] and free["max_false_alarms"] is None
    assert cli_main([*base, "--max-false-alarms", "0"]) == 0
    capped = json.loads(capsys.readouterr().out)["threshold_choice"]
    assert capped["false_alarms"] == 0.0 and capped["max_false_alarms"] == 0.0
    assert capped["threshold"] > p[y == 0].max()
    assert capped["recall"] == pytest.approx((p[y == 1] >= capped["threshold"]).mean())
    assert capped["reached"] == (capped["recall"] == 1.0)
    # the human report says what the cap did
    assert cli_main([*base[:5], "--no-save", "--threads", "1", "--target-recall", "1.0",
                     "--max-false-alarms", "0"]) == 0
    text = capsys.readouterr().out
    assert "with_mask faces flagged at it: 0.0000 (cap 0)" in text
    assert ("target recall is not reached" in text) == (not capped["reached"])
    # the cap alone is refused with one line
    assert cli_main(base[:6] + ["--max-false-alarms", "0.1"]) == 2
    assert "--max-false-alarms needs --target-recall" in capsys.readouterr().err


def test_evaluate_out_folder_has_plots_and_gallery(tmp_path, checkpoint, capsys):
    data = _faces(tmp_path / "ds")
    out = tmp_path / "report"
    assert cli_main(["evaluate", "--data", str(data), "--model", str(checkpoint),
                     "--out", str(out), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "balanced accuracy" in text and "confusion matrix" in text
    for name in ("confusion_matrix.png", "roc.png", "errors.png", "errors.html",
                 "metrics.json"):
        assert (out / name).is_file(), name
    html = (out / "errors.html").read_text()
    wrong = json.loads((out / "metrics.json").read_text())
    n_wrong = wrong["n"] - int(np.trace(np.array(wrong["confusion_matrix"])))
    thumbs = sorted((out / "errors").glob("*.jpg"))
    assert len(thumbs) == n_wrong
    for t in thumbs:
        assert f"errors/{t.name}" in html
    # the folder now has files: a second run needs --overwrite
    assert cli_main(["evaluate", "--data", str(data), "--model", str(checkpoint),
                     "--out", str(out)]) == 2


def test_evaluate_split_errors(tmp_path, checkpoint, capsys):
    data = _faces(tmp_path / "ds")
    assert cli_main(["evaluate", "--data", str(data), "--model", str(checkpoint),
                     "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskwatch: error:") and "test" in err and err.count("\n") == 1


def test_evaluate_says_what_it_skipped_and_that_it_cropped_boxes(tmp_path, checkpoint, capsys):
    """An unknown class folder is warned about; a detection dataset (VOC) is scored on its
    annotated boxes, and the output says so."""
    from PIL import Image

    data = _faces(tmp_path / "ds")
    (data / "test" / "sunglasses").mkdir()
    Image.new("RGB", (20, 20)).save(data / "test" / "sunglasses" / "s.png")
    assert cli_main(["evaluate", "--data", str(data), "--model", str(checkpoint),
                     "--no-save", "-j", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "unknown class folder: 1" in err and "sunglasses" in err

    voc = tmp_path / "voc"
    (voc / "images").mkdir(parents=True)
    (voc / "annotations").mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(
            voc / "images" / f"s{k}.png")
        objects = "".join(
            f"<object><name>{name}</name><bndbox><xmin>{x}</xmin><ymin>10</ymin>"
            f"<xmax>{x + 40}</xmax><ymax>60</ymax></bndbox></object>"
            for name, x in (("with_mask", 5), ("without_mask", 60)))
        (voc / "annotations" / f"s{k}.xml").write_text(
            f"<annotation><filename>s{k}.png</filename><size><width>120</width>"
            f"<height>80</height></size>{objects}</annotation>")
    assert cli_main(["evaluate", "--data", str(voc), "--model", str(checkpoint),
                     "--no-save", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "faces: 4" in captured.out
    assert "annotated boxes of 2 image(s) of the voc dataset, cropped with margin 0" \
        in captured.err
