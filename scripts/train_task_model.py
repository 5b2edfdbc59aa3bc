"""Train a shipped task model on the `shapes` train split, on whatever device is available.

    .venv/bin/python scripts/train_task_model.py det   --epochs 12   # PanopticFPN: det, inst, panoptic
    .venv/bin/python scripts/train_task_model.py seg                  # mmseg
    .venv/bin/python scripts/train_task_model.py pose                 # mmpose
    .venv/bin/python scripts/train_task_model.py cls                  # mmpretrain

The adapter supplies the loss (the same `adapter.loss` codecs train through), so this script is the
same for every task. Weights are written in fp16 (half the bytes; loading casts back) to
the adapter's package (plugins/icm-plugin-*/icm_*/model/, shipped in its wheel), and a JSON log with the val metrics and the wall time next to them.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from icm.bitstream import atomic_write_bytes
from icm.datasets import load_dataset
from icm.images import load_image
from icm.paths import package_file
from icm.plugins import get_plugins
from icm.tasks import Batch


def load_split(dataset):
    images = torch.stack([torch.from_numpy(load_image(r["file_name"]).copy()).permute(2, 0, 1) for r in dataset.images])
    return images, dataset.images


def evaluate(adapter, images, records, batch_size=16):
    adapter.model.eval()
    ev = adapter.evaluator()
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            batch = Batch(images[i:i + batch_size].float().div(255).to(adapter.device), records[i:i + batch_size])
            ev.process(adapter.predict(batch), batch.samples)
    return ev.compute()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="weights path (default: the adapter's shipped weights path)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    factory = get_plugins().tasks.get(args.task)
    adapter = factory(train=True)
    train, val = load_dataset("shapes", "train"), load_dataset("shapes", "val")
    adapter.bind(train)
    model = adapter.model
    for p in model.parameters():
        p.requires_grad_(True)
    x_train, r_train = load_split(train)
    if args.train_limit:
        x_train, r_train = x_train[: args.train_limit], r_train[: args.train_limit]
    x_val, r_val = load_split(val)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(r_train) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    log = {"task": args.task, "args": vars(args), "epochs": []}
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = list(range(len(r_train)))
        random.shuffle(order)
        losses = []
        bar = tqdm(range(0, len(order) - args.batch_size + 1, args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}")
        for i in bar:
            idx = order[i:i + args.batch_size]
            batch = Batch(x_train[idx].float().div(255).to(adapter.device), [r_train[j] for j in idx])
            loss = adapter.loss(batch.images, batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "minutes": (time.time() - start) / 60}
        if epoch + 1 == args.epochs or (epoch + 1) % 4 == 0:
            adapter.bind(val)
            entry["val"] = evaluate(adapter, x_val, r_val)
            adapter.bind(train)
        print(json.dumps(entry))
        log["epochs"].append(entry)
    log["train_minutes"] = (time.time() - start) / 60
    package = type(adapter).__module__.split(".")[0]
    out = Path(args.out) if args.out else package_file(package, adapter.default_weights)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(log, indent=1).encode())
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {log['train_minutes']:.1f} min")


if __name__ == "__main__":
    main()
