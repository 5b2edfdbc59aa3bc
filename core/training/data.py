"""Batches for training: images of one size per batch, a seeded order per epoch, sharded by rank."""

from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=256)
def _decoded(file_name: str) -> torch.Tensor:
    """A training image as a CHW uint8 tensor, decoded once: photos of a megapixel cost ~40 ms a decode."""
    return torch.from_numpy(load_image(file_name).copy()).permute(2, 0, 1)


def load_crops(samples: list[dict], crop: int, device) -> torch.Tensor:
    """One random ``crop``×``crop`` window per sample, each at its own position, so the samples may
    differ in size (a folder of photos). Uses the global torch RNG (seeded by the run)."""
    windows = [random_window(_decoded(s["file_name"]), crop, s["file_name"]) for s in samples]
    return torch.stack(windows).to(device=device, dtype=torch.float32).div_(255.0)


def load_batch(samples: list[dict], device) -> torch.Tensor:
    x = torch.stack([torch.from_numpy(load_image(s["file_name"]).copy()).permute(2, 0, 1) for s in samples])
    return x.to(device=device, dtype=torch.float32).div_(255.0)


def pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad to a multiple of ``multiple`` (the codec's latent grid), as the codecs do."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def sampled_batches(images: list[dict], batch_size: int, steps: int, seed: int, epoch: int,
                    rank: int = 0, any_size: bool = False) -> list[list[dict]]:
    """``steps`` batches drawn with replacement (the step-based recipe of the shipped codecs): a random
    image, then the rest of the batch at random among the images of its size (among all images with
    ``any_size``, for per-sample crops). Seeded by (seed, epoch, rank): every rank draws its own batches."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch * 101 + rank)
    if any_size:
        return [[images[int(i)] for i in torch.randint(len(images), (batch_size,), generator=g)] for _ in range(steps)]
    groups: dict[tuple, list[dict]] = {}
    for s in images:
        groups.setdefault((s["height"], s["width"]), []).append(s)
    batches = []
    for _ in range(steps):
        first = images[int(torch.randint(len(images), (), generator=g))]
        group = groups[(first["height"], first["width"])]
        batches.append([group[int(i)] for i in torch.randint(len(group), (batch_size,), generator=g)])
    return batches


def random_window(x: torch.Tensor, crop: int, what: str) -> torch.Tensor:
    """A random ``crop``×``crop`` window of ``x`` (..., H, W): top, then left, from the global torch RNG."""
    h, w = x.shape[-2:]
    if crop > min(h, w):
        from icm.errors import UserError

        raise UserError(f"crop {crop} is larger than {what} ({w}x{h})")
    top = int(torch.randint(0, h - crop + 1, ()))
    left = int(torch.randint(0, w - crop + 1, ()))
    return x[..., top:top + crop, left:left + crop]


def augment(x: torch.Tensor, crop: int | None = None, hflip: bool = False) -> torch.Tensor:
    """A random ``crop``×``crop`` window (one position for the batch) and, with ``hflip``, each sample
    flipped left-right with probability 1/2. Uses the global torch RNG (seeded by the run)."""
    if crop:
        x = random_window(x, crop, "the images")
    if hflip:
        flip = torch.rand(x.shape[0]) < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    return x
