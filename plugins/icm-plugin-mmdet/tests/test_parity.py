"""icm's det, inst and panoptic accuracy on uncompressed images equals mmdet's own test loop
(Runner.test with CocoDataset / CocoPanopticDataset, the test pipeline and CocoMetric), for the
shipped model and for the shipped weights behind a resizing test pipeline."""

import pytest
import torch

from icm.errors import UserError
from icm.plugins import get_plugins
from icm_openmmlab.testing import shipped_config, shipped_weights

N = 12


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    torch.set_num_threads(1)
    return icm_shapes_val.dataset


def adapters(val, config=None):
    tasks = get_plugins().tasks
    kwargs = {} if config is None else {"config": config, "checkpoint": shipped_weights(tasks.get("det"))}
    return {t: tasks.get(t)(**kwargs).bind(val) for t in ("det", "inst", "panoptic")}


def test_the_shipped_model_matches_mmdet(val, icm_assert_parity):
    rows = icm_assert_parity(adapters(val), val.images[:N])
    det = {r["metric"]: r for r in rows if r["task"] == "det"}
    assert det["bbox_mAP"]["library_metric"] is not None and det["bbox_mAP"]["icm"] > 0.3


def test_a_resizing_test_pipeline_matches_mmdet_and_moves_the_numbers(val, icm_assert_parity):
    # 128 -> 200 px: not a multiple of 32, so the data preprocessor pads; boxes map back through scale_factor
    pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(200, 200), keep_ratio=True),
                dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]
    resized = icm_assert_parity(adapters(val, shipped_config(get_plugins().tasks.get("det"), test_pipeline=pipeline)),
                                val.images[:N])
    native = icm_assert_parity(adapters(val), val.images[:N])
    key = lambda rows: {(r["task"], r["metric"]): r["icm"] for r in rows}  # noqa: E731
    assert key(resized) != key(native)  # the pipeline is run, not ignored


def test_a_step_icm_cannot_run_is_refused_by_name(val):
    pipeline = [dict(type="LoadImageFromFile"), dict(type="RandomResize", scale=(200, 200), ratio_range=(0.5, 2.0)),
                dict(type="PackDetInputs")]
    with pytest.raises(UserError, match="RandomResize"):
        adapters(val, shipped_config(get_plugins().tasks.get("det"), test_pipeline=pipeline))


def test_the_differentiable_path_sees_the_pixels_the_library_sees(val, icm_shapes_val, icm_batch):
    """icm train's input (torch, differentiable) against the library's (cv2 on uint8): same size, within
    a grey level or two, and the loss and features run at that size."""
    from icm_openmmlab.pipeline import to_uint8

    pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(200, 200), keep_ratio=True),
                dict(type="Pad", size_divisor=64, pad_val=dict(img=(10, 20, 30))),
                dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]
    det = adapters(val, shipped_config(get_plugins().tasks.get("det"), test_pipeline=pipeline))["det"]
    batch = icm_batch(icm_shapes_val.pixels(2), val.images[:2])
    theirs, samples = det.library_inputs(to_uint8(batch.images), [det.image_info(s) for s in batch.samples])
    mine = det._inputs(batch.images)
    assert mine.shape == theirs.shape == (2, 3, 256, 256)  # 200 px, padded to 256 with the pipeline's colour
    assert (mine - theirs).abs().max() < 3 / 57  # at most ~2 grey levels (normalised units)
    assert samples[0].scale_factor == det.geometry((128, 128)).scale_factor
    x = batch.images.clone().requires_grad_(True)
    loss = det.loss(x, batch)
    loss.backward()
    assert torch.isfinite(loss) and x.grad.abs().sum() > 0
    assert det.features(batch.images)[0].shape[-2:] == (64, 64)  # stride 4 of the 256 px input


def test_the_shipped_config_declares_a_native_size_test_pipeline(val):
    adapter = get_plugins().tasks.get("det")().bind(val)
    assert adapter.pipeline.declared and adapter.pipeline.native


def test_the_shipped_pipeline_leaves_the_loss_at_the_native_size(val, icm_shapes_val, icm_batch):
    det = adapters(val)["det"]
    geo = det.geometry((128, 128))
    assert geo.resized == geo.img_shape == (128, 128) and geo.scale_factor == (1.0, 1.0)
    batch = icm_batch(icm_shapes_val.pixels(2), val.images[:2])
    assert torch.isfinite(det.loss(batch.images, batch))
