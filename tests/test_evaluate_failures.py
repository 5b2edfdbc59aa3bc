"""Issue 9: no finished work lost. A task whose scoring fails is reported by name and the others are
kept; every task's primary metric exists at every point; failures go to stderr with a count, and
``--strict`` makes them exit 1; an older results.json never looks current after a failed run; a task
config without a checkpoint runs only with ``--weights random``."""

import json
import shutil
from pathlib import Path

import pytest

import failing_task
import toy_task
from conftest import assert_user_error, run_icm
from icm.evaluation.config import CodecSpec, Experiment, TaskSpec
from icm.evaluation.run import evaluate

JPEG = [CodecSpec("jpeg", rates=[{"quality": 20}, {"quality": 80}], anchor=True)]


def experiment(data, out, tasks, **kw):
    return Experiment(tasks=[TaskSpec(t) for t in tasks], dataset=str(data), out=str(out), codecs=JPEG,
                      reference="jpeg", **kw)


@pytest.fixture
def failing(toy, icm_register_plugin):
    return icm_register_plugin(failing_task, name="failing")


def test_a_failing_task_is_reported_by_name_and_the_others_are_kept(failing, tiny_shapes, tmp_path, capsys):
    summary = evaluate(experiment(tiny_shapes, tmp_path, ("colour", "broken")), progress=False)
    [failure] = summary["counters"]["failures"]  # one record for one error, listing its points
    assert failure["task"] == "broken" and failure["stage"] == "score" and "evaluator exploded" in failure["error"]
    assert set(failure["points"]) == {"original@none", "jpeg@quality=20", "jpeg@quality=80"}
    assert "icm: failure: task broken" in capsys.readouterr().err
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["metrics"]) == {"colour"} and results["metrics"]["colour"]["jpeg@quality=80"]["closeness"] > 0.9
    # each task's metrics were written as soon as they were computed
    colour = json.loads((tmp_path / "metrics" / "colour.json").read_text())
    assert colour["metrics"] == results["metrics"]["colour"]
    assert json.loads((tmp_path / "metrics" / "broken.json").read_text())["failures"][0]["task"] == "broken"


def test_the_primary_metric_exists_at_every_point(failing, tiny_shapes, tmp_path):
    summary = evaluate(experiment(tiny_shapes, tmp_path, ("colour", "blank")), progress=False)  # no KeyError
    blank = json.loads((tmp_path / "results.json").read_text())["metrics"]["blank"]
    assert all(m["closeness"] is None and "not computable" in m["note"] for m in blank.values())
    assert summary["analysis"]["blank"]["curves"]["jpeg"]["points"] == []
    assert summary["analysis"]["colour"]["curves"]["jpeg"]["points"]


def test_a_failed_run_moves_the_older_results_aside(toy, tiny_shapes, tmp_path, monkeypatch):
    evaluate(experiment(tiny_shapes, tmp_path, ("colour",)), progress=False)
    old = (tmp_path / "results.json").read_text()
    import icm.evaluation.run as run

    monkeypatch.setattr(run, "analyse", lambda *a: (_ for _ in ()).throw(RuntimeError("late crash")))
    with pytest.raises(RuntimeError, match="late crash"):
        evaluate(experiment(tiny_shapes, tmp_path, ("colour",)), progress=False)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "report.html").exists()
    assert (tmp_path / "previous" / "results.json").read_text() == old
    assert (tmp_path / "metrics" / "colour.json").is_file()  # this run's finished scores are kept
    monkeypatch.undo()
    evaluate(experiment(tiny_shapes, tmp_path, ("colour",)), progress=False)
    assert (tmp_path / "results.json").is_file() and not (tmp_path / "previous").exists()


def test_label_free_says_which_tasks_cannot(failing, tiny_shapes, tmp_path):
    summary = evaluate(experiment(tiny_shapes, tmp_path, ("colour", "needs-labels"), label_free=True), progress=False)
    [failure] = summary["counters"]["failures"]
    assert failure["task"] == "needs-labels" and "hand labels only" in failure["error"]
    assert set(json.loads((tmp_path / "results.json").read_text())["metrics"]) == {"colour"}


def _dist(root: Path):
    for module in (toy_task, failing_task):
        shutil.copy(Path(module.__file__), root / Path(module.__file__).name)
    dist = root / "icm_test_tasks-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: icm-test-tasks\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[icm]\ntoy = toy_task\nfailing = failing_task\n")
    return {"PYTHONPATH": str(root), "ICM_LOAD_PLUGINS": "toy,failing", "OMP_NUM_THREADS": "1"}


