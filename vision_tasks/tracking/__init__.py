"""Multi-object tracking: detections (+ re-ID embeddings) associated over frames, scored with
TrackEval.

- :mod:`.kalman`: the constant-velocity Kalman filter (SORT / DeepSORT's xyah state).
- :mod:`.tracker`: :class:`Tracker`, ByteTrack's two stages with appearance fused into the cost.
- :mod:`.models`: boxes and embeddings from detect, reid and multitask checkpoints.
- :mod:`.io`: frame sources, MOTChallenge files, the annotated video.
- :mod:`.evaluate`: HOTA / CLEAR / Identity through TrackEval, and the report.
- :mod:`.cli`: ``tools/track.py`` (:func:`~vision_tasks.tracking.cli.track_main`).
- :mod:`.benchmark`: ``tools/benchmark.py --task track``.
"""

from vision_tasks.tracking.tracker import Detections, TrackedBox, Tracker

__all__ = ["Detections", "TrackedBox", "Tracker"]
