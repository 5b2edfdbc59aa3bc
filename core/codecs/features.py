"""Feature codecs: the codec kind ``features``. Such a codec codes the tensor a network computes at a
*split point* (for ``icm-omni-features``: stem, layer1 and the IF module of a ResNet-18 at base width
32, stride 4) instead of pixels. The file is an ordinary icm container whose colour format is
``FEATURES`` and whose header records the split point and the tensor's shape (docs/bitstream.md); bpp
is still file bytes x 8 / original pixels.

``decode_features`` returns the tensor that feature-reading tasks take. The pixel path (``decode``,
``icm decode``) works only for codecs with a decoder from features to an image (Omni-ICM Fig. 7);
for the others it is a one-line BitstreamError.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch

from icm.bitstream import Bitstream, FeatureInfo
from icm.codecs import Codec, _one_line
from icm.errors import BitstreamError


class FeatureCodec(Codec):
    kind = "features"
    split: str = ""  # the network and layer the tensor is taken at; a reading task must name the same
    has_image_decoder: bool = False

    # -- what subclasses implement -------------------------------------------------------------------
    @abstractmethod
    def feature_shape(self, height: int, width: int) -> tuple[int, ...]:
        """The split tensor's (C, h, w) for an image of this size (the header must say exactly this)."""

    @abstractmethod
    def image_features(self, images: list[np.ndarray]) -> torch.Tensor:
        """The uncompressed split tensors (N, C, h, w) of equal-sized HxWx3 uint8 images."""

    @abstractmethod
    def encode_feature_streams(self, features: torch.Tensor, rate: dict) -> dict[str, bytes]:
        """Code one (1, C, h, w) split tensor at a validated rate into named payloads."""

    @abstractmethod
    def decode_feature_streams(self, streams: dict[str, bytes], rate: dict, shape: tuple[int, ...]) -> torch.Tensor:
        """Invert ``encode_feature_streams``: a (1, *shape) float tensor."""

    def features_to_image(self, features: torch.Tensor, width: int, height: int) -> np.ndarray:
        """Decoded features -> an HxWx3 uint8 picture (codecs with ``has_image_decoder``)."""
        raise BitstreamError(f"codec {self.name!r} codes features only (split {self.split}); it has no decoder to pixels")

    # -- the Codec interface over features --------------------------------------------------------------
    def encode_streams(self, image, rate):
        return self.encode_feature_streams(self.image_features([image]), rate)

    def decode_streams(self, streams, rate, width, height):
        if not self.has_image_decoder:
            self.features_to_image(None, width, height)  # raises the one-line error
        return self.features_to_image(self.decode_feature_streams(streams, rate, self.feature_shape(height, width)),
                                      width, height)

    def to_bitstream(self, image, **rate) -> Bitstream:
        bs = super().to_bitstream(image, **rate)
        bs.features = FeatureInfo(self.split, tuple(self.feature_shape(bs.height, bs.width)))
        bs.colour = "FEATURES"
        return bs

    def to_bitstreams(self, images, **rate) -> list[Bitstream]:
        return [self.to_bitstream(image, **rate) for image in images]

    def _checked_header(self, bs: Bitstream, source: str, max_pixels: int | None) -> dict:
        rate = super()._checked_header(bs, source, max_pixels)
        if bs.features is None:
            raise BitstreamError(f"{source}: holds pixels, but {self.name} decodes a feature tensor")
        if bs.features.split != self.split:
            raise BitstreamError(f"{source}: features split at {bs.features.split!r}; {self.name} splits at {self.split!r}")
        expected = tuple(self.feature_shape(bs.height, bs.width))
        if tuple(bs.features.shape) != expected:  # checked before any tensor is allocated
            raise BitstreamError(f"{source}: feature shape {bs.features.describe().split()[-1]} does not fit a "
                                 f"{bs.width}x{bs.height} image ({self.name} makes {'x'.join(map(str, expected))})")
        return rate

    def decode_features(self, data: bytes, max_pixels: int | None = None) -> torch.Tensor:
        return self.features_from_bitstream(Bitstream.from_bytes(data), max_pixels=max_pixels)

    def features_from_bitstream(self, bs: Bitstream, source: str = "bitstream", max_pixels: int | None = None) -> torch.Tensor:
        """The decoded split tensor (1, C, h, w) of one file, every header field checked first."""
        rate = self._checked_header(bs, source, max_pixels)
        try:
            features = self.decode_feature_streams(bs.streams, rate, bs.features.shape)
        except BitstreamError as exc:
            raise BitstreamError(f"{source}: {_one_line(exc)}") from None
        except Exception as exc:  # a payload that passed the CRC but does not decode
            raise BitstreamError(f"{source}: feature payload does not decode ({type(exc).__name__}: {_one_line(exc)})") from exc
        if not torch.is_tensor(features) or tuple(features.shape) != (1, *bs.features.shape):
            got = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
            raise BitstreamError(f"{source}: decoded features {got}, expected {(1, *bs.features.shape)}")
        if not bool(torch.isfinite(features).all()):
            raise BitstreamError(f"{source}: decoded features are not finite")
        return features

    def decode_all(self, bs: Bitstream, source: str = "bitstream", max_pixels: int | None = None):
        """One decode of a file: (the split tensor, the picture made from it, or None without an
        image decoder). ``icm evaluate`` calls this once per image and rate."""
        features = self.features_from_bitstream(bs, source, max_pixels)
        if not self.has_image_decoder:
            return features, None
        try:
            image = self.features_to_image(features, bs.width, bs.height)
        except Exception as exc:
            raise BitstreamError(f"{source}: features do not decode to an image ({type(exc).__name__}: {_one_line(exc)})") from exc
        return features, image

    def info(self) -> dict:
        return {**super().info(), "split": self.split, "image_decoder": self.has_image_decoder}
