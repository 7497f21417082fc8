"""Tracking: Kalman filter, ByteTrack stages, appearance, lifecycle, TrackEval scores, the CLI.

Every expected number is computed by hand in the comments; the CLI runs end to end on short
synthetic videos written here (rectangles moving at known speeds), so ground truth is exact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch

from vision_tasks.tracking import kalman
from vision_tasks.tracking.cli import track_main
from vision_tasks.tracking.evaluate import summary, trackeval_sequence
from vision_tasks.tracking.models import JointModel
from vision_tasks.tracking.tracker import Detections, Tracker, assign

PERSON = [{"id": 1, "name": "person", "supercategory": "person"}]


# ---- Kalman filter ----------------------------------------------------------------------------


def test_kalman_initiate_predict_update_against_hand_computed_values() -> None:
    # Box centre (100, 200), aspect 0.5, height 100. DeepSORT's noise: position std h / 20,
    # velocity std h / 160. Initial std: position 2 * 5 = 10 (var 100), velocity 10 * 0.625 =
    # 6.25 (var 39.0625 = 625/16). Predict: x block [[1, 1], [0, 1]] P F^T + Q with Q position
    # 5^2 = 25, velocity 0.625^2 = 0.390625:
    #   Pxx = 100 + 39.0625 + 25 = 164.0625 (2625/16), Pxv = 39.0625, Pvv = 39.453125.
    mean, cov = kalman.initiate(np.array([[100.0, 200.0, 0.5, 100.0]]))
    assert cov[0, 0, 0] == pytest.approx(100.0) and cov[0, 4, 4] == pytest.approx(39.0625)
    mean, cov = kalman.predict(mean, cov)
    np.testing.assert_allclose(mean[0, :4], [100, 200, 0.5, 100])
    assert cov[0, 0, 0] == pytest.approx(164.0625)
    assert cov[0, 0, 4] == pytest.approx(39.0625)
    assert cov[0, 4, 4] == pytest.approx(39.453125)
    # Update with x = 110, y = 195: R position 5^2 = 25, so S = 189.0625 (3025/16);
    # gain K = [2625, 625] / 3025 = [105/121, 25/121]. x = 100 + 10 * 105/121,
    # vx = 10 * 25/121; y = 200 - 5 * 105/121, vy = -5 * 25/121.
    # Pxx = 2625/16 * 25 / (3025/16) = 2625/121, Pxv = 625/121, Pvv = 39.453125 - 625^2/(16 * 3025).
    mean, cov = kalman.update(mean, cov, np.array([[110.0, 195.0, 0.5, 100.0]]))
    np.testing.assert_allclose(
        mean[0, [0, 1, 4, 5]], [100 + 1050 / 121, 200 - 525 / 121, 250 / 121, -125 / 121]
    )
    assert cov[0, 0, 0] == pytest.approx(2625 / 121)
    assert cov[0, 0, 4] == pytest.approx(625 / 121)
    assert cov[0, 4, 4] == pytest.approx(39.453125 - 625**2 / (16 * 3025))
    # The next prediction moves by the learnt velocity.
    moved, _ = kalman.predict(mean, cov)
    assert moved[0, 0] == pytest.approx(100 + 1050 / 121 + 250 / 121)


def test_box_format_round_trip() -> None:
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), w 20, h 40 -> aspect 0.5
    np.testing.assert_allclose(kalman.xyxy_to_xyah(boxes), [[20, 40, 0.5, 40]])
    np.testing.assert_allclose(kalman.xyah_to_xyxy(kalman.xyxy_to_xyah(boxes)), boxes)


def test_assignment_never_uses_pairs_over_the_threshold() -> None:
    # Unconstrained, the minimum total is (0,1) + (1,0) = 0.6 + 0.3 = 0.9 < 0.5 + 0.5; dropping
    # the 0.6 pair afterwards (over the 0.5 threshold) would leave one match. Gated first, the
    # solver finds the two admissible pairs (0,0) and (1,1).
    cost = np.array([[0.5, 0.6], [0.3, 0.5]])
    matches, rows, cols = assign(cost, 0.5)
    assert matches == [(0, 0), (1, 1)] and rows == [] and cols == []
    matches, rows, cols = assign(cost, 0.4)  # only (1, 0) is admissible now
    assert matches == [(1, 0)] and rows == [0] and cols == [1]


# ---- tracker --------------------------------------------------------------------------------


def _ids_by_detection(tracks, boxes: np.ndarray) -> dict[int, int]:
    """Detection row -> track id: the reported box is the detection it matched."""
    out = {}
    for track in tracks:
        row = int(np.flatnonzero(np.all(np.isclose(boxes, track.box_xyxy), axis=1))[0])
        out[row] = track.track_id
    return out


def _run(tracker: Tracker, frames: list[tuple[np.ndarray, list[float]]], embeddings=None):
    history = []
    for boxes, scores in frames:
        tracks = tracker.update(Detections(boxes, scores, embeddings=embeddings))
        history.append(_ids_by_detection(tracks, boxes))
    return history


def test_second_stage_low_score_box_keeps_the_track_alive() -> None:
    # One box moving 5 px a frame; frames 6-12 score 0.3 (occluded: under the 0.5 high
    # threshold, over the 0.1 low one), then 0.9 again.
    frames = [
        (np.array([[10.0 + 5 * t, 20, 50 + 5 * t, 100]]), [0.3 if 5 <= t <= 11 else 0.9])
        for t in range(16)
    ]
    byte = _run(Tracker(min_hits=2, max_age=3), frames)
    assert [h.get(0) for h in byte] == [1] * 16  # one identity, reported in every frame
    # Without the second stage (no low band) the track is lost at frame 6, deleted after 3
    # misses, and the box of frame 13 starts a new track, confirmed (id 2) at frame 14.
    single = _run(Tracker(low_threshold=0.5, high_threshold=0.5, min_hits=2, max_age=3), frames)
    assert [h.get(0) for h in single] == [1] * 5 + [None] * 8 + [2] * 3


def _meet_and_turn_back(steps: int = 12, speed: float = 8.0) -> list[np.ndarray]:
    """A moves right, B left; they overlap at frame ``steps // 2`` and both turn back."""
    frames = []
    for t in range(steps):
        k = t if t <= steps // 2 else steps - t
        xa, xb = 100 + speed * k, 100 + speed * (steps - k)
        frames.append(np.array([[xa, 50, xa + 40, 130], [xb, 60, xb + 40, 140]]))
    return frames


