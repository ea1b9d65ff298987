"""Face detection + mask classification on one RGB frame (no file or video I/O here)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from maskwatch.boxes import crop
from maskwatch.detection.faces import (
    DEFAULT_DETECTOR,
    FaceDetector,
    calibrate_box,
    make_face_detector,
)
from maskwatch.errors import MaskwatchError
from maskwatch.imaging import as_rgb, copy_factor, dct_denominator, load_rgb_reduced
from maskwatch.inference.modelfile import DEFAULT_BOX_MAPS, SiteParams
from maskwatch.labels import is_counted

#: Default margin added around each face box before classification, as a fraction of the
#: box size on each side.
DEFAULT_MARGIN = 0.15
#: With ``min_face``, first-pass faces under this share of it start no finer pass: first-pass
#: boxes of small faces are drawn smaller than the finer pass draws them, down to 0.74 of
#: its side (334 faces of the 853 set's validation scenes, 800 px JPEGs; 1% under 0.79).
REFINE_MIN_FACE_SLACK = 0.7
#: Faces whose face score is under this are shown and listed but not counted: counts,
#: shares, alerts and monitoring leave them out (see :class:`Detector`). Per detector;
#: never below the face threshold in use. Chosen on the 853 set's 127 validation scenes:
#: the face score with the smallest per-photo count error among those that miss no more
#: photos with a non-compliant face than counting every box does (0.3: 0.59 faces a photo
#: against 1.29 at 0.2, and photos wrongly holding a non-compliant face 24 -> 15 of 83).
COUNT_THRESHOLDS = {"centerface": 0.3}
#: In a photo file decoded at reduced size (:meth:`Detector.read`), a face whose classifier
#: crop would have a shorter side under this many pixels is cut from a finer decode of the
#: file. On 1,841 real photos of the 7,553 set at least 128 px (mostly one face each),
#: shrunk 2x to 6x first, the bundled classifier's two-class answers agreed with those on
#: the photos as they are for 99.6-100% of those 48 px or more after shrinking (accuracy
#: within noise), and for 99.3-99.4% of those under 48 px, whose accuracy fell by 0.003
#: to 0.006 (``scripts/reduced_crops.py``).
CROP_MIN_SIDE = 48
#: :meth:`Detector.read` keeps at least this many times the pixels of the face detector's
#: finest pass. On the 126 held-out 853 scenes enlarged to 4032 x 3024 JPEGs
#: (``maskwatch bench --sections phone_size``), reading them with just the pass's pixels
#: (at 1/4) found 0.915 of the faces against 0.922 read whole, mAP@0.5 0.849 vs 0.854;
#: with twice (at 1/2) as many as whole, mAP@0.5 0.856.
READ_PIXELS = 2.0


def counted(faces):
    """The faces that count (see :func:`maskwatch.labels.is_counted`)."""
    return [f for f in faces if is_counted(f)]


@dataclass
class Face:
    """One detected face: box ``[x1, y1, x2, y2]`` in original pixels and its mask label."""

    box: list[int]
    face_score: float
    label: str | None = None
    score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    track_id: int | None = None
    #: False for a face scored under the detector's count threshold: shown and listed,
    #: left out of counts, shares, alerts and monitoring.
    counted: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: box, label, score, face_score, scores, counted (and track_id if
        tracked)."""
        out: dict[str, Any] = {
            "box": [int(v) for v in self.box],
            "label": self.label,
            "score": None if self.score is None else round(float(self.score), 4),
            "face_score": round(float(self.face_score), 4),
            "scores": {k: round(float(v), 4) for k, v in self.scores.items()},
            "counted": bool(self.counted),
        }
        if self.track_id is not None:
            out["track_id"] = int(self.track_id)
        return out


