"""The three-class path end to end (with_mask, without_mask, incorrect_mask) with a tiny
three-class ONNX model these tests build: classify, detect (JSON, CSV, drawing), evaluate
(3x3 and a two-class dataset), the API and alerts."""

from __future__ import annotations

import csv
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from detection_helpers import FACE_IN_HEAD, head, masked_head, paste, write_image
from onnx_helpers import write_tiny_onnx

from maskwatch.boxes import crop, iou
from maskwatch.cli import main
from maskwatch.detection.demo import draw_mask
from maskwatch.detection.draw import COLOURS
from maskwatch.inference.modelfile import IMAGENET_MEAN, IMAGENET_STD
from maskwatch.inference.preprocess import prepare

CLASSES = ("with_mask", "without_mask", "incorrect_mask")
SIZE = 16


def chin_masked_head() -> np.ndarray:
    """The sample head with a green mask pulled down onto the chin (mouth half out)."""
    x1, y1, x2, y2 = FACE_IN_HEAD
    drop = int(0.3 * (y2 - y1))
    return draw_mask(head(), (x1, y1 + drop, x2, y2 + drop), colour=(60, 200, 90))


HEADS = {"with_mask": masked_head, "without_mask": head, "incorrect_mask": chin_masked_head}


def face_crop(label: str) -> np.ndarray:
    return np.ascontiguousarray(crop(HEADS[label](), FACE_IN_HEAD, 0.15))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A nearest-mean-colour classifier: logit_c = 2k m.t_c - k |t_c|^2, where t_c is the
    normalised mean colour of class c's face crop."""
    protos = np.stack([
        prepare([face_crop(c)], SIZE, IMAGENET_MEAN, IMAGENET_STD).mean(axis=(2, 3))[0]
        for c in CLASSES])
    k = 20.0
    path = tmp_path_factory.mktemp("model") / "tiny3.onnx"
    return write_tiny_onnx(path, 2 * k * protos.T, SIZE, classes=CLASSES,
                           bias=-k * (protos ** 2).sum(1), threshold=0.5)


