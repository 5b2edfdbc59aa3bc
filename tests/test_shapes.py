import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icm.datasets import Dataset, load_dataset
from icm.datasets.shapes import CATEGORY_IDS, KEYPOINTS, SEMANTIC, THINGS, generate
from icm.errors import UserError
from conftest import run_icm

SMALL = {"train": 3, "val": 7, "size": 96, "seed": 0}


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate(out, **SMALL, progress=False)
    return out


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _splits(root):
    index = json.loads((root / "dataset.json").read_text())
    return [(split, {k: root / v for k, v in paths.items() if k != "num_images"}) for split, paths in index["splits"].items()]


def _masks(coco, image_id):
    return [(a, coco.annToMask(a).astype(bool)) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]


def test_same_seed_gives_identical_bytes_and_reruns_are_no_ops(shapes_dir, tmp_path):
    generate(tmp_path / "a", **SMALL, progress=False)
    assert _hashes(tmp_path / "a") == _hashes(shapes_dir)
    index = tmp_path / "a" / "dataset.json"
    before = index.stat().st_mtime_ns
    generate(tmp_path / "a", **SMALL, progress=False)
    assert index.stat().st_mtime_ns == before
    generate(tmp_path / "b", **{**SMALL, "seed": 1}, progress=False)
    assert _hashes(tmp_path / "b")["val/images/000000.png"] != _hashes(shapes_dir)["val/images/000000.png"]


def test_regenerating_with_fewer_images_removes_the_extra_ones(tmp_path):
    generate(tmp_path, train=1, val=3, size=64, progress=False)
    generate(tmp_path, train=1, val=1, size=64, progress=False)
    assert sorted(p.name for p in (tmp_path / "val" / "images").iterdir()) == ["000000.png"]
    assert len(load_dataset(tmp_path)) == 1


def test_instances_masks_match_bbox_area_and_semantic_map(shapes_dir):
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO

    for split, paths in _splits(shapes_dir):
        coco = COCO(str(paths["instances"]))
        assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
        assert len(coco.getImgIds()) == SMALL[split]
        for image_id in coco.getImgIds():
            semantic = np.asarray(Image.open(paths["semantic_dir"] / f"{image_id:06d}.png"))
            assert semantic.ndim == 2 and semantic.dtype == np.uint8
            things = np.zeros_like(semantic, bool)
            anns = _masks(coco, image_id)
            assert 1 <= len(anns) <= 6
            for ann, mask in anns:
                assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
                assert mask.sum() == ann["area"] > 0
                assert list(mask_util.toBbox(ann["segmentation"])) == ann["bbox"]
                ys, xs = np.nonzero(mask)
                x, y, w, h = ann["bbox"]
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
                name = coco.loadCats(ann["category_id"])[0]["name"]
                assert (semantic[mask] == SEMANTIC.index(name)).all()
                assert not (things & mask).any(), "visible masks must not overlap"
                things |= mask
            assert set(np.unique(semantic[~things])) <= {0, 1}  # everything else is wall or ground


def test_keypoints_load_with_xtcocotools_and_lie_on_their_figure(shapes_dir):
    from pycocotools import mask as mask_util  # xtcocotools' own decode breaks on numpy 2 (NPY_OWNDATA)
    from xtcocotools.coco import COCO

    figures = 0
    for split, paths in _splits(shapes_dir):
        coco = COCO(str(paths["keypoints"]))
        (category,) = coco.loadCats(coco.getCatIds())
        assert category["id"] == CATEGORY_IDS["figure"] and category["keypoints"] == list(KEYPOINTS)
        assert all(1 <= i <= len(KEYPOINTS) for pair in category["skeleton"] for i in pair)
        for ann in coco.loadAnns(coco.getAnnIds()):
            figures += 1
            kps = np.array(ann["keypoints"]).reshape(-1, 3)
            assert ann["num_keypoints"] == 5 and set(kps[:, 2]) <= {1, 2}
            x, y, w, h = ann["bbox"]
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            for kx, ky, v in kps:
                if v == 2:  # visible: on the figure's own visible pixels, so inside its box
                    assert x <= kx < x + w and y <= ky < y + h and mask[ky, kx]
                else:  # hidden: covered by a thing drawn later
                    assert not mask[ky, kx]
    assert figures > 0


def test_panoptic_ids_match_segments_and_instances(shapes_dir):
    from pycocotools.coco import COCO

    for split, paths in _splits(shapes_dir):
        panoptic = json.loads(paths["panoptic_json"].read_text())
        cats = {c["id"]: c for c in panoptic["categories"]}
        assert {i: c["isthing"] for i, c in cats.items()} == {1: 1, 2: 1, 3: 1, 4: 1, 5: 0, 6: 0}
        assert [cats[5]["name"], cats[6]["name"]] == ["wall", "ground"]
        coco = COCO(str(paths["instances"]))
        for entry in panoptic["annotations"]:
            rgb = np.asarray(Image.open(paths["panoptic_dir"] / entry["file_name"])).astype(np.int64)
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 ** 2 * rgb[..., 2]
            segments = {s["id"]: s for s in entry["segments_info"]}
            assert set(np.unique(ids)) == set(segments)
            for sid, seg in segments.items():
                assert (ids == sid).sum() == seg["area"] and seg["category_id"] in cats
            for ann, mask in _masks(coco, entry["image_id"]):
                (sid,) = np.unique(ids[mask])
                assert segments[sid]["category_id"] == ann["category_id"] and segments[sid]["area"] == ann["area"]
                assert segments[sid]["bbox"] == ann["bbox"]


