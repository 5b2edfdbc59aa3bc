"""CompressAI users report decode mismatches across runs; the same bitstream must decode to the same
symbols in a fresh process whatever the torch thread count (pixels within one grey level)."""

import pytest
from decode_probe import assert_same_decode, save_job

from icm.codecs import open_codec

@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-anchor"])
def test_same_symbols_and_pixels_across_processes_and_thread_counts(arch, tmp_path, natural_images):
    codec = open_codec(arch, weights="random")
    bs = codec.to_bitstream(natural_images[1][:128, :192], quality=2)
    assert_same_decode([save_job(codec, bs, tmp_path / "x.icm", weights="random")])
