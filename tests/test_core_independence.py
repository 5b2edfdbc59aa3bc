"""The core knows no plugin: it imports no model library and names none of the plugins' packages.
Task libraries (OpenMMLab) come in only through plugins; icm-openmmlab is one of their dependencies."""

import re
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"
LIBRARIES = ("mmdet", "mmseg", "mmpose", "mmpretrain", "mmengine", "mmcv", "icm_openmmlab")


def test_no_core_source_names_a_model_library_or_a_plugin_package():
    pattern = re.compile(r"\b(mmdet|mmseg|mmpose|mmpretrain|mmengine|mmcv|icm_openmmlab|icm_mm\w+|icm-plugin-\w+)\b")
    hits = [f"{path.relative_to(CORE)}:{n}: {line.strip()}" for path in sorted(CORE.rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)


def test_every_core_module_imports_and_icm_runs_with_the_model_libraries_unimportable():
    """With the OpenMMLab libraries and icm-openmmlab made unimportable, every module of the core
    imports, `icm codecs` and `icm tasks` run (the plugins register their tasks lazily), and
    icm-omni-features gets its seeded head from the weights icm-plugin-mmdet declares."""
    code = f"""
import importlib, pkgutil, sys
for name in {LIBRARIES!r}:
    sys.modules[name] = None  # importing it raises ImportError
import icm
modules = [m.name for m in pkgutil.walk_packages(icm.__path__, "icm.") if m.name != "icm.__main__"]
for name in modules:
    importlib.import_module(name)
from icm.cli import main
for args in (["codecs", "--json"], ["tasks", "--json"]):
    try:
        main(args)
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
from icm.codecs import open_codec
from icm.tasks import split_weights
assert split_weights("resnet18w32.layer1") is not None
open_codec("icm-omni-features", weights="random").net
print("imported", len(modules), "modules")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"name": "det"' in proc.stdout and "imported" in proc.stdout
    blocked = [m for m in LIBRARIES if f"'{m}'" in proc.stderr]
    assert not blocked, proc.stderr[-3000:]
