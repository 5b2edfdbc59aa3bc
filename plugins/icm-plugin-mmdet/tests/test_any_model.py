"""Issue 9: any mmdet model on any COCO-format data gives right numbers or a clear refusal. On a
3-class COCO dataset (disk, ring, bar; not shapes' classes) with tiny random-init versions of the
stock configs in the installed mmdet package."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs in importlib mode: the helper module is next to us
import coco3  # noqa: E402
from icm.datasets import load_dataset
from icm.errors import UserError
from icm.evaluation.config import CodecSpec, Experiment, TaskSpec
from icm.evaluation.run import evaluate
from icm.testing import batch_of
from icm_mmdet.adapter import DetAdapter, InstAdapter, PanopticAdapter

NAMED = 'metainfo = dict(classes=("bar", "disk", "ring"))\nmodel.update(bbox_head=dict(num_classes=3))\n'


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco3")
    return coco3.write(root, n=8)


@pytest.fixture(scope="module")
def dataset(data):
    return load_dataset(data)


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory):
    """A 3-class RetinaNet whose classes are named in another order than the dataset's ids."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("retinanet")
    config = coco3.tiny_config(root, "retinanet", NAMED)
    return config, coco3.random_checkpoint(config, root / "retinanet.pth")


def _gt_as_predictions(dataset, model_classes):
    """The ground-truth boxes as predictions, labelled with the *model's* class indices."""
    coco = json.loads(dataset.annotations["instances"].read_text())
    name = {c["id"]: c["name"] for c in coco["categories"]}
    preds = {r["id"]: {"bboxes": [], "scores": [], "labels": []} for r in dataset.images}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        p = preds[a["image_id"]]
        p["bboxes"].append([x, y, x + w, y + h])
        p["scores"].append(0.9)
        p["labels"].append(model_classes.index(name[a["category_id"]]))
    return {i: {"bboxes": np.array(p["bboxes"], np.float32).reshape(-1, 4), "scores": np.array(p["scores"], np.float32),
                "labels": np.array(p["labels"], np.int64)} for i, p in preds.items()}


def _score(adapter, preds, dataset, pseudo=None):
    ev = adapter.evaluator(pseudo_ground_truth=pseudo)
    ids = sorted(preds)
    ev.process([preds[i] for i in ids], [r for r in dataset.images if r["id"] in preds])
    return ev.compute()


def test_classes_are_matched_by_name_not_by_position(retinanet, dataset):
    adapter = DetAdapter(*retinanet, device="cpu").bind(dataset)
    assert adapter.model_classes == ["bar", "disk", "ring"]  # from the config's metainfo
    adapter.check()
    # dataset categories in id order: ring (2), disk (5), bar (9); by position every label would be wrong
    assert adapter.label_map == [2, 1, 0]
    assert _score(adapter, _gt_as_predictions(dataset, adapter.model_classes), dataset)["bbox_mAP"] == 1.0


def test_class_mismatch_is_one_line_naming_both_lists_unless_mapped(retinanet, dataset, tmp_path):
    from icm_openmmlab import build_model  # noqa: F401  (the mmdet stack is importable)

    config = coco3.tiny_config(tmp_path, "retinanet", NAMED.replace('"bar", "disk", "ring"', '"car", "dog", "cup"'))
    adapter = DetAdapter(config, retinanet[1], device="cpu").bind(dataset)
    with pytest.raises(UserError) as exc:
        adapter.check()
    message = str(exc.value)
    assert "\n" not in message and "[car, dog, cup]" in message and "[ring, disk, bar]" in message
    adapter.class_map = {"car": "disk", "dog": "ring", "cup": "bar"}
    adapter.bind(dataset).check()
    assert adapter.label_map == [1, 0, 2]
    # label-free needs no dataset classes at all
    adapter.class_map = {}
    adapter.bind(dataset).check(label_free=True)


def run_icm(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "icm", *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def assert_user_error(proc, fragment):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "warning" not in ln.lower()]
    assert len(lines) == 1 and lines[0].startswith("icm: error: ") and fragment in lines[0], proc.stderr


