"""mmdet adapters. One PanopticFPN (or any two-stage mmdet detector config) serves det, inst and
panoptic; the adapter calls the model's stages itself so gradients reach the pixels and the
instance predictions stay available next to the panoptic fusion."""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from icm import openmmlab
from icm.errors import UserError
from icm.tasks import Batch, Evaluator, TaskAdapter

DEFAULT_CONFIG = "tasks/panoptic_fpn_r18_tiny_shapes.py"
DEFAULT_WEIGHTS = "tasks/weights/panoptic_fpn_r18_tiny_shapes.pth"


class MMDetAdapter(openmmlab.OpenMMLabAdapter, TaskAdapter):
    description = ""
    library, default_config, default_weights = "mmdet", DEFAULT_CONFIG, DEFAULT_WEIGHTS

    def bind(self, dataset):
        for cached in ("_coco", "classes"):  # annotations of the previous dataset
            self.__dict__.pop(cached, None)
        return super().bind(dataset)

    # -- ground truth --------------------------------------------------------------------------------
    @cached_property
    def _coco(self):
        from pycocotools.coco import COCO

        if self.dataset is None or "instances" not in self.dataset.annotations:
            raise UserError(f"task {self.name}: the dataset has no COCO instances annotations")
        with openmmlab.quiet():
            return COCO(str(self.dataset.annotations["instances"]))

    @cached_property
    def classes(self) -> list[str]:
        if self.dataset is not None and "instances" in self.dataset.annotations:
            return [c["name"] for c in sorted(self._coco.dataset["categories"], key=lambda c: c["id"])]
        return [f"class{i}" for i in range(self._model.roi_head.bbox_head.num_classes)]

    def _data_samples(self, batch: Batch, padded_hw, with_gt: bool):
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        from mmengine.structures import InstanceData, PixelData

        out = []
        for s in batch.samples:
            h, w = s["height"], s["width"]
            ds = DetDataSample(metainfo=dict(img_id=s["id"], img_shape=(h, w), ori_shape=(h, w), pad_shape=padded_hw,
                                             batch_input_shape=padded_hw, scale_factor=(1.0, 1.0)))
            if with_gt:
                anns = [a for a in self._coco.imgToAnns.get(s["id"], []) if not a.get("iscrowd", 0)]
                cat_index = {c: i for i, c in enumerate(sorted(self._coco.getCatIds()))}
                gt = InstanceData()
                boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
                gt.bboxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4).to(self.device)
                gt.labels = torch.tensor([cat_index[a["category_id"]] for a in anns], dtype=torch.long, device=self.device)
                masks = np.stack([self._coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
                gt.masks = BitmapMasks(masks, h, w)
                ds.gt_instances = gt
                sem = self._panoptic_semantic(s)
                if sem is not None:
                    ds.gt_sem_seg = PixelData(sem_seg=torch.from_numpy(sem)[None].long().to(self.device))
            out.append(ds)
        return out

    def _panoptic_semantic(self, sample):
        """Semantic map in mmdet's panoptic label order (things first, then stuff; 255 ignore)."""
        if self.dataset is None or "semantic_dir" not in self.dataset.annotations:
            return None
        from PIL import Image

        meta = self.dataset.meta
        names = meta["semantic_classes"]
        order = meta["things"] + meta["stuff"]
        lut = np.full(256, 255, np.uint8)
        for i, n in enumerate(names):
            lut[i] = order.index(n)
        sem = np.asarray(Image.open(Path(self.dataset.annotations["semantic_dir"]) / (Path(sample["file_name"]).stem + ".png")))
        return lut[sem]

    # -- model stages ---------------------------------------------------------------------------------
    def features(self, x):
        return list(self._model.extract_feat(self._inputs(x)))

    def objectness(self, x):
        """RPN objectness (paper 003): sigmoid of the RPN class scores, max over anchors, per FPN level."""
        feats = self._model.extract_feat(self._inputs(x))
        cls_scores, _ = self._model.rpn_head(feats)
        return [s.sigmoid().amax(dim=1, keepdim=True) for s in cls_scores]

    def loss(self, decoded, batch):
        inputs = self._inputs(decoded)
        samples = self._data_samples(batch, tuple(inputs.shape[-2:]), with_gt=True)
        with openmmlab.scope("mmdet"):
            losses = self._model.loss(inputs, samples)
        return sum(v if torch.is_tensor(v) else sum(v) for k, v in losses.items() if "loss" in k)

    def _instances(self, batch: Batch):
        with torch.no_grad(), openmmlab.scope("mmdet"):
            inputs = self._inputs(batch.images)
            samples = self._data_samples(batch, tuple(inputs.shape[-2:]), with_gt=False)
            feats = self._model.extract_feat(inputs)
            proposals = self._model.rpn_head.predict(feats, samples, rescale=False)
            results = self._model.roi_head.predict(feats, proposals, samples, rescale=True)
        return feats, samples, results


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


class DetAdapter(MMDetAdapter):
    name, primary_metric, metrics = "det", "bbox_mAP", ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75")
    description = "object detection (mmdet), COCO bbox mAP"
    iou_type = "bbox"

    def predict(self, batch):
        _, _, results = self._instances(batch)
        preds = []
        for r in results:
            p = {"bboxes": r.bboxes.cpu().numpy().astype(np.float32), "scores": r.scores.cpu().numpy().astype(np.float32),
                 "labels": r.labels.cpu().numpy().astype(np.int64)}
            if self.iou_type == "segm":
                p["masks"] = [_rle(m) for m in r.masks.cpu().numpy()]
            preds.append(p)
        return preds

    def evaluator(self, pseudo_ground_truth=None):
        return CocoEvaluator(self, pseudo_ground_truth)


class InstAdapter(DetAdapter):
    name, primary_metric, metrics = "inst", "segm_mAP", ("segm_mAP", "segm_mAP_50", "segm_mAP_75")
    description = "instance segmentation (mmdet), COCO mask mAP"
    iou_type = "segm"


class CocoEvaluator(Evaluator):
    """mmdet's CocoMetric over the bound dataset's instances JSON (or a pseudo-GT JSON built from
    predictions on the uncompressed images), restricted to the images actually processed."""

    def __init__(self, adapter: DetAdapter, pseudo_ground_truth=None, pseudo_score_thr: float = 0.5):
        from mmdet.evaluation.metrics import CocoMetric

        self.adapter, self.primary = adapter, adapter.primary_metric
        ann_file = adapter.dataset.annotations["instances"]
        if pseudo_ground_truth is not None:
            ann_file = self._pseudo_json(adapter, pseudo_ground_truth, pseudo_score_thr)
        with openmmlab.quiet():
            self.metric = CocoMetric(ann_file=str(ann_file), metric=[adapter.iou_type], format_only=False)
        if pseudo_ground_truth is not None:  # CocoMetric has read it; do not leave it in /tmp
            shutil.rmtree(ann_file.parent, ignore_errors=True)
        self.metric.dataset_meta = {"classes": tuple(adapter.classes)}
        self.ids: list[int] = []

    @staticmethod
    def _pseudo_json(adapter, pseudo, thr):
        coco = json.loads(Path(adapter.dataset.annotations["instances"]).read_text())
        cat_ids = sorted(c["id"] for c in coco["categories"])
        anns = []
        for img_id, p in pseudo.items():
            for k in np.flatnonzero(p["scores"] >= thr):
                x1, y1, x2, y2 = map(float, p["bboxes"][k])
                ann = {"id": len(anns) + 1, "image_id": int(img_id), "category_id": cat_ids[int(p["labels"][k])],
                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                if "masks" in p:
                    from pycocotools import mask as mask_utils

                    ann["segmentation"] = p["masks"][k]
                    ann["area"] = float(mask_utils.area({**p["masks"][k], "counts": p["masks"][k]["counts"].encode()}))
                anns.append(ann)
        coco["annotations"] = anns
        tmp = Path(tempfile.mkdtemp(prefix="icm-pseudo-")) / "instances.json"
        tmp.write_text(json.dumps(coco))
        return tmp

    def process(self, predictions, samples):
        data = []
        for p, s in zip(predictions, samples):
            pred = {"bboxes": torch.from_numpy(p["bboxes"]), "scores": torch.from_numpy(p["scores"]),
                    "labels": torch.from_numpy(p["labels"])}
            if "masks" in p:
                pred["masks"] = [{**m, "counts": m["counts"].encode()} for m in p["masks"]]
            data.append({"img_id": s["id"], "ori_shape": (s["height"], s["width"]), "pred_instances": pred})
            self.ids.append(s["id"])
        self.metric.process({}, data)

    def compute(self):
        self.metric.img_ids = sorted(set(self.ids))
        with openmmlab.quiet():
            res = self.metric.compute_metrics(self.metric.results)
        return {k: float(v) for k, v in res.items() if not isinstance(v, str)}


class PanopticAdapter(MMDetAdapter):
    name, primary_metric, metrics = "panoptic", "PQ", ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")
    description = "panoptic segmentation (mmdet PanopticFPN), PQ"

    def predict(self, batch):
        feats, samples, results = self._instances(batch)
        thr = self.cfg.model.test_cfg.panoptic.get("panoptic_score_thr", 0.5)
        kept = [r[r.scores >= thr] for r in results]
        with torch.no_grad(), openmmlab.scope("mmdet"):
            seg = self._model.semantic_head.predict(feats, [s.metainfo for s in samples], rescale=True)
            pans = self._model.panoptic_fusion_head.predict(kept, seg)
        return [{"panoptic": p.sem_seg[0].cpu().numpy().astype(np.int32)} for p in pans]

    def evaluator(self, pseudo_ground_truth=None):
        from icm_mmdet.panoptic_quality import PanopticEvaluator

        return PanopticEvaluator(self, pseudo_ground_truth)
