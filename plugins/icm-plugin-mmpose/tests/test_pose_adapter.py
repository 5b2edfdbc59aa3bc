"""The `pose` adapter on the shapes benchmark with the shipped SimpleBaseline weights (CPU, ~15 s)."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from icm.datasets import Dataset
from icm.plugins import get_plugins
from icm.tasks import Batch
from icm.testing import batch_of

N_IMAGES = 24


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    return icm_shapes_val.dataset


@pytest.fixture(scope="module")
def adapter(val):
    return get_plugins().tasks.get("pose")(device="cpu").bind(val)


@pytest.fixture(scope="module")
def images(icm_shapes_val):
    return batch_of(icm_shapes_val.pixels(N_IMAGES), icm_shapes_val.images[:N_IMAGES]).images


def _evaluate(adapter, images, records, pseudo=None, batch_size=12):
    ev, preds = adapter.evaluator(pseudo), {}
    for i in range(0, len(records), batch_size):
        batch = Batch(images[i:i + batch_size], records[i:i + batch_size])
        out = adapter.predict(batch)
        preds.update({s["id"]: p for s, p in zip(batch.samples, out)})
        ev.process(out, batch.samples)
    return ev.compute(), preds


@pytest.fixture(scope="module")
def clean(adapter, images, val):
    return _evaluate(adapter, images, val.images[:N_IMAGES])


def test_plugin_registered():
    entry = get_plugins().tasks.entry("pose")
    assert entry.plugin == "mmpose"
    assert entry.meta["primary"] == "AP" and "AP50" in entry.meta["metrics"]


def test_loss_is_finite_and_reaches_the_pixels(adapter, images, val):
    x = images[:8].clone().requires_grad_(True)
    loss = adapter.loss(x, Batch(x, val.images[:8]))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_features_and_objectness_shapes(adapter, images, clean):
    x = images[:2]
    feats = adapter.features(x)  # dense: the whole image at dense_scale
    assert [tuple(f.shape) for f in feats] == [(2, 32, 64, 64), (2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    obj = adapter.objectness(x)
    assert [tuple(o.shape) for o in obj] == [(2, 1, 64, 64), (2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    assert all(float(o.min()) >= 0 and float(o.max()) <= 1 for o in obj)
    _, preds = clean
    boxes = [preds[r]["boxes"] for r in list(preds)[:2]]
    n = sum(len(b) for b in boxes)
    crops = adapter.features(x, boxes=boxes)
    assert [tuple(f.shape) for f in crops] == [(n, 32, 16, 16), (n, 64, 8, 8), (n, 128, 4, 4), (n, 256, 2, 2)]
    assert [tuple(o.shape) for o in adapter.objectness(x, boxes=boxes)] == [(n, 1, 16, 16), (n, 1, 8, 8), (n, 1, 4, 4), (n, 1, 2, 2)]


def test_predictions_and_shipped_model_ap(clean, val):
    metrics, preds = clean
    p = preds[val.images[0]["id"]]
    assert set(p) == {"keypoints", "scores", "boxes", "ann_ids"}
    assert p["keypoints"].dtype == np.float32 and p["keypoints"].shape == (len(p["boxes"]), 5, 2)
    assert p["scores"].shape == (len(p["boxes"]), 5) and len(p["ann_ids"]) == len(p["boxes"])
    assert set(metrics) == {"AP", "AP50", "AP75", "AR"}
    assert metrics["AP"] >= 0.6, metrics


def test_pseudo_ground_truth_of_itself_scores_one(adapter, images, val, clean):
    _, preds = clean
    before = set(Path(tempfile.gettempdir()).glob("icm-pseudo-*"))
    metrics, _ = _evaluate(adapter, images, val.images[:N_IMAGES], pseudo=preds)
    assert metrics["AP"] == pytest.approx(1.0)
    gc.collect()
    assert set(Path(tempfile.gettempdir()).glob("icm-pseudo-*")) <= before  # the pseudo-GT JSON went with the evaluator
    adapter.bind(val)  # drop the pseudo boxes again


def test_label_free_dataset_uses_whole_image_boxes(images, val):
    unlabelled = Dataset("unlabelled", val.root, "val", val.images[:4], {}, {})
    adapter = get_plugins().tasks.get("pose")(device="cpu").bind(unlabelled)
    x = images[:4]
    preds = adapter.predict(Batch(x, unlabelled.images))
    assert all(p["boxes"].shape == (1, 4) for p in preds)
    pseudo = {s["id"]: p for s, p in zip(unlabelled.images, preds)}
    ev = adapter.evaluator(pseudo)
    ev.process(adapter.predict(Batch(x, unlabelled.images)), unlabelled.images)
    assert ev.compute()["AP"] == pytest.approx(1.0)


def test_jpeg_quality_10_lowers_ap(adapter, images, val, clean):
    from icm.codecs import open_codec

    codec = open_codec("jpeg")
    decoded = []
    for img in images:
        u8 = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        decoded.append(torch.from_numpy(codec.decode(codec.encode(u8, quality=10))).permute(2, 0, 1))
    metrics, _ = _evaluate(adapter.bind(val), torch.stack(decoded).float().div(255), val.images[:N_IMAGES])
    assert metrics["AP"] < clean[0]["AP"] - 0.05, (metrics, clean[0])
