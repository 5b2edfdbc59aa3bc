import numpy as np
import pytest
import torch

from icm.bitstream import Bitstream
from icm.codecs import RateControl, anchors, open_codec
from icm.codecs.learned import ARCHITECTURES, to_image, to_tensor
from icm.errors import BitstreamError, CodecUnavailable, UserError
from icm.images import psnr
from icm.plugins import get_plugins

ANCHOR_POINTS = {  # a high-quality point per anchor and the PSNR it must reach on natural images
    "jpeg": (90, 33), "webp": (90, 33), "avif": (85, 33), "jpegxl": (85, 33),
    "jpeg2000": (10, 30), "heif": (85, 33), "hevc": (22, 35), "vvc": (22, 35),
}
LOW_POINTS = {"jpeg": 10, "webp": 10, "avif": 20, "jpegxl": 20, "jpeg2000": 100, "heif": 20, "hevc": 42, "vvc": 47}


def test_every_builtin_codec_is_registered_through_the_hook():
    codecs = get_plugins().codecs
    expected = set(ANCHOR_POINTS) | set(ARCHITECTURES)
    assert expected <= set(codecs.names())
    assert {codecs.entry(n).plugin for n in expected} == {"icm.builtin.codecs"}


@pytest.mark.parametrize("name", sorted(ANCHOR_POINTS))
def test_anchor_round_trip_on_natural_images(name, natural_images):
    codec = open_codec(name)
    if codec.unavailable_reason():
        pytest.skip(codec.unavailable_reason())
    high, min_psnr = ANCHOR_POINTS[name]
    for img in natural_images:
        data_high = codec.encode(img, quality=high)
        data_low = codec.encode(img, quality=LOW_POINTS[name])
        out_high, out_low = codec.decode(data_high), codec.decode(data_low)
        assert out_high.shape == img.shape and out_high.dtype == np.uint8
        assert psnr(img, out_high) > min_psnr
        assert psnr(img, out_low) < psnr(img, out_high)
        assert len(data_low) < len(data_high)
        assert Bitstream.from_bytes(data_high).codec == name


@pytest.mark.parametrize("name", ["jpeg", "hevc"])
def test_resolution_knob_codes_smaller_and_restores_the_size(name, natural_images):
    codec = open_codec(name)
    img = natural_images[1]
    q = ANCHOR_POINTS[name][0]
    sizes = [len(codec.encode(img, quality=q, scale=s)) for s in (1.0, 0.75, 0.5, 0.25)]
    assert sizes == sorted(sizes, reverse=True)
    out = codec.decode(codec.encode(img, quality=q, scale=0.5))
    assert out.shape == img.shape
    assert 20 < psnr(img, out) < psnr(img, codec.decode(codec.encode(img, quality=q)))
    assert Bitstream.from_bytes(codec.encode(img, quality=q, scale=0.5)).rate == {anchors.HEVC.rate_control.param if name == "hevc" else "quality": q, "scale": 0.5}


@pytest.mark.parametrize("kwargs, message", [
    ({"quality": 101}, "out of range"), ({"quality": 0}, "out of range"), ({"quality": "abc"}, "not an integer"),
    ({"quality": 50, "scale": 0.3}, "scale 0.3 not supported"), ({"rate": 0.5}, "no continuous rate"), ({}, "needs --quality"),
])
def test_bad_rates_are_user_errors(kwargs, message, natural_images):
    with pytest.raises(UserError, match=message):
        open_codec("jpeg").encode(natural_images[0], **kwargs)


def test_a_continuous_codec_without_a_rate_names_the_rate_flag():
    with pytest.raises(UserError, match=r"'icm-omni' needs --rate \(rate 0\.\.1"):
        open_codec("icm-omni").check_rate()


def test_a_rate_control_with_no_way_to_set_the_rate_is_refused_at_definition():
    with pytest.raises(ValueError, match="discrete range .* or continuous"):
        RateControl("quality", None, True, ())
    assert RateControl("rate", None, True, (0.0, 1.0), continuous=True).describe() == "rate 0..1 (continuous)"


def test_vvc_without_any_backend_is_unavailable_with_a_reason(monkeypatch, natural_images):
    monkeypatch.setattr(anchors, "ffmpeg_exe", lambda: None)
    monkeypatch.setenv("PATH", "/nonexistent")
    codec = open_codec("vvc")
    assert "vvencapp/vvdecapp not on PATH" in codec.unavailable_reason()
    with pytest.raises(CodecUnavailable, match="unavailable"):
        codec.encode(natural_images[0], quality=32)


def test_corrupt_payload_with_valid_checksum_is_a_bitstream_error(natural_images):
    codec = open_codec("jpeg")
    bs = Bitstream.from_bytes(codec.encode(natural_images[0], quality=50))
    bs.streams["main"] = b"not a jpeg" * 10
    with pytest.raises(BitstreamError, match="does not decode"):
        codec.from_bitstream(bs)


