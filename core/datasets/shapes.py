"""``shapes``: a small synthetic benchmark labelled for every task icm evaluates.

Each image shows 2-6 things (disc, square, triangle and a stick ``figure`` with 5 keypoints) on two
textured stuff regions (``wall`` above a wavy horizon, ``ground`` below) strewn with tiny distractors
that belong to no class. The clutter is the point: like street or indoor photos, most of what a
generic codec spends bits on is detail the tasks do not need.

Labels (the same in ``meta`` of ``dataset.json``):

- semantic ids: 0 wall, 1 ground, 2 disc, 3 square, 4 triangle, 5 figure (255 = ignore, unused)
- COCO category ids: 1 disc, 2 square, 3 triangle, 4 figure (things), 5 wall, 6 ground (stuff)
- panoptic segment id = category_id * 1000 + instance number (1, 2, ... per category; 0 for stuff)
- classification: index into (disc, square, triangle, figure) of the largest visible thing
- keypoints (x, y, v) with pixel centres at integer coordinates (the cv2/OpenMMLab convention);
  v = 2 visible, 1 hidden by a thing drawn later. ``left_*`` lies on the image's right for an
  upright figure (it faces the viewer, as in COCO).

Every image draws its own generator from (seed, split, index), so the output is byte-identical for a
seed and an image does not change when the other split or the image count changes.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from icm.bitstream import atomic_write_bytes
from icm.errors import UserError

NAME = "shapes"
VERSION = 1  # bump whenever the output changes, so cached copies are regenerated
SPLITS = ("train", "val")
THINGS = ("disc", "square", "triangle", "figure")
STUFF = ("wall", "ground")
SEMANTIC = STUFF + THINGS  # semantic label id = index
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(THINGS + STUFF)}
PANOPTIC_DIVISOR = 1000
KEYPOINTS = ("head", "left_hand", "right_hand", "left_foot", "right_foot")
SKELETON = [[0, 1], [0, 2], [0, 3], [0, 4]]  # 0-based; the COCO JSON has these +1
SIGMAS = [0.05, 0.07, 0.07, 0.08, 0.08]
FLIP_PAIRS = [[1, 2], [3, 4]]
PALETTE = [[102, 102, 156], [128, 64, 128], [220, 20, 60], [0, 0, 142], [250, 170, 30], [0, 190, 60]]

MIN_VISIBLE = 0.3  # things hidden more than this are not drawn at all
HERO_MARGIN = 1.25  # the hero's visible area beats every other thing's by this factor

META = {
    "semantic_classes": list(SEMANTIC), "ignore_index": 255, "palette": PALETTE,
    "things": list(THINGS), "stuff": list(STUFF), "category_ids": CATEGORY_IDS,
    "thing_classes": list(THINGS), "stuff_classes": list(STUFF),  # the same, under OpenMMLab's metainfo names
    "panoptic_label_divisor": PANOPTIC_DIVISOR, "classification_classes": list(THINGS),
    "keypoint_names": list(KEYPOINTS), "skeleton": SKELETON, "sigmas": SIGMAS, "flip_pairs": FLIP_PAIRS,
    "keypoint_category": "figure", "keypoint_coordinates": "pixel centres at integers",
}


# -- generation ---------------------------------------------------------------------------------------
def generate(out_dir: str | Path, train: int = 800, val: int = 100, size: int = 128, seed: int = 0,
             progress: bool = True) -> Path:
    """Write the dataset under ``out_dir``; returns the path of its ``dataset.json`` index.

    Returns at once when the index already records the same parameters. The index is removed first
    and written last, so an interrupted run is simply redone.
    """
    out = Path(out_dir)
    params = {"train": train, "val": val, "size": size, "seed": seed, "version": VERSION}
    if is_current(out, params):
        return out / "dataset.json"
    if min(train, val) < 0 or train + val < 1:
        raise UserError(f"shapes: need train >= 0 and val >= 0, with at least one image (got {train}, {val})")
    if not 32 <= size <= 4096:
        raise UserError(f"shapes: image size must be within 32..4096 (got {size})")
    if seed < 0:
        raise UserError(f"shapes: seed must be >= 0 (got {seed})")
    try:
        from pycocotools import mask as mask_util
    except ImportError:
        raise UserError("shapes: pycocotools is needed to write COCO masks (pip install pycocotools)") from None
    from rich.console import Console
    from rich.progress import Progress

    (out / "dataset.json").unlink(missing_ok=True)
    index = {"name": NAME, "params": params, "meta": {**META, "image_size": size}, "splits": {}}
    console = Console(stderr=True)
    with Progress(console=console, disable=not (progress and console.is_terminal), transient=True) as bar:
        task = bar.add_task(f"shapes -> {out}", total=train + val)
        for split, count in (("train", train), ("val", val)):
            index["splits"][split] = _write_split(out, split, count, size, seed, mask_util, lambda: bar.advance(task))
    _write_json(out / "dataset.json", index, indent=1)
    return out / "dataset.json"


def is_current(out_dir: str | Path, params: dict) -> bool:
    try:
        return json.loads((Path(out_dir) / "dataset.json").read_text()).get("params") == params
    except (OSError, ValueError):
        return False


def _write_split(out: Path, split: str, count: int, size: int, seed: int, mask_util, step) -> dict:
    paths = {"images_dir": f"{split}/images", "num_images": count,
             "instances": f"annotations/instances_{split}.json",
             "keypoints": f"annotations/person_keypoints_{split}.json",
             "panoptic_json": f"annotations/panoptic_{split}.json",
             "panoptic_dir": f"annotations/panoptic_{split}",
             "semantic_dir": f"{split}/semantic",
             "classification": f"annotations/classification_{split}.txt"}
    images, instances, keypoints, panoptic, labels = [], [], [], [], []
    for i in range(count):
        rng = np.random.default_rng([seed, SPLITS.index(split), i])
        scene = render(rng, size)
        stem = f"{i:06d}"
        _write_png(out / paths["images_dir"] / f"{stem}.png", scene.image)
        _write_png(out / paths["semantic_dir"] / f"{stem}.png", scene.semantic)
        pan = scene.panoptic
        _write_png(out / paths["panoptic_dir"] / f"{stem}.png",
                   np.stack([pan % 256, pan // 256 % 256, pan // 65536], -1).astype(np.uint8))
        images.append({"id": i, "file_name": f"{stem}.png", "width": size, "height": size})
        labels.append(f"{paths['images_dir']}/{stem}.png {THINGS.index(scene.label)}\n")
        segments = []
        for thing in scene.things:
            ann_id = len(instances) + 1  # ids from 1: COCOeval treats id 0 as "unmatched"
            rle = mask_util.encode(np.asfortranarray(thing.visible.astype(np.uint8)))
            ann = {"id": ann_id, "image_id": i, "category_id": CATEGORY_IDS[thing.cls],
                   "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                   "area": int(thing.visible.sum()), "bbox": _bbox(thing.visible), "iscrowd": 0}
            instances.append(ann)
            if thing.keypoints is not None:
                kps = [int(v) for xyv in thing.keypoints for v in xyv]
                keypoints.append({**ann, "keypoints": kps, "num_keypoints": len(KEYPOINTS)})
            segments.append((thing.segment_id, CATEGORY_IDS[thing.cls], thing.visible))
        for name in STUFF:
            region = pan == CATEGORY_IDS[name] * PANOPTIC_DIVISOR
            if region.any():
                segments.append((CATEGORY_IDS[name] * PANOPTIC_DIVISOR, CATEGORY_IDS[name], region))
        panoptic.append({"image_id": i, "file_name": f"{stem}.png", "segments_info": [
            {"id": sid, "category_id": cat, "iscrowd": 0, "bbox": _bbox(m), "area": int(m.sum())}
            for sid, cat, m in segments]})
        step()
    _remove_stale(out, paths, count)

    things = [{"id": CATEGORY_IDS[n], "name": n, "supercategory": "shape"} for n in THINGS]
    figure = {**things[-1], "keypoints": list(KEYPOINTS), "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}
    pan_cats = [{**c, "isthing": 1, "color": PALETTE[SEMANTIC.index(c["name"])]} for c in things] + [
        {"id": CATEGORY_IDS[n], "name": n, "supercategory": "stuff", "isthing": 0,
         "color": PALETTE[SEMANTIC.index(n)]} for n in STUFF]
    head = {"info": {"description": f"icm {NAME} {split}", "version": str(VERSION)}, "licenses": [], "images": images}
    _write_json(out / paths["instances"], {**head, "annotations": instances, "categories": things})
    _write_json(out / paths["keypoints"], {**head, "annotations": keypoints, "categories": [figure]})
    _write_json(out / paths["panoptic_json"], {**head, "annotations": panoptic, "categories": pan_cats})
    atomic_write_bytes(out / paths["classification"], "".join(labels).encode())
    return paths


def _remove_stale(out: Path, paths: dict, count: int) -> None:
    # A folder regenerated with fewer images must not keep the old extra ones.
    for key in ("images_dir", "semantic_dir", "panoptic_dir"):
        for f in (out / paths[key]).glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):
            if int(f.stem) >= count:
                f.unlink()


def _write_png(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _write_json(path: Path, obj, indent: int | None = None) -> None:
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"))
    atomic_write_bytes(path, text.encode())


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


# -- one scene ----------------------------------------------------------------------------------------
@dataclass(eq=False)  # identity: things hold arrays
class Thing:
    cls: str
    paint: np.ndarray  # uint8: 0 outside, 1 fill, 2 outline
    colour: np.ndarray
    keypoints: list | None = None  # [[x, y, v]] * 5 for figures
    visible: np.ndarray | None = None
    segment_id: int = 0

    @property
    def full(self) -> np.ndarray:
        return self.paint > 0


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8
    semantic: np.ndarray  # HxW uint8
    panoptic: np.ndarray  # HxW int32 segment ids
    things: list[Thing]  # back to front
    label: str  # class of the largest visible thing


def render(rng: np.random.Generator, size: int) -> Scene:
    scale = size / 128
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wall = yy < _horizon(rng, size, xx[0])[None, :]
    wall_tex = _texture(rng, str(rng.choice(["bricks", "stripes", "noise", "tiles"])), yy, xx, scale)
    ground_tex = _texture(rng, str(rng.choice(["grain", "noise", "tiles", "stripes"])), yy, xx, scale)
    image = Image.fromarray(np.clip(np.where(wall[..., None], wall_tex, ground_tex), 0, 255).astype(np.uint8))
    _distractors(rng, ImageDraw.Draw(image), size, scale)
    image = np.array(image)

    shapes = _pick_shapes(rng, scale)
    for attempt in range(20):
        order = rng.permutation(len(shapes))
        if attempt == 19:  # the hero (shapes[0]) on top always satisfies the checks below
            order = np.concatenate([order[order != 0], [0]])
        things = [_place(rng, shapes[k], size) for k in order]
        kept = _occlude(things)
        hero = things[int(np.nonzero(order == 0)[0][0])]
        others = [t.visible.sum() for t in kept if t is not hero]
        if hero in kept and hero.visible.sum() >= HERO_MARGIN * max(others, default=0) \
                and len(kept) >= min(2, len(shapes)):
            break

    semantic = np.where(wall, SEMANTIC.index("wall"), SEMANTIC.index("ground")).astype(np.uint8)
    panoptic = np.where(wall, CATEGORY_IDS["wall"], CATEGORY_IDS["ground"]).astype(np.int32) * PANOPTIC_DIVISOR
    counts = dict.fromkeys(THINGS, 0)
    for t in kept:
        counts[t.cls] += 1
        t.segment_id = CATEGORY_IDS[t.cls] * PANOPTIC_DIVISOR + counts[t.cls]
        semantic[t.visible] = SEMANTIC.index(t.cls)
        panoptic[t.visible] = t.segment_id
        _paint(image, t, yy, xx, rng)
    largest = max(kept, key=lambda t: t.visible.sum())  # the hero, unless the last fallback failed too
    return Scene(image, semantic, panoptic, kept, largest.cls)


def _occlude(things: list[Thing]) -> list[Thing]:
    """Visible masks front to back; things left with under MIN_VISIBLE of their area are dropped."""
    covered = np.zeros_like(things[0].full)
    kept = []
    for t in reversed(things):
        full = t.full
        t.visible = full & ~covered
        if t.visible.sum() < MIN_VISIBLE * full.sum():
            continue
        if t.keypoints is not None:
            h, w = covered.shape
            t.keypoints = [[x, y, 1 if covered[min(max(y, 0), h - 1), min(max(x, 0), w - 1)] else 2]
                           for x, y, _ in t.keypoints]
        kept.append(t)
        covered |= full
    return kept[::-1]


def _horizon(rng, size: int, x: np.ndarray) -> np.ndarray:
    base = rng.uniform(0.35, 0.6) * size
    wave = rng.uniform(1, 0.06 * size) * np.sin(2 * np.pi * rng.uniform(0.5, 2.5) * x / size + rng.uniform(0, 6.3))
    ripple = rng.uniform(0, 0.02 * size) * np.sin(2 * np.pi * rng.uniform(3, 7) * x / size + rng.uniform(0, 6.3))
    return base + wave + ripple


def _colour(rng, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb, np.float32) * 255


def _noise(rng, size: int, cells: float) -> np.ndarray:
    """Band-limited noise in about [0, 1]: a random grid of ``cells`` x ``cells`` upsampled bicubically."""
    cells = max(2, int(cells))
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))


def _texture(rng, kind: str, yy: np.ndarray, xx: np.ndarray, scale: float) -> np.ndarray:
    size = yy.shape[0]
    c1, c2 = _colour(rng, (0.05, 0.45), (0.25, 0.85)), _colour(rng, (0.05, 0.45), (0.25, 0.85))
    if kind == "bricks":
        h = rng.uniform(5, 12) * scale
        w = h * rng.uniform(1.8, 3.2)
        row = np.floor(yy / h)
        x = xx + (row % 2) * w / 2
        jitter = rng.normal(0, 14, (64, 64, 3)).astype(np.float32)
        tex = c1 + jitter[row.astype(int) % 64, np.floor(x / w).astype(int) % 64]
        tex[(yy % h < 1) | (x % w < 1)] = c2
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 14) * scale
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 6.3))
        if rng.random() < 0.5:
            t = (t > rng.uniform(0.3, 0.7)).astype(np.float32)
        tex = c1 + (c2 - c1) * t[..., None]
    elif kind == "tiles":
        cell = rng.uniform(6, 16) * scale
        checker = (np.floor(xx / cell) + np.floor(yy / cell)) % 2
        tex = c1 + (c2 - c1) * (checker * rng.uniform(0.3, 1))[..., None]
        tex[(xx % cell < 1) | (yy % cell < 1)] = c1 * 0.5
    elif kind == "grain":
        t = 0.4 * _noise(rng, size, rng.uniform(4, 8)) + 0.6 * _noise(rng, size, size / rng.uniform(1.5, 2.5))
        tex = c1 + (c2 - c1) * t[..., None]
    else:  # "noise": plaster, clouds
        t = 0.55 * _noise(rng, size, rng.uniform(3, 8)) + 0.3 * _noise(rng, size, rng.uniform(10, 24) * scale) \
            + 0.15 * _noise(rng, size, size / rng.uniform(2, 3))
        tex = c1 + (c2 - c1) * t[..., None]
    light = 1 + rng.uniform(-0.3, 0.3) * (yy / size - 0.5) + rng.uniform(-0.2, 0.2) * (xx / size - 0.5)
    grain = (rng.random((size, size), dtype=np.float32) - 0.5) * rng.uniform(0, 16)
    return tex * light[..., None] + grain[..., None]


def _distractors(rng, draw: ImageDraw.ImageDraw, size: int, scale: float) -> None:
    """Dots, short thin lines and blobs under 8 px: detail no task asks about."""
    for _ in range(int(rng.integers(20, 60) * scale * scale)):
        kind, (x, y) = rng.integers(3), rng.uniform(0, size, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if kind == 0:
            r = rng.uniform(0.5, 1.5)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif kind == 1:
            length, a = rng.uniform(3, 10) * scale, rng.uniform(0, 2 * np.pi)
            draw.line([x, y, x + length * math.cos(a), y + length * math.sin(a)], fill=colour, width=1)
        else:
            rx, ry = rng.uniform(1, 3.5, 2) * scale
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)


# -- things -------------------------------------------------------------------------------------------
@dataclass
class _Shape:
    """A thing's class, geometry around the origin (before placement) and colour."""
    cls: str
    extent: float
    angle: float
    pose: tuple = ()
    colour: np.ndarray | None = None


