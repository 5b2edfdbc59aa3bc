"""Batched against one-by-one coding, per codec, measured in one run: ms per image and the ratio.

    .venv/bin/python benchmarks/codec_batches.py [--codecs icm-omni,icm-hyperprior-mse,hevc,jpeg]
        [--batch 8] [--images 16] [--repeat 3]

`icm evaluate` codes each rate point's images in batches of equal size (``Codec.to_bitstreams`` /
``from_bitstreams``): one ffmpeg run for HEVC (whose process spawn is also timed here, as
``ffmpeg -version``); learned codecs check a batch up front but run one network pass per image (a
batched pass gained them 1.0-1.2x and rounded differently, ±1 at a pixel or two per image). Images are the first ``--images`` of the shapes val
split (128 px). For each codec, at its middle default rate: the median over ``--repeat`` rounds of the
time to code all images one by one and in batches of ``--batch``, and the check that both give files
of the same sizes that decode to the same pixels.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import numpy as np
import torch

from icm.codecs import open_codec
from icm.codecs.anchors import ffmpeg_exe
from icm.testing import ShapesVal


def median_ms(fn, repeat: int, n: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000 / n)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codecs", default="icm-omni,icm-hyperprior-mse,hevc,jpeg")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in one `icm evaluate` worker
    images = list(ShapesVal().pixels(args.images))
    chunks = [images[i:i + args.batch] for i in range(0, len(images), args.batch)]
    if ffmpeg_exe():
        spawn = median_ms(lambda: subprocess.run([ffmpeg_exe(), "-version"], capture_output=True), args.repeat * 5, 1)
        print(f"ffmpeg process spawn: {spawn:.1f} ms")
    print(f"{'codec':20} {'rate':12} {'enc 1x1':>8} {'enc batch':>9} {'ratio':>6} {'dec 1x1':>8} {'dec batch':>9} {'ratio':>6}  same")
    for name in args.codecs.split(","):
        codec = open_codec(name)
        if codec.unavailable_reason():
            print(f"{name:20} skipped: {codec.unavailable_reason()}")
            continue
        rates = codec.default_rates()
        rate = rates[len(rates) // 2]
        codec.from_bitstream(codec.to_bitstream(images[0], **rate))  # loads the model: not timed
        one = [codec.to_bitstream(im, **rate) for im in images]
        many = [bs for c in chunks for bs in codec.to_bitstreams(c, **rate)]
        pixels_one = [codec.from_bitstream(bs) for bs in one]
        pixels_many = [im for i in range(0, len(many), args.batch) for im in codec.from_bitstreams(many[i:i + args.batch])]
        same = ([len(a.to_bytes()) for a in one] == [len(b.to_bytes()) for b in many]
                and all(np.array_equal(a, b) for a, b in zip(pixels_one, pixels_many)))
        n = len(images)
        e1 = median_ms(lambda: [codec.to_bitstream(im, **rate) for im in images], args.repeat, n)
        eb = median_ms(lambda: [codec.to_bitstreams(c, **rate) for c in chunks], args.repeat, n)
        d1 = median_ms(lambda: [codec.from_bitstream(bs) for bs in one], args.repeat, n)
        db = median_ms(lambda: [codec.from_bitstreams(one[i:i + args.batch]) for i in range(0, n, args.batch)], args.repeat, n)
        label = ",".join(f"{k}={v}" for k, v in rate.items())
        print(f"{name:20} {label:12} {e1:8.1f} {eb:9.1f} {e1 / eb:5.2f}x {d1:8.1f} {db:9.1f} {d1 / db:5.2f}x  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
