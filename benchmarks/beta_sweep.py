"""The RDC β sweep on the shipped `icm-omni-aux`: one bitstream (main + aux streams) per image
at a fixed rate, decoded at β = 0, 0.25, 0.5, 0.75, 1 (x̄ = x̂₁ + (1-β)·r). Prints PSNR and task
metrics per β, and the bpp with and without the aux stream (a task-only decode skips it).

    .venv/bin/python benchmarks/beta_sweep.py --rate 0.5 --tasks det,seg
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from icm.bitstream import Bitstream
from icm.codecs import open_codec
from icm.datasets import load_dataset
from icm.images import load_image, psnr
from icm.plugins import get_plugins
from icm.tasks import Batch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--tasks", default="det,seg")
    ap.add_argument("--limit", type=int, default=100)
    args = ap.parse_args()
    val = load_dataset("shapes", "val")
    records = val.images[: args.limit]
    images = [load_image(r["file_name"]) for r in records]
    codec = open_codec("icm-omni-aux")
    streams = [Bitstream.from_bytes(codec.encode(img, rate=args.rate)) for img in images]
    full = np.mean([b.bpp() for b in streams])
    main_only = np.mean([b.bpp(["main"]) for b in streams])
    print(f"rate {args.rate}: {full:.3f} bpp with the aux stream, {main_only:.3f} bpp task-only (main)")
    adapters = {t: get_plugins().tasks.get(t)().bind(val) for t in args.tasks.split(",")}
    print("beta   PSNR   " + "  ".join(f"{t}:{a.primary_metric}" for t, a in adapters.items()))
    for beta in (0.0, 0.25, 0.5, 0.75, 1.0):
        codec.decode_beta = beta
        decoded = [codec.from_bitstream(b) for b in streams]
        row = [f"{beta:4.2f}", f"{np.mean([psnr(a, b) for a, b in zip(images, decoded)]):6.2f}"]
        for t, a in adapters.items():
            ev = a.evaluator()
            for i in range(0, len(records), 16):
                x = torch.stack([torch.from_numpy(d.copy()).permute(2, 0, 1) for d in decoded[i:i + 16]]).float() / 255
                batch = Batch(x, records[i:i + 16])
                with torch.no_grad():
                    ev.process(a.predict(batch), batch.samples)
            row.append(f"{ev.compute()[a.primary_metric]:.3f}")
        print("   ".join(row))


if __name__ == "__main__":
    main()
