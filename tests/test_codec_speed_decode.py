"""icm-omni's decoder runs its synthesis on channels-last tensors for speed: the decoded pixels must be
those of the default (contiguous) layout, bit for bit, with and without the aux residual."""

import numpy as np
import pytest
import torch

from icm.codecs import open_codec
from icm.codecs.icm_codec import ICMNet


def decode_both(codec, data, monkeypatch):
    assert ICMNet.synthesis_format is torch.channels_last  # the shipped fast path
    fast = codec.decode(data)
    with monkeypatch.context() as m:
        m.setattr(ICMNet, "synthesis_format", torch.contiguous_format)  # the layout before the speed-up
        old = codec.decode(data)
    return fast, old


@pytest.mark.parametrize("name, options", [("icm-omni", {}), ("icm-omni-aux", {"beta": 0.5})])
def test_channels_last_synthesis_decodes_the_same_pixels(name, options, natural_images, monkeypatch):
    torch.set_num_threads(1)
    codec = open_codec(name, device="cpu", **options)
    rates = codec.default_rates()
    for image in natural_images[:2]:
        for rate in (rates[0], rates[-1]):
            fast, old = decode_both(codec, codec.encode(image, **rate), monkeypatch)
            assert fast.shape == image.shape
            assert np.array_equal(fast, old), (name, rate)