def test_cli_class_mismatch_refused_before_any_coding(retinanet, data, tmp_path):
    config = coco3.tiny_config(tmp_path, "retinanet", NAMED.replace('"bar", "disk", "ring"', '"car", "dog", "cup"'))
    args = ["evaluate", "--tasks", "det", "--task", f"det={config}:{retinanet[1]}", "--dataset", data,
            "--anchors", "jpeg", "--reference", "jpeg", "--codec", "jpeg", "--rates", "30", "--no-progress",
            "--out", tmp_path / "o", "--limit", "2"]
    assert_user_error(run_icm(*args), "do not cover the dataset's classes [ring, disk, bar]")
    assert not (tmp_path / "o" / "cache").exists()
    proc = run_icm(*args, "--class-map", "car=disk,dog=ring,cup=bar")
    assert proc.returncode == 0, proc.stderr


def test_no_predictions_scores_zero_with_a_note(tmp_path, data):
    """A model that predicts nothing (here: a score threshold nothing reaches) is a legal outcome."""
    config = coco3.tiny_config(tmp_path, "retinanet", NAMED + "model.update(test_cfg=dict(score_thr=1.01))\n")
    ckpt = coco3.random_checkpoint(config, tmp_path / "blank.pth")
    exp = Experiment(tasks=[TaskSpec("det", str(config), str(ckpt))], dataset=str(data), out=str(tmp_path / "o"),
                     limit=3, reference="jpeg", codecs=[CodecSpec("jpeg", rates=[{"quality": 30}, {"quality": 80}], anchor=True)])
    summary = evaluate(exp, progress=False)
    metrics = json.loads((tmp_path / "o" / "results.json").read_text())["metrics"]["det"]
    assert set(metrics) == {"original@none", "jpeg@quality=30", "jpeg@quality=80"}
    assert all(m["bbox_mAP"] == 0.0 and m["note"].startswith("no predictions") for m in metrics.values())
    assert summary["analysis"]["det"]["uncompressed"] == 0.0 and not summary["counters"]["failures"]


def test_a_checkpoint_that_does_not_fit_is_one_line(retinanet, tmp_path):
    config = coco3.tiny_config(tmp_path, "retinanet")  # the stock 80 COCO classes
    with pytest.raises(UserError) as exc:
        DetAdapter(config, retinanet[1], device="cpu")
    message = str(exc.value)
    assert "\n" not in message and len(message) < 600
    assert "2 of the wrong shape" in message and "bbox_head.retina_cls.weight (27, 256, 3, 3) vs (720, 256, 3, 3)" in message
    other = coco3.tiny_config(tmp_path, "faster_rcnn")
    with pytest.raises(UserError, match=r"missing \(.*unexpected \(") as exc:
        DetAdapter(other, retinanet[1], device="cpu")


@pytest.mark.parametrize("kind", ["retinanet", "fcos", "yolox", "faster_rcnn"])
def test_single_and_two_stage_detectors_predict_and_give_objectness(kind, tmp_path, dataset):
    torch.manual_seed(0)
    adapter = DetAdapter(coco3.tiny_config(tmp_path, kind), None, device="cpu").bind(dataset)
    from icm.images import load_image

    records = dataset.images[:2]
    batch = batch_of(np.stack([load_image(r["file_name"]) for r in records]), records)
    preds = adapter.predict(batch)
    assert len(preds) == 2 and all(p["bboxes"].shape[1:] == (4,) and len(p["scores"]) == len(p["labels"]) for p in preds)
    feats = adapter.features(batch.images)
    obj = adapter.objectness(batch.images)
    assert [o.shape for o in obj] == [(2, 1, *f.shape[-2:]) for f in feats]
    assert all(0 <= float(o.min()) and float(o.max()) <= 1 for o in obj)
    assert adapter.model_classes[:2] == ["person", "bicycle"]  # the stock config's CocoDataset classes


def test_tasks_the_model_cannot_do_are_refused_in_one_line(retinanet, dataset):
    with pytest.raises(UserError, match="predicts no masks"):
        InstAdapter(*retinanet, device="cpu").bind(dataset).check()
    with pytest.raises(UserError, match="not a panoptic model"):
        PanopticAdapter(*retinanet, device="cpu").bind(dataset).check(label_free=True)
    with pytest.raises(UserError, match="no COCO panoptic annotations"):
        PanopticAdapter().bind(dataset).check()


def test_class_names_from_the_checkpoint_meta_come_first(retinanet, tmp_path):
    """An mmengine checkpoint's meta.dataset_meta names the classes, ahead of the config's metainfo."""
    config, _ = retinanet
    ckpt = coco3.random_checkpoint(config, tmp_path / "meta.pth", meta={"dataset_meta": {"classes": ("ring", "bar", "disk")}})
    assert DetAdapter(config, ckpt, device="cpu").model_classes == ["ring", "bar", "disk"]
