"""Tasks: the built-in benchmarks (:data:`CATALOG`, one spec each), generated tasks, and a user's own data.

``resolve_task("path/to/images")`` loads a folder or manifest; ``resolve_task("name")`` loads the benchmark of that
name (:func:`load_benchmark`) or calls the generated task's factory in :data:`TASKS`. Keyword options go to the
loader (``data_root`` for a benchmark; ``test_size``, ``seed``, ``name``... for a folder).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lifebench.errors import ConfigError, DataError, UnknownNameError
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
    "load_benchmark",
    "load_task",
    "resolve_task",
    "stratified_split",
    "subsample_per_class",
    "subsample_total",
]

log = logging.getLogger(__name__)

_HOW = "give a registered task name, a folder of class folders, or a CSV/Parquet manifest"

TASKS: Registry[Callable[..., Task]] = Registry("task", hint=_HOW)
"""Generated tasks that need no download: name -> factory (or lazy ``"module:attr"``) returning a :class:`Task`.
The benchmark tasks are specs in :data:`CATALOG` (:mod:`lifebench.tasks.catalog`)."""

TASKS.register("tuxpaint-organisms", "lifebench.tasks.tuxpaint:load_default",
               help="161 photo cut-outs, 5 classes (bird, mammal, insect, fish, flower); Debian package, GPL-2; the demo task")
TASKS.register("synthetic-shapes", "lifebench.tasks.synthetic:load_default",
               help="generated shapes on noise, 5 classes x 24 images; offline fallback and tests")


def load_benchmark(name: str, *, data_root: str | os.PathLike[str] | None = None, **kw: Any) -> Task:
    """Load the built-in task ``name`` from ``data_root/<its folder>`` (default: the data folder).

    The spec's values are the task's: its metric and default protocol are set from the spec, and a loader whose
    task is of another evaluation kind than the spec declares is a bug caught here, not a silent wrong number.
    """
    import dataclasses

    from lifebench.config import data_dir
    from lifebench.tasks.catalog import get_info

    spec = get_info(name)
    task = spec.load(Path(data_root or data_dir()) / spec.data_folder, **{**spec.options, **kw})
    if task.kind != spec.kind:
        raise DataError(f"task {name!r} loaded as a {task.kind!r} task but its spec ({spec.module}) says {spec.kind!r}; "
                        "the task module is inconsistent: report it")
    return dataclasses.replace(task, metric=spec.metric, protocol=spec.protocol)


def resolve_task(name_or_path: str | os.PathLike[str], **kw: Any) -> Task:
    """Return the task at a path (via :func:`load_task`) or the registered task of that name.

    A user's folder must never pass for a built-in benchmark: results would be stored under the benchmark's name and
    which one ran would depend on the working directory. So a bare name (no ``/``) that is both an existing path and
    a registered task is an error naming both, unless the path *is* that benchmark's data folder (or ``data_root``
    is given, which asks for the benchmark). A path given explicitly (``./plankton``, ``data/plankton``, a manifest)
    whose task name equals a registered one is renamed ``local:<name>``, with a log line. ``kw`` goes to
    :func:`load_task` or the factory.

    Raises
    ------
    UnknownNameError
        When the argument is neither an existing path nor a registered name.
    ConfigError
        When a bare name is both an existing path and a registered task.
    """
    text = os.fspath(name_or_path)
    exists = os.path.exists(os.path.expanduser(text))
    explicit = "/" in text or os.sep in text or text.startswith("~")
    registered = text in CATALOG or text in TASKS
    if exists and (explicit or not registered):
        return _load_local(text, **kw)
    if exists and not _is_benchmark_folder(text, kw.get("data_root")):
        raise ConfigError(f"{text!r} is both the folder ./{text} here and the built-in task {text!r} "
                          f"(lifebench ls tasks); write ./{text} for your folder, or give --data-root DIR "
                          "(or run elsewhere) for the benchmark")
    if text in CATALOG:
        return load_benchmark(text, **kw)
    if text in TASKS:
        return TASKS.get(text)(**kw)
    if explicit or text.lower().endswith((".csv", ".tsv", ".parquet")):
        raise DataError(f"task path {text} does not exist; give a folder of class folders, a CSV/Parquet "
                        "manifest, or a registered task name (lifebench ls tasks)")
    raise UnknownNameError("task", text, [*CATALOG, *TASKS.names()],
                           hint=f"{text!r} is neither a registered task nor an existing path; {_HOW}")


def _load_local(path: str, **kw: Any) -> Task:
    """Load a user's folder or manifest, prefixing its name with ``local:`` when it equals a registered task's."""
    import dataclasses

    kw.pop("data_root", None)  # a benchmark option; a folder's location is the path itself
    task = load_task(path, **kw)
    if task.name in CATALOG or task.name in TASKS:
        renamed = f"local:{task.name}"
        log.info("task %s: its name %r is a built-in task's, so its results are stored as %r", path, task.name, renamed)
        task = dataclasses.replace(task, name=renamed)
    return task


def _is_benchmark_folder(path: str, data_root: str | os.PathLike[str] | None) -> bool:
    """Whether the bare name ``path`` can only mean the benchmark: ``data_root`` was given, or the path is the
    benchmark's own data folder (run from inside the data root)."""
    if path not in CATALOG:
        return False
    if data_root is not None:
        return True
    from lifebench.config import data_dir

    folder = data_dir() / CATALOG[path].data_folder
    return folder.exists() and os.path.samefile(path, folder)


class _ListingModule(type(os)):
    """This package, callable: ``lifebench.tasks()`` is the notebook API's task listing (:func:`lifebench.api.tasks`).
    ``lb.tasks`` names this package once anything imported it, so the package itself answers the call."""

    def __call__(self) -> Any:
        from lifebench.api import tasks

        return tasks()


__import__("sys").modules[__name__].__class__ = _ListingModule
