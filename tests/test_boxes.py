"""maskwatch.boxes: the one home of clipping, cropping, IoU and NMS."""

from __future__ import annotations

import numpy as np
import pytest

from maskwatch.boxes import clip_box, crop, expand_box, greedy_pairs, iou, iou_matrix, nms
from maskwatch.data.model import Sample, read_face
from maskwatch.detection.pipeline import Detector
from maskwatch.errors import ImageError
from maskwatch.imaging import save_rgb


def test_iou_matrix():
    m = iou_matrix([(0, 0, 10, 10)], [(0, 0, 10, 10), (5, 0, 15, 10), (20, 20, 30, 30)])
    assert m[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges do not overlap
    assert iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)


def test_nms_keeps_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.4) == [0, 2]
    assert nms(boxes, np.array([0.5, 0.8, 0.7]), 0.4) == [1, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.9) == [0, 1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0)) == []


def test_crop_margin_clipped():
    img = np.zeros((50, 60, 3), np.uint8)
    assert crop(img, (10, 10, 30, 30), 0.5).shape == (40, 40, 3)
    assert crop(img, (0, 0, 20, 20), 0.5).shape == (30, 30, 3)
    assert crop(img, (59, 49, 60, 50), 0.0).shape == (1, 1, 3)
    assert crop(img, None) is img
    with pytest.raises(ImageError, match="outside"):
        crop(img, (70, 60, 80, 70))


def test_clip_and_expand():
    assert clip_box((-5, 3.4, 20.6, 90), 20, 50) == (0, 3, 20, 50)
    assert clip_box((30, 0, 40, 10), 20, 50) is None
    assert expand_box((10, 10, 20, 30), 0.5, 100, 100) == (5, 0, 25, 40)


class _Recorder:
    """A classifier that records the crops it is given."""

    classes = ["with_mask", "without_mask"]

    def __init__(self):
        self.crops = []

    def classify(self, faces):
        from maskwatch.inference.classifier import Prediction

        self.crops.extend(faces)
        return [Prediction("with_mask", 1.0, {"with_mask": 1.0, "without_mask": 0.0})
                for _ in faces]


class _OneBox:
    """A face detector that always reports the same box."""

    def __init__(self, box):
        self.box = box

    def detect(self, rgb):
        return [(*self.box, 0.9)]


def test_training_and_inference_crops_are_the_same_pixels(tmp_path):
    """A face cut for training (data.read_face) and at inference (the detect pipeline)
    covers the same pixels, also where the margin lands on half pixels."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    path = tmp_path / "scene.png"
    save_rgb(path, rgb)
    box = (11, 7, 38, 40)  # 27 x 33: 0.15 margins of 4.05 and 4.95 px
    clf = _Recorder()
    det = Detector("yunet", classifier=clf, margin=0.15)
    det.face_detector = _OneBox(box)
    det.detect(rgb)
    train = read_face(Sample(path, "with_mask", box=box), margin=0.15)
    assert clf.crops[0].shape == train.shape
    assert np.array_equal(clf.crops[0], train)


def test_greedy_pairs_best_first_one_to_one():
    ious = np.array([[0.9, 0.6, 0.0],
                     [0.8, 0.7, 0.0],
                     [0.0, 0.0, 0.2]])
    assert greedy_pairs(ious, 0.5) == [(0, 0), (1, 1)]
    assert greedy_pairs(ious, 0.1) == [(0, 0), (1, 1), (2, 2)]
    assert greedy_pairs(np.zeros((0, 3)), 0.5) == []
