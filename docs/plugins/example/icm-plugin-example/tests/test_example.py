"""Tests of the example plugin, written with icm's pytest fixtures (icm_plugins, icm_register_plugin,
icm_cli, icm_image), which pytest loads automatically once icm is installed."""

import json

import numpy as np
import pytest
import torch

import icm_example.plugin
from icm.datasets import Dataset
from icm.errors import UserError
from icm.images import save_image
from icm.tasks import Batch


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch):
    # Load no installed entry-point plugins: the tests then behave the same whether or not this
    # package (or other task plugins) is installed, and registering it below cannot clash with
    # the copy its own entry point would load.
    monkeypatch.setenv("ICM_LOAD_PLUGINS", "")


@pytest.fixture
def plugins(icm_register_plugin):
    return icm_register_plugin(icm_example.plugin, name="example", version="0.1.0")


@pytest.fixture
def adapter(plugins, icm_image, tmp_path):
    """The adapter as `icm evaluate` builds it: factory from the registry, then bound to a dataset."""
    path = tmp_path / "image.png"
    save_image(icm_image, path)
    h, w = icm_image.shape[:2]
    dataset = Dataset("one", tmp_path, "val", [{"id": 7, "file_name": str(path), "width": w, "height": h}])
    return plugins.tasks.get("edges")(device="cpu").bind(dataset)


def batch_of(adapter, *images):
    x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]).float().div(255)
    return Batch(x, [adapter.dataset.images[0]] * len(images))


def score(adapter, images, pseudo=None):
    batch = batch_of(adapter, *images)
    ev = adapter.evaluator(pseudo)
    ev.process(adapter.predict(batch), batch.samples)
    return ev.compute()


def test_listed_by_icm_tasks_and_icm_plugins(plugins, icm_cli):
    result = icm_cli("tasks", "--json")
    assert result.exit_code == 0, result.stderr
    edges = next(t for t in json.loads(result.stdout) if t["name"] == "edges")
    assert edges["plugin"] == "example" and edges["metrics"] == ["edge_f1", "edge_iou"]
    listing = json.loads(icm_cli("plugins", "--json").stdout)
    mine = next(p for p in listing["plugins"] if p["name"] == "example")
    assert mine["hooks"] == ["icm_register_tasks"] and mine["registered"] == {"task": ["edges"]}
    assert listing["failed"] == []


def test_predictions_are_plain_per_image_objects(adapter, icm_image):
    preds = adapter.predict(batch_of(adapter, icm_image, icm_image))
    assert len(preds) == 2
    assert preds[0]["edges"].dtype == bool and preds[0]["edges"].shape == icm_image.shape[:2]
    assert 0.01 < preds[0]["edges"].mean() < 0.5  # the test image has edges, but is not all edges


def test_uncompressed_scores_one_and_jpeg_scores_less(adapter, icm_image):
    from icm.codecs import open_codec

    assert score(adapter, [icm_image]) == {"edge_f1": 1.0, "edge_iou": 1.0}
    jpeg = open_codec("jpeg")
    coded = jpeg.decode(jpeg.encode(icm_image, quality=10))
    lossy = score(adapter, [coded])
    assert 0.0 < lossy["edge_iou"] <= lossy["edge_f1"] < 1.0


def test_label_free_mode_scores_against_pseudo_ground_truth(adapter, icm_image):
    clean = adapter.predict(batch_of(adapter, icm_image))[0]
    flipped = {"edges": ~clean["edges"]}
    assert score(adapter, [icm_image], pseudo={7: clean})["edge_f1"] == 1.0
    assert score(adapter, [icm_image], pseudo={7: flipped})["edge_f1"] < 0.5


def test_loss_is_differentiable_with_respect_to_the_pixels(adapter, icm_image):
    from icm.codecs import open_codec

    jpeg = open_codec("jpeg")
    batch = batch_of(adapter, jpeg.decode(jpeg.encode(icm_image, quality=10)))
    x = batch.images.clone().requires_grad_(True)
    loss = adapter.loss(x, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in adapter.model.parameters())  # the task model stays frozen


def test_features_and_objectness_levels(adapter, icm_image):
    x = batch_of(adapter, icm_image).images  # 96 x 128
    feats = adapter.features(x)
    assert [tuple(f.shape) for f in feats] == [(1, 1, 96, 128), (1, 1, 48, 64)]
    obj = adapter.objectness(x)
    assert [o.shape for o in obj] == [f.shape for f in feats]
    assert all(((o >= 0) & (o <= 1)).all() for o in obj)


def test_config_and_checkpoint(plugins, tmp_path):
    factory = plugins.tasks.get("edges")
    config = tmp_path / "edges.json"
    config.write_text('{"threshold": 0.3}')
    assert float(factory(config=str(config), device="cpu").model.threshold) == pytest.approx(0.3)
    torch.save(factory(config={"threshold": 0.25}).model.state_dict(), tmp_path / "sobel.pth")
    assert float(factory(checkpoint=str(tmp_path / "sobel.pth")).model.threshold) == pytest.approx(0.25)
    config.write_text('{"treshold": 0.3}')
    with pytest.raises(UserError, match="unknown key"):
        factory(config=str(config))


def test_icm_evaluate_picks_the_task_up(plugins, icm_cli, tmp_path):
    from icm.datasets.shapes import generate

    generate(tmp_path / "shapes", train=0, val=2, size=64, progress=False)
    out = tmp_path / "out"
    result = icm_cli("evaluate", "--tasks", "edges", "--dataset", tmp_path / "shapes", "--codec", "jpeg",
                     "--rates", "20,80", "--anchors", "", "--reference", "jpeg", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]["edges"]
    assert metrics["original@none"]["edge_f1"] == 1.0
    assert metrics["jpeg@quality=20"]["edge_f1"] < metrics["jpeg@quality=80"]["edge_f1"] <= 1.0
    assert results["counters"]["encodes"] == 4 and results["tasks"]["edges"]["primary"] == "edge_f1"


def test_a_feature_reader_predicts_edges_from_a_split_tensor(adapter, icm_image, tmp_path):
    assert adapter.feature_reader("resnet50.layer2", train=True) is None  # a split it cannot read
    assert adapter.feature_reader("resnet18w32.layer1") is None  # no back end weights: decoded pixels instead
    reader = adapter.feature_reader("resnet18w32.layer1", train=True)
    assert reader.consumes == "features" and reader.split == "resnet18w32.layer1"
    h, w = icm_image.shape[:2]
    feats = torch.randn(1, 32, -(-h // 4), -(-w // 4), requires_grad=True)
    batch = Batch(feats, [adapter.dataset.images[0]], size=(h, w))
    [pred] = reader.predict(batch)
    assert pred["edges"].shape == (h, w) and pred["edges"].dtype == bool
    ev = reader.evaluator()
    ev.process([pred], batch.samples)
    assert 0.0 <= ev.compute()["edge_f1"] <= 1.0
    loss = reader.loss(feats, batch)
    loss.backward()
    assert torch.isfinite(loss) and feats.grad.abs().sum() > 0 and reader.net.weight.grad is not None
    # trained weights come back through feature_reader(checkpoint=...)
    path = tmp_path / "edges_backend.pth"
    torch.save(reader.net.state_dict(), path)
    again = adapter.feature_reader("resnet18w32.layer1", checkpoint=str(path))
    assert np.array_equal(again.predict(batch)[0]["edges"], pred["edges"])
