"""What ``icm train`` needs from a codec: the :class:`TrainableCodec` interface.

A codec that can be trained subclasses it next to :class:`icm.codecs.Codec` (``class MyCodec(Codec,
TrainableCodec)``); ``icm train`` refuses any other codec in one line. Three methods are required: the
torch module that trains, the training forward, and a freshly initialised copy of the module. The rest
have defaults that fit a CompressAI ``CompressionModel``: its entropy-bottleneck quantiles are the
auxiliary parameters, its ``update(force=True)`` rebuilds the entropy coder's tables, the trained
weights open as ``checkpoint=FILE``, and the codec cannot grow (no gain levels, no context model).
docs/plugins/hooks.md#a-codec-that-trains shows a whole one.

This module imports no torch at import time: ``icm.codecs`` re-exports it, and listings stay fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from icm.errors import UserError

if TYPE_CHECKING:
    import torch


class TrainableCodec(ABC):
    """The training side of a learned codec. ``module`` below is always what ``trainable_module``
    returned; the codec itself is not a torch module."""

    # -- required ----------------------------------------------------------------------------------
    @abstractmethod
    def trainable_module(self, quality: int | None = None) -> "torch.nn.Module":
        """The torch module that trains: its parameters are optimised, its state dict is every checkpoint
        ``icm train`` writes, and the codec opened with ``checkpoint=FILE`` (``checkpoint_options``)
        codes with those weights. ``quality`` is the one quality fine-tuned of a quality-indexed codec
        (``codec.quality`` in the config), None for a continuous-rate one."""

    @abstractmethod
    def forward(self, x: "torch.Tensor", rate, beta: float = 1.0) -> dict:
        """The differentiable path, through ``trainable_module``: x (B,3,H,W) in [0, 1], H and W
        multiples of the config's ``pad_to``. ``rate`` is a float or a (B,) tensor in [0, 1] for a
        continuous-rate codec, the quality for a quality-indexed one; ``beta`` is the config's
        ``codec.beta`` (a codec without a decode-time trade-off ignores it). Returns at least
        ``x_hat`` (B,3,H,W, not clamped) and ``likelihoods`` ({latent name: likelihood tensor}, what
        the rate term counts); optionally ``aux_likelihoods`` (counted too), and for a feature codec
        ``features`` and ``features_hat``."""

    @abstractmethod
    def fresh_module(self, module: "torch.nn.Module", seed: int) -> "torch.nn.Module":
        """A newly initialised module of ``module``'s architecture, the same for the same seed (use
        :func:`seeded`): ``init = "scratch"``, and the keys an init file lacks."""

    # -- parameters ------------------------------------------------------------------------------------
    def parameter_groups(self, module: "torch.nn.Module", frozen: list = ()) -> tuple[list, list]:
        """(main, auxiliary) parameters of ``module`` outside the ``frozen`` submodules. The loss
        optimises main; auxiliary (CompressAI's entropy-bottleneck ``quantiles``) get their own
        optimiser and only ``aux_loss``."""
        return split_parameters(module, frozen)

    def aux_loss(self, module: "torch.nn.Module", frozen: list = ()) -> "torch.Tensor | None":
        """The auxiliary parameters' loss (CompressAI's quantile loss of every entropy bottleneck outside
        ``frozen``), or None without one."""
        from compressai.entropy_models import EntropyBottleneck

        skip = {id(m) for f in frozen for m in f.modules()}
        losses = [m.loss() for m in module.modules() if id(m) not in skip and isinstance(m, EntropyBottleneck)]
        return sum(losses) if losses else None

    # -- state -------------------------------------------------------------------------------------------
    def fit_entropy_models(self, module: "torch.nn.Module") -> None:
        """Rebuild the entropy coder's tables from the current weights, before any state is saved and
        after weights are loaded. Default: ``update(force=True)`` of a CompressAI ``CompressionModel``."""
        from compressai.models import CompressionModel

        if isinstance(module, CompressionModel):
            module.update(force=True)

    def fit_state(self, module: "torch.nn.Module", state: dict) -> None:
        """Reshape ``module`` so the start weights ``state`` load (e.g. their number of gain levels, or a
        context model they have). Called before an ``init`` file is loaded; default: nothing."""

    # -- growing ------------------------------------------------------------------------------------------
    def add_low_gains(self, module: "torch.nn.Module", distances: list[float]) -> None:
        """``codec.new_low_gains``: new rate levels below the lowest (raise ValueError for a request the
        module cannot take)."""
        raise UserError(f"codec.new_low_gains: {self.name!r} has no gain levels to extend")

    def add_context(self, module: "torch.nn.Module") -> None:
        """``codec.new_context``: add a context model that starts as the model without it."""
        raise UserError(f"codec.new_context: {self.name!r} has no context model to add")

    # -- the trained weights back into the registry --------------------------------------------------------
    def checkpoint_options(self, weights_file: Path, quality: int | None, folder: Path, write: bool) -> dict:
        """The ``open_codec`` options under which this codec codes with ``weights_file`` (a state dict of
        ``trainable_module(quality)``), for the re-evaluation of a run's candidates. A codec that needs
        more than one file may write them into ``folder``, only with ``write`` (rank 0)."""
        return {"checkpoint": str(weights_file)}


def seeded(seed: int, build):
    """``build()`` under its own torch RNG seeded with ``seed``; the global RNG is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def freeze_all_but(module: "torch.nn.Module", names: list[str] | None, owner: str = "the codec") -> list:
    """Let only the top-level submodules ``names`` of ``module`` train (None: all of it): the others get
    ``requires_grad = False`` and are returned, to be kept in eval mode while the rest trains, so a
    frozen branch quantises by rounding, as the decoder will (RDC stage II)."""
    if not names:
        return []
    children = dict(module.named_children())
    unknown = [n for n in names if n not in children]
    if unknown:
        raise UserError(f"codec.train_modules: {owner} has no submodule {unknown[0]!r} (it has {', '.join(children)})")
    for name, child in children.items():
        child.requires_grad_(name in names)
    return [child for name, child in children.items() if name not in names]


def split_parameters(module: "torch.nn.Module", frozen: list = ()) -> tuple[list, list]:
    """(main, auxiliary) parameters outside ``frozen``, in ``named_parameters`` order; auxiliary are the
    entropy bottlenecks' ``quantiles``."""
    skip = {id(p) for m in frozen for p in m.parameters()}
    main, aux = [], []
    for name, p in module.named_parameters():
        if id(p) not in skip:
            (aux if name.endswith(".quantiles") else main).append(p)
    return main, aux
