"""`cls` reading the split tensor of icm-omni-features (``feature_reader``): a trainable back end
started from the pixel model's weights predicts class scores, its evaluator scores them, and its
loss reaches the features and the back end."""

import numpy as np
import pytest
import torch

from icm.plugins import get_plugins
from icm.paths import package_file
from icm.tasks import Batch

SPLIT = "resnet18w32.layer1"
N = 8


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    return icm_shapes_val.dataset


@pytest.fixture(scope="module")
def adapter(val):
    torch.set_num_threads(1)
    return get_plugins().tasks.get("cls")(device="cpu").bind(val)


@pytest.fixture(scope="module")
def reader(adapter):
    return adapter.feature_reader(SPLIT, train=True)


@pytest.fixture(scope="module")
def features(icm_shapes_val):
    return icm_shapes_val.features(N)


def test_reader_is_a_new_trainable_cls_adapter(adapter, reader, val):
    assert type(reader) is type(adapter) and reader.consumes == "features" and reader.split == SPLIT
    assert reader.model is not adapter.model and reader.forward_key is None and reader.dataset is val
    assert "forward" not in adapter.model.backbone.__dict__
    assert reader.model.head.fc.weight.requires_grad and reader.model.backbone.layer4[1].conv2.weight.requires_grad
    assert not reader.model.backbone.layer1[0].conv1.weight.requires_grad  # layer1 is the codec's, not the back end's
    assert reader.model_classes == adapter.model_classes


def test_predictions_scored(reader, features):
    preds = reader.predict(features)
    assert len(preds) == N
    for p in preds:
        assert p["scores"].dtype == np.float32 and p["scores"].shape == (4,)
        assert np.isclose(p["scores"].sum(), 1.0, atol=1e-5) and p["label"] == int(p["scores"].argmax())
    ev = reader.evaluator()
    ev.process(preds, features.samples)
    metrics = ev.compute()
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["top5"] == 1.0


def test_loss_reaches_the_features_and_the_back_end(reader, features):
    f = features.images[:4].clone().requires_grad_(True)
    loss = reader.loss(f, Batch(f, features.samples[:4], size=features.size))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert reader.model.backbone.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert reader.model.head.fc.weight.grad.abs().sum() > 0


def test_features_and_objectness_of_the_split_tensor(reader, features):
    f = features.images[:2]
    feats = reader.features(f)
    assert [tuple(x.shape) for x in feats] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert torch.equal(feats[0], f)  # stage 0 is layer1's output: the split tensor itself
    maps = reader.objectness(f)
    assert [tuple(m.shape) for m in maps] == [(2, 1, *x.shape[-2:]) for x in feats]


def test_unknown_split_or_no_weights_gives_no_reader(adapter):
    assert adapter.feature_reader("resnet50.layer3") is None
    assert adapter.feature_reader("resnet50.layer3", train=True) is None
    shipped = adapter.feature_reader(SPLIT)  # the back end the plugin ships (feature_backends)
    assert shipped.consumes == "features" and shipped.split == SPLIT and shipped.model is not adapter.model
    # a user's own model (any config or checkpoint given): no shipped back end fits it, no reader
    own = type(adapter)(config=adapter._config_source, checkpoint=str(package_file(adapter._package(), adapter.default_weights)),
                      device="cpu")
    assert own.feature_reader(SPLIT) is None


def test_a_saved_back_end_and_a_shipped_one_load_as_frozen_readers(adapter, reader, features, tmp_path, monkeypatch):
    path = tmp_path / "backend.pth"
    torch.save(reader.model.state_dict(), path)  # what back-end training saves: the whole model's state dict
    loaded = adapter.feature_reader(SPLIT, checkpoint=str(path))
    assert loaded.forward_key[-2:] == ("features", SPLIT) and not any(p.requires_grad for p in loaded.model.parameters())
    expected = [p["scores"] for p in reader.predict(features)]
    assert all(np.allclose(p["scores"], e, atol=1e-6) for p, e in zip(loaded.predict(features), expected))
    # a back end the plugin ships (a path inside its package) is what feature_reader uses without a checkpoint
    monkeypatch.setattr(type(adapter), "feature_backends", {SPLIT: "model/resnet18_tiny_shapes_cls.pth"})
    shipped = adapter.feature_reader(SPLIT)
    assert shipped is not None and shipped.consumes == "features" and shipped.model is not adapter.model
    assert shipped.forward_key[2].endswith("resnet18_tiny_shapes_cls.pth")
