"""mmseg adapter: ``seg`` (semantic segmentation, mIoU). The adapter calls the EncoderDecoder's stages
itself (normalise, backbone + neck, decode head) so gradients reach the pixels and no data
preprocessor pads to a training crop size."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icm.errors import UserError
from icm.tasks import Batch, Evaluator, TaskAdapter, match_classes
import icm_openmmlab as openmmlab

DEFAULT_CONFIG = "model/fpn_r18_tiny_shapes_seg.py"
DEFAULT_WEIGHTS = "model/fpn_r18_tiny_shapes_seg.pth"
IGNORE_INDEX = 255


class SegAdapter(openmmlab.OpenMMLabAdapter, TaskAdapter):
    name = "seg"  # metrics: its registration (plugin.py)
    library, default_config, default_weights = "mmseg", DEFAULT_CONFIG, DEFAULT_WEIGHTS
    # the back end read by icm evaluate on icm-omni-features / hevc-features files (configs/train/icm_omni_features_backend_*.toml)
    feature_backends = {"resnet18w32.layer1": "model/fpn_r18_tiny_shapes_seg.features.pth"}

    @property
    def num_classes(self) -> int:
        return self._model.decode_head.num_classes

    @property
    def model_classes(self) -> list[str]:
        """The model's class names (its dataset_meta); ``class0``... when unnamed."""
        names = list((getattr(self._model, "dataset_meta", {}) or {}).get("classes") or [])
        return names if len(names) == self.num_classes else [f"class{i}" for i in range(self.num_classes)]

    @property
    def dataset_classes(self) -> list[str] | None:
        """The names of the label values of the dataset's PNGs (``meta["semantic_classes"]``), if given."""
        names = self.dataset.meta.get("semantic_classes") if self.dataset is not None else None
        return list(names) if names else None

    @property
    def classes(self) -> list[str]:
        """The classes scored: the dataset's (labels), else the model's (label-free, or unnamed labels)."""
        return self.dataset_classes or self.model_classes

    @cached_property
    def label_lut(self) -> np.ndarray:
        """Model class index -> dataset label value (255 = a class the dataset does not have), matched by
        name. A dataset without class names is read by position, with a note in its metrics."""
        if self.dataset_classes is None:
            return np.arange(self.num_classes, dtype=np.int64)
        mapping = match_classes(self.name, self.model_classes, self.dataset_classes, self.class_map)
        return np.array([IGNORE_INDEX if d is None else d for d in mapping], np.int64)

    def check(self, label_free=False):
        if not label_free:
            if self.dataset is None or "semantic_dir" not in self.dataset.annotations:
                name = self.dataset.name if self.dataset is not None else "no dataset bound"
                raise UserError(f"task {self.name}: the dataset ({name}) has no semantic annotations (semantic_dir); "
                                f"without labels use --label-free")
            self.label_lut  # noqa: B018 (classes matched by name: or one line now)

    def bind(self, dataset):
        self.__dict__.pop("label_lut", None)
        return super().bind(dataset)

    # -- ground truth --------------------------------------------------------------------------------
    def ground_truth(self, sample: dict) -> np.ndarray:
        """The label map (HxW uint8, 255 = ignore) of ``sample`` from the bound dataset's semantic PNGs."""
        if self.dataset is None or "semantic_dir" not in self.dataset.annotations:
            name = self.dataset.name if self.dataset is not None else "no dataset bound"
            raise UserError(f"task {self.name}: the dataset ({name}) has no semantic annotations (semantic_dir)")
        from PIL import Image

        path = self.dataset.semantic_path(sample)
        try:
            with Image.open(path) as im:
                label = np.asarray(im)
        except FileNotFoundError:
            raise UserError(f"task {self.name}: no semantic label {path} for image {sample['file_name']}") from None
        except OSError as exc:
            raise UserError(f"task {self.name}: cannot read semantic label {path} ({exc})") from None
        if label.ndim != 2:
            raise UserError(f"task {self.name}: semantic label {path} is not single-channel (shape {label.shape})")
        if label.shape != (sample["height"], sample["width"]):
            raise UserError(f"task {self.name}: semantic label {path} is {label.shape[1]}x{label.shape[0]}, "
                            f"its image {sample['width']}x{sample['height']}")
        return label.astype(np.uint8)

    def _data_samples(self, batch: Batch, padded_hw, with_gt: bool):
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        out = []
        ph, pw = padded_hw
        h, w = batch.image_size  # the pixels' size (of the image a feature batch stands for)
        if self.consumes == "pixels":  # after the test pipeline's resize (labels are mapped the same way)
            h, w = self.geometry((h, w)).resized
        for s in batch.samples:
            ds = SegDataSample(metainfo=dict(img_id=s["id"], img_shape=(h, w), ori_shape=(s["height"], s["width"]),
                                             pad_shape=padded_hw, batch_input_shape=padded_hw))
            if with_gt:
                label = torch.from_numpy(self.ground_truth(s)).long()[None, None].float()
                if label.shape[-2:] != (h, w):  # pixels resized away from the original size
                    label = F.interpolate(label, size=(h, w), mode="nearest")
                label = F.pad(label, (0, pw - w, 0, ph - h), value=IGNORE_INDEX)
                ds.gt_sem_seg = PixelData(data=label[0].long().to(self.device))
            out.append(ds)
        return out

    # -- model stages ---------------------------------------------------------------------------------
    def features(self, x):
        """The FPN neck outputs (strides 4, 8, 16, 32; 64 channels each)."""
        self.check_differentiable("features")
        return list(self._model.extract_feat(self._inputs(x)))

    def logits(self, x):
        """Differentiable class logits (N, C, h, w) at the decode head's stride 4 (of the padded input)."""
        self.check_differentiable("logits")
        return self._model.decode_head(self._model.extract_feat(self._inputs(x)))

    def objectness(self, x):
        """Segmentation confidence, the seg analogue of RPN objectness: the max softmax probability over
        classes per location, (N, 1, h, w) at the logits resolution (stride 4). The interface asks for
        one map per ``features`` level, so the list holds that map followed by its average-pooled
        copies at the coarser neck levels (strides 8, 16, 32)."""
        self.check_differentiable("objectness")
        feats = self._model.extract_feat(self._inputs(x))
        conf = self._model.decode_head(feats).softmax(dim=1).amax(dim=1, keepdim=True)
        return [conf] + [F.adaptive_avg_pool2d(conf, f.shape[-2:]) for f in feats[1:]]

    def loss(self, decoded, batch):
        """mmseg's own decode-head loss (cross-entropy, 255 ignored) against the dataset's label maps."""
        self.check_differentiable("the task loss", crops=False)
        inputs = self._inputs(decoded)
        samples = self._data_samples(batch, self._image_hw(inputs), with_gt=True)
        with openmmlab.scope("mmseg"):
            losses = self._model.loss(inputs, samples)
        return sum(v if torch.is_tensor(v) else sum(v) for k, v in losses.items() if "loss" in k)

    def predict(self, batch):
        if self.consumes == "pixels":
            return self._library_predict(batch)
        h, w = batch.image_size
        with torch.no_grad():
            inputs = self._inputs(batch.images)
            logits = self._model.decode_head(self._model.extract_feat(inputs))
            logits = F.interpolate(logits, size=self._image_hw(inputs), mode="bilinear",
                                   align_corners=self._model.decode_head.align_corners)[..., :h, :w]
            preds = []
            for i, s in enumerate(batch.samples):
                li = logits[i:i + 1]
                if (s["height"], s["width"]) != (h, w):  # pixels resized away from the original size
                    li = F.interpolate(li, size=(s["height"], s["width"]), mode="bilinear", align_corners=False)
                preds.append({"sem_seg": li[0].argmax(0).cpu().numpy().astype(np.uint8)})
        return preds

    def _library_predict(self, batch):
        """mmseg's own predict: the test pipeline, the data preprocessor, ``test_cfg`` (whole or slide)
        and the logits resized back to the original image, as in its test loop."""
        from icm_openmmlab.pipeline import to_uint8

        with torch.no_grad(), openmmlab.scope("mmseg"):
            inputs, samples = self.library_inputs(to_uint8(batch.images), [self.image_info(s) for s in batch.samples])
            out = self._model.predict(inputs, samples)
        return [{"sem_seg": o.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)} for o in out]

    def library_test(self, images):
        """mmseg's test loop: a BaseSegDataset over the images and label PNGs, its test pipeline, the
        model's own predict (whole or slide) and IoUMetric (percent, 2 decimals)."""
        from mmseg.evaluation import IoUMetric

        from icm.tasks import LibraryTest

        ds = self.dataset
        suffix = ds.meta.get("image_suffix") or Path(images[0]["file_name"]).suffix
        files = sorted(str(s["file_name"]) for s in ds.images)  # mmseg lists the folder, sorted by path
        steps = self.pipeline.steps
        dataset = dict(type="BaseSegDataset", data_root="", test_mode=True, img_suffix=suffix,
                       seg_map_suffix=ds.meta.get("semantic_suffix", ".png"), metainfo=dict(classes=tuple(self.classes)),
                       data_prefix=dict(img_path=str(ds.images_dir), seg_map_path=str(ds.annotations["semantic_dir"])),
                       indices=openmmlab.subset_positions(files, [str(s["file_name"]) for s in images]),
                       pipeline=[dict(type="LoadImageFromFile"), *steps[:-1], dict(type="LoadAnnotations"), steps[-1]])
        ids = {str(s["file_name"]): s["id"] for s in images}
        got, results = openmmlab.run_library_test(self, images, dataset, IoUMetric(iou_metrics=["mIoU"]),
            lambda d: (ids[d["img_path"]], {"sem_seg": d["pred_sem_seg"]["data"][0].cpu().numpy().astype(np.uint8)}))
        metrics = {k: float(results[k]) / 100 for k in self.metrics if k in results}
        return LibraryTest(dict(got), metrics, rounding=0.00005, note="IoUMetric prints percent to 2 decimals")

    def evaluator(self, pseudo_ground_truth=None):
        return IoUEvaluator(self, pseudo_ground_truth)


