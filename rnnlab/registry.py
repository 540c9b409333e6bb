"""One ``Registry`` type, one instance per plugin family.

A plugin registers itself with a decorator::

    @CELLS.register("lstm")
    class LSTM: ...

and a registry lists its names (optionally filtered by a glob), gets a plugin by name, and refuses an
unknown name with the known ones and a "did you mean". Third-party packages add plugins through the
Python entry-point group ``rnnlab.<family>`` (e.g. ``rnnlab.cells``); they are loaded the first time a
registry is asked for its names. This module is plain Python: no Hydra, no MLflow.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
from importlib.metadata import entry_points


class UnknownPluginError(KeyError):
    """An unknown plugin name; the message lists the known names and the closest match."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    """Named plugins of one family (cells, optimizers, clipping policies, samplers, datasets)."""

    def __init__(self, family: str, builtins: str | None = None):
        self.family = family
        self._builtins = builtins  # module whose import registers the built-in plugins
        self._items: dict[str, object] = {}
        self._schemas: dict[str, type | None] = {}
        self._entry_points_loaded = False

    def register(self, name: str, obj=None, schema=None):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        ``schema`` is the dataclass of the plugin's options, the one place where they and their defaults
        are declared: by default ``obj.Config`` if it has one (a cell, a dataset), else ``obj`` itself
        if it is a dataclass (an optimizer, a sampler…). The framework validates a config against it
        and makes the plugin's option of its config group from it.
        """
        def add(target):
            if name in self._items and self._items[name] is not target:
                raise ValueError(f"{self.family} plugin {name!r} is already registered "
                                 f"(by {self._items[name]!r})")
            self._items[name] = target
            self._schemas[name] = schema or getattr(target, "Config", None) or \
                (target if dataclasses.is_dataclass(target) else None)
            return target
        return add if obj is None else add(obj)

    def schema(self, name: str):
        """The options dataclass of plugin ``name`` (None when it takes no options)."""
        self.get(name)
        return self._schemas.get(name)

    def _load_entry_points(self):
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        if self._builtins:
            importlib.import_module(self._builtins)
        for ep in entry_points(group=f"rnnlab.{self.family}"):
            if ep.name not in self._items:
                self.register(ep.name, ep.load())

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching the glob ``pattern``."""
        self._load_entry_points()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name) -> bool:
        self._load_entry_points()
        return name in self._items

    def get(self, name: str):
        """The plugin registered as ``name``; an unknown name raises ``UnknownPluginError``."""
        self._load_entry_points()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            known = self.names()
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownPluginError(
                f"Unknown {self.family} {name!r}. Known {self.family}: {', '.join(known)}.{hint}"
            ) from None

    def build(self, name: str, **options):
        """Build the plugin ``name`` with keyword ``options``."""
        return self.get(name)(**options)

    def __repr__(self):
        return f"Registry({self.family!r}, {self.names()})"


CELLS = Registry("cells", "rnnlab.cells")
OPTIMIZERS = Registry("optimizers", "rnnlab.optim")
CLIPPERS = Registry("clipping", "rnnlab.clipping")
SAMPLERS = Registry("samplers", "rnnlab.sampling")
DATASETS = Registry("datasets", "rnnlab.data")
SCHEDULES = Registry("schedules", "rnnlab.schedules")
