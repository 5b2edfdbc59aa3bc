"""``icm-omni-features``: Omni-ICM's feature coding (supplementary §3, Fig. 1, 2 and 7), scaled to a CPU.

* backbone head: stem and layer1 of a ResNet-18 at base width 32, the backbone every shipped task
  model uses; initialised from the shipped PanopticFPN's and never trained here (§2.3: the weights
  that extract the representation are not updated). Its output ``f`` (32 channels, stride 4) is the
  split tensor: what the task back ends read, decoded, and what hevc-features codes.
* information filtering (IF) module (Fig. 1): conv in, ResBlocks, conv out, added to ``f``; its last
  convolution starts at zero, so an untrained IF module passes ``f`` through. It filters what the
  compressor spends bits on (trained with instance discrimination and the rate).
* feature compressor (Fig. 2): ``ICMNet``'s mean-scale hyperprior and gain units (the same variable
  rate as icm-omni), with analysis and synthesis transforms of strided convolutions, LeakyReLU and
  ResBlocks instead of GDN over pixels: y at 1/16 of the image, z at 1/64. It decodes ``f̂``.

Why the distortion is measured on ``f`` and not on the IF module's output: trained on its own output,
the IF module learned to shrink it until it carried almost nothing (its output's spread fell from
1.27 to 0.17, the decoded tensor's relative error stayed at 0.8 at every rate), because a tensor that
says nothing costs no bits. Against the fixed ``f``, filtering must keep what the tasks can use.

Image decoder (Fig. 7): convolutions and ResBlocks from decoded features back to pixels, trained on
detached features (the encoder side does not move for it), so a pixel-reading task and a person get
a picture from the same file.

How far this is scaled down from the paper, and why: docs/feature_coding.md.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from icm.codecs import entropy_guard
from icm.codecs.features import FeatureCodec
from icm.codecs.icm_codec import ICMNet, ShippedWeights
from icm.codecs.learned import load_checkpoint, tensor_hash, to_images, to_tensors
from icm.errors import BitstreamError, UserError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from compressai.models import CompressionModel
    from compressai.models.utils import conv, deconv

SPLIT = "resnet18w32.layer1"  # the head's layer1 output, as the IF module + compressor decode it
CHANNELS, FEATURE_STRIDE = 32, 4
PAD_TO = 64  # z sits at 1/64 of the image
MEAN = (123.675, 116.28, 103.53)  # the shipped task models' pixel statistics (RGB, 0..255)
STD = (58.395, 57.12, 57.375)
DEFAULT_CONFIG = dict(if_channels=64, if_blocks=2, N=64, M=64, Nh=48, res_blocks=1, num_gains=6, image_channels=64)


class ResBlock(nn.Module):
    """Two 3x3 convolutions and one shortcut (Omni-ICM's ResBlock), LeakyReLU between."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.1))


def res_blocks(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels) for _ in range(n)])