def test_classification_label_is_the_largest_thing(shapes_dir):
    from pycocotools.coco import COCO

    for split, paths in _splits(shapes_dir):
        coco = COCO(str(paths["instances"]))
        lines = paths["classification"].read_text().splitlines()
        assert len(lines) == SMALL[split]
        for line in lines:
            rel, label = line.split()
            assert (shapes_dir / rel).is_file()
            anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[int(Path(rel).stem)])), key=lambda a: -a["area"])
            assert THINGS[int(label)] == coco.loadCats(anns[0]["category_id"])[0]["name"]
            assert len(anns) == 1 or anns[0]["area"] > 1.2 * anns[1]["area"]  # clearly the largest


def test_dataset_from_folder_and_config(shapes_dir, tmp_path):
    ds = load_dataset(shapes_dir, split="val")
    assert isinstance(ds, Dataset) and ds.name == "shapes" and len(ds) == SMALL["val"]
    assert ds.meta["semantic_classes"] == list(SEMANTIC) and ds.meta["keypoint_names"] == list(KEYPOINTS)
    assert set(ds.annotations) == {"instances", "keypoints", "panoptic_json", "panoptic_dir", "semantic_dir", "classification"}
    image = ds.images[0]
    assert Path(image["file_name"]).is_absolute() and Path(image["file_name"]).is_file()
    assert (image["width"], image["height"]) == (96, 96) and ds.semantic_path(image).is_file()

    config = tmp_path / "coco-like.json"
    config.write_text(json.dumps({"root": str(shapes_dir), "images_dir": "val/images", "semantic_dir": "val/semantic",
                                  "classification": "annotations/classification_val.txt"}))
    from_config = load_dataset(config, split="val")
    assert [i["file_name"] for i in from_config.images] == [i["file_name"] for i in ds.images]
    assert from_config.semantic_path(from_config.images[0]) == ds.semantic_path(image)
    config.write_text(json.dumps({"images_dir": str(shapes_dir / "train" / "images")}))
    assert len(load_dataset(str(config))) == SMALL["train"]  # listed from the folder


def test_load_dataset_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'no-such-set'"):
        load_dataset("no-such-set")
    with pytest.raises(UserError, match="no such dataset folder"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(UserError, match="no dataset.json"):
        load_dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    config = tmp_path / "empty.json"
    config.write_text(json.dumps({"images_dir": "empty"}))
    with pytest.raises(UserError, match="no images"):
        load_dataset(config)
    config.write_text(json.dumps({"images_dir": "empty", "instance": "typo.json"}))
    with pytest.raises(UserError, match="unknown key"):
        load_dataset(config)


def test_shapes_is_a_registered_builtin_dataset():
    from icm.plugins import Plugins

    assert Plugins().load().datasets.entry("shapes").plugin == "icm.builtin.datasets"


def test_cli_writes_the_dataset(tmp_path):
    out = tmp_path / "shapes"
    proc = run_icm("data", "shapes", "--out", out, "--train", 2, "--val", 2, "--size", 64)
    assert proc.returncode == 0, proc.stderr
    assert (out / "dataset.json").is_file() and "written" in proc.stdout
    assert json.loads((out / "dataset.json").read_text())["params"]["size"] == 64
    again = run_icm("data", "shapes", "--out", out, "--train", 2, "--val", 2, "--size", 64)
    assert again.returncode == 0 and "already up to date" in again.stdout


def test_shapes_1k_extends_val_without_changing_it(tmp_path):
    """`shapes-1k` is `shapes` with more val images: the first ones must be byte-identical."""
    from icm.plugins import Plugins

    assert Plugins().load().datasets.entry("shapes-1k").plugin == "icm.builtin.datasets"
    small, large = tmp_path / "small", tmp_path / "large"
    generate(small, train=1, val=2, size=64, progress=False)
    generate(large, train=1, val=4, size=64, progress=False)
    for name in ("train/images/000000.png", "val/images/000000.png", "val/images/000001.png", "val/semantic/000001.png"):
        assert (small / name).read_bytes() == (large / name).read_bytes()
    assert len(load_dataset(large, split="val")) == 4


def test_shapes_holdout_shares_no_image_with_shapes(tmp_path):
    """`shapes-holdout` is for choosing among trained runs: none of its images may be one that
    reports results (shapes val, the first 100 of shapes-1k val), and it has no train split."""
    from icm.builtin.datasets import shapes_holdout
    from icm.plugins import Plugins

    assert Plugins().load().datasets.entry("shapes-holdout").plugin == "icm.builtin.datasets"
    held = shapes_holdout("val", root=tmp_path / "held")
    assert len(held) == 500
    with pytest.raises(UserError, match="train/images does not exist"):
        shapes_holdout("train", root=tmp_path / "held")
    digest = lambda ds: {hashlib.sha256(Path(s["file_name"]).read_bytes()).hexdigest() for s in ds.images}
    assert len(digest(held)) == 500
    assert not digest(held) & digest(load_dataset("shapes", split="val"))
