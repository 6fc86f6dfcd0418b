"""One generic registry per kind of component (attack, defense, dataset, model).

Components register with a decorator, may have aliases, and are looked up by name with a
"did you mean" error. Plugins from other packages register through the `benchbd.plugins`
entry-point group or `--plugin MODULE`; importing them is enough, as their decorators run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterable, TypeVar

from .errors import BenchbdError, unknown

T = TypeVar("T")
PLUGIN_GROUP = "benchbd.plugins"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    aliases: tuple[str, ...]
    description: str
    module: str


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str, *, aliases: Iterable[str] = (), description: str | None = None, override: bool = False
    ) -> Callable[[T], T]:
        """Decorator. A name already registered by another module is refused unless `override=True`
        (a plugin must not replace a built-in silently); the same module registering again (a
        reload) replaces its own entry."""

        def decorate(obj: T) -> T:
            taken = set(self._entries) | set(self._aliases)
            module = getattr(obj, "__module__", "")
            for label in (name, *aliases):
                if label in taken and self._resolve_quiet(label) != name:
                    raise BenchbdError(f"{self.kind} name '{label}' is already registered")
            if name in self._entries and self._entries[name].module != module and not override:
                raise BenchbdError(
                    f"{self.kind} '{name}' is already registered by {self._entries[name].module}; {module} may not "
                    f"replace it (choose another name, or register(..., override=True) to replace it on purpose)"
                )
            doc = description or (inspect.getdoc(obj) or "").strip().splitlines()
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, obj, tuple(aliases), text, module)
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return decorate

    def _resolve_quiet(self, name: str) -> str | None:
        if name in self._entries:
            return name
        return self._aliases.get(name)

    def resolve(self, name: str) -> str:
        """Canonical name for `name` or an alias of it; a one-line error otherwise."""
        canonical = self._resolve_quiet(name.strip())
        if canonical is None:
            raise unknown(self.kind, name, [*self._entries, *self._aliases])
        return canonical

    def get(self, name: str) -> T:
        return self._entries[self.resolve(name)].obj

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.resolve(name)]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def expand(self, spec: str, groups: dict[str, list[str]] | None = None) -> list[str]:
        """Comma-separated names or group names into canonical names, in the order given.

        `groups` maps a group name to its members; without it, 'all' is every name."""
        groups = groups if groups is not None else {"all": self.names()}
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if not parts:
            raise BenchbdError(f"no {self.kind} named; valid: {', '.join(groups)}, {', '.join(self.names())}")
        out: list[str] = []
        for part in parts:
            if part not in groups and self._resolve_quiet(part) is None:
                raise unknown(self.kind, part, [*groups, *self._entries, *self._aliases])
            chosen = groups[part] if part in groups else [self.resolve(part)]
            out.extend(n for n in chosen if n not in out)
        return out

    def __contains__(self, name: str) -> bool:
        return self._resolve_quiet(name) is not None


_loaded_entry_points = False


def installed_plugins() -> list[str]:
    """The plugin entry points installed in this environment (not loaded)."""
    return [ep.value for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP)]


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import plugins from the entry-point group (once) and the named modules; return their names."""
    global _loaded_entry_points
    loaded: list[str] = []
    if not _loaded_entry_points:
        _loaded_entry_points = True
        for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            try:
                target = ep.load()
            except Exception as exc:  # a broken third-party plugin must say which one it is
                raise BenchbdError(f"plugin entry point '{ep.name}' ({ep.value}) failed to load: {exc}") from exc
            if callable(target) and not inspect.isclass(target):
                target()
            loaded.append(ep.value)
    for module in modules:
        name = _plugin_module_name(module)
        try:
            importlib.import_module(name)
        except BenchbdError:
            raise
        except ModuleNotFoundError as exc:
            if exc.name != name.split(".")[0] and exc.name != name:
                raise BenchbdError(f"plugin module '{module}' failed to import: ModuleNotFoundError: {exc}") from exc
            raise BenchbdError(
                f"cannot import plugin module '{module}': {exc} (give an importable module name, "
                f"with its folder on PYTHONPATH, or a path to a .py file)"
            ) from exc
        except Exception as exc:  # a plugin's own bug: say which plugin, and what (--debug shows the traceback)
            where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
            raise BenchbdError(f"plugin module '{module}' failed to import: {type(exc).__name__}{where}: {exc}") from exc
        loaded.append(module)
    return loaded


def _plugin_module_name(spec: str) -> str:
    """A module name for `--plugin`: a dotted name as it is; a path to a .py file (./my_defense.py)
    is imported by its file name, with its folder put on sys.path (worker processes inherit it)."""
    if not (spec.endswith(".py") or os.sep in spec):
        return spec
    path = Path(spec).resolve()
    if not path.is_file() or path.suffix != ".py":
        raise BenchbdError(f"plugin '{spec}' is not a .py file; give a module name or a path to a .py file")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    return path.stem
