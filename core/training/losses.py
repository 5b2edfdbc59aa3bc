"""Loss terms for training codecs, each named as in the config's ``[losses]`` table.

A term is ``KIND`` or ``KIND:TASK``: ``rate``, ``mse``, ``task:T``, ``distill:T``,
``objectness_distill:T``, ``gtbox_distill:T``, ``cognition`` / ``cognition:T``. Every term is computed
from a :class:`Context` (originals, the codec output, the batch, the task adapters, and a per-batch
cache so that what depends only on the originals, or is shared by several terms, is computed once).
Formulas: docs/training.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from icm.errors import UserError
from icm.tasks import Batch, TaskAdapter


@dataclass
class Context:
    x: torch.Tensor  # originals (N, 3, H, W) in [0, 1]
    x_hat: torch.Tensor  # decoded, same size, not clamped (gradients flow)
    likelihoods: dict[str, torch.Tensor]
    batch: Batch
    adapters: dict[str, TaskAdapter]
    cache: dict = field(default_factory=dict)

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
        return self._cached(("decoded_features", task), lambda: list(self.adapters[task].features(self.x_hat)))

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
    kind = ""
    needs_task = True

    def __init__(self, task: str | None = None):
        self.task = task

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.task}" if self.task else self.kind

    def __call__(self, ctx: Context) -> torch.Tensor:
        raise NotImplementedError


class Rate(Loss):
    """Estimated bits per pixel: ``Σ -log2 p`` over every latent's likelihoods (y and z) / (N·H·W)."""

    kind, needs_task = "rate", False

    def __call__(self, ctx):
        n, _, h, w = ctx.x.shape
        return sum(-torch.log2(v).sum() for v in ctx.likelihoods.values()) / (n * h * w)


class MSE(Loss):
    kind, needs_task = "mse", False

    def __call__(self, ctx):
        return F.mse_loss(ctx.x_hat, ctx.x)


class Task(Loss):
    """The task's own training loss on the decoded images (Le Eq. 3.6 ``L_task``)."""

    kind = "task"

    def __call__(self, ctx):
        return ctx.adapters[self.task].loss(ctx.x_hat, ctx.batch)


def _weighted_mse(f: torch.Tensor, f_hat: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    err = (f - f_hat) ** 2
    return err.mean() if weight is None else (weight * err).mean()


def _fit(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (N, 1, h, w) weight map resized to a feature map's spatial size if it differs."""
    if weight.shape[-2:] != like.shape[-2:]:
        weight = F.interpolate(weight, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return weight


class Distill(Loss):
    """Feature distillation: ``1/L Σ_l MSE(F_l(x), F_l(x̂))`` over the adapter's feature levels."""

    kind = "distill"

    def weights(self, ctx: Context, feats: list[torch.Tensor]) -> list[torch.Tensor | None]:
        return [None] * len(feats)

    def __call__(self, ctx):
        feats, hats = ctx.original_features(self.task), ctx.decoded_features(self.task)
        if len(feats) != len(hats) or not feats:
            raise UserError(f"loss {self.name}: features() gave {len(feats)} and {len(hats)} levels")
        ws = self.weights(ctx, feats)
        return sum(_weighted_mse(f, h, w) for f, h, w in zip(feats, hats, ws)) / len(feats)


class ObjectnessDistill(Distill):
    """Paper 003: ``1/L Σ_l mean(O_l · (F_l - F̂_l)²)``, ``O_l`` the objectness on the original image,
    normalised per image and level to mean 1: ``O'_l = (O_l + ε) / (mean_hw O_l + ε)``."""

    kind = "objectness_distill"

    def __init__(self, task=None, eps: float = 1e-6):
        super().__init__(task)
        self.eps = float(eps)

    def weights(self, ctx, feats):
        maps = ctx.original_objectness(self.task)
        if len(maps) != len(feats):
            raise UserError(f"loss {self.name}: {len(maps)} objectness maps for {len(feats)} feature levels")
        out = []
        for o, f in zip(maps, feats):
            o = _fit(o.float(), f)
            out.append((o + self.eps) / (o.mean(dim=(2, 3), keepdim=True) + self.eps))
        return out


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


class GTBoxDistill(Distill):
    """Distillation weighted 1 inside the ground-truth boxes and ``floor`` elsewhere (paper 003's
    GT baseline). A feature cell counts as inside when its stride×stride footprint touches a box."""

    kind = "gtbox_distill"

    def __init__(self, task=None, floor: float = 0.1):
        super().__init__(task)
        self.floor = float(floor)

    def weights(self, ctx, feats):
        boxes = gt_boxes(ctx.adapters[self.task].dataset)
        n, _, h, w = ctx.x.shape
        out = []
        for f in feats:
            fh, fw = f.shape[-2:]
            stride = 2 ** max(0, round(math.log2(max(h / fh, 1e-9))))
            mask = torch.zeros(n, 1, fh * stride, fw * stride, device=f.device)
            for i, s in enumerate(ctx.batch.samples):
                for bx, by, bw, bh in boxes.get(s["id"], []):
                    x0, y0 = max(0, int(math.floor(bx))), max(0, int(math.floor(by)))
                    x1, y1 = int(math.ceil(bx + bw)), int(math.ceil(by + bh))
                    mask[i, 0, y0:y1, x0:x1] = 1.0
            inside = F.max_pool2d(mask, stride) if stride > 1 else mask
            out.append(self.floor + (1.0 - self.floor) * inside)
        return out


class Cognition(Loss):
    """RDC §3.2 (Eq. 5-7): InfoNCE between embeddings of x̂ (queries) and x (keys) across the batch,
    plus ``λ_local`` times the MSE on the pixels of x̂ outside [0, 1]. The embedding is the globally
    average-pooled feature levels of the task (every task when none is named), concatenated and
    L2-normalised."""

    kind, needs_task = "cognition", False

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


KINDS = {c.kind: c for c in (Rate, MSE, Task, Distill, ObjectnessDistill, GTBoxDistill, Cognition)}


def build_loss(term: str, options: dict | None = None) -> Loss:
    kind, _, task = term.partition(":")
    if kind not in KINDS:
        raise UserError(f"unknown loss {term!r} (known: {', '.join(sorted(KINDS))}; task losses as KIND:TASK)")
    cls = KINDS[kind]
    if cls.needs_task and not task:
        raise UserError(f"loss {kind!r} needs a task: write '{kind}:TASK'")
    if task and kind in ("rate", "mse"):
        raise UserError(f"loss {kind!r} takes no task")
    try:
        return cls(task or None, **(options or {}))
    except TypeError as exc:
        raise UserError(f"loss {term!r}: bad options {sorted(options or {})} ({exc})") from None