def test_identity_kept_through_a_crossing_with_appearance() -> None:
    frames = [(boxes, [0.9, 0.9]) for boxes in _meet_and_turn_back()]
    looks = np.eye(2, dtype=np.float32)  # A and B look nothing alike (cosine 0)
    with_looks = _run(Tracker(appearance_weight=0.5), frames, looks)
    assert all(h == {0: 1, 1: 2} for h in with_looks)
    # Motion alone follows each box's momentum past the turn: the identities swap.
    motion_only = _run(Tracker(appearance_weight=0.0), frames, looks)
    assert motion_only[0] == {0: 1, 1: 2} and motion_only[-1] == {0: 2, 1: 1}


def test_birth_after_min_hits_and_death_after_max_age() -> None:
    a = np.array([[10.0, 10, 50, 90]])  # static; frames 4-7 and 11-14 (a 3-frame gap)
    b = np.array([[200.0, 10, 240, 90]])  # static; frames 1-3 and 8-10 (a 4-frame gap)
    frames = []
    for frame in range(1, 15):
        boxes = [
            x
            for x, on in ((a, 4 <= frame <= 7 or frame >= 11), (b, frame <= 3 or 8 <= frame <= 10))
            if on
        ]
        frames.append((np.concatenate(boxes) if boxes else np.zeros((0, 4)), [0.9] * len(boxes)))
    tracker = Tracker(min_hits=2, max_age=3)
    reported = {}
    for frame, (boxes, scores) in enumerate(frames, 1):
        for track in tracker.update(Detections(boxes, scores)):
            reported.setdefault(track.track_id, []).append(frame)
    # B is confirmed at once (frame 1 <= min_hits) as id 1; after 4 misses it is gone, so its
    # return at frame 8 is a new track, confirmed at its second hit (frame 9) as id 3. A appears
    # at frame 4, is confirmed at frame 5 (id 2) and survives its 3-frame gap (= max_age).
    assert reported == {1: [1, 2, 3], 2: [5, 6, 7, 11, 12, 13, 14], 3: [9, 10]}


