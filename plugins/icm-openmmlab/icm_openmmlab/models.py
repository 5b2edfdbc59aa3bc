"""The one place icm touches mmengine's registry scopes, config loading and checkpoint loading.

Facts this wraps (see the stack notes): scopes clash across mmdet/mmseg/mmpose/mmpretrain in one
process and a nested type silently resolves in the *current default* scope, so every model is built
inside its own library's scope; mmengine 0.10.7 calls torch.load without weights_only, so icm loads
checkpoints itself; init_cfg/pretrained entries download at init_weights() time, so they are cleared.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import json
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch

from icm.errors import UserError

SCOPES = {"mmdet": "mmdet.utils", "mmseg": "mmseg.utils", "mmpose": "mmpose.utils", "mmpretrain": "mmpretrain.utils"}
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


@contextmanager
def scope(lib: str):
    """Build and run ``lib`` models with ``lib`` as mmengine's default scope."""
    from mmengine.registry import DefaultScope

    importlib.import_module(SCOPES[lib]).register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(lib):
        yield


@contextmanager
def quiet():
    """Silence what OpenMMLab metrics and pycocotools print (tables, 'loading annotations...'):
    icm reports metrics itself, and the CLI output must stay readable."""
    import contextlib
    import io
    import logging

    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def load_config(config, lib: str):
    """An mmengine Config from a path or a dict; a missing or broken file is a one-line UserError."""
    from mmengine.config import Config

    if isinstance(config, dict):
        return Config(copy.deepcopy(config))
    path = Path(config)
    if not path.is_file():
        raise UserError(f"config {path}: no such file")
    try:
        return Config.fromfile(str(path))
    except Exception as exc:
        raise UserError(f"config {path}: cannot load ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def strip_downloads(cfg) -> None:
    """Remove init_cfg/pretrained entries that would download weights at init time (offline machine)."""

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("init_cfg"), dict) and node["init_cfg"].get("type") == "Pretrained":
                node["init_cfg"] = None
            if isinstance(node.get("pretrained"), str):
                node["pretrained"] = None
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    walk(cfg.model)


@functools.lru_cache(maxsize=None)
def _plugin_version(package: str) -> str:
    """The installed version of the distribution that holds ``package`` (how it runs models is its code)."""
    from importlib import metadata

    names = metadata.packages_distributions().get(package) or []
    try:
        return metadata.version(names[0]) if names else ""
    except metadata.PackageNotFoundError:
        return ""


def read_state_dict(checkpoint: str) -> dict:
    """Load a checkpoint (local path or URL) with weights_only=True and return its state dict.

    A URL goes through torch.hub's cache; offline it fails with a clear message. Checkpoints whose
    ``meta`` holds numpy objects (all mmpose ones) load because numpy's reconstructors are
    allow-listed; arbitrary classes never are.
    """
    import numpy as np

    if "://" in str(checkpoint):
        cached = Path(torch.hub.get_dir()) / "checkpoints" / str(checkpoint).rsplit("/", 1)[1]
        if not cached.is_file():
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(str(checkpoint), str(cached), progress=False)
            except Exception as exc:
                raise UserError(f"cannot download checkpoint {checkpoint} ({type(exc).__name__}); offline? "
                                f"download it elsewhere and pass its local path") from None
        checkpoint = cached
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    safe = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype("float64")), np.float64]
    try:
        with torch.serialization.safe_globals([g for g in safe if g is not None]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path}: cannot load safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path}: no state dict of tensors in it")
    return state


