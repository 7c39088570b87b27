"""Defaults in one place: where the embedding cache, downloaded data and results live.

Precedence everywhere: built-in default < environment variable < command-line option.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lifebench.errors import ConfigError

__all__ = ["DEFAULT_RESAMPLES", "cache_dir", "data_dir", "default_store", "env_number"]

log = logging.getLogger(__name__)

DEFAULT_RESAMPLES = 1000
"""Bootstrap resamples for confidence intervals (at least 1000, see docs/statistics.md)."""


def cache_dir() -> Path:
    """Embedding cache: ``$LIFEBENCH_CACHE``, else ``$XDG_CACHE_HOME/lifebench``, else ``~/.cache/lifebench``."""
    if os.environ.get("LIFEBENCH_CACHE"):
        return Path(os.environ["LIFEBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lifebench"


def data_dir() -> Path:
    """Downloaded datasets: ``$LIFEBENCH_DATA``, else ``$XDG_DATA_HOME/lifebench``, else ``~/.local/share/lifebench``.

    Datasets are kept apart from the embedding cache so that clearing the cache (which is safe: it is rebuilt) never
    deletes downloads that took hours. Older versions put them in ``<cache_dir>/data``; when only that folder exists
    it is still used, with a one-line notice (logged once per process) saying how to move it.
    """
    if os.environ.get("LIFEBENCH_DATA"):
        return Path(os.environ["LIFEBENCH_DATA"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    new = Path(base).expanduser() / "lifebench"
    old = cache_dir() / "data"
    if not new.exists() and old.is_dir():
        if old not in _NOTIFIED:
            _NOTIFIED.add(old)
            log.warning("using datasets in the old location %s; datasets now go in %s: move them with "
                        "`mv %s %s` or set LIFEBENCH_DATA=%s", old, new, old, new, old)
        return old
    return new


_NOTIFIED: set[Path] = set()
"""Old data folders already reported, so that the notice is one line per process, not one per call."""


def default_store() -> Path:
    """Results store: ``$LIFEBENCH_STORE``, else ``lifebench-results/results.sqlite`` in the working directory."""
    if os.environ.get("LIFEBENCH_STORE"):
        return Path(os.environ["LIFEBENCH_STORE"]).expanduser()
    return Path("lifebench-results") / "results.sqlite"


def env_number(name: str, default: float, kind: type = float, low: float = 0.0) -> float:
    """The number in ``$name`` (``kind`` int or float, at least ``low``), or ``default`` when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < low:
        raise ConfigError(f"${name}={raw!r} is not a {'whole ' if kind is int else ''}number >= {low:g}; fix or unset it")
    return value
