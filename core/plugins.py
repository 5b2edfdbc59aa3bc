"""Plugin loading: built-ins and third-party plugins go through the same pluggy hooks.

A plugin that fails to import or to validate (misspelled hook names) is reported and skipped whole; a
register hook that raises is reported and loses what *that hook* registered (the plugin's other hooks
still count). The CLI keeps working either way; ``ICM_STRICT_PLUGINS=1`` makes any such failure fatal.
``ICM_LOAD_PLUGINS=a,b`` loads only the named entry-point plugins (empty string: none).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from icm import hookspecs
from icm.errors import IcmError
from icm.registry import Registry

ENTRY_POINT_GROUP = "icm"
BUILTIN_PLUGINS = ("icm.builtin.codecs", "icm.builtin.datasets", "icm.training.builtin_schedules",
                   "icm.training.builtin_losses")


class PluginError(IcmError):
    """Raised for a broken plugin when ICM_STRICT_PLUGINS=1."""


@dataclass
class PluginInfo:
    name: str
    version: str = ""
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Failure:
    plugin: str
    stage: str  # "import", "validate", or the hook name
    error: str


class Plugins:
    """The loaded plugin manager plus the registries its hooks filled."""

    def __init__(self, strict: bool | None = None):
        self.strict = os.environ.get("ICM_STRICT_PLUGINS", "") not in ("", "0") if strict is None else strict
        self.pm = pluggy.PluginManager("icm")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.failures: list[Failure] = []
        self._registries = {
            "icm_register_codecs": Registry("codec"),
            "icm_register_tasks": Registry("task"),
            "icm_register_datasets": Registry("dataset"),
            "icm_register_schedules": Registry("schedule"),
            "icm_register_losses": Registry("loss"),
        }
        self._registered: set[str] = set()

    # Each registry's hook runs on first use of that registry, so `icm tasks` never runs the codec hooks
    # and commands that need no registry at all (icm info) run none.
    @property
    def codecs(self) -> Registry:
        return self._registry("icm_register_codecs")

    @property
    def tasks(self) -> Registry:
        return self._registry("icm_register_tasks")

    @property
    def datasets(self) -> Registry:
        return self._registry("icm_register_datasets")

    @property
    def schedules(self) -> Registry:
        return self._registry("icm_register_schedules")

    @property
    def losses(self) -> Registry:
        return self._registry("icm_register_losses")

    def _registry(self, hookname: str) -> Registry:
        if hookname not in self._registered:
            self._registered.add(hookname)
            self._run_register_hook(hookname)
        return self._registries[hookname]

    def run_all_register_hooks(self) -> None:
        """Fill every registry (``icm plugins`` shows what each plugin registered)."""
        for hookname in self._registries:
            self._registry(hookname)

    # -- loading -------------------------------------------------------------------------------------
    def load(self) -> "Plugins":
        for modname in BUILTIN_PLUGINS:
            self._add(modname, lambda m=modname: importlib.import_module(m), version="", builtin=True)
        wanted = os.environ.get("ICM_LOAD_PLUGINS")
        allow = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allow is not None and ep.name not in allow:
                continue
            version = ep.dist.version if ep.dist is not None else ""
            self._add(ep.name, ep.load, version=version, builtin=False)
        return self

    def register_plugin(self, plugin, name: str, version: str = "") -> None:
        """Register an already-imported plugin object (used by tests and the pytest plugin)."""
        self._add(name, lambda: plugin, version=version, builtin=False)
        for registry in self._registries.values():  # re-run the register hooks on next use
            registry._entries.clear()
        for info in self.info.values():
            info.registered.clear()
        self._registered.clear()

    def _add(self, name, loader, version, builtin) -> None:
        try:
            plugin = loader()
        except Exception as exc:  # a broken import must not take the CLI down
            self._fail(name, "import", exc)
            return
        if self.pm.is_registered(plugin) or self.pm.get_plugin(name) is not None:
            # the same plugin loaded twice (an installed plugin a test registers again): keep the first
            return
        try:
            self.pm.register(plugin, name=name)
            # check_pending catches hook names that match no spec (misspellings like icm_register_codec)
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._fail(name, "validate", exc)
            return
        hooks = [impl.name for impl in self.pm.get_hookcallers(plugin) or []]
        self.info[name] = PluginInfo(name, version, builtin, sorted(hooks))

    def _run_register_hook(self, hookname: str) -> None:
        # Each plugin's hook is called on its own so that what it registered can be attributed to it
        # and one failing plugin does not stop the others.
        registry = self._registries[hookname]
        caller = getattr(self.pm.hook, hookname)
        for impl in caller.get_hookimpls():  # registration order: built-ins first, so they keep their names
            name = impl.plugin_name
            added: list[str] = []

            def register(item_name, obj, _name=name, _added=added, **meta):
                registry.register(item_name, obj, plugin=_name, **meta)
                _added.append(item_name)

            try:
                impl.function(register=register)
            except Exception as exc:
                for item in added:  # a half-registered plugin is removed whole from this registry
                    registry._entries.pop(item, None)
                self._fail(name, hookname, exc)
                continue
            if name in self.info:
                self.info[name].registered.setdefault(registry.kind, []).extend(added)

    def _fail(self, name: str, stage: str, exc: Exception) -> None:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, nothing dropped
        if self.strict:
            raise PluginError(f"plugin {name!r} failed at {stage}: {message}") from exc
        self.failures.append(Failure(name, stage, message))
        print(f"icm: warning: plugin {name!r} skipped ({stage}: {message})", file=sys.stderr)


_current: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, loaded on first use."""
    global _current
    if _current is None:
        _current = Plugins().load()
    return _current


def set_plugins(plugins: Plugins | None) -> Plugins | None:
    """Swap the process-wide plugin set (tests, the pytest plugin); returns the previous one."""
    global _current
    previous, _current = _current, plugins
    return previous
