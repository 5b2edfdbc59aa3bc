"""The ``edges`` task: a fixed Sobel filter is the "model", its thresholded gradient magnitude the
prediction, and the ground truth is the edge map of the original image file. A codec that keeps
the edges a machine would see scores 1.0; blocking, ringing and blur lower the score.

Everything a real adapter has is here, small enough to read in one go:

- ``predict``   -> one plain object per image: ``{"edges": bool array (H, W)}``
- ``evaluator`` -> mean per-image F1 and IoU, against labels or against pseudo ground truth
- ``loss``      -> differentiable w.r.t. the decoded pixels (a soft edge map vs the true edges)
- ``features``  -> the gradient magnitude at two scales; ``objectness`` -> soft edge maps per level
- ``model``     -> the frozen network, whose ``state_dict`` keys icm's prediction cache
- ``feature_reader`` -> the same task on a feature codec's decoded split tensor (docs/plugins/tutorial.md,
  "Reading features"): a one-layer back end that maps the 32 features of ``resnet18w32.layer1`` to
  edge logits at stride 4, trained with ``icm train`` (``backend = "edges"``), never shipped here
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icm.errors import UserError
from icm.images import load_image
from icm.tasks import Batch, Evaluator, TaskAdapter

DEFAULT_THRESHOLD = 0.2  # gradient magnitude; a 0 -> 1 step in one channel is 1.0
TEMPERATURE = 0.05  # softness of the edge map used by ``loss`` and ``objectness``


class Sobel(torch.nn.Module):
    """RGB [0, 1] (N, 3, H, W) -> colour gradient magnitude (N, 1, H, W): the root of the summed
    squares of the horizontal and vertical Sobel responses of the three channels. A step of 1.0 in
    one channel gives 1.0.

    The kernels and the threshold are buffers, so they are part of ``state_dict()``: icm keys its
    prediction cache by a hash of the state dict, and a different threshold must not reuse
    predictions made with the old one.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        super().__init__()
        gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
        self.register_buffer("kernels", torch.stack([gx, gx.t()] * 3)[:, None])  # (6, 1, 3, 3): x, y per channel
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernels, groups=3)
        return torch.sqrt(g.pow(2).sum(dim=1, keepdim=True) + 1e-12)  # eps: finite gradient on flat areas


class EdgeAdapter(TaskAdapter):
    name = "edges"
    description = "Sobel edge maps (example plugin), mean edge F1 / IoU against the original image"
    primary_metric = "edge_f1"
    metrics = ("edge_f1", "edge_iou")

    def __init__(self, config=None, checkpoint=None, device=None):
        """``config``: a JSON file (or a dict) such as ``{"threshold": 0.2}``; ``checkpoint``: a
        state-dict file of :class:`Sobel`. Both arrive from ``--task edges=CONFIG[:CHECKPOINT]``."""
        super().__init__()
        settings = _read_config(config)
        net = Sobel()
        if checkpoint is not None:
            net.load_state_dict(_read_state_dict(checkpoint, net))
        if "threshold" in settings:
            net.threshold.fill_(float(settings["threshold"]))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net.to(self.device).eval().requires_grad_(False)
        self._truth: dict[str, np.ndarray] = {}  # file name -> edge map of the original image

    # -- what icm calls ------------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self.net

    def bind(self, dataset) -> "EdgeAdapter":
        # The ground truth of this task is the image file itself, so any dataset works; an adapter
        # that needs annotations checks for them here (or lazily) and raises UserError if missing.
        self._truth.clear()
        return super().bind(dataset)

    def predict(self, batch: Batch) -> list[dict]:
        with torch.no_grad():
            edges = (self.net(batch.images.to(self.device)) > self.net.threshold)[:, 0].cpu().numpy()
        # one plain object per image, cropped to the image's own size (a batch may be padded)
        return [{"edges": e[: s["height"], : s["width"]].copy()} for e, s in zip(edges, batch.samples)]

    def evaluator(self, pseudo_ground_truth: dict[int, dict] | None = None) -> "EdgeEvaluator":
        return EdgeEvaluator(self, pseudo_ground_truth)

    def loss(self, decoded: torch.Tensor, batch: Batch) -> torch.Tensor:
        target = torch.stack([torch.from_numpy(self.true_edges(s)) for s in batch.samples]).float()
        target = target[:, None].to(decoded.device)
        soft = (self.net(decoded) - self.net.threshold) / TEMPERATURE  # logits of "is an edge"
        return F.binary_cross_entropy_with_logits(soft, target)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        magnitude = self.net(x)
        return [magnitude, F.avg_pool2d(magnitude, 2, ceil_mode=True)]

    def objectness(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.sigmoid((f - self.net.threshold) / TEMPERATURE) for f in self.features(x)]

    def feature_reader(self, split, checkpoint=None, train=False):
        if split != FEATURE_SPLIT or (checkpoint is None and not train):
            return None  # no back end for this split (icm evaluate then gives this task decoded pixels)
        reader = EdgesFromFeatures(self, checkpoint)
        reader.bind(self.dataset)
        return reader

    # -- ground truth --------------------------------------------------------------------------------
    def true_edges(self, sample: dict) -> np.ndarray:
        """The edge map of the original image file of ``sample`` (a dataset record)."""
        key = sample["file_name"]
        if key not in self._truth:
            image = load_image(key)
            x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().div(255)
            self._truth[key] = self.predict(Batch(x, [sample]))[0]["edges"]
        return self._truth[key]


