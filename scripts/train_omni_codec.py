"""Train the shipped multi-task, variable-rate `icm-omni` codec on the `shapes` train split.

Stage A (pixels): one ICMNet for every rate, rate + lambda(rate) * 255^2 * MSE, with lambda
interpolated log-linearly over [--lambda-min, --lambda-max] as the per-sample rate alpha goes 0 -> 1
(RDC §3.2's training of gain units), on random crops.
Stage B (machines): fine-tune the same net on full images against the frozen task models at once:
objectness-weighted distillation of the detector's FPN features (paper 003), feature distillation for
seg and pose, plus rate and a small MSE term, again at random rates; optionally (--task-loss-weight)
the task models' own losses against ground truth, and more stage-B steps at low rates (--rate-power).
One bitstream then serves them all. The shipped weights come from a chain of runs, each starting from
the last (--init): scripts/reproduce_icm_omni.sh.

Writes configs/codecs/icm-omni/model.pth (fp16) and train_log.json next to it.
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
from icm.plugins import get_plugins
from icm.tasks import Batch


def lambdas(rate: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return torch.exp(math.log(lo) + rate * (math.log(hi) - math.log(lo)))


def bits_per_pixel(out, pixels):
    return sum(-torch.log2(v).flatten(1).sum(1) for v in out["likelihoods"].values()) / pixels


def weighted_mse(pred, target, w=None):
    """MSE relative to the target's energy, so tasks whose features differ in scale weigh alike;
    with ``w`` (objectness, paper 003) each location counts by its weight, normalised to mean 1."""
    e = (pred - target) ** 2 / target.pow(2).mean().clamp_min(1e-8)
    if w is None:
        return e.mean()
    w = torch.nn.functional.interpolate(w, size=e.shape[-2:], mode="nearest")
    w = w / w.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)  # weights average 1 per image
    return (w * e).mean()


def gt_box_weights(dataset, adapter, idx, hw, device, floor: float = 0.1):
    """Paper 003's baseline: 1 inside ground-truth boxes, ``floor`` elsewhere, (N,1,H,W)."""
    w = torch.full((len(idx), 1, *hw), floor, device=device)
    for n, i in enumerate(idx):
        for ann in adapter._coco.imgToAnns.get(dataset.images[i]["id"], []):
            x0, y0, bw, bh = (int(round(v)) for v in ann["bbox"])
            w[n, 0, y0:y0 + bh, x0:x0 + bw] = 1.0
    return w