def _pick_shapes(rng, scale: float) -> list[_Shape]:
    """The hero (36-48 px) first, then 1-5 smaller things whose full area stays clearly below the hero's."""
    hero = _shape(rng, str(rng.choice(THINGS)), rng.uniform(36, 48) * scale)
    hero_area = _area(hero)
    shapes = [hero]
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(8):
            cls = str(rng.choice(THINGS))
            shape = _shape(rng, cls, rng.uniform(20 if cls == "figure" else 14, 32) * scale)
            if _area(shape) * 1.5 <= hero_area:
                shapes.append(shape)
                break
    if len(shapes) == 1:  # never a lone hero: the smallest disc fits under any hero
        shapes.append(_shape(rng, "disc", 14 * scale))
    return shapes


def _shape(rng, cls: str, extent: float) -> _Shape:
    pose = ()
    if cls == "figure":  # arm angles from straight down (up to raised), leg spread
        pose = (rng.uniform(0.35, 2.6), rng.uniform(0.35, 2.6), rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.6))
    angle = rng.uniform(-0.3, 0.3) if cls == "figure" else rng.uniform(0, 2 * np.pi)
    return _Shape(cls, extent, angle, pose, _colour(rng, (0.55, 1.0), (0.45, 1.0)))


def _area(shape: _Shape) -> float:
    canvas = Image.new("L", (int(shape.extent * 2) + 8,) * 2)
    _draw(ImageDraw.Draw(canvas), shape, (canvas.width / 2, canvas.height / 2))
    return float(np.count_nonzero(np.asarray(canvas)))