def test_thirty_objects_keep_their_identities_for_a_hundred_frames() -> None:
    from vision_tasks.tracking.benchmark import synthetic_scene

    tracker = Tracker()
    seen: dict[int, set[int]] = {}
    for detections, truth in synthetic_scene(objects=30, frames=100, seed=0):
        boxes = detections.boxes_xyxy
        for row, track_id in _ids_by_detection(tracker.update(detections), boxes).items():
            seen.setdefault(int(truth[row]), set()).add(track_id)
    assert len(seen) == 30 and all(len(ids) == 1 for ids in seen.values())


# ---- TrackEval ------------------------------------------------------------------------------


def _mot15(path: Path, rows: list[tuple]) -> Path:
    """MOT15 lines: frame, id, x, y, w, h, conf, world x/y/z (-1)."""
    path.write_text("".join(f"{','.join(map(str, r))},1,-1,-1,-1\n" for r in rows))
    return path


def _result(path: Path, rows: list[tuple]) -> Path:
    path.write_text("".join(f"{','.join(map(str, r))},0.9,-1,-1,-1\n" for r in rows))
    return path


A, B, FAR = (10, 10, 20, 40), (100, 10, 20, 40), (200, 100, 20, 40)


def test_trackeval_scores_a_hand_made_sequence(tmp_path: Path) -> None:
    # Four frames, gt 1 on A and gt 2 on B throughout. Tracker: t1 on A in every frame; t2 on
    # B in frames 1-2, t3 on B in frame 3 (an identity switch), nothing on B in frame 4 (a miss)
    # and t4 on an empty spot in frame 4 (a false positive). Boxes are exact (IoU 1).
    gt = _mot15(
        tmp_path / "gt.txt", [(f, i, *box) for f in range(1, 5) for i, box in ((1, A), (2, B))]
    )
    tracked = [(f, 1, *A) for f in range(1, 5)] + [(1, 2, *B), (2, 2, *B), (3, 3, *B), (4, 4, *FAR)]
    numbers = summary(trackeval_sequence(_result(tmp_path / "r.txt", tracked), gt))
    # CLEAR: 8 gt boxes, TP 7, FN 1, FP 1, IDSW 1 -> MOTA = 1 - (1 + 1 + 1) / 8 = 0.625.
    assert (numbers["CLR_TP"], numbers["CLR_FN"], numbers["CLR_FP"], numbers["IDSW"]) == (
        7,
        1,
        1,
        1,
    )
    assert numbers["MOTA"] == pytest.approx(0.625)
    # Identity: best one-to-one pairing g1-t1 (4 frames), g2-t2 (2): IDTP 6, IDFN 8 - 6 = 2,
    # IDFP 8 - 6 = 2 -> IDF1 = 2 * 6 / (2 * 6 + 2 + 2) = 0.75.
    assert numbers["IDF1"] == pytest.approx(0.75)
    # HOTA (IoU 1: the same at every threshold): DetA = 7 / (7 + 1 + 1) = 7/9. AssA averages
    # over the 7 TPs the Jaccard of their (gt, track) pair: (g1,t1) 4/(4+4-4) = 1 (4 TPs),
    # (g2,t2) 2/(4+2-2) = 0.5 (2 TPs), (g2,t3) 1/(4+1-1) = 0.25 (1 TP): 5.25 / 7 = 0.75.
    # HOTA = sqrt(7/9 * 0.75) = sqrt(7/12).
    assert numbers["DetA"] == pytest.approx(7 / 9)
    assert numbers["AssA"] == pytest.approx(0.75)
    assert numbers["HOTA"] == pytest.approx((7 / 12) ** 0.5)