def _coco_with_a_missing_image(tiny_shapes, tmp_path) -> Path:
    """A COCO-format dataset config whose instances JSON lists one image that is not on disk and one
    with transparency (icm refuses to code alpha)."""
    import numpy as np
    from PIL import Image

    rgba = np.full((64, 64, 4), 120, np.uint8)
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    coco = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    coco["images"] = coco["images"][:3] + [{**coco["images"][0], "id": 999, "file_name": "gone.png"},
                                           {**coco["images"][0], "id": 998, "file_name": str(tmp_path / "clear.png")}]
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    config = tmp_path / "missing.json"
    config.write_text(json.dumps({"images_dir": str(tiny_shapes / "val" / "images"), "instances": "instances.json"}))
    return config


def test_cli_failures_go_to_stderr_with_a_count_and_strict_exits_1(tiny_shapes, tmp_path):
    env = _dist(tmp_path)
    args = ["evaluate", "--tasks", "colour,broken", "--dataset", _coco_with_a_missing_image(tiny_shapes, tmp_path),
            "--anchors", "jpeg", "--reference", "jpeg", "--codec", "jpeg", "--rates", "30", "--no-progress"]
    proc = run_icm(*args, "--out", tmp_path / "o", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "icm: failure" not in proc.stdout and "Traceback" not in proc.stderr
    assert "icm: failure: image 999 (load)" in proc.stderr and "icm: failure: task broken" in proc.stderr
    assert "icm: failure: image 998 (load)" in proc.stderr and "transparency" in proc.stderr
    assert "icm: 3 failure(s): 2 image(s) skipped" in proc.stderr and "tasks affected: broken" in proc.stderr
    strict = run_icm(*args, "--strict", "--out", tmp_path / "o", env=env)
    assert strict.returncode == 1 and "icm: 3 failure(s)" in strict.stderr
    assert json.loads((tmp_path / "o" / "results.json").read_text())["metrics"]["colour"]  # outputs still written


def test_cli_a_config_without_checkpoint_needs_weights_random(tiny_shapes, tmp_path):
    env = _dist(tmp_path)
    config = tmp_path / "colour.py"
    config.write_text("# the toy task reads no config\n")
    args = ["evaluate", "--dataset", tiny_shapes, "--anchors", "jpeg", "--reference", "jpeg", "--codec", "jpeg",
            "--rates", "30", "--no-progress", "--out", tmp_path / "o", "--task", f"colour={config}", "--tasks", "colour"]
    assert_user_error(run_icm(*args, env=env), "has no checkpoint")
    assert not (tmp_path / "o").exists()  # refused before any work
    proc = run_icm(*args, "--weights", "random", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "o" / "results.json").read_text())["experiment"]["tasks"][0]["weights"] == "random"


@pytest.mark.parametrize("args", [["--config", "CONFIG", "--rates", "rate=0.5"], ["--config", "CONFIG", "--checkpoint", "m.pth"],
                                  ["--checkpoint", "m.pth"]])
def test_cli_rates_or_checkpoint_without_codec_are_refused(tmp_path, args):
    """They used to be dropped in silence (a config's codecs, or the default codecs for --checkpoint):
    a run of other rates or weights than asked for. Refused before any work, with the way out."""
    path = tmp_path / "exp.toml"
    path.write_text('anchors = ["jpeg"]\nreference = "jpeg"\n\n[[codecs]]\nname = "jpeg"\n')
    proc = run_icm("evaluate", *[str(path) if a == "CONFIG" else a for a in args], "--out", tmp_path / "o")
    assert_user_error(proc, f"{args[-2]} applies to the --codec codecs")
    assert not (tmp_path / "o").exists()


def test_experiment_file_keys_for_weights_class_map_and_strict(tmp_path):
    from icm.errors import UserError
    from icm.evaluation.config import load_experiment

    path = tmp_path / "exp.toml"
    path.write_text('tasks = [{name = "det", config = "r.py", weights = "random"}]\nstrict = true\n'
                    'class_map = {person = "disk", car = "bar"}\n')
    exp = load_experiment(path)
    assert exp.tasks[0].weights == "random" and exp.strict and exp.class_map == {"person": "disk", "car": "bar"}
    path.write_text('class_map = ["person"]\n')
    with pytest.raises(UserError, match="class_map must be a table"):
        load_experiment(path)


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs" / "experiments").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_experiment_configs_name_only_registered_things(path):
    """Each shipped experiment file loads, and its tasks, codecs and dataset are installed ones."""
    from icm.evaluation.config import load_experiment
    from icm.plugins import Plugins

    exp, plugins = load_experiment(path), Plugins().load()
    assert exp.tasks and exp.codecs
    for task in exp.tasks:
        plugins.tasks.entry(task.name)
    for codec in exp.codecs:
        plugins.codecs.entry(codec.name)
    plugins.datasets.entry(exp.dataset)