def refine_min_side(min_face: int, box_map=None) -> float:
    """The smallest first-pass face (detector pixels) that may start a finer pass when the
    output drops faces under ``min_face`` (after the site's ``box_map``, which can grow a
    box by up to its larger scale): faces that small need no finer look, and the finer
    pass need not be finer than it takes to see them (``FaceDetector.detect``'s
    ``min_side``)."""
    if min_face <= 0:
        return 0.0
    grow = max(float(box_map[0]), float(box_map[1]), 1.0) if box_map else 1.0
    return REFINE_MIN_FACE_SLACK * min_face / grow


def scaled_box(box, sx: float, sy: float) -> list[int]:
    """``box`` (x1, y1, x2, y2, ...) multiplied by (sx, sy), rounded outwards."""
    x1, y1, x2, y2 = box[:4]
    return [int(np.floor(x1 * sx)), int(np.floor(y1 * sy)),
            int(np.ceil(x2 * sx)), int(np.ceil(y2 * sy))]


def scaled_faces(faces, sx: float, sy: float) -> list[Face]:
    """Copies of ``faces`` with boxes multiplied by (sx, sy), rounded outwards: e.g. from a
    file's pixels to those of the reduced array it was decoded to (1 / its scale)."""
    return [replace(f, box=scaled_box(f.box, sx, sy)) for f in faces]


def site_boxes(boxes, box_map, width: int, height: int) -> np.ndarray:
    """Detector boxes (N x 4) mapped by a site's ``box_map`` (see ``SiteParams``), rounded
    and clipped to the image; never empty."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = (np.round(v) for v in calibrate_box(b.T, box_map))
    x1, y1 = np.clip(x1, 0, width - 1), np.clip(y1, 0, height - 1)
    x2, y2 = np.clip(x2, x1 + 1, width), np.clip(y2, y1 + 1, height)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.int64)


#: Decodes a photo again, shrunk by at most the reduction given: (array, (sx, sy)).
Reread = Callable[[float], tuple[np.ndarray, tuple[float, float]]]


class BGRWarning(UserWarning):
    """The image passed to Detector.detect looks like OpenCV's BGR, not RGB."""


#: How much bluer than red (mean, 0-255) the skin of most faces must be to call an array BGR.
BGR_MARGIN = 8.0


def looks_bgr(rgb: np.ndarray, boxes) -> bool:
    """Whether the faces in ``boxes`` suggest ``rgb`` holds BGR (OpenCV's order).

    Skin of every tone, under ordinary light, has more red than blue. The test looks at
    each face's forehead and eye band (x 25-75%, y 15-45% of the box: above any mask):
    when more than half of the faces are bluer than red by ``BGR_MARGIN`` there, the
    channels are almost surely swapped. With no face it says False.
    """
    votes = []
    for box in boxes:
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        w, h = x2 - x1, y2 - y1
        band = rgb[int(max(0, y1 + 0.15 * h)):int(max(0, y1 + 0.45 * h)) + 1,
                   int(max(0, x1 + 0.25 * w)):int(max(0, x1 + 0.75 * w)) + 1]
        if band.size:
            r, b = float(band[..., 0].mean()), float(band[..., 2].mean())
            votes.append(b - r > BGR_MARGIN)
    return bool(votes) and sum(votes) > len(votes) / 2


def _load_classifier(classifier, threads: int, threshold: float | None = None):
    if classifier is False:
        return None
    if classifier is None or isinstance(classifier, (str, Path)):
        from maskwatch.inference.classifier import Classifier

        return Classifier(classifier, threads=threads, threshold=threshold)
    if not hasattr(classifier, "classify"):
        raise MaskwatchError(f"classifier must be a path or a Classifier, got {classifier!r}")
    return classifier


