"""The codec being trained: its torch module, its rates, and how a trained candidate is opened again
by name for the real-bitstream evaluation.

Two kinds of codec train here:

- quality-indexed CompressAI codecs (``CompressAICodec`` and subclasses): one quality is fine-tuned,
  the module is ``codec.model(quality)``;
- continuous-rate codecs (``rate_control.continuous``, e.g. ``icm-omni``): ``codec.forward(x, rate,
  beta=...)`` with a rate in [0, 1]; the module is found as ``codec.trainable_module()``, else the
  first ``torch.nn.Module`` among ``codec.net``, ``codec.module``, ``codec.model``, else the codec
  itself when it is a module. Such a codec must accept ``checkpoint=FILE`` with that module's state dict.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from icm.codecs import Codec, open_codec
from icm.errors import UserError
from icm.training.config import CodecConfig


class Trainable(torch.nn.Module):
    """``forward(x, rate) -> {"x_hat", "likelihoods"}`` over the codec's module (what DDP wraps)."""

    def __init__(self, codec: Codec, cfg: CodecConfig):
        super().__init__()
        self.codec, self.cfg = codec, cfg
        self.continuous = bool(codec.rate_control.continuous)
        if self.continuous:
            self.net = find_module(codec)
        else:
            if cfg.quality is None:
                raise UserError(f"codec {codec.name!r} is quality-indexed: set codec.quality (the quality to fine-tune)")
            codec.check_rate(quality=cfg.quality)
            if not hasattr(codec, "model"):
                raise UserError(f"codec {codec.name!r} has no trainable model")
            self.net = codec.model(cfg.quality)

    def forward(self, x: torch.Tensor, rate: float | None = None) -> dict:
        if self.continuous:
            return self.codec.forward(x, rate, beta=self.cfg.beta)
        return self.net(x)

    def main_and_aux_parameters(self):
        main, aux = [], []
        for name, p in self.net.named_parameters():
            (aux if name.endswith(".quantiles") else main).append(p)
        return main, aux

    def aux_loss(self):
        return self.net.aux_loss() if hasattr(self.net, "aux_loss") else None


def find_module(codec: Codec) -> torch.nn.Module:
    if hasattr(codec, "trainable_module"):
        return codec.trainable_module()
    for attr in ("net", "module", "model"):
        obj = getattr(codec, attr, None)
        if isinstance(obj, torch.nn.Module):
            return obj
    if isinstance(codec, torch.nn.Module):
        return codec
    raise UserError(f"codec {codec.name!r}: no trainable torch module (expected trainable_module(), .net or .model)")


def open_for_training(cfg: CodecConfig, device: torch.device) -> Trainable:
    import inspect

    from icm.plugins import get_plugins

    params = inspect.signature(get_plugins().codecs.get(cfg.name)).parameters
    takes_device = "device" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    codec = open_codec(cfg.name, **{**cfg.options, **({"device": str(device)} if takes_device else {})})
    if codec.kind != "learned" and not hasattr(codec, "forward"):
        raise UserError(f"codec {cfg.name!r} is not a learned codec; nothing to train")
    codec.require_available()
    return Trainable(codec, cfg).to(device)


# -- rates -----------------------------------------------------------------------------------------------
def train_rates(cfg: CodecConfig) -> list[float]:
    return [float(r) for r in (cfg.rates or [0.1, 0.5, 0.9])]


def sample_rate(cfg: CodecConfig, continuous: bool, generator: torch.Generator | None = None) -> float | None:
    if not continuous:
        return None
    rates = train_rates(cfg)
    if cfg.rate_sampling == "uniform":
        lo, hi = min(rates), max(rates)
        return lo + (hi - lo) * float(torch.rand((), generator=generator))
    return rates[int(torch.randint(len(rates), (), generator=generator))]


def rate_lambda(cfg: CodecConfig, rate: float | None) -> float:
    """The rate term's factor at ``rate``: ``rate_lambdas`` at the listed rates, log-linear between."""
    if rate is None or not cfg.rate_lambdas:
        return 1.0
    pairs = sorted(zip(train_rates(cfg), (float(v) for v in cfg.rate_lambdas)))
    if rate <= pairs[0][0]:
        return pairs[0][1]
    for (r0, l0), (r1, l1) in zip(pairs, pairs[1:]):
        if rate <= r1:
            t = (rate - r0) / (r1 - r0) if r1 > r0 else 0.0
            return math.exp((1 - t) * math.log(l0) + t * math.log(l1))
    return pairs[-1][1]


def val_rates(cfg: CodecConfig, continuous: bool) -> list[dict]:
    """The rate points validated each epoch, as stored in bitstreams."""
    if not continuous:
        return [{"quality": int(cfg.quality)}]
    return [{"rate": round(float(r), 6)} for r in (cfg.val_rates or train_rates(cfg))]


def rate_value(rate: dict) -> float | None:
    return rate.get("rate")


# -- candidates back into the codec registry --------------------------------------------------------
def export_options(trainable: Trainable, cfg: CodecConfig, weights_file: Path, folder: Path, write: bool = True) -> dict:
    """open_codec options that load the candidate ``weights_file`` (a state dict of the module);
    files are written only with ``write`` (rank 0)."""
    from icm.codecs.learned import ShippedCompressAICodec

    options = {k: v for k, v in cfg.options.items() if k not in ("weights", "checkpoint")}
    codec = trainable.codec
    if isinstance(codec, ShippedCompressAICodec):
        # a folder of quality<q>.pth for every quality: the candidate, and the shipped others
        for q in range(1, codec.rate_control.values[1] + 1) if write else ():
            src = weights_file if q == cfg.quality else codec.folder / f"quality{q}.pth"
            if src.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, folder / f"quality{q}.pth")
        return {**options, "checkpoint": str(folder)}
    return {**options, "checkpoint": str(weights_file)}
