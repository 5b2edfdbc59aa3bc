"""What each task's feature back end reaches on *uncompressed* features, against its pixel model.

    .venv/bin/python benchmarks/feature_backends.py [--codec icm-omni-features] [--checkpoint FILE]
        [--tasks det,inst,panoptic,seg,pose,cls] [--limit N] [--json out.json]

For every task with a feature reader for the codec's split: the pixel model's primary metric on the
original shapes val images, and the reader's on the split tensors the codec's encoder side computes
from the same images (no coding), scored by the same evaluator. The gap is what the split and the
IF module cost before any bit is dropped; `icm evaluate` gives the coded points.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codec", default="icm-omni-features")
    ap.add_argument("--checkpoint", help="the feature codec's weights (default: shipped)")
    ap.add_argument("--tasks", default="det,inst,panoptic,seg,pose,cls")
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--limit", type=int, help="only the first N val images")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)

    from icm.codecs import open_codec
    from icm.datasets import load_dataset
    from icm.images import load_image
    from icm.plugins import get_plugins
    from icm.tasks import Batch

    codec = open_codec(args.codec, **({"checkpoint": args.checkpoint} if args.checkpoint else {}))
    dataset = load_dataset(args.dataset, "val")
    samples = dataset.images[: args.limit] if args.limit else dataset.images
    images = [load_image(s["file_name"]) for s in samples]
    rows = []
    for task in args.tasks.split(","):
        adapter = get_plugins().tasks.get(task)().bind(dataset)
        reader = adapter.feature_reader(codec.split)
        if reader is None:
            print(f"{task}: no back end for {codec.split}; skipped", file=sys.stderr)
            continue
        reader.bind(dataset)
        evaluators = {"pixels": adapter.evaluator(), "features": reader.evaluator()}
        for i in range(0, len(samples), args.batch_size):
            chunk, imgs = samples[i:i + args.batch_size], images[i:i + args.batch_size]
            by_shape: dict[tuple, list[int]] = {}
            for j, img in enumerate(imgs):
                by_shape.setdefault(img.shape, []).append(j)
            for idx in by_shape.values():
                group, pics = [chunk[j] for j in idx], [imgs[j] for j in idx]
                x = torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2).float().div(255)
                with torch.no_grad():
                    evaluators["pixels"].process(adapter.predict(Batch(x.to(adapter.device), group)), group)
                    feats = codec.image_features(pics)
                    batch = Batch(feats.to(reader.device), group, size=pics[0].shape[:2])
                    evaluators["features"].process(reader.predict(batch), group)
        scores = {k: ev.compute().get(adapter.primary_metric) for k, ev in evaluators.items()}
        rows.append({"task": task, "metric": adapter.primary_metric, **scores,
                     "ratio": scores["features"] / scores["pixels"] if scores["pixels"] else None})
        print(f"{task:9s} {adapter.primary_metric:8s} pixels {scores['pixels']:.4f}  "
              f"uncompressed features {scores['features']:.4f}  ({rows[-1]['ratio'] or 0:.3f}x)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"codec": args.codec, "split": codec.split, "images": len(samples), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
