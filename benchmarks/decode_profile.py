"""Where icm-omni's decode time goes, on one thread, beside x265's decode of the same image.

    ICM_DATA=../shared/data nice -n 10 .venv/bin/python benchmarks/decode_profile.py            # kodim01, 768x512
    .venv/bin/python benchmarks/decode_profile.py --image photo.png --rates 0,1 --qps 42,27 --repeat 5

Per pair (icm-omni at a rate, HEVC at a QP): both files are made once, then each is decoded
``--repeat`` times through the public ``Codec.decode`` (container included, ffmpeg's start-up
included for HEVC), interleaved with an icm-omni decode whose synthesis runs on contiguous tensors
(the code before the channels-last speed-up), and the fastest of each are compared (on a shared machine the
least disturbed run). One more icm-omni decode runs under
cProfile, and its time is split by the functions it passes through (cumulative times, so each part
includes what it calls):

- entropy decoding: the context model's ``read`` callback (CDF indexes from the scales, the rANS
  decode of one step, with entropy_guard's checks and its second decode of the padded string), and
  the z read before it;
- context model: the context's own convolutions, its ``forward`` minus the reads inside it;
- hyperprior synthesis (h_s), main synthesis (g_s), the checks before decoding, and the rest
  (container, padding, tensor conversion).

Every figure is a ratio measured in this one run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import time

import numpy as np
import torch


def decode_ms(codec, data: bytes) -> float:
    t0 = time.perf_counter()
    codec.decode(data)
    return (time.perf_counter() - t0) * 1000


@contextlib.contextmanager
def contiguous_synthesis():
    """icm-omni's synthesis on the default memory layout, as decoding ran before channels-last."""
    from icm.codecs.icm_codec import ICMNet

    ICMNet.synthesis_format = torch.contiguous_format
    try:
        yield
    finally:
        ICMNet.synthesis_format = torch.channels_last


def cumulative(stats: pstats.Stats, path_end: str, name: str) -> float:
    """Seconds spent in (and under) every function ``name`` defined in a file ending with ``path_end``."""
    return sum(ct for (file, _, fn), (_, _, _, ct, _) in stats.stats.items()
               if fn == name and file.endswith(path_end))


def profile_parts(codec, data: bytes) -> dict[str, float]:
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.runcall(codec.decode, data)
    total = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    y_reads = cumulative(stats, "icm_codec.py", "read")  # the context's read callback
    z_read = sum(by_caller[3] for (file, _, fn), (*_, callers) in stats.stats.items()
                 if fn == "read" and file.endswith("joint_rans.py")
                 for caller, by_caller in callers.items() if caller[2] == "decompress_batch")
    context = cumulative(stats, "icm_codec.py", "forward") - y_reads if codec.net.context is not None else 0.0
    parts = {
        "entropy decoding (y, the context's reads)": y_reads,
        "entropy decoding (z)": z_read,
        "context model convolutions": context,
        "hyperprior synthesis h_s": cumulative(stats, "icm_codec.py", "_hyper"),
        "main synthesis g_s": cumulative(stats, "icm_codec.py", "_decode"),
        "checks before decoding": cumulative(stats, "entropy_guard.py", "check_bottleneck"),
    }
    parts["rest (container, padding, conversions)"] = total - sum(parts.values())
    parts["total"] = total
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=None, help="an image file (default: Kodak's kodim01, via ICM_DATA)")
    ap.add_argument("--rates", default="0,1", help="icm-omni rates, paired in order with --qps (default: 0,1)")
    ap.add_argument("--qps", default="42,27", help="HEVC QPs (default: 42,27, the points issue 30 compares)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--codec", default="icm-omni")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from icm.codecs import open_codec
    from icm.images import load_image

    if args.image:
        image = load_image(args.image)
    else:
        from icm.datasets import load_dataset

        image = load_image(load_dataset("kodak").images[0]["file_name"])
    ours, hevc = open_codec(args.codec), open_codec("hevc")
    pixels = image.shape[0] * image.shape[1]
    print(f"{args.codec} vs hevc on a {image.shape[1]}x{image.shape[0]} image, torch threads "
          f"{torch.get_num_threads()}, fastest of {args.repeat} decodes each")
    for rate, qp in zip(map(float, args.rates.split(",")), map(int, args.qps.split(","))):
        a, b = ours.encode(image, rate=rate), hevc.encode(image, quality=qp)
        ours.decode(a), hevc.decode(b)  # warm-up
        times_a, times_b, times_old = [], [], []
        for _ in range(args.repeat):
            times_a.append(decode_ms(ours, a))
            times_b.append(decode_ms(hevc, b))
            with contiguous_synthesis():
                times_old.append(decode_ms(ours, a))
        ta, tb, told = (min(t) for t in (times_a, times_b, times_old))  # the run least slowed by other load
        print(f"\nrate {rate} ({len(a) * 8 / pixels:.3f} bpp) vs QP {qp} ({len(b) * 8 / pixels:.3f} bpp): "
              f"decode {ta:.0f} ms vs {tb:.0f} ms = {ta / tb:.1f}x x265's; with the synthesis on contiguous "
              f"tensors (before the channels-last speed-up) {told:.0f} ms = {told / tb:.1f}x")
        parts = profile_parts(ours, a)
        total = parts.pop("total")
        print(f"  one decode under cProfile: {total * 1000:.0f} ms ({total * 1000 / tb:.1f}x x265's decode)")
        for name, seconds in parts.items():
            print(f"  {name:42s} {seconds / total:6.1%}  {seconds * 1000 / tb:5.1f}x x265's decode")


if __name__ == "__main__":
    main()
