"""The TaskAdapter interface: what a task plugin (icm-plugin-mmdet, ...) supplies to the core.

Pipelines only talk to this interface, so an OpenMMLab model, a torchvision model or a hand-written
one plug in the same way. See docs/plugins/tutorial.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Evaluator(ABC):
    """Accumulate predictions, then compute a dict of metrics. ``primary`` names the headline metric."""

    primary: str = ""

    @abstractmethod
    def process(self, predictions: Any, batch: Any) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...


class TaskAdapter(ABC):
    name: str = ""
    consumes: str = "pixels"  # "pixels" now; "features" for adapters that read decoded features
    metrics: tuple[str, ...] = ()

    @abstractmethod
    def predict(self, batch: Any) -> Any:
        """Run the frozen task model on a batch of decoded images."""

    @abstractmethod
    def evaluator(self, pseudo_ground_truth: Any = None) -> Evaluator:
        """A fresh evaluator; with ``pseudo_ground_truth`` (predictions on the uncompressed images)
        it scores against those instead of labels, for datasets without labels."""

    @abstractmethod
    def loss(self, decoded: torch.Tensor, batch: Any) -> torch.Tensor:
        """The task's own training loss against ground truth, differentiable w.r.t. ``decoded``."""

    @abstractmethod
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Distillation targets (e.g. FPN levels for detection)."""

    def objectness(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Per-location importance maps aligned with ``features`` (None when the task has none)."""
        return None
