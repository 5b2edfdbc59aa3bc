"""A tiny task plugin for pipeline tests: predicts each image's mean colour; the metric is how close
that is to the mean colour of the original image file (1 = identical). Fast, and it degrades with rate."""

import numpy as np
import torch

from icm import hookimpl
from icm.images import load_image
from icm.tasks import Evaluator, TaskAdapter


class MeanColour(TaskAdapter):
    name, primary_metric, metrics = "colour", "closeness", ("closeness",)
    device = torch.device("cpu")

    def __init__(self, config=None, checkpoint=None, device=None, scale=1.0):
        super().__init__()
        from pathlib import Path

        from icm.errors import UserError

        if config is not None and not Path(config).is_file():
            raise UserError(f"config {config}: no such file")
        self.net = torch.nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.net.weight.copy_(torch.eye(3).view(3, 3, 1, 1) * scale)

    @property
    def model(self):
        return self.net

    def predict(self, batch):
        return [{"mean": m} for m in self.net(batch.images).mean(dim=(2, 3)).mul(255).numpy()]

    def evaluator(self, pseudo_ground_truth=None):
        return Closeness(self, pseudo_ground_truth)

    def loss(self, decoded, batch):
        return self.net(decoded).mean()

    def features(self, x):
        return [self.net(x)]


class Closeness(Evaluator):
    primary = "closeness"

    def __init__(self, adapter, pseudo):
        self.adapter, self.pseudo, self.errors = adapter, pseudo, []

    def process(self, predictions, samples):
        for p, s in zip(predictions, samples):
            gt = self.pseudo[s["id"]]["mean"] if self.pseudo else load_image(s["file_name"]).reshape(-1, 3).mean(0)
            self.errors.append(float(np.abs(p["mean"] - gt).mean()))

    def compute(self):
        return {"closeness": 1 - float(np.mean(self.errors)) / 10}


class Brightness(MeanColour):
    name = "brightness"


@hookimpl
def icm_register_tasks(register):
    register("colour", MeanColour, metrics=["closeness"])
    register("brightness", Brightness, metrics=["closeness"])
