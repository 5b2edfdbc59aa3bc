"""mmpretrain adapter: ``cls``, single-label image classification scored with mmpretrain's Accuracy.

The adapter calls the classifier's parts (backbone, neck, head) itself on pixels normalised by hand,
so gradients reach the decoded pixels and any image size works (global average pooling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icm.errors import UserError
from icm.tasks import Batch, Evaluator, TaskAdapter, match_classes
import icm_openmmlab as openmmlab

DEFAULT_CONFIG = "model/resnet18_tiny_shapes_cls.py"
DEFAULT_WEIGHTS = "model/resnet18_tiny_shapes_cls.pth"


class ClsAdapter(openmmlab.OpenMMLabAdapter, TaskAdapter):
    """Image classification. Predictions are ``{"scores": float32 (C,) softmax, "label": int}``.

    Metrics: ``top1`` and ``top5``, fractions in [0, 1]. ``top5`` is top-k accuracy with
    k = min(5, C): with fewer than 5 classes (``shapes`` has 4) it is trivially 1.0, and the evaluator
    also reports it under its honest name ``top{k}`` (``top4`` on shapes).
    """

    name = "cls"  # metrics: its registration (plugin.py)
    library, default_config, default_weights = "mmpretrain", DEFAULT_CONFIG, DEFAULT_WEIGHTS
    # the back end read by icm evaluate on icm-omni-features / hevc-features files (configs/train/icm_omni_features_backend_*.toml)
    feature_backends = {"resnet18w32.layer1": "model/resnet18_tiny_shapes_cls.features.pth"}

    def __init__(self, config=None, checkpoint=None, device=None, train=False):
        super().__init__(config, checkpoint, device, train)
        self._labels_cache: dict[Path, dict[Path, int]] = {}

    @property
    def num_classes(self) -> int:
        return int(self._model.head.num_classes)

    @property
    def classes(self) -> list[str]:
        names = (self.dataset.meta.get("classification_classes") if self.dataset is not None else None) or []
        return list(names) if len(names) == self.num_classes else [f"class{i}" for i in range(self.num_classes)]

    @property
    def model_classes(self) -> list[str]:
        """The model's class names (its dataset_meta); ``class0``... when unnamed."""
        names = list((getattr(self._model, "dataset_meta", {}) or {}).get("classes") or [])
        return names if len(names) == self.num_classes else [f"class{i}" for i in range(self.num_classes)]

    def label_map(self) -> list[int | None] | None:
        """Model class index -> dataset label index, matched by name; None when the dataset names no
        classes (``meta["classification_classes"]``): its label indices are then the model's."""
        names = self.dataset.meta.get("classification_classes") if self.dataset is not None else None
        if not names:
            return None
        return match_classes(self.name, self.model_classes, list(names), self.class_map)

    def check(self, label_free=False):
        if not label_free:
            self._labels()  # the dataset has labels: or one line now
            self.label_map()

    # -- ground truth --------------------------------------------------------------------------------
    def _labels(self) -> dict[Path, int]:
        """{image path relative to dataset.root: label} from the bound dataset's classification list."""
        if self.dataset is None or "classification" not in self.dataset.annotations:
            raise UserError(f"task {self.name}: the dataset has no classification annotations")
        path = Path(self.dataset.annotations["classification"])
        if path not in self._labels_cache:
            labels = {}
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rel, label = line.rsplit(maxsplit=1)
                    labels[Path(rel)] = int(label)
                except ValueError:
                    raise UserError(f"{path}:{n}: expected 'relative/path label_index', got {line!r}") from None
            self._labels_cache[path] = labels
        return self._labels_cache[path]

    def label_of(self, sample: dict) -> int:
        root = Path(self.dataset.root).resolve() if self.dataset is not None else None
        path = Path(sample["file_name"]).resolve()
        labels = self._labels()
        rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        if rel not in labels:
            raise UserError(f"task {self.name}: no classification label for {sample['file_name']}")
        label = labels[rel]
        if not 0 <= label < self.num_classes:
            raise UserError(f"task {self.name}: label {label} of {rel} is outside 0..{self.num_classes - 1}")
        return label

    # -- model stages ---------------------------------------------------------------------------------
    def _inputs(self, x):
        """Normalised pixels; a feature reader's split tensor as it is (no padding either: the
        classifier pools globally, and padding would change the average)."""
        if self.consumes == "features":
            return x.to(self.device)
        x = self.geometry(tuple(x.shape[-2:]))(x.to(self.device))  # the test pipeline's resize and crop
        return openmmlab.normalise(x, self.cfg)

    def _stages(self, inputs) -> tuple[torch.Tensor, ...]:
        feats = self._model.backbone(inputs)
        return tuple(feats) if isinstance(feats, (list, tuple)) else (feats,)

    def _logits(self, stages) -> torch.Tensor:
        feats = self._model.neck(stages) if self._model.with_neck else stages
        return self._model.head(feats)

    def features(self, x):
        """Backbone stage outputs (strides 4, 8, 16, 32 for the shipped ResNet)."""
        self.check_differentiable("features")
        return list(self._stages(self._inputs(x)))

    def objectness(self, x):
        """The classification analogue of RPN objectness: a class-agnostic activation map.

        The channel mean of the last backbone stage (the activations the pooled classifier reads),
        min-max normalised to [0, 1] per image, then resized to every ``features`` level, so one
        (N, 1, h, w) map per level as the interface asks.
        """
        self.check_differentiable("objectness")
        stages = self._stages(self._inputs(x))
        cam = stages[-1].mean(dim=1, keepdim=True)
        lo = cam.amin(dim=(2, 3), keepdim=True)
        hi = cam.amax(dim=(2, 3), keepdim=True)
        cam = (cam - lo) / (hi - lo).clamp_min(1e-6)
        return [cam if f.shape[-2:] == cam.shape[-2:] else
                F.interpolate(cam, size=f.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1) for f in stages]

    def loss(self, decoded, batch):
        """The head's own cross-entropy against the dataset labels; random horizontal flips (labels
        are flip-invariant) while the model is in training mode, of pixels only (a feature reader's
        split tensor is not flipped: the flipped tensor is not the split tensor of the flipped image)."""
        from mmpretrain.structures import DataSample

        self.check_differentiable("the task loss")
        x = decoded.to(self.device)
        if self._model.training and self.consumes == "pixels":  # a mirrored split tensor is not the mirror's
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        samples = [DataSample().set_gt_label(self.label_of(s)) for s in batch.samples]
        for s in samples:
            s.gt_label = s.gt_label.to(self.device)
        stages = self._stages(self._inputs(x))
        feats = self._model.neck(stages) if self._model.with_neck else stages
        with openmmlab.scope("mmpretrain"):
            losses = self._model.head.loss(feats, samples)
        return sum(v for k, v in losses.items() if "loss" in k)

    def predict(self, batch: Batch):
        if self.consumes == "pixels":  # mmpretrain's own predict: test pipeline, data preprocessor, softmax
            from icm_openmmlab.pipeline import to_uint8

            with torch.no_grad(), openmmlab.scope("mmpretrain"):
                inputs, samples = self.library_inputs(to_uint8(batch.images), [self.image_info(s) for s in batch.samples])
                out = self._model.predict(inputs, samples)
            scores = [o.pred_score.float().cpu().numpy() for o in out]
            return [{"scores": sc.astype(np.float32), "label": int(sc.argmax())} for sc in scores]
        with torch.no_grad():
            scores = F.softmax(self._logits(self._stages(self._inputs(batch.images))), dim=1)
        scores = scores.float().cpu().numpy()
        return [{"scores": s.astype(np.float32), "label": int(s.argmax())} for s in scores]

    def library_test(self, images):
        """mmpretrain's test loop: a CustomDataset over the classification list, its test pipeline, the
        model's own predict and Accuracy (top-1, percent, unrounded)."""
        from mmpretrain.evaluation import Accuracy

        from icm.tasks import LibraryTest

        root = Path(self.dataset.root)
        ann = Path(self.dataset.annotations["classification"])
        listed = [str((root / line.rsplit(maxsplit=1)[0]).resolve()) for line in ann.read_text().splitlines() if line.strip()]
        wanted = [str(Path(s["file_name"]).resolve()) for s in images]
        dataset = dict(type="CustomDataset", data_root=str(root), ann_file=str(ann.resolve()), data_prefix="",
                       with_label=True, metainfo=dict(classes=tuple(self.model_classes)), test_mode=True,
                       indices=openmmlab.subset_positions(listed, wanted),
                       pipeline=[dict(type="LoadImageFromFile")] + self.pipeline.steps)
        ids = dict(zip(wanted, (s["id"] for s in images)))

        def convert(d):
            scores = d["pred_score"].float().cpu().numpy().astype(np.float32)
            return ids[str(Path(d["img_path"]).resolve())], {"scores": scores, "label": int(scores.argmax())}

        got, results = openmmlab.run_library_test(self, images, dataset, Accuracy(topk=(1,)), convert)
        return LibraryTest(dict(got), {"top1": float(results["accuracy/top1"]) / 100}, note="Accuracy: top-1 only")

    def evaluator(self, pseudo_ground_truth=None):
        return AccuracyEvaluator(self, pseudo_ground_truth)