def save(net, out: Path, log: dict):
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".model.pth.tmp"
    net.update(force=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, tmp)
    tmp.replace(out / "model.pth")
    atomic_write_bytes(out / "train_log.json", json.dumps(log, indent=1).encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage-a-steps", type=int, default=6000)
    ap.add_argument("--stage-b-steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lambda-min", type=float, default=0.0009)
    ap.add_argument("--lambda-max", type=float, default=0.026)
    ap.add_argument("--tasks", default="det,seg,pose")
    ap.add_argument("--task-weight", type=float, default=1.0, help="weight of each (relative) distillation term")
    ap.add_argument("--task-scale", action="append", default=[], metavar="TASK=W",
                    help="multiply one task's distillation and task-loss terms by W (repeatable), e.g. seg=2")
    ap.add_argument("--mse-weight-b", type=float, default=0.25, help="stage B keeps this share of lambda*MSE")
    ap.add_argument("--out", default=str(configs_dir() / "codecs" / "icm-omni"))
    ap.add_argument("--det-weighting", choices=("objectness", "gtbox", "plain"), default="objectness",
                    help="how det feature distillation weighs locations (paper 003 and its baselines)")
    ap.add_argument("--task-loss-weight", type=float, default=0.0,
                    help="add each adapter's own task loss against ground truth (adapter.loss), divided by its "
                         "running mean so tasks weigh alike; 0 = distillation only")
    ap.add_argument("--rate-power", type=float, default=1.0,
                    help="stage B samples the rate as u**p, u uniform: p > 1 spends more steps on low rates")
    ap.add_argument("--rate-weight", type=float, default=1.0, help="stage B weight of the rate term")
    ap.add_argument("--low-rate-weight", type=float, default=1.0,
                    help="stage B weighs the rate term by W**(1 - alpha): W > 1 widens the rate range downwards")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="end stage B after this many steps (the learning-rate schedule still spans --stage-b-steps)")
    ap.add_argument("--init", default=None, help="start from this model.pth (e.g. to run stage B only)")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = load_dataset("shapes", "train")
    x_all = torch.stack([torch.from_numpy(load_image(r["file_name"]).copy()).permute(2, 0, 1) for r in train.images]).float() / 255
    net = ICMNet(aux=False).to(device)
    if args.init:
        state = torch.load(args.init, map_location="cpu", weights_only=True)
        net = ICMNet.from_state_dict(state).to(device)  # fp16 tensors are cast to the float32 parameters on load
    log = {"args": vars(args), "stage_a": [], "stage_b": []}
    if args.init:  # keep the whole recipe: the log of the run that made the starting weights
        previous = Path(args.init).with_name("train_log.json")
        log["init_log"] = json.loads(previous.read_text()) if previous.is_file() else None
    out = Path(args.out)

    def optimisers(params_lr):
        main = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
        return torch.optim.Adam(main, lr=params_lr), torch.optim.Adam(aux, lr=1e-3)

    # -- stage A: pixels, every rate ---------------------------------------------------------------
    opt, aux_opt = optimisers(args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, args.stage_a_steps))
    start = time.time()
    net.train()
    bar = tqdm(range(args.stage_a_steps), desc="stage A (rate + MSE, all rates)")
    for step in bar:
        idx = torch.randint(0, len(x_all), (args.batch_size,))
        top, left = (int(v) for v in torch.randint(0, x_all.shape[-1] - args.crop + 1, (2,)))
        x = x_all[idx, :, top:top + args.crop, left:left + args.crop].to(device)
        rate = torch.rand(args.batch_size, device=device)
        o = net(x, rate)
        bpp = bits_per_pixel(o, x.shape[-1] * x.shape[-2])
        mse = ((o["x_hat"] - x) ** 2).flatten(1).mean(1)
        loss = (bpp + lambdas(rate, args.lambda_min, args.lambda_max) * 255**2 * mse).mean()
        opt.zero_grad(); aux_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step(); sched.step()
        net.aux_loss().backward(); aux_opt.step()
        if step % 100 == 0:
            entry = {"step": step, "bpp": bpp.mean().item(), "psnr": -10 * math.log10(max(mse.mean().item(), 1e-10))}
            log["stage_a"].append(entry)
            bar.set_postfix(bpp=f"{entry['bpp']:.3f}", psnr=f"{entry['psnr']:.2f}")
    log["stage_a_minutes"] = (time.time() - start) / 60
    save(net, out, log)

    # -- stage B: machines, all tasks at once ------------------------------------------------------
    if args.stage_b_steps <= 0:
        return
    tasks = [t for t in args.tasks.split(",") if t]
    scale = {t: 1.0 for t in tasks}
    for item in args.task_scale:
        name, _, value = item.partition("=")
        if name not in scale:
            ap.error(f"--task-scale {item}: {name!r} is not one of --tasks")
        scale[name] = float(value)
    adapters = {t: get_plugins().tasks.get(t)().bind(train) for t in tasks}
    opt, aux_opt = optimisers(args.lr / 5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, args.stage_b_steps))
    running = {}  # running mean of each task loss: the normaliser (by hand: a two-line EMA)
    start = time.time()
    bar = tqdm(range(args.stage_b_steps), desc=f"stage B (rate + distillation: {', '.join(tasks)})")
    for step in bar:
        if args.stop_after is not None and step >= args.stop_after:
            break
        idx = torch.randint(0, len(x_all), (args.batch_size,)).tolist()
        x = x_all[idx].to(device)
        rate = torch.rand(args.batch_size, device=device) ** args.rate_power
        o = net(x, rate)
        bpp = bits_per_pixel(o, x.shape[-1] * x.shape[-2])
        lam = lambdas(rate, args.lambda_min, args.lambda_max)
        mse = ((o["x_hat"] - x) ** 2).flatten(1).mean(1)
        # the rate term weighs W**(1 - alpha): W > 1 pulls the low rates down, leaves alpha = 1 as it is
        loss = (args.rate_weight * args.low_rate_weight ** (1 - rate) * bpp + args.mse_weight_b * lam * 255**2 * mse).mean()
        terms = {}
        for t, a in adapters.items():
            with torch.no_grad():
                target = a.features(x)
                weights = None
                if t == "det" and args.det_weighting == "objectness":
                    weights = a.objectness(x)
                elif t == "det" and args.det_weighting == "gtbox":
                    weights = [gt_box_weights(train, a, idx, x.shape[-2:], x.device)] * len(target)
            pred = a.features(o["x_hat"].clamp(0, 1))
            d = sum(weighted_mse(p, q, None if weights is None else w)
                    for p, q, w in zip(pred, target, weights or [None] * len(pred))) / len(pred)
            terms[t] = d.item()
            loss = loss + scale[t] * args.task_weight * d
            if args.task_loss_weight > 0:
                task_loss = a.loss(o["x_hat"].clamp(0, 1), Batch(o["x_hat"], [train.images[i] for i in idx]))
                running[t] = 0.98 * running.get(t, task_loss.item()) + 0.02 * task_loss.item()
                terms[f"{t}_loss"] = task_loss.item()
                loss = loss + scale[t] * args.task_loss_weight * task_loss / max(running[t], 1e-6)
        opt.zero_grad(); aux_opt.zero_grad()
        loss.backward()
        # a single non-finite batch (seen once in ~900 steps) would poison every weight: skip it
        if torch.isfinite(torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)):
            opt.step()
        else:
            log["skipped_steps"] = log.get("skipped_steps", 0) + 1
        sched.step()
        net.aux_loss().backward(); aux_opt.step()
        if step % 25 == 0:
            entry = {"step": step, "bpp": bpp.mean().item(), "psnr": -10 * math.log10(max(mse.mean().item(), 1e-10)), **terms}
            log["stage_b"].append(entry)
            bar.set_postfix(bpp=f"{entry['bpp']:.3f}", psnr=f"{entry['psnr']:.1f}", **{k: f"{v:.3f}" for k, v in terms.items()})
        if step % 250 == 249:
            save(net, out, log)
    log["stage_b_minutes"] = (time.time() - start) / 60
    save(net, out, log)


if __name__ == "__main__":
    main()
