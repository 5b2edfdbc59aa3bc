"""Panoptic quality (Kirillov et al. 2019), following panopticapi's pq_compute.

Written by hand because mmdet's CocoPanopticMetric needs `panopticapi`, which is not on PyPI.
Checked against hand-computed cases in tests/test_panoptic_quality.py. Where real COCO panoptic
data can differ from what ``shapes`` holds, it does what panopticapi's ``pq_compute_single_core``
does (each case is a test):

- several crowd regions of one class in an image: a predicted segment is excused (not a false
  positive) by VOID plus the *last* crowd region of its class in ``segments_info``, as panopticapi
  keeps one crowd id per class;
- a PNG id missing from ``segments_info``: its pixels are neither VOID nor a segment: they never
  match, stay in a prediction's union and do not excuse a false positive;
- a JSON ``area`` that differs from the pixel count: the ground truth's union uses the JSON ``area``
  (panopticapi reads it from the JSON; predictions' areas are pixel counts);

and one difference: a group (things or stuff, or all) without a class that occurs is
``None`` here, where panopticapi divides by zero (``ZeroDivisionError``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from icm.tasks import Evaluator

INSTANCE_OFFSET = 1000  # mmdet's encoding of (label, instance) in pred_panoptic_seg


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def segments_from_mmdet(pan: np.ndarray, num_classes: int):
    """mmdet panoptic map -> (segment id map, {segment id: label}); VOID (label == num_classes) -> id 0."""
    labels = pan % INSTANCE_OFFSET
    ids = np.where(labels == num_classes, 0, pan + 1)  # +1 keeps id 0 free for VOID
    return ids, {int(i): int((i - 1) % INSTANCE_OFFSET) for i in np.unique(ids) if i != 0}


class PQStat:
    def __init__(self):
        self.tp, self.fp, self.fn, self.iou = (defaultdict(float) for _ in range(4))

    def add_image(self, gt_ids, gt_labels, pred_ids, pred_labels, crowd=(), gt_area=None):
        """Ids: int maps where 0 is VOID; labels: {segment id: class}; ``crowd``: the GT ids that are crowd,
        in ``segments_info`` order; ``gt_area``: {GT id: area} from the JSON, else pixel counts.
        GT ids without a label (a PNG id missing from segments_info) are kept, as panopticapi does."""
        # (gt, pred) pairs as one int64 key: a 1-D unique is ~10x faster than np.unique(axis=1) here
        g, p = gt_ids.ravel().astype(np.int64), pred_ids.ravel().astype(np.int64)
        span = int(p.max(initial=0)) + 1
        keys, counts = np.unique(g * span + p, return_counts=True)
        inter = {(int(k // span), int(k % span)): int(c) for k, c in zip(keys, counts)}
        area: dict[int, int] = defaultdict(int)
        pred_area: dict[int, int] = defaultdict(int)
        for (gi, pi), c in inter.items():  # pixel counts per segment, from the pair counts
            area[gi] += c
            pred_area[pi] += c
        area, pred_area = dict(area), dict(pred_area)
        area.update(gt_area or {})
        crowd_ids = set(crowd)
        crowd_of = {gt_labels[c]: c for c in crowd}  # panopticapi: one (the last) crowd region per class
        matched_gt, matched_pred = set(), set()
        for (g, p), n in inter.items():
            if g not in gt_labels or p not in pred_labels or g in crowd_ids or gt_labels[g] != pred_labels[p]:
                continue
            union = pred_area[p] + area[g] - n - inter.get((0, p), 0)
            iou = n / union
            if iou > 0.5:
                self.tp[gt_labels[g]] += 1
                self.iou[gt_labels[g]] += iou
                matched_gt.add(g)
                matched_pred.add(p)
        for g, label in gt_labels.items():
            if g not in matched_gt and g not in crowd_ids:
                self.fn[label] += 1
        for p, label in pred_labels.items():
            if p in matched_pred or p not in pred_area:
                continue
            ignored = inter.get((0, p), 0) + (inter.get((crowd_of[label], p), 0) if label in crowd_of else 0)
            if ignored / pred_area[p] > 0.5:  # mostly on VOID/crowd: not counted as a false positive
                continue
            self.fp[label] += 1

    def summary(self, labels) -> dict:
        """Mean PQ/SQ/RQ over the classes of ``labels`` that occur; None for all three when none does."""
        pq, sq, rq, n = 0.0, 0.0, 0.0, 0
        for c in labels:
            tp, fp, fn = self.tp[c], self.fp[c], self.fn[c]
            if tp + fp + fn == 0:
                continue
            n += 1
            denom = tp + 0.5 * fp + 0.5 * fn
            pq += self.iou[c] / denom
            sq += self.iou[c] / tp if tp else 0.0
            rq += tp / denom
        return {"PQ": pq / n, "SQ": sq / n, "RQ": rq / n, "n": n} if n else {"PQ": None, "SQ": None, "RQ": None, "n": 0}


class PanopticEvaluator(Evaluator):
    """PQ over the dataset's panoptic categories (the model's labels matched to them by name), or,
    label-free, over the model's own classes against its panoptic maps on the uncompressed images."""

    primary = "PQ"

    def __init__(self, adapter, pseudo_ground_truth=None):
        self.adapter, self.pseudo = adapter, pseudo_ground_truth
        self.things, self.stuff = adapter.things_stuff
        self.stat = PQStat()
        if pseudo_ground_truth is None:
            cats = adapter.panoptic_categories
            self.lut = np.array([-1 if d is None else d for d in adapter.panoptic_label_map], np.int64)
            self.cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
            self.groups = ([i for i, c in enumerate(cats) if c.get("isthing")],
                           [i for i, c in enumerate(cats) if not c.get("isthing")])
            pan = json.loads(Path(adapter.dataset.annotations["panoptic_json"]).read_text())
            self.gt_info = {a["image_id"]: a for a in pan["annotations"]}
        else:
            n = self.things + self.stuff
            self.lut = np.arange(n)
            self.groups = (list(range(self.things)), list(range(self.things, n)))

    def _ground_truth(self, sample):
        if self.pseudo is not None:
            return (*segments_from_mmdet(self.pseudo[sample["id"]]["panoptic"], self.things + self.stuff), (), None)
        from PIL import Image

        info = self.gt_info[sample["id"]]
        ids = rgb2id(np.asarray(Image.open(Path(self.adapter.dataset.annotations["panoptic_dir"]) / info["file_name"]).convert("RGB")))
        labels = {s["id"]: self.cat_to_label[s["category_id"]] for s in info["segments_info"]}
        crowd = tuple(s["id"] for s in info["segments_info"] if s.get("iscrowd"))
        area = {s["id"]: s["area"] for s in info["segments_info"] if "area" in s}
        return ids, labels, crowd, area

    def process(self, predictions, samples):
        for p, s in zip(predictions, samples):
            gt_ids, gt_labels, crowd, area = self._ground_truth(s)
            pred_ids, pred_labels = segments_from_mmdet(p["panoptic"], self.things + self.stuff)
            pred_labels = {i: int(self.lut[c]) for i, c in pred_labels.items()}
            # a model class the dataset does not have: its segments are VOID, as if not predicted
            dropped = [i for i, c in pred_labels.items() if c < 0]
            if dropped:
                pred_ids = np.where(np.isin(pred_ids, dropped), 0, pred_ids)
                pred_labels = {i: c for i, c in pred_labels.items() if c >= 0}
            self.stat.add_image(gt_ids, gt_labels, pred_ids, pred_labels, crowd, area)

    def compute(self):
        things, stuff = self.groups
        all_ = self.stat.summary(things + stuff)
        th, st = self.stat.summary(things), self.stat.summary(stuff)
        out = {"PQ": all_["PQ"], "SQ": all_["SQ"], "RQ": all_["RQ"], "PQ_th": th["PQ"], "PQ_st": st["PQ"]}
        if all_["n"] == 0:  # nothing in the ground truth and nothing predicted: legal, scored 0
            out.update({"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "note": "no segments in the ground truth or the predictions: scored 0"})
        return out
