"""`icm evaluate --check-parity`: icm's predictions and metric on the uncompressed images beside a task
library's own (``TaskAdapter.library_test``), the table, parity.json and the exit code. The real
libraries' loops are checked in each plugin's tests/test_parity.py; here a toy task whose "library"
reads the image files itself, once faithful and once off by one grey level."""

import json
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import toy_task  # noqa: E402
from icm import hookimpl  # noqa: E402
from icm.images import load_image  # noqa: E402
from icm.tasks import LibraryTest  # noqa: E402


class Faithful(toy_task.MeanColour):
    name = "faithful"
    offset = 0.0

    def library_test(self, images):
        preds = {s["id"]: {"mean": load_image(s["file_name"]).reshape(-1, 3).mean(0).astype(np.float32) + self.offset}
                 for s in images}
        ev = self.evaluator()
        ev.process([preds[s["id"]] for s in images], images)
        return LibraryTest(preds, ev.compute(), note="the toy library")


class OffByOne(Faithful):
    name = "off-by-one"
    offset = 1.0


def plugin():
    @hookimpl
    def icm_register_tasks(register):
        register("faithful", Faithful, metrics=["closeness"])
        register("off-by-one", OffByOne, metrics=["closeness"])

    return types.SimpleNamespace(icm_register_tasks=icm_register_tasks)


def test_a_faithful_task_agrees_and_a_drifting_one_exits_1(icm_register_plugin, icm_cli, tiny_shapes, tmp_path):
    icm_register_plugin(plugin(), name="parity-toys")
    ok = icm_cli("evaluate", "--check-parity", "--dataset", tiny_shapes, "--tasks", "faithful", "--out", tmp_path / "a")
    assert ok.exit_code == 0, ok.stderr
    assert "the toy library" in ok.stdout and "yes" in ok.stdout
    rows = json.loads((tmp_path / "a" / "parity.json").read_text())["rows"]
    assert [r["agree"] for r in rows] == [True] and rows[0]["prediction_difference"] < 1e-4

    bad = icm_cli("evaluate", "--check-parity", "--dataset", tiny_shapes, "--tasks", "faithful,off-by-one",
                  "--out", tmp_path / "b")
    assert bad.exit_code == 1
    assert "Traceback" not in bad.stderr and "differ from the libraries' own test loops" in bad.stderr
    rows = {r["task"]: r for r in json.loads((tmp_path / "b" / "parity.json").read_text())["rows"]}
    assert rows["faithful"]["agree"] and not rows["off-by-one"]["agree"]
    assert abs(rows["off-by-one"]["prediction_difference"] - 1.0) < 1e-4


def test_a_task_without_a_library_test_is_reported_not_failed(toy, icm_cli, tiny_shapes, tmp_path):
    result = icm_cli("evaluate", "--check-parity", "--dataset", tiny_shapes, "--tasks", "colour", "--out", tmp_path)
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "parity.json").read_text())["rows"]
    assert rows[0]["agree"] is None and "no library test" in rows[0]["note"]
