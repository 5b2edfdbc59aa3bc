"""icm's anchors on Kodak beside CompressAI's published Kodak points (benchmarks/kodak_compressai.json):
each icm anchor's rate-PSNR points, and its BD-rate / BD-PSNR against the published anchor it stands
for, with icm's own bd_rate / bd_metric over the PSNR (or rate) range both curves cover.

    ICM_DATA=../shared/data nice -n 10 .venv/bin/icm evaluate --dataset kodak --tasks none \\
        --codec jpeg,webp,avif,hevc,vvc --anchors '' --reference hevc --workers 1 --out results/kodak-anchors
    .venv/bin/python benchmarks/kodak_anchors.py results/kodak-anchors/results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from icm.analysis import bd_metric, bd_rate

PUBLISHED = Path(__file__).with_name("kodak_compressai.json")
# icm anchor -> the published anchors it is compared with
PAIRS = {"jpeg": ["jpeg"], "webp": ["webp"], "avif": ["av1"], "hevc": ["bpg-x265-444", "hm"], "vvc": ["vtm"],
         # icm's learned codecs beside the published learned model of their kind
         "icm-photo-mse": ["bmshj2018-hyperprior"], "icm-hyperprior-mse": ["bmshj2018-hyperprior"],
         "icm-omni-mse": ["bmshj2018-hyperprior"], "icm-omni": ["bmshj2018-hyperprior"]}


def curves(results: dict) -> dict[str, list[tuple[float, float]]]:
    """codec -> [(mean bpp, mean PSNR)] from an icm results.json, in rate order."""
    out: dict[str, list] = {}
    for row in results["points"]:
        if row["bpp"] is not None and row["psnr"] is not None:
            out.setdefault(row["codec"], []).append((row["bpp"], row["psnr"]))
    return {c: sorted(p) for c, p in out.items()}


def overlap(a, b) -> str:
    lo, hi = max(min(p for _, p in a), min(p for _, p in b)), min(max(p for _, p in a), max(p for _, p in b))
    return f"{lo:.1f}-{hi:.1f} dB" if hi > lo else "none"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="results.json of an `icm evaluate --dataset kodak --tasks none` run")
    args = ap.parse_args()
    results = json.loads(args.results.read_text())
    data = json.loads(PUBLISHED.read_text())
    published = {**data["anchors"], **data.get("models", {})}
    ours = curves(results)
    images = {r["images"] for r in results["points"] if r["codec"] in ours}
    print(f"icm codecs on {results['experiment']['dataset']} ({'/'.join(map(str, sorted(images)))} images)\n")
    print("| icm codec | icm points (bpp : PSNR dB) |")
    print("|---|---|")
    for codec, pts in ours.items():
        print(f"| {codec} | {', '.join(f'{b:.3f} : {p:.2f}' for b, p in pts)} |")
    print("\n| icm codec | published codec | BD-rate icm vs published | BD-PSNR | PSNR range compared |")
    print("|---|---|---|---|---|")
    for codec, names in PAIRS.items():
        if codec not in ours:
            continue
        for name in names:
            pub = list(zip(published[name]["bpp"], published[name]["psnr"]))
            rate, metric = bd_rate(pub, ours[codec]), bd_metric(pub, ours[codec])
            print(f"| {codec} | {name} | {'–' if rate is None else f'{rate:+.1f} %'} | "
                  f"{'–' if metric is None else f'{metric:+.2f} dB'} | {overlap(pub, ours[codec])} |")
    if {"hevc", "vvc"} <= set(ours):  # the generation gap: icm's pair beside the published pair
        pub = {k: list(zip(published[k]["bpp"], published[k]["psnr"])) for k in ("hm", "vtm")}
        print(f"\nvvc vs hevc (icm's anchors): BD-rate {bd_rate(ours['hevc'], ours['vvc']):+.1f} %; "
              f"VTM vs HM (published): {bd_rate(pub['hm'], pub['vtm']):+.1f} %")


if __name__ == "__main__":
    main()
