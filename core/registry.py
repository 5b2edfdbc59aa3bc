"""Plain registries: a dict plus a decorator, with an error on duplicate names."""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterator

from icm.errors import UserError


class Lazy:
    """A factory named by ``"module:attribute"``, imported on first call.

    Registering ``Lazy("icm.codecs.icm_codec:ICMCodec", name="icm-omni-mse")`` instead of the class
    keeps ``icm codecs``/``icm tasks`` from importing torch, compressai or OpenMMLab: the module is
    imported only when the codec or task is built. Extra arguments are bound like ``functools.partial``.
    """

    def __init__(self, target: str, *args, **kwargs):
        if ":" not in target:
            raise ValueError(f"Lazy target {target!r} must be 'module:attribute'")
        self.target, self.args, self.kwargs = target, args, kwargs

    def resolve(self):
        module, attr = self.target.split(":", 1)
        obj = getattr(importlib.import_module(module), attr)
        return partial(obj, *self.args, **self.kwargs) if self.args or self.kwargs else obj

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    @property
    def __signature__(self):  # open_codec filters options by the real factory's parameters
        return inspect.signature(self.resolve())

    def __repr__(self):
        return f"Lazy({self.target!r})"


@dataclass
class Entry:
    name: str
    obj: Any
    plugin: str = "?"
    meta: dict = field(default_factory=dict)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any = None, *, plugin: str = "?", **meta):
        """Register ``obj`` under ``name``; without ``obj`` it returns a decorator."""
        if obj is None:
            def decorator(o):
                self.register(name, o, plugin=plugin, **meta)
                return o
            return decorator
        if name in self._entries:
            other = self._entries[name].plugin
            raise ValueError(f"{self.kind} {name!r} is already registered (by plugin {other!r})")
        self._entries[name] = Entry(name, obj, plugin, meta)
        return obj

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = ", ".join(sorted(self._entries)) or "none registered"
            raise UserError(f"unknown {self.kind} {name!r}{hint} (known: {known})") from None

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        return (self._entries[n] for n in self.names())

    def by_plugin(self, plugin: str) -> list[str]:
        return [e.name for e in self.entries() if e.plugin == plugin]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

