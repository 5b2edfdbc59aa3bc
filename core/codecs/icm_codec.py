"""icm's own learned codec: a small mean-scale hyperprior auto-encoder with a continuous rate and an
optional scalable residual stream. Design and training contract: docs/icm_codec.md.

* Main codec after Le et al. (thesis §3.1-3.2): ~1.5M parameters, latent at 1/8 resolution, a mean
  and scale hyperprior. Optionally (``context=True``) a context model: y in two channel groups, each
  in two checkerboard halves, every step's means and scales refined from the steps before it, so
  decoding is four parallel passes (no serial autoregression).
* Continuous rate after Cui et al. / RDC §3.2: ``num_gains`` learned per-channel gain vectors (and
  inverse gains) for y and z, ``y_hat = Q(y * G) * G_inv``; a rate ``alpha`` in [0, 1] picks a point
  between two neighbouring vectors by exponential (log-linear) interpolation.
* Auxiliary branch after RDC §3.3-3.4: the quantisation error ``y - y_hat`` goes through three
  convolutions, its own gain unit and its own entropy bottleneck into the ``aux`` stream; three
  convolutions bring it back, ``y2 = y_hat + residual``, a small network makes ``r`` from ``y2`` (and
  the decoder's features), and ``x_bar = x_hat1 + (1 - beta) * r``. A task-only decoder skips ``aux``.

Entropy models and the range coder are CompressAI's (EntropyBottleneck, GaussianConditional, rANS).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from icm.codecs import Codec, entropy_guard, gain_level_rates, joint_rans
from icm.codecs.learned import load_checkpoint, pad, tensor_hash, to_images, to_tensors
from icm.distributed import default_device
from icm.codecs.trainable import TrainableCodec, seeded
from icm.errors import BitstreamError, UserError

with warnings.catch_warnings():  # compressai's import trips torch's jit.script deprecation warning
    warnings.simplefilter("ignore", FutureWarning)
    import compressai
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.layers import GDN
    from compressai.models import CompressionModel
    from compressai.models.utils import conv, deconv

STRIDE = 32  # y at 1/8, z at 1/32 (the aux stream at 1/16): images are padded to a multiple of this
DEFAULT_CONFIG = dict(N=96, M=64, Nh=64, num_gains=6, aux_channels=64, aux_latent=32, res_channels=48)
STREAMS = ("main", "aux")  # format 1 had z in its own stream "hyper"


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """q in the forward pass, identity gradient to x (straight-through)."""
    return x + (q - x).detach()


def _inv_softplus(v):
    if isinstance(v, torch.Tensor):
        return v + torch.log(-torch.expm1(-v))  # the same, without expm1 overflowing for large steps
    return math.log(math.expm1(v))


MAX_GAIN_LEVELS = 64  # each is a default rate point (ShippedWeights.default_rates)


class GainUnit(nn.Module):
    """``num_gains`` per-channel gain vectors G_0..G_{N-1} and inverse gains, interpolated by rate.

    The gains are parameterised as ``log G_n = log G_0 + sum_{k<n} softplus(d_k)``, so every channel's
    gain grows with the index: a higher rate never quantises a channel more coarsely. The inverse gains
    are free (Cui et al.'s asymmetric gain) and start at 1/G_n. Initial gains are ``sqrt(2)`` apart
    (a doubled lambda halves the MSE-optimal step), centred on 1.
    """

    def __init__(self, num_gains: int, channels: int, step: float = 0.5 * math.log(2.0)):
        super().__init__()
        if not 1 <= num_gains <= MAX_GAIN_LEVELS:  # a crafted checkpoint must not ask for a million levels
            raise ValueError(f"{num_gains} gain levels (1..{MAX_GAIN_LEVELS})")
        self.num_gains, self.channels = num_gains, channels
        self.log_gain0 = nn.Parameter(torch.full((channels,), -step * (num_gains - 1) / 2))
        self.log_steps = nn.Parameter(torch.full((num_gains - 1, channels), _inv_softplus(step)))
        self.log_inv_gain = nn.Parameter(-self.log_table().detach().clone())

    def _set(self, log_gain0: torch.Tensor, log_steps: torch.Tensor, log_inv_gain: torch.Tensor) -> None:
        """New parameters in place (the module object stays, so a frozen unit stays frozen)."""
        trainable = self.log_gain0.requires_grad
        for name, value in (("log_gain0", log_gain0), ("log_steps", log_steps), ("log_inv_gain", log_inv_gain)):
            setattr(self, name, nn.Parameter(value.detach().clone(), requires_grad=trainable))
        self.num_gains = log_inv_gain.shape[0]

    def resize(self, num_gains: int) -> None:
        """``num_gains`` levels at their initial values (before a state dict with that many is loaded)."""
        fresh = GainUnit(num_gains, self.channels).to(self.log_gain0.device)
        self._set(fresh.log_gain0, fresh.log_steps, fresh.log_inv_gain)

    def add_low_levels(self, distances: list[float]) -> None:
        """New levels below G_0, each ``d`` of this unit's lowest step (per channel) under it: the
        table's linear continuation in the log domain, inverse gains alike. The old levels keep their
        exact values; training then places the new ones."""
        if self.num_gains < 2:
            raise ValueError("a unit with one gain level has no step to continue")
        if self.num_gains + len(distances) > MAX_GAIN_LEVELS:
            raise ValueError(f"more than {MAX_GAIN_LEVELS} gain levels")
        with torch.no_grad():
            table, inv = self.log_table(), self.log_inv_gain
            below = torch.tensor(sorted(distances, reverse=True), dtype=table.dtype, device=table.device)[:, None]
            new = table[0] - below * (table[1] - table[0])
            log_steps = torch.cat([_inv_softplus(torch.diff(torch.cat([new, table[:1]]), dim=0)), self.log_steps])
            self._set(new[0], log_steps, torch.cat([inv[0] - below * (inv[1] - inv[0]), inv]))

    def log_table(self) -> torch.Tensor:
        """(num_gains, channels) log gains, non-decreasing along the first axis."""
        steps = torch.cumsum(F.softplus(self.log_steps), dim=0)
        return torch.cat([self.log_gain0[None], self.log_gain0[None] + steps], dim=0)

    def forward(self, rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rate (B,) in [0, 1] -> gain, inverse gain, each (B, C, 1, 1)."""
        return (_interpolate(self.log_table(), rate).exp()[..., None, None],
                _interpolate(self.log_inv_gain, rate).exp()[..., None, None])


def _has_context(state: dict) -> bool:
    return any(isinstance(k, str) and k.startswith("context.") for k in state)


def _interpolate(table: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` at position ``rate * (N - 1)``, linear between neighbours (log domain), (B, C)."""
    n = table.shape[0]
    if n == 1:
        return table.expand(rate.shape[0], -1)
    pos = rate.to(table.dtype) * (n - 1)
    lo = pos.floor().clamp(0, n - 2).long()
    frac = (pos - lo.to(pos.dtype))[:, None]
    return (1 - frac) * table[lo] + frac * table[lo + 1]


class ChannelCheckerboardContext(nn.Module):
    """A two-pass-per-group context model: He et al. 2021's checkerboard ("Checkerboard context
    model for efficient learned image compression") within each of ``GROUPS`` channel groups, the
    groups coded one after another as in Minnen & Singh 2020's channel-conditional model (ELIC, He et
    al. 2022, combines the two). Step by step: group g's anchors (positions with i + j even), then its
    other half. A step's means and scales are the hyperprior's plus a residual from what the decoder
    has by then: the decoded groups before g (a 3x3 convolution) and, for the second half, g's own
    decoded anchors (a 5x5 convolution), mixed with the hyperprior's output by three 1x1 layers
    (Minnen et al.'s entropy parameters). Each residual's last layer starts at zero, so a context added
    to trained weights starts as exactly the hyperprior it refines. CompressAI has neither the
    checkerboard nor channel groups for a gained, mean-scale latent, so this glue is ours."""

    GROUPS = 2

    def __init__(self, M: int):
        super().__init__()
        if M % self.GROUPS:
            raise ValueError(f"a context model splits y's {M} channels into {self.GROUPS} equal groups")
        C = M // self.GROUPS
        self.spatial = nn.ModuleList(nn.Conv2d(C, 2 * C, 5, padding=2) for _ in range(self.GROUPS))
        self.channel = nn.ModuleList(nn.Conv2d(g * C, 2 * C, 3, padding=1) for g in range(1, self.GROUPS))
        self.params = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * M + (4 if g else 2) * C, 6 * C, 1), nn.LeakyReLU(inplace=True),
                          nn.Conv2d(6 * C, 4 * C, 1), nn.LeakyReLU(inplace=True), nn.Conv2d(4 * C, 2 * C, 1))
            for g in range(self.GROUPS))
        for p in self.params:
            nn.init.zeros_(p[-1].weight)
            nn.init.zeros_(p[-1].bias)

    @staticmethod
    def anchors(height: int, width: int, device) -> torch.Tensor:
        """(height, width) bool: True where a group is coded first, without its own spatial context."""
        i = torch.arange(height, device=device)
        return (i[:, None] + torch.arange(width, device=device)[None]) % 2 == 0

    def steps(self, y: torch.Tensor) -> list[tuple[slice, torch.Tensor]]:
        """The coding order: (channel slice, (h, w) mask) per step."""
        C = y.shape[1] // self.GROUPS
        anchor = self.anchors(*y.shape[-2:], y.device)
        return [(slice(g * C, (g + 1) * C), mask) for g in range(self.GROUPS) for mask in (anchor, ~anchor)]

    def _step(self, g: int, means, scales, channel_context, anchors_hat):
        """Group g's means and scales from the hyperprior's, the context of the groups before it (None
        for the first) and its decoded anchors (None while its anchors are read)."""
        C = means.shape[1] // self.GROUPS
        spatial = means.new_zeros(means.shape[0], 2 * C, *means.shape[-2:]) if anchors_hat is None \
            else self.spatial[g](anchors_hat)
        inputs = [means, scales] + ([channel_context] if channel_context is not None else []) + [spatial]
        d_means, d_scales = self.params[g](torch.cat(inputs, 1)).chunk(2, 1)
        own = slice(g * C, (g + 1) * C)
        return means[:, own] + d_means, scales[:, own] * torch.exp(d_scales)

    def forward(self, means: torch.Tensor, scales: torch.Tensor, read):
        """The hyperprior's means and scales -> (means, scales, y_hat) for all of y. ``read(channels,
        mask, means, scales)`` returns y_hat of those channels (valid at ``mask``) given the entropy
        model of that step: y rounded (training, encoding) or the symbols read from the file
        (decoding). Every step's parameters use only what earlier steps returned."""
        C = means.shape[1] // self.GROUPS
        anchor = self.anchors(*means.shape[-2:], means.device)
        out_means, out_scales, decoded = [], [], []
        for g in range(self.GROUPS):
            own = slice(g * C, (g + 1) * C)
            before = self.channel[g - 1](torch.cat(decoded, 1)) if g else None
            m_a, s_a = self._step(g, means, scales, before, None)
            y_a = read(own, anchor, m_a, s_a) * anchor
            m_r, s_r = self._step(g, means, scales, before, y_a)
            y_r = read(own, ~anchor, m_r, s_r)
            out_means.append(torch.where(anchor, m_a, m_r))
            out_scales.append(torch.where(anchor, s_a, s_r))
            decoded.append(torch.where(anchor, y_a, y_r))
        return torch.cat(out_means, 1), torch.cat(out_scales, 1), torch.cat(decoded, 1)


class ResidualNet(nn.Module):
    """R(y2): transposed convolutions back to full resolution, with the main decoder's 1/4 and 1/2
    features mixed in through point-wise convolutions (RDC §3.3). The last layer starts at zero, so an
    untrained branch gives r = 0 and x_bar = x_hat1 for every beta."""

    def __init__(self, M: int, N: int, C: int):
        super().__init__()
        self.up1, self.up2, self.up3 = deconv(M, C), deconv(C, C), deconv(C, 3)
        self.f1, self.f2 = nn.Conv2d(N, C, 1), nn.Conv2d(N, C, 1)
        nn.init.zeros_(self.up3.weight)
        nn.init.zeros_(self.up3.bias)

    def forward(self, y2: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        h = F.leaky_relu(self.up1(y2) + self.f1(feats[0]))
        h = F.leaky_relu(self.up2(h) + self.f2(feats[1]))
        return self.up3(h)


class ICMNet(CompressionModel):
    """The network. ``rate`` is a float or a per-sample (B,) tensor in [0, 1]; ``beta`` a float or (B,).

    ``train_quant``: ``"noise"`` feeds the decoder the noisy latent in training (as the entropy
    models do); ``"ste"`` feeds it the rounded latent with a straight-through gradient (likelihoods
    still use noise). In eval mode the decoder always gets the rounded latent, straight-through, so
    gradients still reach the input and the gains.
    """

    def __init__(self, N: int = 96, M: int = 64, Nh: int = 64, num_gains: int = 6, aux: bool = True,
                 aux_channels: int = 64, aux_latent: int = 32, res_channels: int = 48,
                 train_quant: str = "noise", context: bool = False):
        super().__init__()
        if train_quant not in ("noise", "ste"):
            raise ValueError(f"train_quant must be 'noise' or 'ste', not {train_quant!r}")
        self.config = dict(N=N, M=M, Nh=Nh, num_gains=num_gains, aux=aux, aux_channels=aux_channels,
                           aux_latent=aux_latent, res_channels=res_channels, context=context)
        self.train_quant = train_quant
        self.g_a = nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, M))
        self.g_s = nn.ModuleList([nn.Sequential(deconv(M, N), GDN(N, inverse=True)),
                                  nn.Sequential(deconv(N, N), GDN(N, inverse=True)),
                                  deconv(N, 3)])
        self._add_hyperprior(M, Nh, num_gains)
        self.set_context(context)
        self.aux = aux
        if aux:
            A, L = aux_channels, aux_latent
            self.aux_a = nn.Sequential(conv(M, A, 3, 1), nn.LeakyReLU(inplace=True), conv(A, A, 3, 2),
                                       nn.LeakyReLU(inplace=True), conv(A, L, 3, 1))
            self.aux_s = nn.Sequential(conv(L, A, 3, 1), nn.LeakyReLU(inplace=True), deconv(A, A, 3, 2),
                                       nn.LeakyReLU(inplace=True), conv(A, M, 3, 1))
            self.gain_aux = GainUnit(num_gains, L)
            self.aux_bottleneck = EntropyBottleneck(L)
            self.aux_r = ResidualNet(M, N, res_channels)

    # -- construction --------------------------------------------------------------------------------
    def _add_hyperprior(self, M: int, Nh: int, num_gains: int) -> None:
        """The mean-scale hyperprior over an M-channel latent (z: Nh channels, two stride-2 steps down)
        and the gain units of y and z; shared with the feature compressor of icm-omni-features."""
        self.h_a = nn.Sequential(conv(M, Nh, 3, 1), nn.LeakyReLU(inplace=True), conv(Nh, Nh),
                                 nn.LeakyReLU(inplace=True), conv(Nh, Nh))
        self.h_s = nn.Sequential(deconv(Nh, M), nn.LeakyReLU(inplace=True), deconv(M, M * 3 // 2),
                                 nn.LeakyReLU(inplace=True), conv(M * 3 // 2, 2 * M, 3, 1))
        self.gain_y = GainUnit(num_gains, M)
        self.gain_z = GainUnit(num_gains, Nh)
        self.entropy_bottleneck = EntropyBottleneck(Nh)
        self.gaussian_conditional = GaussianConditional(None)
        self.context = None

    def set_context(self, on: bool) -> None:
        """Add a context model (zero-initialised: it starts as the plain hyperprior), or remove it."""
        if on != (self.context is not None):
            self.context = ChannelCheckerboardContext(self.gain_y.log_gain0.shape[0]).to(self.gain_y.log_gain0.device) if on else None
        if "context" in self.config:
            self.config["context"] = on

    @classmethod
    def from_state_dict(cls, state: dict, **kwargs) -> "ICMNet":
        """Build the architecture a state dict describes (widths read from its shapes) and load it.
        Raises ValueError if the dict is not an ICMNet's."""
        try:
            N, M = state["g_a.0.weight"].shape[0], state["g_a.4.weight"].shape[0]
            Nh = state["h_a.0.weight"].shape[0]
            num_gains = state["gain_y.log_inv_gain"].shape[0]
            aux = "aux_a.0.weight" in state
            extra = {"context": _has_context(state)}
            if aux:
                extra.update(aux_channels=state["aux_a.0.weight"].shape[0],
                             aux_latent=state["aux_a.4.weight"].shape[0],
                             res_channels=state["aux_r.up1.weight"].shape[1])
        except (KeyError, IndexError, AttributeError) as exc:
            raise ValueError(f"not an ICMNet state dict (no {exc})") from None
        net = cls(N=N, M=M, Nh=Nh, num_gains=num_gains, aux=aux, **extra, **kwargs)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(str(exc).splitlines()[0]) from None
        return net

    # -- the number of gain levels -------------------------------------------------------------------
    def gain_units(self) -> list[GainUnit]:
        return [self.gain_y, self.gain_z] + ([self.gain_aux] if self.aux else [])

    def fit_state(self, state: dict) -> None:
        """Give the gain units as many levels as ``state`` has, and a context model exactly when it has
        one, so it loads (a run can start from weights with another number of rate levels, or without
        the context, than the codec's own)."""
        self.set_context(_has_context(state))
        table = state.get("gain_y.log_inv_gain")
        levels = int(table.shape[0]) if isinstance(table, torch.Tensor) and table.ndim == 2 else 0
        if 1 <= levels <= MAX_GAIN_LEVELS and levels != self.config["num_gains"]:  # else loading reports the shape that differs
            for unit in self.gain_units():
                unit.resize(levels)
            self.config["num_gains"] = levels

    def add_low_gains(self, distances: list[float]) -> None:
        """Extend the rate range downwards: one new lowest gain level per distance (in units of each
        unit's lowest step below its old lowest level), in every gain unit. Rate 0 is then the new
        lowest level; the old levels move up the rate axis."""
        for unit in self.gain_units():
            unit.add_low_levels(distances)
        self.config["num_gains"] += len(distances)

    AUX_MODULES = ("aux_a", "aux_s", "gain_aux", "aux_bottleneck", "aux_r")
    stride = STRIDE  # of z relative to the input; inputs are sized in multiples of it
    # decoding's synthesis: oneDNN's transposed convolutions take about half the time on channels-last
    # input, with the same sums (tests/test_codec_speed_decode.py checks the pixels bit for bit)
    synthesis_format = torch.channels_last

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``primary`` (encoder, decoder, hyperprior, y/z gains), ``aux_branch`` (scalable transform,
        its gains, residual network) and ``quantiles`` (the entropy bottlenecks' quantiles, for
        CompressAI's separate ``aux_loss`` optimiser). RDC trains ``aux_branch`` in a second stage
        with ``primary`` frozen (``codec.train_modules = AUX_MODULES`` in ``icm train``)."""
        groups: dict[str, list] = {"primary": [], "aux_branch": [], "quantiles": []}
        for name, p in self.named_parameters():
            key = "quantiles" if name.endswith(".quantiles") else \
                "aux_branch" if name.split(".")[0] in self.AUX_MODULES else "primary"
            groups[key].append(p)
        return groups

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _per_sample(value, batch: int, device, what: str) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=torch.float32, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"{what} must be a float or a ({batch},) tensor, not shape {tuple(t.shape)}")
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"{what} must lie in [0, 1]")
        return t

    def _decode(self, y_hat: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f1 = self.g_s[0](y_hat)
        f2 = self.g_s[1](f1)
        return self.g_s[2](f2), [f1, f2]

    def _hyper(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        means, scales = self.h_s(z_hat).chunk(2, 1)
        return means, scales

    # -- training / analysis -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, rate, beta=1.0, aux: bool | None = None, synthesis: bool = True) -> dict:
        """x (B,3,H,W) in [0,1], H and W multiples of 32.

        Returns ``x_hat`` (x_bar at ``beta``), ``x_hat_main`` (x_hat1), ``likelihoods`` {y, z},
        ``aux_likelihoods`` {aux} (only when the aux branch ran), ``y``, ``y_hat``, ``r`` (or None).
        The aux branch runs when the net has one and ``beta`` is not the number 1 (at beta = 1 it
        cannot change x_hat, so stage-1 training does not pay for it); ``aux=True``/``False`` forces it.
        ``synthesis=False`` stops at the likelihoods (no ``x_hat``, ``x_hat_main``, ``r``): a rate
        estimate at about half the cost.
        """
        B = x.shape[0]
        rate = self._per_sample(rate, B, x.device, "rate")
        g_y, ig_y = self.gain_y(rate)
        g_z, ig_z = self.gain_z(rate)
        y = self.g_a(x)
        y_g = y * g_y
        z_g = self.h_a(y_g) * g_z
        z_g_hat, z_lik = self.entropy_bottleneck(z_g)
        if not self.entropy_bottleneck.training:
            z_g_hat = _ste(z_g, z_g_hat)
        means, scales = self._hyper(z_g_hat * ig_z)
        if self.context is not None:  # each step sees y rounded as the decoder will have it by then
            means, scales, _ = self.context(means, scales, lambda c, mask, m, s: _ste(y_g[:, c], torch.round(y_g[:, c] - m) + m))
        y_g_hat, y_lik = self.gaussian_conditional(y_g, scales, means=means)
        if not self.gaussian_conditional.training or self.train_quant == "ste":
            y_g_hat = _ste(y_g, torch.round(y_g - means) + means)
        y_hat = y_g_hat * ig_y
        out = {"likelihoods": {"y": y_lik, "z": z_lik}, "y": y, "y_hat": y_hat, "r": None}
        if synthesis:
            x_main, feats = self._decode(y_hat)
            out.update(x_hat=x_main, x_hat_main=x_main)
        if aux is None:
            aux = self.aux and not (isinstance(beta, (int, float)) and float(beta) == 1.0)
        if aux:
            if not self.aux:
                raise ValueError("this ICMNet has no aux branch")
            beta = self._per_sample(beta, B, x.device, "beta")
            g_a, ig_a = self.gain_aux(rate)
            s_g = self.aux_a(y - y_hat) * g_a
            s_g_hat, s_lik = self.aux_bottleneck(s_g)
            out["aux_likelihoods"] = {"aux": s_lik}
            if not synthesis:
                return out
            if not self.aux_bottleneck.training or self.train_quant == "ste":
                medians = self.aux_bottleneck.quantiles[:, 0, 1].detach()[None, :, None, None]
                s_g_hat = _ste(s_g, torch.round(s_g - medians) + medians)
            y2 = y_hat + self.aux_s(s_g_hat * ig_a)
            r = self.aux_r(y2, feats)
            out.update(x_hat=x_main + (1 - beta)[:, None, None, None] * r, r=r, y2=y2)
        return out

    # -- coding --------------------------------------------------------------------------------------
    @torch.no_grad()
    def compress(self, x: torch.Tensor, rate: float, aux: bool = False) -> dict[str, bytes]:
        """One image (1,3,H,W), H and W multiples of 32 -> {"main"(, "aux")} byte strings.
        Needs ``update()`` first (the codec does it)."""
        if x.shape[0] != 1:
            raise ValueError("compress codes one image at a time (compress_batch codes several)")
        return self.compress_batch(x, rate, aux)[0]

    def _z_medians(self) -> torch.Tensor:
        return self.entropy_bottleneck._get_medians().detach().reshape(-1, 1, 1)

    def _y_steps(self, y: torch.Tensor) -> list[tuple[slice, torch.Tensor]]:
        """y's groups of symbols in coding order, (channel slice, (h, w) mask) each: all of y, or the
        context model's steps."""
        if self.context is None:
            return [(slice(None), torch.ones(y.shape[-2:], dtype=torch.bool, device=y.device))]
        return self.context.steps(y)

    @torch.no_grad()
    def compress_batch(self, x: torch.Tensor, rate: float, aux: bool = False) -> list[dict[str, bytes]]:
        """(B,3,H,W) at one rate -> one {"main"(, "aux")} dict per image; the entropy coders code each
        image on its own, so every dict is a complete file's streams. ``main`` holds z, then y (with a
        context model: in its steps), in one rANS string (``joint_rans``)."""
        if aux and not self.aux:
            raise ValueError("this ICMNet has no aux branch")
        B = x.shape[0]
        rate = self._per_sample(rate, B, x.device, "rate")
        g_y, ig_y = self.gain_y(rate)
        g_z, ig_z = self.gain_z(rate)
        y = self.g_a(x)
        y_g = y * g_y
        z_g = self.h_a(y_g) * g_z
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        medians = self._z_medians()
        z_symbols = eb.quantize(z_g, "symbols", medians)
        # the hyperprior comes from the quantised z, exactly as the decoder will compute it
        means, scales = self._hyper(eb.dequantize(z_symbols, medians) * ig_z)
        if self.context is not None:  # each step's entropy model from the steps before it, as the decoder reads them
            means, scales, _ = self.context(means, scales, lambda c, mask, m, s: gc.quantize(y_g[:, c], "dequantize", m))
        indexes = gc.build_indexes(scales)
        y_symbols = gc.quantize(y_g, "symbols", means)
        z_indexes = eb._build_indexes(z_g.size())
        steps = self._y_steps(y_g)
        out = [{"main": joint_rans.encode([(eb, z_symbols[i], z_indexes[i])] +
                                          [(gc, y_symbols[i][c][:, mask], indexes[i][c][:, mask]) for c, mask in steps])}
               for i in range(B)]
        if aux:
            y_hat = gc.quantize(y_g, "dequantize", means) * ig_y
            g_a, _ = self.gain_aux(rate)
            for d, s in zip(out, self.aux_bottleneck.compress(self.aux_a(y - y_hat) * g_a)):
                d["aux"] = s
        return out

    @torch.no_grad()
    def decompress(self, streams: dict[str, bytes], size: tuple[int, int], rate: float, beta: float = 1.0) -> torch.Tensor:
        """Streams and the padded image size (H, W) -> x_bar (1,3,H,W), unclamped. ``aux`` is used
        only when present and ``beta < 1``; without it (a task-only decode) the result is x_hat1."""
        return self.decompress_batch([streams], size, rate, beta)

    @torch.no_grad()
    def decompress_batch(self, streams: list[dict[str, bytes]], size: tuple[int, int], rate: float,
                         beta: float = 1.0) -> torch.Tensor:
        """``decompress`` for B files of one size and rate -> (B,3,H,W). The aux residual is added only
        when every file has an aux stream."""
        H, W = size
        if H % self.stride or W % self.stride:
            raise ValueError(f"size {size} is not a multiple of {self.stride}")
        device = self.gain_y.log_gain0.device
        B = len(streams)
        rate = self._per_sample(rate, B, device, "rate")
        beta = float(self._per_sample(beta, 1, device, "beta")[0])
        _, ig_y = self.gain_y(rate)
        _, ig_z = self.gain_z(rate)
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        medians = self._z_medians()
        z_indexes = eb._build_indexes((1, len(medians), H // self.stride, W // self.stride)).to(device)
        symbols = z_indexes.numel() + self.config["M"] * (H * 4 // self.stride) * (W * 4 // self.stride)  # z + y
        y_hats = []
        for i, one in enumerate(streams):
            reader = joint_rans.Reader(one["main"], symbols, "stream 'main'")
            z_g_hat = eb.dequantize(reader.read(eb, z_indexes), medians)
            means, scales = self._hyper(z_g_hat * ig_z[i:i + 1])

            def read(c, mask, m, s, reader=reader):
                found = torch.zeros(m.shape, dtype=torch.int32, device=device)
                found[:, :, mask] = reader.read(gc, gc.build_indexes(s)[:, :, mask])
                return gc.dequantize(found, m)

            if self.context is None:  # one step: all of y (the mask of _y_steps)
                y_g_hat = read(*self._y_steps(means)[0], means, scales)
            else:
                y_g_hat = self.context(means, scales, read)[2]
            y_hats.append(y_g_hat * ig_y[i:i + 1])
        y_hat = torch.cat(y_hats)
        x_main, feats = self._decode(y_hat.contiguous(memory_format=self.synthesis_format))
        # back to NCHW memory: readers hand the output to compiled ops that assume it (a compiled
        # RoIAlign on a feature reader's FPN levels read channels-last memory as garbage)
        x_main = x_main.contiguous()
        if beta == 1.0 or not all("aux" in s for s in streams):
            return x_main
        if not self.aux:
            raise ValueError("the bitstream has an aux stream but this ICMNet has no aux branch")
        _, ig_a = self.gain_aux(rate)
        s_g_hat = self.aux_bottleneck.decompress([s["aux"] for s in streams], (H // 16, W // 16))
        r = self.aux_r(y_hat + self.aux_s(s_g_hat * ig_a), feats)
        return (x_main + (1 - beta) * r).contiguous()


class ShippedWeights(TrainableCodec):
    """Weights of icm's own continuous-rate codecs: ``checkpoint`` (a state dict), else the shipped
    configs/codecs/<name>/model.pth; ``weights="random"`` for seeded untrained weights. Also sets the
    name, version (``<format_version>-cai<CompressAI minor version>``: the payload layout and the
    entropy coder), device and rate control. Training: the module is ``self.net`` (a state dict of it is
    a ``checkpoint``), rebuilt from its ``config``."""

    format_version = 2  # 1: z in a stream "hyper" of its own; 2: z, then y, in one rANS string "main"

    def _init_weights(self, name: str, checkpoint: str | None, weights: str, device: str | None) -> None:
        if weights not in ("pretrained", "random"):
            raise UserError(f"weights must be 'pretrained' or 'random', not {weights!r}")
        if weights == "random" and checkpoint:
            raise UserError("--weights random and --checkpoint contradict each other; give one")
        self.name, self.weights = name, weights
        self.version = f"{self.format_version}-cai" + ".".join(compressai.__version__.split(".")[:2])
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.device = default_device(device)
        self.rate_control = gain_level_rates(0)  # no sweep until the weights tell their levels: default_rates()
        self._hash = b""

    def default_rates(self) -> list[dict]:
        """The trained gain levels of these weights: between two levels the gains are interpolated,
        which no training step saw."""
        self.rate_control = gain_level_rates(self.net.config["num_gains"])
        return super().default_rates()

    def weights_file(self) -> Path | None:
        if self.weights == "random":
            return None
        if self.checkpoint is not None:
            return self.checkpoint
        from icm.paths import configs_dir

        return configs_dir() / "codecs" / self.name / "model.pth"

    def trainable_module(self, quality: int | None = None) -> nn.Module:
        return self.net

    def fresh_module(self, module: nn.Module, seed: int) -> nn.Module:
        return seeded(seed, lambda: type(module)(**module.config))

    def unavailable_reason(self) -> str | None:
        path = self.weights_file()
        if path is None or path.is_file():
            return None
        if self.checkpoint is not None:
            return f"checkpoint {path}: no such file"
        return (f"no weights at {path} (reinstall icm to get the shipped ones), or pass --checkpoint FILE, "
                f"or --weights random for untrained weights")


class ICMCodec(ShippedWeights, Codec):
    """ICMNet as an icm codec: continuous ``rate`` 0..1 stored in the container as ``{"rate": a}``.

    ``aux=True`` adds the ``aux`` stream when encoding; decoding uses it only when ``decode_beta < 1``
    (``beta`` option, default 1: the task-oriented image). Dropping ``aux`` from a file
    (``Bitstream.to_bytes(["main"])``) leaves a valid task-only file. Weights: ``checkpoint``,
    else configs/codecs/<name>/model.pth; ``weights="random"`` gives seeded untrained weights (with
    the aux branch, so the weights hash does not depend on ``aux``).
    """

    kind = "learned"
    # peak memory grows 345-370 MB per megapixel over the family on a photograph, 376 on noise (the
    # worst case; benchmarks/image_size_limits.py, tests/test_memory_check.py); declared with a margin
    memory_mb_per_mp = 460.0

    def __init__(self, checkpoint: str | None = None, weights: str = "pretrained", device: str | None = None,
                 aux: bool = False, name: str = "icm-omni", beta: float = 1.0):
        if not 0.0 <= float(beta) <= 1.0:
            raise UserError(f"beta {beta} out of range (0..1)")
        self._init_weights(name, checkpoint, weights, device)
        self.aux, self.decode_beta = bool(aux), float(beta)
        self.description = ("icm's variable-rate ICM codec (mean-scale hyperprior, gain units"
                            + (", aux residual stream)" if aux else ")"))
        self._net: ICMNet | None = None

    @property
    def net(self) -> ICMNet:
        if self._net is None:
            self.require_available()
            net = self._build()
            if self.aux and not net.aux:
                raise UserError(f"{self.weights_file()} has no aux branch; it cannot encode with aux=True")
            net.update(force=True)
            entropy_guard.guard(net, {"entropy_bottleneck": "main", "gaussian_conditional": "main", "aux_bottleneck": "aux"})
            self._net = net.to(self.device).eval()
            self._hash = tensor_hash(self._net.state_dict())
        return self._net

    def _build(self) -> ICMNet:
        if self.weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return ICMNet(**DEFAULT_CONFIG, aux=True)
        path = self.weights_file()
        state = load_checkpoint(path)
        try:
            return ICMNet.from_state_dict(state)
        except ValueError as exc:
            raise UserError(f"checkpoint {path} does not fit {self.name} ({str(exc)[:200]})") from None

    def weights_hash(self, rate: dict) -> bytes:
        self.net
        return self._hash

    # -- training (TrainableCodec) ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, rate, beta=1.0, aux: bool | None = None) -> dict:
        """``ICMNet.forward``; the net is in eval mode until the caller sets ``codec.net.train()``."""
        return self.net(x, rate, beta, aux=aux)

    def fit_state(self, module: ICMNet, state: dict) -> None:
        module.fit_state(state)

    def add_low_gains(self, module: ICMNet, distances: list[float]) -> None:
        module.add_low_gains(distances)

    def add_context(self, module: ICMNet) -> None:
        module.set_context(True)

    def estimate_bits(self, image: np.ndarray, rate: dict) -> float:
        """Bits the entropy models expect for this image (main + hyper, plus aux when ``aux``)."""
        return self.estimate_bits_batch([image], rate)[0]

    def estimate_bits_batch(self, images: list[np.ndarray], rate: dict) -> list[float]:
        """``estimate_bits`` for equal-sized images, in one forward pass."""
        net = self.net
        with torch.no_grad():
            out = net(pad(to_tensors(images, self.device), STRIDE), rate["rate"], aux=self.aux, synthesis=False)
        liks = list(out["likelihoods"].values()) + list(out.get("aux_likelihoods", {}).values())
        return [float(b) for b in sum(-torch.log2(v).flatten(1).sum(1) for v in liks)]

    # -- coding ----------------------------------------------------------------------------------------
    def encode_streams(self, image, rate):
        return self.encode_streams_batch([image], rate)[0]

    def encode_streams_batch(self, images, rate):
        # one network pass per image: oneDNN's convolutions round differently at other batch sizes, so a
        # batched pass could flip a rounding and make a file depend on its batch (and on --workers)
        return [self.net.compress(pad(to_tensors([im], self.device), STRIDE), rate["rate"], aux=self.aux) for im in images]

    def decode_streams(self, streams, rate, width, height):
        return self.decode_streams_batch([streams], rate, width, height)[0]

    def decode_streams_batch(self, streams, rate, width, height):
        size = (-(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE)
        net = self.net
        for one in streams:
            names = set(one)
            if "main" not in names or not names <= set(STREAMS):
                raise BitstreamError(f"{self.name} needs stream main (and optionally aux), got {sorted(names)}")
            # z, at the start of main, has a size the header alone fixes: checked before any latent is allocated
            entropy_guard.check_bottleneck(net.entropy_bottleneck, one["main"], (size[0] // STRIDE, size[1] // STRIDE),
                                           "stream 'main'")
            if "aux" in one and self.decode_beta < 1 and net.aux:
                entropy_guard.check_bottleneck(net.aux_bottleneck, one["aux"], (size[0] // 16, size[1] // 16), "stream 'aux'")
        # every file is checked before any is decoded; then one synthesis pass per file, so the pixels
        # depend on the file alone (a batched pass moved ±1 at a pixel or two per image)
        return [to_images(net.decompress(one, size, rate["rate"], beta=self.decode_beta)[..., :height, :width])[0]
                for one in streams]
