"""The codec being trained, through the interface it declares (``icm.codecs.TrainableCodec``): its
torch module, its rates, and how a trained candidate is opened again by name for the real-bitstream
evaluation.

Two kinds of codec train here:

- quality-indexed (CompressAI architectures, ``icm-hyperprior-mse``): one quality is fine-tuned,
  the module is ``codec.trainable_module(quality)``;
- continuous-rate (``rate_control.continuous``, e.g. ``icm-omni``): ``codec.forward(x, rate,
  beta=...)`` with a rate in [0, 1]; the module is ``codec.trainable_module()``.
"""

from __future__ import annotations

import math

import numpy as np
from pathlib import Path

import torch

from icm.codecs import TrainableCodec, open_codec
from icm.codecs.trainable import freeze_all_but
from icm.errors import UserError
from icm.training.config import CodecConfig

HOW_TO_TRAIN = "docs/plugins/hooks.md#a-codec-that-trains"


class Trainable(torch.nn.Module):
    """``forward(x, rate) -> {"x_hat", "likelihoods"}`` over the codec's module (what DDP wraps).

    With ``codec.train_modules``, only those submodules train; the others are frozen and stay in eval
    mode (RDC stage II: the primary branch then quantises by rounding, as the decoder will)."""

    def __init__(self, codec: TrainableCodec, cfg: CodecConfig):
        super().__init__()
        self.codec, self.cfg = codec, cfg
        self.continuous = bool(codec.rate_control.continuous)
        if not self.continuous:
            if cfg.quality is None:
                raise UserError(f"codec {codec.name!r} is quality-indexed: set codec.quality (the quality to fine-tune)")
            codec.check_rate(quality=cfg.quality)
        self.net = codec.trainable_module(None if self.continuous else cfg.quality)
        repair_likelihood_bounds(self.net)
        if cfg.new_context:
            codec.add_context(self.net)
        self.frozen: list[torch.nn.Module] = []
        self.freeze()

    def freeze(self) -> None:
        """Freeze every submodule that ``codec.train_modules`` does not name. Called again after an
        init has changed the module's structure (e.g. given it a context model)."""
        self.frozen = freeze_all_but(self.net, self.cfg.train_modules, repr(self.codec.name))

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def forward(self, x: torch.Tensor, rate: float | torch.Tensor | None = None) -> dict:
        return self.codec.forward(x, rate if self.continuous else self.cfg.quality, beta=self.cfg.beta)

    def main_and_aux_parameters(self):
        return self.codec.parameter_groups(self.net, self.frozen)

    def aux_loss(self):
        return self.codec.aux_loss(self.net, self.frozen)

    def fit_entropy_models(self) -> None:
        self.codec.fit_entropy_models(self.net)


LIKELIHOOD_BOUND = 1e-9  # CompressAI's default likelihood_bound for EntropyBottleneck and GaussianConditional


def repair_likelihood_bounds(net: torch.nn.Module) -> list[str]:
    """Weights saved in fp16 store the entropy models' likelihood lower bound (1e-9) as 0, and a
    likelihood of 0 is an infinite rate: the NaN of every run on such weights. Restore the bound."""
    repaired = []
    for name, m in net.named_modules():
        bound = getattr(getattr(m, "likelihood_lower_bound", None), "bound", None)
        if isinstance(bound, torch.Tensor) and bool((bound <= 0).all()):
            with torch.no_grad():
                bound.fill_(LIKELIHOOD_BOUND)
            repaired.append(name)
    return repaired


class BackendTrainable(torch.nn.Module):
    """A task's feature back end (``adapter.feature_reader(split, train=True)``) trained on a frozen
    feature codec's decoded split tensors: ``forward(x, rate)`` runs the codec (eval mode, rounded
    latents, no gradient) and returns its ``features_hat`` and likelihoods; ``net`` is the back end's
    network, what is optimised, saved and exported. ``x_hat`` is x itself: nothing decodes pixels."""

    def __init__(self, codec: TrainableCodec, reader):
        super().__init__()
        self.codec, self.reader, self.continuous = codec, reader, True
        self.net = reader.model
        self.frozen: list[torch.nn.Module] = []

    def forward(self, x: torch.Tensor, rate=None) -> dict:
        self.codec.trainable_module().eval()
        with torch.no_grad():
            out = self.codec.forward(x, rate)
        return {"x_hat": x, "likelihoods": out["likelihoods"], "features": out["features"],
                "features_hat": out["features_hat"]}

    def main_and_aux_parameters(self):
        return [p for p in self.net.parameters() if p.requires_grad], []

    def aux_loss(self):
        return None

    def fit_entropy_models(self) -> None:
        """A task network has no entropy models."""


