"""Running a model on decoded pixels as its library's own test loop does.

mmengine's ``Runner.test()`` loads each image, runs the config's test pipeline (resize, pad, crop,
the top-down affine of mmpose), packs it, and hands the batch to the model's data preprocessor
(normalisation, padding to a size divisor) before ``predict``. icm does the same with the library's
own transform classes and data preprocessor, on the decoded pixels instead of a file, so an
uncompressed image gives exactly the library's number (the plugins' parity tests check it against
``Runner.test()``). Resizes are mmcv's (cv2 on uint8): a float resize would not give the same pixels.

Only steps whose job is geometry or packing are run; loading is icm's (the decoded pixels, the
dataset's annotations). Any other step is refused in one line before anything is coded, never
skipped in silence.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from icm.errors import UserError
from icm_openmmlab.models import scope

# What the library would load from files: icm hands over the decoded pixels and reads annotations itself.
LOADING = {"LoadImageFromFile", "LoadImageFromNDArray", "LoadImage", "LoadAnnotations", "LoadPanopticAnnotations",
           "LoadImageFromNpyFile"}
PACKING = {"PackDetInputs", "PackSegInputs", "PackPoseInputs", "PackInputs", "PackClsInputs"}
# Deterministic geometry, run with the library's own classes.
GEOMETRY = {"Resize", "Pad", "ResizeEdge", "CenterCrop", "GetBBoxCenterScale", "TopdownAffine", "FixShapeResize"}
DEFAULT_PACK = {"mmdet": "PackDetInputs", "mmseg": "PackSegInputs", "mmpose": "PackPoseInputs",
                "mmpretrain": "PackInputs"}
WHY_NOT = {"RandomResize": "it draws a random size", "TestTimeAug": "test-time augmentation is not supported",
           "RandomFlip": "it flips at random", "RandomCrop": "it crops at random"}


def configured_steps(cfg) -> list[dict] | None:
    """The test pipeline of an mmengine config: ``test_dataloader.dataset.pipeline`` (through wrapper
    datasets), else ``test_pipeline``; None when the config has neither."""
    loader = cfg.get("test_dataloader") or {}
    ds = loader.get("dataset") if isinstance(loader, dict) else None
    while isinstance(ds, dict) and "pipeline" not in ds and isinstance(ds.get("dataset"), dict):
        ds = ds["dataset"]
    if isinstance(ds, dict) and ds.get("pipeline") is not None:
        return [dict(s) for s in ds["pipeline"]]
    if cfg.get("test_pipeline") is not None:
        return [dict(s) for s in cfg["test_pipeline"]]
    return None


def is_identity(step: dict) -> bool:
    """A geometric step that leaves the pixels as they are (``Resize(scale_factor=1.0)``, which only
    records the scale factor mmdet's ``rescale`` reads)."""
    if step.get("type") != "Resize" or step.get("scale") is not None:
        return False
    factor = step.get("scale_factor")
    return factor is not None and all(float(f) == 1.0 for f in (factor if isinstance(factor, (tuple, list)) else [factor]))


class TestPipeline:
    """The geometric and packing steps of a config's test pipeline, built from the library's registry.

    ``task`` names the task in refusals. A config without a test pipeline gets the library's packing
    step alone: the model reads the image at its native size (icm's behaviour for such configs)."""

    __test__ = False  # not a pytest class

    def __init__(self, cfg, lib: str, task: str):
        steps = configured_steps(cfg)
        self.declared = steps is not None
        steps = steps if steps is not None else [{"type": DEFAULT_PACK[lib]}]
        for step in steps:
            kind = step.get("type")
            if kind in LOADING | PACKING | GEOMETRY:
                continue
            why = WHY_NOT.get(kind, "not a geometric step icm runs on decoded pixels")
            raise UserError(f"task {task}: test pipeline step {kind} cannot be run on decoded pixels ({why}); "
                            f"icm runs {', '.join(sorted(GEOMETRY))} and the loading/packing steps")
        packs = [s for s in steps if s["type"] in PACKING] or [{"type": DEFAULT_PACK[lib]}]
        self.steps = [s for s in steps if s["type"] in GEOMETRY] + packs[-1:]
        self.geometry = [s["type"] for s in self.steps[:-1] if not is_identity(s)]
        self.lib = lib
        registry = importlib.import_module(f"{lib}.registry").TRANSFORMS
        with scope(lib):
            try:
                self.transforms = [registry.build(dict(s)) for s in self.steps]
            except Exception as exc:
                raise UserError(f"task {task}: cannot build the test pipeline ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200]})") from None

    @property
    def native(self) -> bool:
        """True when the model reads the pixels as decoded: no step changes their size or content."""
        return not self.geometry

    def __call__(self, rgb: np.ndarray, **info) -> dict:
        """One decoded image (H, W, 3 uint8 RGB) through the steps; ``info`` adds what the library's
        dataset would have put in the results (img_id, bbox, ...). Returns the packed
        ``{"inputs": CHW uint8 tensor, "data_samples": ...}``."""
        h, w = rgb.shape[:2]
        # OpenMMLab loads BGR (cv2); its data preprocessor flips to RGB when the config says bgr_to_rgb
        results = {"img": np.ascontiguousarray(rgb[..., ::-1]), "img_shape": (h, w), "ori_shape": (h, w), **info}
        with scope(self.lib):
            for t in self.transforms:
                results = t(results)
                if results is None:
                    raise UserError(f"test pipeline step {type(t).__name__} dropped an image")
        return results


    # -- the differentiable path ----------------------------------------------------------------------
    def trace(self, hw: tuple[int, int], skip: tuple[str, ...] = ()) -> "Geometry":
        """What the geometric steps (but ``skip``) do to an image of size ``hw``, read off the library's
        own transforms run on a blank image of that size: sizes, crop offsets, padding, scale factor."""
        h, w = hw
        results = {"img": np.zeros((h, w, 3), np.uint8), "img_shape": (h, w), "ori_shape": (h, w),
                   "scale_factor": (1.0, 1.0)}
        ops = []
        with scope(self.lib):
            for step, t in zip(self.steps[:-1], self.transforms[:-1]):
                if step["type"] in skip or is_identity(step):
                    continue
                before = results["img"].shape[:2]
                results = t(results)
                ops.append((step, before, results["img"].shape[:2]))
        return Geometry(ops, tuple(results.get("scale_factor", (1.0, 1.0))), tuple(results["img_shape"][:2]), (h, w))


class Geometry:
    """The geometric steps of a test pipeline for one input size, in torch on [0, 1] pixels, so the
    losses and features ``icm train`` reads see the pixels the evaluation's model sees. Resizes are
    torch's bilinear (within a grey level of cv2's fixed-point one, which the evaluation uses)."""

    MODES = {"bilinear": "bilinear", "nearest": "nearest", "bicubic": "bicubic"}

    def __init__(self, ops: list, scale_factor: tuple, img_shape: tuple, input_hw: tuple):
        self.ops, self.scale_factor, self.img_shape = ops, scale_factor, img_shape
        # the size after the last resize or crop, before any padding: where ground truth is mapped to
        sizes = [after for step, _, after in ops if step["type"] != "Pad"]
        self.resized = tuple(sizes[-1]) if sizes else tuple(input_hw)

    @property
    def crops(self) -> bool:
        return any(step["type"] == "CenterCrop" for step, *_ in self.ops)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        for step, (h0, w0), (h1, w1) in self.ops:
            kind = step["type"]
            if kind == "CenterCrop":  # mmcv's offsets: round((size - crop) / 2)
                y0, x0 = max(0, int(round((h0 - h1) / 2.0))), max(0, int(round((w0 - w1) / 2.0)))
                x = x[..., y0:y0 + h1, x0:x0 + w1]
            elif kind == "Pad":
                value = step.get("pad_val", 0)
                value = value.get("img", 0) if isinstance(value, dict) else value
                if isinstance(value, (tuple, list)):  # per-channel: pad with 0, then fill (BGR order in mmcv)
                    out = x.new_zeros((*x.shape[:-2], h1, w1))
                    out[..., :, :] = torch.tensor(value[::-1], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
                    out[..., :h0, :w0] = x
                    x = out
                else:
                    x = F.pad(x, (0, w1 - w0, 0, h1 - h0), value=float(value) / 255)
            elif (h1, w1) != (h0, w0):  # Resize, ResizeEdge, FixShapeResize
                mode = self.MODES.get(step.get("interpolation", "bilinear"), "bilinear")
                x = F.interpolate(x, size=(h1, w1), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
        return x


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) [0, 1] pixels -> (N, H, W, 3) uint8, as the decoded file holds them."""
    return images.detach().mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def preprocess(model, packed: list[dict]):
    """The model's data preprocessor on packed samples, as ``model.test_step`` calls it: (inputs, samples)."""
    data = model.data_preprocessor({"inputs": [p["inputs"] for p in packed],
                                    "data_samples": [p["data_samples"] for p in packed]}, False)
    return data["inputs"], data["data_samples"]