def build_model(cfg, lib: str, checkpoint: str | None, device=None, strict: bool = True) -> torch.nn.Module:
    """Build ``cfg.model`` in ``lib``'s scope, load weights, freeze, and move to ``device``.

    The model gets ``dataset_meta`` (at least ``classes`` when known, see :func:`dataset_meta`), so
    adapters can match its classes to a dataset's by name."""
    from mmengine.registry import MODELS

    strip_downloads(cfg)
    with scope(lib):
        try:
            model = MODELS.build(cfg.model)
        except Exception as exc:
            raise UserError(f"cannot build the {lib} model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if checkpoint:
        state = read_state_dict(checkpoint)
        check_fit(model, state, f"checkpoint {checkpoint} does not fit the {lib} config", strict)
        model.load_state_dict(state, strict=False)
    model.cfg = cfg
    model.dataset_meta = dataset_meta(cfg, lib, checkpoint)
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return freeze(model.to(device))


def check_fit(model: torch.nn.Module, state: dict, what: str, strict: bool = True) -> None:
    """One line instead of torch's size-mismatch traceback: how many keys are missing, unexpected or of
    the wrong shape, the first few of each named. Wrong shapes always fail; missing and unexpected keys
    only when ``strict``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong or (strict and (missing or unexpected)):
        parts = [f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("of the wrong shape, checkpoint vs model", wrong)) if keys]
        raise UserError(f"{what}: {len(own)} keys in the model; " + "; ".join(parts))


def dataset_meta(cfg, lib: str, checkpoint: str | None = None) -> dict:
    """What the model was trained on: ``meta.dataset_meta`` of an mmengine checkpoint, else the config's
    ``metainfo`` (top level, or in the test/val/train dataset), else the ``METAINFO`` of the config's
    dataset type (stock COCO configs: the 80 COCO classes). ``{}`` when nothing names the classes."""
    meta = _checkpoint_meta(checkpoint) if checkpoint else {}
    if meta.get("classes"):
        return meta
    candidates = [cfg.get("metainfo")]
    for loader in ("test_dataloader", "val_dataloader", "train_dataloader"):
        ds = (cfg.get(loader) or {}).get("dataset") or {}
        while isinstance(ds, dict) and "dataset" in ds and "metainfo" not in ds:  # RepeatDataset & co.
            ds = ds["dataset"]
        if isinstance(ds, dict):
            candidates.append(ds.get("metainfo"))
            candidates.append(_registered_metainfo(ds.get("type"), lib))
    for c in candidates:
        if c and c.get("classes"):
            return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(c).items()}
    return {}


def _checkpoint_meta(checkpoint) -> dict:
    """``meta['dataset_meta']`` of a local mmengine checkpoint (mmap'ed, tensors not read), or {}."""
    import numpy as np

    path = Path(str(checkpoint))
    if "://" in str(checkpoint):
        path = Path(torch.hub.get_dir()) / "checkpoints" / str(checkpoint).rsplit("/", 1)[1]
    safe = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype("float64")), np.float64]
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        meta = ckpt.get("meta", {}).get("dataset_meta", {}) if isinstance(ckpt, dict) else {}
        return dict(meta) if isinstance(meta, dict) else {}
    except Exception:  # old pickle format, no meta: the config is asked next
        return {}