class IoUEvaluator(Evaluator):
    """mmseg's IoUMetric over the bound dataset's label maps (or, label-free, over the adapter's own
    predictions on the uncompressed images). Metrics are fractions in [0, 1]."""

    def __init__(self, adapter: SegAdapter, pseudo_ground_truth=None):
        from mmseg.evaluation import IoUMetric

        self.adapter, self.pseudo, self.primary = adapter, pseudo_ground_truth, adapter.primary_metric
        self.metric = IoUMetric(ignore_index=IGNORE_INDEX, iou_metrics=["mIoU"], prefix="seg")
        # label-free, both sides are model class indices; else predictions become dataset label values
        self.lut = None if pseudo_ground_truth is not None else adapter.label_lut
        classes = adapter.model_classes if pseudo_ground_truth is not None else adapter.classes
        self.metric.dataset_meta = {"classes": tuple(classes)}

    def _ground_truth(self, sample):
        if self.pseudo is not None:
            try:
                return np.asarray(self.pseudo[sample["id"]]["sem_seg"])
            except KeyError:
                raise UserError(f"task seg: no pseudo ground truth for image {sample['id']}") from None
        return self.adapter.ground_truth(sample)

    def process(self, predictions, samples):
        data = []
        for p, s in zip(predictions, samples):
            pred = np.asarray(p["sem_seg"]).astype(np.int64)
            pred = torch.from_numpy(self.lut[pred] if self.lut is not None else pred)
            gt = torch.from_numpy(self._ground_truth(s).astype(np.int64))
            if gt.shape != pred.shape:
                raise UserError(f"task seg: prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} "
                                f"differ in size for image {s['id']}")
            data.append({"pred_sem_seg": {"data": pred[None]}, "gt_sem_seg": {"data": gt[None]}})
        self.metric.process({}, data)

    def compute(self):
        if not self.metric.results:
            return {m: float("nan") for m in self.adapter.metrics}
        with openmmlab.quiet():  # IoUMetric logs its per-class table
            res = self.metric.compute_metrics(self.metric.results)
        out = {k: round(float(res[k]) / 100.0, 6) for k in ("mIoU", "aAcc", "mAcc")}  # IoUMetric: percent
        if self.pseudo is None and self.adapter.dataset_classes is None:
            out["note"] = "the dataset names no classes (meta semantic_classes): label values read as model class indices"
        return out
