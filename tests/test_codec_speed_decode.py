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


def test_decoded_split_tensors_are_in_nchw_memory(natural_images):
    """The feature codec's synthesis runs channels-last too, but what readers get must be NCHW memory:
    compiled ops (mmcv's RoIAlign on a reader's FPN levels) read channels-last memory as garbage."""
    codec = open_codec("icm-omni-features", device="cpu")
    decoded = codec.decode_features(codec.encode(natural_images[0], **codec.default_rates()[0]))
    assert decoded.is_contiguous() and decoded.dim() == 4
