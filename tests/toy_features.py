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
    """Predicts the mean colour from the features through a 1x1 convolution (32 -> 3), a stand-in
    for a back end; ``loss`` is its error against the images' true mean colour, so it can train."""

    consumes = "features"

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.head = torch.nn.Conv2d(32, 3, 1)

    @property
    def model(self):
        return self.head

    def _colours(self, features):
        return self.head(features).mean(dim=(2, 3))

    def predict(self, batch):
        SEEN.append((self.name, self.consumes, tuple(batch.images.shape), batch.image_size))
        with torch.no_grad():
            return [{"mean": m} for m in (self._colours(batch.images) * 255).clamp(0, 255).numpy()]

    def loss(self, decoded, batch):
        from icm.images import load_image

        truth = torch.tensor([load_image(s["file_name"]).reshape(-1, 3).mean(0) / 255 for s in batch.samples])
        return ((self._colours(decoded) - truth.float()) ** 2).mean()


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
