"""A small COCO-format dataset whose classes are not shapes': disk, ring and bar on 200x150 noise,
with category ids that are neither 1..3 nor in name order (ring 2, disk 5, bar 9), and tiny
random-init versions of stock mmdet configs (from the installed mmdet package) to run on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CATEGORIES = [{"id": 5, "name": "disk"}, {"id": 2, "name": "ring"}, {"id": 9, "name": "bar"}]
W, H = 200, 150


def _mask(kind: str, rng) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("L", (W, H))
    d = ImageDraw.Draw(im)
    r = int(rng.integers(14, 26))
    cx, cy = int(rng.integers(r + 2, W - r - 2)), int(rng.integers(r + 2, H - r - 2))
    if kind == "disk":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, width=5)
    else:
        d.rectangle([cx - r, cy - r // 3, cx + r, cy + r // 3], fill=1)
    return np.asarray(im, bool)


def write(root: Path, n: int = 10, seed: int = 0) -> Path:
    """``n`` images with 1-3 objects each; returns the dataset config (coco3.json)."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    colours = {"disk": (220, 60, 40), "ring": (40, 200, 90), "bar": (50, 80, 230)}
    for i in range(n):
        pixels = rng.integers(60, 140, (H, W, 3)).astype(np.uint8)
        taken = np.zeros((H, W), bool)
        for _ in range(int(rng.integers(1, 4))):
            cat = CATEGORIES[int(rng.integers(0, 3))]
            m = _mask(cat["name"], rng)
            if (m & taken).any():
                continue
            taken |= m
            pixels[m] = colours[cat["name"]]
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat["id"], "bbox": [x, y, w, h],
                         "area": float(m.sum()), "segmentation": rle, "iscrowd": 0})
        Image.fromarray(pixels).save(root / "images" / f"{i:03d}.png")
        images.append({"id": i + 1, "file_name": f"{i:03d}.png", "width": W, "height": H})
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    config = root / "coco3.json"
    config.write_text(json.dumps({"name": "coco3", "images_dir": "images", "instances": "instances.json"}))
    return config


def stock(relative: str) -> Path:
    """A config file shipped inside the installed mmdet package."""
    import mmdet

    path = Path(mmdet.__file__).parent / ".mim" / "configs" / relative
    assert path.is_file(), path
    return path


# ResNet-18 instead of -50 (FPN inputs follow), so a random-init model runs in a fraction of a second
TINY = {
    "retinanet": ("retinanet/retinanet_r50_fpn_1x_coco.py", "model = dict(backbone=dict(depth=18), "
                  "neck=dict(in_channels=[64, 128, 256, 512]))"),
    "faster_rcnn": ("faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", "model = dict(backbone=dict(depth=18), "
                    "neck=dict(in_channels=[64, 128, 256, 512]))"),
    "fcos": ("fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py", "model = dict(backbone=dict(depth=18), "
             "neck=dict(in_channels=[64, 128, 256, 512]))"),
    "yolox": ("yolox/yolox_tiny_8xb8-300e_coco.py", ""),
}


def tiny_config(root: Path, kind: str, extra: str = "") -> Path:
    """A config that inherits the stock one and only shrinks the backbone (plus ``extra`` lines)."""
    base, shrink = TINY[kind]
    path = root / f"{kind}_tiny.py"
    path.write_text(f"_base_ = {str(stock(base))!r}\n{shrink}\n{extra}\n")
    return path


def random_checkpoint(config: Path, out: Path, meta: dict | None = None) -> Path:
    """Build the config's model (random init, seed 0) and save its state_dict, like a user's own file."""
    import torch

    from icm_openmmlab import build_model, load_config

    torch.manual_seed(0)
    model = build_model(load_config(config, "mmdet"), "mmdet", None, device="cpu")
    state = model.state_dict()
    torch.save({"state_dict": state, "meta": meta} if meta else state, out)
    return out
