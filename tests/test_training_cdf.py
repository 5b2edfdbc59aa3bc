"""The shipped learned codecs' entropy models match their weights: at every default rate, the real
file is no bigger than the entropy models' estimate plus the container and coder framing plus 2 %.
And `icm train` saves CDF tables rebuilt from the weights it saves."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from icm.codecs import open_codec
from icm.datasets import load_dataset
from icm.images import load_image

SHIPPED = ["icm-omni", "icm-omni-mse", "icm-omni-aux", "icm-hyperprior-mse", "icm-omni-features"]
RANS_FRAMING = 8 + 3  # bytes per stream: CompressAI's rANS flushes its 64-bit state, and writes whole 32-bit words


@pytest.fixture(scope="module")
def val_images():
    ds = load_dataset("shapes", "val")
    return [load_image(s["file_name"]) for s in ds.images[:6]]


@pytest.mark.parametrize("name", SHIPPED)
def test_real_bpp_stays_within_the_estimate_plus_framing_plus_2_percent(name, val_images):
    torch.set_num_threads(1)
    codec = open_codec(name, device="cpu")
    for rate in codec.default_rates():
        est = real = allowed = 0.0
        for image in val_images:
            pixels = image.shape[0] * image.shape[1]
            bits = codec.estimate_bits(image, rate)
            assert math.isfinite(bits), f"{name} {rate}: infinite estimate (a likelihood of 0)"
            bs = codec.to_bitstream(image, **rate)
            size = len(bs.to_bytes())
            framing = size - sum(len(s) for s in bs.streams.values()) + RANS_FRAMING * len(bs.streams)
            est, real = est + bits / pixels, real + size * 8 / pixels
            allowed += (framing * 8 + 0.02 * bits) / pixels
        n = len(val_images)
        assert real / n - est / n <= allowed / n, (name, rate, real / n, est / n, allowed / n)
        assert real / n >= 0.9 * est / n, (name, rate)  # and the estimate is not an overestimate either


def test_the_shipped_hyperprior_weights_keep_the_likelihood_bound():
    folder = Path(__file__).resolve().parents[1] / "configs" / "codecs" / "icm-hyperprior-mse"
    for q in range(1, 5):
        state = torch.load(folder / f"quality{q}.pth", weights_only=True)
        bounds = {k: float(v) for k, v in state.items() if k.endswith("likelihood_lower_bound.bound")}
        assert len(bounds) == 2 and all(v == pytest.approx(1e-9) for v in bounds.values()), bounds


def test_icm_train_saves_cdf_tables_rebuilt_from_the_saved_weights(toy, tmp_path, tiny_shapes):
    from compressai.models import FactorizedPrior

    from icm.training.config import parse_config
    from icm.training.loop import train

    cfg = parse_config({"codec": {"name": "bmshj2018-factorized", "quality": 1, "options": {"weights": "random"}},
                        "tasks": ["colour"], "losses": {"rate": 0.01, "mse": 1.0}, "dataset": str(tiny_shapes),
                        "train_split": "val", "epochs": 1, "batch_size": 2, "lr": 1e-2, "aux_lr": 1.0,
                        "out": str(tmp_path / "run"), "reevaluate": False})
    summary = train(cfg, progress=False)
    for path in (Path(summary["out"]) / "model.pth", Path(summary["out"]) / "checkpoints" / "epoch_001.pth"):
        saved = torch.load(path, weights_only=True)
        net = FactorizedPrior(*np.array([128, 192]))
        net.load_state_dict(saved)
        net.update(force=True)  # CDFs from the saved quantiles
        rebuilt = net.state_dict()
        for key in ("entropy_bottleneck._quantized_cdf", "entropy_bottleneck._offset", "entropy_bottleneck._cdf_length"):
            assert torch.equal(saved[key], rebuilt[key]), key
