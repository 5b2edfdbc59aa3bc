"""mmpose adapter: top-down keypoint estimation with ground-truth boxes (the COCO "GT bbox" protocol).

The adapter cuts the person (``figure``) boxes out of the decoded pixels itself with
``torchvision.ops.roi_align`` (differentiable, unlike mmpose's cv2 ``TopdownAffine``), so ``loss``
reaches the pixels; predict decodes the heatmaps with the config's mmpose codec and maps the
keypoints back through the crop transform.

Boxes, in this order: boxes set by :meth:`PoseAdapter.set_boxes` (a pseudo-ground-truth evaluator
sets them from the pseudo labels, so predictions on decoded images use the same boxes), the bound
dataset's COCO keypoints JSON, and otherwise one box covering the whole image.

Crop geometry (pixel centres at integer coordinates, the keypoint convention): a COCO box
``[x, y, w, h]`` covers ``[x, x + w)`` in continuous coordinates; it is expanded by ``box_padding``
around its centre and made square (side ``s``). With ``roi_align(aligned=True)`` crop pixel ``j``
samples image coordinate ``u = x1 - 0.5 + (j + 0.5) * s / 64``, which is inverted exactly for the
targets and the predictions.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icm.errors import UserError
from icm.tasks import Batch, Evaluator, TaskAdapter
import icm_openmmlab as openmmlab

DEFAULT_CONFIG = "model/simplebaseline_r18_tiny_shapes_pose.py"
DEFAULT_WEIGHTS = "model/simplebaseline_r18_tiny_shapes_pose.pth"


class PoseAdapter(openmmlab.OpenMMLabAdapter, TaskAdapter):
    name = "pose"  # metrics: its registration (plugin.py)
    library, default_config, default_weights = "mmpose", DEFAULT_CONFIG, DEFAULT_WEIGHTS
    # the back end read by icm evaluate on icm-omni-features / hevc-features files (configs/train/icm_omni_features_backend_*.toml)
    feature_backends = {"resnet18w32.layer1": "model/simplebaseline_r18_tiny_shapes_pose.features.pth"}
    box_padding = 1.25  # mmpose's GetBBoxCenterScale padding (the test pipeline's, when it names one)
    own_geometry = ("GetBBoxCenterScale", "TopdownAffine")  # the crops are the adapter's own (see _crop)
    dense_scale = 2.0  # features/objectness without boxes: upsample the image to the crops' typical scale
    pseudo_score_thr = 0.3  # pseudo ground truth: keypoints scored above this count as labelled (v=2)
    jitter = (0.1, 0.8, 1.25)  # training: box centre shift (fraction of the side), side scale range

    def __init__(self, config=None, checkpoint=None, device=None, train=False):
        super().__init__(config, checkpoint, device, train)
        if train and not checkpoint:  # mmpose's own init (the head's final layer near zero); no downloads
            from mmengine.logging import MMLogger

            logger = MMLogger.get_current_instance()
            level = logger.level
            logger.setLevel("WARNING")  # init_weights logs every parameter at INFO
            try:
                with openmmlab.scope("mmpose"):
                    self._model.init_weights()
            finally:
                logger.setLevel(level)
        self.device = next(self._model.parameters()).device
        self.codec = self._model.head.decoder
        if self.codec is None:
            raise UserError("task pose: the config's head has no decoder (codec)")
        self.input_size = tuple(int(v) for v in self.codec.input_size)  # (w, h)
        if self.input_size[0] != self.input_size[1]:
            raise UserError(f"task pose: square crops only (codec input_size {self.input_size})")
        for step in self.pipeline.steps:
            if step["type"] == "GetBBoxCenterScale":
                self.box_padding = float(step.get("padding", 1.25))
        self._gt_source = None
        self._gt: dict[int, list[dict]] = {}
        self._boxes: dict[int, tuple[np.ndarray, list]] = {}

    def bind(self, dataset):
        super().bind(dataset)
        self._boxes = {}
        return self

    # -- metadata and ground truth -------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        meta = dict(self.cfg.get("dataset_meta", {}) or {})
        if self.dataset is not None:
            meta.update({k: v for k, v in self.dataset.meta.items() if k in ("keypoint_names", "flip_pairs", "sigmas",
                                                                               "skeleton", "keypoint_category")})
        return meta

    @property
    def num_keypoints(self) -> int:
        return int(self._model.head.out_channels)

    def _flip_index(self) -> list[int]:
        index = list(range(self.num_keypoints))
        for a, b in self.meta.get("flip_pairs", []):
            index[a], index[b] = b, a
        return index

    def _keypoints_json(self) -> Path | None:
        if self.dataset is None:
            return None
        return self.dataset.annotations.get("keypoints")

    def _ground_truth(self) -> dict[int, list[dict]]:
        """image id -> the keypoint annotations (not crowd, with labelled keypoints) of the bound dataset."""
        path = self._keypoints_json()
        if path is None:
            return {}
        if self._gt_source != path:
            try:
                coco = json.loads(Path(path).read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"task pose: cannot read {path} ({exc})") from None
            gt: dict[int, list[dict]] = {}
            for a in coco.get("annotations", []):
                if a.get("iscrowd", 0) or not a.get("num_keypoints", 1) or "keypoints" not in a:
                    continue
                gt.setdefault(a["image_id"], []).append(a)
            self._gt, self._gt_source = gt, path
        return self._gt

    def set_boxes(self, boxes: dict[int, dict] | None) -> None:
        """Use these person boxes for the given image ids: id -> {"boxes": (P, 4) xywh, "ann_ids": [...]}
        (a pose prediction has both). ``None`` clears them. Cleared by :meth:`bind`."""
        self._boxes = {} if boxes is None else {
            int(i): (np.asarray(b["boxes"], np.float32).reshape(-1, 4), list(b.get("ann_ids", range(len(b["boxes"])))))
            for i, b in boxes.items()}

    def boxes_for(self, sample: dict) -> tuple[np.ndarray, list]:
        """(P, 4) xywh boxes and their annotation ids for one image record."""
        if sample["id"] in self._boxes:
            return self._boxes[sample["id"]]
        if self._keypoints_json() is not None:
            anns = self._ground_truth().get(sample["id"], [])
            return np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4), [a["id"] for a in anns]
        return np.array([[0, 0, sample["width"], sample["height"]]], np.float32), [None]

    # -- crops ---------------------------------------------------------------------------------------
    def _squares(self, boxes: np.ndarray, jitter: bool = False) -> np.ndarray:
        """xywh boxes -> square regions (x1, y1, side) padded by ``box_padding``, optionally jittered."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        cx, cy = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
        side = np.maximum(np.maximum(boxes[:, 2], boxes[:, 3]), 1.0) * self.box_padding
        if jitter:
            shift, lo, hi = self.jitter
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))  # follows torch.manual_seed
            cx = cx + rng.uniform(-shift, shift, len(side)) * side
            cy = cy + rng.uniform(-shift, shift, len(side)) * side
            side = side * np.exp(rng.uniform(np.log(lo), np.log(hi), len(side)))
        return np.stack([cx - side / 2, cy - side / 2, side], 1).astype(np.float32)

    def _crop(self, x01: torch.Tensor, image_index: list[int], squares: np.ndarray) -> torch.Tensor:
        """Differentiable crops (P, 3, S, S) of the [0, 1] images, normalised for the model.

        A feature reader crops the split tensor instead (stride r = ``input_stride``): (P, C, S/r, S/r)
        crops of the same squares, not normalised. Cell v of the split tensor is centred on image pixel
        r*v (ResNet stem: 7x7/2 conv and 3x3/2 max pool, centred); the squares are shifted by
        (r/2 - 1/2) * (1 - side/S) so crop cell v lands where the pixel crop's stride-r cell v would."""
        from torchvision.ops import roi_align

        r = self.input_stride
        size = self.input_size[0] // r
        rois = torch.zeros((len(squares), 5), dtype=x01.dtype, device=x01.device)
        if len(squares):
            sq = torch.as_tensor(squares, dtype=x01.dtype, device=x01.device)
            rois[:, 0] = torch.as_tensor(image_index, dtype=x01.dtype, device=x01.device)
            rois[:, 1:3] = sq[:, :2]
            rois[:, 3:5] = sq[:, :2] + sq[:, 2:3]
            if r != 1:
                rois[:, 1:5] += (r / 2 - 0.5) * (1 - sq[:, 2:3] / self.input_size[0])
        crops = roi_align(x01, rois, output_size=(size, size), spatial_scale=1.0 / r, sampling_ratio=-1, aligned=True)
        return crops if self.consumes == "features" else openmmlab.normalise(crops, self.cfg)

    def _to_crop(self, keypoints: np.ndarray, squares: np.ndarray) -> np.ndarray:
        """Image coordinates (P, K, 2) -> crop pixel coordinates."""
        scale = squares[:, 2] / self.input_size[0]
        return (keypoints + 0.5 - squares[:, None, :2]) / scale[:, None, None] - 0.5

    def _to_image(self, keypoints: np.ndarray, squares: np.ndarray) -> np.ndarray:
        scale = squares[:, 2] / self.input_size[0]
        return squares[:, None, :2] - 0.5 + (keypoints + 0.5) * scale[:, None, None]

    def _collect(self, batch: Batch, jitter: bool = False):
        """All boxes of the batch: (image index per box, squares (P, 3), boxes (P, 4), ann ids per image)."""
        index, squares, boxes, ann_ids = [], [], [], []
        for i, s in enumerate(batch.samples):
            b, ids = self.boxes_for(s)
            index += [i] * len(b)
            squares.append(self._squares(b, jitter))
            boxes.append(b)
            ann_ids.append(ids)
        return index, np.concatenate(squares) if squares else np.zeros((0, 3), np.float32), boxes, ann_ids

    def _inputs(self, x):
        return x.to(self.device).float()

    @property
    def _mirrors(self) -> bool:
        """Whether flip test and training flips apply: to pixels only. A mirrored split tensor is not
        the split tensor of the mirrored image (the stem's kernels are not symmetric)."""
        return self.consumes == "pixels"

    # -- TaskAdapter ---------------------------------------------------------------------------------
    def heatmaps(self, crops: torch.Tensor) -> torch.Tensor:
        """Normalised crops (P, 3, S, S) -> heatmaps (P, K, S/4, S/4)."""
        with openmmlab.scope("mmpose"):
            return self._model.head.forward(self._model.extract_feat(crops))

    def predict(self, batch: Batch):
        if self.consumes == "features":
            return self._predict_crops(batch)
        return self._library_predict(batch)

    def _library_predict(self, batch: Batch):
        """mmpose's own top-down predict, one instance per box as its CocoDataset gives them: the test
        pipeline (GetBBoxCenterScale, TopdownAffine: a cv2 affine warp about the box centre), the data
        preprocessor, the config's flip test (``flip_mode``, ``shift_heatmap``) and the keypoints mapped
        back to the image, as in its test loop."""
        from icm_openmmlab.pipeline import to_uint8

        images = to_uint8(batch.images)
        rgbs, infos, boxes, ann_ids = [], [], [], []
        for i, s in enumerate(batch.samples):
            b, ids = self.boxes_for(s)
            boxes.append(b)
            ann_ids.append(ids)
            for box, ann in zip(b, ids):
                rgbs.append(images[i])
                infos.append({**self.image_info(s), "id": ann, "flip_indices": self._flip_index(),
                              "bbox": self.library_box(box, s), "bbox_score": np.ones(1, np.float32)})
        keypoints = np.zeros((len(rgbs), self.num_keypoints, 2), np.float32)
        scores = np.zeros((len(rgbs), self.num_keypoints), np.float32)
        if rgbs:
            with torch.no_grad(), openmmlab.scope("mmpose"):
                inputs, samples = self.library_inputs(rgbs, infos)
                out = self._model.predict(inputs, samples)
            for p, o in enumerate(out):
                keypoints[p], scores[p] = o.pred_instances.keypoints[0], o.pred_instances.keypoint_scores[0]
        return self._per_image(keypoints, scores, boxes, ann_ids)

    @staticmethod
    def library_box(box, sample: dict) -> np.ndarray:
        """A COCO xywh box as mmpose's CocoDataset hands it to the pipeline: xyxy, clipped to the
        image's last pixel."""
        x, y, w, h = (float(v) for v in box)
        right, bottom = sample["width"] - 1, sample["height"] - 1
        return np.array([[np.clip(x, 0, right), np.clip(y, 0, bottom), np.clip(x + w, 0, right),
                          np.clip(y + h, 0, bottom)]], np.float32)

    def library_test(self, images):
        """mmpose's test loop: its CocoDataset (top-down, ground-truth boxes) over these images, its test
        pipeline, the model's own predict (flip test as configured) and its CocoMetric (OKS NMS,
        'bbox_keypoint' instance scores)."""
        from mmpose.evaluation import CocoMetric

        from icm.tasks import LibraryTest

        meta = self.meta
        names = list(meta.get("keypoint_names") or [f"kp{i}" for i in range(self.num_keypoints)])
        swap = {a: b for pair in meta.get("flip_pairs", []) for a, b in (pair, pair[::-1])}
        info = dict(dataset_name=self.dataset.name, joint_weights=[1.0] * len(names), sigmas=list(meta["sigmas"]),
                    keypoint_info={i: dict(name=n, id=i, color=[255, 128, 0], type="",
                                           swap=names[swap[i]] if i in swap else "") for i, n in enumerate(names)},
                    skeleton_info={i: dict(link=(names[a], names[b]), id=i, color=[96, 96, 255])
                                   for i, (a, b) in enumerate(meta.get("skeleton", []))})
        coco = json.loads(Path(self._keypoints_json()).read_text())
        wanted = {s["id"] for s in images}
        with tempfile.TemporaryDirectory(prefix="icm-pose-subset-") as tmp:
            ann = Path(tmp) / "keypoints.json"  # the images scored: mmpose's metric scores every image of its file
            ann.write_text(json.dumps({**coco, "images": [im for im in coco["images"] if im["id"] in wanted],
                                       "annotations": [a for a in coco["annotations"] if a["image_id"] in wanted]}))
            dataset = dict(type="CocoDataset", data_root="", ann_file=str(ann), data_mode="topdown", metainfo=info,
                           data_prefix=dict(img=f"{self.dataset.images_dir}/"), test_mode=True,
                           pipeline=[dict(type="LoadImage")] + self.pipeline.steps)
            with openmmlab.quiet():
                metric = CocoMetric(ann_file=str(ann))
            got, results = openmmlab.run_library_test(self, images, dataset, metric, _instance_prediction)
        by_image: dict[int, list] = {}
        for img_id, one in got:
            by_image.setdefault(img_id, []).append(one)
        records = {s["id"]: s for s in images}
        empty = self._per_image(np.zeros((0, self.num_keypoints, 2), np.float32),
                                np.zeros((0, self.num_keypoints), np.float32), [np.zeros((0, 4), np.float32)], [[]])[0]
        predictions = {s["id"]: empty for s in images}  # the loop has no sample for an image without a box
        for i, ones in by_image.items():
            boxes, ann_ids = self.boxes_for(records[i])  # the loop's boxes are clipped: keep the annotation's
            box_of = dict(zip(ann_ids, boxes))
            predictions[i] = {"keypoints": np.stack([o["keypoints"] for o in ones]),
                              "scores": np.stack([o["scores"] for o in ones]),
                              "boxes": np.stack([box_of[o["ann_id"]] for o in ones]).astype(np.float32),
                              "ann_ids": [o["ann_id"] for o in ones]}
        names_of = {"AP": "coco/AP", "AP50": "coco/AP .5", "AP75": "coco/AP .75", "AR": "coco/AR"}
        metrics = {k: float(results[v]) for k, v in names_of.items() if v in results}
        return LibraryTest(predictions, metrics, note="mmpose CocoMetric (unrounded)")

    @staticmethod
    def _per_image(keypoints, scores, boxes, ann_ids) -> list[dict]:
        out, start = [], 0
        for b, ids in zip(boxes, ann_ids):
            end = start + len(b)
            out.append({"keypoints": keypoints[start:end], "scores": scores[start:end], "boxes": b.astype(np.float32),
                        "ann_ids": list(ids)})
            start = end
        return out

    def _predict_crops(self, batch: Batch):
        """A feature reader's predict: crops of the split tensor (roi_align, see :meth:`_crop`), the
        keypoints decoded per crop (no flip test: a mirrored split tensor is not the mirror's)."""
        x = self._inputs(batch.images)
        index, squares, boxes, ann_ids = self._collect(batch)
        keypoints = np.zeros((len(squares), self.num_keypoints, 2), np.float32)
        scores = np.zeros((len(squares), self.num_keypoints), np.float32)
        if len(squares):
            with torch.no_grad():
                crops = self._crop(x, index, squares)
                heat = self.heatmaps(crops).float().cpu().numpy()
            for p in range(len(squares)):
                kp, sc = self.codec.decode(heat[p])
                keypoints[p], scores[p] = kp[0], sc[0]
            keypoints = self._to_image(keypoints, squares).astype(np.float32)
        return self._per_image(keypoints, scores, boxes, ann_ids)

    def loss(self, decoded, batch):
        """KeypointMSELoss between the heatmaps of the crops and MSRA targets of the ground truth.
        In training mode the boxes are jittered and half the crops mirrored (with left/right swapped)."""
        if self._keypoints_json() is None:
            raise UserError("task pose: the dataset has no COCO keypoints annotations (needed for the loss)")
        training = self._model.training
        x = self._inputs(decoded)
        gt = self._ground_truth()
        index, squares, kps = [], [], []
        for i, s in enumerate(batch.samples):  # always the dataset's own boxes, never set_boxes ones
            anns = gt.get(s["id"], [])
            index += [i] * len(anns)
            squares.append(self._squares(np.array([a["bbox"] for a in anns], np.float32), jitter=training))
            kps += [np.array(a["keypoints"], np.float32).reshape(-1, 3) for a in anns]
        squares = np.concatenate(squares)
        if not kps:  # no figure in the batch: a zero loss that still has a graph
            h, w = batch.image_size if self.consumes == "features" else x.shape[-2:]
            index, squares = [0], self._squares(np.array([[0, 0, w, h]], np.float32))
            kps = [np.zeros((self.num_keypoints, 3), np.float32)]
        kps = np.stack(kps)
        xy, visible = self._to_crop(kps[..., :2], squares), (kps[..., 2] > 0).astype(np.float32)
        crops = self._crop(x, index, squares)
        if training and self._mirrors:
            flip = torch.rand(len(squares)) < 0.5
            if flip.any():
                crops = torch.where(flip.view(-1, 1, 1, 1).to(crops.device), crops.flip(-1), crops)
                f = flip.numpy()
                xy[f, :, 0] = self.input_size[0] - 1 - xy[f, :, 0]
                xy[f] = xy[f][:, self._flip_index()]
                visible[f] = visible[f][:, self._flip_index()]
        targets, weights = [], []
        for p in range(len(squares)):
            enc = self.codec.encode(xy[p:p + 1], visible[p:p + 1])
            targets.append(enc["heatmaps"])
            weights.append(enc["keypoint_weights"][0])
        target = torch.from_numpy(np.stack(targets)).to(crops)
        weight = torch.from_numpy(np.stack(weights)).to(crops)
        with openmmlab.scope("mmpose"):
            return self._model.head.loss_module(self.heatmaps(crops), target, weight)

    def features(self, x, boxes=None):
        """Backbone feature maps (the four ResNet stages, strides 4-32 of the model input).

        With ``boxes`` (one (P, 4) xywh array per image, e.g. a prediction's ``boxes``): the maps of
        the 64x64 crops, stacked over all boxes in order. Without (the TaskAdapter call): the backbone
        run fully convolutionally on the whole image upsampled by ``dense_scale`` (about the scale the
        crops show figures at), one map per image.
        """
        with openmmlab.scope("mmpose"):
            return list(self._model.extract_feat(self._model_input(x, boxes)))

    def objectness(self, x, boxes=None):
        """The pose analogue of RPN objectness: the heatmap maximum over keypoints, clamped to [0, 1],
        (N, 1, h, w) max-pooled to each ``features`` level. Without ``boxes`` it is computed densely on
        the upsampled whole image, so it is an image-space map of "a keypoint is here" (computed at the
        heatmap stride, 1 image pixel with the shipped config); with ``boxes`` it is per crop."""
        with openmmlab.scope("mmpose"):
            feats = self._model.extract_feat(self._model_input(x, boxes))
            heat = self._model.head.forward(feats).amax(dim=1, keepdim=True).clamp(0, 1)
        return [F.adaptive_max_pool2d(heat, f.shape[-2:]) if heat.shape[-2] >= f.shape[-2]
                else F.interpolate(heat, size=f.shape[-2:], mode="bilinear", align_corners=False) for f in feats]

    def _model_input(self, x, boxes):
        x = self._inputs(x)
        if boxes is None:
            if self.dense_scale != 1:  # a feature reader upsamples the split tensor alike
                x = F.interpolate(x, scale_factor=self.dense_scale, mode="bilinear", align_corners=False)
            return x if self.consumes == "features" else openmmlab.normalise(x, self.cfg)
        index = [i for i, b in enumerate(boxes) for _ in range(len(np.asarray(b).reshape(-1, 4)))]
        squares = self._squares(np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]))
        return self._crop(x, index, squares)

    def evaluator(self, pseudo_ground_truth=None):
        if pseudo_ground_truth is not None:
            self.set_boxes(pseudo_ground_truth)
        return KeypointEvaluator(self, pseudo_ground_truth)


