"""Drawing: scaled boxes and captions, labels placed off other faces, the drawing options,
the count overlay, captions a reader can trust, and blurring faces."""

from __future__ import annotations

import numpy as np
import pytest

from maskwatch.detection.draw import (
    COLOURS,
    Annotator,
    draw_faces,
    draw_summary,
    face_counts,
    faces_to_blur,
    font_scale,
    label_text,
    line_width,
    place_labels,
)
from maskwatch.detection.pipeline import Face
from maskwatch.detection.privacy import blur_faces


def _ink(out: np.ndarray, colour) -> np.ndarray:
    return (out == np.array(colour, np.uint8)).all(axis=-1)


def test_caption_says_maybe_below_even_odds_and_numbers_are_optional():
    sure = Face([0, 0, 10, 10], 0.9, "without_mask", 0.93)
    unsure = Face([0, 0, 10, 10], 0.9, "without_mask", 0.12)
    tracked = Face([0, 0, 10, 10], 0.9, "with_mask", 0.98, track_id=4)
    assert label_text(sure) == "no mask 0.93"
    assert label_text(unsure) == "maybe no mask 0.12"
    assert label_text(unsure, scores=False) == "maybe no mask"
    assert label_text(tracked) == "#4 mask 0.98"
    assert label_text(Face([0, 0, 10, 10], 0.87)) == "face 0.87"
    assert label_text(Face([0, 0, 10, 10], 0.87), scores=False) == "face"


def test_line_width_and_font_grow_with_face_and_image():
    small, big = (0, 0, 40, 50), (0, 0, 400, 500)
    assert line_width(big, (2000, 3000)) > line_width(small, (2000, 3000))
    assert line_width(small, (4000, 6000)) > line_width(small, (400, 600))
    assert line_width(small, (60, 80)) == 1
    assert font_scale(big, (2000, 3000)) > font_scale(small, (2000, 3000))
    assert font_scale(small, (4000, 6000)) > font_scale(small, (400, 600))
    # never below a readable size, never huge on a thumbnail
    assert font_scale((0, 0, 4, 4), (50, 50)) >= 0.4
    assert font_scale((0, 0, 4000, 4000), (400, 400)) <= 1.0


def test_labels_go_where_they_cover_no_other_face():
    # face B sits right under face A: B's caption above B would cover A, so it goes below
    a, b = (100, 20, 200, 120), (100, 125, 200, 225)
    (ax, ay), (bx, by) = place_labels([a, b], [(90, 20), (90, 20)], (400, 400))
    assert (ax, ay) == (100, 0)  # above A, clipped to the top edge
    assert by >= 225  # below B
    # a third face to the right of B's caption: captions never overlap each other either
    sizes = [(150, 20)] * 3
    boxes = [a, b, (255, 230, 355, 330)]
    corners = place_labels(boxes, sizes, (400, 400))
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    for i, r in enumerate(rects):
        for j, box in enumerate(boxes):
            if i != j:
                assert min(r[2], box[2]) <= max(r[0], box[0]) or \
                    min(r[3], box[3]) <= max(r[1], box[1]), (i, j)
        for k in range(i):
            s = rects[k]
            assert min(r[2], s[2]) <= max(r[0], s[0]) or min(r[3], s[3]) <= max(r[1], s[1])
    # every caption stays inside the image
    assert all(0 <= x <= 400 - w and 0 <= y <= 400 - h
               for (x, y), (w, h) in zip(corners, sizes))


def test_drawn_caption_leaves_the_neighbouring_face_uncovered():
    img = np.zeros((300, 300, 3), np.uint8)
    upper = Face([100, 20, 200, 120], 0.9, "with_mask", 0.97)
    lower = Face([100, 124, 200, 224], 0.9, "without_mask", 0.95)
    out = draw_faces(img, [upper, lower])
    inside_upper = out[24:116, 104:196]
    assert not _ink(inside_upper, COLOURS["without_mask"]).any()
    assert _ink(out[224:260, 100:200], COLOURS["without_mask"]).any()  # caption below