def open_backend_for_training(cfg, device: torch.device, adapters: dict) -> BackendTrainable:
    """The codec (frozen) and the back end of ``cfg.backend`` reading its split; ``adapters[task]``
    becomes that feature reader, so the task's loss terms and validation read features."""
    codec = open_codec(cfg.codec.name, **{**cfg.codec.options, "device": str(device)})
    if codec.kind != "features" or not isinstance(codec, TrainableCodec):
        raise UserError(f"backend = {cfg.backend!r}: codec {cfg.codec.name!r} is not a trainable feature codec")
    codec.require_available()
    codec.trainable_module().requires_grad_(False)
    start = str(init_file(cfg.init)) if cfg.init and cfg.init != "scratch" else None
    reader = adapters[cfg.backend].feature_reader(codec.split, checkpoint=start, train=True)
    if reader is None:
        raise UserError(f"task {cfg.backend!r} cannot read features split at {codec.split!r} (no feature_reader)")
    adapters[cfg.backend] = reader
    return BackendTrainable(codec, reader).to(device)


def open_for_training(cfg: CodecConfig, device: torch.device) -> Trainable:
    import inspect

    from icm.plugins import get_plugins

    params = inspect.signature(get_plugins().codecs.get(cfg.name)).parameters
    takes_device = "device" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    codec = open_codec(cfg.name, **{**cfg.options, **({"device": str(device)} if takes_device else {})})
    if not isinstance(codec, TrainableCodec):
        raise UserError(f"codec {cfg.name!r} cannot be trained: {type(codec).__name__} does not implement "
                        f"icm.codecs.TrainableCodec (trainable_module, forward, fresh_module; {HOW_TO_TRAIN})")
    codec.require_available()
    return Trainable(codec, cfg).to(device)


# -- rates -----------------------------------------------------------------------------------------------
def train_rates(cfg: CodecConfig) -> list[float]:
    return [float(r) for r in (cfg.rates or [0.1, 0.5, 0.9])]


def sample_rate(cfg: CodecConfig, continuous: bool, n: int = 1, generator: torch.Generator | None = None,
                device=None) -> float | torch.Tensor | None:
    """The batch's rate: None for quality-indexed codecs, else a float, or one rate per sample
    (a tensor of ``n``) with ``per_sample_rates``. ``uniform``: ``min + (max − min)·u^rate_power``."""
    if not continuous:
        return None
    rates = train_rates(cfg)
    size = (n,) if cfg.per_sample_rates else ()
    if cfg.rate_sampling == "uniform":
        lo, hi = min(rates), max(rates)
        r = lo + (hi - lo) * torch.rand(size, generator=generator) ** cfg.rate_power
    else:
        r = torch.tensor(rates)[torch.randint(len(rates), size, generator=generator)]
    return r.to(device) if cfg.per_sample_rates else float(r)


def rate_lambda(cfg: CodecConfig, rate: float | torch.Tensor | None) -> float | torch.Tensor:
    """λ at ``rate`` (a float or one per sample): ``rate_lambdas`` at the listed rates, log-linear
    between them, constant outside."""
    return _at_rate(cfg, cfg.rate_lambdas, rate)


def _at_rate(cfg: CodecConfig, values: list[float] | None, rate: float | torch.Tensor | None) -> float | torch.Tensor:
    """``values`` (one per ``cfg.rates`` entry) at ``rate``, log-linear between them; 1 without either."""
    if rate is None or not values:
        return 1.0
    pairs = sorted(zip(train_rates(cfg), (math.log(float(v)) for v in values)))
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    if isinstance(rate, torch.Tensor):
        at = np.exp(np.interp(rate.detach().cpu().double().numpy(), xs, ys))
        return torch.as_tensor(at, dtype=torch.float32, device=rate.device)
    return float(math.exp(np.interp(float(rate), xs, ys)))


def term_factor(cfg: CodecConfig, term: str, rate: float | torch.Tensor | None) -> float | torch.Tensor:
    """The rate-dependent factor of a term: λ(rate) on ``rate`` or on ``mse`` (``lambda_on``),
    ``low_rate_weight^(1 − rate)`` on ``rate``, and ``task_rate_weights`` at ``rate`` on every term
    bound to a task (``kind:task``). 1 for every other term, and without a rate."""
    if rate is None:
        return 1.0
    kind, _, task = term.partition(":")
    factor = 1.0
    if kind == ("rate" if cfg.lambda_on == "rate" else "mse"):
        factor = rate_lambda(cfg, rate)
    if kind == "rate" and cfg.low_rate_weight != 1.0:
        factor = factor * cfg.low_rate_weight ** (1 - rate)
    if task and cfg.task_rate_weights:
        factor = factor * _at_rate(cfg, cfg.task_rate_weights, rate)
    return factor


def val_rates(cfg: CodecConfig, continuous: bool) -> list[dict]:
    """The rate points validated each epoch, as stored in bitstreams."""
    if not continuous:
        return [{"quality": int(cfg.quality)}]
    return [{"rate": round(float(r), 6)} for r in (cfg.val_rates or train_rates(cfg))]


def rate_value(rate: dict) -> float | None:
    return rate.get("rate")