def test_trackeval_perfect_tracks_and_a_loose_box(tmp_path: Path) -> None:
    # Perfect: the same boxes under other track ids score 1 everywhere.
    gt = _mot15(tmp_path / "gt.txt", [(f, i, *box) for f in (1, 2) for i, box in ((1, A), (2, B))])
    perfect = _result(
        tmp_path / "p.txt", [(f, i, *box) for f in (1, 2) for i, box in ((7, A), (9, B))]
    )
    numbers = summary(trackeval_sequence(perfect, gt))
    assert [numbers[k] for k in ("HOTA", "MOTA", "IDF1", "IDSW")] == [1.0, 1.0, 1.0, 0.0]
    # One frame, a 10x10 gt box and a 10x6.8 one inside it: IoU 0.68. CLEAR and Identity match
    # at IoU >= 0.5 (MOTA = IDF1 = 1, MOTP 0.68); HOTA matches only at its 13 thresholds
    # 0.05 ... 0.65 of 19, scoring 1 there and 0 at the 6 above: 13/19.
    gt = _mot15(tmp_path / "gt1.txt", [(1, 1, 0, 0, 10, 10)])
    loose = _result(tmp_path / "l.txt", [(1, 5, 0, 0, 10, 6.8)])
    numbers = summary(trackeval_sequence(loose, gt))
    assert (numbers["MOTA"], numbers["IDF1"]) == (1.0, 1.0)
    assert numbers["MOTP"] == pytest.approx(0.68)
    assert numbers["HOTA"] == pytest.approx(13 / 19)


def test_trackeval_mot17_preprocessing_removes_boxes_on_distractors(tmp_path: Path) -> None:
    # MOT17 gt (9 columns): A a pedestrian, B a distractor (class 8), C a pedestrian marked
    # conf 0 (not scored). A track on each: the one on B is removed before scoring; the one on
    # C stays a false positive (TrackEval only removes boxes matched to distractor classes).
    c = (300, 10, 20, 40)
    gt = tmp_path / "gt.txt"
    gt.write_text(
        f"1,1,{','.join(map(str, A))},1,1,1\n"
        f"1,2,{','.join(map(str, B))},1,8,1\n"
        f"1,3,{','.join(map(str, c))},0,1,1\n"
    )
    result = _result(tmp_path / "r.txt", [(1, 1, *A), (1, 2, *B), (1, 3, *c)])
    numbers = summary(trackeval_sequence(result, gt))
    # 1 gt box, 2 tracker boxes left: TP 1, FP 1 -> MOTA 0, IDF1 = 2 / (2 + 1) ; HOTA:
    # DetA = 1 / (1 + 0 + 1), AssA 1 -> sqrt(0.5).
    assert (numbers["gt_boxes"], numbers["tracker_boxes"]) == (1, 2)
    assert numbers["MOTA"] == pytest.approx(0.0)
    assert numbers["IDF1"] == pytest.approx(2 / 3)
    assert numbers["HOTA"] == pytest.approx(0.5**0.5)


# ---- the CLI end to end -----------------------------------------------------------------------

SIZE = (160, 120)  # width, height
OBJECTS = [  # x0, y0, vx, colour (BGR): moving at known speeds, never overlapping
    (10, 10, 6, (0, 0, 255)),
    (120, 70, -5, (0, 255, 0)),
    (60, 40, 0, (255, 0, 0)),
]


def _frames(count: int) -> tuple[list[np.ndarray], list[tuple]]:
    """BGR frames and their gt rows (frame, id, x, y, w, h)."""
    frames, rows = [], []
    for f in range(1, count + 1):
        image = np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
        for i, (x0, y0, vx, colour) in enumerate(OBJECTS, 1):
            x = x0 + vx * (f - 1)
            cv2.rectangle(image, (x, y0), (x + 19, y0 + 29), colour, -1)
            rows.append((f, i, x, y0, 20, 30))
        frames.append(image)
    return frames, rows


def _video(path: Path, frames: list[np.ndarray], codec: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 10, SIZE)
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _mot_rows(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split(",")] for line in path.read_text().splitlines()]