def test_options_no_labels_no_scores_and_line_width():
    img = np.zeros((200, 300, 3), np.uint8)
    face = Face([100, 80, 200, 180], 0.9, "without_mask", 0.8)
    red = COLOURS["without_mask"]
    boxed = draw_faces(img, [face], labels=False)
    assert not _ink(boxed[:78], red).any()  # nothing above the box
    assert _ink(draw_faces(img, [face])[:78], red).any()  # the caption is there by default
    plain = draw_faces(img, [face], scores=False)
    with_score = draw_faces(img, [face])
    assert _ink(plain[:80], red).sum() < _ink(with_score[:80], red).sum()  # shorter caption
    thin = draw_faces(img, [face], labels=False, width=1)
    thick = draw_faces(img, [face], labels=False, width=6)
    assert _ink(thick, red).sum() > 4 * _ink(thin, red).sum()
    assert _ink(thin[120], red).sum() == 2 and _ink(thick[120], red).sum() >= 12  # 2 edges


def test_summary_counts_in_a_corner_clear_of_faces():
    faces = [Face([0, 0, 60, 60], 0.9, "with_mask", 0.9),
             Face([70, 0, 120, 60], 0.9, "without_mask", 0.9),
             Face([130, 0, 190, 60], 0.9, "without_mask", 0.9)]
    assert face_counts(faces) == {"with_mask": 1, "without_mask": 2}
    assert list(face_counts([Face([0, 0, 1, 1], 0.5), faces[1], faces[0]])) == \
        ["with_mask", "without_mask", "face"]
    img = np.full((200, 400, 3), 128, np.uint8)
    out = draw_summary(img, face_counts(faces), avoid=[f.box for f in faces] + [(200, 0, 400, 60)])
    black = _ink(out, (0, 0, 0))
    assert black[180:, :100].any() and not black[:60].any()  # bottom-left: off the faces
    assert _ink(draw_summary(img, face_counts(faces)), (0, 0, 0))[:5, :5].all()  # top-left
    assert (draw_summary(img, {"with_mask": 0}) == img).all()  # nothing to count


def test_annotator_draws_summary_and_blurs_only_the_chosen_faces():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 400, 3)).astype(np.uint8)
    masked = Face([20, 40, 120, 160], 0.9, "with_mask", 0.9)
    bare = Face([220, 40, 320, 160], 0.9, "without_mask", 0.9)
    unknown = Face([150, 200, 190, 250], 0.9)
    assert faces_to_blur([masked, bare, unknown], "unmasked") == [bare, unknown]
    assert faces_to_blur([masked, bare, unknown], "masked") == [masked]
    assert faces_to_blur([masked, bare], "all") == [masked, bare]
    assert faces_to_blur([masked, bare], None) == []
    with pytest.raises(ValueError):
        faces_to_blur([masked], "some")
    out = Annotator(labels=False, blur="unmasked")(img, [masked, bare])
    centre = (slice(80, 120), slice(50, 90))
    assert out[centre].std() > 50  # the masked face keeps its detail
    assert out[80:120, 250:290].std() < 10  # the unmasked one is blurred
    summary = Annotator(labels=False, summary=True)(img, [masked, bare])
    assert (summary[:5, :40] == 0).all() or (summary[-5:, :40] == 0).all()


def test_blur_faces_hides_detail_inside_an_ellipse_only():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (200, 200, 3)).astype(np.uint8)
    before = img.copy()
    out = blur_faces(img, [(50, 50, 150, 150, 0.9)])
    assert (img == before).all()  # input untouched
    assert out[80:120, 80:120].std() < 10
    assert (out[:30] == img[:30]).all() and (out[:, :30] == img[:, :30]).all()
    # the corners of the grown box are outside the ellipse and keep their pixels
    assert (out[36:40, 36:40] == img[36:40, 36:40]).all()
    # a box at the edge, a degenerate box and no box at all are fine
    blur_faces(img, [(-20, -20, 30, 30), (10, 10, 10, 40)])
    assert (blur_faces(img, []) == img).all()
