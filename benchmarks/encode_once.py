"""Encode once vs re-encode per task: codec-stage wall time for T = 1..4 tasks, measured in one run.

Encode-once codes each (codec, rate, image) once and hands the decoded pixels to all T tasks (what
`icm evaluate` does); the baseline re-encodes and re-decodes for every task, as running one
single-task evaluation per task would. Task inference is excluded: only the codec stage differs.

    .venv/bin/python benchmarks/encode_once.py [--codecs hevc,jpeg,icm-hyperprior-mse] [--images 16]
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from icm.codecs import open_codec
from icm.datasets import load_dataset
from icm.images import load_image


def codec_stage(jobs, images, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for codec, rate in jobs:
            for img in images:
                codec.from_bitstream(codec.to_bitstream(img, **rate))
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codecs", default="hevc,jpeg,icm-hyperprior-mse")
    ap.add_argument("--images", type=int, default=16)
    args = ap.parse_args()
    images = [load_image(r["file_name"]) for r in load_dataset("shapes", "val").images[: args.images]]
    jobs = []
    for name in args.codecs.split(","):
        codec = open_codec(name)
        if codec.unavailable_reason():
            print(f"skip {name}: {codec.unavailable_reason()}")
            continue
        points = codec.default_rates()
        jobs += [(codec, points[i]) for i in (0, len(points) // 2, len(points) - 1)]
    codec_stage(jobs, images[:2], 1)  # warm-up: model loading, first-call costs
    table = Table(title=f"codec stage, {len(jobs)} rate points x {len(images)} images (shapes val)")
    for col in ("tasks T", "encode once (s)", "re-encode per task (s)", "ratio"):
        table.add_column(col, justify="right")
    for t in (1, 2, 3, 4):
        once = codec_stage(jobs, images, 1)
        per_task = codec_stage(jobs, images, t)
        table.add_row(str(t), f"{once:.2f}", f"{per_task:.2f}", f"{per_task / once:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