class KeypointEvaluator(Evaluator):
    """COCO keypoint AP with xtcocotools' COCOeval (iouType 'keypoints', the dataset's sigmas, OKS scale =
    the annotation's area), over the images processed. Against the bound dataset's keypoints JSON, or
    a temporary one built from pseudo ground truth (keypoints scored above ``pseudo_score_thr`` are
    labelled visible, the rest unlabelled; area = box area). The instance score is mmpose's: the mean
    of the keypoint scores above 0.2. Metrics are fractions in [0, 1]; NaN when no image processed has
    a labelled instance."""

    keypoint_score_thr = 0.2

    def __init__(self, adapter: PoseAdapter, pseudo_ground_truth=None):
        self.adapter, self.primary = adapter, adapter.primary_metric
        meta = adapter.meta
        if "sigmas" not in meta:
            raise UserError("task pose: no keypoint sigmas in the dataset meta or the config's dataset_meta")
        self.sigmas = np.asarray(meta["sigmas"], np.float64)
        if pseudo_ground_truth is not None:
            self.ann_file = self._pseudo_json(adapter, pseudo_ground_truth)
            # read lazily by compute(); removed with the evaluator, not left in /tmp
            weakref.finalize(self, shutil.rmtree, self.ann_file.parent, True)
        else:
            self.ann_file = adapter._keypoints_json()
            if self.ann_file is None:
                raise UserError("task pose: the dataset has no COCO keypoints annotations; use pseudo ground truth")
        self.results: list[dict] = []
        self.ids: list[int] = []

    @staticmethod
    def _categories(adapter) -> list[dict]:
        path = adapter._keypoints_json()
        if path is not None:
            return json.loads(Path(path).read_text())["categories"]
        meta = adapter.meta
        names = meta.get("keypoint_names") or [f"kp{i}" for i in range(adapter.num_keypoints)]
        return [{"id": 1, "name": meta.get("keypoint_category", "person"), "keypoints": list(names),
                 "skeleton": [[a + 1, b + 1] for a, b in meta.get("skeleton", [])]}]

    @staticmethod
    def _pseudo_json(adapter, pseudo) -> Path:
        category = KeypointEvaluator._categories(adapter)[0]
        records = {r["id"]: r for r in adapter.dataset.images} if adapter.dataset is not None else {}
        images, anns = [], []
        for img_id, p in pseudo.items():
            r = records.get(img_id, {"file_name": str(img_id), "width": 0, "height": 0})
            images.append({"id": int(img_id), "file_name": Path(r["file_name"]).name, "width": r["width"],
                           "height": r["height"]})
            for k in range(len(p["boxes"])):
                labelled = np.asarray(p["scores"][k]) > adapter.pseudo_score_thr
                kps = np.concatenate([np.asarray(p["keypoints"][k], np.float64), 2.0 * labelled[:, None]], 1)
                kps[~labelled] = 0
                x, y, w, h = map(float, p["boxes"][k])
                anns.append({"id": len(anns) + 1, "image_id": int(img_id), "category_id": category["id"],
                             "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                             "keypoints": [float(v) for v in kps.ravel()], "num_keypoints": int(labelled.sum())})
        tmp = Path(tempfile.mkdtemp(prefix="icm-pseudo-")) / "person_keypoints.json"
        tmp.write_text(json.dumps({"images": images, "annotations": anns, "categories": [category]}))
        return tmp

    def process(self, predictions, samples):
        cat_id = self._category_id
        for p, s in zip(predictions, samples):
            self.ids.append(int(s["id"]))
            for k in range(len(p["keypoints"])):
                sc = np.asarray(p["scores"][k], np.float64)
                good = sc > self.keypoint_score_thr
                kps = np.concatenate([np.asarray(p["keypoints"][k], np.float64), sc[:, None]], 1)
                self.results.append({"image_id": int(s["id"]), "category_id": cat_id,
                                     "keypoints": [float(v) for v in kps.ravel()],
                                     "score": float(sc[good].mean()) if good.any() else 0.0})

    @property
    def _category_id(self) -> int:
        if not hasattr(self, "_cat"):
            self._cat = int(json.loads(Path(self.ann_file).read_text())["categories"][0]["id"])
        return self._cat

    def compute(self):
        from xtcocotools.coco import COCO
        from xtcocotools.cocoeval import COCOeval

        nan = {k: float("nan") for k in self.adapter.metrics}
        with contextlib.redirect_stdout(io.StringIO()):  # xtcocotools prints progress and tables
            gt = COCO(str(self.ann_file))
            ids = sorted(set(self.ids) & set(gt.getImgIds()))
            labelled = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=ids)) if a.get("num_keypoints", 0) > 0
                        and not a.get("iscrowd", 0)]
            if not labelled:
                return nan
            wanted = set(ids)
            results = [r for r in self.results if r["image_id"] in wanted]
            if not results:
                return {k: 0.0 for k in self.adapter.metrics}
            dt = gt.loadRes(results)
            ev = COCOeval(gt, dt, "keypoints", self.sigmas, use_area=True)
            ev.params.imgIds = ids
            ev.params.useSegm = None
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        s = ev.stats
        return {"AP": float(s[0]), "AP50": float(s[1]), "AP75": float(s[2]), "AR": float(s[5])}


def _instance_prediction(d: dict) -> tuple[int, dict]:
    """One instance of mmpose's test loop (a data sample as a dict) -> (image id, its keypoints)."""
    inst = d["pred_instances"]
    return d["img_id"], {"keypoints": np.asarray(inst["keypoints"], np.float32)[0],
                         "scores": np.asarray(inst["keypoint_scores"], np.float32)[0], "ann_id": d.get("id")}
