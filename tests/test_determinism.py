"""CompressAI users report decode mismatches across runs; the same bitstream must decode to the same
pixels in a fresh process whatever the torch thread count."""

import hashlib
import subprocess
import sys

import pytest

from icm.codecs import open_codec

DECODE = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from icm.bitstream import Bitstream
from icm.codecs import open_codec
bs = Bitstream.load(sys.argv[1])
img = open_codec(bs.codec, weights="random").from_bitstream(bs)
print(hashlib.sha256(img.tobytes()).hexdigest())
"""


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-anchor"])
def test_decode_is_bit_identical_across_processes_and_thread_counts(arch, tmp_path, natural_images):
    codec = open_codec(arch, weights="random")
    img = natural_images[1][:128, :192]
    bs = codec.to_bitstream(img, quality=2)
    path = tmp_path / "x.icm"
    bs.save(path)
    here = hashlib.sha256(codec.from_bitstream(bs).tobytes()).hexdigest()
    digests = {
        threads: subprocess.run([sys.executable, "-c", DECODE, str(path), str(threads)],
                                capture_output=True, text=True, check=True).stdout.strip()
        for threads in (1, 2, 3)
    }
    assert set(digests.values()) == {here}