def test_cli_tracks_a_synthetic_video_from_a_detection_file(tmp_path: Path) -> None:
    frames, rows = _frames(12)
    video = _video(tmp_path / "rects.mp4", frames)
    gt = _mot15(tmp_path / "gt.txt", rows)
    # Detections: every true box at 0.9, except object 2 at 0.3 in frames 5-7 (the second
    # stage keeps it), plus a 0.2 box in frame 3 that is never strong enough to start a track.
    lines = [
        f"{f},-1,{x},{y},{w},{h},{0.3 if i == 2 and 5 <= f <= 7 else 0.9}"
        for f, i, x, y, w, h in rows
    ]
    lines.append("3,-1,140,5,10,10,0.2")
    detections = tmp_path / "det.txt"
    detections.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    run = track_main(
        [
            "--source",
            str(video),
            "--detections",
            str(detections),
            "--gt",
            str(gt),
            "--output",
            str(out),
            "--quiet",
        ]
    )
    # Every true box reported under one identity per object: all scores are 1.
    assert run["frames"] == 12 and run["tracks"] == 3 and run["boxes"] == 36
    assert run["headline"] == {
        "HOTA": 1.0,
        "DetA": 1.0,
        "AssA": 1.0,
        "MOTA": 1.0,
        "IDF1": 1.0,
        "IDSW": 0.0,
    }
    written = _mot_rows(out / "rects.txt")
    assert [r[0] for r in written] == [f for f in range(1, 13) for _ in range(3)]  # from 1
    # Identities are given in detection order at frame 1: track 2 is object 2, whose boxes
    # scored 0.3 in frames 5-7 (kept by the second stage) and 0.9 elsewhere.
    scores = [0.3 if r[1] == 2 and 5 <= r[0] <= 7 else 0.9 for r in written]
    assert [r[6:] for r in written] == [[s, -1, -1, -1] for s in scores]
    capture = cv2.VideoCapture(str(out / "rects.mp4"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 12
    report = json.loads((out / "report.json").read_text())
    assert report["headline"]["IDF1"] == 1.0 and report["figures"]["per_frame_counts"]


def _saved(model: L.LightningModule, path: Path) -> Path:
    """A checkpoint file of an untrained model, as the trainer writes it (fastest real one)."""
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def test_cli_with_a_detect_checkpoint_reports_its_detections_in_frame_one(tmp_path: Path) -> None:
    from vision_tasks.cli import predict_main
    from vision_tasks.tasks.detect import DetectTask

    torch.manual_seed(0)
    ckpt = _saved(DetectTask(categories=PERSON, image_size=64), tmp_path / "detect.ckpt")
    folder = tmp_path / "frames"
    folder.mkdir()
    for number, frame in enumerate(_frames(4)[0], 1):  # lossless PNGs: predict sees the same
        cv2.imwrite(str(folder / f"{number:06d}.png"), frame)
    predict_main(
        [str(folder / "000001.png"), "--ckpt", str(ckpt), "--output", str(tmp_path / "pred")]
    )
    predicted = json.loads((tmp_path / "pred" / "results.json").read_text())
    scores = sorted((r["score"] for r in predicted), reverse=True)
    threshold = (scores[4] + scores[5]) / 2  # the five most confident boxes
    cut = ["--high-threshold", "--low-threshold", "--new-track-threshold"]
    options = [item for flag in cut for item in (flag, str(threshold))]
    out = tmp_path / "out"
    run = track_main(
        ["--ckpt", str(ckpt), "--source", str(folder), "--output", str(out), "--quiet", *options]
    )
    assert run["frames"] == 4 and (out / "frames.mp4").is_file()
    # Frame 1: every track is new and confirmed at once, its box the detection's own, so the
    # tracker reports exactly the detections tools/predict.py finds above the threshold.
    first = sorted(r[2:6] for r in _mot_rows(out / "frames.txt") if r[0] == 1)
    expected = sorted(r["bbox"] for r in predicted if r["score"] >= threshold)
    assert len(first) == 5
    np.testing.assert_allclose(first, expected, atol=0.01)
    # The exported graph through ONNX Runtime tracks the same boxes.
    from vision_tasks.export import export_onnx

    export_onnx(DetectTask.load_from_checkpoint(ckpt, weights_only=True), ckpt.with_suffix(".onnx"))
    onnx_out = tmp_path / "onnx"
    track_main(
        ["--ckpt", str(ckpt), "--engine", "onnx", "--source", str(folder), "--output"]
        + [str(onnx_out), "--quiet", "--no-video", *options]
    )
    by_onnx = sorted(r[2:6] for r in _mot_rows(onnx_out / "frames.txt") if r[0] == 1)
    np.testing.assert_allclose(by_onnx, first, atol=0.05)
    assert not (onnx_out / "frames.mp4").exists()


def test_cli_with_a_multitask_checkpoint_tracks_with_its_own_boxes_and_embeddings(
    tmp_path: Path,
) -> None:
    from vision_tasks.tasks.multitask import MultiTaskTask

    torch.manual_seed(0)
    model = MultiTaskTask(categories=PERSON, image_size=64, heads=["detect", "reid"])
    ckpt = _saved(model, tmp_path / "joint.ckpt")
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = _frames(3)[0]
    for number, frame in enumerate(frames, 1):
        cv2.imwrite(str(folder / f"{number:06d}.png"), frame)
    # The joint model's own detections of frame 1, with the three best scores kept.
    found = JointModel(model.eval(), min_score=0.0)(cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB))
    scores = np.sort(found.scores)[::-1]
    threshold = float(scores[2] + scores[3]) / 2
    cut = ["--high-threshold", "--low-threshold", "--new-track-threshold"]
    options = [item for flag in cut for item in (flag, str(threshold))]
    out = tmp_path / "out"
    run = track_main(
        ["--ckpt", str(ckpt), "--source", str(folder), "--output", str(out), "--quiet", *options]
    )
    assert run["frames"] == 3
    first = sorted(r[2:6] for r in _mot_rows(out / "frames.txt") if r[0] == 1)
    keep = found.scores >= threshold
    boxes = found.boxes_xyxy[keep]
    expected = sorted(np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).tolist())
    np.testing.assert_allclose(first, expected, atol=0.01)
    assert "no ONNX export" in _fails(
        ["--ckpt", str(ckpt), "--engine", "onnx", "--source", str(folder), "--output", str(out)]
    )


