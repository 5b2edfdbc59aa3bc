"""The CompressAI image architectures icm registers, as plain data (no torch import), so the codec
registry can list them without loading anything: name -> (qualities, total downsampling of the last
latent the decoder needs)."""

ARCHITECTURES = {
    "bmshj2018-factorized": (8, 16),
    "bmshj2018-hyperprior": (8, 64),
    "mbt2018-mean": (8, 64),
    "mbt2018": (8, 64),
    "cheng2020-anchor": (6, 64),
    "cheng2020-attn": (6, 64),
}
