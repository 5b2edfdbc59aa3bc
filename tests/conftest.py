import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from icm.images import save_image

REPO = Path(__file__).resolve().parents[1]
ICM = [sys.executable, "-m", "icm"]


@pytest.fixture(scope="session")
def natural_images():
    """Small crops of scikit-image's natural photographs, with an odd size to exercise padding."""
    from skimage import data

    crops = [data.astronaut()[:161, 60:251], data.coffee()[100:260, 200:393], data.chelsea()[:150, 100:290]]
    return [np.ascontiguousarray(c) for c in crops]


@pytest.fixture
def image_file(tmp_path, natural_images):
    path = tmp_path / "astronaut.png"
    save_image(natural_images[0], path)
    return path


def run_icm(*args, env=None, cwd=None):
    """Run the real CLI in a fresh process; returns CompletedProcess with text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*ICM, *map(str, args)], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600)


def assert_user_error(proc, fragment):
    """Exit 2, one line on stderr containing ``fragment``, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "warning" not in ln.lower()]
    assert len(lines) == 1, proc.stderr
    assert fragment.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A 6-image val split of the shapes benchmark at 64 px."""
    from icm.datasets.shapes import generate

    root = tmp_path_factory.mktemp("shapes")
    generate(root, train=2, val=6, size=64)
    return root


@pytest.fixture
def toy(icm_register_plugin):
    """The toy mean-colour tasks (tests/toy_task.py) registered in-process."""
    import toy_task

    return icm_register_plugin(toy_task, name="toy")
