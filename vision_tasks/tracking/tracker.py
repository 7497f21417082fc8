"""Multi-object tracker: Kalman motion, ByteTrack's two-stage association, appearance fused in.

Per frame (:meth:`Tracker.update`):

1. Every track's Kalman state is predicted one frame ahead (:mod:`.kalman`).
2. Detections split at ``high_threshold``: high-score boxes, and low-score ones down to
   ``low_threshold`` (ByteTrack, Zhang et al. 2022: an occluded object's box scores low, yet
   still says where it is).
3. Stage one: confirmed and lost tracks against the high boxes. The cost is ``1 - IoU`` with
   the predicted box or, with embeddings, ``(1 - w) (1 - IoU) + w d_app`` where ``d_app`` is the
   cosine distance between the track's embedding (an exponential moving average over its
   matches, as JDE / BoT-SORT keep it) and the box's, clipped to [0, 1]. A pair is admissible
   only where IoU alone would admit it (``1 - IoU <= match_threshold``): appearance re-ranks the
   spatially plausible pairs, it never links boxes far apart, so a poor embedding costs less
   than it would as a gate of its own (BoT-SORT's reason for its IoU proximity gate).
4. Stage two: the tracks left over that were matched in the previous frame, against the low
   boxes, by IoU only (an occluded box's embedding is unreliable), ``1 - IoU <= 0.5``.
5. Tentative tracks (born, not yet ``min_hits`` matches) against the high boxes still free;
   a tentative track that misses a frame is dropped (SORT / DeepSORT).
6. Lifecycle: a track is lost when unmatched and deleted after ``max_age`` frames unmatched;
   high boxes nobody took, scoring at least ``new_track_threshold``, start tentative tracks.

Every assignment is ``scipy.optimize.linear_sum_assignment`` on the cost matrix. A track gets
its identity (1, 2, ... in order of confirmation) when confirmed; tracks existing in the first
``min_hits`` frames are confirmed at once, so objects present from the start are reported from
frame 1. The box reported for a track is the detection it matched (the Kalman state only
predicts where to look), with that detection's score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from vision_tasks.tracking import kalman

INFEASIBLE = 1e6


@dataclass
class Detections:
    """One frame's boxes.

    Attributes:
        boxes_xyxy: (K, 4) corners in original image pixels.
        scores: (K,) confidences in [0, 1].
        classes: (K,) integer category ids (0 where unknown).
        embeddings: (K, D) unit-norm appearance vectors, or None. Rows of boxes scoring below
            the tracker's ``high_threshold`` are never read (they may be left zero).
    """

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    classes: np.ndarray | None = None
    embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes_xyxy = np.asarray(self.boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        count = len(self.boxes_xyxy)
        if self.classes is None:
            self.classes = np.zeros(count, dtype=np.int64)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if self.embeddings is not None:
            self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
            if self.embeddings.ndim != 2 or len(self.embeddings) != count:
                raise ValueError(f"{count} boxes but embeddings of shape {self.embeddings.shape}")
        if len(self.scores) != count or len(self.classes) != count:
            raise ValueError(
                f"{count} boxes but {len(self.scores)} scores and {len(self.classes)} classes"
            )

    def __len__(self) -> int:
        return len(self.boxes_xyxy)

    def subset(self, index: np.ndarray) -> Detections:
        """The detections at ``index`` (an integer or boolean array)."""
        return Detections(
            self.boxes_xyxy[index],
            self.scores[index],
            self.classes[index],
            None if self.embeddings is None else self.embeddings[index],
        )


@dataclass
class TrackedBox:
    """One reported track in one frame: identity, xyxy box (original pixels), score, class."""

    track_id: int
    box_xyxy: np.ndarray
    score: float
    category: int


@dataclass
class Track:
    """A track's Kalman state, appearance and lifecycle counters."""

    mean: np.ndarray  # (8,)
    covariance: np.ndarray  # (8, 8)
    box_xyxy: np.ndarray  # the last matched detection
    score: float
    category: int
    embedding: np.ndarray | None
    hits: int = 1
    misses: int = 0  # frames since the last match
    confirmed: bool = False
    track_id: int = 0  # given at confirmation
    predicted_xyxy: np.ndarray | None = None  # (4,) corners of this frame's prediction


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (N, M) of (N, 4) and (M, 4) xyxy boxes (0 where a union is empty)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def cosine_distance(tracks: np.ndarray, detections: np.ndarray) -> np.ndarray:
    """(N, M) ``1 - cos`` clipped to [0, 1] between unit-norm (N, D) and (M, D) embeddings."""
    return np.clip(1.0 - tracks @ detections.T, 0.0, 1.0)


