"""The vvc anchor's file holds what a decoder needs and nothing more: one SPS (all-intra, so without the
random-access GOP's reference picture lists), one PPS and one picture; no access unit delimiter."""

import numpy as np
import pytest

from icm.codecs import open_codec
from icm.images import psnr

VVC_AUD, VVC_SPS, VVC_PPS = 20, 15, 16


def nal_units(stream: bytes) -> list[tuple[int, int]]:
    """(nal_unit_type, size with its start code) of each NAL unit of an Annex-B VVC stream."""
    starts = []
    i = stream.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i - 1 if i and stream[i - 1] == 0 else i)
        i = stream.find(b"\x00\x00\x01", i + 3)
    ends = starts[1:] + [len(stream)]
    return [(stream[s + (4 if stream[s + 2] == 0 else 3) + 1] >> 3 & 31, e - s) for s, e in zip(starts, ends)]


@pytest.fixture
def vvc():
    codec = open_codec("vvc")
    if codec.unavailable_reason():
        pytest.skip(codec.unavailable_reason())
    return codec


def test_vvc_file_is_parameter_sets_and_one_picture(vvc, natural_images):
    image = np.ascontiguousarray(natural_images[0][:128, :128])
    payload = vvc.encode_pixels(image, 37)
    units = nal_units(payload)
    types = [t for t, _ in units]
    assert VVC_AUD not in types
    assert types[:2] == [VVC_SPS, VVC_PPS] and len(types) == 3 and types[2] < 12  # one VCL unit: the picture
    assert units[0][1] < 64  # the random-access SPS was 150 B
    decoded = vvc.decode_pixels(payload, 128, 128)
    assert psnr(image, decoded) > 28
