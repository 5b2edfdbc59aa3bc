"""Panoptic quality (Kirillov et al. 2019), following panopticapi's pq_compute.

Written by hand because mmdet's CocoPanopticMetric needs `panopticapi`, which is not on PyPI.
Checked against hand-computed cases in tests/test_panoptic_quality.py.
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

    def add_image(self, gt_ids, gt_labels, pred_ids, pred_labels, crowd=frozenset()):
        """Ids: int maps where 0 is VOID; labels: {segment id: class}; crowd: GT ids that are crowd."""
        pairs, counts = np.unique(np.stack([gt_ids.ravel(), pred_ids.ravel()]), axis=1, return_counts=True)
        inter = {(int(g), int(p)): int(c) for (g, p), c in zip(pairs.T, counts)}
        gt_area = {int(i): int(c) for i, c in zip(*np.unique(gt_ids, return_counts=True))}
        pred_area = {int(i): int(c) for i, c in zip(*np.unique(pred_ids, return_counts=True))}
        matched_gt, matched_pred = set(), set()
        for (g, p), n in inter.items():
            if g == 0 or p == 0 or g in crowd or gt_labels[g] != pred_labels[p]:
                continue
            union = pred_area[p] + gt_area[g] - n - inter.get((0, p), 0)
            iou = n / union
            if iou > 0.5:
                self.tp[gt_labels[g]] += 1
                self.iou[gt_labels[g]] += iou
                matched_gt.add(g)
                matched_pred.add(p)
        for g, label in gt_labels.items():
            if g not in matched_gt and g not in crowd:
                self.fn[label] += 1
        for p, label in pred_labels.items():
            if p in matched_pred:
                continue
            ignored = inter.get((0, p), 0) + sum(inter.get((c, p), 0) for c in crowd if gt_labels.get(c) == label)
            if ignored / pred_area[p] > 0.5:  # mostly on VOID/crowd: not counted as a false positive
                continue
            self.fp[label] += 1

    def summary(self, labels) -> dict:
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
        return {"PQ": pq / n, "SQ": sq / n, "RQ": rq / n, "n": n} if n else {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "n": 0}


class PanopticEvaluator(Evaluator):
    primary = "PQ"

    def __init__(self, adapter, pseudo_ground_truth=None):
        self.adapter, self.pseudo = adapter, pseudo_ground_truth
        meta = adapter.dataset.meta
        self.things, self.stuff = list(meta["things"]), list(meta["stuff"])
        self.num_classes = len(self.things) + len(self.stuff)
        self.stat = PQStat()
        if pseudo_ground_truth is None:
            pan = json.loads(Path(adapter.dataset.annotations["panoptic_json"]).read_text())
            order = self.things + self.stuff
            self.cat_to_label = {c["id"]: order.index(c["name"]) for c in pan["categories"]}
            self.gt_info = {a["image_id"]: a for a in pan["annotations"]}

    def _ground_truth(self, sample):
        if self.pseudo is not None:
            return (*segments_from_mmdet(self.pseudo[sample["id"]]["panoptic"], self.num_classes), frozenset())
        from PIL import Image

        info = self.gt_info[sample["id"]]
        ids = rgb2id(np.asarray(Image.open(Path(self.adapter.dataset.annotations["panoptic_dir"]) / info["file_name"]).convert("RGB")))
        labels = {s["id"]: self.cat_to_label[s["category_id"]] for s in info["segments_info"]}
        crowd = frozenset(s["id"] for s in info["segments_info"] if s.get("iscrowd"))
        known = np.isin(ids, list(labels))
        return np.where(known, ids, 0), labels, crowd

    def process(self, predictions, samples):
        for p, s in zip(predictions, samples):
            gt_ids, gt_labels, crowd = self._ground_truth(s)
            pred_ids, pred_labels = segments_from_mmdet(p["panoptic"], self.num_classes)
            self.stat.add_image(gt_ids, gt_labels, pred_ids, pred_labels, crowd)

    def compute(self):
        n_th = len(self.things)
        all_ = self.stat.summary(range(self.num_classes))
        th = self.stat.summary(range(n_th))
        st = self.stat.summary(range(n_th, self.num_classes))
        return {"PQ": all_["PQ"], "SQ": all_["SQ"], "RQ": all_["RQ"], "PQ_th": th["PQ"], "PQ_st": st["PQ"]}
