"""Errors that lifebench raises for bad input, each with a message that names the value and the fix.

Hierarchy::

    LifebenchError                  user-facing; the CLI prints its message on one line and exits 2
    ├── ConfigError                 a bad option, id or combination of options
    │   └── UnknownNameError        a name not in a registry (suggests the closest names)
    ├── DataError                   a dataset that cannot be used as given
    │   └── BadImageError           an image file that cannot be decoded
    ├── MissingDependencyError      an optional package is not installed (names the pip command)
    └── StoreFullError              the disk or a file-size limit left no room in the results store (rolled back)

Anything else that escapes is a bug in lifebench and keeps its traceback.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "BadImageError",
    "ConfigError",
    "DataError",
    "LifebenchError",
    "MissingDependencyError",
    "StoreFullError",
    "UnknownNameError",
    "one_line",
    "shown",
]


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as an error message quotes it: its repr (which escapes newlines; a date or time in ISO form),
    cut to ``limit`` characters, so that a long or multi-line value keeps the message on one line."""
    text = value.isoformat() if isinstance(value, dt.date | dt.time) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def one_line(err: BaseException | str) -> str:
    """A library's error message with its line breaks and runs of spaces collapsed: to quote it in one line."""
    return " ".join(str(err).split())


class LifebenchError(Exception):
    """Base class of every error caused by input that the user can fix."""

    exit_code = 2


class ConfigError(LifebenchError):
    """An option, identifier or combination of options that cannot work."""


class UnknownNameError(ConfigError):
    """A name that is not registered; the message lists the closest registered names."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        msg = f"unknown {kind} {name!r}"
        if close:
            msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        else:
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "") if known else "(none)"
            msg += f"; known: {shown}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
        self.name = name
        self.suggestions = close


class DataError(LifebenchError):
    """A dataset, manifest or folder that cannot be used as given."""


class BadImageError(DataError):
    """An image file that is empty, truncated, corrupt or not an image at all."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"cannot read image {path}: {reason}; fix or remove the file, or pass --skip-bad-images to leave it out"
        )
        self.path = path
        self.reason = reason


class MissingDependencyError(LifebenchError):
    """An optional dependency is needed for what was asked."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the package {package!r}, which is not installed; "
            f"run: pip install 'lifebench[{extra}]'"
        )


class StoreFullError(LifebenchError):
    """The disk (or a file-size limit) left no room to write to the results store; nothing was half-written."""
