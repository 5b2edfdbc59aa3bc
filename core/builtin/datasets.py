"""Registers the built-in ``shapes`` dataset and the ``icm data`` commands that write datasets."""

from __future__ import annotations

import os
from pathlib import Path

import click

from icm import hookimpl


def data_home() -> Path:
    """Where datasets are generated on first use: ``$ICM_DATA``, else ``~/.cache/icm/data``."""
    return Path(os.environ.get("ICM_DATA") or "~/.cache/icm/data").expanduser()


def shapes(split: str = "val", root: str | Path | None = None):
    """The default ``shapes`` dataset (800 train / 100 val, 128 px), generated once into the cache."""
    return _shapes(split, root, "shapes", val=100)


def shapes_1k(split: str = "val", root: str | Path | None = None):
    """``shapes`` with 1,000 val images, of which the first 100 are ``shapes`` val, and the same train.

    For metrics that 100 images make coarse: classification top-1 moves in steps of 1 % there,
    which turns a flat accuracy-rate curve's BD-rate into noise (docs/icm_codec.md).
    """
    return _shapes(split, root, "shapes-1k", val=1000)


def shapes_holdout(split: str = "val", root: str | Path | None = None):
    """500 ``shapes`` val images from another seed (1), none of them in ``shapes`` or ``shapes-1k``,
    and no train split: for choosing among trained runs without choosing on the images that report
    the results (docs/icm_codec.md, "Link 13 chosen on a held-out set")."""
    return _shapes(split, root, "shapes-holdout", val=500, train=0, seed=1)


def kodak(split: str = "val", root: str | Path | None = None):
    """The 24 Kodak photographs in ``$ICM_DATA/kodak``, fetched there on first use; each image is
    checked against the size and pixel hash icm ships (icm.datasets.kodak)."""
    from icm.datasets import kodak as kodak_set
    from icm.errors import UserError

    if split != "val":
        raise UserError(f"kodak has only a 'val' split, not {split!r}")
    root = Path(root) if root else data_home() / "kodak"
    kodak_set.fetch(root)
    return kodak_set.load(root)


def _shapes(split, root, name: str, val: int, train: int = 800, seed: int = 0):
    from icm.datasets import Dataset
    from icm.datasets.shapes import generate

    root = Path(root) if root else data_home() / name
    generate(root, train=train, val=val, seed=seed)  # images are seeded per (seed, split, index): val grows unchanged
    return Dataset.from_folder(root, split)


@hookimpl
def icm_register_datasets(register):
    register("shapes", shapes, description="synthetic detection/segmentation/panoptic/keypoint/classification "
                                           "benchmark; generated on first use into $ICM_DATA/shapes")
    register("shapes-1k", shapes_1k, description="shapes with 1,000 val images (the first 100 are shapes val) "
                                                 "for finer metrics; generated on first use into $ICM_DATA/shapes-1k")
    register("shapes-holdout", shapes_holdout, description="500 more shapes val images from another seed, in no "
                                                           "other shapes set, for choosing among trained runs")
    register("kodak", kodak, description="the 24 Kodak photographs (768x512, no labels: --label-free or --tasks none); "
                                         "downloaded on first use into $ICM_DATA/kodak and checked pixel by pixel")


@hookimpl
def icm_register_commands(cli):
    cli.add_command(data)


@click.group()
def data():
    """Write datasets to disk."""


@data.command("kodak")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for the 24 PNGs (default: $ICM_DATA/kodak, where `--dataset kodak` reads them).")
def kodak_command(out_dir):
    """Download the Kodak set and check each image's size and pixels against icm's list."""
    from icm.datasets import kodak as kodak_set

    root = Path(out_dir) if out_dir else data_home() / "kodak"
    fetched = kodak_set.fetch(root)
    kodak_set.verify(root)
    click.echo(f"{root}: {len(kodak_set.IMAGES)} Kodak images, each checked ({len(fetched)} downloaded now)")


@data.command("shapes")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--train", default=800, show_default=True, type=click.IntRange(min=0), help="Training images.")
@click.option("--val", default=100, show_default=True, type=click.IntRange(min=0), help="Validation images.")
@click.option("--size", default=128, show_default=True, type=click.IntRange(32, 4096), help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Same seed, same bytes.")
def shapes_command(out_dir, train, val, size, seed):
    """Generate the synthetic shapes benchmark into OUT (skipped if already there)."""
    import json

    from icm.datasets.shapes import VERSION, generate, is_current

    params = {"train": train, "val": val, "size": size, "seed": seed, "version": VERSION}
    fresh = not is_current(out_dir, params)
    index_path = generate(out_dir, train=train, val=val, size=size, seed=seed)
    index = json.loads(index_path.read_text())
    for split, paths in index["splits"].items():
        files = ", ".join(f"{k} {paths[k]}" for k in paths if k not in ("images_dir", "num_images"))
        click.echo(f"{split}: {paths['num_images']} images in {Path(out_dir) / paths['images_dir']}; {files}")
    click.echo(f"{index_path}  {'written' if fresh else 'already up to date'}")