class Detector:
    """Finds faces and tells whether each wears a mask.

    ``face_detector``: "centerface"/"accurate" (default) or "yunet"/"fast", or a FaceDetector.
    ``classifier``: None for the bundled model, a model path, a Classifier-like object (with
    ``classify(faces)``), or False to only detect faces (labels are then None).
    ``site``: site parameters (box mapping, smallest face, face threshold; see
    ``maskwatch calibrate``); None takes them from the classifier's metadata, False
    ignores them and reports the detector's own boxes (without ``DEFAULT_BOX_MAPS``, as
    ``calibrate`` fits from them). They apply only to the detector they were fitted for; an
    explicit ``face_threshold`` or ``min_face`` overrides them.
    ``count_threshold``: faces under this face score are returned with ``counted=False``
    (default: ``COUNT_THRESHOLDS`` for the detector; never below the face threshold). The
    low default face threshold finds more faces, as mAP rewards, but most boxes just
    above it are not faces, and the bundled classifier calls most of those unmasked.
    """

    #: see READ_PIXELS (``maskwatch bench`` also tries 1)
    read_pixels: float = READ_PIXELS

    def __init__(
        self,
        face_detector: Any = DEFAULT_DETECTOR,
        classifier: Any = None,
        threads: int = 0,
        face_threshold: float | None = None,
        margin: float = DEFAULT_MARGIN,
        detect_size: int | None = None,
        min_face: int | None = None,
        upscale: bool = False,
        threshold: float | None = None,
        site: SiteParams | bool | None = None,
        refine_size: int | None = None,
        count_threshold: float | None = None,
    ):
        if not 0.0 <= margin <= 1.0:
            raise MaskwatchError(f"margin must be in [0, 1], got {margin}")
        def faces() -> FaceDetector:
            return make_face_detector(
                face_detector, threshold=face_threshold, detect_size=detect_size,
                threads=threads, upscale=upscale, refine_size=refine_size,
            )

        if classifier is None or isinstance(classifier, (str, Path)):
            # both ONNX Runtime sessions build at once (building releases the GIL)
            with ThreadPoolExecutor(1, thread_name_prefix="maskwatch-load") as pool:
                loading = pool.submit(_load_classifier, classifier, threads, threshold)
                self.face_detector = faces()
                self.classifier = loading.result()
        else:
            self.face_detector = faces()
            self.classifier = _load_classifier(classifier, threads, threshold)
        raw_boxes = site is False
        if site is None:
            site = getattr(getattr(self.classifier, "info", None), "site", None)
        #: a site model's settings fitted for another face detector: not applied (say so)
        self.unused_site: SiteParams | None = None
        if isinstance(site, SiteParams) and site.detector != self.face_detector.name:
            self.unused_site = site
        if not isinstance(site, SiteParams) or site.detector != self.face_detector.name:
            site = None
        self.site: SiteParams | None = site
        if site is not None and face_threshold is None and site.face_threshold is not None:
            self.face_detector.threshold = site.face_threshold
        if site is not None:
            self.box_map: tuple | None = tuple(site.box_map)
        elif raw_boxes:
            self.box_map = None
        else:
            self.box_map = DEFAULT_BOX_MAPS.get(self.face_detector.name)
        if min_face is None:
            min_face = site.min_face if site is not None else 0
        self.margin = float(margin)
        self.min_face = int(min_face)
        self.refine_min_side = refine_min_side(self.min_face, self.box_map)
        if count_threshold is not None and not 0.0 <= count_threshold <= 1.0:
            raise MaskwatchError(f"--count-threshold must be in [0, 1], got {count_threshold}")
        self._count_threshold = count_threshold

    def unused_site_warning(self, model) -> str | None:
        """A line for the user when ``model`` (the path given) is a site model whose
        settings are not applied: they were fitted for another face detector."""
        site = self.unused_site
        if site is None:
            return None
        return (f"warning: {model}: its site settings were fitted for the {site.detector} "
                f"detector, so they are not applied with {self.face_detector.name}")

    @property
    def count_threshold(self) -> float:
        """The face score from which faces count (never below the face threshold)."""
        wanted = self._count_threshold
        if wanted is None:
            wanted = COUNT_THRESHOLDS.get(getattr(self.face_detector, "name", ""), 0.0)
        return max(float(wanted), float(getattr(self.face_detector, "threshold", 0.0)))

    @property
    def threshold(self) -> float | None:
        """The classifier's without_mask decision threshold (None without a classifier)."""
        return None if self.classifier is None else float(self.classifier.threshold)

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes) if self.classifier is not None else []

    def read(self, path: str | Path, copy_side: int | None = None
             ) -> tuple[np.ndarray, tuple[float, float]]:
        """Decode a photo file no larger than detection needs: a JPEG at the smallest DCT
        scale (1/2, 1/4, 1/8) that still holds ``READ_PIXELS`` times the pixels the face
        detector's finest pass sees, so a 12 MP photo decodes at 1/2 size, 48 MP at 1/4.
        ``copy_side``: the long side must stay at least this (for an annotated copy); 0:
        full size. Other formats decode at full size. Returns the array and the (sx, sy)
        factors to the file's pixels; pass both to :meth:`detect` (``scale``,
        ``source``)."""
        return load_rgb_reduced(path, self.reduction(copy_side))

    def reduction(self, copy_side: int | None = None) -> Callable[[int, int], float]:
        """How far :meth:`read` may shrink a (width, height) photo: as far as keeps
        ``READ_PIXELS`` times the pixels of the face detector's finest pass (and a long
        side of ``copy_side``; 0: not at all)."""
        need = self.read_pixels * float(getattr(self.face_detector, "pass_pixels", 0) or 0)

        def reduction(w: int, h: int) -> float:
            if need <= 0:
                return 1.0
            k = min((w * h / need) ** 0.5, w, h)  # a 1 px strip stays 1 px
            return k if copy_side is None else min(k, copy_factor(w, h, copy_side))

        return reduction

    def detect(self, image, *, check_bgr: bool | None = None,
               scale: tuple[float, float] = (1.0, 1.0),
               source: str | Path | Reread | None = None) -> list[Face]:
        """Detect and classify all faces in one image (one classifier batch).

        ``image``: a file path, a Pillow image or an HxWx3 uint8 RGB array. An array whose
        faces look blue rather than red is probably BGR (``cv2.imread``'s order): it gets
        a BGRWarning; convert with ``rgb = bgr[..., ::-1]``. ``check_bgr=False`` skips that
        check, for arrays maskwatch decoded itself (they are RGB). Faces are cropped for the
        classifier from the detector's own boxes; the site's box mapping only changes the
        boxes reported. ``scale``: ``image`` is a photo shrunk by these factors (from
        :meth:`read`): boxes, ``min_face`` and the site's sizes are in the photo's own
        pixels; ``source``: that photo's file, decoded again finer for faces whose crops
        would be under ``CROP_MIN_SIDE`` pixels in ``image`` (or a function doing so: it
        takes the largest reduction wanted and returns what :meth:`read` does). A file
        path is read with :meth:`read` and is its own ``source``; an image that is still
        bigger than detection needs (as :meth:`read` judges: an array, a PNG) is shrunk by
        2, 4 or 8 first and is its own ``source`` (a 4K video frame is detected at 1920 x
        1080)."""
        if check_bgr is None:
            check_bgr = isinstance(image, np.ndarray)
        if isinstance(image, (str, Path)) and source is None:
            source = image
            image, scale = self.read(image)
        rgb = as_rgb(image)
        if tuple(scale) == (1.0, 1.0):  # as given, or a format read whole: maybe too big
            rgb, scale, whole = self._shrunk(rgb)
            source = whole or source
        sx, sy = (float(v) for v in scale)
        reduced = (sx, sy) != (1.0, 1.0)
        min_side = self.refine_min_side / min(sx, sy)
        found = (self.face_detector.detect(rgb, min_side=min_side)
                 if min_side else self.face_detector.detect(rgb))
        width, height = rgb.shape[1], rgb.shape[0]
        if reduced:
            width, height = round(width * sx), round(height * sy)
            boxes = [scaled_box(b, sx, sy) for b in found]
            boxes = [[x1, y1, min(width, x2), min(height, y2)] for x1, y1, x2, y2 in boxes]
        else:
            boxes = [[int(v) for v in b[:4]] for b in found]
        if self.box_map is not None and boxes:
            boxes = site_boxes(boxes, self.box_map, width, height).tolist()
        keep = [i for i, b in enumerate(boxes) if min(b[2] - b[0], b[3] - b[1]) >= self.min_face]
        found = [found[i] for i in keep]
        if check_bgr and looks_bgr(rgb, found):
            warnings.warn(
                "maskwatch: the faces in this array look blue, so it is probably BGR "
                "(OpenCV's order); mask labels on BGR images are unreliable. Pass RGB: "
                "rgb = bgr[..., ::-1], or pass the file path.",
                BGRWarning, stacklevel=2,
            )
        least = self.count_threshold
        faces = [Face(box=boxes[i], face_score=float(b[4]), counted=float(b[4]) >= least)
                 for i, b in zip(keep, found)]
        if faces and self.classifier is not None:
            crops = [crop(rgb, b, self.margin) for b in found]
            if reduced and source is not None:
                self._recrop_small(crops, found, source, (sx, sy))
            for face, pred in zip(faces, self.classifier.classify(crops)):
                face.label = pred.label
                face.score = float(pred.score)
                face.scores = {k: float(v) for k, v in pred.scores.items()}
        return faces

    __call__ = detect

    def _shrunk(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[float, float], Any]:
        """``rgb`` shrunk by the whole factor (2, 4, 8) :meth:`reduction` allows (area
        averaging), its scale, and a source giving back the full array; or ``rgb`` itself,
        (1, 1) and None."""
        h, w = rgb.shape[:2]
        k = dct_denominator(self.reduction()(w, h))
        if k == 1:
            return rgb, (1.0, 1.0), None
        import cv2

        small = cv2.resize(rgb, (w // k, h // k), interpolation=cv2.INTER_AREA)
        return small, (w / small.shape[1], h / small.shape[0]), lambda wanted: (rgb, (1.0, 1.0))

    def _recrop_small(self, crops: list, found: list, source, scale: tuple[float, float]
                      ) -> None:
        """Replace the crops under ``CROP_MIN_SIDE`` pixels (cut from a photo shrunk by
        ``scale``, at ``found``) by crops from ``source`` decoded just fine enough for
        them all (or at full size); left as they are if it cannot be read again."""
        small = [i for i, c in enumerate(crops) if min(c.shape[:2]) < CROP_MIN_SIDE]
        if not small:
            return
        sx, sy = scale
        wanted = min(min(sx, sy) * min(crops[i].shape[:2]) / CROP_MIN_SIDE for i in small)
        if dct_denominator(wanted) >= min(sx, sy):
            return  # no finer JPEG scale helps
        try:
            fine, (fx, fy) = (source(wanted) if callable(source)
                              else load_rgb_reduced(source, lambda w, h: wanted))
        except MaskwatchError:
            return
        for i in small:
            x1, y1, x2, y2 = found[i][:4]
            crops[i] = crop(fine, (x1 * sx / fx, y1 * sy / fy, x2 * sx / fx, y2 * sy / fy),
                            self.margin)


def detect_decoded(detector, rgb: np.ndarray) -> list:
    """``detector.detect`` on an array maskwatch decoded itself: RGB, so a
    :class:`Detector` skips its BGR check; any other object with ``detect(rgb)`` (a
    stand-in, a user's own detector) is called plainly."""
    if isinstance(detector, Detector):
        return detector.detect(rgb, check_bgr=False)
    return detector.detect(rgb)
