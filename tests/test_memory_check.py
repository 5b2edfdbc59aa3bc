"""Learned codecs refuse, in one line and before allocating, an image that would not fit in memory;
their declared memory per megapixel is what a pass really takes."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import assert_user_error, run_icm
from icm import limits
from icm.codecs import open_codec
from icm.errors import UserError

PEAK = """
import json, resource, sys
import numpy as np
from icm.codecs import open_codec
codec = open_codec(sys.argv[1])
w, h = int(sys.argv[2]), int(sys.argv[3])
img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
small = img[:64, :64].copy()
codec.decode(codec.encode(small, **codec.default_rates()[-1]))  # load and warm up on a tiny image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
codec.decode(codec.encode(img, **codec.default_rates()[-1]))
print(json.dumps({"before": before, "after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.parametrize("name", ["icm-omni", "icm-omni-features", "icm-hyperprior-mse"])
def test_declared_memory_per_megapixel_covers_a_real_pass(name):
    """The peak-memory growth of one encode + decode of noise (the most bits, the largest entropy
    coder buffers) at 1.57 MP stays under the declared figure."""
    codec = open_codec(name)
    assert codec.memory_mb_per_mp and codec.memory_mb_per_mp > 50
    proc = subprocess.run([sys.executable, "-c", PEAK, name, "1536", "1024"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    grew = got["after"] - got["before"]
    assert 0 < grew <= codec.memory_mb_per_mp * 1536 * 1024 / 1e6, (grew, codec.memory_mb_per_mp)


def test_encode_and_decode_are_refused_before_they_allocate(monkeypatch):
    codec = open_codec("icm-omni")
    img = np.zeros((64, 96, 3), np.uint8)
    data = codec.encode(img, rate=0.0)
    monkeypatch.setattr(limits, "available_memory_mb", lambda device=None: 0.5)
    with pytest.raises(UserError, match=r"image: icm-omni needs about .* GB for 6,144 pixels .* downscale or tile"):
        codec.encode(img, rate=0.0)
    with pytest.raises(UserError, match="bitstream: icm-omni needs about"):
        codec.decode(data)
    with pytest.raises(UserError, match=r"batch of 2 images: icm-omni needs"):
        codec.to_bitstreams([img, img], rate=0.0)
    monkeypatch.setenv("ICM_MEMORY_CHECK", "off")
    assert codec.decode(data).shape == img.shape
    monkeypatch.setenv("ICM_MEMORY_CHECK", "on")
    assert open_codec("jpeg").decode(open_codec("jpeg").encode(img, quality=50)).shape == img.shape  # anchors: no figure


def test_cli_refuses_an_image_larger_than_memory_in_one_line(tmp_path):
    """A real 9,400 x 9,400 photograph-sized PNG (88 MP, under the pixel limit) on icm-omni: the
    estimate exceeds this machine's available memory, so the encode is refused before it starts."""
    side = 9400
    need_mb = open_codec("icm-omni").memory_mb_per_mp * side * side / 1e6
    available = limits.available_memory_mb()
    if available is None or available > need_mb:
        pytest.skip(f"this machine has {available} MB available, enough for {side}x{side}")
    big = tmp_path / "big.png"
    Image.new("RGB", (side, side), (90, 120, 60)).save(big)
    out = tmp_path / "out"
    assert_user_error(run_icm("encode", big, "--codec", "icm-omni", "--rate", "0", "-o", out),
                      "icm-omni needs about")
    assert not list(out.glob("*.icm"))


def test_evaluate_records_an_image_too_large_for_memory_and_codes_the_rest(tmp_path, monkeypatch, natural_images):
    """The first image of a bare folder is refused (even in the untimed warm-up, which must not stop
    the run); it is one recorded failure, and the other image is coded and measured."""
    from icm.evaluation.config import CodecSpec, Experiment
    from icm.evaluation.run import evaluate
    from icm.images import save_image

    folder = tmp_path / "photos"
    folder.mkdir()
    save_image(np.ascontiguousarray(np.tile(natural_images[0], (2, 2, 1))), folder / "a_large.png")  # 322x382
    save_image(natural_images[1], folder / "b_small.png")  # 160x193
    per_mp = open_codec("icm-omni").memory_mb_per_mp
    monkeypatch.setattr(limits, "available_memory_mb", lambda device=None: per_mp * 0.05)  # room for 0.05 MP
    result = evaluate(Experiment(tasks=[], dataset=str(folder), out=str(tmp_path / "out"), reference="icm-omni",
                                 codecs=[CodecSpec("icm-omni", rates=[{"rate": 0.0}])]), progress=False)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    failures = doc["counters"]["failures"]
    assert len(failures) == 1 and "needs about" in failures[0]["error"], failures
    point = next(p for p in doc["points"] if p["codec"] == "icm-omni")
    assert point["images"] == 1 and point["bpp"] > 0 and point["psnr"] > 20
    assert result is not None
