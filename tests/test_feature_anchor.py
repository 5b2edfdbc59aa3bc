"""hevc-features, the conventional anchor of feature coding: icm-omni-features' split tensor tiled into
one monochrome 10-bit frame and coded with x265. Round trip, rate and error against QP, the header, and
every refusal one line (exit 2 on the command line). Real ffmpeg and the seeded encoder side."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import assert_user_error, run_icm
from icm.bitstream import FeatureInfo
from icm.errors import BitstreamError, CodecUnavailable

SPLIT = "resnet18w32.layer1"


def _open(**options):
    from icm.codecs import open_codec

    try:
        codec = open_codec("hevc-features", **options)
    except CodecUnavailable as exc:
        pytest.skip(str(exc))
    reason = codec.unavailable_reason()
    if reason:
        pytest.skip(f"hevc-features is unavailable: {reason}")
    return codec


@pytest.fixture(scope="module")
def codec():
    torch.set_num_threads(1)
    return _open(weights="random", device="cpu")


@pytest.fixture(scope="module")
def image():
    from icm.datasets.shapes import render

    return render(np.random.default_rng(3), 128).image  # one 128x128 shapes scene


@pytest.fixture(scope="module")
def coded(codec, image):
    return codec.to_bitstream(image, qp=42)


def _one_line_refusal(codec, data, fragment):
    with pytest.raises(BitstreamError) as info:
        codec.decode_features(data)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and fragment in message, message
    return message


def test_round_trip_error_shrinks_and_bpp_grows_as_qp_falls(codec, image):
    original = codec.image_features([image])
    assert original.shape == (1, 32, 32, 32)
    qps = sorted({22, 32, *codec.rate_control.default_points}, reverse=True)
    bpps, errors = [], []
    for qp in qps:
        bs = codec.to_bitstream(image, qp=qp)
        decoded = codec.decode_features(bs.to_bytes())
        assert tuple(decoded.shape) == (1, *bs.features.shape) and decoded.dtype == torch.float32
        bpps.append(bs.bpp())
        errors.append(float(((decoded - original) ** 2).mean() / (original ** 2).mean()))
    # qps run from coarse to fine: every step costs bits and removes error
    assert all(a < b for a, b in zip(bpps, bpps[1:])), list(zip(qps, bpps))
    assert all(a > b for a, b in zip(errors, errors[1:])), list(zip(qps, errors))
    assert errors[-1] < 0.01  # QP 22: close to the 10-bit quantisation alone
    # the default sweep spans roughly 0.1-1.5 bpp on such an image
    defaults = [bpps[qps.index(q)] for q in codec.rate_control.default_points]
    assert 0.8 < max(defaults) < 2.5 and min(defaults) < 0.35, defaults


def test_header_names_the_split_and_shape_and_the_encoder_hash(codec, coded):
    assert coded.codec == "hevc-features" and coded.colour == "FEATURES"
    assert coded.features == FeatureInfo(SPLIT, (32, 32, 32)) and codec.split == codec.omni.split == SPLIT
    assert coded.rate == {"qp": 42} and set(coded.streams) == {"main", "range"} and len(coded.streams["range"]) == 12
    # the encoder side's hash alone: not the hash of icm-omni-features' whole network
    assert coded.weights_hash == codec.omni.encoder_hash() != codec.omni.weights_hash({"rate": 0.5})
    assert codec.info()["kind"] == "features" and codec.info()["image_decoder"] is False
    # the decoder reproduces what the encoder computed, bit for bit
    data = coded.to_bytes()
    assert torch.equal(codec.decode_features(data), codec.decode_features(data))


def test_tiling_is_a_near_square_grid_and_inverts():
    from icm.codecs.feature_anchors import tile, tile_grid, untile

    assert tile_grid(32) == (4, 8) and tile_grid(64) == (8, 8) and tile_grid(7) == (3, 3)
    for channels in (32, 7):
        q = np.arange(channels * 4 * 6, dtype="<u2").reshape(channels, 4, 6)
        rows, cols = tile_grid(channels)
        frame = tile(q, rows, cols, fill=512)
        assert frame.shape == (rows * 4, cols * 6)
        assert np.array_equal(frame[4:8, 6:12], q[cols + 1])  # channel c at row c // cols, column c % cols
        assert np.array_equal(untile(frame, channels, rows, cols), q)


def _checkpoint(codec, tmp_path, name, key):
    state = {k: v.clone() for k, v in codec.omni.net.state_dict().items()}
    state[key] += 0.01
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    return str(path)


def test_a_file_of_other_encoder_weights_is_refused(codec, image, coded, tmp_path):
    # another backbone head: another split tensor, another hash, refused both ways
    other = _open(device="cpu", checkpoint=_checkpoint(codec, tmp_path, "head", "head.conv1.weight"))
    assert other.weights_hash({}) != codec.weights_hash({})
    _one_line_refusal(codec, other.encode(image, qp=42), "weights mismatch")
    _one_line_refusal(other, coded.to_bytes(), "weights mismatch")
    # another IF module and compressor (icm-omni-features retrained past the split): the same features, the file decodes
    same = _open(device="cpu", checkpoint=_checkpoint(codec, tmp_path, "compressor", "compressor.g_a.0.weight"))
    assert same.weights_hash({}) == codec.weights_hash({})
    same = _open(device="cpu", checkpoint=_checkpoint(codec, tmp_path, "if", "if_module.out.weight"))
    assert same.weights_hash({}) == codec.weights_hash({})
    assert torch.equal(same.decode_features(coded.to_bytes()), codec.decode_features(coded.to_bytes()))


def test_damage_and_mismatches_are_refused_in_one_line(codec, coded):
    def rewritten(**changes):  # through Bitstream: the CRC is valid, only the content is wrong
        return dataclasses.replace(coded, **changes).to_bytes()

    _one_line_refusal(codec, rewritten(features=FeatureInfo("resnet18w32.layer2", (32, 32, 32))), "splits at")
    _one_line_refusal(codec, rewritten(features=FeatureInfo(SPLIT, (32, 16, 16))), "does not fit")
    main = coded.streams["main"]
    for keep in (len(main) - 1, len(main) // 2):  # ffmpeg itself "decodes" both (and the first to the same frame)
        _one_line_refusal(codec, rewritten(streams={**coded.streams, "main": main[:keep]}), "damaged or truncated")
    _one_line_refusal(codec, rewritten(streams={**coded.streams, "main": main[:40]}), "failed")  # no picture left
    flipped = bytearray(main)
    flipped[len(main) // 2] ^= 0x10
    _one_line_refusal(codec, rewritten(streams={**coded.streams, "main": bytes(flipped)}), "damaged or truncated")
    side = coded.streams["range"]
    _one_line_refusal(codec, rewritten(streams={**coded.streams, "range": side[:8]}), "range")
    doubled = (np.frombuffer(side[:8], "<f4") * np.float32(2)).tobytes() + side[8:]  # another range, same check
    _one_line_refusal(codec, rewritten(streams={**coded.streams, "range": doubled}), "damaged or truncated")
    _one_line_refusal(codec, rewritten(streams={"main": main}), "needs streams main and range")
    # a header for a wider image, with a tensor shape that fits it: the payload's frame is too small
    _one_line_refusal(codec, rewritten(width=256, features=FeatureInfo(SPLIT, (32, 32, 64))), "frame")
    # the pixel path: no decoder to pixels
    with pytest.raises(BitstreamError, match="codes features only") as info:
        codec.decode(coded.to_bytes())
    assert len(str(info.value).splitlines()) == 1


def test_cli_info_shows_the_features_and_decode_refuses_in_one_line(tmp_path, coded):
    path = tmp_path / "scene.icm"
    path.write_bytes(coded.to_bytes())
    proc = run_icm("info", path, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["codec"] == "hevc-features" and info["colour"] == "FEATURES"
    assert info["features"] == {"split": SPLIT, "shape": [32, 32, 32]} and info["rate"] == {"qp": 42}
    assert set(info["streams"]) == {"main", "range"}
    out = tmp_path / "scene.png"
    proc = run_icm("decode", path, "-o", out, "--weights", "random")
    assert_user_error(proc, "codes features only")
    assert proc.stderr.startswith("icm: error: ") and not out.exists()
