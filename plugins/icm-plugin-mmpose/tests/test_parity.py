"""icm's pose accuracy on uncompressed images equals mmpose's own test loop (Runner.test with its
top-down CocoDataset on ground-truth boxes, GetBBoxCenterScale + TopdownAffine, the flip test as
configured and its CocoMetric)."""

import pytest
import torch

from icm.plugins import get_plugins
from icm_openmmlab.testing import shipped_config, shipped_weights

N = 16


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    torch.set_num_threads(1)
    return icm_shapes_val.dataset


def test_the_shipped_model_with_its_flip_test_matches_mmpose(val, icm_assert_parity):
    adapter = get_plugins().tasks.get("pose")().bind(val)
    assert adapter.cfg.model.test_cfg.flip_test
    rows = icm_assert_parity({"pose": adapter}, val.images[:N])
    ap = next(r for r in rows if r["metric"] == "AP")
    assert ap["library_metric"] is not None and ap["icm"] > 0.5


@pytest.mark.parametrize("test_cfg", [dict(flip_test=False), dict(flip_test=True, shift_heatmap=False)])
def test_other_test_time_settings_match_mmpose(val, icm_assert_parity, test_cfg):
    cls = get_plugins().tasks.get("pose")
    adapter = cls(config=shipped_config(cls, test_cfg=test_cfg), checkpoint=shipped_weights(cls)).bind(val)
    icm_assert_parity({"pose": adapter}, val.images[:N])


def test_the_shipped_config_declares_its_test_pipeline_and_settings_key_the_cache(val):
    from icm.evaluation.cache import model_key

    cls = get_plugins().tasks.get("pose")
    shipped = cls().bind(val)
    assert shipped.pipeline.declared and set(shipped.pipeline.geometry) == {"GetBBoxCenterScale", "TopdownAffine"}
    same = cls(config=shipped_config(cls), checkpoint=shipped_weights(cls))
    no_flip = cls(config=shipped_config(cls, test_cfg=dict(flip_test=False)), checkpoint=shipped_weights(cls))
    assert model_key(same) == model_key(shipped)
    assert model_key(no_flip) != model_key(shipped)  # same weights, other predictions: another cache folder
    assert model_key(no_flip).split("-")[1] == model_key(shipped).split("-")[1]  # the weights hash