def assign(cost: np.ndarray, threshold: float) -> tuple[list[tuple[int, int]], list, list]:
    """Minimum-cost matching keeping pairs with ``cost <= threshold``.

    Returns:
        ``(matches, unmatched_rows, unmatched_columns)``; matches as (row, column) pairs.
    """
    rows, cols = cost.shape
    if rows == 0 or cols == 0:
        return [], list(range(rows)), list(range(cols))
    # Pairs over the threshold are made infeasible before solving, not only dropped after: a
    # solver free to use them could trade an admissible pair for two it would then drop.
    gated = np.where(cost <= threshold, cost, INFEASIBLE)
    matched_rows, matched_cols = linear_sum_assignment(gated)
    matches = [
        (int(r), int(c)) for r, c in zip(matched_rows, matched_cols) if gated[r, c] < INFEASIBLE
    ]
    used_rows, used_cols = {r for r, _ in matches}, {c for _, c in matches}
    return (
        matches,
        [r for r in range(rows) if r not in used_rows],
        [c for c in range(cols) if c not in used_cols],
    )


class Tracker:
    """ByteTrack-style tracker with Kalman motion and optional appearance (module docstring).

    Args:
        high_threshold: boxes scoring at least this enter stage one (and may start tracks).
        low_threshold: boxes between this and ``high_threshold`` enter stage two only.
        new_track_threshold: a free high box starts a track if it scores at least this.
        match_threshold: largest ``1 - IoU`` admitted in stages one and three (0.8: IoU 0.2).
        low_match_threshold: largest ``1 - IoU`` admitted in stage two.
        appearance_weight: ``w``, the appearance distance's share of the fused cost; 0 ignores
            embeddings.
        embedding_momentum: a track's embedding becomes ``m e + (1 - m) e_new`` on each match.
        min_hits: matches that confirm a track (its identity is then given).
        max_age: frames a lost track is kept for a match before it is deleted.
    """

    def __init__(
        self,
        high_threshold: float = 0.5,
        low_threshold: float = 0.1,
        new_track_threshold: float = 0.6,
        match_threshold: float = 0.8,
        low_match_threshold: float = 0.5,
        appearance_weight: float = 0.5,
        embedding_momentum: float = 0.9,
        min_hits: int = 2,
        max_age: int = 30,
    ) -> None:
        if not 0 <= low_threshold <= high_threshold:
            raise ValueError(
                f"need 0 <= low_threshold <= high_threshold, got {low_threshold}, {high_threshold}"
            )
        if min_hits < 1 or max_age < 0:
            raise ValueError(f"need min_hits >= 1 and max_age >= 0, got {min_hits}, {max_age}")
        self.high_threshold, self.low_threshold = high_threshold, low_threshold
        self.new_track_threshold = new_track_threshold
        self.match_threshold, self.low_match_threshold = match_threshold, low_match_threshold
        self.appearance_weight = appearance_weight
        self.embedding_momentum = embedding_momentum
        self.min_hits, self.max_age = min_hits, max_age
        self.tracks: list[Track] = []
        self.frame = 0
        self.next_id = 1

    def update(self, detections: Detections) -> list[TrackedBox]:
        """Advance one frame; the confirmed tracks matched in it."""
        self.frame += 1
        self._predict()
        scores = detections.scores
        high = detections.subset(scores >= self.high_threshold)
        low = detections.subset((scores >= self.low_threshold) & (scores < self.high_threshold))
        established = [t for t in self.tracks if t.confirmed]
        tentative = [t for t in self.tracks if not t.confirmed]
        matches, free_tracks, free_high = assign(
            self._cost(established, high), self.match_threshold
        )
        self._match(established, high, matches, appearance=True)
        # Stage two: only tracks matched last frame; a lost track's prediction has drifted.
        recent = [established[r] for r in free_tracks if established[r].misses == 1]
        low_matches, _, _ = assign(self._iou_cost(recent, low), self.low_match_threshold)
        self._match(recent, low, low_matches, appearance=False)
        high = high.subset(np.asarray(free_high, dtype=np.int64))
        matches, _, free_high = assign(self._cost(tentative, high), self.match_threshold)
        self._match(tentative, high, matches, appearance=True)
        self._start_tracks(high.subset(np.asarray(free_high, dtype=np.int64)))
        self._prune()
        return [
            TrackedBox(t.track_id, t.box_xyxy.copy(), t.score, t.category)
            for t in self.tracks
            if t.confirmed and t.misses == 0
        ]

    # ---- steps ------------------------------------------------------------------------------
    def _predict(self) -> None:
        if not self.tracks:
            return
        mean = np.stack([t.mean for t in self.tracks])
        covariance = np.stack([t.covariance for t in self.tracks])
        lost = np.array([t.misses > 0 for t in self.tracks])
        mean[lost, 7] = 0.0  # a lost track keeps its size (ByteTrack): no height drift unseen
        mean, covariance = kalman.predict(mean, covariance)
        predicted = kalman.xyah_to_xyxy(mean[:, :4])
        for track, m, p, box in zip(self.tracks, mean, covariance, predicted):
            track.mean, track.covariance, track.predicted_xyxy = m, p, box
            track.misses += 1  # reset by a match below

    def _iou_cost(self, tracks: list[Track], detections: Detections) -> np.ndarray:
        if not tracks or not len(detections):
            return np.zeros((len(tracks), len(detections)))
        predicted = np.stack([t.predicted_xyxy for t in tracks])
        return 1.0 - box_iou(predicted, detections.boxes_xyxy)

    def _cost(self, tracks: list[Track], detections: Detections) -> np.ndarray:
        """IoU cost, fused with the appearance distance where both sides have embeddings."""
        cost = self._iou_cost(tracks, detections)
        weight = self.appearance_weight
        if weight <= 0 or detections.embeddings is None or cost.size == 0:
            return cost
        have = np.array([t.embedding is not None for t in tracks])
        if not have.any():
            return cost
        embeddings = np.stack([t.embedding for t in tracks if t.embedding is not None])
        fused = cost.copy()
        distance = cosine_distance(embeddings, detections.embeddings)
        fused[have] = (1 - weight) * cost[have] + weight * distance
        # Appearance re-ranks admissible pairs only (see the module docstring).
        return np.where(cost <= self.match_threshold, fused, INFEASIBLE)

    def _match(
        self,
        tracks: list[Track],
        detections: Detections,
        pairs: list[tuple[int, int]],
        appearance: bool,
    ) -> None:
        """Correct the matched tracks with their detections, all in one batched Kalman update."""
        if not pairs:
            return
        matched = [tracks[r] for r, _ in pairs]
        rows = np.array([c for _, c in pairs])
        boxes = detections.boxes_xyxy[rows]
        mean, covariance = kalman.update(
            np.stack([t.mean for t in matched]),
            np.stack([t.covariance for t in matched]),
            kalman.xyxy_to_xyah(boxes),
        )
        looks = None
        if appearance and detections.embeddings is not None:
            looks = detections.embeddings[rows].astype(np.float64)
        for k, track in enumerate(matched):
            track.mean, track.covariance = mean[k], covariance[k]
            track.box_xyxy, track.score = boxes[k], float(detections.scores[rows[k]])
            track.category = int(detections.classes[rows[k]])
            track.hits += 1
            track.misses = 0
            if looks is not None:
                track.embedding = self._blend(track.embedding, looks[k])
            if not track.confirmed and track.hits >= self.min_hits:
                self._confirm(track)

    def _blend(self, embedding: np.ndarray | None, new: np.ndarray) -> np.ndarray:
        """The exponential moving average of a track's embeddings, kept unit-norm."""
        if embedding is None:
            return new
        blended = self.embedding_momentum * embedding + (1 - self.embedding_momentum) * new
        return blended / max(float(np.sqrt(blended @ blended)), 1e-12)

    def _confirm(self, track: Track) -> None:
        track.confirmed, track.track_id = True, self.next_id
        self.next_id += 1

    def _start_tracks(self, detections: Detections) -> None:
        keep = detections.scores >= self.new_track_threshold
        if not keep.any():
            return
        fresh = detections.subset(keep)
        means, covariances = kalman.initiate(kalman.xyxy_to_xyah(fresh.boxes_xyxy))
        for i in range(len(fresh)):
            embedding = None
            if fresh.embeddings is not None:
                embedding = fresh.embeddings[i].astype(np.float64)
            track = Track(
                means[i],
                covariances[i],
                fresh.boxes_xyxy[i].copy(),
                float(fresh.scores[i]),
                int(fresh.classes[i]),
                embedding,
            )
            self.tracks.append(track)
            if self.frame <= self.min_hits or self.min_hits == 1:
                self._confirm(track)

    def _prune(self) -> None:
        """Tentative tracks that missed this frame, and tracks lost too long, are deleted."""
        self.tracks = [
            t for t in self.tracks if t.misses == 0 or (t.confirmed and t.misses <= self.max_age)
        ]
