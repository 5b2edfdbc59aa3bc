"""How large an image each learned codec can code on this machine: peak memory and time per megapixel
of one encode + decode at growing sizes, and the largest size that fits in the machine's memory.

    .venv/bin/python benchmarks/image_size_limits.py [--codecs icm-omni,icm-photo-mse]
        [--sizes 768x512,1536x1024,2304x1536] [--threads 1] [--json limits.json]

Each (codec, size) runs in its own process, so its peak resident memory (``ru_maxrss``) is that one
encode and decode at the highest default rate point, nothing left over from another (a feature
codec decodes its tensor and the picture made from it, as ``icm evaluate`` does). The picture is
scikit-image's astronaut resized to the size (a photograph: the entropy coder works as on real data).
A learned codec's activations grow linearly with pixels, so the script fits peak memory against
megapixels by least squares over the sizes and reports where the fit meets the machine's memory
(``/proc/meminfo`` MemTotal, less 10 % for the system): that is the largest image one worker can code,
and ``--workers N`` of ``icm evaluate`` divides it by N. Times are printed per megapixel: a flat
column means linear growth. Speed claims should be ratios within one run (machines vary by 2-3x).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SHIPPED_LEARNED = "icm-omni,icm-omni-aux,icm-omni-mse,icm-hyperprior-mse,icm-photo-mse,icm-omni-features"


def child(codec_name: str, width: int, height: int, threads: int, weights: str | None = None) -> dict:
    """One encode + decode in this process; returns its timings and peak memory."""
    import numpy as np
    import skimage.data
    import torch

    from icm.codecs import open_codec
    from icm.images import resize

    torch.set_num_threads(threads)
    img = np.ascontiguousarray(resize(np.asarray(skimage.data.astronaut())[..., :3], width, height))
    codec = open_codec(codec_name, **({"weights": weights} if weights else {}))
    rate = codec.default_rates()[-1]
    loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    data = codec.encode(img, **rate)
    enc = time.perf_counter() - t
    t = time.perf_counter()
    if codec.kind == "features":  # the tensor and the picture made from it, as icm evaluate decodes
        from icm.bitstream import Bitstream

        codec.decode_all(Bitstream.from_bytes(data))
    else:
        codec.decode(data)
    dec = time.perf_counter() - t
    return {"codec": codec_name, "width": width, "height": height, "rate": rate, "bytes": len(data),
            "encode_s": enc, "decode_s": dec, "loaded_mb": loaded_mb,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def mem_total_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("image_size_limits: cannot read MemTotal from /proc/meminfo")


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line y = a + b x (numpy's polyfit)."""
    import numpy as np

    b, a = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    return float(a), float(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codecs", default=SHIPPED_LEARNED)
    ap.add_argument("--sizes", default="768x512,1536x1024,2304x1536")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1, as a worker)")
    ap.add_argument("--weights", choices=["random"], help="seeded untrained weights (CompressAI's zoo "
                    "architectures offline): memory and time do not depend on the weights' values")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, w, h = args.child
        print(json.dumps(child(name, int(w), int(h), args.threads, args.weights)))
        return
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    budget = mem_total_mb() * 0.9
    rows, limits = [], {}
    print(f"{'codec':20s} {'size':>10s} {'MP':>5s} {'enc s/MP':>9s} {'dec s/MP':>9s} {'loaded MB':>10s} {'peak MB':>8s}")
    for name in args.codecs.split(","):
        mine = []
        for w, h in sizes:
            weights = ["--weights", args.weights] if args.weights else []
            proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), *weights,
                                   "--child", name, str(w), str(h)],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if proc.returncode:
                print(f"{name:20s} {w}x{h}: failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mp = w * h / 1e6
            print(f"{name:20s} {w:>5d}x{h:<4d} {mp:5.2f} {r['encode_s'] / mp:9.2f} {r['decode_s'] / mp:9.2f} "
                  f"{r['loaded_mb']:10.0f} {r['peak_mb']:8.0f}")
            mine.append(r)
        rows += mine
        if len(mine) >= 2:
            a, b = fit([(r["width"] * r["height"] / 1e6, r["peak_mb"]) for r in mine])
            limits[name] = {"fixed_mb": a, "mb_per_mp": b, "largest_mp": (budget - a) / b}
    print(f"\nlargest image one process codes in {budget / 1024:.1f} GB (90 % of MemTotal), "
          "from the least-squares line peak MB = fixed + per-MP x MP:")
    for name, lim in limits.items():
        side = (lim["largest_mp"] * 1e6 * 3 / 2) ** 0.5  # a 3:2 photograph's long side
        print(f"  {name:20s} {lim['fixed_mb']:7.0f} MB + {lim['mb_per_mp']:6.0f} MB/MP -> "
              f"{lim['largest_mp']:6.1f} MP (about {side:,.0f} x {side * 2 / 3:,.0f})")
    if args.json:
        from icm.bitstream import atomic_write_bytes

        atomic_write_bytes(Path(args.json), json.dumps({"rows": rows, "limits": limits, "budget_mb": budget},
                                                       indent=1).encode())


if __name__ == "__main__":
    main()
