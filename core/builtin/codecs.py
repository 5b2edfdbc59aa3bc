"""Registers the built-in codecs: the traditional anchors and every CompressAI image architecture."""

from functools import partial

from icm import hookimpl


@hookimpl
def icm_register_codecs(register):
    # imports stay inside the hook so `icm plugins` does not pay for torch/compressai unless asked
    from icm.codecs.anchors import ANCHORS
    from icm.codecs.icm_codec import ICMCodec
    from icm.codecs.learned import ARCHITECTURES, CompressAICodec, ShippedCompressAICodec

    for cls in ANCHORS:
        register(cls.name, cls, kind="anchor", description=cls.description)
    for arch in ARCHITECTURES:
        register(arch, partial(CompressAICodec, arch), kind="learned",
                 description=f"CompressAI {arch} (mse); --checkpoint FILE_OR_FOLDER or --weights random")
    register("icm-hyperprior-mse", partial(ShippedCompressAICodec, "icm-hyperprior-mse", "bmshj2018-hyperprior", 4,
                                           description="bmshj2018-hyperprior (N=64, M=96) trained on shapes for MSE"),
             kind="learned", description="shipped: hyperprior trained on shapes for MSE (4 qualities)")
    register("icm-omni", ICMCodec, kind="learned",
             description="icm's variable-rate ICM codec (rate 0..1, gain units; aux=True adds the aux stream); "
                         "weights in configs/codecs/icm-omni/model.pth, --checkpoint FILE or --weights random")
    register("icm-omni-mse", partial(ICMCodec, name="icm-omni-mse"), kind="learned",
             description="the icm-omni architecture trained for rate + MSE only (stage A), the ablation baseline")
    register("icm-omni-aux", partial(ICMCodec, name="icm-omni-aux", aux=True), kind="learned",
             description="icm-omni plus the trained auxiliary scalable stream (decode-time beta; RDC §3.3-3.4)")