def _registered_metainfo(dataset_type, lib: str):
    if not isinstance(dataset_type, str):
        return None
    try:
        with scope(lib):  # the library's own registry: the root one does not look into children
            cls = importlib.import_module(f"{lib}.registry").DATASETS.get(dataset_type)
    except Exception:
        return None
    return getattr(cls, "METAINFO", None)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """eval() + no parameter gradients; losses still flow into the *input* pixels."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def normalise(x01: torch.Tensor, cfg) -> torch.Tensor:
    """[0,1] RGB (N,3,H,W) -> the normalised input the config's data preprocessor would produce.

    Done by hand (not through the data preprocessor) so gradients reach the decoded pixels and no
    padding to a training crop size happens. OpenMMLab loads images as BGR; ``bgr_to_rgb``/``to_rgb``
    in the config says the model itself consumes RGB, otherwise it consumes BGR.
    """
    dp = cfg.model.get("data_preprocessor", {}) or {}
    consumes_rgb = dp.get("bgr_to_rgb", dp.get("to_rgb", False))
    x = x01 * 255.0
    if not consumes_rgb:
        x = x.flip(1)
    # a data preprocessor without mean/std does not normalise (YOLOX reads raw 0-255 pixels); only a
    # config without any data preprocessor gets the ImageNet statistics
    default_mean, default_std = (MEAN, STD) if not dp else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    mean = torch.tensor(dp.get("mean") or default_mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(dp.get("std") or default_std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    # contiguous NCHW: an NHWC-permuted batch stays channels_last through the arithmetic, and mmcv's
    # CPU RoIAlign reads raw memory as NCHW (silently wrong boxes and masks otherwise)
    return ((x - mean) / std).contiguous()


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
        from icm.openmmlab_pipeline import TestPipeline

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
                           _plugin_version(self._package())], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def geometry(self, hw: tuple[int, int]):
        """The test pipeline's geometric steps (but the adapter's own) for images of size ``hw``, as a
        differentiable torch transform (:class:`~icm.openmmlab_pipeline.Geometry`); one per size."""
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
        """Decoded images (uint8 RGB, see :func:`~icm.openmmlab_pipeline.to_uint8`) as the library's
        test loop would feed them: each through the test pipeline, with ``infos`` adding what the
        library's dataset puts in the results (img_id, a pose box, ...), then the model's data
        preprocessor. Returns (inputs, data_samples)."""
        from icm.openmmlab_pipeline import preprocess

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


# The split tensors OpenMMLab ResNets can read: the output of res layer ``layer`` (0 = layer1) with
# ``channels`` channels at ``stride`` image pixels per cell.
FEATURE_SPLITS = {"resnet18w32.layer1": dict(layer=0, channels=32, stride=4)}


def reads_split(backbone, spec: dict) -> bool:
    """Whether ``backbone`` is an mmdet/mmseg/mmpose/mmpretrain ResNet whose res layer ``spec["layer"]``
    outputs ``spec["channels"]`` channels at ``spec["stride"]`` (stem stride 4, layers of stride 1 up to it)."""
    import torch.nn as nn

    layers = getattr(backbone, "res_layers", None)
    if not layers or not hasattr(backbone, "out_indices") or len(layers) <= spec["layer"] + 1:
        return False
    if any(0 <= i < spec["layer"] for i in backbone.out_indices):  # outputs before the split: not computable
        return False
    strides = tuple(getattr(backbone, "strides", ()))
    if spec["stride"] != 4 or getattr(backbone, "maxpool", None) is None or \
            any(s != 1 for s in strides[:spec["layer"] + 1]):
        return False
    convs = [m for m in getattr(backbone, layers[spec["layer"]]).modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and convs[-1].out_channels == spec["channels"]


def backend_parameters(backbone, layer: int) -> set[int]:
    """ids of the backbone parameters a feature-fed backbone uses: those of the res layers after ``layer``."""
    return {id(p) for name in backbone.res_layers[layer + 1:] for p in getattr(backbone, name).parameters()}


class FeatureFedBackbone:
    """The forward of an OpenMMLab ResNet (mmdet, mmseg, mmpose and mmpretrain's are the same: stem,
    then each res layer, collecting the outputs at ``out_indices``) fed with the output of res layer
    ``layer`` instead of pixels: the stem and the layers up to ``layer`` are skipped, the input is
    that layer's output (returned itself where ``out_indices`` include ``layer``), the following
    layers run as usual. ``install`` puts it in place of ``backbone.forward`` without changing the
    module tree, so the state dict (and any checkpoint of the whole model) is unchanged."""

    def __init__(self, backbone, layer: int = 0):
        self.backbone, self.layer = backbone, layer

    @classmethod
    def install(cls, backbone, layer: int = 0) -> "FeatureFedBackbone":
        fed = backbone.__dict__.get("forward")
        if not isinstance(fed, cls):  # a shared reader model is installed once
            fed = cls(backbone, layer)
            backbone.forward = fed  # an instance attribute: nn.Module.__call__ runs it
        return fed

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bb, x, outs = self.backbone, f, []
        for i, name in enumerate(bb.res_layers):
            if i > self.layer:
                x = getattr(bb, name)(x)
            if i >= self.layer and i in bb.out_indices:
                outs.append(x)
        return tuple(outs)

    __call__ = forward


def run_library_test(adapter, images: list[dict], dataset: dict, metric, convert, model_cfg=None):
    """mmengine's ``Runner.test()`` (the library's own test loop) on ``dataset`` (a dataset config
    over ``images``, whose pipeline is the library's) with the adapter's model and weights, scored by ``metric`` (a
    metric instance of the library, or None). ``convert`` turns each of the loop's data samples (as dicts)
    into what the adapter collects (for example ``(image id, prediction)``). Returns (the converted
    samples in the loop's order, the metric's results). ``model_cfg`` replaces the adapter's model config (its weights must fit it)."""
    import tempfile
    import uuid

    from mmengine.config import ConfigDict
    from mmengine.evaluator import BaseMetric, Evaluator
    from mmengine.runner import Runner

    class Capture(BaseMetric):  # keeps what the loop predicted, so icm can score it too
        default_prefix = "icm"

        def process(self, data_batch, data_samples):
            self.results.extend(convert(d) for d in data_samples)

        def compute_metrics(self, results):
            self.captured = results
            return {}

    capture = Capture()
    # icm batches images of one size; so does the loop then (a mixed batch would be padded to its largest)
    batch_size = 8 if len({(s["height"], s["width"]) for s in images}) == 1 else 1
    cfg = model_cfg if model_cfg is not None else adapter.cfg.model
    cfg = ConfigDict(cfg.to_dict() if hasattr(cfg, "to_dict") else copy.deepcopy(dict(cfg)))
    with tempfile.TemporaryDirectory(prefix="icm-library-test-") as work, scope(adapter.library), quiet():
        runner = Runner(model=cfg, work_dir=work, experiment_name=f"icm-library-test-{uuid.uuid4().hex[:8]}",
                        test_dataloader=dict(batch_size=batch_size, num_workers=0, dataset=dataset,
                                             sampler=dict(type="DefaultSampler", shuffle=False)),
                        test_cfg=dict(type="TestLoop"), test_evaluator=Evaluator([m for m in (metric, capture) if m is not None]),
                        default_scope=adapter.library, log_level="WARNING",
                        default_hooks=dict(logger=dict(type="LoggerHook", interval=10**9)))
        state = adapter.model.state_dict()
        check_fit(runner.model, state, "the library test's model", strict=False)
        runner.model.load_state_dict(state, strict=False)
        results = runner.test()
    return list(capture.captured), results


def subset_positions(paths_in_order: list[str], wanted: list[str]) -> list[int]:
    """Positions of ``wanted`` in a library dataset's own order (its ``indices`` argument), so its loop
    runs on exactly the images icm scores."""
    where = {str(p): i for i, p in enumerate(paths_in_order)}
    missing = [w for w in wanted if str(w) not in where]
    if missing:
        raise UserError(f"the library's dataset does not list {missing[0]} ({len(missing)} image(s) missing)")
    return [where[str(w)] for w in wanted]
