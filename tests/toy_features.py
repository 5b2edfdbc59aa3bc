"""Toy tasks for the feature path of `icm evaluate`: ``fcolour`` has a feature reader (it predicts from
the decoded split tensor), ``pcolour`` reads pixels only. Both score with toy_task's Closeness. Every
batch each one sees is logged in SEEN, so tests can check who got features and who got pixels."""

import torch

from icm import hookimpl
from toy_task import MeanColour

SEEN: list[tuple[str, str, tuple, tuple]] = []  # (task, consumes, tensor shape, batch.image_size)


class PixelColour(MeanColour):
    name = "pcolour"

    def predict(self, batch):
        SEEN.append((self.name, self.consumes, tuple(batch.images.shape), batch.image_size))
        return super().predict(batch)


class FeatureColour(PixelColour):
    name = "fcolour"

    def feature_reader(self, split, checkpoint=None, train=False):
        if split != "resnet18w32.layer1":
            return None
        reader = ColourFromFeatures()
        reader.split = split
        return reader


class ColourFromFeatures(FeatureColour):
    """Predicts a 'mean colour' from the features' first three channels (a stand-in for a back end)."""

    consumes = "features"

    def predict(self, batch):
        SEEN.append((self.name, self.consumes, tuple(batch.images.shape), batch.image_size))
        means = batch.images[:, :3].mean(dim=(2, 3))
        return [{"mean": m} for m in (means * 255).clamp(0, 255).numpy()]


def _blind_codec(**options):
    """icm-omni-features with untrained weights and no image decoder: a feature codec that gives no pixels."""
    from icm.codecs.omni_features import OmniFeaturesCodec

    class Blind(OmniFeaturesCodec):
        has_image_decoder = False

    return Blind(weights="random", name="toy-blind-features", device="cpu")


@hookimpl
def icm_register_codecs(register):
    register("toy-blind-features", _blind_codec, kind="features")


@hookimpl
def icm_register_tasks(register):
    register("fcolour", FeatureColour, metrics=["closeness"])
    register("pcolour", PixelColour, metrics=["closeness"])
