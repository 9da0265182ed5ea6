"""The one registry shape of every extension point (methods, models, attacks, datasets).

Each package keeps one ``Registry`` and exposes it through three functions named after what it holds:
``register_X(name, **metadata)`` (a decorator), ``list_X(pattern=None)`` (fnmatch patterns, as timm's
``list_models``) and ``get_X(name)``, which fails with "unknown X 'nope'; known Xs: …; did you mean …?".
This module imports nothing of the project but its error type, so every package can use it without cycles.

>>> shapes = Registry("shape")
>>> @shapes.register("square", corners=4)
... def square(): ...
>>> shapes.list("sq*"), shapes.metadata("square")["corners"]
(['square'], 4)
"""
from __future__ import annotations

import difflib
import fnmatch
import weakref
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from .errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> registered objects, each with a dict of metadata (what a catalogue or a check reads)."""

    def __init__(self, what: str, plural: str | None = None):
        self.what = what  # singular noun for messages: "method", "attack kind"
        self.plural = plural or f"{what}s"
        self._entries: dict[str, T] = {}  # name -> registered object
        self._metadata: dict[str, dict[str, Any]] = {}  # name -> its metadata
        _ALL.add(self)  # so plugins can tell which entries a module they load adds (benchmark.plugins)

    def register(self, name: str, obj: T | None = None, /, **metadata) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``, or, without ``obj``, return a decorator that does.

        A second registration of the same name is a programming error (ValueError): one entry can never
        silently shadow another.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.what} name must be a non-empty string, got {name!r}")

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is already registered "
                                 f"({_where(self._entries[name])}, {_where(entry)})")
            self._entries[name] = entry
            self._metadata[name] = dict(metadata)
            return entry

        return add if obj is None else add(obj)

    def list(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted; ``pattern`` keeps those it matches (fnmatch: ``"pgd*"``, ``"*autoattack"``)."""
        names = sorted(self._entries)
        return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]

    def unknown_message(self, name: str) -> str:
        """"unknown X 'nope'; known Xs: a, b; did you mean 'a'?" (the did-you-mean only when one is close)."""
        message = f"unknown {self.what} {name!r}; known {self.plural}: {', '.join(self.list()) or 'none'}"
        close = difflib.get_close_matches(str(name), self.list(), n=1)
        return message + (f"; did you mean {close[0]!r}?" if close else "")

    def get(self, name: str) -> T:
        """The object registered under ``name``; a UsageError that lists the known names otherwise."""
        if name not in self._entries:
            raise UsageError(self.unknown_message(name))
        return self._entries[name]

    def metadata(self, name: str) -> dict[str, Any]:
        """The metadata ``name`` was registered with (a copy); a UsageError for an unknown name."""
        self.get(name)
        return dict(self._metadata[name])

    def entries(self) -> Mapping[str, T]:
        """A read-only, live view of name -> object (for code that iterates; look names up with ``get``)."""
        return MappingProxyType(self._entries)

    def where(self, **metadata) -> list[str]:
        """Names whose metadata has each of the given values: ``attacks.where(family="ensemble")``."""
        return [n for n in self.list() if all(self._metadata[n].get(k) == v for k, v in metadata.items())]

    def annotate(self, name: str, **metadata) -> None:
        """Add metadata to a registered entry (what a plugin loader records about where the entry came from)."""
        self.get(name)
        self._metadata[name].update(metadata)

    def unregister(self, name: str) -> T:
        """Remove an entry (tests that register a throwaway entry clean up with this)."""
        self._metadata.pop(name, None)
        return self._entries.pop(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self.list())})"


_ALL: "weakref.WeakSet[Registry]" = weakref.WeakSet()


def all_registries() -> list[Registry]:
    """Every live Registry (methods, models, attack kinds, datasets, and any a test builds)."""
    return list(_ALL)


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
