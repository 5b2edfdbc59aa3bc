"""pytest plugin for adapter and codec authors (entry point ``pytest11``: loaded automatically).

Fixtures:

- ``icm_plugins``: a fresh plugin set (built-ins and installed plugins) made process-wide for the test.
- ``icm_register_plugin(plugin, name)``: register a plugin object (a module or a class instance with
  ``@icm.hookimpl`` methods) into that set, as if it were installed; returns the plugin set.
- ``icm_cli(*args)``: run the ``icm`` command line in-process against that set; returns a result with
  ``exit_code``, ``stdout`` and ``stderr``.
- ``icm_image``: a small deterministic natural-looking RGB test image (HxWx3 uint8).
- ``icm_shapes_val``: the built-in ``shapes`` benchmark's val split (generated on first use, 8 s),
  session-scoped, with ``.images`` (records) and ``.pixels(n)`` (the first n images, NxHxWx3 uint8).
- ``icm_batch(images, records)``: uint8 images (NxHxWx3 array or list) and their records ->
  :class:`icm.tasks.Batch` in the adapter convention (float NCHW in [0, 1]); also ``icm.testing.batch_of``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def icm_plugins():
    from icm.plugins import Plugins, set_plugins

    plugins = Plugins().load()
    previous = set_plugins(plugins)
    yield plugins
    set_plugins(previous)


@pytest.fixture
def icm_register_plugin(icm_plugins):
    def register(plugin, name: str = "test-plugin", version: str = "0"):
        icm_plugins.register_plugin(plugin, name=name, version=version)
        return icm_plugins

    return register


@pytest.fixture
def icm_cli(icm_plugins, capsys, monkeypatch):
    from icm.cli import main

    # one process: `icm evaluate`'s worker processes would not see the fixture's plugin set
    monkeypatch.setenv("ICM_WORKERS", "1")

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


def batch_of(images, records):
    """uint8 HxWx3 images + dataset records -> a Batch of float (N,3,H,W) pixels in [0, 1]."""
    import torch

    from icm.tasks import Batch

    x = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).permute(0, 3, 1, 2).float().div(255)
    return Batch(x, list(records))


@pytest.fixture
def icm_batch():
    return batch_of


class ShapesVal:
    """The shapes val split plus its pixels, loaded once per session."""

    def __init__(self):
        from icm.datasets import load_dataset

        self.dataset = load_dataset("shapes", "val")
        self.images = self.dataset.images
        self._pixels: list[np.ndarray] = []  # the first len() images, read once

    def pixels(self, n: int) -> np.ndarray:
        from icm.images import load_image

        self._pixels += [load_image(r["file_name"]) for r in self.images[len(self._pixels):n]]
        return np.stack(self._pixels[:n])

    def features(self, n: int, codec: str = "icm-omni-features", **options):
        """A Batch of the split tensors of the first ``n`` images, as ``icm evaluate`` hands them to a
        feature reader: ``images`` the (n, C, h, w) tensors of ``codec`` (default: icm-omni-features with
        seeded weights), ``size`` the images' size."""
        from icm.codecs import open_codec
        from icm.tasks import Batch

        feature_codec = open_codec(codec, **(options or {"weights": "random"}))
        pixels = self.pixels(n)
        return Batch(feature_codec.image_features(list(pixels)), self.images[:n], size=tuple(pixels.shape[1:3]))


@pytest.fixture(scope="session")
def icm_shapes_val():
    return ShapesVal()


@pytest.fixture
def icm_image():
    """A 96x128 image with smooth shading, edges and texture, the same on every run."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    base = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1).astype(np.float64)
    base[30:70, 40:90] = [200, 60, 40]
    base += rng.normal(0, 12, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture
def icm_assert_parity():
    """``check(adapters, images)``: assert that each adapter's accuracy on the uncompressed images
    equals its library's own test loop (``TaskAdapter.library_test``), as ``icm evaluate
    --check-parity`` reports it; returns the rows. For adapter authors: run it on your model and a
    few images of a dataset with labels."""

    def check(adapters: dict, images: list[dict], batch_size: int = 8) -> list[dict]:
        from icm.evaluation.parity import check as parity

        rows = parity(adapters, images, batch_size)
        assert rows and all(r["library_loop"] is not None for r in rows), rows
        bad = [r for r in rows if not r["agree"]]
        assert not bad, "\n".join(f"{r['task']} {r['metric']}: icm {r['icm']}, library loop {r['library_loop']}, "
                                  f"library metric {r['library_metric']}" for r in bad)
        return rows

    return check
