import numpy as np
import pytest

from icm_mmdet.panoptic_quality import INSTANCE_OFFSET, PQStat, segments_from_mmdet


def halves():
    gt = np.zeros((4, 4), int)
    gt[:, :2], gt[:, 2:] = 1, 2
    return gt, {1: 0, 2: 1}


def test_hand_computed_pq_two_true_positives():
    gt, gt_labels = halves()
    pred = gt.copy()
    pred[0, 2] = 1  # segment 1 grows by one pixel into segment 2
    stat = PQStat()
    stat.add_image(gt, gt_labels, pred, {1: 0, 2: 1})
    s = stat.summary([0, 1])
    # IoUs 8/9 and 7/8, both matched: RQ = 1, PQ = SQ = mean IoU
    assert s["RQ"] == 1.0
    assert s["PQ"] == pytest.approx((8 / 9 + 7 / 8) / 2)


def test_false_positive_and_false_negative_halve_recognition():
    gt, gt_labels = halves()
    pred = np.zeros_like(gt)
    pred[:, :2] = 1  # class 0 matched exactly; class 1 missed (FN); a stray class-1 segment elsewhere
    pred[:, 2] = 3
    stat = PQStat()
    stat.add_image(gt, gt_labels, pred, {1: 0, 3: 1})
    s = stat.summary([0, 1])
    # class 0: PQ 1. class 1: IoU of segment 3 with GT 2 = 4/8 = 0.5, not > 0.5 -> FN 1, FP 1, PQ 0
    assert s["PQ"] == pytest.approx(0.5)
    assert stat.fp[1] == 1 and stat.fn[1] == 1


def test_predictions_on_void_are_not_false_positives():
    gt, gt_labels = halves()
    gt[:, 3] = 0  # void column
    gt_labels = {1: 0, 2: 1}
    pred = gt.copy()
    pred[:, 3] = 5  # a segment entirely on void
    stat = PQStat()
    stat.add_image(gt, gt_labels, pred, {1: 0, 2: 1, 5: 0})
    assert stat.fp[0] == 0 and stat.summary([0, 1])["PQ"] == 1.0


def test_mmdet_encoding_is_decoded_with_void():
    pan = np.array([[0 + 1 * INSTANCE_OFFSET, 4], [6, 2 + 3 * INSTANCE_OFFSET]])  # 6 = VOID for 6 classes
    ids, labels = segments_from_mmdet(pan, num_classes=6)
    assert ids[1, 0] == 0
    assert sorted(labels.values()) == [0, 2, 4]
