"""Feature reading: an OpenMMLab ResNet fed with a split tensor in place of its own layer output."""

from __future__ import annotations

import torch


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
