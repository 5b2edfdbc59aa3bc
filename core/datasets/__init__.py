"""Datasets as icm sees them: a list of images plus paths to annotation files in standard formats.

A :class:`Dataset` only describes; task adapters read the annotations with their own loaders
(pycocotools, their task library's datasets). Annotation keys:

- ``instances``: COCO instances JSON; ``keypoints``: COCO keypoints JSON
- ``panoptic_json`` and ``panoptic_dir``: COCO panoptic JSON and its folder of RGB id PNGs
- ``semantic_dir``: single-channel label PNGs, at the image's path relative to ``images_dir`` with
  ``meta["image_suffix"]`` (default: the extension) replaced by ``meta["semantic_suffix"]`` (default ``.png``)
- ``classification``: lines ``relative/path.png label_index`` relative to ``root`` (OpenMMLab's CustomDataset format)

:func:`load_dataset` takes, in this order:

1. a registered dataset name (``shapes``; see ``icm plugins``); write ``./shapes`` for a folder of that name,
2. a folder holding a ``dataset.json`` index, as written by ``icm data shapes --out DIR``, or else a
   bare folder of images (no labels: for ``--label-free`` or ``--tasks none``),
3. a dataset config, JSON (YAML too when PyYAML is installed), for COCO, Cityscapes or ImageNet folders::

       {"name": "coco", "images_dir": "val2017",
        "instances": "annotations/instances_val2017.json",
        "panoptic_json": "annotations/panoptic_val2017.json", "panoptic_dir": "annotations/panoptic_val2017",
        "meta": {"thing_classes": ["person", "..."]}}

   Relative paths resolve against ``root`` (default: the config's folder). ``"splits": {"val": {...}}``
   entries override the top-level keys for that split. Images come from the instances, keypoints or
   panoptic JSON when one is given, else from the classification list, else from every image under
   ``images_dir`` (recursively, sorted; ``meta["image_suffix"]`` narrows it). Cityscapes, e.g.:
   ``{"images_dir": "leftImg8bit/val", "semantic_dir": "gtFine/val", "meta": {"image_suffix":
   "_leftImg8bit.png", "semantic_suffix": "_gtFine_labelTrainIds.png"}}``; ImageNet val:
   ``{"root": "val", "images_dir": ".", "classification": "/data/imagenet/meta/val.txt"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from icm.errors import UserError

ANNOTATION_KEYS = ("instances", "keypoints", "panoptic_json", "panoptic_dir", "semantic_dir", "classification")
CONFIG_KEYS = {"name", "root", "images_dir", "meta", "splits", "num_images", *ANNOTATION_KEYS}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class Dataset:
    name: str
    root: Path
    split: str
    images: list[dict]  # {"id": int, "file_name": absolute path, "width": int, "height": int}
    annotations: dict[str, Path] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # class names, keypoint names, skeleton, sigmas, palette...
    images_dir: Path | None = None

    def __post_init__(self):
        self.root = Path(self.root)
        self.annotations = {k: Path(v) for k, v in self.annotations.items()}
        if not self.images:
            raise UserError(f"dataset {self.name!r} (split {self.split!r}) has no images")

    def __len__(self) -> int:
        return len(self.images)

    def semantic_path(self, image: dict) -> Path:
        """The label PNG of ``image`` under ``annotations["semantic_dir"]``."""
        path = Path(image["file_name"])
        rel = path.relative_to(self.images_dir) if self.images_dir and path.is_relative_to(self.images_dir) \
            else Path(path.name)
        suffix = self.meta.get("image_suffix") or rel.suffix
        name = rel.name[: -len(suffix)] if rel.name.endswith(suffix) else rel.stem
        return self.annotations["semantic_dir"] / rel.parent / (name + self.meta.get("semantic_suffix", ".png"))

    @classmethod
    def from_folder(cls, root: str | Path, split: str = "val") -> "Dataset":
        """A folder with a ``dataset.json`` index (name, meta, and per split the relative paths)."""
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise UserError(f"{root}: no such dataset folder")
        index_path = root / "dataset.json"
        if not index_path.is_file():
            if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir() if p.is_file()):
                # a bare folder of images (a local copy of kodak, a user's photos): no labels, images only
                return _from_spec(root.name, root, split, {"images_dir": "."}, {}, root)
            raise UserError(f"{root}: not a dataset folder (no dataset.json, no images); "
                            f"write one with `icm data shapes --out {root}`")
        index = _read_json(index_path)
        splits = index.get("splits") or {}
        if split not in splits:
            raise UserError(f"{root}: no split {split!r} (has: {', '.join(splits) or 'none'})")
        return _from_spec(index.get("name", root.name), root, split, splits[split], index.get("meta", {}), index_path)

    @classmethod
    def from_config(cls, path: str | Path, split: str = "val") -> "Dataset":
        """A dataset config (see the module docstring)."""
        path = Path(path).expanduser()
        if path.name == "dataset.json":
            return cls.from_folder(path.parent, split)
        config = _read_config(path)
        splits = config.pop("splits", None)
        if splits is not None:
            if split not in splits:
                raise UserError(f"{path}: no split {split!r} (has: {', '.join(splits) or 'none'})")
            config.update(splits[split])
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(CONFIG_KEYS))})")
        root = (path.parent / config.get("root", ".")).resolve()
        return _from_spec(config.get("name", path.stem), root, split, config, config.get("meta", {}), path)


def load_dataset(name_or_path: str | Path, split: str = "val") -> Dataset:
    """A registered dataset by name, or a dataset folder or config by path."""
    text = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith((".json", ".yaml", ".yml"))
    if not is_path:
        from icm.plugins import get_plugins

        registry = get_plugins().datasets
        if text in registry:
            dataset = registry.get(text)(split=split)
            if not isinstance(dataset, Dataset):
                raise TypeError(f"dataset factory {text!r} returned {type(dataset).__name__}, not icm.datasets.Dataset")
            return dataset
    path = Path(text).expanduser()
    if path.is_dir():
        return Dataset.from_folder(path, split)
    if path.is_file():
        return Dataset.from_config(path, split)
    if is_path:
        raise UserError(f"{text}: no such dataset folder or config file")
    known = ", ".join(registry.names()) or "none registered"
    raise UserError(f"unknown dataset {text!r} and no folder or config of that name (registered: {known})")


def _from_spec(name: str, root: Path, split: str, spec: dict, meta: dict, source: Path) -> Dataset:
    if not spec.get("images_dir"):
        raise UserError(f"{source}: split {split!r} has no 'images_dir'")
    images_dir = (root / spec["images_dir"]).resolve()
    if not images_dir.is_dir():
        raise UserError(f"{source}: images_dir {images_dir} does not exist")
    annotations = {k: (root / spec[k]).resolve() for k in ANNOTATION_KEYS if spec.get(k)}
    missing = [f"{k} ({p})" for k, p in annotations.items() if not p.exists()]
    if missing:
        raise UserError(f"{source}: missing {', '.join(missing)}")
    images = _list_images(root, images_dir, annotations, meta)
    return Dataset(name, root, split, images, annotations, dict(meta), images_dir)


def _list_images(root: Path, images_dir: Path, annotations: dict[str, Path], meta: dict) -> list[dict]:
    for key in ("instances", "keypoints", "panoptic_json"):
        if key in annotations:
            return [{"id": im["id"], "file_name": str(images_dir / im["file_name"]), "width": im["width"],
                     "height": im["height"]} for im in _read_json(annotations[key]).get("images", [])]
    if "classification" in annotations:
        lines = annotations["classification"].read_text().splitlines()
        files = [root / line.rsplit(maxsplit=1)[0] for line in lines if line.strip()]
    else:
        suffix = meta.get("image_suffix")
        files = sorted(p for p in images_dir.rglob("*") if p.is_file()
                       and (p.name.endswith(suffix) if suffix else p.suffix.lower() in IMAGE_EXTENSIONS))
    return [_image_record(i, f) for i, f in enumerate(files)]


def _image_record(image_id: int, path: Path) -> dict:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"{path}: cannot read image ({exc})") from None
    return {"id": image_id, "file_name": str(path), "width": width, "height": height}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such dataset config")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the config as JSON") from None
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    else:
        config = _read_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path}: a dataset config must be a mapping of keys to paths")
    return config
