"""Loss terms for training codecs, each named as in the config's ``[losses]`` table.

A term is ``KIND`` or ``KIND:TASK``: ``rate``, ``mse``, ``task:T``, ``distill:T``,
``objectness_distill:T``, ``gtbox_distill:T``, ``cognition`` / ``cognition:T``. The kinds live in a
plain registry filled by the ``icm_register_losses`` hook (built-ins: icm/training/builtin_losses.py),
so a plugin adds a kind the same way. Every term is computed from a :class:`Context` (originals, the
codec output, the batch, the task adapters, the rate, and a per-batch cache so that what depends only
on the originals, or is shared by several terms, is computed once). A term returns a scalar or one
value per sample (``rate`` and ``mse`` do, so that per-sample rate factors apply). Formulas:
docs/training.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from icm.errors import UserError
from icm.registry import Registry
from icm.tasks import Batch, TaskAdapter


@dataclass
class Context:
    x: torch.Tensor  # originals (N, 3, H, W) in [0, 1]
    x_hat: torch.Tensor  # decoded, same size, not clamped (gradients flow)
    likelihoods: dict[str, torch.Tensor]
    batch: Batch
    adapters: dict[str, TaskAdapter]
    cache: dict = field(default_factory=dict)
    rate: float | torch.Tensor | None = None  # the batch's rate (continuous codecs): a float or one per sample
    clamp: bool = False  # the task models see x̂ clamped to [0, 1] (config `clamp_for_tasks`)
    out: dict = field(default_factory=dict)  # the codec's whole output (feature codecs: features, features_hat)
    module: torch.nn.Module | None = None  # the network being trained (a loss may run a second view through it)

    @property
    def x_task(self) -> torch.Tensor:
        """What the task models see of the decoded images."""
        return self.x_hat.clamp(0, 1) if self.clamp else self.x_hat

    def task_input(self, task: str) -> tuple[torch.Tensor, Batch]:
        """What ``task``'s adapter reads: the decoded pixels, or (a feature reader) the decoded split tensor."""
        if getattr(self.adapters[task], "consumes", "pixels") == "features":
            f = self.out["features_hat"]
            return f, Batch(f, self.batch.samples, size=tuple(self.x.shape[-2:]))
        return self.x_task, self.batch

    def _cached(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def original_features(self, task: str) -> list[torch.Tensor]:
        def make():
            with torch.no_grad():
                return [f.detach() for f in self.adapters[task].features(self.x)]
        return self._cached(("features", task), make)

    def decoded_features(self, task: str) -> list[torch.Tensor]:
        return self._cached(("decoded_features", task), lambda: list(self.adapters[task].features(self.x_task)))

    def original_objectness(self, task: str) -> list[torch.Tensor]:
        def make():
            with torch.no_grad():
                maps = self.adapters[task].objectness(self.x)
            if maps is None:
                raise UserError(f"loss objectness_distill:{task}: task {task!r} has no objectness maps")
            return [m.detach() for m in maps]
        return self._cached(("objectness", task), make)


def all_likelihoods(out: dict) -> dict[str, torch.Tensor]:
    """Every coded latent's likelihoods: ``likelihoods`` (y, z) plus ``aux_likelihoods`` when a
    scalable auxiliary stream ran (icm-omni at beta < 1)."""
    return {**out["likelihoods"], **{f"aux.{k}": v for k, v in (out.get("aux_likelihoods") or {}).items()}}


class Loss:
    """Base class of the loss kinds. A subclass sets ``kind``; ``__init__(task, **options)`` takes the
    term's task (None for ``KIND`` alone) and its options from the config; ``__call__(ctx)`` returns a
    scalar tensor or one value per sample ``(N,)``. ``state_dict``/``load_state_dict`` keep running
    state (e.g. a running mean) across a resume."""

    kind = ""

    def __init__(self, task: str | None = None):
        self.task = task

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.task}" if self.task else self.kind

    def __call__(self, ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Rate(Loss):
    """Estimated bits per pixel of each sample: ``Σ -log2 p`` over every latent's likelihoods (y and z,
    and the auxiliary stream's) / (H·W); ``latents`` keeps only the named ones (e.g. ``["aux.aux"]``)."""

    kind = "rate"

    def __init__(self, task=None, latents: list[str] | None = None):
        super().__init__(task)
        self.latents = None if latents is None else [str(k) for k in latents]

    def __call__(self, ctx):
        _, _, h, w = ctx.x.shape
        keys = list(ctx.likelihoods) if self.latents is None else self.latents
        missing = [k for k in keys if k not in ctx.likelihoods]
        if missing:
            raise UserError(f"loss rate: no latent {missing[0]!r} in the codec output (it has {sorted(ctx.likelihoods)})")
        return sum(-torch.log2(ctx.likelihoods[k]).flatten(1).sum(1) for k in keys) / (h * w)


class MSE(Loss):
    """Mean squared error of each sample, in [0, 1] units."""

    kind = "mse"

    def __call__(self, ctx):
        return ((ctx.x_hat - ctx.x) ** 2).flatten(1).mean(1)


class Task(Loss):
    """The task's own training loss on the decoded images (Le Eq. 3.6 ``L_task``). With ``normalise``,
    divided by its running mean ``m ← momentum·m + (1 − momentum)·L`` (started at the first value), so
    tasks whose losses differ in scale weigh alike."""

    kind = "task"

    def __init__(self, task=None, normalise: bool = False, momentum: float = 0.98):
        super().__init__(task)
        self.normalise, self.momentum = bool(normalise), float(momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise UserError(f"loss {self.name}: momentum must be in [0, 1)")
        self.running: float | None = None

    def __call__(self, ctx):
        value = ctx.adapters[self.task].loss(*ctx.task_input(self.task))
        if not self.normalise:
            return value
        v = float(value.detach())
        if math.isfinite(v):
            self.running = v if self.running is None else self.momentum * self.running + (1 - self.momentum) * v
        return value / max(self.running if self.running is not None else v, 1e-6)

    def state_dict(self):
        return {"running": self.running}

    def load_state_dict(self, state):
        self.running = state.get("running")


def _weighted_mse(f: torch.Tensor, f_hat: torch.Tensor, weight: torch.Tensor | None, relative: bool) -> torch.Tensor:
    err = (f - f_hat) ** 2
    if relative:  # relative to the target's energy: feature levels and tasks of any scale weigh alike
        err = err / f.pow(2).mean().clamp_min(1e-8)
    return err.mean() if weight is None else (weight * err).mean()


RESIZE = ("bilinear", "nearest")


def _fit(weight: torch.Tensor, like: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """A (N, 1, h, w) weight map resized to a feature map's spatial size if it differs."""
    if weight.shape[-2:] != like.shape[-2:]:
        extra = {"align_corners": False} if mode == "bilinear" else {}
        weight = F.interpolate(weight, size=like.shape[-2:], mode=mode, **extra)
    return weight


def _mean_one(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Weights normalised per image (and level) to mean 1: ``(w + ε) / (mean_hw w + ε)``."""
    return (weight + eps) / (weight.mean(dim=(2, 3), keepdim=True) + eps)


class Distill(Loss):
    """Feature distillation: ``1/L Σ_l MSE(F_l(x), F_l(x̂))`` over the adapter's feature levels; with
    ``relative``, each level's error is divided by the energy ``mean(F_l(x)²)`` of its target."""

    kind = "distill"

    def __init__(self, task=None, relative: bool = False):
        super().__init__(task)
        self.relative = bool(relative)

    def weights(self, ctx: Context, feats: list[torch.Tensor]) -> list[torch.Tensor | None]:
        return [None] * len(feats)

    def __call__(self, ctx):
        feats, hats = ctx.original_features(self.task), ctx.decoded_features(self.task)
        if len(feats) != len(hats) or not feats:
            raise UserError(f"loss {self.name}: features() gave {len(feats)} and {len(hats)} levels")
        ws = self.weights(ctx, feats)
        return sum(_weighted_mse(f, h, w, self.relative) for f, h, w in zip(feats, hats, ws)) / len(feats)


def _resize_option(name: str, resize: str, allowed) -> str:
    if resize not in allowed:
        raise UserError(f"loss {name}: resize must be one of {', '.join(allowed)}, not {resize!r}")
    return resize


class ObjectnessDistill(Distill):
    """Paper 003: ``1/L Σ_l mean(O_l · (F_l - F̂_l)²)``, ``O_l`` the objectness on the original image,
    resized to the level (``resize``: bilinear or nearest) and normalised per image and level to mean 1:
    ``O'_l = (O_l + ε) / (mean_hw O_l + ε)``."""

    kind = "objectness_distill"

    def __init__(self, task=None, eps: float = 1e-6, relative: bool = False, resize: str = "bilinear"):
        super().__init__(task, relative)
        self.eps = float(eps)
        self.resize = _resize_option(self.name, resize, RESIZE)

    def weights(self, ctx, feats):
        maps = ctx.original_objectness(self.task)
        if len(maps) != len(feats):
            raise UserError(f"loss {self.name}: {len(maps)} objectness maps for {len(feats)} feature levels")
        return [_mean_one(_fit(o.float(), f, self.resize), self.eps) for o, f in zip(maps, feats)]


_BOXES: dict[Path, dict[int, list[list[float]]]] = {}


def gt_boxes(dataset) -> dict[int, list[list[float]]]:
    """image id -> [[x, y, w, h], ...] from the dataset's COCO instances (cached per file)."""
    if dataset is None or "instances" not in dataset.annotations:
        raise UserError("loss gtbox_distill needs a dataset with COCO instances annotations")
    path = Path(dataset.annotations["instances"])
    if path not in _BOXES:
        boxes: dict[int, list] = {}
        for a in json.loads(path.read_text()).get("annotations", []):
            if not a.get("iscrowd", 0):
                boxes.setdefault(a["image_id"], []).append(a["bbox"])
        _BOXES[path] = boxes
    return _BOXES[path]


def _box_mask(ctx: Context, boxes: dict, size: tuple[int, int], device) -> torch.Tensor:
    """(N, 1, H, W): 1 where a pixel lies in a ground-truth box of its image (box edges rounded outwards)."""
    mask = torch.zeros(len(ctx.batch.samples), 1, *size, device=device)
    for i, s in enumerate(ctx.batch.samples):
        for bx, by, bw, bh in boxes.get(s["id"], []):
            x0, y0 = max(0, int(math.floor(bx))), max(0, int(math.floor(by)))
            x1, y1 = int(math.ceil(bx + bw)), int(math.ceil(by + bh))
            mask[i, 0, y0:y1, x0:x1] = 1.0
    return mask


class GTBoxDistill(Distill):
    """Distillation weighted 1 inside the ground-truth boxes and ``floor`` elsewhere (paper 003's
    GT baseline). ``resize = "footprint"`` (default): a feature cell counts as inside when its
    stride×stride footprint touches a box; ``"nearest"``: the image-size mask nearest-resized to the
    level. ``normalise``: the weights averaged to 1 per image and level, as objectness weights are."""

    kind = "gtbox_distill"

    def __init__(self, task=None, floor: float = 0.1, relative: bool = False, resize: str = "footprint",
                 normalise: bool = False):
        super().__init__(task, relative)
        self.floor, self.normalise = float(floor), bool(normalise)
        self.resize = _resize_option(self.name, resize, ("footprint", "nearest"))

    def weights(self, ctx, feats):
        boxes = gt_boxes(ctx.adapters[self.task].dataset)
        _, _, h, w = ctx.x.shape
        out = []
        for f in feats:
            if self.resize == "nearest":
                inside = _fit(_box_mask(ctx, boxes, (h, w), f.device), f, "nearest")
            else:
                fh, fw = f.shape[-2:]
                stride = 2 ** max(0, round(math.log2(max(h / fh, 1e-9))))
                mask = _box_mask(ctx, boxes, (fh * stride, fw * stride), f.device)
                inside = F.max_pool2d(mask, stride) if stride > 1 else mask
            weight = self.floor + (1.0 - self.floor) * inside
            out.append(_mean_one(weight, 0.0) if self.normalise else weight)
        return out


class Cognition(Loss):
    """RDC §3.2 (Eq. 5-7): InfoNCE between embeddings of x̂ (queries) and x (keys) across the batch,
    plus ``λ_local`` times the MSE on the pixels of x̂ outside [0, 1]. The embedding is the globally
    average-pooled feature levels of the task (every task when none is named), concatenated and
    L2-normalised."""

    kind = "cognition"

    def __init__(self, task=None, tau: float = 0.07, lambda_local: float = 1e-5):
        super().__init__(task)
        self.tau, self.lambda_local = float(tau), float(lambda_local)

    def _embed(self, levels_by_task: list[list[torch.Tensor]]) -> torch.Tensor:
        pooled = [f.mean(dim=(2, 3)) for levels in levels_by_task for f in levels]
        return F.normalize(torch.cat(pooled, dim=1), dim=1)

    def __call__(self, ctx):
        tasks = [self.task] if self.task else sorted(ctx.adapters)
        if not tasks:
            raise UserError("loss cognition needs at least one task for its features")
        q = self._embed([ctx.decoded_features(t) for t in tasks])
        k = self._embed([ctx.original_features(t) for t in tasks])
        logits = q @ k.t() / self.tau
        contrastive = F.cross_entropy(logits, torch.arange(len(q), device=logits.device))
        outside = ((ctx.x_hat < 0) | (ctx.x_hat > 1)).float()
        local = (outside * (ctx.x_hat - ctx.x) ** 2).mean()
        return contrastive + self.lambda_local * local


def _codec_output(ctx: Context, key: str, loss: str) -> torch.Tensor:
    if key not in ctx.out:
        raise UserError(f"loss {loss}: the codec gives no {key!r} (a feature codec such as icm-omni-features does)")
    return ctx.out[key]


class FeatureMSE(Loss):
    """Distortion of a feature codec: MSE between the split tensor f and its decoding f̂, per sample,
    divided by the batch's energy mean(f²) (so it reads as a relative error whatever the features' scale)."""

    kind = "feature_mse"

    def __call__(self, ctx):
        h, h_hat = _codec_output(ctx, "features", self.kind), _codec_output(ctx, "features_hat", self.kind)
        return ((h_hat - h) ** 2).flatten(1).mean(1) / h.detach().pow(2).mean().clamp_min(1e-8)


def _colour_view(x: torch.Tensor, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A second view of each image for instance discrimination: per-image brightness, contrast and
    per-channel colour jitter, and a random flip (the nuisances Omni-ICM's IF module learns to drop)."""
    n = x.shape[0]
    gain = 1 + strength * (2 * torch.rand(n, 3, 1, 1, device=x.device) - 1)
    shift = 0.5 * strength * (2 * torch.rand(n, 1, 1, 1, device=x.device) - 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    view = ((x - mean) * gain + mean + shift).clamp(0, 1)
    flip = (torch.rand(n, device=x.device) < 0.5)[:, None, None, None]
    return torch.where(flip, view.flip(-1), view), flip


def _embed(h: torch.Tensor, grid: int) -> torch.Tensor:
    return F.normalize(F.adaptive_avg_pool2d(h, grid).flatten(1), dim=1)


class Contrastive(Loss):
    """Omni-ICM's instance discrimination (supplementary §2.2): InfoNCE across the batch between the
    decoded features f̂ of each image (queries) and the uncompressed split features of a colour-jittered,
    flipped view of the same image (keys). Embeddings: h pooled to a ``grid``×``grid`` map (the
    view's flip mirrors it, so the keys are flipped back), L2-normalised; temperature ``tau``."""

    kind = "contrastive"

    def __init__(self, task=None, tau: float = 0.2, grid: int = 2, strength: float = 0.4):
        super().__init__(task)
        self.tau, self.grid, self.strength = float(tau), int(grid), float(strength)

    def __call__(self, ctx):
        h_hat = _codec_output(ctx, "features_hat", self.kind)
        net = getattr(ctx.module, "net", ctx.module)
        if not hasattr(net, "split_features"):
            raise UserError(f"loss {self.kind}: the codec being trained has no split_features() (a feature codec has)")
        view, flipped = _colour_view(ctx.x, self.strength)
        from icm.codecs.learned import pad

        keys = net.split_features(pad(view, 64))[..., :h_hat.shape[-2], :h_hat.shape[-1]]
        keys = torch.where(flipped, keys.flip(-1), keys)
        q, k = _embed(h_hat, self.grid), _embed(keys, self.grid)
        logits = q @ k.t() / self.tau
        return F.cross_entropy(logits, torch.arange(len(q), device=logits.device))


TASK_MODES = ("required", "optional", "none")  # the ``task`` meta of a registered loss kind

def loss_registry() -> Registry:
    """The loss-kind registry of the process-wide plugin set (built-ins and plugins' kinds)."""
    from icm.training import plugin_registry

    return plugin_registry("losses", "loss", "icm.training.builtin_losses", "icm_register_losses")


def build_loss(term: str, options: dict | None = None) -> Loss:
    kind, _, task = term.partition(":")
    registry = loss_registry()
    if kind not in registry:
        raise UserError(f"unknown loss {term!r} (known: {', '.join(registry.names())}; task losses as KIND:TASK)")
    entry = registry.entry(kind)
    mode = entry.meta.get("task", "required")
    if mode == "required" and not task:
        raise UserError(f"loss {kind!r} needs a task: write '{kind}:TASK'")
    if task and mode == "none":
        raise UserError(f"loss {kind!r} takes no task")
    try:
        loss = entry.obj(task or None, **(options or {}))
    except TypeError as exc:
        raise UserError(f"loss {term!r}: bad options {sorted(options or {})} ({exc})") from None
    if not isinstance(loss, Loss):
        raise TypeError(f"loss factory {kind!r} returned {type(loss).__name__}, not an icm.training.losses.Loss")
    return loss
