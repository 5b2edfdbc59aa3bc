"""The cost of each stage of an `icm evaluate` run per megapixel, read from its results.json.

    .venv/bin/python benchmarks/stage_costs.py results/kodak-cost/results.json

Run it on a cold run (no cache reused: the counters must show no bitstream or prediction cache hits)
with `--workers 1`, so the stage seconds are one process's. It prints:

- per codec and rate point: bpp, encode and decode ms per megapixel (the per-image means icm records
  for each point, over the images' mean size) and their ratio to the `hevc` points of the same run;
- per task: the forward's seconds per megapixel (its `predict/TASK` stage over every image it ran
  on: each point's decoded images plus the originals). A task that shares another's forward (inst
  on det's PanopticFPN) shows what it adds;
- the other stages in seconds, and each worker's peak resident memory.

The image sizes come from the dataset itself (`icm.datasets.load_dataset`), so ICM_DATA must reach
it as in the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    args = ap.parse_args()
    doc = json.loads(args.results.read_text())
    exp, timing, counters = doc["experiment"], doc["timing"], doc["counters"]
    from icm.datasets import load_dataset

    images = load_dataset(exp["dataset"], exp["split"]).images[: exp.get("limit") or None]
    mp = statistics.mean(i["width"] * i["height"] for i in images) / 1e6
    if counters.get("bitstream_cache_hits") or counters.get("prediction_cache_hits"):
        print("note: this run reused cached files; its stage times are not a cold run's", file=sys.stderr)
    print(f"{exp['dataset']}: {len(images)} images of {mp:.3f} MP on average, {timing.get('workers')} worker(s)\n")

    coded = [p for p in doc["points"] if p["codec"] != "original" and p.get("encode_ms") is not None]
    hevc = [p for p in coded if p["codec"] == "hevc"]
    ref_enc = statistics.mean(p["encode_ms"] for p in hevc) if hevc else None
    ref_dec = statistics.mean(p["decode_ms"] for p in hevc) if hevc else None
    print(f"{'codec':20s} {'rate':>12s} {'bpp':>7s} {'enc ms/MP':>10s} {'dec ms/MP':>10s} {'enc x hevc':>10s} {'dec x hevc':>10s}")
    for p in coded:
        ratios = (f"{p['encode_ms'] / ref_enc:10.2f} {p['decode_ms'] / ref_dec:10.2f}" if ref_enc else "")
        bpp = f"{p['bpp']:7.3f}" if p.get("bpp") is not None else f"{'-':>7s}"
        print(f"{p['codec']:20s} {p['rate_key']:>12s} {bpp} {p['encode_ms'] / mp:10.0f} {p['decode_ms'] / mp:10.0f} {ratios}")

    stages = timing["stages"]
    n_points = sum(1 for p in doc["points"] if p.get("images"))
    print(f"\n{'task forward':20s} {'s':>8s} {'images':>7s} {'s/MP':>8s}")
    for name, seconds in stages.items():
        if name.startswith("predict/"):
            n = n_points * len(images)
            print(f"{name[8:]:20s} {seconds:8.1f} {n:7d} {seconds / (n * mp):8.2f}")
    rest = {k: v for k, v in stages.items() if not k.startswith(("predict/", "hash/", "score/"))}
    scoring = sum(v for k, v in stages.items() if k.startswith(("hash/", "score/")))
    print("\nother stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in rest.items()) + f", scoring {scoring:.1f}")
    print(f"wall {timing.get('wall_seconds', 0):.0f} s, cpu {timing.get('cpu_seconds', 0):.0f} s; peak resident "
          f"memory per worker (MB): {', '.join(f'{m:.0f}' for m in timing.get('rank_peak_rss_mb', []))}")


if __name__ == "__main__":
    main()
