"""`pose` reading the split tensor of icm-omni-features (``feature_reader``): the person boxes are cut
out of the split tensor (stride 4) instead of the pixels; a trainable back end started from the pixel
model's weights predicts keypoints in image coordinates, its evaluator scores them, and its loss
reaches the features and the back end."""

import numpy as np
import pytest
import torch

from icm.plugins import get_plugins
from icm.paths import package_file
from icm.tasks import Batch

SPLIT = "resnet18w32.layer1"
N = 6


@pytest.fixture(scope="module")
def val(icm_shapes_val):
    return icm_shapes_val.dataset


@pytest.fixture(scope="module")
def adapter(val):
    torch.set_num_threads(1)
    return get_plugins().tasks.get("pose")(device="cpu").bind(val)


@pytest.fixture(scope="module")
def reader(adapter):
    return adapter.feature_reader(SPLIT, train=True)


@pytest.fixture(scope="module")
def features(icm_shapes_val):
    return icm_shapes_val.features(N)


def test_reader_is_a_new_trainable_pose_adapter(adapter, reader, val):
    assert type(reader) is type(adapter) and reader.consumes == "features" and reader.split == SPLIT
    assert reader.model is not adapter.model and reader.forward_key is None and reader.dataset is val
    assert "forward" not in adapter.model.backbone.__dict__
    assert reader.model.backbone.layer3[0].conv1.weight.requires_grad
    assert not reader.model.backbone.conv1.weight.requires_grad  # the stem is not part of the back end


def test_feature_crops_sit_where_the_pixel_crops_stride_4_cells_do(reader, adapter):
    """A linear ramp image and the ramp a stride-4 split tensor of it would carry (cell v centred on
    pixel 4v): the feature crop's cell v' must hold the value of the pixel crop's pixel 4v'
    (bilinear sampling of a linear function is exact away from the borders)."""
    size = 256
    ramp = torch.arange(size, dtype=torch.float32)
    image = torch.stack([ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size)])[None]
    cells = image[..., ::4, ::4]  # (1, 2, 64, 64): the pixel coordinates of the cell centres
    squares = np.array([[60.0, 70.5, 40.0], [80.25, 50.0, 100.0], [100.0, 100.0, 64.0]], np.float32)
    from torchvision.ops import roi_align

    rois = torch.tensor([[0, x, y, x + s, y + s] for x, y, s in squares], dtype=torch.float32)
    pixel = roi_align(image, rois, output_size=(64, 64), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    got = reader._crop(cells, [0] * len(squares), squares)
    assert tuple(got.shape) == (3, 2, 16, 16)
    torch.testing.assert_close(got, pixel[..., ::4, ::4], atol=1e-3, rtol=0)


def test_predictions_in_image_coordinates_and_scored(reader, features):
    preds = reader.predict(features)
    assert len(preds) == N
    for p, s in zip(preds, features.samples):
        assert set(p) == {"keypoints", "scores", "boxes", "ann_ids"}
        assert p["keypoints"].dtype == np.float32 and p["keypoints"].shape == (len(p["boxes"]), 5, 2)
        assert p["scores"].shape == (len(p["boxes"]), 5)
        x, y, w, h = (p["boxes"][:, i:i + 1] for i in range(4))  # keypoints near their boxes
        side = np.maximum(w, h) * reader.box_padding
        assert (np.abs(p["keypoints"][..., 0] - (x + w / 2)) <= side).all()
        assert (np.abs(p["keypoints"][..., 1] - (y + h / 2)) <= side).all()
    assert sum(len(p["boxes"]) for p in preds) > 0
    ev = reader.evaluator()
    ev.process(preds, features.samples)
    metrics = ev.compute()
    assert set(metrics) == {"AP", "AP50", "AP75", "AR"} and all(0.0 <= v <= 1.0 for v in metrics.values())


def test_loss_reaches_the_features_and_the_back_end(reader, features):
    f = features.images[:4].clone().requires_grad_(True)
    reader.model.train()
    try:
        loss = reader.loss(f, Batch(f, features.samples[:4], size=features.size))
    finally:
        reader.model.eval()
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert reader.model.backbone.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert reader.model.head.final_layer.weight.grad.abs().sum() > 0


def test_features_and_objectness_of_the_split_tensor(reader, features):
    f = features.images[:2]
    feats = reader.features(f)  # dense: the split tensor upsampled by dense_scale, as the pixels are
    assert [tuple(x.shape) for x in feats] == [(2, 32, 64, 64), (2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    obj = reader.objectness(f)
    assert [tuple(o.shape) for o in obj] == [(2, 1, 64, 64), (2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    boxes = [np.array([[10, 20, 30, 40]], np.float32), np.array([[50, 50, 20, 20], [0, 0, 128, 128]], np.float32)]
    crops = reader.features(f, boxes=boxes)
    assert [tuple(x.shape) for x in crops] == [(3, 32, 16, 16), (3, 64, 8, 8), (3, 128, 4, 4), (3, 256, 2, 2)]


def test_unknown_split_or_no_weights_gives_no_reader(adapter):
    assert adapter.feature_reader("resnet50.layer3") is None
    assert adapter.feature_reader("resnet50.layer3", train=True) is None
    shipped = adapter.feature_reader(SPLIT)  # the back end the plugin ships (feature_backends)
    assert shipped.consumes == "features" and shipped.split == SPLIT and shipped.model is not adapter.model
    # a user's own model (any config or checkpoint given): no shipped back end fits it, no reader
    own = type(adapter)(config=adapter._config_source, checkpoint=str(package_file(adapter._package(), adapter.default_weights)),
                      device="cpu")
    assert own.feature_reader(SPLIT) is None
