"""Preprocessing, the decision rule and the ONNX classifier (no torch needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maskwatch.errors import ModelError
from maskwatch.inference.classifier import Classifier
from maskwatch.inference.modelfile import ModelInfo
from maskwatch.inference.preprocess import decide, prepare, probabilities, resize_face, to_input

onnx = pytest.importorskip("onnx")

from onnx_helpers import write_tiny_onnx  # noqa: E402


def test_resize_and_normalise():
    face = np.full((50, 70, 3), 255, np.uint8)
    small = resize_face(face, 32)
    assert small.shape == (32, 32, 3)
    x = to_input(small[None], mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert np.allclose(x, 1.0)
    assert prepare([], 32, [0, 0, 0], [1, 1, 1]).shape == (0, 3, 32, 32)


def test_resize_face_averages_big_shrinks_and_interpolates_mild_ones():
    import cv2

    stripes = np.zeros((288, 288, 3), np.uint8)
    stripes[:, ::3] = 255  # a white line every third column: 3x shrinking averages them
    assert np.allclose(resize_face(stripes, 96).astype(int), 85, atol=1)
    mild = np.random.default_rng(0).integers(0, 255, (112, 112, 3), np.uint8)
    assert np.array_equal(resize_face(mild, 96),
                          cv2.resize(mild, (96, 96), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(resize_face(mild, 96),
                              cv2.resize(mild, (96, 96), interpolation=cv2.INTER_AREA))


def test_probabilities_softmax_and_sigmoid():
    p = probabilities(np.array([[0.0, 0.0], [10.0, -10.0]]))
    assert np.allclose(p.sum(axis=1), 1.0) and np.allclose(p[0], 0.5) and p[1, 0] > 0.99
    s = probabilities(np.array([[0.0], [100.0]]), head="sigmoid")
    assert np.allclose(s[0], [0.5, 0.5]) and s[1, 1] > 0.99


def test_decide_prefers_without_mask_at_threshold():
    classes = ["with_mask", "without_mask", "incorrect_mask"]
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    assert decide(probs, classes, 0.5).tolist() == [0, 2, 0]
    assert decide(probs, classes, 0.25).tolist() == [1, 1, 0]
    with pytest.raises(ValueError):
        decide(probs[:, :2], classes)


def test_model_info_round_trip_and_validation(tmp_path):
    info = ModelInfo("m", ["with_mask", "without_mask"], 64, threshold=0.3, head="sigmoid")
    info.save_json(tmp_path / "m.json")
    again = ModelInfo.load_json(tmp_path / "m.json")
    assert again == info and again.positive_index == 1
    with pytest.raises(ModelError):
        ModelInfo("m", ["a", "b", "c"], 64, head="sigmoid")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelInfo.load_json(tmp_path / "bad.json")


def test_onnx_classifier_scores_red_vs_blue(tmp_path):
    # logit0 follows the red channel, logit1 the blue channel
    write_tiny_onnx(tmp_path / "m.onnx", [[8.0, 0.0], [0.0, 0.0], [0.0, 8.0]],
                    mean=[0, 0, 0], std=[1, 1, 1])
    clf = Classifier(tmp_path / "m.onnx", threads=1, batch_size=2)
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((40, 40, 3), np.uint8)
    blue[..., 2] = 255
    preds = clf.classify([red, blue, red])  # 3 faces, batches of 2
    assert [p.label for p in preds] == ["with_mask", "without_mask", "with_mask"]
    assert preds[0].score > 0.99 and set(preds[1].scores) == {"with_mask", "without_mask"}
    assert json.dumps(preds[1].to_dict())


def test_classifier_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Classifier(tmp_path / "missing.onnx")
    (tmp_path / "x.bin").write_bytes(b"123")
    with pytest.raises(ModelError, match="unknown model format"):
        Classifier(tmp_path / "x.bin")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    ModelInfo("j", ["with_mask", "without_mask"], 16).save_json(tmp_path / "junk.json")
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        Classifier(tmp_path / "junk.onnx")


def test_onnx_graph_that_is_not_the_classifier_is_refused(tmp_path):
    """A graph whose input or output does not fit the metadata (another input size, a face
    detector) is one ModelError at load, not an ONNX Runtime traceback at the first face."""
    from importlib import resources

    model = write_tiny_onnx(tmp_path / "tiny.onnx", [[0, 8], [0, 0], [8, 0]], size=16)
    info = ModelInfo.load_json(model.with_suffix(".json"))
    info.input_size = 32
    info.save_json(model.with_suffix(".json"))
    with pytest.raises(ModelError, match="not a face classifier for its metadata"):
        Classifier(model)
    detector = tmp_path / "detector.onnx"
    detector.write_bytes((resources.files("maskwatch") / "assets" / "centerface.onnx")
                         .read_bytes())
    ModelInfo("x", ["with_mask", "without_mask"], 32).save_json(detector.with_suffix(".json"))
    with pytest.raises(ModelError, match=r"not a face classifier.*\[10, 3, 32, 32\]"):
        Classifier(detector)
