import json

import numpy as np
import pytest
from PIL import Image

from conftest import assert_user_error, run_icm
from icm.images import load_image, psnr


def test_encode_info_decode_round_trip(tmp_path, image_file):
    out = tmp_path / "bits"
    proc = run_icm("encode", image_file, "--codec", "jpeg", "--quality", "80", "-o", out)
    assert proc.returncode == 0, proc.stderr
    icm_file = out / "astronaut.icm"
    assert f"{icm_file.stat().st_size} bytes" in proc.stdout

    info = json.loads(run_icm("info", icm_file, "--json").stdout)
    original = load_image(image_file)
    assert info["codec"] == "jpeg" and info["rate"] == {"quality": 80}
    assert (info["width"], info["height"]) == (original.shape[1], original.shape[0])
    assert info["bpp"] == pytest.approx(icm_file.stat().st_size * 8 / original.shape[0] / original.shape[1])

    decoded = tmp_path / "dec.png"
    proc = run_icm("decode", icm_file, "-o", decoded)
    assert proc.returncode == 0, proc.stderr
    assert psnr(original, load_image(decoded)) > 30


def test_listings_have_json(tmp_path):
    codecs = json.loads(run_icm("codecs", "--json").stdout)
    assert {"jpeg", "hevc", "bmshj2018-hyperprior"} <= {c["name"] for c in codecs}
    assert all("rate_control" in c and "available" in c for c in codecs)
    assert json.loads(run_icm("tasks", "--json", env={"ICM_LOAD_PLUGINS": ""}).stdout) == []  # tasks come from plugins
    tasks = json.loads(run_icm("tasks", "--json").stdout)
    plugins = json.loads(run_icm("plugins", "--json").stdout)["plugins"]
    registered = sorted(t for p in plugins for t in p["registered"].get("task", []))
    assert sorted(t["name"] for t in tasks) == registered
    assert all(t["plugin"] and t["metrics"] for t in tasks)
    table = run_icm("codecs")
    assert table.returncode == 0 and "hevc" in table.stdout


def test_learned_codec_through_the_cli_with_explicit_random_weights(tmp_path, image_file):
    out = tmp_path / "bits"
    proc = run_icm("encode", image_file, "--codec", "bmshj2018-hyperprior", "-q", "1", "--weights", "random", "-o", out)
    assert proc.returncode == 0, proc.stderr
    # decoding without saying which weights tries the zoo: offline, that must be one clear line
    ok = run_icm("decode", out / "astronaut.icm", "-o", tmp_path / "d.png", "--weights", "random")
    assert ok.returncode == 0, ok.stderr


# -- bad input: one line, exit 2, no traceback -------------------------------------------------------
def _write(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_unreadable_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    assert_user_error(run_icm("encode", bad, "--codec", "jpeg", "-q", "50", "-o", tmp_path), "cannot read image")
    assert_user_error(run_icm("encode", tmp_path / "missing.png", "--codec", "jpeg", "-q", "50", "-o", tmp_path), "no such file")


def test_grayscale_is_widened_to_rgb(tmp_path):
    gray = _write(tmp_path / "g.png", np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1)))
    proc = run_icm("encode", gray, "--codec", "jpeg", "-q", "90", "-o", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    assert load_image(gray).shape == (48, 64, 3)


def test_transparent_rgba_is_refused_opaque_rgba_accepted(tmp_path):
    rgba = np.full((32, 32, 4), 200, np.uint8)
    rgba[..., 3] = 255
    opaque = _write(tmp_path / "opaque.png", rgba.copy())
    rgba[0, 0, 3] = 10
    transparent = _write(tmp_path / "t.png", rgba)
    assert run_icm("encode", opaque, "--codec", "jpeg", "-q", "50", "-o", tmp_path / "o").returncode == 0
    assert_user_error(run_icm("encode", transparent, "--codec", "jpeg", "-q", "50", "-o", tmp_path / "o"), "transparency")


def _png16(rgb):
    """A 16-bit RGB PNG (Pillow cannot write one), chunk by chunk."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = rgb.shape[:2]
    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_sixteen_bit_is_refused(tmp_path):
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(deep)
    assert_user_error(run_icm("encode", deep, "--codec", "jpeg", "-q", "50", "-o", tmp_path), "8-bit")
    rgb16 = tmp_path / "rgb16.png"
    rgb16.write_bytes(_png16(np.full((16, 16, 3), 40000, np.uint16)))
    assert_user_error(run_icm("encode", rgb16, "--codec", "jpeg", "-q", "50", "-o", tmp_path), "8-bit")


@pytest.mark.parametrize("damage, fragment", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], "checksum"),
    (lambda b: b"GIF89a" + b[6:], "not an icm bitstream"),
])
def test_corrupt_or_truncated_bitstream(tmp_path, image_file, damage, fragment):
    run_icm("encode", image_file, "--codec", "jpeg", "-q", "50", "-o", tmp_path)
    f = tmp_path / "astronaut.icm"
    f.write_bytes(damage(f.read_bytes()))
    assert_user_error(run_icm("decode", f, "-o", tmp_path / "x.png"), fragment)
    assert_user_error(run_icm("info", f), fragment)
    assert not (tmp_path / "x.png").exists()


def test_unknown_codec_and_bad_quality(tmp_path, image_file):
    assert_user_error(run_icm("encode", image_file, "--codec", "jpge", "-q", "50", "-o", tmp_path), "did you mean jpeg")
    assert_user_error(run_icm("encode", image_file, "--codec", "hevc", "-q", "60", "-o", tmp_path), "qp 60 out of range")
    assert_user_error(run_icm("encode", image_file, "--codec", "jpeg", "-o", tmp_path), "needs --quality")
    assert_user_error(run_icm("encode", image_file, "--codec", "jpeg", "-q", "5", "--checkpoint", "x", "-o", tmp_path),
                      "does not take option")


def test_missing_learned_weights_offline_is_one_line(tmp_path, image_file):
    proc = run_icm("encode", image_file, "--codec", "mbt2018-mean", "-q", "3", "-o", tmp_path,
                   env={"TORCH_HOME": str(tmp_path / "hub"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert_user_error(proc, "cannot download mbt2018-mean quality 3")


def test_one_bad_image_does_not_lose_the_others(tmp_path, image_file):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    proc = run_icm("encode", bad, image_file, "--codec", "jpeg", "-q", "50", "-o", tmp_path / "o")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad.png" in proc.stderr and "1 of 2 image(s) failed" in proc.stderr
    assert (tmp_path / "o" / "astronaut.icm").is_file()
