"""Batches for training: images of one size per batch, a seeded order per epoch, sharded by rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from icm.images import load_image


def epoch_batches(images: list[dict], batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world: int = 1) -> list[list[dict]]:
    """This rank's batches for ``epoch``. The order depends only on (seed, epoch), so every rank
    agrees on it and a resumed run sees the same batches; each rank gets the same number of batches."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    groups: dict[tuple, list[dict]] = {}
    for s in images:  # a batch needs one image size
        groups.setdefault((s["height"], s["width"]), []).append(s)
    batches = []
    for _, group in sorted(groups.items()):
        order = torch.randperm(len(group), generator=g).tolist()
        batches += [[group[i] for i in order[j:j + batch_size]] for j in range(0, len(order), batch_size)]
    batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches[: len(batches) // world * world][rank::world]


def eval_batches(images: list[dict], batch_size: int, rank: int = 0, world: int = 1) -> list[list[dict]]:
    """Validation batches of this rank's shard, in dataset order, one image size per batch."""
    groups: dict[tuple, list[dict]] = {}
    for s in images[rank::world]:
        groups.setdefault((s["height"], s["width"]), []).append(s)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def load_batch(samples: list[dict], device) -> torch.Tensor:
    x = torch.stack([torch.from_numpy(load_image(s["file_name"]).copy()).permute(2, 0, 1) for s in samples])
    return x.to(device=device, dtype=torch.float32).div_(255.0)


def pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad to a multiple of ``multiple`` (the codec's latent grid), as the codecs do."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
