"""The test pipeline on decoded pixels (icm_openmmlab.pipeline), built from mmdet's transforms: which
steps run, which are refused in one line, and the differentiable geometry read off them."""

import numpy as np
import pytest
import torch
from mmengine.config import Config

from icm.errors import UserError
from icm_openmmlab.pipeline import TestPipeline, configured_steps, to_uint8

PACK = dict(type="PackDetInputs", meta_keys=("img_id", "img_shape", "ori_shape", "scale_factor"))


def config(pipeline, wrapped: bool = False) -> Config:
    dataset = dict(type="CocoDataset", pipeline=pipeline)
    return Config(dict(test_dataloader=dict(dataset=dict(type="RepeatDataset", dataset=dataset) if wrapped else dataset)))


def test_the_steps_are_found_through_wrapper_datasets_and_loading_is_left_to_icm():
    steps = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(64, 64), keep_ratio=False), PACK]
    assert configured_steps(config(steps, wrapped=True)) == steps
    pipeline = TestPipeline(config(steps, wrapped=True), "mmdet", "det")
    assert [s["type"] for s in pipeline.steps] == ["Resize", "PackDetInputs"]
    assert pipeline.declared and pipeline.geometry == ["Resize"] and not pipeline.native


def test_a_config_without_a_pipeline_reads_the_image_at_its_native_size():
    pipeline = TestPipeline(Config(dict()), "mmdet", "det")
    assert not pipeline.declared and pipeline.native and [s["type"] for s in pipeline.steps] == ["PackDetInputs"]


@pytest.mark.parametrize("step, why", [("RandomFlip", "flips at random"), ("TestTimeAug", "test-time augmentation"),
                                       ("PhotoMetricDistortion", "not a geometric step")])
def test_a_step_that_cannot_run_on_decoded_pixels_is_refused_in_one_line(step, why):
    with pytest.raises(UserError, match=f"task det: test pipeline step {step} cannot be run") as info:
        TestPipeline(config([dict(type=step), PACK]), "mmdet", "det")
    assert why in str(info.value) and "\n" not in str(info.value)


def test_the_pixels_go_through_the_library_transforms_and_the_geometry_follows_them_in_torch():
    pipeline = TestPipeline(config([dict(type="Resize", scale=(64, 48), keep_ratio=False), PACK]), "mmdet", "det")
    rgb = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    packed = pipeline(rgb, img_id=7)
    assert tuple(packed["inputs"].shape) == (3, 48, 64) and packed["data_samples"].img_id == 7
    geometry = pipeline.trace((96, 128))
    assert geometry.resized == (48, 64) and geometry.scale_factor == (0.5, 0.5) and not geometry.crops
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    ours = to_uint8(geometry(x))[0]
    theirs = packed["inputs"].permute(1, 2, 0).numpy()[..., ::-1]  # the library's BGR back to RGB
    assert ours.shape == theirs.shape and np.abs(ours.astype(int) - theirs.astype(int)).mean() < 2
