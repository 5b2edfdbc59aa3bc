"""RDC stage II for the shipped codec: add the auxiliary scalable stream to `icm-omni` and train only
it (primary branch frozen, in eval mode) for aux bits + lambda(rate) * 255^2 * MSE of x_bar at beta=0.

    .venv/bin/python scripts/train_omni_aux.py --steps 1500

Writes configs/codecs/icm-omni-aux/model.pth: the icm-omni weights plus the aux branch.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from icm.bitstream import atomic_write_bytes
from icm.codecs.icm_codec import ICMNet
from icm.datasets import load_dataset
from icm.images import load_image
from icm.paths import configs_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--lambda-min", type=float, default=0.0009)
    ap.add_argument("--lambda-max", type=float, default=0.026)
    ap.add_argument("--init", default=str(configs_dir() / "codecs" / "icm-omni" / "model.pth"))
    ap.add_argument("--out", default=str(configs_dir() / "codecs" / "icm-omni-aux"))
    args = ap.parse_args()
    torch.manual_seed(0)
    state = torch.load(args.init, map_location="cpu", weights_only=True)
    primary = ICMNet.from_state_dict(state)  # fp16 tensors are cast to the float32 parameters on load
    net = ICMNet(**{k: v for k, v in primary.config.items() if k != "aux"}, aux=True)
    missing, unexpected = net.load_state_dict(primary.state_dict(), strict=False)
    assert not unexpected and all(k.split(".")[0] in ICMNet.AUX_MODULES for k in missing), (missing, unexpected)
    params = net.train_stage(2)
    opt = torch.optim.Adam([p for p in params if not any(p is q for q in net.parameter_groups()["quantiles"])], lr=1e-3)
    aux_opt = torch.optim.Adam(net.aux_bottleneck.parameters(), lr=1e-3)
    train = load_dataset("shapes", "train")
    x_all = torch.stack([torch.from_numpy(load_image(r["file_name"]).copy()).permute(2, 0, 1) for r in train.images]).float() / 255
    log, start = {"args": vars(args), "steps": []}, time.time()
    bar = tqdm(range(args.steps), desc="aux stream (stage II)")
    for step in bar:
        idx = torch.randint(0, len(x_all), (args.batch_size,))
        top, left = (int(v) for v in torch.randint(0, x_all.shape[-1] - args.crop + 1, (2,)))
        x = x_all[idx, :, top:top + args.crop, left:left + args.crop]
        rate = torch.rand(args.batch_size)
        o = net(x, rate, beta=0.0, aux=True)
        bits = -torch.log2(o["aux_likelihoods"]["aux"]).flatten(1).sum(1) / (x.shape[-1] * x.shape[-2])
        mse = ((o["x_hat"] - x) ** 2).flatten(1).mean(1)
        lam = torch.exp(math.log(args.lambda_min) + rate * (math.log(args.lambda_max) - math.log(args.lambda_min)))
        loss = (bits + lam * 255**2 * mse).mean()
        opt.zero_grad(); aux_opt.zero_grad()
        loss.backward()
        opt.step()
        net.aux_bottleneck.loss().backward() if hasattr(net.aux_bottleneck, "loss") else None
        aux_opt.step()
        if step % 100 == 0:
            log["steps"].append({"step": step, "aux_bpp": bits.mean().item(), "psnr": -10 * math.log10(mse.mean().item())})
            bar.set_postfix(aux_bpp=f"{bits.mean().item():.3f}", psnr=f"{-10 * math.log10(mse.mean().item()):.2f}")
    net.update(force=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".model.pth.tmp"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, tmp)
    tmp.replace(out / "model.pth")
    log["minutes"] = (time.time() - start) / 60
    atomic_write_bytes(out / "train_log.json", json.dumps(log, indent=1).encode())


if __name__ == "__main__":
    main()
