"""icm's cls accuracy on uncompressed images equals mmpretrain's own test loop (Runner.test with a
CustomDataset, the test pipeline and Accuracy)."""

import pytest
import torch

from icm.plugins import get_plugins
from icm_openmmlab.testing import shipped_config, shipped_weights

N = 24


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    torch.set_num_threads(1)
    return icm_shapes_val.dataset


def test_the_shipped_model_matches_mmpretrain(val, icm_assert_parity):
    rows = icm_assert_parity({"cls": get_plugins().tasks.get("cls")().bind(val)}, val.images[:N])
    top1 = next(r for r in rows if r["metric"] == "top1")
    assert top1["library_metric"] is not None and top1["icm"] > 0.5


def test_resize_edge_and_centre_crop_match_mmpretrain(val, icm_assert_parity):
    cls = get_plugins().tasks.get("cls")
    pipeline = [dict(type="LoadImageFromFile"), dict(type="ResizeEdge", scale=144, edge="short"),
                dict(type="CenterCrop", crop_size=128), dict(type="PackInputs")]
    adapter = cls(config=shipped_config(cls, test_pipeline=pipeline), checkpoint=shipped_weights(cls)).bind(val)
    rows = icm_assert_parity({"cls": adapter}, val.images[:N])
    assert next(r for r in rows if r["metric"] == "top1")["library_metric"] is not None


def test_the_differentiable_path_resizes_and_crops_as_the_library(val, icm_shapes_val, icm_batch):
    from icm_openmmlab.pipeline import to_uint8

    cls = get_plugins().tasks.get("cls")
    pipeline = [dict(type="LoadImageFromFile"), dict(type="ResizeEdge", scale=144, edge="short"),
                dict(type="CenterCrop", crop_size=100), dict(type="PackInputs")]
    adapter = cls(config=shipped_config(cls, test_pipeline=pipeline), checkpoint=shipped_weights(cls)).bind(val)
    batch = icm_batch(icm_shapes_val.pixels(2), val.images[:2])
    theirs, _ = adapter.library_inputs(to_uint8(batch.images), [adapter.image_info(s) for s in batch.samples])
    mine = adapter._inputs(batch.images)
    assert mine.shape == theirs.shape == (2, 3, 100, 100)
    assert (mine - theirs).abs().max() < 3 / 57


def test_the_shipped_config_declares_a_native_size_test_pipeline(val):
    adapter = get_plugins().tasks.get("cls")().bind(val)
    assert adapter.pipeline.declared and adapter.pipeline.native