# -- start weights, final weights ------------------------------------------------------------------
def init_file(init: str) -> Path:
    """The weights ``init`` names: a state-dict file, or a previous run's out folder (its model.pth)."""
    path = Path(init)
    if path.is_dir():
        path = path / FINAL
        if not path.is_file():
            raise UserError(f"init {init}: no {FINAL} in that folder (has its run finished?)")
    elif not path.is_file():
        raise UserError(f"init {init}: no such file or run folder")
    return path


def load_init(trainable: Trainable, init: str, seed: int) -> dict:
    """Start from ``init``: a fresh module (``"scratch"``), or a fresh module overwritten by a state dict.
    Keys the file lacks keep their new initialisation (e.g. an aux branch added to a primary-only model);
    keys the module lacks, or of another shape, are a UserError. The codec's ``fit_state`` first shapes
    the module to the file (its number of gain levels); ``codec.new_low_gains`` then adds levels below.
    Returns what was loaded."""
    from icm.codecs.learned import load_checkpoint, tensor_hash

    net, codec = trainable.net, trainable.codec
    loaded, digest = None, None
    if init != "scratch":
        path = init_file(init)
        loaded = load_checkpoint(path)
        digest = tensor_hash(loaded).hex()
        codec.fit_state(net, loaded)  # e.g. another number of gain levels than the codec's own weights
        if trainable.cfg.new_context:  # after fit_state, which gives the net the context the file has
            codec.add_context(net)
    fresh = codec.fresh_module(net, seed)
    codec.fit_entropy_models(fresh)
    state = fresh.state_dict()
    missing: list[str] = []
    if loaded is not None:
        unexpected = sorted(set(loaded) - set(state))
        wrong = sorted(k for k in set(loaded) & set(state) if loaded[k].shape != state[k].shape
                       and not k.endswith(("_quantized_cdf", "_offset", "_cdf_length")))
        if unexpected or wrong:
            raise UserError(f"init {path} does not fit {trainable.codec.name!r} "
                            f"({'unknown key ' + unexpected[0] if unexpected else 'shape of ' + wrong[0] + ' differs'})")
        missing = sorted(set(state) - set(loaded))
        state.update({k: v.to(state[k].dtype) if v.is_floating_point() else v for k, v in loaded.items()})
    load_module_state(net, state)
    grow = trainable.cfg.new_low_gains
    if grow:
        try:
            codec.add_low_gains(net, grow)
        except ValueError as exc:  # e.g. past the most gain levels a codec may have
            raise UserError(f"codec.new_low_gains: {exc}") from None
    repair_likelihood_bounds(net)
    codec.fit_entropy_models(net)
    trainable.freeze()  # the init may have added or removed submodules
    # a hash of the loaded tensors lets a resumed run notice that its init file was replaced
    return {"init": init, **({"weights_hash": digest} if digest else {}), "new_keys": len(missing),
            "new_modules": sorted({k.split(".")[0] for k in missing})}


CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def load_module_state(net: torch.nn.Module, state: dict) -> None:
    """``load_state_dict`` that first resizes the entropy models' CDF tables to the saved ones (their
    size follows the weights, so it changes with training)."""
    buffers = dict(net.named_buffers())
    modules = dict(net.named_modules())
    for key, value in state.items():
        owner, _, name = key.rpartition(".")
        if name in CDF_BUFFERS and key in buffers and buffers[key].shape != value.shape:
            modules[owner]._buffers[name] = torch.empty_like(value, device=buffers[key].device)
    net.load_state_dict(state)


FINAL = "model.pth"  # a run's final weights in its out folder: what a later stage's init reads


def final_state(trainable: Trainable | BackendTrainable) -> dict:
    """The module's state with the entropy models' CDF tables rebuilt from its current weights."""
    trainable.fit_entropy_models()
    return trainable.net.state_dict()


def half_state(state: dict) -> dict:
    """fp16 copy for shipping, except tensors fp16 cannot hold: values past its range, and tensors whose
    values vanish in it (the entropy models' 1e-9 likelihood bound would become 0). A weight tensor
    with a few entries below fp16's smallest step (6e-8, which no output can feel) is still halved:
    keeping such tensors in fp32 made a task back end 40 % larger."""
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            h = v.half()
            nonzero = int((v != 0).sum())
            vanished = int(((h == 0) & (v != 0)).sum())
            lost = bool((~torch.isfinite(h)).any()) or vanished > 0.01 * nonzero or (vanished and v.numel() <= 16)
            out[k] = v if lost else h
        else:
            out[k] = v
    return out


# -- candidates back into the codec registry --------------------------------------------------------
def export_options(trainable: Trainable, cfg: CodecConfig, weights_file: Path, folder: Path, write: bool = True) -> dict:
    """open_codec options that load the candidate ``weights_file`` (a state dict of the module);
    files are written only with ``write`` (rank 0)."""
    options = {k: v for k, v in cfg.options.items() if k not in ("weights", "checkpoint")}
    return {**options, **trainable.codec.checkpoint_options(weights_file, cfg.quality, folder, write)}
