"""Batched coding must give the files and pixels that one-by-one coding gives: the engine codes in
batches, and a cached file from either path must stay valid for the other."""

import numpy as np
import pytest

from icm.bitstream import Bitstream
from icm.codecs import open_codec
from icm.codecs.anchors import split_hevc_pictures
from icm.errors import BitstreamError


@pytest.fixture(scope="module")
def images(icm_shapes_val):
    return list(icm_shapes_val.pixels(5))


def _one_by_one(codec, images, rate):
    files = [codec.to_bitstream(im, **rate) for im in images]
    return files, [codec.from_bitstream(bs) for bs in files]


@pytest.mark.parametrize("name,rate", [("icm-omni", {"rate": 0.4}), ("icm-hyperprior-mse", {"quality": 2}),
                                       ("hevc", {"qp": 32}), ("hevc", {"qp": 37, "scale": 0.5}), ("jpeg", {"quality": 50})])
def test_batch_equals_one_by_one(name, rate, images):
    codec = open_codec(name)
    if codec.unavailable_reason():
        pytest.skip(codec.unavailable_reason())
    files, pixels = _one_by_one(codec, images, rate)
    batch = codec.to_bitstreams(images, **rate)
    assert [len(b.to_bytes()) for b in batch] == [len(f.to_bytes()) for f in files]
    if codec.kind == "learned":  # the very same entropy-coded streams, whatever the batch
        assert [b.streams for b in batch] == [f.streams for f in files]
    decoded = codec.from_bitstreams(files)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, pixels))
    assert all(np.array_equal(a, b) for a, b in zip(codec.from_bitstreams(batch), pixels))


def test_hevc_batch_refuses_a_file_with_two_pictures(images):
    codec = open_codec("hevc")
    if codec.unavailable_reason():
        pytest.skip(codec.unavailable_reason())
    a, b, c = codec.to_bitstreams(images[:3], qp=32)
    two = Bitstream(a.codec, a.codec_version, a.weights_hash, a.width, a.height, a.rate,
                    {"main": a.streams["main"] + b.streams["main"]})
    assert len(split_hevc_pictures(two.streams["main"])) == 2
    # joined with others, a two-picture file would shift every later image by one frame
    with pytest.raises(BitstreamError, match="not one HEVC picture"):
        codec.from_bitstreams([two, c])
    assert split_hevc_pictures(b"\x00\x00\x01garbage") == []
