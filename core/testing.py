"""pytest plugin for adapter and codec authors (entry point ``pytest11``: loaded automatically).

Fixtures:

- ``icm_plugins``: a fresh plugin set (built-ins and installed plugins) made process-wide for the test.
- ``icm_register_plugin(plugin, name)``: register a plugin object (a module or a class instance with
  ``@icm.hookimpl`` methods) into that set, as if it were installed; returns the plugin set.
- ``icm_cli(*args)``: run the ``icm`` command line in-process against that set; returns a result with
  ``exit_code``, ``stdout`` and ``stderr``.
- ``icm_image``: a small deterministic natural-looking RGB test image (HxWx3 uint8).
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
def icm_cli(icm_plugins, capsys):
    from icm.cli import main

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


@pytest.fixture
def icm_image():
    """A 96x128 image with smooth shading, edges and texture, the same on every run."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    base = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1).astype(np.float64)
    base[30:70, 40:90] = [200, 60, 40]
    base += rng.normal(0, 12, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)
