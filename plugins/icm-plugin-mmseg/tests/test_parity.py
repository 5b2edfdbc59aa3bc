"""icm's seg accuracy on uncompressed images equals mmseg's own test loop (Runner.test with a
BaseSegDataset, the test pipeline, the model's whole or slide inference and IoUMetric)."""

import pytest
import torch

from icm.plugins import get_plugins
from icm_openmmlab.testing import shipped_config, shipped_weights

N = 12


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    torch.set_num_threads(1)
    return icm_shapes_val.dataset


def test_the_shipped_model_matches_mmseg(val, icm_assert_parity):
    rows = icm_assert_parity({"seg": get_plugins().tasks.get("seg")().bind(val)}, val.images[:N])
    assert rows[0]["library_metric"] is not None and rows[0]["icm"] > 0.5


def test_slide_inference_behind_a_resize_matches_mmseg(val, icm_assert_parity):
    cls = get_plugins().tasks.get("seg")
    pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(192, 192), keep_ratio=True),
                dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    config = shipped_config(cls, test_pipeline=pipeline, test_cfg=dict(mode="slide", crop_size=(64, 64), stride=(48, 48)))
    adapter = cls(config=config, checkpoint=shipped_weights(cls)).bind(val)
    slide = icm_assert_parity({"seg": adapter}, val.images[:N])
    native = icm_assert_parity({"seg": cls().bind(val)}, val.images[:N])
    assert slide[0]["icm"] != native[0]["icm"]


def test_the_loss_follows_a_resize_and_a_crop_is_refused(val, icm_shapes_val, icm_batch):
    from icm.errors import UserError

    cls = get_plugins().tasks.get("seg")
    resize = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(96, 96), keep_ratio=True),
              dict(type="PackSegInputs")]
    adapter = cls(config=shipped_config(cls, test_pipeline=resize), checkpoint=shipped_weights(cls)).bind(val)
    batch = icm_batch(icm_shapes_val.pixels(2), val.images[:2])
    x = batch.images.clone().requires_grad_(True)
    loss = adapter.loss(x, batch)
    loss.backward()
    assert torch.isfinite(loss) and x.grad.abs().sum() > 0
    assert adapter.logits(batch.images).shape[-2:] == (24, 24)  # stride 4 of 96 px
    crop = [dict(type="LoadImageFromFile"), dict(type="CenterCrop", crop_size=96), dict(type="PackSegInputs")]
    with pytest.raises(UserError, match="CenterCrop"):
        cls(config=shipped_config(cls, test_pipeline=crop), checkpoint=shipped_weights(cls)).bind(val).loss(x, batch)


def test_the_shipped_config_declares_a_native_size_test_pipeline(val):
    adapter = get_plugins().tasks.get("seg")().bind(val)
    assert adapter.pipeline.declared and adapter.pipeline.native


def test_the_shipped_pipeline_leaves_the_loss_at_the_native_size(val, icm_shapes_val, icm_batch):
    adapter = get_plugins().tasks.get("seg")().bind(val)
    assert adapter.geometry((128, 128)).resized == (128, 128)
    batch = icm_batch(icm_shapes_val.pixels(2), val.images[:2])
    assert torch.isfinite(adapter.loss(batch.images, batch))