def test_joint_model_boxes_and_embeddings_match_its_own_forward() -> None:
    from vision_tasks.tasks.multitask import MultiTaskTask

    torch.manual_seed(0)
    model = MultiTaskTask(categories=PERSON, image_size=64, heads=["detect", "reid"]).eval()
    frame = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    joint = JointModel(model, min_score=0.0, embed_score=0.0)
    found = joint(frame)
    sample = model.predict_sample(frame)
    batch = {k: [sample[k]] for k in ("scale", "pad", "orig_size")} | {"image_id": [0]}
    with torch.inference_mode():
        outputs = model(sample["image"][None])
        boxes = model.detect(outputs, 0.0, model.hparams.max_detections)[0][0]
        reference = model(sample["image"][None], reid_boxes=[boxes])["reid"]["embedding"]
        decoded = model.decode_detections(outputs, batch)[0]
    # The boxes are the multitask decode's own, the embeddings its forward's on those boxes.
    np.testing.assert_allclose(
        found.boxes_xyxy[:, 2:] - found.boxes_xyxy[:, :2], decoded["bbox"][:, 2:], atol=1e-4
    )
    np.testing.assert_allclose(found.scores, decoded["score"], atol=1e-6)
    np.testing.assert_allclose(found.embeddings, reference.numpy(), atol=1e-5)
    # Given frame boxes map into the letterbox as the network sees them: 80x48 -> scale 0.8,
    # 64x38 (48 * 0.8 = 38.4 rounded), pad (0, (64 - 38) // 2 = 13). A box (10, 5, 40, 45) is
    # (8, 17, 32, 49) in network pixels.
    given = joint.embed(frame, np.array([[10.0, 5, 40, 45]]))
    with torch.inference_mode():
        direct = model(sample["image"][None], reid_boxes=[torch.tensor([[8.0, 17, 32, 49]])])
    np.testing.assert_allclose(given, direct["reid"]["embedding"].numpy(), atol=1e-5)


# ---- bad input ------------------------------------------------------------------------------


