"""Panoptic quality against a scene counted by hand (panopticapi's rules), and the fusion of
instance masks into a panoptic map."""

from __future__ import annotations

import numpy as np
import pytest

from vision_tasks.evaluation.panoptic import (
    PanopticQuality,
    Segment,
    fuse_instances,
    truth_panoptic,
)


def _scene() -> tuple[np.ndarray, list[Segment], np.ndarray, list[Segment]]:
    truth = np.zeros((10, 10), np.int32)
    truth[0:4, 0:4] = 1  # A1, category 1, 16 px
    truth[0:4, 6:10] = 2  # A2, category 1, 16 px
    truth[6:10, 0:5] = 3  # a crowd region of category 2, 20 px; the rest is void
    truth_segments = [Segment(1, 1), Segment(2, 1), Segment(3, 2, iscrowd=True)]
    pred = np.zeros((10, 10), np.int32)
    pred[0:4, 0:3] = 1  # on A1: 12 of its 16 px, IoU 12 / 16 = 0.75 -> TP
    pred[0:4, 5:7] = 2  # 4 px on A2 and 4 on void: IoU 4 / (8 + 16 - 4 - 4) = 0.25; half void
    pred[6:10, 1:4] = 3  # category 2 wholly inside category 2's crowd region: ignored
    pred[5, 5:10] = 4  # category 2 wholly on void: ignored
    pred[0:4, 3] = 5  # category 2 on A1's last column (category 1): a false positive
    pred_segments = [Segment(1, 1), Segment(2, 1), Segment(3, 2), Segment(4, 2), Segment(5, 2)]
    return pred, pred_segments, truth, truth_segments


def test_pq_counts_a_hand_made_scene_as_panopticapi_does() -> None:
    metric = PanopticQuality(things={1})
    metric.update(*_scene())
    result = metric.compute()
    # Category 1: TP (IoU 0.75), FP (the half-void box: void must be over half to ignore it), FN
    # (A2). Category 2: one FP; the crowd and void ones are ignored, the crowd is no FN.
    one = result["per_category"][1]
    assert (one["tp"], one["fp"], one["fn"]) == (1, 1, 1)
    assert one["pq"] == pytest.approx(0.75 / 2) and one["sq"] == 0.75 and one["rq"] == 0.5
    two = result["per_category"][2]
    assert (two["tp"], two["fp"], two["fn"]) == (0, 1, 0) and two["pq"] == 0.0
    assert result["pq"] == pytest.approx(0.1875)
    assert result["sq"] == pytest.approx(0.375) and result["rq"] == pytest.approx(0.25)
    assert result["things"]["pq"] == pytest.approx(0.375) and result["stuff"]["pq"] == 0.0


def test_iou_of_exactly_one_half_is_not_a_match() -> None:
    truth = np.zeros((2, 4), np.int32)
    truth[:, 0:2] = 1
    pred = np.zeros((2, 4), np.int32)
    pred[:, 1:3] = 1  # 2 px shared, union 6 - 2 = 4 -> IoU 0.5
    metric = PanopticQuality()
    metric.update(pred, [Segment(1, 7)], truth, [Segment(1, 7)])
    stat = metric.compute()["per_category"][7]
    assert (stat["tp"], stat["fp"], stat["fn"]) == (0, 1, 1)


def test_fusion_puts_confident_masks_on_top_and_drops_the_mostly_covered() -> None:
    masks = np.zeros((4, 4, 10), bool)
    masks[0, :, 0:5] = True  # score 0.9: 20 px
    masks[1, :, 2:7] = True  # score 0.8: 12 of 20 px already taken -> 40% left < 50%: dropped
    masks[2, :, 4:10] = True  # score 0.7: 4 of 24 taken, 20 left: kept on the free pixels
    masks[3, :, 8:10] = True  # score 0.3: under the score threshold
    panoptic, segments = fuse_instances(
        masks, np.array([0.9, 0.8, 0.7, 0.3]), np.array([1, 1, 2, 3])
    )
    assert [(s.id, s.category) for s in segments] == [(1, 1), (2, 2)]
    assert (panoptic[:, 0:5] == 1).all() and (panoptic[:, 5:10] == 2).all()


def test_truth_overlaps_become_void_and_crowd_takes_only_free_pixels() -> None:
    a = np.zeros((3, 6), bool)
    a[:, 0:4] = True
    b = np.zeros((3, 6), bool)
    b[:, 2:6] = True
    crowd = np.ones((3, 6), bool)
    panoptic, segments = truth_panoptic([a, b, crowd], [1, 1, 2], [False, False, True], (3, 6))
    assert (panoptic[:, 0:2] == 1).all() and (panoptic[:, 4:6] == 2).all()
    assert (panoptic[:, 2:4] == 0).all()  # claimed by both objects: nobody's
    assert segments[2].iscrowd and not (panoptic == 3).any()
