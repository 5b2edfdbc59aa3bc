"""The base class of the OpenMMLab task adapters, and one forward shared by the adapters of one model."""

from __future__ import annotations

import copy
import hashlib
import json
import weakref
from pathlib import Path

import torch

from icm.errors import UserError
from icm_openmmlab.features import FEATURE_SPLITS, FeatureFedBackbone, backend_parameters, reads_split
from icm_openmmlab.models import build_model, load_config, normalise, plugin_version, scope
from icm_openmmlab.pipeline import TestPipeline, preprocess

_SHARED_MODELS: "weakref.WeakValueDictionary[tuple, torch.nn.Module]" = weakref.WeakValueDictionary()


def shared_forward(adapter, batch, compute):
    """``compute()`` once per batch for every adapter on the same shared model: the result is kept on
    the model with the batch it was computed for, and handed out while that same Batch object comes
    back. Only for inference (no_grad) outputs."""
    memo = adapter.model.__dict__.setdefault("_icm_forward_memo", {})
    if memo.get("batch") is not batch:
        memo.clear()  # a strong reference: the id of a live batch cannot be reused by another one
        memo.update(batch=batch, out=compute())
    return memo["out"]


class OpenMMLabAdapter:
    """Shared constructor of the OpenMMLab task adapters: any config + checkpoint (path or URL), or
    the shipped config and weights when no config is given; ``train=True`` starts from scratch.
    Subclasses set ``library`` (mmdet, mmseg, mmpose, mmpretrain), ``default_config`` and
    ``default_weights`` (paths inside the adapter's own package, so they ship in its wheel), and
    ``feature_backends`` ({split: path inside the package}) for the back ends they ship.

    Feature reading (:meth:`feature_reader`) is shared too: a model whose backbone is a ResNet with
    a 32-channel layer1 reads the split tensor of ``icm-omni-features`` in place of its own layer1
    output (:class:`FeatureFedBackbone`)."""

    library = ""
    default_config = ""
    default_weights = ""
    feature_backends: dict[str, str] = {}  # split -> back-end weights shipped in the package (model/....pth)
    input_stride = 1  # image pixels per cell of what the model reads: 1 for pixels, the split's stride for features
    _reader_split: str | None = None  # set on a feature reader before its constructor runs (its forward_key)

    def __init__(self, config=None, checkpoint=None, device=None, train=False):
        from icm.paths import package_file

        super().__init__()
        self._shipped_model = config is None and checkpoint is None  # only its back ends fit feature_backends
        if config is None:
            config = package_file(self._package(), self.default_config)
            checkpoint = checkpoint or (None if train else str(package_file(self._package(), self.default_weights)))
        self._config_source = config  # what feature_reader builds its new adapter from
        self.cfg = load_config(config, self.library)
        # Adapters built from the same config file and checkpoint share one frozen model (det, inst and
        # panoptic on the shipped PanopticFPN: one load, and one forward per batch, see forward_key).
        # Feature readers share among themselves (per split), never with the pixel model.
        self.forward_key = None if train or isinstance(config, dict) else \
            (self.library, str(Path(config).resolve()), str(checkpoint), str(device))
        if self.forward_key and self._reader_split:
            self.forward_key += ("features", self._reader_split)
        model = _SHARED_MODELS.get(self.forward_key) if self.forward_key else None
        if model is None:
            model = build_model(self.cfg, self.library, checkpoint, device)
            if self.forward_key:
                _SHARED_MODELS[self.forward_key] = model
        self._model = model
        self.device = next(self._model.parameters()).device
        # refused here (before anything is coded) when a step cannot run on decoded pixels
        self.pipeline = TestPipeline(self.cfg, self.library, self.name or type(self).__name__)

    @classmethod
    def _package(cls) -> str:
        return cls.__module__.split(".")[0]

    @property
    def model(self):
        return self._model

    # Pipeline steps the adapter's differentiable path (loss, features, objectness) reproduces itself
    # in torch; any other geometry in the test pipeline is refused there (see check_differentiable).
    own_geometry: tuple[str, ...] = ()

    def settings_key(self) -> str:
        """Everything besides the weights that changes a prediction: the test pipeline and the model's
        config (test-time settings, data preprocessor); part of the prediction cache key."""
        text = json.dumps([self.pipeline.steps, self.cfg.model.to_dict(), type(self).__qualname__,
                           plugin_version(self._package())], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def geometry(self, hw: tuple[int, int]):
        """The test pipeline's geometric steps (but the adapter's own) for images of size ``hw``, as a
        differentiable torch transform (:class:`~icm_openmmlab.pipeline.Geometry`); one per size."""
        cache = self.__dict__.setdefault("_geometries", {})
        if tuple(hw) not in cache:
            cache[tuple(hw)] = self.pipeline.trace(tuple(hw), skip=self.own_geometry)
        return cache[tuple(hw)]

    def check_differentiable(self, what: str, crops: bool = True) -> None:
        """Feature readers cannot follow a pipeline that changes the pixels (a split tensor is not
        resized as the pixels would be), and ``crops=False`` paths (losses against ground truth that is
        not cropped with the image) cannot follow a crop: refused in one line, never run differently."""
        other = [g for g in self.pipeline.geometry if g not in self.own_geometry]
        if other and self.consumes == "features":
            raise UserError(f"task {self.name}: {what} of a feature reader cannot follow this config's test "
                            f"pipeline ({', '.join(other)}); use a config whose test pipeline keeps the native size")
        if not crops and "CenterCrop" in other:
            raise UserError(f"task {self.name}: {what} cannot follow the test pipeline's CenterCrop "
                            f"(its ground truth is not cropped)")

    def library_inputs(self, images, infos: list[dict]):
        """Decoded images (uint8 RGB, see :func:`~icm_openmmlab.pipeline.to_uint8`) as the library's
        test loop would feed them: each through the test pipeline, with ``infos`` adding what the
        library's dataset puts in the results (img_id, a pose box, ...), then the model's data
        preprocessor. Returns (inputs, data_samples)."""
        packed = [self.pipeline(rgb, **info) for rgb, info in zip(images, infos)]
        with scope(self.library):
            return preprocess(self._model, packed)

    @staticmethod
    def image_info(sample: dict) -> dict:
        return {"img_id": sample["id"], "img_path": str(sample["file_name"])}

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised model input: the test pipeline's geometry (:meth:`geometry`), then zero-padded
        (after normalisation, as the data preprocessors do) to a multiple of 32 at the bottom/right.
        A feature reader's input is the split tensor itself, not normalised, zero-padded to a multiple of
        32 / stride (8 for stride 4), so the padded image it stands for is a multiple of 32 as for pixels."""
        import torch.nn.functional as F

        features = getattr(self, "consumes", "pixels") == "features"
        if not features:  # the test pipeline's resize, crop and pad, differentiably
            x = self.geometry(tuple(x.shape[-2:]))(x.to(self.device))
        h, w = x.shape[-2:]
        multiple = 32 // self.input_stride
        ph, pw = (-h) % multiple, (-w) % multiple
        x = x.to(self.device) if features else normalise(x.to(self.device), self.cfg)
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def _image_hw(self, inputs: torch.Tensor) -> tuple[int, int]:
        """(H, W) in image pixels of a model input (the padded image the data samples describe):
        the input's own size for pixels, its size times the split's stride for features."""
        h, w = inputs.shape[-2:]
        return int(h) * self.input_stride, int(w) * self.input_stride

    # -- feature reading ------------------------------------------------------------------------------
    def feature_reader(self, split: str, checkpoint: str | None = None, train: bool = False):
        """This task reading the split tensor ``split`` (see ``TaskAdapter.feature_reader``): a new
        adapter of the same class and config whose backbone takes the split tensor as its layer1
        output (:class:`FeatureFedBackbone`). Weights: ``checkpoint`` (a whole-model checkpoint of this
        config; the stem and layer1 in it are not used), else the back end shipped in
        ``feature_backends``, else with ``train=True`` a copy of this adapter's own weights. With
        ``train=True`` the back end (backbone from layer2 on, neck, heads) has gradients and the model
        is private; without, readers of the same config and weights share one frozen model (never the
        pixel model). None for a split this model cannot read, or without any weights and train=False."""
        spec = FEATURE_SPLITS.get(split)
        if spec is None or not reads_split(getattr(self._model, "backbone", None), spec):
            return None
        if any(g not in self.own_geometry for g in self.pipeline.geometry):
            return None  # a split tensor cannot be resized as the pipeline resizes pixels: the pixels are read
        # train=True without a checkpoint starts from the pixel model, as the shipped back end did
        if checkpoint is None and not train and split in self.feature_backends and self._shipped_model:
            from icm.paths import package_file

            checkpoint = str(package_file(self._package(), self.feature_backends[split]))
        if checkpoint is None and not train:
            return None
        cls = type(self)
        reader = cls.__new__(cls)
        reader._reader_split = split
        reader.__init__(self._config_source, checkpoint, str(self.device), train)
        reader.consumes, reader.split, reader.input_stride = "features", split, spec["stride"]
        reader.class_map = dict(self.class_map)
        model = reader._model
        if checkpoint is None:  # train=True from the pixel model's own weights
            model.load_state_dict(self._model.state_dict())
            model.dataset_meta = copy.deepcopy(getattr(self._model, "dataset_meta", {}))
        FeatureFedBackbone.install(model.backbone, spec["layer"])
        if train:
            backend = backend_parameters(model.backbone, spec["layer"])
            for name, p in model.named_parameters():
                p.requires_grad_(not name.startswith("backbone.") or id(p) in backend)
        if self.dataset is not None:
            reader.bind(self.dataset)
        return reader
