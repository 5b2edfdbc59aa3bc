"""`seg` reading the split tensor of icm-omni-features (``feature_reader``): a trainable back end
started from the pixel model's weights predicts label maps in the image's size, its evaluator scores
them, and its loss reaches the features and the back end."""

import numpy as np
import pytest
import torch

from icm.codecs import open_codec
from icm.plugins import get_plugins
from icm.paths import package_file
from icm.tasks import Batch

SPLIT = "resnet18w32.layer1"
N = 4


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    return icm_shapes_val.dataset


@pytest.fixture(scope="module")
def adapter(val):
    torch.set_num_threads(1)
    return get_plugins().tasks.get("seg")().bind(val)


@pytest.fixture(scope="module")
def reader(adapter):
    return adapter.feature_reader(SPLIT, train=True)


@pytest.fixture(scope="module")
def codec():
    return open_codec("icm-omni-features", weights="random")


@pytest.fixture(scope="module")
def features(icm_shapes_val):
    return icm_shapes_val.features(N)


def test_reader_is_a_new_trainable_seg_adapter(adapter, reader, val):
    assert type(reader) is type(adapter) and reader.consumes == "features" and reader.split == SPLIT
    assert reader.model is not adapter.model and reader.forward_key is None and reader.dataset is val
    assert "forward" not in adapter.model.backbone.__dict__  # the pixel model is untouched
    stem = [p for n, p in reader.model.named_parameters() if n.startswith(("backbone.stem.", "backbone.layer1."))]
    assert stem and not any(p.requires_grad for p in stem)  # not part of the back end
    assert all(p.requires_grad for n, p in reader.model.named_parameters()
               if n.startswith(("backbone.layer2.", "backbone.layer4.", "neck.", "decode_head.")))


def test_predictions_in_the_image_size_and_scored(reader, features):
    preds = reader.predict(features)
    assert len(preds) == N
    assert all(p["sem_seg"].shape == (128, 128) and p["sem_seg"].dtype == np.uint8 for p in preds)
    assert all(int(p["sem_seg"].max()) < reader.num_classes for p in preds)
    ev = reader.evaluator()
    ev.process(preds, features.samples)
    metrics = ev.compute()
    assert set(metrics) == {"mIoU", "aAcc", "mAcc"} and all(0.0 <= v <= 1.0 for v in metrics.values())
    pseudo = reader.evaluator({s["id"]: p for s, p in zip(features.samples, preds)})
    pseudo.process(preds, features.samples)
    assert pseudo.compute()["mIoU"] == 1.0


def test_odd_image_size_is_cropped_back(reader, codec, icm_shapes_val):
    records = [{**r, "width": 100, "height": 90} for r in icm_shapes_val.images[:2]]
    f = codec.image_features(list(icm_shapes_val.pixels(2)[:, :90, :100]))  # padded to 128 by the codec
    assert tuple(f.shape[-2:]) == (32, 32)
    preds = reader.predict(Batch(f, records, size=(90, 100)))
    assert all(p["sem_seg"].shape == (90, 100) for p in preds)
    assert [tuple(o.shape) for o in reader.objectness(f)] == [(2, 1, 32 // s, 32 // s) for s in (1, 2, 4, 8)]


def test_loss_reaches_the_features_and_the_back_end(reader, features):
    f = features.images[:2].clone().requires_grad_(True)
    loss = reader.loss(f, Batch(f, features.samples[:2], size=features.size))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert reader.model.backbone.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert reader.model.decode_head.conv_seg.weight.grad.abs().sum() > 0
    feats = reader.features(features.images[:2])
    assert [tuple(x.shape) for x in feats] == [(2, 64, 128 // s, 128 // s) for s in (4, 8, 16, 32)]


def test_unknown_split_or_no_weights_gives_no_reader(adapter):
    assert adapter.feature_reader("resnet50.layer3") is None
    assert adapter.feature_reader("resnet50.layer3", train=True) is None
    shipped = adapter.feature_reader(SPLIT)  # the back end the plugin ships (feature_backends)
    assert shipped.consumes == "features" and shipped.split == SPLIT and shipped.model is not adapter.model
    # a user's own model (any config or checkpoint given): no shipped back end fits it, no reader
    own = type(adapter)(config=adapter._config_source, checkpoint=str(package_file(adapter._package(), adapter.default_weights)),
                      device="cpu")
    assert own.feature_reader(SPLIT) is None
