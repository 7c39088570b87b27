"""One generic name -> object registry, used for backbones, tasks and protocols.

Entries are either objects or lazy ``"module:attr"`` strings, so heavy adapters (timm, open_clip,
transformers) are imported only when asked for. Registering a second, different object under a taken
name is an error, never a silent overwrite.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from lifebench.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects (or lazy ``"module:attr"`` references) of one kind."""

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T | str] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, obj: T | str, help: str = "") -> None:  # noqa: A002
        """Register ``obj`` (or a lazy ``"module:attr"`` string) under ``name``."""
        if name in self._entries and self._entries[name] is not obj and self._entries[name] != obj:
            raise ValueError(f"{self.kind} {name!r} is already registered to {self._entries[name]!r}")
        self._entries[name] = obj
        self._help[name] = help

    def __call__(self, name: str, help: str = ""):  # noqa: A002
        """Decorator form of :meth:`register`."""

        def deco(obj: T) -> T:
            self.register(name, obj, help)
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered under ``name``; unknown names raise with suggestions."""
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self._entries, self.hint)
        obj = self._entries[name]
        if isinstance(obj, str):
            module, _, attr = obj.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            self._entries[name] = obj
        return obj  # type: ignore[return-value]

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