def _fails(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as raised:
        track_main(argv)
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_bad_sources_and_detection_files_fail_in_one_line(tmp_path: Path) -> None:
    frames, rows = _frames(3)
    video = _video(tmp_path / "ok.mp4", frames)
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    empty = tmp_path / "empty"
    empty.mkdir()
    good = tmp_path / "det.txt"
    good.write_text("1,-1,10,10,20,30,0.9\n")
    out = ["--output", str(tmp_path / "out"), "--quiet"]
    assert "broken.mp4: cannot read the video" in _fails(
        ["--source", str(broken), "--detections", str(good), *out]
    )
    assert "empty: no image files" in _fails(
        ["--source", str(empty), "--detections", str(good), *out]
    )
    short = tmp_path / "short.txt"
    short.write_text("1,-1,10,10,20,30,0.9\n2,-1,10,10\n")
    assert _fails(["--source", str(video), "--detections", str(short), *out]) == (
        f"{short}:2: expected at least 7 comma-separated fields (frame,id,x,y,w,h,score,...), got 4"
    )
    word = tmp_path / "word.txt"
    word.write_text("1,-1,ten,10,20,30,0.9\n")
    assert f"{word}:1: field 'x'" in _fails(
        ["--source", str(video), "--detections", str(word), *out]
    )
    bad_gt = tmp_path / "gt.txt"
    bad_gt.write_text("1,1,10,10,20,30,1,-1,-1,-1\n2,1,10,10\n")
    failed = _fails(["--source", str(video), "--detections", str(good), "--gt", str(bad_gt), *out])
    assert f"{bad_gt}:2: expected at least 6 comma-separated fields" in failed
    assert "--detections replaces the detector" in _fails(
        ["--source", str(video), "--detections", str(good), "--ckpt", "x.ckpt", *out]
    )


def test_checkpoints_of_tasks_that_cannot_track_fail_in_one_line(tmp_path: Path) -> None:
    from vision_tasks.tasks.classify import ClassifyTask
    from vision_tasks.tasks.detect import DetectTask

    two = [*PERSON, {"id": 2, "name": "car", "supercategory": "vehicle"}]
    classify = _saved(ClassifyTask(categories=two, image_size=32), tmp_path / "c.ckpt")
    detect = _saved(DetectTask(categories=PERSON, image_size=64), tmp_path / "d.ckpt")
    video = _video(tmp_path / "v.mp4", _frames(2)[0])
    out = ["--source", str(video), "--output", str(tmp_path / "out"), "--quiet"]
    assert "a classify checkpoint cannot track" in _fails(["--ckpt", str(classify), *out])
    assert "a detect checkpoint gives no embeddings" in _fails(
        ["--ckpt", str(detect), "--reid", str(detect), *out]
    )
    missing = ["--onnx", str(tmp_path / "missing.onnx")]  # --engine onnx exports when it can
    assert "run tools/export.py" in _fails(["--ckpt", str(detect), *missing, *out])


def test_a_source_that_stops_early_keeps_the_frames_read(tmp_path: Path, caplog) -> None:
    frames, rows = _frames(10)
    detections = tmp_path / "det.txt"
    detections.write_text("".join(f"{f},-1,{x},{y},{w},{h},0.9\n" for f, i, x, y, w, h in rows))
    # A corrupt image in a folder: frames 1-3 are tracked, the log names the file.
    folder = tmp_path / "frames"
    folder.mkdir()
    for number, frame in enumerate(frames[:5], 1):
        cv2.imwrite(str(folder / f"{number:06d}.png"), frame)
    (folder / "000004.png").write_bytes(b"\x89PNG broken")
    with caplog.at_level(logging.WARNING, logger="vision_tasks"):
        run = track_main(
            [
                "--source",
                str(folder),
                "--detections",
                str(detections),
                "--output",
                str(tmp_path / "a"),
                "--quiet",
            ]
        )
    assert run["frames"] == 3 and "000004.png: cannot decode the image (frame 4)" in run["stopped"]
    assert "000004.png" in caplog.text
    assert {r[0] for r in _mot_rows(tmp_path / "a" / "frames.txt")} == {1, 2, 3}
    # A video cut off part-way (an AVI of 10 MJPEG frames, 60% of its bytes kept).
    whole = _video(tmp_path / "whole.avi", frames, codec="MJPG").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[: int(len(whole) * 0.6)])
    run = track_main(
        [
            "--source",
            str(cut),
            "--detections",
            str(detections),
            "--output",
            str(tmp_path / "b"),
            "--quiet",
        ]
    )
    assert 0 < run["frames"] < 10 and f"after frame {run['frames']} of the 10" in run["stopped"]
    assert max(r[0] for r in _mot_rows(tmp_path / "b" / "cut.txt")) == run["frames"]
