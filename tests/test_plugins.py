import json
import textwrap

import numpy as np
import pytest

from icm import hookimpl
from icm.codecs.anchors import JPEG
from icm.plugins import PluginError, Plugins
from conftest import run_icm


class TinyJPEG(JPEG):
    name = "tiny-jpeg"


class GoodPlugin:
    @hookimpl
    def icm_register_codecs(self, register):
        register("tiny-jpeg", TinyJPEG, kind="anchor", description="test")


class MisspelledPlugin:
    @hookimpl
    def icm_register_codec(self, register):  # missing "s": no such hook
        register("never", TinyJPEG)


class CrashingPlugin:
    @hookimpl
    def icm_register_codecs(self, register):
        register("half-registered", TinyJPEG)
        raise RuntimeError("boom")


class DuplicatePlugin:
    @hookimpl
    def icm_register_codecs(self, register):
        register("jpeg", TinyJPEG)


def test_third_party_codec_is_usable_and_attributed(icm_register_plugin, icm_cli, icm_image):
    plugins = icm_register_plugin(GoodPlugin(), name="good")
    assert plugins.codecs.entry("tiny-jpeg").plugin == "good"
    from icm.codecs import open_codec

    assert open_codec("tiny-jpeg").decode(open_codec("tiny-jpeg").encode(icm_image, quality=80)).shape == icm_image.shape
    listing = json.loads(icm_cli("plugins", "--json").stdout)
    good = next(p for p in listing["plugins"] if p["name"] == "good")
    assert good["hooks"] == ["icm_register_codecs"] and good["registered"] == {"codec": ["tiny-jpeg"]}
    builtin = next(p for p in listing["plugins"] if p["name"] == "icm.builtin.codecs")
    assert builtin["builtin"] and "jpeg" in builtin["registered"]["codec"]


@pytest.mark.parametrize("plugin, stage, message", [
    (MisspelledPlugin(), "validate", "icm_register_codec"),
    (CrashingPlugin(), "icm_register_codecs", "boom"),
    (DuplicatePlugin(), "icm_register_codecs", "already registered"),
])
def test_broken_plugin_is_reported_and_skipped(icm_register_plugin, icm_cli, plugin, stage, message, capsys):
    plugins = icm_register_plugin(plugin, name="broken")
    assert "jpeg" in plugins.codecs  # built-ins still there
    assert "half-registered" not in plugins.codecs  # a failing plugin is removed whole
    assert plugins.codecs.entry("jpeg").plugin == "icm.builtin.codecs"
    failure = next(f for f in plugins.failures if f.plugin == "broken")
    assert failure.stage == stage and message in failure.error
    result = icm_cli("codecs", "--json")
    assert result.exit_code == 0 and any(c["name"] == "jpeg" for c in json.loads(result.stdout))


def test_strict_mode_makes_a_broken_plugin_fatal():
    plugins = Plugins(strict=True).load()
    with pytest.raises(PluginError, match="misspelled|icm_register_codec"):
        plugins.register_plugin(MisspelledPlugin(), name="broken")


def _install_fake_plugin(root, name, module_source):
    """A minimal installed distribution with an `icm` entry point, importable via PYTHONPATH."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    dist = root / f"{name}-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(f"[icm]\n{name} = {name}\n")


GOOD_SOURCE = """
    from icm import hookimpl
    from icm.codecs.anchors import WebP

    class Mine(WebP):
        name = "mine"

    @hookimpl
    def icm_register_codecs(register):
        register("mine", Mine, kind="anchor", description="from an entry point")
"""


def test_entry_point_plugins_load_and_a_broken_one_does_not_stop_the_cli(tmp_path):
    _install_fake_plugin(tmp_path, "icm_good", GOOD_SOURCE)
    _install_fake_plugin(tmp_path, "icm_broken", "import does_not_exist\n")
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_icm("plugins", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    good = next(p for p in data["plugins"] if p["name"] == "icm_good")
    assert good["version"] == "1.2.3" and good["registered"] == {"codec": ["mine"]}
    assert data["failed"][0]["name"] == "icm_broken" and data["failed"][0]["stage"] == "import"
    assert "plugin 'icm_broken' skipped" in proc.stderr and "Traceback" not in proc.stderr

    strict = run_icm("codecs", env={**env, "ICM_STRICT_PLUGINS": "1"})
    assert strict.returncode == 2 and "icm_broken" in strict.stderr and "Traceback" not in strict.stderr

    only_good = run_icm("plugins", "--json", env={**env, "ICM_LOAD_PLUGINS": "icm_good"})
    assert [f["name"] for f in json.loads(only_good.stdout)["failed"]] == []


def test_plugin_commands_hook_adds_a_subcommand(tmp_path):
    _install_fake_plugin(tmp_path, "icm_cmd", """
        import click
        from icm import hookimpl

        @hookimpl
        def icm_register_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello from a plugin")
    """)
    proc = run_icm("hello", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.strip() == "hello from a plugin"


def test_adapter_fixtures_give_shapes_val_and_batches(icm_shapes_val, icm_batch):
    pixels = icm_shapes_val.pixels(3)
    assert pixels.shape == (3, 128, 128, 3) and pixels.dtype == np.uint8
    assert np.array_equal(icm_shapes_val.pixels(2), pixels[:2])  # cached, same order
    batch = icm_batch(pixels, icm_shapes_val.images[:3])
    assert batch.images.shape == (3, 3, 128, 128) and len(batch) == 3
    assert float(batch.images.max()) <= 1.0 and np.allclose(batch.images[1, 0].numpy() * 255, pixels[1, ..., 0])
    assert batch.samples[2]["id"] == icm_shapes_val.images[2]["id"]


def test_lazily_registered_tasks_declare_their_metrics_once_at_registration():
    """`icm tasks` lists a lazily registered task's metrics without importing its adapter, so the
    registration is their one declaration: the adapter class declares none of its own."""
    from icm.plugins import get_plugins
    from icm.registry import Lazy
    from icm.tasks import TaskAdapter

    entries = [e for e in get_plugins().tasks.entries() if isinstance(e.obj, Lazy)]
    assert {e.name for e in entries} >= {"det", "inst", "panoptic", "seg", "pose", "cls"}
    for e in entries:
        cls = e.obj.resolve()
        assert cls.name == e.name and e.meta["primary"] in e.meta["metrics"], e.name
        assert cls.primary_metric is TaskAdapter.primary_metric and cls.metrics is TaskAdapter.metrics, e.name


def test_an_adapter_reads_its_metrics_and_bd_metric_name_from_its_registration(icm_register_plugin):
    from icm.evaluation.summary import bd_metric_name
    from icm.tasks import TaskAdapter

    class Declared(TaskAdapter):
        name = "declared"
        predict = evaluator = loss = features = lambda *args: None

    class Plugin:
        @hookimpl
        def icm_register_tasks(self, register):
            register("declared", Declared, metrics=["a", "b"], primary="b", bd_name="BD-bee")

    plugins = icm_register_plugin(Plugin(), name="declared")
    adapter = Declared()
    assert adapter.metrics == ("a", "b") and adapter.primary_metric == "b"
    assert bd_metric_name("declared", "b") == "BD-bee" and bd_metric_name("unregistered", "x") == "BD-x"
    # the shipped tasks' BD-metric names, as icm named them when the core held a table of them
    shipped = {"det": "BD-mAP", "inst": "BD-mAP", "seg": "BD-mIoU", "pose": "BD-AP", "cls": "BD-acc", "panoptic": "BD-PQ"}
    assert {t: bd_metric_name(t, plugins.tasks.entry(t).meta["primary"]) for t in shipped} == shipped
