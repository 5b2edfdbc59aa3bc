"""How `icm evaluate` grows: wall time against image count and image size, each from a cold cache.

    .venv/bin/python benchmarks/evaluate_scaling.py [--counts 25,50,100,200] [--sizes 128,256,512]
        [--size-count 25] [--kodak 8] [-- EXTRA ICM EVALUATE ARGS]

Each run generates its own `shapes` split (`icm data shapes --val N --size S`), evaluates it into a
fresh folder and reads the stage breakdown from results.json. The default evaluates every installed
task on `icm-omni` and the JPEG and HEVC anchors (pass other `icm evaluate` options after `--`). It
prints seconds per image too: a flat column means linear growth; where it rises, the cost bends.

The last row is real photographs: the first ``--kodak`` images of the registered `kodak` dataset
(768x512; `ICM_DATA` must hold `kodak/` offline), label-free, with the same codecs and tasks. Its
s/Mpx beside the 512 px `shapes` row says whether photographs cost more per pixel than the synthetic
set (more detections, more pose instances, more bits to entropy-code). ``--kodak 0`` skips it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ICM = [sys.executable, "-m", "icm"]
DEFAULT_ARGS = ["--codec", "icm-omni", "--anchors", "jpeg,hevc", "--reference", "hevc"]


def run(tmp: Path, count: int, size: int, extra: list[str]) -> dict:
    data = tmp / f"shapes-{count}-{size}"
    if not data.exists():
        subprocess.run([*ICM, "data", "shapes", "--out", str(data), "--train", "0", "--val", str(count),
                        "--size", str(size)], check=True, stdout=subprocess.DEVNULL)
    return evaluate(tmp / f"out-{count}-{size}", ["--dataset", str(data)], count, size * size, str(size), extra)


def evaluate(out: Path, dataset: list[str], count: int, pixels: int, label: str, extra: list[str]) -> dict:
    t = time.perf_counter()
    subprocess.run([*ICM, "evaluate", *dataset, "--out", str(out), "--no-progress", *extra],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    timing = json.loads((out / "results.json").read_text()).get("timing", {})
    return {"count": count, "size": label, "pixels": pixels, "wall": wall, "cpu": timing.get("cpu_seconds", 0.0),
            "stages": timing.get("stages", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="25,50,100,200")
    ap.add_argument("--sizes", default="128,256,512")
    ap.add_argument("--size-count", type=int, default=25, help="images per run in the size sweep")
    ap.add_argument("--kodak", type=int, default=8, help="Kodak images for the photograph row (0: none)")
    ap.add_argument("extra", nargs="*", help="icm evaluate options (after --)")
    args = ap.parse_args()
    extra = args.extra or DEFAULT_ARGS
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(Path(tmp), int(c), 128, extra) for c in args.counts.split(",")]
        runs += [run(Path(tmp), args.size_count, int(s), extra) for s in args.sizes.split(",") if int(s) != 128
                 or args.size_count not in [int(c) for c in args.counts.split(",")]]
        if args.kodak:
            runs.append(evaluate(Path(tmp) / "out-kodak", ["--dataset", "kodak", "--limit", str(args.kodak),
                                                           "--label-free"], args.kodak, 768 * 512, "kodak", extra))
    print(f"icm evaluate {' '.join(extra)}")
    print(f"{'images':>7s} {'size':>5s} {'wall s':>8s} {'cpu s':>8s} {'s/image':>8s} {'s/Mpx':>8s}   top stages (s)")
    for r in runs:
        mpx = r["count"] * r["pixels"] / 1e6
        top = sorted(r["stages"].items(), key=lambda kv: -kv[1])[:4]
        print(f"{r['count']:7d} {r['size']:>5s} {r['wall']:8.1f} {r['cpu']:8.1f} {r['wall'] / r['count']:8.3f} {r['wall'] / mpx:8.1f}   "
              + ", ".join(f"{k} {v:.1f}" for k, v in top))


if __name__ == "__main__":
    main()
