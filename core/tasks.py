"""The TaskAdapter interface: what a task plugin supplies to the core.

Pipelines only talk to this interface, so an OpenMMLab model, a torchvision model or a hand-written
one plug in the same way. See docs/plugins/tutorial.md.

Conventions shared by every adapter:
- pixels are float tensors (N, 3, H, W) in [0, 1], RGB: exactly what a codec decodes, and
  differentiable so codecs can be trained through the task;
- a batch is :class:`Batch`: the pixels plus the dataset records of those images (``id``,
  ``file_name``, ``width``, ``height``); ground truth is looked up by image id in the bound dataset;
- predictions are plain per-image python objects (dicts of numpy arrays / lists), so pipelines can
  cache them and use them as pseudo ground truth.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from icm.errors import UserError


@dataclass
class Batch:
    images: torch.Tensor  # pixels (N, 3, H, W) in [0, 1]; for a feature-reading task the split tensors (N, C, h, w)
    samples: list[dict]
    size: tuple[int, int] | None = None  # feature batches: (H, W) of the images, before any padding

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images: the pixels' size, or a feature batch's ``size`` (the images' own size; the
        codec computed the features from them padded, which the tensor's shape times its stride gives)."""
        return tuple(self.size) if self.size is not None else tuple(self.images.shape[-2:])


@dataclass
class LibraryTest:
    """What a task library's own test loop gave for some images (see ``TaskAdapter.library_test``)."""

    predictions: dict[int, Any]  # image id -> prediction in the adapter's own format
    metrics: dict[str, float]  # the library's metric as it reports it, in the adapter's names and units
    rounding: float = 0.0  # how far the reported metrics may be from the exact value (half the last printed digit)
    note: str = ""


class Evaluator(ABC):
    """Accumulate predictions, then compute a dict of metrics. ``primary`` names the headline metric."""

    primary: str = ""

    @abstractmethod
    def process(self, predictions: list[Any], samples: list[dict]) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...


