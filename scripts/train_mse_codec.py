"""Train the shipped `icm-hyperprior-mse` codec: CompressAI's bmshj2018-hyperprior at small widths
(N=64, M=96), one model per quality, on the `shapes` train split for rate + lambda * 255^2 * MSE.

    .venv/bin/python scripts/train_mse_codec.py --steps 2500

Writes configs/codecs/icm-hyperprior-mse/quality{1..4}.pth (+ a JSON log with the wall time).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from compressai.models import ScaleHyperprior
from tqdm import tqdm

from icm.bitstream import atomic_write_bytes
from icm.datasets import load_dataset
from icm.images import load_image
from icm.paths import configs_dir

LAMBDAS = (0.0018, 0.0035, 0.0067, 0.013)  # CompressAI's MSE lambdas for qualities 1-4


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--crop", type=int, default=64, help="random square crops (CompressAI-style patch training)")
    ap.add_argument("--qualities", default="1,2,3,4")
    ap.add_argument("--out", default=str(configs_dir() / "codecs" / "icm-hyperprior-mse"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = load_dataset("shapes", "train")
    x = torch.stack([torch.from_numpy(load_image(r["file_name"])).permute(2, 0, 1) for r in train.images]).float() / 255
    out = Path(args.out)
    log = {"lambdas": LAMBDAS, "args": vars(args), "qualities": {}}
    for q in (int(v) for v in args.qualities.split(",")):
        lmbda = LAMBDAS[q - 1]
        torch.manual_seed(q)
        net = ScaleHyperprior(64, 96).to(device).train()
        main_params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
        aux_params = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
        opt = torch.optim.Adam(main_params, lr=args.lr)
        aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
        start = time.time()
        bar = tqdm(range(args.steps), desc=f"quality {q} (lambda {lmbda})")
        for step in bar:
            idx = torch.randint(0, len(x), (args.batch_size,))
            top, left = (int(v) for v in torch.randint(0, x.shape[-1] - args.crop + 1, (2,)))
            batch = x[idx, :, top:top + args.crop, left:left + args.crop].to(device)
            flip = torch.rand(args.batch_size, device=device) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            res = net(batch)
            n_pixels = batch.shape[0] * batch.shape[2] * batch.shape[3]
            bpp = sum(-torch.log2(v).sum() for v in res["likelihoods"].values()) / n_pixels
            mse = torch.mean((res["x_hat"] - batch) ** 2)
            loss = lmbda * 255**2 * mse + bpp
            opt.zero_grad()
            aux_opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(main_params, 1.0)
            opt.step()
            sched.step()
            net.aux_loss().backward()
            aux_opt.step()
            if step % 50 == 0:
                bar.set_postfix(bpp=f"{bpp.item():.3f}", psnr=f"{-10 * math.log10(max(mse.item(), 1e-10)):.2f}")
        net.update(force=True)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".quality{q}.pth.tmp"
        # fp16 halves the file; CompressAI's integer CDF tables stay exact, and loading casts back
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, tmp)
        tmp.replace(out / f"quality{q}.pth")
        log["qualities"][q] = {"lambda": lmbda, "minutes": (time.time() - start) / 60, "final_bpp": bpp.item(),
                               "final_psnr": -10 * math.log10(max(mse.item(), 1e-10))}
        print(json.dumps({q: log["qualities"][q]}))
    atomic_write_bytes(out / "train_log.json", json.dumps(log, indent=1).encode())


if __name__ == "__main__":
    main()
