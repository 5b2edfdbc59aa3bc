"""Registers the built-in loss kinds of ``icm train`` through the ``icm_register_losses`` hook, exactly
as a plugin's kinds register. Lazy factories: listing them (`icm plugins`) does not import torch.

``task`` meta: ``"required"`` (written ``KIND:TASK``), ``"optional"`` or ``"none"`` (``KIND`` alone)."""

from icm import hookimpl
from icm.registry import Lazy


@hookimpl
def icm_register_losses(register):
    losses = "icm.training.losses:"
    register("rate", Lazy(losses + "Rate"), task="none",
             description="estimated bits per pixel of each sample; option latents")
    register("mse", Lazy(losses + "MSE"), task="none", description="pixel MSE of each sample, [0, 1] units")
    register("task", Lazy(losses + "Task"), task="required",
             description="the task model's own loss on x̂; options normalise, momentum (running-mean normalisation)")
    register("distill", Lazy(losses + "Distill"), task="required",
             description="feature distillation; option relative (energy-normalised)")
    register("objectness_distill", Lazy(losses + "ObjectnessDistill"), task="required",
             description="objectness-weighted distillation (paper 003); options eps, relative, resize")
    register("gtbox_distill", Lazy(losses + "GTBoxDistill"), task="required",
             description="GT-box-weighted distillation; options floor, relative, resize, normalise")
    register("cognition", Lazy(losses + "Cognition"), task="optional",
             description="RDC cognition loss (InfoNCE + λ_local·D_local); options tau, lambda_local")
    register("feature_mse", Lazy(losses + "FeatureMSE"), task="none",
             description="feature codecs: relative MSE between the split tensor and its decoding")
    register("contrastive", Lazy(losses + "Contrastive"), task="none",
             description="feature codecs: Omni-ICM instance discrimination (InfoNCE); options tau, grid, strength")