class TaskAdapter(ABC):
    name: str = ""
    consumes: str = "pixels"  # or "features": the adapter reads a feature codec's decoded split tensor
    split: str | None = None  # what a feature reader reads: the split point named in feature bitstreams
    device: torch.device = torch.device("cpu")  # where predict/loss run; adapters set it from their model
    class_map: dict[str, str] = {}  # model class name -> dataset class name (``--class-map``); set by the caller
    label_free_unsupported: str | None = None  # why this task cannot score against pseudo ground truth, if it cannot
    # Tasks read from one model forward: adapters whose forward_key is equal (and not None) compute their
    # predictions from one forward per batch. `icm evaluate` calls them back to back on the same Batch
    # object, and such an adapter may reuse the outputs it computed for that object (det, inst and
    # panoptic on one PanopticFPN: icm-openmmlab's shared_forward).
    forward_key: object = None

    def __init__(self):
        self.dataset = None

    # Metrics are declared once, at ``register(name, factory, metrics=[...], primary=...)``, where
    # `icm tasks` reads them without importing the adapter; the adapter reads its registration. An
    # adapter registered with the values of its own class attributes sets these instead.
    @property
    def primary_metric(self) -> str:
        """The headline metric: plotted, and the one BD-rate and BD-metric are computed on."""
        return self.registration().get("primary", "")

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.registration().get("metrics", ()))

    def registration(self) -> dict:
        """The metadata this task was registered with (``{}`` when ``name`` is not registered)."""
        from icm.plugins import get_plugins

        tasks = get_plugins().tasks
        return dict(tasks.entry(self.name).meta) if self.name in tasks else {}

    def bind(self, dataset) -> "TaskAdapter":
        """Attach the dataset whose annotations ``loss`` and ``evaluator`` use."""
        self.dataset = dataset
        return self

    def check(self, label_free: bool = False) -> None:
        """Raise a UserError now if the bound dataset cannot be scored with this model (missing
        annotations, classes that do not match by name); called before any image is coded."""

    @abstractmethod
    def predict(self, batch: Batch) -> list[Any]:
        """Run the frozen task model; one prediction per image, in the original image size."""

    @abstractmethod
    def evaluator(self, pseudo_ground_truth: dict[int, Any] | None = None) -> Evaluator:
        """A fresh evaluator over the bound dataset. With ``pseudo_ground_truth`` (image id ->
        prediction on the uncompressed image) it scores against those instead of labels: the
        label-free mode for datasets without annotations."""

    @abstractmethod
    def loss(self, decoded: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The task's own training loss against ground truth, differentiable w.r.t. ``decoded``."""

    @abstractmethod
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Distillation targets (e.g. FPN levels for detection)."""

    def objectness(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Per-location importance maps, one (N, 1, h, w) per ``features`` level, or None."""
        return None

    def library_test(self, images: list[dict]) -> LibraryTest | None:
        """Run the task library's own evaluation (for OpenMMLab: its ``Runner.test()`` with the
        library's dataset class, test pipeline and metric) on these images of the bound dataset, for
        ``icm evaluate --check-parity``. None when the adapter has no such reference."""
        return None

    def settings_key(self) -> str:
        """What changes this adapter's predictions besides the model's weights (its test pipeline and
        test-time settings), as a short string: part of ``icm evaluate``'s prediction cache key, so a
        changed setting never reuses predictions made under the old one. "" when nothing does."""
        return ""

    @property
    def model(self) -> torch.nn.Module:
        """The underlying frozen network (training scripts unfreeze a copy)."""
        raise NotImplementedError

    def feature_reader(self, split: str, checkpoint: str | None = None, train: bool = False) -> "TaskAdapter | None":
        """This task reading the decoded tensor of a feature codec split at ``split``: a new adapter with
        ``consumes = "features"`` and ``split`` set, whose ``predict``/``loss``/``features`` take a
        :class:`Batch` of split tensors (``images``) and the image size (``size``). Its network is the
        back end: the rest of the task network from the split point on, with ``checkpoint``'s weights,
        else the back end the plugin ships for that split. ``train=True`` gives a trainable copy to
        fine-tune, starting from ``checkpoint`` or, without one, from the pixel model's own weights
        (where the shipped back end started: a re-run reproduces it). None when
        the task has no back end for that split: ``icm evaluate`` then gives it the feature codec's
        decoded pixels. See docs/plugins/tutorial.md."""
        return None


def split_weights(split: str):
    """The weights of a task model that computes the feature split ``split``, as a task plugin declares
    them: ``register(name, factory, split_weights={split: "package:path/in/package.pth"})``, a state dict
    whose ``backbone.*`` layers compute the split tensor (a feature codec's head starts from them). The
    first task, by name, that declares one; None when no installed plugin does."""
    from icm.paths import package_file
    from icm.plugins import get_plugins

    for entry in get_plugins().tasks.entries():
        declared = (entry.meta.get("split_weights") or {}).get(split)
        if declared:
            package, relative = declared.split(":", 1)
            return package_file(package, relative)
    return None


def match_classes(task: str, model: list[str], dataset: list[str], class_map: dict[str, str] | None = None) -> list[int | None]:
    """The dataset class index each model class is scored as (None: a class the dataset does not have,
    whose predictions are dropped), matched by name, never by position.

    ``class_map`` renames model classes to dataset classes first (several model classes may map to one).
    Every dataset class must receive a model class, otherwise it could never be predicted and the
    score would silently mean something else: that is one UserError line naming both lists.
    """
    class_map = class_map or {}
    index = {n: i for i, n in enumerate(dataset)}
    bad = [f"{m}={d}" for m, d in class_map.items() if m in model and d not in index]
    if bad:
        raise UserError(f"task {task}: --class-map {', '.join(bad)}: not a dataset class (dataset: {_names(dataset)})")
    mapping = [index.get(class_map.get(m, m)) for m in model]
    missing = [d for i, d in enumerate(dataset) if i not in set(mapping)]
    if missing:
        raise UserError(f"task {task}: the model's classes {_names(model)} do not cover the dataset's classes "
                        f"{_names(dataset)} (no model class for {_names(missing)}); classes are matched by name: "
                        f"rename them with --class-map MODEL=DATASET,... (or class_map in the experiment file)")
    return mapping


def _names(names: list[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > most else ''}]"
