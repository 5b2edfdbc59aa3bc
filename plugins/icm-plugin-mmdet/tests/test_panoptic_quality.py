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


# -- parity with panopticapi's pq_compute_single_core on what real COCO panoptic data holds ------------
def strip(*runs):
    """A 2-row id map from (id, width) runs, left to right."""
    row = np.concatenate([np.full(w, i) for i, w in runs])
    return np.stack([row, row])


def test_several_crowd_regions_of_one_class_only_the_last_excuses_a_prediction():
    # GT: crowd 1 and crowd 2 of class 0 (in that segments_info order), segment 3 of class 1
    gt = strip((1, 4), (2, 4), (3, 2))
    # predictions: one class-0 segment on each crowd region, class 1 exact
    pred = strip((10, 4), (11, 4), (12, 2))
    stat = PQStat()
    stat.add_image(gt, {1: 0, 2: 0, 3: 1}, pred, {10: 0, 11: 0, 12: 1}, crowd=(1, 2))
    # panopticapi keeps one crowd id per class (the last, 2): segment 10 on crowd 1 is a false positive
    assert (stat.fp[0], stat.tp[0], stat.fn[0]) == (1, 0, 0)
    assert stat.summary([0, 1])["PQ"] == pytest.approx(0.5)


def test_a_png_id_missing_from_segments_info_is_neither_void_nor_a_segment():
    gt = strip((1, 5), (7, 5))  # id 7 is in the PNG but not in segments_info
    pred = strip((10, 8), (11, 2))
    stat = PQStat()
    stat.add_image(gt, {1: 0}, pred, {10: 0, 11: 1})
    # union of 10 with 1: 8 + 5 - 5 - 0 (no VOID pixels) -> IoU 5/8; unknown pixels excuse nothing: 11 is a FP
    assert stat.iou[0] == pytest.approx(5 / 8) and stat.tp[0] == 1
    assert stat.fp[1] == 1
    assert stat.summary([0, 1])["PQ"] == pytest.approx(5 / 8 / 2)


def test_the_ground_truth_union_uses_the_json_area():
    gt = strip((1, 8), (0, 2))
    pred = strip((10, 6), (0, 4))
    by_pixels, by_json = PQStat(), PQStat()
    by_pixels.add_image(gt, {1: 0}, pred, {10: 0})
    by_json.add_image(gt, {1: 0}, pred, {10: 0}, gt_area={1: 24})  # 16 pixels
    assert by_pixels.summary([0])["PQ"] == pytest.approx(12 / 16)
    # 12 / (12 + 24 - 12) = 0.5 is not > 0.5: no match, one FN and one FP, as panopticapi counts it
    assert (by_json.tp[0], by_json.fn[0], by_json.fp[0]) == (0, 1, 1) and by_json.summary([0])["PQ"] == 0.0


def test_a_group_without_classes_is_none_not_a_division_by_zero():
    gt, gt_labels = halves()
    stat = PQStat()
    stat.add_image(gt, gt_labels, gt.copy(), {1: 0, 2: 1})
    assert stat.summary([0, 1])["PQ"] == 1.0
    assert stat.summary([])["PQ"] is None  # panopticapi: ZeroDivisionError


def test_evaluator_reads_crowd_order_missing_ids_and_json_area_from_coco_files(tmp_path):
    """The four cases through PanopticEvaluator, from a COCO panoptic JSON and PNG as panopticapi reads them."""
    import json
    from types import SimpleNamespace

    from PIL import Image

    from icm_mmdet.panoptic_quality import PanopticEvaluator

    # categories: things 3 (disk) and 8 (ring), no stuff at all
    cats = [{"id": 8, "name": "ring", "isthing": 1}, {"id": 3, "name": "disk", "isthing": 1}]
    ids = strip((21, 2), (22, 2), (30, 3), (99, 1), (0, 2))  # 99: in the PNG, not in segments_info
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    (tmp_path / "pan").mkdir()
    Image.fromarray(rgb).save(tmp_path / "pan" / "1.png")
    info = {"image_id": 1, "file_name": "1.png", "segments_info": [
        {"id": 21, "category_id": 3, "iscrowd": 1, "area": 4}, {"id": 22, "category_id": 3, "iscrowd": 1, "area": 4},
        {"id": 30, "category_id": 8, "iscrowd": 0, "area": 18}]}  # ring: 6 pixels, JSON says 18
    (tmp_path / "pan.json").write_text(json.dumps({"categories": cats, "annotations": [info], "images": []}))
    dataset = SimpleNamespace(annotations={"panoptic_json": tmp_path / "pan.json", "panoptic_dir": tmp_path / "pan"})
    # the model: things (ring, disk) in its own order -> dataset categories sorted by id: disk (0), ring (1)
    adapter = SimpleNamespace(things_stuff=(2, 0), dataset=dataset, panoptic_label_map=[1, 0],
                              panoptic_categories=sorted(cats, key=lambda c: c["id"]))
    # mmdet encoding: label + instance * 1000, VOID = num_classes (2)
    pan = strip((1 + 0 * INSTANCE_OFFSET, 2), (1 + 1 * INSTANCE_OFFSET, 2), (0, 4), (2, 2))
    ev = PanopticEvaluator(adapter)
    ev.process([{"panoptic": pan}], [{"id": 1}])
    m = ev.compute()
    # disk: the prediction on crowd 21 is a FP (only crowd 22 excuses), the one on 22 is excused -> PQ 0
    # ring: pred 8 px on GT 30 (6 px) + 2 unknown px: union 8 + 18 - 6 - 0 = 20 -> IoU 0.3, FN + FP -> PQ 0
    # (by pixel counts, or with the unknown id as VOID, it would match)
    assert (ev.stat.fp[0], ev.stat.fn[0], ev.stat.tp[0]) == (1, 0, 0)
    assert (ev.stat.tp[1], ev.stat.fn[1], ev.stat.fp[1]) == (0, 1, 1)
    assert m["PQ"] == 0.0 and m["PQ_th"] == 0.0 and m["PQ_st"] is None
