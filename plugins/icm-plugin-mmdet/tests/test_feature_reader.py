"""det / inst / panoptic reading the split tensor of icm-omni-features (``feature_reader``).

With the det model's own weights as the back end, the feature reader must predict exactly what the
pixel adapter predicts: the split tensor of ``icm-omni-features --weights random`` is the output of
its head, the det model's own stem and layer1 (loaded from the shipped det checkpoint), so the
reader's backbone gets the very tensor the pixel model computes at layer1.
"""

import numpy as np
import pytest
import torch

from icm.codecs import open_codec
from icm.paths import package_file
from icm.plugins import get_plugins
from icm.paths import package_file
from icm.tasks import Batch
from icm.testing import batch_of

SPLIT = "resnet18w32.layer1"
N = 6
TASKS = ("det", "inst", "panoptic")


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    return icm_shapes_val.dataset


@pytest.fixture(scope="module")
def adapters(val):
    torch.set_num_threads(1)
    return {t: get_plugins().tasks.get(t)().bind(val) for t in TASKS}


@pytest.fixture(scope="module")
def readers(adapters):
    weights = str(package_file("icm_mmdet", "model/panoptic_fpn_r18_tiny_shapes.pth"))
    return {t: a.feature_reader(SPLIT, checkpoint=weights) for t, a in adapters.items()}


@pytest.fixture(scope="module")
def batches(icm_shapes_val):
    pixels, records = icm_shapes_val.pixels(N), icm_shapes_val.images[:N]
    codec = open_codec("icm-omni-features", weights="random")
    features = codec.image_features(list(pixels))
    assert tuple(features.shape) == (N, 32, 32, 32)
    return batch_of(pixels, records), Batch(features, list(records), size=(128, 128))


def test_readers_share_one_model_but_never_the_pixel_model(adapters, readers):
    for t in TASKS:
        r = readers[t]
        assert type(r) is type(adapters[t]) and r.consumes == "features" and r.split == SPLIT
        # one load, one forward per batch for det and inst; panoptic's config (its R-CNN threshold) is its own
        assert (r.model is readers["det"].model) == (t != "panoptic")
        assert r.model is not adapters[t].model and r.forward_key != adapters[t].forward_key
        assert not any(p.requires_grad for p in r.model.parameters())
    assert "forward" not in adapters["det"].model.backbone.__dict__  # the pixel model is untouched


def test_own_weights_as_back_end_predict_what_the_pixel_model_predicts(adapters, readers, batches):
    from pycocotools import mask as mask_utils

    pixels, features = batches
    worst = 0.0
    for t in TASKS:
        expected, got = adapters[t].predict(pixels), readers[t].predict(features)
        assert len(expected) == len(got) == N
        for e, g in zip(expected, got):
            if t == "panoptic":
                assert e["panoptic"].shape == g["panoptic"].shape == (128, 128)
                assert (e["panoptic"] == g["panoptic"]).mean() >= 0.999
                continue
            assert len(e["bboxes"]) == len(g["bboxes"]) > 0
            assert np.array_equal(e["labels"], g["labels"])
            np.testing.assert_allclose(g["bboxes"], e["bboxes"], rtol=0, atol=1e-3)
            np.testing.assert_allclose(g["scores"], e["scores"], rtol=0, atol=1e-4)
            worst = max(worst, float(np.abs(g["bboxes"] - e["bboxes"]).max()))
            if t == "inst":
                for me, mg in zip(e["masks"], g["masks"]):
                    a = mask_utils.decode({**me, "counts": me["counts"].encode()})
                    b = mask_utils.decode({**mg, "counts": mg["counts"].encode()})
                    assert (a != b).sum() <= 2
    print(f"largest box difference, feature reader vs pixels: {worst:.2e} px")


def test_reader_scores_features_like_pixels(adapters, readers, batches):
    pixels, features = batches
    for t in ("det", "panoptic"):
        scores = []
        for adapter, batch in ((adapters[t], pixels), (readers[t], features)):
            ev = adapter.evaluator()
            ev.process(adapter.predict(batch), batch.samples)
            scores.append(ev.compute()[adapter.primary_metric])
        assert scores[1] == pytest.approx(scores[0], abs=1e-6)


def test_features_and_objectness_of_the_split_tensor(adapters, readers, batches):
    pixels, features = batches
    x, f = pixels.images[:2], features.images[:2]
    for expected, got in ((adapters["det"].features(x), readers["det"].features(f)),
                          (adapters["det"].objectness(x), readers["det"].objectness(f))):
        assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
        assert all(torch.allclose(g, e, atol=1e-3) for g, e in zip(got, expected))


def test_trainable_reader_loss_reaches_features_and_back_end(adapters, batches, val):
    pixels, features = batches
    reader = adapters["det"].feature_reader(SPLIT, train=True)  # starts from the pixel model's weights
    assert reader.forward_key is None and reader.model is not adapters["det"].model
    assert reader.dataset is val
    f = features.images[:2].clone().requires_grad_(True)
    loss = reader.loss(f, Batch(f, features.samples[:2], size=features.size))
    assert torch.isfinite(loss)
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    backbone = reader.model.backbone
    assert backbone.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert reader.model.rpn_head.rpn_conv.weight.grad is not None
    assert all(not p.requires_grad for p in [*backbone.conv1.parameters(), *backbone.layer1.parameters()])
    assert all(p.grad is None for p in adapters["det"].model.parameters())  # the pixel model stays frozen


def test_unknown_split_or_no_weights_gives_no_reader(adapters):
    for a in adapters.values():
        assert a.feature_reader("resnet50.layer3") is None
        assert a.feature_reader("resnet50.layer3", train=True) is None
        shipped = a.feature_reader(SPLIT)  # the back end the plugin ships (feature_backends)
        assert shipped.consumes == "features" and shipped.split == SPLIT and shipped.model is not a.model
        # a user's own model (any config or checkpoint given): no shipped back end fits it, no reader
        own = type(a)(config=a._config_source, checkpoint=str(package_file(a._package(), a.default_weights)),
                          device="cpu")
        assert own.feature_reader(SPLIT) is None
