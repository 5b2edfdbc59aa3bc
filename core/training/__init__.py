"""Training task-aware codecs (``icm train``): loss terms (losses.py), loss-weight schedules
(schedules.py, a registry filled by the ``icm_register_schedules`` hook), the loop with checkpoints,
resume, DDP and validation (loop.py, validate.py), and the Pareto-front re-evaluation with real
bitstreams (pareto.py). Reference: docs/training.md."""

_fallbacks: dict = {}


def plugin_registry(attr: str, kind: str, builtin_module: str, hook: str):
    """The registry ``attr`` (``schedules``, ``losses``) of the process-wide plugin set; the built-ins
    alone (registered through their own hook) when the plugin set has no such registry."""
    import importlib

    from icm.plugins import get_plugins
    from icm.registry import Registry

    registry = getattr(get_plugins(), attr, None)
    if registry is not None:
        return registry
    if attr not in _fallbacks:
        fallback = Registry(kind)
        getattr(importlib.import_module(builtin_module), hook)(
            register=lambda n, o, **meta: fallback.register(n, o, plugin="icm.training", **meta))
        _fallbacks[attr] = fallback
    return _fallbacks[attr]
