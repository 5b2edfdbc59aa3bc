"""Test helpers for OpenMMLab adapters: the shipped config (changed) and weights of an adapter class."""

from __future__ import annotations


def shipped_config(adapter_class, **changes):
    """The shipped OpenMMLab config as a dict, with top-level keys replaced by ``changes``
    and ``test_pipeline`` also set where the config's test loader names one (tests of other test
    pipelines and test-time settings on the shipped weights)."""
    from mmengine.config import Config

    from icm.paths import package_file

    adapter_class = _resolved(adapter_class)
    cfg = Config.fromfile(str(package_file(adapter_class._package(), adapter_class.default_config))).to_dict()
    for key, value in changes.items():
        if key == "test_cfg":
            cfg["model"]["test_cfg"] = {**cfg["model"].get("test_cfg", {}), **value}
        else:
            cfg[key] = value
    return cfg


def shipped_weights(adapter_class) -> str:
    from icm.paths import package_file

    adapter_class = _resolved(adapter_class)
    return str(package_file(adapter_class._package(), adapter_class.default_weights))


def _resolved(factory):
    """The adapter class behind a registered factory (plugins register ``Lazy`` ones)."""
    return factory.resolve() if hasattr(factory, "resolve") else factory
