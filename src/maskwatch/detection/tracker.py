"""A light IoU tracker: keeps one identity per face across frames and smooths its label."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from maskwatch.boxes import greedy_pairs, iou_matrix
from maskwatch.labels import WITHOUT_MASK, is_counted, sort_classes


@dataclass
class Track:
    """One person followed across frames."""

    track_id: int
    box: list[int]
    scores: dict[str, float] = field(default_factory=dict)  # exponential moving average
    label: str | None = None
    hits: int = 1
    missed: int = 0
    first_frame: int = 0
    last_frame: int = 0
    unmasked_streak: int = 0  # consecutive frames with the smoothed label without_mask
    labels_seen: Counter = field(default_factory=Counter)
    face_score: float = 0.0  # of the last detection
    velocity: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # box change per frame
    counted_hits: int = 0  # detections whose face counted (face score at the count threshold)

    @property
    def counted(self) -> bool:
        """Whether this person counts: at least half of its detections counted."""
        return 2 * self.counted_hits >= self.hits

    def predicted(self, frame: int) -> list[float]:
        """The box expected at ``frame``, moving on at the last measured speed."""
        dt = frame - self.last_frame
        return [b + v * dt for b, v in zip(self.box, self.velocity)]


class IoUTracker:
    """Greedy IoU matching of detections to tracks, with per-track label smoothing.

    ``alpha``: weight of the newest frame in the moving average of class scores.
    ``hysteresis``: another class must beat the current label's smoothed score by this much
    before the label changes, so labels don't flicker between frames.
    ``max_missed``: frames a track survives without a detection (short occlusions).
    ``min_hits``: frames a track needs before it counts as a person in :meth:`counts`;
    it must also count (:attr:`Track.counted`: at least half of its detections were faces
    that counted), and its faces carry that as ``counted``.
    ``threshold``: the model's without_mask decision threshold (None: the most likely
    class). A track turns without_mask when its smoothed P(without_mask) reaches it, as a
    photo's face would, and turns back only below ``threshold - min(hysteresis,
    threshold / 2)``.
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        alpha: float = 0.3,
        hysteresis: float = 0.1,
        max_missed: int = 10,
        min_hits: int = 3,
        threshold: float | None = None,
    ):
        self.iou_threshold = iou_threshold
        self.alpha = alpha
        self.hysteresis = hysteresis
        self.max_missed = max_missed
        self.min_hits = min_hits
        self.threshold = threshold
        self.tracks: dict[int, Track] = {}
        self.finished: list[Track] = []
        self._next_id = 1
        self.frame = -1

    def update(self, faces: list) -> list:
        """Match this frame's faces to tracks; sets ``track_id`` and the smoothed ``label``,
        ``score`` and ``scores`` on each face (in place) and returns the faces."""
        self.frame += 1
        live = list(self.tracks.values())
        matches = greedy_pairs(
            iou_matrix([t.predicted(self.frame) for t in live], [f.box for f in faces]),
            self.iou_threshold)
        used_t = {ti for ti, _ in matches}
        used_f = {fi for _, fi in matches}
        for ti, fi in matches:
            self._observe(live[ti], faces[fi])
        for fi, face in enumerate(faces):
            if fi not in used_f:
                track = Track(self._next_id, list(face.box), first_frame=self.frame)
                self._next_id += 1
                self.tracks[track.track_id] = track
                self._observe(track, face, new=True)
        for ti, track in enumerate(live):
            if ti not in used_t:
                track.missed += 1
                track.unmasked_streak = 0
                if track.missed > self.max_missed:
                    self.finished.append(self.tracks.pop(track.track_id))
        return faces

    def carry(self) -> list:
        """Next frame without detection: the faces of the tracks the last detection saw,
        moved on at their speed, with their smoothed labels. Counts, streaks and misses
        are left as they are (they count detected frames)."""
        from maskwatch.detection.pipeline import Face

        self.frame += 1
        out = []
        for t in self.tracks.values():
            if t.missed:
                continue
            box = [int(round(v)) for v in t.predicted(self.frame)]
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            out.append(Face(box=box, face_score=t.face_score, label=t.label,
                            score=t.scores.get(t.label) if t.label else None,
                            scores=dict(t.scores), track_id=t.track_id, counted=t.counted))
        return out

    def _observe(self, track: Track, face, new: bool = False) -> None:
        if not new and self.frame > track.last_frame:
            dt = self.frame - track.last_frame
            track.velocity = tuple((n - o) / dt for n, o in zip(face.box, track.box))
        track.box = list(face.box)
        track.face_score = float(face.face_score)
        track.last_frame = self.frame
        track.missed = 0
        if not new:
            track.hits += 1
        track.counted_hits += is_counted(face)
        face.track_id = track.track_id
        if hasattr(face, "counted"):
            face.counted = track.counted
        if not face.scores:
            return
        if not track.scores:
            track.scores = dict(face.scores)
        else:
            a = self.alpha
            for k in set(track.scores) | set(face.scores):
                track.scores[k] = (1 - a) * track.scores.get(k, 0.0) + a * face.scores.get(k, 0.0)
        best = self._decide(track.scores)
        if track.label is None or track.label not in track.scores:
            track.label = face.label if face.label in track.scores else best
        elif best != track.label and self._switches(track.scores, track.label, best):
            track.label = best
        track.labels_seen[track.label] += 1
        track.unmasked_streak = track.unmasked_streak + 1 if track.label == WITHOUT_MASK else 0
        face.label = track.label
        face.score = float(track.scores[track.label])
        face.scores = {k: float(v) for k, v in track.scores.items()}

    def _decide(self, scores: dict[str, float]) -> str:
        """The label of smoothed ``scores`` under the decision threshold, if any."""
        if self.threshold is None or WITHOUT_MASK not in scores or len(scores) < 2:
            return max(scores, key=scores.get)
        if scores[WITHOUT_MASK] >= self.threshold:
            return WITHOUT_MASK
        return max((k for k in scores if k != WITHOUT_MASK), key=scores.get)

    def _switches(self, scores: dict[str, float], current: str, best: str) -> bool:
        """Whether a track labelled ``current`` moves to ``best`` (hysteresis)."""
        if self.threshold is None or WITHOUT_MASK not in (current, best):
            return scores[best] - scores[current] > self.hysteresis
        if best == WITHOUT_MASK:  # _decide already saw it reach the threshold
            return True
        band = min(self.hysteresis, self.threshold / 2)
        return scores[WITHOUT_MASK] < self.threshold - band

    def all_tracks(self) -> list[Track]:
        return self.finished + list(self.tracks.values())

    def counts(self, leaving_out: set[int] = frozenset()) -> dict[str, int]:
        """People per class: each track that lived ``min_hits`` frames counts once, under the
        label it carried most often (tracks whose ids are in ``leaving_out`` do not)."""
        per = Counter()
        for t in self.all_tracks():
            if (t.hits >= self.min_hits and t.counted and t.labels_seen
                    and t.track_id not in leaving_out):
                per[t.labels_seen.most_common(1)[0][0]] += 1
        return {k: per[k] for k in sort_classes(per)}

    def people(self) -> int:
        return sum(1 for t in self.all_tracks() if t.hits >= self.min_hits and t.counted)

