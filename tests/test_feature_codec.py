"""Feature bitstreams and the feature codec kind (icm-omni-features): the header names the split point
and the tensor's shape, decoding gives the tensor, and every mismatch or damage is one line, exit 2."""

import dataclasses

import numpy as np
import pytest
import torch

from conftest import assert_user_error, run_icm
from icm.bitstream import Bitstream, FeatureInfo
from icm.codecs import open_codec
from icm.errors import BitstreamError

SPLIT = "resnet18w32.layer1"


@pytest.fixture(scope="module")
def codec():
    torch.set_num_threads(1)
    return open_codec("icm-omni-features", weights="random", device="cpu")


@pytest.fixture(scope="module")
def image(natural_images):
    return natural_images[0]  # 161x191: padded to 192x192 inside


@pytest.fixture(scope="module")
def coded(codec, image):
    return codec.to_bitstream(image, rate=0.5)


def test_feature_header_round_trip_and_size():
    bs = Bitstream("x", "1", b"h" * 8, 128, 96, {"rate": 0.5}, {"main": b"abc"},
                   features=FeatureInfo(SPLIT, (32, 32, 32)))
    back = Bitstream.from_bytes(bs.to_bytes())
    assert back == bs and back.colour == "FEATURES" and back.features.shape == (32, 32, 32)
    pixels = dataclasses.replace(bs, features=None, colour="RGB8")
    # the split point and shape cost a few dozen bytes at most
    assert len(bs.to_bytes()) - len(pixels.to_bytes()) == 1 + len(SPLIT) + 1 + 3
    with pytest.raises(ValueError):
        Bitstream("x", "1", b"", 8, 8, {}, {}, colour="FEATURES")


@pytest.mark.parametrize("rank_byte", [0, 9, 255])
def test_a_corrupt_feature_header_is_refused(rank_byte):
    bs = Bitstream("x", "1", b"", 64, 64, {"rate": 0.5}, {"main": b"abc"}, features=FeatureInfo("s", (32, 16, 16)))
    data = bytearray(bs.to_bytes()[:-4])
    at = data.index(b"\x01s") + 2  # colour 1, str8 "s", then the rank byte
    data[at] = rank_byte
    import struct
    import zlib

    data += struct.pack(">I", zlib.crc32(bytes(data)))
    with pytest.raises(BitstreamError, match="feature header|truncated|corrupt"):
        Bitstream.from_bytes(bytes(data))


def test_encode_writes_features_and_decode_gives_the_tensor(codec, image, coded):
    h, w = image.shape[:2]
    assert coded.features == FeatureInfo(SPLIT, (32, 48, 48))  # stride 4 of the image padded to 192x192
    assert codec.info()["kind"] == "features" and codec.info()["split"] == SPLIT
    data = coded.to_bytes()
    feats = codec.decode_features(data)
    assert feats.shape == (1, 32, 48, 48) and torch.isfinite(feats).all()
    # the decoded tensor approximates the split tensor the encoder computed (untrained: loosely)
    original = codec.image_features([image])
    assert feats.shape == original.shape
    pixels = codec.decode(data)  # the pixel path goes through the image decoder
    assert pixels.shape == (h, w, 3) and pixels.dtype == np.uint8
    features, picture = codec.decode_all(coded)
    assert torch.equal(features, feats) and np.array_equal(picture, pixels)


def test_rate_moves_bits_and_the_estimate_matches_the_file(codec, image):
    sizes = [len(codec.encode(image, rate=r)) for r in (0.0, 0.5, 1.0)]
    assert sizes[0] < sizes[1] < sizes[2]
    est = codec.estimate_bits(image, {"rate": 0.5}) / 8
    real = len(codec.encode(image, rate=0.5))
    header = len(codec.to_bitstream(image, rate=0.5).to_bytes()) - sum(
        len(v) for v in codec.to_bitstream(image, rate=0.5).streams.values())
    assert abs(real - est) <= header + 0.02 * real + 8  # rANS flushes whole words per stream


def _reserialised(bs: Bitstream, **changes) -> bytes:
    return dataclasses.replace(bs, **changes).to_bytes()


