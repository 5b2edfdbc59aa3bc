"""The light commands stay light: which heavy libraries each one imports (not how long it takes; timings
belong in benchmarks/cli_startup.py), and what the core does with only its declared dependencies."""

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import assert_user_error
from test_plugins import _install_fake_plugin

HEAVY = ("torch", "compressai", "mmengine", "mmdet", "mmseg", "mmpose", "mmpretrain", "mmcv", "matplotlib", "scipy")


def _run_in_process(args, block=(), env=None):
    """Run icm's main() in a fresh interpreter; report the exit code, output and the heavy modules imported.
    ``block`` makes those imports fail, as on a machine where the package is not installed."""
    code = textwrap.dedent(f"""
        import json, sys
        for name in {list(block)!r}:
            sys.modules[name] = None  # import raises ImportError, find_spec returns None
        from icm.cli import main
        try:
            main({list(args)!r})
            rc = 0
        except SystemExit as exc:
            rc = exc.code
        heavy = sorted(m for m in {list(HEAVY)!r} if sys.modules.get(m) is not None)
        print("\\n@@" + json.dumps({{"rc": rc, "heavy": heavy}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    out, _, tail = proc.stdout.rpartition("\n@@")
    return json.loads(tail), out, proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["codecs"], ["codecs", "--json"], ["tasks"],
                                  ["plugins"], ["info", "/nonexistent.icm"], ["encode", "x.png", "--codec", "nope", "-o", "/tmp"]])
def test_light_commands_import_no_heavy_library(args):
    result, out, err = _run_in_process(args)
    assert result["heavy"] == [], f"icm {' '.join(args)} imported {result['heavy']}"
    assert "Traceback" not in err


def test_codecs_lists_learned_codecs_without_building_them():
    result, out, _ = _run_in_process(["codecs", "--json"])
    rows = {r["name"]: r for r in json.loads(out)}
    omni = rows["icm-omni"]
    assert omni["available"] and omni["kind"] == "learned" and "rate 0..1" in omni["rate_control"]
    assert rows["icm-hyperprior-mse"]["rate_control"].startswith("quality 1..4")
    assert rows["cheng2020-attn"]["default_points"] == [1, 2, 3, 4, 5, 6]
    assert rows["jpeg"]["available"] and rows["jpeg"]["plugin"] == "icm.builtin.codecs"


def test_anchors_work_with_the_declared_dependencies_alone(tmp_path, image_file):
    """compressai is not a declared dependency: without it the anchors still run and the learned codecs
    say what to install."""
    result, out, _ = _run_in_process(["codecs", "--json"], block=["compressai"])
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["jpeg"]["available"] and rows["hevc"]["available"]
    assert not rows["icm-omni"]["available"] and "pip install --no-deps compressai" in rows["icm-omni"]["unavailable_reason"]
    result, out, err = _run_in_process(["encode", str(image_file), "--codec", "webp", "-q", "50", "-o", str(tmp_path)],
                                       block=["compressai"])
    assert result["rc"] == 0 and (tmp_path / "astronaut.icm").is_file(), err
    result, out, err = _run_in_process(["encode", str(image_file), "--codec", "icm-omni", "--rate", "0.5", "-o",
                                        str(tmp_path)], block=["compressai"])
    assert result["rc"] == 2 and "compressai" in err and "Traceback" not in err


def test_version_and_builtin_commands_survive_a_broken_plugin_in_strict_mode(tmp_path):
    _install_fake_plugin(tmp_path, "icm_broken", "import does_not_exist\n")
    env = {"PYTHONPATH": str(tmp_path), "ICM_STRICT_PLUGINS": "1"}
    from conftest import run_icm

    version = run_icm("--version", env=env)
    assert version.returncode == 0 and "icm" in version.stdout, version.stderr
    assert_user_error(run_icm("codecs", env=env), "icm_broken")  # real work is still refused


def test_register_hooks_run_per_registry(tmp_path):
    """`icm tasks` does not run the codec hooks: a plugin whose codec hook raises does not break it,
    even in strict mode; `icm codecs` does run it, and fails there."""
    _install_fake_plugin(tmp_path, "icm_badcodecs", """
        from icm import hookimpl

        @hookimpl
        def icm_register_codecs(register):
            raise RuntimeError("codec hook ran")
    """)
    env = {"PYTHONPATH": str(tmp_path), "ICM_STRICT_PLUGINS": "1"}
    from conftest import run_icm

    tasks = run_icm("tasks", "--json", env=env)
    assert tasks.returncode == 0 and "codec hook ran" not in tasks.stderr, tasks.stderr
    assert_user_error(run_icm("codecs", env=env), "codec hook ran")


def test_a_plugin_command_cannot_replace_a_builtin_one(tmp_path):
    _install_fake_plugin(tmp_path, "icm_hijack", """
        import click
        from icm import hookimpl

        @hookimpl
        def icm_register_commands(cli):
            @cli.command(name="codecs")
            def hijacked():
                click.echo("hijacked")

            @cli.command()
            def extra():
                click.echo("extra")
    """)
    from conftest import run_icm

    proc = run_icm("codecs", "--json", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0 and "hijacked" not in proc.stdout and json.loads(proc.stdout)
    helped = run_icm("--help", env={"PYTHONPATH": str(tmp_path)})
    assert "replace existing command(s) codecs" in helped.stderr and "extra" not in helped.stdout


def test_comma_lists_and_repeats_are_accepted_for_codecs_and_tasks():
    from conftest import run_icm

    # the second name is unknown: the error shows the list was split (and no work was done before it)
    assert_user_error(run_icm("evaluate", "--codec", "jpeg,no-such-codec", "--tasks", "cls", "--anchors", "jpeg",
                              "--reference", "jpeg"), "unknown codec 'no-such-codec'")
    assert_user_error(run_icm("evaluate", "--tasks", "cls", "--tasks", "no-such-task"), "unknown task 'no-such-task'")


def test_shipped_files_come_from_the_packages():
    from icm.paths import configs_dir, package_file, shipped

    assert shipped("codecs/icm-omni/model.pth").is_file()
    assert (configs_dir() / "experiments" / "shapes_default.toml").is_file()
    for package, name in (("icm_mmdet", "panoptic_fpn_r18_tiny_shapes"), ("icm_mmseg", "fpn_r18_tiny_shapes_seg"),
                          ("icm_mmpose", "simplebaseline_r18_tiny_shapes_pose"),
                          ("icm_mmpretrain", "resnet18_tiny_shapes_cls")):
        assert package_file(package, f"model/{name}.py").is_file()
        assert package_file(package, f"model/{name}.pth").stat().st_size > 1_000_000
    from icm.errors import UserError

    with pytest.raises(UserError, match="missing from package icm_mmdet"):
        package_file("icm_mmdet", "model/nothing.pth")
