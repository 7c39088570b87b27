"""Tasks: named built-in tasks (a registry of factories) and a user's own folder or manifest.

``resolve_task("path/to/images")`` loads a folder or manifest; ``resolve_task("name")`` calls the factory
registered under that name in :data:`TASKS`. A factory takes the same keyword options as :func:`load_task`
(``test_size``, ``seed``, ``name``...) that make sense for it and returns a :class:`Task`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lifebench.errors import DataError, UnknownNameError
from lifebench.registry import Registry
from lifebench.tasks.base import Examples, Task
from lifebench.tasks.catalog import CATALOG, SUITES
from lifebench.tasks.folder import load_task
from lifebench.tasks.split import stratified_split, subsample_per_class, subsample_total

__all__ = [
    "CATALOG",
    "SUITES",
    "TASKS",
    "Examples",
    "Task",
    "load_task",
    "resolve_task",
    "stratified_split",
    "subsample_per_class",
    "subsample_total",
]

_HOW = "give a registered task name, a folder of class folders, or a CSV/Parquet manifest"

TASKS: Registry[Callable[..., Task]] = Registry("task", hint=_HOW)
"""Named tasks: name -> factory (or lazy ``"module:attr"``) returning a :class:`Task`. Built-in suites go here."""

TASKS.register("tuxpaint-organisms", "lifebench.tasks.tuxpaint:load_default",
               help="161 photo cut-outs, 5 classes (bird, mammal, insect, fish, flower); Debian package, GPL-2; the demo task")
TASKS.register("synthetic-shapes", "lifebench.tasks.synthetic:load_default",
               help="generated shapes on noise, 5 classes x 24 images; offline fallback and tests")


def _benchmark_factory(name: str) -> Callable[..., Task]:
    def load(*, data_root: str | os.PathLike[str] | None = None, **kw: Any) -> Task:
        from lifebench.config import data_dir
        from lifebench.tasks.catalog import task_module

        return task_module(name).load(Path(data_root or data_dir()) / name, **kw)

    return load


for _info in CATALOG.values():
    if _info.implemented:
        TASKS.register(_info.name, _benchmark_factory(_info.name),
                       help=f"{_info.display}: {_info.modality}, {_info.protocol}, {_info.metric}")


def resolve_task(name_or_path: str | os.PathLike[str], **kw: Any) -> Task:
    """Return the task at an existing path (via :func:`load_task`) or the registered task of that name.

    An existing path wins over a registered name. ``kw`` goes to :func:`load_task` or the factory.

    Raises
    ------
    UnknownNameError
        When the argument is neither an existing path nor a registered name.
    """
    text = os.fspath(name_or_path)
    if os.path.exists(os.path.expanduser(text)):
        return load_task(text, **kw)
    if text in TASKS:
        return TASKS.get(text)(**kw)
    if "/" in text or os.sep in text or text.lower().endswith((".csv", ".tsv", ".parquet")):
        raise DataError(f"task path {text} does not exist; give a folder of class folders, a CSV/Parquet "
                        "manifest, or a registered task name (lifebench ls tasks)")
    raise UnknownNameError("task", text, TASKS.names(),
                           hint=f"{text!r} is neither a registered task nor an existing path; {_HOW}")