def test_mismatches_and_damage_are_refused(codec, coded):
    with pytest.raises(BitstreamError, match="splits at"):
        codec.decode_features(_reserialised(coded, features=FeatureInfo("resnet50.layer2", coded.features.shape)))
    with pytest.raises(BitstreamError, match="does not fit"):
        codec.decode_features(_reserialised(coded, features=FeatureInfo(SPLIT, (32, 4096, 4096))))
    with pytest.raises(BitstreamError, match="weights mismatch"):
        codec.decode_features(_reserialised(coded, weights_hash=b"\x00" * 8))
    with pytest.raises(BitstreamError, match="version"):
        codec.decode_features(_reserialised(coded, codec_version="0"))
    truncated = {**coded.streams, "main": coded.streams["main"][: len(coded.streams["main"]) // 2]}
    with pytest.raises(BitstreamError):
        codec.decode_features(_reserialised(coded, streams=truncated))
    # a pixel codec refuses a feature file even under its own name
    jpeg = open_codec("jpeg")
    with pytest.raises(BitstreamError, match="feature tensor"):
        jpeg.decode(_reserialised(coded, codec="jpeg", codec_version=jpeg.version, weights_hash=b"",
                                  rate={"quality": 50}))
    # a feature codec refuses a pixel file
    with pytest.raises(BitstreamError, match="holds pixels"):
        codec.decode_features(_reserialised(coded, features=None, colour="RGB8"))


def test_cli_info_shows_the_split_and_decode_refuses_in_one_line(tmp_path, coded):
    good = tmp_path / "good.icm"
    good.write_bytes(coded.to_bytes())
    proc = run_icm("info", good, "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    info = json.loads(proc.stdout)
    assert info["colour"] == "FEATURES" and info["features"] == {"split": SPLIT, "shape": [32, 48, 48]}
    bad = tmp_path / "bad.icm"
    bad.write_bytes(_reserialised(coded, features=FeatureInfo("resnet50.layer2", coded.features.shape)))
    assert_user_error(run_icm("decode", bad, "-o", tmp_path / "out.png", "--weights", "random"), "splits at")
    assert not (tmp_path / "out.png").exists()


def test_feature_losses_reach_the_if_module(codec, image):
    from icm.tasks import Batch
    from icm.training.losses import Context, build_loss

    net = codec.trainable_module()
    x = torch.from_numpy(np.stack([image[:128, :128]] * 2 + [image[-128:, -128:]] * 2)).permute(0, 3, 1, 2).float() / 255
    net.train()
    try:
        out = net(x, torch.tensor([0.0, 0.3, 0.6, 1.0]))
        ctx = Context(x, out["x_hat"], out["likelihoods"], Batch(x, [{}] * 4), {}, out=out, module=net)
        values = {k: build_loss(k)(ctx).mean() for k in ("feature_mse", "contrastive", "rate", "mse")}
    finally:
        net.eval()
    assert all(torch.isfinite(v) for v in values.values()), values
    (values["feature_mse"] + values["contrastive"]).backward()
    # the IF module's last convolution starts at zero (an identity IF module): it is what moves first
    assert net.if_module.out.weight.grad is not None and net.if_module.out.weight.grad.abs().sum() > 0
    assert net.compressor.g_a[0].weight.grad.abs().sum() > 0
    # the image decoder reads detached features: pixel MSE never moves the encoder side
    net.zero_grad()
    build_loss("mse")(ctx).mean().backward()
    assert net.if_module.out.weight.grad is None or net.if_module.out.weight.grad.abs().sum() == 0
    assert net.compressor.g_a[0].weight.grad is None or net.compressor.g_a[0].weight.grad.abs().sum() == 0
    assert net.image_decoder.inp.weight.grad.abs().sum() > 0
    net.zero_grad()


def test_feature_losses_refuse_a_pixel_codec():
    from icm.errors import UserError
    from icm.tasks import Batch
    from icm.training.losses import Context, build_loss

    x = torch.rand(2, 3, 64, 64)
    ctx = Context(x, x, {}, Batch(x, [{}, {}]), {}, out={"x_hat": x})
    for kind in ("feature_mse", "contrastive"):
        with pytest.raises(UserError, match="feature codec"):
            build_loss(kind)(ctx)
