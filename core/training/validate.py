"""Per-epoch validation on the forward path: estimated bpp from the likelihoods, PSNR, and every task's
metrics on the decoded (clamped, 8-bit rounded) validation images, at each validation rate."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from icm.distributed import gather
from icm.evaluation.points import rate_key
from icm.tasks import Batch
from icm.training.codec import rate_value
from icm.training.data import eval_batches, load_batch, pad
from icm.training.losses import all_likelihoods


def score(metrics: dict[str, dict], primaries: dict[str, str], psnr: float | None) -> float | None:
    """The candidate's headline number: the mean primary metric over tasks (PSNR without tasks)."""
    values = [metrics[t].get(p) for t, p in primaries.items() if t in metrics]
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(values)) if values else psnr


@torch.no_grad()
def validate(trainable, adapters: dict, images: list[dict], rates: list[dict], *, batch_size: int, pad_to: int,
             device, rank: int = 0, world: int = 1, progress: bool = True) -> list[dict] | None:
    """One row per rate on rank 0 (None on the other ranks). Adapters must be bound to the val dataset."""
    was_training = trainable.training
    trainable.eval()
    batches = eval_batches(images, batch_size, rank, world)
    local = []
    bar = tqdm(total=len(rates) * len(batches), desc="validate", leave=False, disable=not progress or rank != 0)
    for rate in rates:
        bits, pixels, psnrs, preds = 0.0, 0, {}, {t: {} for t in adapters}
        for samples in batches:
            x = load_batch(samples, device)
            h, w = x.shape[-2:]
            out = trainable(pad(x, pad_to), rate_value(rate))
            x_hat = out["x_hat"][..., :h, :w].clamp(0, 1).mul(255).round().div(255)
            bits += float(sum(-torch.log2(v).sum() for v in all_likelihoods(out).values()))
            pixels += x.shape[0] * h * w
            mse = (x_hat - x.mul(255).round().div(255)).pow(2).mean(dim=(1, 2, 3))
            for s, m in zip(samples, mse.tolist()):
                psnrs[s["id"]] = float("inf") if m == 0 else 10 * math.log10(1.0 / m)
            for t, a in adapters.items():
                if getattr(a, "consumes", "pixels") == "features":  # a back end reads the decoded split tensor
                    batch = Batch(out["features_hat"].to(a.device), samples, size=(h, w))
                else:
                    batch = Batch(x_hat.to(a.device), samples)
                for s, p in zip(samples, a.predict(batch)):
                    preds[t][s["id"]] = p
            bar.update(1)
        local.append({"bits": bits, "pixels": pixels, "psnr": psnrs, "preds": preds})
    bar.close()
    trainable.train(was_training)
    gathered = gather(local, world)
    if rank != 0:
        return None
    by_id = {s["id"]: s for s in images}
    rows = []
    for i, rate in enumerate(rates):
        parts = [g[i] for g in gathered]
        psnr_values = [v for p in parts for v in p["psnr"].values() if math.isfinite(v)]
        psnr = float(np.mean(psnr_values)) if psnr_values else None
        metrics = {}
        for t, a in adapters.items():
            preds = {k: v for p in parts for k, v in p["preds"][t].items()}
            ids = sorted(preds)
            ev = a.evaluator()
            ev.process([preds[k] for k in ids], [by_id[k] for k in ids])
            metrics[t] = {k: float(v) for k, v in ev.compute().items() if isinstance(v, (int, float, np.number))}
        pixels = sum(p["pixels"] for p in parts)
        rows.append({"rate": dict(rate), "rate_key": rate_key(rate), "est_bpp": sum(p["bits"] for p in parts) / pixels,
                     "psnr": psnr, "metrics": metrics,
                     "primary": {t: metrics[t].get(a.primary_metric) for t, a in adapters.items()},
                     "score": score(metrics, {t: a.primary_metric for t, a in adapters.items()}, psnr)})
    return rows
