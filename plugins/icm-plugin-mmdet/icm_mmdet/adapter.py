"""mmdet adapters. One PanopticFPN serves det, inst and panoptic (panoptic through its own config,
whose R-CNN keeps only the instances its fusion should see); det also takes any two-stage
(Faster R-CNN, ...) or single-stage (RetinaNet, FCOS, YOLOX, ...) mmdet detector config. The adapter
calls the model's stages itself so gradients reach the pixels and the instance predictions stay
available next to the panoptic fusion.

Predicted labels are the model's class indices; they are matched to the dataset's COCO categories by
name (``icm.tasks.match_classes``, ``--class-map``), never by position. Label-free, the model's own
classes are the categories of the pseudo ground truth, so no dataset classes are needed."""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from icm.errors import UserError
from icm.tasks import Batch, Evaluator, TaskAdapter, match_classes
import icm_openmmlab as openmmlab

DEFAULT_CONFIG = "model/panoptic_fpn_r18_tiny_shapes.py"
DEFAULT_WEIGHTS = "model/panoptic_fpn_r18_tiny_shapes.pth"


class MMDetAdapter(openmmlab.OpenMMLabAdapter, TaskAdapter):
    library, default_config, default_weights = "mmdet", DEFAULT_CONFIG, DEFAULT_WEIGHTS
    # the back end read by icm evaluate on icm-omni-features / hevc-features files (configs/train/icm_omni_features_backend_*.toml)
    feature_backends = {"resnet18w32.layer1": "model/panoptic_fpn_r18_tiny_shapes.features.pth"}

    def bind(self, dataset):
        for cached in ("_coco", "dataset_classes", "label_map"):  # annotations of the previous dataset
            self.__dict__.pop(cached, None)
        return super().bind(dataset)

    # -- the model's kind and classes ---------------------------------------------------------------------
    @property
    def two_stage(self) -> bool:
        return hasattr(self._model, "rpn_head") and hasattr(self._model, "roi_head")

    @property
    def num_classes(self) -> int:
        head = self._model.roi_head.bbox_head if self.two_stage else self._model.bbox_head
        return int(head.num_classes)

    @property
    def model_classes(self) -> list[str]:
        """The names of the model's (thing) classes, from its dataset_meta; ``class0``... when unnamed."""
        meta = getattr(self._model, "dataset_meta", {}) or {}
        for key in ("thing_classes", "classes"):
            names = list(meta.get(key) or [])
            if len(names) == self.num_classes:
                return names
        return [f"class{i}" for i in range(self.num_classes)]

    @cached_property
    def _coco(self):
        from pycocotools.coco import COCO

        if self.dataset is None or "instances" not in self.dataset.annotations:
            name = self.dataset.name if self.dataset is not None else "no dataset bound"
            raise UserError(f"task {self.name}: the dataset ({name}) has no COCO instances annotations; "
                            f"without labels use --label-free")
        with openmmlab.quiet():
            return COCO(str(self.dataset.annotations["instances"]))

    @cached_property
    def dataset_classes(self) -> list[str]:
        """The dataset's category names in ascending category id order."""
        return [c["name"] for c in sorted(self._coco.dataset["categories"], key=lambda c: c["id"])]

    @cached_property
    def label_map(self) -> list[int | None]:
        """Model class index -> index into :attr:`dataset_classes` (None: not a dataset class)."""
        return match_classes(self.name, self.model_classes, self.dataset_classes, self.class_map)

    def check(self, label_free=False):
        self._check_model()
        if not label_free:
            self.label_map  # noqa: B018 (annotations present, classes matched by name: or one line now)

    def _check_model(self):
        pass

    def _data_samples(self, batch: Batch, padded_hw, with_gt: bool):
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        from mmengine.structures import InstanceData, PixelData

        out = []
        # pixels: the test pipeline's geometry (its size and scale factor; ground truth is mapped with it)
        geo = self.geometry(batch.image_size) if self.consumes == "pixels" else None
        for s in batch.samples:
            h, w = s["height"], s["width"]
            img_shape, (sx, sy) = (geo.img_shape, geo.scale_factor) if geo else ((h, w), (1.0, 1.0))
            resized = geo.resized if geo else (h, w)
            ds = DetDataSample(metainfo=dict(img_id=s["id"], img_shape=img_shape, ori_shape=(h, w), pad_shape=padded_hw,
                                             batch_input_shape=padded_hw, scale_factor=(sx, sy)))
            if with_gt:
                anns = [a for a in self._coco.imgToAnns.get(s["id"], []) if not a.get("iscrowd", 0)]
                # dataset category -> the (first) model class scored as it: training labels by name too
                to_model = {d: m for m, d in reversed(list(enumerate(self.label_map))) if d is not None}
                cat_index = {c: to_model[i] for i, c in enumerate(sorted(self._coco.getCatIds()))}
                gt = InstanceData()
                boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
                scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
                gt.bboxes = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale).to(self.device)
                gt.labels = torch.tensor([cat_index[a["category_id"]] for a in anns], dtype=torch.long, device=self.device)
                masks = np.stack([self._coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
                gt.masks = BitmapMasks(masks, h, w) if resized == (h, w) else BitmapMasks(masks, h, w).resize(resized)
                ds.gt_instances = gt
                sem = self._panoptic_semantic(s)
                if sem is not None:
                    sem = torch.from_numpy(sem)[None, None].float()
                    if resized != (h, w):
                        sem = torch.nn.functional.interpolate(sem, size=resized, mode="nearest")
                    sem = torch.nn.functional.pad(sem, (0, padded_hw[1] - sem.shape[-1], 0, padded_hw[0] - sem.shape[-2]),
                                                  value=255)
                    ds.gt_sem_seg = PixelData(sem_seg=sem[0].long().to(self.device))
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
        self.check_differentiable("features")
        return list(self._model.extract_feat(self._inputs(x)))

    def objectness(self, x):
        """Per-location objectness, one (N, 1, h, w) map per FPN level. Two-stage detectors: the RPN's
        (paper 003), sigmoid of its class scores, max over anchors. Single-stage detectors (RetinaNet,
        FCOS, YOLOX, ...) have no RPN: the max over anchors and classes of their classification scores
        (sigmoid; softmax without the background for softmax heads)."""
        self.check_differentiable("objectness")
        feats = self._model.extract_feat(self._inputs(x))
        if self.two_stage:
            cls_scores, _ = self._model.rpn_head(feats)
            return [s.sigmoid().amax(dim=1, keepdim=True) for s in cls_scores]
        head = self._model.bbox_head
        cls_scores = head(feats)[0]
        if getattr(head, "use_sigmoid_cls", True):
            return [s.sigmoid().amax(dim=1, keepdim=True) for s in cls_scores]
        out = []
        for s in cls_scores:  # (N, A * (C + 1), h, w), background last (mmdet's convention)
            n, _, h, w = s.shape
            prob = s.view(n, -1, self.num_classes + 1, h, w).softmax(dim=2)[:, :, :-1]
            out.append(prob.amax(dim=2).amax(dim=1, keepdim=True))
        return out

    def loss(self, decoded, batch):
        self.check_differentiable("the task loss", crops=False)
        inputs = self._inputs(decoded)
        samples = self._data_samples(batch, self._image_hw(inputs), with_gt=True)
        with openmmlab.scope("mmdet"):
            losses = self._model.loss(inputs, samples)
        return sum(v if torch.is_tensor(v) else sum(v) for k, v in losses.items() if "loss" in k)

    def _instances(self, batch: Batch):
        """Features, samples and instance results of one no-grad forward, shared by det, inst and
        panoptic on the same model and batch (``forward_key``)."""
        return openmmlab.shared_forward(self, batch, lambda: self._instances_forward(batch))

    def _instances_forward(self, batch: Batch):
        """mmdet's own predict, stage by stage: pixels go through the config's test pipeline and data
        preprocessor as in its test loop (a feature reader's split tensor is read as it is)."""
        from icm_openmmlab.pipeline import to_uint8

        with torch.no_grad(), openmmlab.scope("mmdet"):
            if self.consumes == "pixels":
                # scale_factor 1 unless the pipeline resizes: rescale=True reads it
                infos = [{**self.image_info(s), "scale_factor": (1.0, 1.0)} for s in batch.samples]
                inputs, samples = self.library_inputs(to_uint8(batch.images), infos)
            else:
                inputs = self._inputs(batch.images)
                samples = self._data_samples(batch, self._image_hw(inputs), with_gt=False)
            feats = self._model.extract_feat(inputs)
            if self.two_stage:
                proposals = self._model.rpn_head.predict(feats, samples, rescale=False)
                results = self._model.roi_head.predict(feats, proposals, samples, rescale=True)
            else:
                results = self._model.bbox_head.predict(feats, samples, rescale=True)
        return feats, samples, results


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


class DetAdapter(MMDetAdapter):
    name = "det"  # metrics: its registration (plugin.py)
    iou_type = "bbox"

    def predict(self, batch):
        _, _, results = self._instances(batch)
        return [self._prediction(r) for r in results]

    def _prediction(self, r) -> dict:
        """mmdet's instance results (InstanceData, or its dict in a test loop's data sample) -> icm's."""
        p = {"bboxes": r["bboxes"].cpu().numpy().astype(np.float32), "scores": r["scores"].cpu().numpy().astype(np.float32),
             "labels": r["labels"].cpu().numpy().astype(np.int64)}
        if self.iou_type == "segm":
            p["masks"] = [_rle(m) for m in r["masks"].cpu().numpy()]
        return p

    def library_test(self, images):
        """mmdet's test loop: its CocoDataset and test pipeline, the model (a PanopticFPN run as the
        Mask R-CNN it contains, whose boxes and masks its own predict does not return), CocoMetric."""
        from mmdet.evaluation.metrics import CocoMetric

        ann = self.dataset.annotations["instances"]
        files = [str(self.dataset.images_dir / im["file_name"]) for im in self._coco.dataset["images"]]
        dataset = dict(type="CocoDataset", data_root="", ann_file=str(ann), data_prefix=dict(img=f"{self.dataset.images_dir}/"),
                       metainfo=dict(classes=tuple(self.dataset_classes)), test_mode=True,
                       indices=openmmlab.subset_positions(files, [s["file_name"] for s in images]),
                       pipeline=[dict(type="LoadImageFromFile")] + self.pipeline.steps)
        with openmmlab.quiet():
            metric = CocoMetric(ann_file=str(ann), metric=[self.iou_type])
        metric.img_ids = [s["id"] for s in images]  # CocoMetric scores every image of the file otherwise
        got, results = openmmlab.run_library_test(self, images, dataset, metric, lambda d: (d["img_id"], self._prediction(d["pred_instances"])),
            model_cfg=self._instance_model_cfg())
        from icm.tasks import LibraryTest

        metrics = {k.split("/", 1)[1]: float(v) for k, v in results.items() if k.split("/", 1)[1] in self.metrics}
        return LibraryTest(dict(got), metrics, rounding=0.0005, note="CocoMetric prints 3 decimals")

    def _instance_model_cfg(self):
        """The model config whose predict gives boxes and masks: a PanopticFPN without its semantic and
        fusion heads is the Mask R-CNN inside it (same weights); any other detector as it is."""
        cfg = self.cfg.model.to_dict()
        if "panoptic_fusion_head" in cfg:
            cfg = {k: v for k, v in cfg.items() if k not in ("semantic_head", "panoptic_fusion_head")}
            cfg["type"] = "MaskRCNN" if cfg.get("roi_head", {}).get("mask_head") else "FasterRCNN"
            cfg["test_cfg"] = {k: v for k, v in cfg.get("test_cfg", {}).items() if k in ("rpn", "rcnn")}
        return cfg

    def evaluator(self, pseudo_ground_truth=None):
        return CocoEvaluator(self, pseudo_ground_truth)


class InstAdapter(DetAdapter):
    name = "inst"
    iou_type = "segm"

    def _check_model(self):
        if not (self.two_stage and getattr(self._model.roi_head, "with_mask", False)):
            raise UserError(f"task inst: the {type(self._model).__name__} model predicts no masks "
                            f"(a two-stage detector with a mask head is needed, e.g. Mask R-CNN)")


class CocoEvaluator(Evaluator):
    """mmdet's CocoMetric over the bound dataset's instances JSON (or a pseudo-GT JSON built from
    predictions on the uncompressed images), restricted to the images actually processed.

    Model labels are mapped to dataset categories by name (``adapter.label_map``); predictions of model
    classes the dataset does not have are dropped. No predictions at all is a legal outcome (a blank
    model, a very low rate): every metric is 0, with a ``note``. No ground-truth object in the images
    scored (label-free, when the model finds nothing confident on the originals): mAP is undefined,
    so the metrics are None, with a note."""

    def __init__(self, adapter: DetAdapter, pseudo_ground_truth=None, pseudo_score_thr: float = 0.5):
        from mmdet.evaluation.metrics import CocoMetric

        self.adapter, self.primary = adapter, adapter.primary_metric
        if pseudo_ground_truth is None:
            ann_file = adapter.dataset.annotations["instances"] if adapter.dataset is not None else None
            classes, self.label_map = adapter.dataset_classes, adapter.label_map
            cat_ids = sorted(c["id"] for c in adapter._coco.dataset["categories"])
        else:
            ann_file = self._pseudo_json(adapter, pseudo_ground_truth, pseudo_score_thr)
            classes = adapter.model_classes
            self.label_map, cat_ids = list(range(len(classes))), list(range(1, len(classes) + 1))
        with openmmlab.quiet():
            self.metric = CocoMetric(ann_file=str(ann_file), metric=[adapter.iou_type], format_only=False)
        if pseudo_ground_truth is not None:  # CocoMetric has read it; do not leave it in /tmp
            shutil.rmtree(ann_file.parent, ignore_errors=True)
        self.metric.dataset_meta = {"classes": tuple(classes)}
        self.metric.cat_ids = cat_ids  # label index -> category id exactly, not via a name lookup
        self.ids: list[int] = []
        self.kept = self.dropped = 0  # predictions that reached the metric / of classes the dataset lacks

    @staticmethod
    def _pseudo_json(adapter, pseudo, thr):
        """A COCO instances JSON of the confident predictions on the uncompressed images; its
        categories are the model's classes (ids 1..C), its images the dataset's records."""
        records = {r["id"]: r for r in adapter.dataset.images} if adapter.dataset is not None else {}
        images, anns = [], []
        for img_id, p in pseudo.items():
            r = records.get(img_id, {"width": 0, "height": 0})
            images.append({"id": int(img_id), "width": r["width"], "height": r["height"],
                           "file_name": Path(r.get("file_name", str(img_id))).name})
            for k in np.flatnonzero(p["scores"] >= thr):
                x1, y1, x2, y2 = map(float, p["bboxes"][k])
                ann = {"id": len(anns) + 1, "image_id": int(img_id), "category_id": int(p["labels"][k]) + 1,
                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                if "masks" in p:
                    from pycocotools import mask as mask_utils

                    ann["segmentation"] = p["masks"][k]
                    ann["area"] = float(mask_utils.area({**p["masks"][k], "counts": p["masks"][k]["counts"].encode()}))
                anns.append(ann)
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(adapter.model_classes)]
        tmp = Path(tempfile.mkdtemp(prefix="icm-pseudo-")) / "instances.json"
        tmp.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
        return tmp

    def process(self, predictions, samples):
        lut = np.array([-1 if d is None else d for d in self.label_map], np.int64)
        data = []
        for p, s in zip(predictions, samples):
            labels = lut[p["labels"]] if len(p["labels"]) else np.zeros(0, np.int64)
            keep = labels >= 0  # a model class the dataset does not have: nothing to score it against
            pred = {"bboxes": torch.from_numpy(p["bboxes"][keep]), "scores": torch.from_numpy(p["scores"][keep]),
                    "labels": torch.from_numpy(labels[keep])}
            if "masks" in p:
                pred["masks"] = [{**m, "counts": m["counts"].encode()} for m, k in zip(p["masks"], keep) if k]
            data.append({"img_id": s["id"], "ori_shape": (s["height"], s["width"]), "pred_instances": pred})
            self.ids.append(s["id"])
            self.kept += int(keep.sum())
            self.dropped += int((~keep).sum())
        self.metric.process({}, data)

    def compute(self):
        names = self.adapter.metrics
        if not self.kept:  # CocoMetric would return no metrics at all here
            why = f"only predictions of classes the dataset does not have ({self.dropped})" if self.dropped \
                else "no predictions"
            return {**{k: 0.0 for k in names}, "note": f"{why} at this point: scored 0"}
        self.metric.img_ids = sorted(set(self.ids))
        with openmmlab.quiet():
            res = self.metric.compute_metrics(self.metric.results)
        out = {k: float(v) for k, v in res.items() if not isinstance(v, str)}
        if out.get(self.primary, 0.0) < 0:  # pycocotools' -1: no ground-truth object in the images scored
            return {**{k: None for k in out}, "note": "no ground-truth objects in the images scored: mAP undefined"}
        return out


class PanopticAdapter(MMDetAdapter):
    name = "panoptic"
    default_config = "model/panoptic_fpn_r18_tiny_shapes_panoptic.py"  # det's model, the R-CNN at score 0.5

    def bind(self, dataset):
        for cached in ("panoptic_categories", "panoptic_label_map"):
            self.__dict__.pop(cached, None)
        return super().bind(dataset)

    def _check_model(self):
        if not (hasattr(self._model, "semantic_head") and hasattr(self._model, "panoptic_fusion_head")):
            raise UserError(f"task panoptic: the {type(self._model).__name__} model is not a panoptic model "
                            f"(a semantic head and a panoptic fusion head are needed, e.g. PanopticFPN)")

    def check(self, label_free=False):
        self._check_model()
        if not label_free:
            self.panoptic_label_map  # noqa: B018 (annotations present, classes matched by name: or one line now)

    @property
    def things_stuff(self) -> tuple[int, int]:
        head = self._model.panoptic_fusion_head
        return int(head.num_things_classes), int(head.num_stuff_classes)

    @property
    def panoptic_classes(self) -> list[str]:
        """The model's panoptic label order: thing classes, then stuff classes (mmdet's convention)."""
        th, st = self.things_stuff
        meta = getattr(self._model, "dataset_meta", {}) or {}
        things, stuff = list(meta.get("thing_classes") or []), list(meta.get("stuff_classes") or [])
        if len(things) == th and len(stuff) == st:
            return things + stuff
        names = list(meta.get("classes") or [])
        return names if len(names) == th + st else [f"class{i}" for i in range(th + st)]

    @cached_property
    def panoptic_categories(self) -> list[dict]:
        """The dataset's panoptic categories (``id``, ``name``, ``isthing``) in ascending id order."""
        if self.dataset is None or not {"panoptic_json", "panoptic_dir"} <= set(self.dataset.annotations):
            name = self.dataset.name if self.dataset is not None else "no dataset bound"
            raise UserError(f"task panoptic: the dataset ({name}) has no COCO panoptic annotations "
                            f"(panoptic_json, panoptic_dir); without labels use --label-free")
        categories = json.loads(Path(self.dataset.annotations["panoptic_json"]).read_text()).get("categories", [])
        return sorted(categories, key=lambda c: c["id"])

    @cached_property
    def panoptic_label_map(self) -> list[int | None]:
        """Model panoptic label -> index into :attr:`panoptic_categories`, matched by name."""
        return match_classes(self.name, self.panoptic_classes, [c["name"] for c in self.panoptic_categories],
                             self.class_map)

    def predict(self, batch):
        feats, samples, results = self._instances(batch)
        # as mmdet's TwoStagePanopticSegmentor.predict: every instance the R-CNN kept (its score_thr) is fused
        with torch.no_grad(), openmmlab.scope("mmdet"):
            seg = self._model.semantic_head.predict(feats, [s.metainfo for s in samples], rescale=True)
            pans = self._model.panoptic_fusion_head.predict(results, seg)
        return [{"panoptic": p.sem_seg[0].cpu().numpy().astype(np.int32)} for p in pans]

    def library_test(self, images):
        """mmdet's test loop: its CocoPanopticDataset, test pipeline and the PanopticFPN's own predict.
        Its CocoPanopticMetric needs panopticapi, which is not on PyPI: the loop's predictions are
        scored by icm's PQ (checked against panopticapi's pq_compute_single_core in this plugin's tests)."""
        from icm.tasks import LibraryTest

        ann = self.dataset.annotations["panoptic_json"]
        listed = json.loads(Path(ann).read_text())["images"]
        files = [str(self.dataset.images_dir / im["file_name"]) for im in listed]
        th, _ = self.things_stuff
        names = self.panoptic_classes
        dataset = dict(type="CocoPanopticDataset", data_root="", ann_file=str(ann),
                       data_prefix=dict(img=f"{self.dataset.images_dir}/", seg=f"{self.dataset.annotations['panoptic_dir']}/"),
                       metainfo=dict(classes=tuple(names), thing_classes=tuple(names[:th]), stuff_classes=tuple(names[th:])),
                       test_mode=True, indices=openmmlab.subset_positions(files, [s["file_name"] for s in images]),
                       pipeline=[dict(type="LoadImageFromFile")] + self.pipeline.steps)
        got, _ = openmmlab.run_library_test(self, images, dataset, None,
            lambda d: (d["img_id"], {"panoptic": d["pred_panoptic_seg"]["sem_seg"][0].cpu().numpy().astype(np.int32)}))
        return LibraryTest(dict(got), {}, note="mmdet's CocoPanopticMetric needs panopticapi (not on PyPI): "
                                               "the loop's predictions are scored by icm's PQ")

    def evaluator(self, pseudo_ground_truth=None):
        from icm_mmdet.panoptic_quality import PanopticEvaluator

        return PanopticEvaluator(self, pseudo_ground_truth)

