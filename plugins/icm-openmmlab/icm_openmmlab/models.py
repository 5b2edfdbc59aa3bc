"""The one place icm touches mmengine's registry scopes, config loading and checkpoint loading.

Facts this wraps (see the stack notes): scopes clash across mmdet/mmseg/mmpose/mmpretrain in one
process and a nested type silently resolves in the *current default* scope, so every model is built
inside its own library's scope; mmengine 0.10.7 calls torch.load without weights_only, so icm loads
checkpoints itself; init_cfg/pretrained entries download at init_weights() time, so they are cleared.
"""

from __future__ import annotations

import copy
import functools
import importlib
from contextlib import contextmanager
from pathlib import Path

import torch

from icm.distributed import default_device
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
def plugin_version(package: str) -> str:
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
    return freeze(model.to(default_device(device)))


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
