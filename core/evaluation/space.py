"""How much a run will write to OUT/cache before it codes anything, so a disk that is clearly too
small is named at the start rather than half-way (docs/evaluate.md#faults)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from icm.faults import free_bytes, size_text

BPP = 1.0  # bitstreams are taken at 1 bpp: above most rate points of an ICM curve, below a lossless one
SIDECAR = 128  # a .quality.json / .est.json


def cache_estimate(engine, points, adapters: dict, mkeys: dict, originals: dict, scale: float = 1.0) -> tuple[int, int]:
    """(bytes, files) the cache still needs for these points and images: every missing bitstream with
    its sidecars, every missing prediction (each task's at the size of one it already cached, else one
    block), the scores they change and the report's decoded samples as PNG, each file rounded up to
    the filesystem's block.
    ``scale`` extrapolates one rank's shard to the whole run."""
    cache = engine.cache
    block = _block(cache.root)
    guesses = {t: _cached_size(cache.root / "predictions" / mkeys[t]) for t in adapters}
    sizes, scored = [], set()
    for n, (codec, point) in enumerate(points):
        for i, (img, ikey) in enumerate(originals.values()):
            pixels = img.shape[0] * img.shape[1]
            if codec is not None and not cache.bitstream_file(point, ikey).exists():
                sizes += [pixels * BPP / 8 + 64, SIDECAR] + ([SIDECAR] if hasattr(codec, "estimate_bits") else [])
                if i < engine.exp.samples_in_report:
                    sizes.append(pixels * 3 / 2)  # a decoded sample, PNG-compressed about 2:1
            for task in adapters:
                if not cache.prediction_file(mkeys[task], point, ikey).exists():
                    sizes.append(guesses[task])
                    scored.add((task, n))  # a new prediction: the task is scored again at this point
    sizes += [SIDECAR] * len(scored)
    total = sum(-(-int(s) // block) * block for s in sizes)
    return int(total * scale), int(len(sizes) * scale)


def warn_if_short(out: Path, need: int, files: int) -> bool:
    """One warning line when the free space under ``out`` is below the estimate; True if it was."""
    free = free_bytes(out)
    if free is None or free >= need:
        return False
    print(f"icm: warning: this run will write about {size_text(need)} to {out}/cache ({files} files), and only "
          f"{size_text(free)} is free there", file=sys.stderr)
    return True


def _block(path: Path) -> int:
    for p in (path, *path.parents):
        if p.is_dir():
            return os.statvfs(p).f_frsize or 4096
    return 4096


def _cached_size(folder: Path) -> int:
    """The size of one prediction this model already cached (they are all alike), or 1 byte."""
    if folder.is_dir():
        for root, _, names in os.walk(folder):
            for name in names:
                if name.endswith(".pkl"):
                    return os.path.getsize(os.path.join(root, name))
    return 1