def test_decoding_with_another_codec_is_refused(natural_images):
    data = open_codec("jpeg").encode(natural_images[0], quality=50)
    with pytest.raises(BitstreamError, match="made by codec 'jpeg'"):
        open_codec("webp").decode(data)


# -- learned codecs --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_learned_round_trip_matches_the_quantised_forward_path(arch, natural_images):
    """With seeded random weights the picture is meaningless, but decode(encode(x)) must equal the
    synthesis of the rounded latent: that is what the entropy coder must reproduce exactly."""
    codec = open_codec(arch, weights="random")
    img = natural_images[0][:64, :128]  # small: the autoregressive models code pixel by pixel in Python
    data = codec.encode(img, quality=1)
    out = codec.decode(data)
    assert out.shape == img.shape
    # a second codec object (same seed) decodes the same file to the same pixels
    assert np.array_equal(open_codec(arch, weights="random").decode(data), out)
    if arch in ("bmshj2018-factorized", "bmshj2018-hyperprior"):  # no mean: decoded latent = round(y)
        net = codec.model(1)
        with torch.no_grad():
            from icm.codecs.learned import pad
            x = pad(to_tensor(img, codec.device))
            ref = to_image(net.g_s(torch.round(net.g_a(x)))[..., :64, :128])
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    bs = Bitstream.from_bytes(data)
    assert bs.weights_hash == codec.weights_hash({"quality": 1}) and len(bs.weights_hash) == 8
    assert set(bs.streams) == ({"main"} if arch == "bmshj2018-factorized" else {"main", "hyper"})


def test_learned_forward_is_differentiable():
    codec = open_codec("bmshj2018-hyperprior", weights="random")
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    out = codec.forward(x, quality=1)
    bits = sum(-torch.log2(v).sum() for v in out["likelihoods"].values())
    (bits + ((out["x_hat"] - x) ** 2).mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_checkpoint_file_loads_and_other_weights_are_refused(tmp_path, natural_images):
    random_codec = open_codec("bmshj2018-hyperprior", weights="random")
    ckpt = tmp_path / "q1.pth"
    torch.save(random_codec.model(1).state_dict(), ckpt)
    from_file = open_codec("bmshj2018-hyperprior", checkpoint=str(ckpt))
    img = natural_images[2][:64, :64]
    data = random_codec.encode(img, quality=1)
    assert np.array_equal(from_file.decode(data), random_codec.decode(data))

    other = {k: v + 0.01 if v.is_floating_point() and "entropy" not in k else v
             for k, v in random_codec.model(1).state_dict().items()}
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(BitstreamError, match="weights mismatch"):
        open_codec("bmshj2018-hyperprior", checkpoint=str(tmp_path / "other.pth")).decode(data)


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    torch.save({"foo": torch.zeros(3)}, tmp_path / "bad.pth")
    codec = open_codec("bmshj2018-hyperprior", checkpoint=str(tmp_path / "bad.pth"))
    with pytest.raises(UserError, match="does not fit bmshj2018-hyperprior"):
        codec.model(1)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load"):
        open_codec("mbt2018", checkpoint=str(tmp_path / "junk.pth")).model(1)
    with pytest.raises(UserError, match="no such file"):
        open_codec("mbt2018", checkpoint=str(tmp_path / "missing.pth")).model(1)


def test_zoo_weights_offline_fail_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(url, dst, progress=True):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    codec = open_codec("cheng2020-attn")
    with pytest.raises(UserError, match=r"cannot download cheng2020-attn quality 2 .*https://.*--checkpoint"):
        codec.model(2)


def test_zoo_file_found_in_a_checkpoint_folder(tmp_path, natural_images):
    from compressai.zoo import image as zoo

    codec = open_codec("bmshj2018-factorized", weights="random")
    name = zoo.model_urls["bmshj2018-factorized"]["mse"][1].rsplit("/", 1)[1]
    torch.save(codec.model(1).state_dict(), tmp_path / name)
    from_dir = open_codec("bmshj2018-factorized", checkpoint=str(tmp_path))
    assert from_dir.weights_hash({"quality": 1}) == codec.weights_hash({"quality": 1})
    with pytest.raises(UserError, match="has no bmshj2018-factorized-prior-2"):
        from_dir.model(2)


def test_an_icm_ffmpeg_that_is_no_executable_makes_the_ffmpeg_codecs_unavailable(tmp_path):
    import json

    from conftest import run_icm

    proc = run_icm("codecs", "--json", env={"ICM_FFMPEG": str(tmp_path / "no-such-ffmpeg")})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = {c["name"]: c for c in json.loads(proc.stdout)}
    for name in ("hevc", "hevc-features"):
        assert not rows[name]["available"] and "ICM_FFMPEG" in rows[name]["unavailable_reason"], rows[name]