def _place(rng, shape: _Shape, size: int) -> Thing:
    reach = shape.extent * (0.75 if shape.cls in ("square", "triangle") else 0.55)  # half-diagonal, with room
    lo, hi = reach + 1, size - 2 - reach
    centre = rng.uniform(lo, max(lo, hi), 2)
    canvas = Image.new("L", (size, size))
    keypoints = _draw(ImageDraw.Draw(canvas), shape, centre)
    return Thing(shape.cls, np.array(canvas), shape.colour, keypoints)


def _draw(draw: ImageDraw.ImageDraw, shape: _Shape, centre) -> list | None:
    """Draw fill 1 / outline 2; returns [[x, y, 2]] * 5 integer keypoints for figures."""
    cx, cy = centre
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)

    def at(x, y):
        return cx + x * cos - y * sin, cy + x * sin + y * cos

    e = shape.extent
    if shape.cls == "disc":
        draw.ellipse([cx - e / 2, cy - e / 2, cx + e / 2, cy + e / 2], fill=1, outline=2)
        return None
    if shape.cls in ("square", "triangle"):
        if shape.cls == "square":
            corners = [(-e / 2, -e / 2), (e / 2, -e / 2), (e / 2, e / 2), (-e / 2, e / 2)]
        else:  # equilateral, side e
            r = e / math.sqrt(3)
            corners = [(r * math.sin(a), -r * math.cos(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        draw.polygon([at(x, y) for x, y in corners], fill=1, outline=2)
        return None
    # figure: e is its height; keypoints are rounded first so the drawn limbs end exactly on them
    left_arm, right_arm, left_leg, right_leg = shape.pose
    width, head_r = max(2, round(e / 9)), 0.13 * e
    neck, hip = -e / 2 + 2 * head_r, 0.1 * e
    shoulder, arm, leg = neck + 0.07 * e, 0.32 * e, e / 2 - hip - width / 2
    points = {
        "head": at(0, -e / 2 + head_r),
        "left_hand": at(arm * math.sin(left_arm), shoulder + arm * math.cos(left_arm)),
        "right_hand": at(-arm * math.sin(right_arm), shoulder + arm * math.cos(right_arm)),
        "left_foot": at(leg * math.sin(left_leg), hip + leg * math.cos(left_leg)),
        "right_foot": at(-leg * math.sin(right_leg), hip + leg * math.cos(right_leg)),
    }
    points = {k: (round(x), round(y)) for k, (x, y) in points.items()}
    joints = {"neck": at(0, neck), "shoulder": at(0, shoulder), "hip": at(0, hip)}
    limbs = [(joints["neck"], joints["hip"]), (joints["shoulder"], points["left_hand"]),
             (joints["shoulder"], points["right_hand"]), (joints["hip"], points["left_foot"]),
             (joints["hip"], points["right_foot"])]
    for a, b in limbs:
        draw.line([a, b], fill=1, width=width)
    for x, y in [*joints.values(), *list(points.values())[1:]]:  # round caps
        draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=1)
    hx, hy = points["head"]
    draw.ellipse([hx - head_r, hy - head_r, hx + head_r, hy + head_r], fill=1)
    return [[x, y, 2] for x, y in (points[k] for k in KEYPOINTS)]


def _paint(image: np.ndarray, thing: Thing, yy: np.ndarray, xx: np.ndarray, rng) -> None:
    """Fill with a soft light gradient, outline darker; later things overwrite earlier ones."""
    fill = thing.paint == 1
    ys, xs = yy[fill], xx[fill]
    a = rng.uniform(0, 2 * np.pi)
    proj = (xs - xs.mean()) * math.cos(a) + (ys - ys.mean()) * math.sin(a)
    shade = 1 + 0.3 * proj / max(1.0, float(np.abs(proj).max()))
    image[fill] = np.clip(thing.colour * shade[:, None], 0, 255).astype(np.uint8)
    image[thing.paint == 2] = (thing.colour * 0.55).astype(np.uint8)
