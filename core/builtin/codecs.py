"""Registers the built-in codecs: the traditional anchors and every CompressAI image architecture.

Learned codecs register by name with a lazy factory and their rate control, so listing them
(`icm codecs`) imports neither torch nor compressai; the module is imported when a codec is built.
"""

import importlib.util

from icm import hookimpl
from icm.codecs import RateControl, gain_level_rates
from icm.codecs.architectures import ARCHITECTURES
from icm.registry import Lazy

COMPRESSAI_INSTALL = "pip install 'icm[learned]' && pip install --no-deps compressai==1.2.8"
# How many gain levels each shipped continuous-rate codec's weights have: `icm codecs` lists the
# default sweep (the trained levels) without loading them; a test checks them against the weights.
SHIPPED_GAIN_LEVELS = {"icm-omni": 8, "icm-omni-mse": 6, "icm-omni-aux": 8, "icm-omni-features": 6, "icm-photo-mse": 6}


def compressai_missing() -> str | None:
    """Why the learned codecs cannot run here, found without importing compressai (5 s of CPU)."""
    if importlib.util.find_spec("compressai") is None:
        return f"compressai is not installed ({COMPRESSAI_INSTALL})"
    return None


def _shipped_weights_missing(name: str, files: list[str]):
    def check() -> str | None:
        from icm.paths import configs_dir

        folder = configs_dir() / "codecs" / name
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            return f"no shipped weights {', '.join(missing)} in {folder} (reinstall icm, or pass --checkpoint)"
        return compressai_missing()
    return check


def _qualities(n: int) -> RateControl:
    return RateControl("quality", (1, n), True, tuple(range(1, n + 1)))


@hookimpl
def icm_register_codecs(register):
    from icm.codecs.anchors import ANCHORS  # Pillow and subprocess only: cheap

    for cls in ANCHORS:
        register(cls.name, cls, kind="anchor", description=cls.description)
    for arch, (qualities, _) in ARCHITECTURES.items():
        register(arch, Lazy("icm.codecs.learned:CompressAICodec", arch), kind="learned",
                 rate_control=_qualities(qualities), unavailable_reason=compressai_missing,
                 description=f"CompressAI {arch} (mse); --checkpoint FILE_OR_FOLDER or --weights random")
    register("icm-hyperprior-mse",
             Lazy("icm.codecs.learned:ShippedCompressAICodec", "icm-hyperprior-mse", "bmshj2018-hyperprior", 4,
                  description="bmshj2018-hyperprior (N=64, M=96) trained on shapes for MSE",
                  memory_mb_per_mp=400.0),  # 222 MB/MP on a photograph, 307 on noise (tests/test_memory_check.py)
             kind="learned", rate_control=_qualities(4),
             unavailable_reason=_shipped_weights_missing("icm-hyperprior-mse", [f"quality{q}.pth" for q in range(1, 5)]),
             description="shipped: hyperprior trained on shapes for MSE (4 qualities)")
    omni = {
        "icm-omni": ({}, "icm's variable-rate ICM codec (rate 0..1, gain units, channel and checkerboard context; "
                         "aux=True adds the aux stream); shipped weights, --checkpoint FILE or --weights random"),
        "icm-omni-mse": ({"name": "icm-omni-mse"},
                         "the icm-omni architecture trained for rate + MSE only (stage A), the ablation baseline"),
        "icm-photo-mse": ({"name": "icm-photo-mse"},
                          "the icm-omni architecture trained from scratch on photographs for rate + MSE "
                          "(configs/train/icm_photo_mse.toml): icm's natural-image codec"),
        "icm-omni-aux": ({"name": "icm-omni-aux", "aux": True},
                         "icm-omni plus the trained auxiliary scalable stream (decode-time beta; RDC §3.3-3.4)"),
    }
    for name, (bound, description) in omni.items():
        register(name, Lazy("icm.codecs.icm_codec:ICMCodec", **bound), kind="learned",
                 rate_control=gain_level_rates(SHIPPED_GAIN_LEVELS[name]),
                 unavailable_reason=_shipped_weights_missing(name, ["model.pth"]), description=description)
    register("icm-omni-features", Lazy("icm.codecs.omni_features:OmniFeaturesCodec"), kind="features",
             rate_control=gain_level_rates(SHIPPED_GAIN_LEVELS["icm-omni-features"]),
             unavailable_reason=_shipped_weights_missing("icm-omni-features", ["model.pth"]),
             description="Omni-ICM feature codec: codes ResNet-18 stride-4 features (split resnet18w32.layer1); "
                         "feature-reading tasks read them, a decoder gives pixels")
    from icm.codecs.anchors import HEVC

    register("hevc-features", Lazy("icm.codecs.feature_anchors:HEVCFeatures"), kind="features",
             rate_control=RateControl("qp", (0, 51), False, (40, 42, 44, 46, 48, 51)),
             unavailable_reason=lambda: HEVC().unavailable_reason()
             or _shipped_weights_missing("icm-omni-features", ["model.pth"])(),
             description="HEVC intra anchor of the feature split (MPEG FCM style): icm-omni-features' split tensor "
                         "tiled into one monochrome 10-bit frame, x265 at fixed QP; --checkpoint/--weights go to "
                         "icm-omni-features' encoder side")
