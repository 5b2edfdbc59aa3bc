"""The `seg` adapter on the shapes benchmark with the shipped weights (a few seconds of CPU)."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from icm.errors import UserError
from icm.plugins import get_plugins
from icm.tasks import Batch
from icm.testing import batch_of

N = 16


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    return icm_shapes_val.dataset


@pytest.fixture(scope="module")
def adapter(val):
    torch.set_num_threads(1)
    return get_plugins().tasks.get("seg")().bind(val)


@pytest.fixture(scope="module")
def pixels(icm_shapes_val):
    return icm_shapes_val.pixels(N)


def score(adapter, images_u8, records, pseudo=None):
    ev = adapter.evaluator(pseudo)
    batch = batch_of(images_u8, records)
    ev.process(adapter.predict(batch), batch.samples)
    return ev.compute()


def test_registered_by_the_mmseg_plugin():
    entry = get_plugins().tasks.entry("seg")
    assert entry.plugin == "mmseg"
    assert entry.meta["primary"] == "mIoU"


def test_loss_is_finite_and_reaches_the_pixels(adapter, val, pixels):
    batch = batch_of(pixels[:2], val.images[:2])
    x = batch.images.clone().requires_grad_(True)
    loss = adapter.loss(x, batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in adapter.model.parameters())  # the task net stays frozen


def test_features_and_objectness_shapes(adapter, val, pixels):
    x = batch_of(pixels[:2], val.images[:2]).images
    feats = adapter.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 128 // s, 128 // s) for s in (4, 8, 16, 32)]
    obj = adapter.objectness(x)
    assert [tuple(o.shape) for o in obj] == [(2, 1, 128 // s, 128 // s) for s in (4, 8, 16, 32)]
    assert all(((o >= 1 / 6 - 1e-6) & (o <= 1 + 1e-6)).all() for o in obj)  # max softmax of 6 classes


def test_shipped_model_reaches_miou(adapter, val, pixels, capsys):
    capsys.readouterr()
    metrics = score(adapter, pixels, val.images[:N])
    assert set(metrics) == {"mIoU", "aAcc", "mAcc"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["mIoU"] >= 0.7, metrics
    assert capsys.readouterr().out == ""  # IoUMetric's per-class table is silenced


def test_pseudo_ground_truth_of_its_own_predictions_scores_one(adapter, val, pixels):
    records = val.images[:4]
    preds = adapter.predict(batch_of(pixels[:4], records))
    pseudo = {r["id"]: p for r, p in zip(records, preds)}
    metrics = score(adapter, pixels[:4], records, pseudo)
    assert metrics == {"mIoU": 1.0, "aAcc": 1.0, "mAcc": 1.0}


def test_jpeg_quality_10_lowers_miou(adapter, val, pixels):
    from icm.codecs import open_codec

    jpeg = open_codec("jpeg")
    coded = np.stack([jpeg.decode(jpeg.encode(im, quality=10)) for im in pixels])
    clean = score(adapter, pixels, val.images[:N])["mIoU"]
    lossy = score(adapter, coded, val.images[:N])["mIoU"]
    assert lossy < clean


def test_odd_sizes_are_padded_and_cropped_back(adapter, val, pixels):
    records = [{**r, "width": 100, "height": 90} for r in val.images[:2]]
    x = batch_of(pixels[:2, :90, :100], records).images
    preds = adapter.predict(Batch(x, records))
    assert preds[0]["sem_seg"].shape == (90, 100) and preds[0]["sem_seg"].dtype == np.uint8
    assert adapter.objectness(x)[0].shape[-2:] == (24, 32)  # stride 4 of the 96x128 padded input


def test_missing_semantic_annotations_are_a_user_error(adapter, val, pixels):
    bare = dataclasses.replace(val, annotations={k: v for k, v in val.annotations.items() if k != "semantic_dir"})
    seg = copy.copy(adapter).bind(bare)  # the shared adapter stays bound to val
    batch = batch_of(pixels[:1], val.images[:1])
    with pytest.raises(UserError, match="no semantic annotations"):
        seg.loss(batch.images, batch)
    with pytest.raises(UserError, match="no semantic annotations"):
        ev = seg.evaluator()
        ev.process(seg.predict(batch), batch.samples)


def test_classes_are_matched_by_name_not_by_label_value(adapter, val, pixels, tmp_path):
    """A dataset whose label values follow another class order scores the same; renamed classes are
    refused in one line naming both lists, unless mapped (issue 9)."""
    from PIL import Image

    records = val.images[:N]
    names = list(val.meta["semantic_classes"])
    order = names[::-1]  # the same classes, label values in reverse order
    lut = np.full(256, 255, np.uint8)
    lut[: len(names)] = [order.index(n) for n in names]
    for r in records:
        src = val.semantic_path(r)
        dst = tmp_path / src.relative_to(val.annotations["semantic_dir"])
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(lut[np.asarray(Image.open(src))]).save(dst)
    permuted = dataclasses.replace(val, annotations={**val.annotations, "semantic_dir": tmp_path},
                                   meta={**val.meta, "semantic_classes": order})
    a = get_plugins().tasks.get("seg")()
    a.bind(permuted).check()
    assert score(a, pixels, records)["mIoU"] == pytest.approx(score(adapter, pixels, records)["mIoU"], abs=1e-6)
    renamed = dataclasses.replace(val, meta={**val.meta, "semantic_classes": [n.upper() for n in names]})
    with pytest.raises(UserError) as exc:
        a.bind(renamed).check()
    assert "\n" not in str(exc.value) and "[wall, ground, disc" in str(exc.value) and "[WALL, GROUND" in str(exc.value)
    a.class_map = {n: n.upper() for n in names}
    a.bind(renamed).check()
    a.bind(val)