def test_classify_json_and_csv(model, tmp_path, capsys):
    paths = {c: write_image(tmp_path / "in" / f"{c}.png", face_crop(c)) for c in CLASSES}
    assert main(["classify", str(tmp_path / "in"), "--model", str(model), "--json",
                 "--threads", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {os.path.basename(r["path"]): r for r in records}
    for c in CLASSES:
        r = by_name[f"{c}.png"]
        assert r["label"] == c and set(r["scores"]) == set(CLASSES)
        assert r["score"] == max(r["scores"].values())
    out = tmp_path / "faces.csv"
    assert main(["classify", *map(str, paths.values()), "--model", str(model),
                 "--output", str(out), "--threads", "1"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {f"p_{c}" for c in CLASSES} <= set(rows[0])
    assert {os.path.basename(r["path"]): r["label"] for r in rows} == {
        f"{c}.png": c for c in CLASSES}


def _scene():
    canvas = np.full((400, 900, 3), 120, np.uint8)
    boxes = {c: paste(canvas, HEADS[c](), 20 + 290 * i, 40, 260) for i, c in enumerate(CLASSES)}
    return canvas, boxes


def test_detect_json_csv_and_amber_boxes(model, tmp_path, capsys):
    rgb, boxes = _scene()
    photo = write_image(tmp_path / "three.png", rgb)
    out = tmp_path / "out"
    assert main(["detect", str(photo), "--model", str(model), "--json", "--quiet",
                 "--csv", str(tmp_path / "faces.csv"), "--out", str(out),
                 "--threads", "1"]) == 0
    captured = capsys.readouterr()
    (record,) = [json.loads(line) for line in captured.out.splitlines()]
    assert len(record["faces"]) == 3
    for c, box in boxes.items():
        face = max(record["faces"], key=lambda f: iou(f["box"], box))
        assert iou(face["box"], box) > 0.5
        assert face["label"] == c and set(face["scores"]) == set(CLASSES)
    assert "incorrect_mask: 1" in captured.err
    assert "mask worn wrongly: 33.3% of faces" in captured.err
    rows = list(csv.DictReader((tmp_path / "faces.csv").open()))
    assert sorted(r["label"] for r in rows) == sorted(CLASSES)
    wrong = next(r for r in rows if r["label"] == "incorrect_mask")
    assert float(wrong["p_incorrect_mask"]) == pytest.approx(float(wrong["score"]), abs=1e-4)
    # the annotated copy has the amber box, on the worn-wrongly face's outline only
    from maskwatch.imaging import load_rgb

    drawn = load_rgb(out / "three.png")
    amber = (np.abs(drawn.astype(int) - COLOURS["incorrect_mask"]).sum(axis=2) < 30)
    ys, xs = np.nonzero(amber)
    assert len(xs) > 100
    x1, y1, x2, _ = next(f["box"] for f in record["faces"] if f["label"] == "incorrect_mask")
    others = [f["box"] for f in record["faces"] if f["label"] != "incorrect_mask"]
    # its outline and caption (which may shift left to stay inside the photo), clear of the
    # other faces to its left
    assert xs.min() > max(b[2] for b in others) and xs.max() <= x2 + 150
    assert amber[y1 + 20:y1 + 60, x1].all()  # the left edge of its box


def _class_folders(root, per_class: dict[str, list[np.ndarray]]):
    for folder, faces in per_class.items():
        for i, face in enumerate(faces):
            write_image(root / folder / f"{i}.png", face)
    return root


def _variants(label: str, n: int = 3) -> list[np.ndarray]:
    """``n`` slightly different crops of one class's face (shifted by a few pixels)."""
    rgb = HEADS[label]()
    x1, y1, x2, y2 = FACE_IN_HEAD
    return [np.ascontiguousarray(crop(rgb, (x1 + 3 * k, y1 + 2 * k, x2 + 3 * k, y2 + 2 * k),
                                           0.15)) for k in range(n)]


def test_evaluate_three_by_three(model, tmp_path, capsys):
    # 3 faces per class, and one bare face filed as worn wrongly: a known mistake
    data = _class_folders(tmp_path / "data", {
        "with_mask": _variants("with_mask"), "without_mask": _variants("without_mask"),
        "mask_weared_incorrect": _variants("incorrect_mask") + [face_crop("without_mask")],
    })
    assert main(["evaluate", "--data", str(data), "--model", str(model), "--json",
                 "--threads", "1"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["labels"] == list(CLASSES)
    assert m["confusion_matrix"] == [[3, 0, 0], [0, 3, 0], [0, 1, 3]]
    inc = m["classes"]["incorrect_mask"]
    assert (inc["precision"], inc["recall"], inc["support"]) == (1.0, 0.75, 4)
    assert inc["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert m["classes"]["without_mask"]["precision"] == pytest.approx(0.75)
    assert m["decision"]["left_out"] == [] and m["decision"]["scored_classes"] == list(CLASSES)
    assert m["accuracy"] == pytest.approx(9 / 10)
    # the text report has the 3x3 matrix
    assert main(["evaluate", "--data", str(data), "--model", str(model), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "incorrect_mask" in text.split("confusion matrix")[1]


def test_evaluate_two_class_dataset_restricts_the_decision(model, tmp_path, capsys):
    # a two-class dataset that files a mask on the chin under with_mask, as such sets do
    data = _class_folders(tmp_path / "data", {
        "with_mask": _variants("with_mask") + [face_crop("incorrect_mask")],
        "without_mask": _variants("without_mask"),
    })
    assert main(["evaluate", "--data", str(data), "--model", str(model), "--json",
                 "--threads", "1"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["labels"] == ["with_mask", "without_mask"]
    assert m["confusion_matrix"] == [[4, 0], [0, 3]]
    d = m["decision"]
    assert d["model_classes"] == list(CLASSES) and d["left_out"] == ["incorrect_mask"]
    assert d["answers_left_out"] == 1 and "restricted to the dataset's classes" in d["rule"]
    assert main(["evaluate", "--data", str(data), "--model", str(model), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "the dataset has no incorrect_mask" in text and "1 face(s)" in text


def test_api_counts_and_classify(model):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from maskwatch.serving.app import Settings, create_app

    def png(rgb):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "PNG")
        return {"files": {"file": ("x.png", buf.getvalue(), "image/png")}}

    settings = Settings(model=str(model), detector="centerface", threads=1)
    # the server checks the Host header: reach it by its loopback address
    with TestClient(create_app(settings=settings), base_url="http://127.0.0.1") as c:
        assert c.get("/api/model").json()["classes"] == list(CLASSES)
        r = c.post("/api/detect", **png(_scene()[0])).json()
        assert r["counts"] == {"with_mask": 1, "without_mask": 1, "incorrect_mask": 1,
                               "total": 3, "uncounted": 0}
        r = c.post("/api/classify", **png(face_crop("incorrect_mask"))).json()
        assert r["label"] == "incorrect_mask"


def test_alerts_count_incorrect_mask_by_default():
    from maskwatch.detection.alerts import AlertHook, parse_labels
    from maskwatch.detection.pipeline import Face
    from maskwatch.errors import MaskwatchError

    wrong = [Face([0, 0, 10, 10], 0.9, "incorrect_mask", 0.8, track_id=1)]
    hook = AlertHook(after=2, command="true", clock=lambda: 0.0)
    assert hook.update(wrong) is None
    event = hook.update(wrong)
    assert event and event["face"]["label"] == "incorrect_mask"
    hook.wait(10)
    strict = AlertHook(after=1, command="true", non_compliant=parse_labels("without_mask"))
    assert strict.update(wrong) is None and not strict.fired
    assert parse_labels(" without_mask , incorrect_mask ") == ("without_mask", "incorrect_mask")
    with pytest.raises(MaskwatchError, match="--non-compliant .*'maybe' unknown"):
        parse_labels("without_mask,maybe")
    # the spellings datasets use name the same labels
    assert parse_labels("no_mask,WITHOUT_MASK,mask_weared_incorrect") == ("without_mask",
                                                                          "incorrect_mask")
