"""The example plugin of docs/plugins/tutorial.md installs like any third-party package and passes its
own tests, and the installed entry point makes `icm tasks` list its task."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "plugins" / "example" / "icm-plugin-example"


def test_example_plugin_installs_and_passes_its_own_tests(tmp_path):
    # pip builds in the source tree; build from a copy so the docs folder stays clean
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
                          "--disable-pip-version-check", "-q", "--target", str(site), str(source)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (site / "icm_example" / "adapter.py").is_file()

    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ICM_LOAD_PLUGINS", None)
    env.pop("ICM_STRICT_PLUGINS", None)
    # cwd is neither the source nor the docs folder: `icm_example` can only come from the install
    where = subprocess.run([sys.executable, "-c", "import icm_example; print(icm_example.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and "skipped" not in tests.stdout, tests.stdout[-2000:]

    # only this entry point, strictly: a failure to load it would be fatal instead of a warning
    listing = subprocess.run([sys.executable, "-m", "icm", "tasks", "--json"], capture_output=True, text=True,
                             env={**env, "ICM_LOAD_PLUGINS": "example", "ICM_STRICT_PLUGINS": "1"}, cwd=tmp_path,
                             timeout=120)
    assert listing.returncode == 0, listing.stderr
    edges = next((t for t in json.loads(listing.stdout) if t["name"] == "edges"), None)
    assert edges is not None, listing.stdout
    assert edges["plugin"] == "example" and edges["metrics"] == ["edge_f1", "edge_iou"]
