"""Two-pass face detection: pass sizes, the region the finer pass looks at, and merging."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from maskwatch.boxes import iou
from maskwatch.detection.faces import (
    REFINE_BELOW,
    FaceDetector,
    drop_nested,
    merge_passes,
    pass_scales,
    refine_region,
)
from maskwatch.errors import MaskwatchError


class SquareFinder(FaceDetector):
    """A stand-in back-end: dark squares are faces. Like CenterFace it places boxes on a
    4-pixel grid of its input, misses squares under 4 px and scores small ones low."""

    name = "squares"

    def __init__(self, **kwargs):
        super().__init__(threshold=0.1, calibrate=False, **kwargs)
        self.inputs: list[tuple[int, int]] = []

    def _detect(self, bgr, threshold):
        self.inputs.append(bgr.shape[:2])
        dark = (bgr.max(axis=2) < 60).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(dark)
        out = []
        for x, y, w, h, _area in stats[1:n]:
            score = min(0.95, min(w, h) / 40)
            if min(w, h) < 4 or score < threshold:
                continue
            snap = lambda v: 4 * round(v / 4)  # noqa: E731
            out.append((snap(x), snap(y), snap(x + w), snap(y + h), score))
        return out


def photo(squares, width=1600, height=1200):
    img = np.full((height, width, 3), 200, np.uint8)
    for x, y, side in squares:
        img[y:y + side, x:x + side] = 0
    return img, [(x, y, x + side, y + side) for x, y, side in squares]


def test_pass_scales_follow_pixel_count():
    first, second = pass_scales(800, 600, 320, 800)
    assert first == pytest.approx(0.4) and second == pytest.approx(1.0)
    first, second = pass_scales(400, 300, 320, 800)
    assert first == pytest.approx(0.8) and second == pytest.approx(2.0)
    # small photos: not enlarged by the first pass unless asked; the finer pass enlarges
    assert pass_scales(200, 150, 320, 800) == (1.0, pytest.approx(4.0))
    assert pass_scales(200, 150, 320, 0, upscale=True) == (pytest.approx(1.6), None)
    # a panorama keeps the pixel count of a 4:3 photo, so its faces keep some height
    first, _ = pass_scales(10000, 400, 320, 800)
    assert 10000 * first * 400 * first == pytest.approx(320 * 240)
    assert pass_scales(800, 600, 800, 900)[1] is None  # not finer enough to pay for itself


def test_refine_region_pads_small_faces_or_takes_the_whole_photo():
    small = [(100, 100, 120, 120, 0.5), (160, 110, 176, 126, 0.3)]
    x1, y1, x2, y2 = refine_region(small, 0.5, 1600, 1200, below=32)
    pad = 20 + 32 / 0.5
    assert (x1, y1) == (int(100 - pad), int(100 - pad))
    assert (x2, y2) == (int(np.ceil(176 + pad)), int(np.ceil(126 + pad)))
    spread = [(10, 10, 30, 30, 0.5), (1500, 1100, 1520, 1120, 0.5)]
    assert refine_region(spread, 0.5, 1600, 1200) == (0, 0, 1600, 1200)
    assert refine_region([(0, 0, 10, 10, 0.5)], 0.5, 1600, 1200)[:2] == (0, 0)


def test_merge_keeps_big_first_pass_faces_and_finer_small_ones():
    region = (0, 0, 400, 400)
    first = [(500, 500, 800, 800, 0.9),  # big: kept from the first pass
             (100, 100, 130, 130, 0.3)]  # small: the finer pass replaces it
    second = [(502, 505, 796, 790, 0.8),  # the big face again: dropped
              (98, 101, 128, 131, 0.7),   # the small face, better placed: kept
              (350, 200, 400, 240, 0.6),  # cut by the region's inner edge: dropped
              (0, 300, 20, 320, 0.4)]     # at the photo's edge, not the region's: kept
    merged = merge_passes(first, second, 0.5, region, 1600, 1200, below=32)
    assert merged == [first[0], second[1], second[3]]


def test_two_passes_find_and_place_small_faces_the_first_pass_misses():
    big = (900, 300, 400)
    group = [(100, 100, 40), (180, 120, 40), (260, 90, 40), (120, 200, 16)]
    img, truth = photo([big, *group])
    one = SquareFinder(detect_size=320, refine_size=0)
    two = SquareFinder(detect_size=320, refine_size=800)
    found_one, found_two = one.detect(img), two.detect(img)

    def best(found, box):
        return max((iou(f[:4], box) for f in found), default=0.0)

    # the 16 px square is 3 px in the first pass: only the finer pass sees it
    assert best(found_one, truth[4]) < 0.1 < 0.5 < best(found_two, truth[4])
    for box in truth[1:4]:  # found by both; the kept boxes come from the finer pass
        assert best(found_one, box) > 0.5 and best(found_two, box) > 0.6
        match = max(found_two, key=lambda f: iou(f[:4], box))
        assert match[4] == pytest.approx(0.5)  # 20 px at the finer pass, 8 px at the first
    assert best(found_two, truth[0]) > 0.9
    assert len(found_two) == 5
    # the finer pass looked at the corner with the small faces only
    assert len(two.inputs) == 2 and two.inputs[1][0] * two.inputs[1][1] < 0.2 * 600 * 800
    # a photo with only big faces costs one pass
    two.inputs.clear()
    assert len(two.detect(photo([big])[0])) == 1 and len(two.inputs) == 1


def test_refine_size_is_checked():
    with pytest.raises(MaskwatchError, match="refine-size"):
        SquareFinder(refine_size=10)


def test_a_face_big_enough_for_the_first_pass_gets_no_finer_pass():
    # 1600 x 1200 at 320 px: first-pass scale 0.2; a square of side s is 0.2 s there
    finder = SquareFinder(detect_size=320, refine_size=800)
    side = int((REFINE_BELOW + 2) / 0.2)
    finder.detect(photo([(200, 200, side)])[0])
    assert len(finder.inputs) == 1
    finder.inputs.clear()
    finder.detect(photo([(200, 200, int((REFINE_BELOW - 4) / 0.2))])[0])
    assert len(finder.inputs) == 2


def test_boxes_inside_a_bigger_better_face_are_dropped():
    face = (100, 100, 300, 300, 0.9)
    eye = (150, 150, 200, 190, 0.3)           # wholly inside the face
    neighbour = (280, 120, 400, 260, 0.5)     # overlaps the face's edge only
    assert drop_nested([face, eye, neighbour]) == [face, neighbour]
    # a smaller box that scores higher is kept, and so is the bigger one after it
    assert drop_nested([eye[:4] + (0.95,), face]) == [eye[:4] + (0.95,), face]
    # over half of the small box's area inside the face: dropped; under half: kept
    half_in = (250, 150, 330, 200, 0.3)       # 50 of 80 px wide inside
    mostly_out = (270, 150, 350, 200, 0.3)    # 30 of 80 px wide inside
    assert drop_nested([face, half_in, mostly_out]) == [face, mostly_out]
    assert drop_nested([face, eye], inside=1.0) == [face, eye]


def test_passes_says_whether_the_finer_pass_runs():
    finder = SquareFinder(detect_size=320, refine_size=800)
    assert finder.passes(photo([(900, 300, 400)])[0]) == 1
    assert finder.passes(photo([(900, 300, 400), (100, 100, 40)])[0]) == 2
    assert SquareFinder(detect_size=320, refine_size=0).passes(
        photo([(100, 100, 40)])[0]) == 1
    assert finder.inputs and all(shape[0] <= 240 for shape in finder.inputs)  # first pass only


def test_min_side_skips_or_coarsens_the_finer_pass():
    # 1600 x 1200: first pass at 0.2, finer pass at 0.5; 100 px squares are 20 first-pass
    # pixels (small), 40 px ones 8
    big = (900, 300, 400)
    finder = SquareFinder(detect_size=320, refine_size=800)
    img, truth = photo([big, (100, 100, 40), (200, 120, 40)])
    assert len(finder.detect(img)) == 3 and len(finder.inputs) == 2
    finder.inputs.clear()
    # faces under 60 px are not wanted: no finer pass, and the small ones come as the first
    # pass drew them (the caller drops them)
    assert len(finder.detect(img, min_side=60)) == 3 and len(finder.inputs) == 1
    assert finder.passes(img, min_side=60) == 1 and finder.passes(img) == 2
    # 100 px faces wanted from 80 px: a finer pass, but at 24 / 80 = 0.3 instead of 0.5
    img, truth = photo([big, (100, 100, 100), (260, 120, 100)])
    finder.inputs.clear()
    fine = finder.detect(img)
    full_input = finder.inputs[1]
    finder.inputs.clear()
    coarse = finder.detect(img, min_side=80)
    assert len(finder.inputs) == 2
    assert finder.inputs[1][0] == pytest.approx(full_input[0] * 0.3 / 0.5, abs=2)
    for found in (fine, coarse):
        for box in truth:
            assert max(iou(f[:4], box) for f in found) > 0.8


def test_detector_min_face_asks_for_no_finer_pass_below_it():
    from maskwatch.detection.pipeline import REFINE_MIN_FACE_SLACK, Detector, refine_min_side

    assert refine_min_side(0) == 0.0
    assert refine_min_side(50) == pytest.approx(REFINE_MIN_FACE_SLACK * 50)
    # a site drawing heads 1.6x as tall as the detector's boxes: smaller detector faces count
    assert refine_min_side(50, (1.4, 1.6, 0.0, -0.15)) == pytest.approx(
        REFINE_MIN_FACE_SLACK * 50 / 1.6)
    assert refine_min_side(50, (0.8, 0.9, 0.0, 0.0)) == refine_min_side(50)
    img, _ = photo([(900, 300, 400), (100, 100, 40), (200, 120, 40)])
    for min_face, passes in ((0, 2), (60, 1)):
        finder = SquareFinder(detect_size=320, refine_size=800)
        faces = Detector(face_detector=finder, classifier=False, min_face=min_face).detect(img)
        assert len(finder.inputs) == passes
        assert len(faces) == (3 if min_face == 0 else 1)