FEATURE_SPLIT = "resnet18w32.layer1"  # 32 channels at stride 4 (icm-omni-features, hevc-features)


class EdgesFromFeatures(EdgeAdapter):
    """``edges`` reading features: a 1x1 convolution gives edge logits at stride 4, upsampled to the
    image. ``batch.images`` holds the split tensors, ``batch.image_size`` the images' own size."""

    consumes, split = "features", FEATURE_SPLIT

    def __init__(self, pixels: EdgeAdapter, checkpoint=None):
        TaskAdapter.__init__(self)
        self.device, self._truth, self.pixel_net = pixels.device, pixels._truth, pixels.net
        self.net = torch.nn.Conv2d(32, 1, 1).to(self.device)
        if checkpoint is not None:
            self.net.load_state_dict(_read_state_dict(checkpoint, self.net))

    def _logits(self, batch: Batch) -> torch.Tensor:
        h, w = batch.image_size
        up = F.interpolate(self.net(batch.images.to(self.device)), scale_factor=4, mode="bilinear")
        return up[..., :h, :w]

    def predict(self, batch: Batch) -> list[dict]:
        with torch.no_grad():
            edges = (self._logits(batch) > 0)[:, 0].cpu().numpy()
        return [{"edges": e[: s["height"], : s["width"]].copy()} for e, s in zip(edges, batch.samples)]

    def loss(self, decoded: torch.Tensor, batch: Batch) -> torch.Tensor:
        target = torch.stack([torch.from_numpy(self.true_edges(s)) for s in batch.samples]).float()[:, None]
        return F.binary_cross_entropy_with_logits(self._logits(Batch(decoded, batch.samples, batch.size)),
                                                  target.to(decoded.device))

    def features(self, x):
        return [self.net(x)]

    def objectness(self, x):
        return [torch.sigmoid(self.net(x))]

    def true_edges(self, sample: dict) -> np.ndarray:  # the ground truth comes from the pixel model
        key = sample["file_name"]
        if key not in self._truth:
            image = torch.from_numpy(load_image(key).copy()).permute(2, 0, 1)[None].float().div(255)
            self._truth[key] = (self.pixel_net(image.to(self.device)) > self.pixel_net.threshold)[0, 0].cpu().numpy()
        return self._truth[key]


class EdgeEvaluator(Evaluator):
    primary = "edge_f1"

    def __init__(self, adapter: EdgeAdapter, pseudo_ground_truth=None):
        self.adapter, self.pseudo = adapter, pseudo_ground_truth
        self.f1: list[float] = []
        self.iou: list[float] = []

    def process(self, predictions, samples):
        for pred, sample in zip(predictions, samples):
            if self.pseudo is not None:  # label-free: the prediction on the uncompressed image
                truth = self.pseudo[sample["id"]]["edges"]
            else:
                truth = self.adapter.true_edges(sample)
            got = pred["edges"]
            if got.shape != truth.shape:
                raise UserError(f"edges: image {sample['id']}: prediction {got.shape} vs ground truth {truth.shape}")
            tp = float(np.logical_and(got, truth).sum())
            fp, fn = float(got.sum()) - tp, float(truth.sum()) - tp
            # no edges anywhere and none predicted is a perfect answer
            self.f1.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
            self.iou.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))

    def compute(self) -> dict[str, float]:
        if not self.f1:
            return {"edge_f1": float("nan"), "edge_iou": float("nan")}
        return {"edge_f1": float(np.mean(self.f1)), "edge_iou": float(np.mean(self.iou))}


def _read_config(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, dict):
        data = dict(config)
    else:
        path = Path(config)
        try:
            data = json.loads(path.read_text())
        except OSError:
            raise UserError(f"edges config {path}: no such file") from None
        except ValueError as exc:
            raise UserError(f"edges config {path}: not valid JSON ({exc})") from None
    unknown = sorted(set(data) - {"threshold"})
    if unknown:
        raise UserError(f"edges config: unknown key(s) {', '.join(unknown)} (known: threshold)")
    return data


def _read_state_dict(checkpoint, net: torch.nn.Module) -> dict:
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"edges checkpoint {path}: no such file")
    try:  # weights_only: a user's file never gets arbitrary unpickling
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"edges checkpoint {path}: cannot load ({type(exc).__name__})") from None
    if not isinstance(state, dict) or set(state) != set(net.state_dict()):
        raise UserError(f"edges checkpoint {path}: not a state dict of the {type(net).__name__} model")
    return state
