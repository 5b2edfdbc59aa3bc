"""Hostile input other than fuzzed bitstreams (issue 10): the pixel limit and its three switches,
decompression-bomb images, crafted rate headers, and checkpoints that would run code when unpickled."""

import os
import struct
import zlib

import numpy as np
import pytest

from conftest import assert_user_error, run_icm
from icm.bitstream import Bitstream
from icm.codecs import open_codec
from icm.errors import BitstreamError, UserError
from icm.images import load_image, save_image
from icm.limits import DEFAULT_MAX_PIXELS, max_pixels


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but whose data is a few bytes: a decompression bomb's header."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture
def jpeg_file(tmp_path):
    image = np.full((64, 64, 3), 120, np.uint8)
    path = tmp_path / "small.icm"
    open_codec("jpeg").to_bitstream(image, quality=50).save(path)
    return path


def test_the_limit_is_pillows_and_is_raised_only_explicitly(monkeypatch):
    from PIL import Image

    monkeypatch.delenv("ICM_MAX_PIXELS", raising=False)
    assert max_pixels() == DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS
    monkeypatch.setenv("ICM_MAX_PIXELS", "1000")
    assert max_pixels() == 1000 and max_pixels(5000) == 5000  # the API argument wins over the environment
    monkeypatch.setenv("ICM_MAX_PIXELS", "lots")
    with pytest.raises(UserError, match="ICM_MAX_PIXELS"):
        max_pixels()


@pytest.mark.parametrize("size", [(100_000, 100_000), (9460, 9460)])
def test_an_image_claiming_a_huge_size_is_refused_before_decoding(tmp_path, size):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(*size))
    with pytest.raises(UserError, match="larger than the limit of 89,478,485 pixels"):
        load_image(path)


def test_the_image_limit_follows_the_api_argument_and_leaves_pillow_as_it_was(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    save_image(np.zeros((64, 64, 3), np.uint8), path)
    with pytest.raises(UserError, match="larger than the limit of 4,095 pixels"):
        load_image(path, max_pixels=4095)
    assert load_image(path, max_pixels=4096).shape == (64, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_cli_encode_refuses_a_bomb_in_one_line_and_takes_max_pixels(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(60_000, 60_000))
    assert_user_error(run_icm("encode", bomb, "--codec", "jpeg", "-q", "50", "-o", tmp_path / "out"), "larger than the limit")
    small = tmp_path / "small.png"
    save_image(np.zeros((64, 64, 3), np.uint8), small)
    proc = run_icm("encode", small, "--codec", "jpeg", "-q", "50", "-o", tmp_path / "out", env={"ICM_MAX_PIXELS": "4000"})
    assert_user_error(proc, "larger than the limit of 4,000 pixels")
    proc = run_icm("encode", small, "--codec", "jpeg", "-q", "50", "-o", tmp_path / "out", "--max-pixels", "4096",
                   env={"ICM_MAX_PIXELS": "4000"})
    assert proc.returncode == 0, proc.stderr


def test_cli_decode_checks_the_header_size_against_the_limit(tmp_path, jpeg_file):
    out = tmp_path / "out.png"
    assert_user_error(run_icm("decode", jpeg_file, "-o", out, "--max-pixels", "4095"), "more than the limit of 4,095")
    assert_user_error(run_icm("decode", jpeg_file, "-o", out, env={"ICM_MAX_PIXELS": "100"}), "more than the limit of 100")
    assert not out.exists()
    assert run_icm("decode", jpeg_file, "-o", out, "--max-pixels", "4096").returncode == 0


@pytest.mark.parametrize("rate", [{"quality": "abc"}, {"quality": float("inf")}, {"quality": 1e308}, {"quality": True},
                                  {"quality": 50.0}, {"quality": [50]}, {"quality": {"a": 1}}, {"quality": None},
                                  {"quality": 10**30}, {"quality": 50, "scale": "0.5"}, {"quality": 50, "x": 1}, {},
                                  {"self": 1}, {"rate": 0.5}])
def test_any_rate_a_header_can_hold_is_a_one_line_bitstream_error(jpeg_file, rate):
    bs = Bitstream.load(jpeg_file)
    bs.rate = rate
    with pytest.raises(BitstreamError, match="invalid rate|corrupt rate") as info:
        open_codec("jpeg").decode(bs.to_bytes())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("raw", [b'{"quality":NaN}', b"[50]", b'"x"', b"[" * 3000 + b"]" * 3000])
def test_rate_json_that_is_not_an_object_is_refused_by_the_container(raw):
    import fuzzing

    bs = Bitstream("jpeg", "1", b"", 8, 8, {}, {"main": b""})
    with pytest.raises(BitstreamError, match="corrupt rate parameters"):
        Bitstream.from_bytes(fuzzing.serialise(bs, rate_raw=raw))


def test_a_stream_listed_twice_is_refused():
    import fuzzing

    bs = Bitstream("jpeg", "1", b"", 8, 8, {"quality": 50}, {})
    with pytest.raises(BitstreamError, match="listed twice"):
        Bitstream.from_bytes(fuzzing.serialise(bs, table=[("main", b"a"), ("main", b"b")]))


def test_cli_decode_of_an_unknown_codec_is_a_bitstream_error(tmp_path, jpeg_file):
    bs = Bitstream.load(jpeg_file)
    bs.codec = "not-a-codec"
    bs.save(jpeg_file)
    assert_user_error(run_icm("decode", jpeg_file, "-o", tmp_path / "o.png"), "not registered here")


def test_anchor_payload_of_another_size_is_refused_before_decoding(jpeg_file):
    bs = Bitstream.load(jpeg_file)
    bs.width = 8192
    with pytest.raises(BitstreamError, match="payload is a 64x64 image, the header says 8192x64"):
        open_codec("jpeg").from_bitstream(bs)
    bs.width = 64
    bs.streams["main"] = png_header_only(60_000, 60_000)  # another format is not even opened
    with pytest.raises(BitstreamError, match="payload does not decode"):
        open_codec("jpeg").from_bitstream(bs)


# -- checkpoints that would run code -----------------------------------------------------------------------
class Evil:
    marker = ""

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil_checkpoint(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    Evil.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    return path, marker


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(evil_checkpoint):
    from icm.codecs.learned import load_checkpoint

    path, marker = evil_checkpoint
    with pytest.raises(UserError, match="cannot load") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("codec", [("icm-omni", "--rate", "0.5"), ("bmshj2018-hyperprior", "-q", "1")])
def test_cli_with_a_code_running_checkpoint_is_one_line_and_runs_nothing(tmp_path, image_file, evil_checkpoint, codec):
    path, marker = evil_checkpoint
    proc = run_icm("encode", image_file, "--codec", *codec, "--checkpoint", path, "-o", tmp_path / "out")
    assert_user_error(proc, "cannot load")
    assert not marker.exists()