class AccuracyEvaluator(Evaluator):
    """mmpretrain's Accuracy with topk=(1, min(5, C)); metrics as fractions in [0, 1].

    Against the bound dataset's labels, or, with ``pseudo_ground_truth`` (image id -> prediction on
    the uncompressed image), against those predictions' labels.
    """

    def __init__(self, adapter: ClsAdapter, pseudo_ground_truth=None):
        from mmpretrain.evaluation import Accuracy

        self.adapter, self.pseudo, self.primary = adapter, pseudo_ground_truth, adapter.primary_metric
        # labelled: model scores are summed into the dataset's classes they are matched to (by name)
        self.label_map = adapter.label_map() if pseudo_ground_truth is None else None
        n = adapter.num_classes if self.label_map is None else len(adapter.dataset.meta["classification_classes"])
        self.n = n
        self.k = min(5, n)
        self.topk = (1, self.k) if self.k > 1 else (1,)
        self.metric = Accuracy(topk=self.topk)

    def _target(self, sample) -> int:
        if self.pseudo is not None:
            return int(self.pseudo[sample["id"]]["label"])
        return self.adapter.label_of(sample)

    def process(self, predictions, samples):
        from mmpretrain.structures import DataSample

        data = [DataSample().set_pred_score(torch.as_tensor(self._scores(p["scores"])))
                .set_gt_label(self._target(s)).to_dict() for p, s in zip(predictions, samples)]
        self.metric.process({}, data)

    def _scores(self, scores) -> np.ndarray:
        scores = np.asarray(scores, np.float32)
        if self.label_map is None:
            return scores
        out = np.zeros(self.n, np.float32)
        for m, d in enumerate(self.label_map):
            if d is not None:
                out[d] += scores[m]
        return out

    def compute(self):
        if not self.metric.results:
            raise UserError("cls: no predictions to evaluate")
        res = self.metric.compute_metrics(self.metric.results)
        top1 = res["top1"] / 100.0
        topk = res[f"top{self.k}"] / 100.0 if self.k > 1 else top1
        out = {"top1": float(top1), "top5": float(topk)}
        if self.k != 5:
            out[f"top{self.k}"] = float(topk)  # what "top5" really is with fewer than 5 classes
        return out
