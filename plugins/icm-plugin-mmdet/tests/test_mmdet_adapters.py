"""det / inst / panoptic adapters on the shapes benchmark with the shipped PanopticFPN weights."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from icm.codecs import open_codec
from icm.plugins import get_plugins
from icm.testing import batch_of

N = 24
TARGETS = {"det": 0.6, "inst": 0.5, "panoptic": 0.5}


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    return icm_shapes_val.dataset


@pytest.fixture(scope="module")
def adapters(val):
    torch.set_num_threads(1)
    return {t: get_plugins().tasks.get(t)().bind(val) for t in TARGETS}


@pytest.fixture(scope="module")
def pixels(icm_shapes_val):
    return icm_shapes_val.pixels(N)


def score(adapter, images_u8, records, pseudo=None):
    ev = adapter.evaluator(pseudo_ground_truth=pseudo)
    preds = []
    for i in range(0, len(records), 8):
        b = batch_of(images_u8[i:i + 8], records[i:i + 8])
        p = adapter.predict(b)
        preds += p
        ev.process(p, b.samples)
    return ev.compute(), preds


def test_registered_by_the_mmdet_plugin():
    for t in TARGETS:
        assert get_plugins().tasks.entry(t).plugin == "mmdet"


@pytest.mark.parametrize("task", list(TARGETS))
def test_shipped_model_reaches_target_and_jpeg_hurts(task, adapters, val, pixels):
    a, records = adapters[task], val.images[:N]
    clean, preds = score(a, pixels, records)
    assert clean[a.primary_metric] >= TARGETS[task], clean
    jpeg = open_codec("jpeg")
    degraded = np.stack([jpeg.decode(jpeg.encode(p, quality=5)) for p in pixels])
    assert score(a, degraded, records)[0][a.primary_metric] < clean[a.primary_metric]
    # label-free: predictions scored against themselves are perfect
    pseudo = {r["id"]: p for r, p in zip(records, preds)}
    before = set(Path(tempfile.gettempdir()).glob("icm-pseudo-*"))
    self_score, _ = score(a, pixels, records, pseudo=pseudo)
    assert self_score[a.primary_metric] == pytest.approx(1.0, abs=1e-6)
    assert set(Path(tempfile.gettempdir()).glob("icm-pseudo-*")) <= before  # the pseudo-GT JSON is not left behind


def test_loss_reaches_the_pixels_features_and_rpn_objectness(adapters, val, pixels):
    a = adapters["det"]
    b = batch_of(pixels[:2], val.images[:2])
    x = b.images.clone().requires_grad_(True)
    loss = a.loss(x, b)
    loss.backward()
    assert torch.isfinite(loss) and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in a.model.parameters())
    feats = a.features(b.images)
    obj = a.objectness(b.images)
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2] and all(f.shape[1] == 64 for f in feats)
    assert [o.shape for o in obj] == [(2, 1, f.shape[-2], f.shape[-1]) for f in feats]
    assert all(0 <= float(o.min()) and float(o.max()) <= 1 for o in obj)