class BackboneHead(nn.Module):
    """ResNet-18 stem and layer1 at base width 32, named as torchvision and OpenMMLab name them, so the
    shipped task models' ``backbone.conv1/bn1/layer1.*`` weights load into it directly."""

    def __init__(self, width: int = CHANNELS):
        from torchvision.models.resnet import BasicBlock

        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) / 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) / 255.0, persistent=False)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = (x01 - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return self.layer1(x)


class IFModule(nn.Module):
    """Fig. 1: conv in, ResBlocks, conv out; the output is added to the input (zero-initialised, so
    training starts from the head's own features)."""

    def __init__(self, channels: int = CHANNELS, inner: int = 64, blocks: int = 2):
        super().__init__()
        self.inp = nn.Conv2d(channels, inner, 3, padding=1)
        self.blocks = res_blocks(inner, blocks)
        self.out = nn.Conv2d(inner, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, f):
        return f + self.out(self.blocks(F.leaky_relu(self.inp(f), 0.1)))


class FeatureCompressor(ICMNet):
    """Fig. 2 on ICMNet's entropy coding: y = g_a(h) at 1/4 of the feature map, z at 1/16."""

    stride = 16
    # its output is a float split tensor, not rounded pixels: channels-last sums differ in the last bits,
    # so it keeps the layout its readers were trained and measured on
    synthesis_format = torch.contiguous_format

    def __init__(self, N: int = 64, M: int = 64, Nh: int = 48, res_blocks_n: int = 1, num_gains: int = 6,
                 channels: int = CHANNELS, train_quant: str = "noise"):
        CompressionModel.__init__(self)
        self.config = dict(N=N, M=M, Nh=Nh, res_blocks=res_blocks_n, num_gains=num_gains)
        self.train_quant, self.aux = train_quant, False
        self.g_a = nn.Sequential(conv(channels, N), nn.LeakyReLU(inplace=True), res_blocks(N, res_blocks_n), conv(N, M))
        self.g_s = nn.Sequential(deconv(M, N), nn.LeakyReLU(inplace=True), res_blocks(N, res_blocks_n), deconv(N, channels))
        self._add_hyperprior(M, Nh, num_gains)

    def _decode(self, y_hat):
        return self.g_s(y_hat), []


class ImageDecoder(nn.Module):
    """Fig. 7: decoded features (stride 4) -> pixels, through ResBlocks and two upsampling steps."""

    def __init__(self, channels: int = CHANNELS, inner: int = 64):
        super().__init__()
        self.inp = nn.Conv2d(channels, inner, 3, padding=1)
        self.blocks = res_blocks(inner, 2)
        self.up1, self.up2 = deconv(inner, inner), deconv(inner, 3)

    def forward(self, h):
        return self.up2(F.leaky_relu(self.up1(self.blocks(F.leaky_relu(self.inp(h), 0.1))), 0.1))


class OmniFeaturesNet(CompressionModel):
    """The whole network. ``forward(x, rate)`` (x (B,3,H,W) in [0,1], H and W multiples of 64) returns
    ``features`` (f, the split tensor), ``features_hat`` (decoded f), ``likelihoods`` {y, z} and
    ``x_hat`` (the image decoder's picture, from detached decoded features)."""

    ENCODER = ("head",)  # what computes the split tensor (hevc-features depends on it alone)

    def __init__(self, if_channels: int = 64, if_blocks: int = 2, N: int = 64, M: int = 64, Nh: int = 48,
                 res_blocks: int = 1, num_gains: int = 6, image_channels: int = 64):
        super().__init__()
        self.config = dict(if_channels=if_channels, if_blocks=if_blocks, N=N, M=M, Nh=Nh, res_blocks=res_blocks,
                           num_gains=num_gains, image_channels=image_channels)
        self.head = BackboneHead()
        self.if_module = IFModule(CHANNELS, if_channels, if_blocks)
        self.compressor = FeatureCompressor(N, M, Nh, res_blocks, num_gains)
        self.image_decoder = ImageDecoder(CHANNELS, image_channels)

    @classmethod
    def from_state_dict(cls, state: dict) -> "OmniFeaturesNet":
        """The architecture a state dict describes (widths read from its shapes), loaded."""
        try:
            cfg = dict(if_channels=state["if_module.inp.weight"].shape[0],
                       if_blocks=len({k.split(".")[2] for k in state if k.startswith("if_module.blocks.")}),
                       N=state["compressor.g_a.0.weight"].shape[0], M=state["compressor.g_a.3.weight"].shape[0],
                       Nh=state["compressor.h_a.0.weight"].shape[0],
                       res_blocks=len({k.split(".")[3] for k in state if k.startswith("compressor.g_a.2.")}),
                       num_gains=state["compressor.gain_y.log_inv_gain"].shape[0],
                       image_channels=state["image_decoder.inp.weight"].shape[0])
        except (KeyError, IndexError, AttributeError) as exc:
            raise ValueError(f"not an icm-omni-features state dict (no {exc})") from None
        net = cls(**cfg)
        from icm.training.codec import load_module_state

        try:
            load_module_state(net, state)
        except RuntimeError as exc:
            raise ValueError(str(exc).splitlines()[0]) from None
        return net

    def encoder_state(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in self.ENCODER}

    def split_features(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(x01)

    def forward(self, x: torch.Tensor, rate, beta=1.0, aux=None) -> dict:
        f = self.split_features(x)
        out = self.compressor(self.if_module(f), rate)
        f_hat = out["x_hat"]
        return {"features": f, "features_hat": f_hat, "likelihoods": out["likelihoods"],
                "x_hat": self.image_decoder(f_hat.detach())}


def load_head_from_task_model(net: OmniFeaturesNet, state: dict) -> None:
    """Copy ``backbone.conv1/bn1/layer1.*`` of a task model's state dict into the head."""
    head = {k[len("backbone."):]: v for k, v in state.items()
            if k.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1."))}
    missing = set(net.head.state_dict()) - set(head)
    if missing:
        raise UserError(f"the task model has no ResNet-18/32 head ({sorted(missing)[0]} missing)")
    net.head.load_state_dict(head)


class OmniFeaturesCodec(ShippedWeights, FeatureCodec):
    """The feature codec: continuous ``rate`` 0..1 as icm-omni's; weights from ``checkpoint``, else
    configs/codecs/<name>/model.pth; ``weights="random"``: seeded untrained weights with the shipped
    det model's head (what training starts from)."""

    split = SPLIT
    has_image_decoder = True
    # peak memory of an encode and a decode of the tensor and its picture grows 234 MB per megapixel
    # on a photograph, 272 on noise (benchmarks/image_size_limits.py, tests/test_memory_check.py)
    memory_mb_per_mp = 350.0

    def __init__(self, checkpoint: str | None = None, weights: str = "pretrained", device: str | None = None,
                 name: str = "icm-omni-features"):
        self._init_weights(name, checkpoint, weights, device)
        self.description = "Omni-ICM feature codec: ResNet-18 head + IF module + hyperprior (features, stride 4)"
        self._net: OmniFeaturesNet | None = None

    @property
    def net(self) -> OmniFeaturesNet:
        if self._net is None:
            self.require_available()
            net = self._build()
            net.update(force=True)
            entropy_guard.guard(net.compressor, {"entropy_bottleneck": "main", "gaussian_conditional": "main"})
            self._net = net.to(self.device).eval()
            self._hash = tensor_hash(self._net.state_dict())
        return self._net

    def _build(self) -> OmniFeaturesNet:
        if self.weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                net = OmniFeaturesNet(**DEFAULT_CONFIG)
            from icm.tasks import split_weights

            task_model = split_weights(SPLIT)
            if task_model is None:  # no installed task plugin computes this split: an untrained head, still seeded
                return net
            load_head_from_task_model(net, load_checkpoint(task_model))
            return net
        path = self.weights_file()
        try:
            return OmniFeaturesNet.from_state_dict(load_checkpoint(path))
        except ValueError as exc:
            raise UserError(f"checkpoint {path} does not fit {self.name} ({str(exc)[:200]})") from None

    def weights_hash(self, rate: dict) -> bytes:
        self.net
        return self._hash

    def encoder_hash(self) -> bytes:
        """Hash of what computes the split tensor (the head): what a conventional codec of the same
        split tensor (hevc-features) depends on."""
        return tensor_hash(self.net.encoder_state())

    def forward(self, x, rate, beta=1.0, aux=None) -> dict:
        return self.net(x, rate)

    # -- features --------------------------------------------------------------------------------------
    def feature_shape(self, height, width):
        return (CHANNELS, -(-height // PAD_TO) * PAD_TO // FEATURE_STRIDE, -(-width // PAD_TO) * PAD_TO // FEATURE_STRIDE)

    @torch.no_grad()
    def image_features(self, images):
        from icm.codecs.learned import pad

        x = pad(to_tensors(images, self.device), PAD_TO)
        # one pass per image, as the learned codecs code: a batched convolution may round differently
        return torch.cat([self.net.split_features(x[i:i + 1]) for i in range(x.shape[0])])

    def encode_feature_streams(self, features, rate):
        with torch.no_grad():
            return self.net.compressor.compress(self.net.if_module(features.to(self.device)), rate["rate"])

    def decode_feature_streams(self, streams, rate, shape):
        names = set(streams)
        if names != {"main"}:
            raise BitstreamError(f"{self.name} needs stream main, got {sorted(names)}")
        _, h, w = shape
        comp = self.net.compressor
        # z, at the start of main (ICMNet.compress_batch), is checked before any latent is allocated
        entropy_guard.check_bottleneck(comp.entropy_bottleneck, streams["main"], (h // comp.stride, w // comp.stride),
                                       "stream 'main'")
        return comp.decompress(streams, (h, w), rate["rate"])

    @torch.no_grad()
    def features_to_image(self, features, width, height):
        return to_images(self.net.image_decoder(features.to(self.device))[..., :height, :width])[0]

    def estimate_bits_batch(self, images, rate):
        feats = self.image_features(images)
        with torch.no_grad():
            out = self.net.compressor(self.net.if_module(feats), rate["rate"], synthesis=False)
        return [float(b) for b in sum(-torch.log2(v).flatten(1).sum(1) for v in out["likelihoods"].values())]

    def estimate_bits(self, image, rate):
        return self.estimate_bits_batch([image], rate)[0]
