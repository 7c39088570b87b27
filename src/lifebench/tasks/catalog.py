"""The built-in benchmark tasks: one declarative :class:`TaskSpec` per task, registered by the module that reads it.

A task module under ``lifebench.tasks.{ecology,treeoflife,microscopy}`` declares ``SPEC = register(TaskSpec(...))``
(or several specs, one per task it serves). The spec holds every fact the code reads about the task: where its
files come from and their checksums (:class:`Source`), its default protocol and metric (registry names, checked
against the protocol and metric registries), its evaluation kind (:data:`~lifebench.tasks.base.KINDS`), the
upstream code and files it was checked against, and four functions:

* ``load(root, **kw) -> Task``: read the data in its real on-disk layout under ``root``;
* ``missing(root) -> str | None``: why the data under ``root`` is not usable yet (None when it is);
* ``fetch(spec, root, *, show_progress) -> Path``: fetch, verify and unpack the spec's sources into ``root``;
* ``fixture(spec) -> dict[str, bytes]``: tiny files in the real layout (file names, folders, CSV columns), keyed
  by their path under ``spec.base_url``, so one test serves any task from a local HTTP server
  (:meth:`TaskSpec.mirrored`) and takes it from download to leaderboard.

Adding a task is one module in one of those packages: it is found by :func:`specs` (a walk over the packages, as
timm finds its model files), and third-party packages can add theirs through the ``lifebench.tasks`` entry-point
group. Benchmarks that are class folders in archives need no code at all (:mod:`lifebench.tasks.classfolders`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import pkgutil
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifebench.errors import UnknownNameError
from lifebench.tasks.base import KINDS

__all__ = ["CATALOG", "SUITES", "Source", "TaskSpec", "data_status", "fetch_sources", "get_info", "register", "specs",
           "via_base_url"]

log = logging.getLogger(__name__)

SUITE_ORDER = ("ecology", "reference", "tree-of-life", "microscopy")
_PACKAGES = ("lifebench.tasks.ecology", "lifebench.tasks.treeoflife", "lifebench.tasks.microscopy")
ENTRY_POINT_GROUP = "lifebench.tasks"


@dataclass(frozen=True)
class Source:
    """One file a task downloads: its path under the spec's ``base_url`` and its published checksum.

    With neither ``md5`` nor ``sha256`` the first download records the file's SHA-256 and every later use is
    checked against it (trust on first use, :func:`lifebench.download.download`). ``top`` is the folder an
    archive unpacks to as published; ``rename_to`` moves that folder once extraction finished (SYKE's plankton
    zips unpack to dated folder names that become ``train/`` and ``val/``). ``unpack``: False for plain files.
    """

    path: str
    md5: str | None = None
    sha256: str | None = None
    top: str | None = None
    rename_to: str | None = None
    unpack: bool = True
    into: str = ""
    """The folder under the data folder an archive unpacks into (iWildCam: ``iwildcam_v2.0``)."""
    save_as: str = ""
    """The local file name when the URL does not end in it (a CodaLab bundle's ``.../contents/blob/``)."""

    @property
    def name(self) -> str:
        """The file name it is saved under: ``.downloads/<name>`` for archives, ``<name>`` for plain files."""
        from urllib.parse import unquote

        return self.save_as or unquote(self.path.rsplit("/", 1)[-1].split("?")[0])


@dataclass(frozen=True)
class TaskSpec:
    """Everything lifebench knows about one built-in task, as values (see the module docstring)."""

    name: str
    display: str
    suite: str | None
    """One of :data:`SUITE_ORDER`; None for a registered variant that belongs to no suite (``plankton-openset``)."""
    modality: str
    kingdom: str
    protocol: str
    """The default protocol: a name in :data:`lifebench.protocols.PROTOCOLS`."""
    metric: str
    """The metric the benchmark reports: a name in :data:`lifebench.metrics.METRICS`."""
    kind: str
    """The evaluation kind of the loaded task (:data:`lifebench.tasks.base.KINDS`), checked when it loads."""
    method: str
    """One line: how the benchmark evaluates the task (what ``lifebench ls tasks`` prints)."""
    n_train: int | None
    n_test: int | None
    source: str
    license: str
    size: str
    load: Callable[..., Any] = field(repr=False)
    missing: Callable[[Path], str | None] = field(repr=False)
    fetch: Callable[..., Path] = field(repr=False)
    fixture: Callable[..., dict[str, bytes]] = field(repr=False)
    base_url: str = ""
    """Where the sources lie; empty for a task whose own download builds its URLs (resolved when it downloads: a
    Hugging Face dataset follows ``$HF_ENDPOINT``)."""
    sources: tuple[Source, ...] = ()
    """The files :func:`fetch_sources` fetches, with their checksums. Empty for a task whose download needs more
    than a list of files (a web page to read, an API, per-image URLs, split parts with their own MD5 files, Hub
    shards behind a token); its module's ``download`` then holds its URLs and trusts each file on first use."""
    upstream: tuple[str, ...] = ()
    """The upstream code and files this task was checked against: ``owner/repo@commit path`` (docs/tasks.md)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments every call of ``load`` gets (a Meta-Album set's code, a μ-Bench question type)."""
    folder: str = ""
    """The data folder under the data root; default: the task's name. Tasks sharing one download share it."""
    module: str = ""
    """The module that registered the spec (filled in by :func:`register`)."""

    @property
    def data_folder(self) -> str:
        return self.folder or self.name

    def download(self, root: str | Path, *, show_progress: bool = True) -> Path:
        """Fetch, verify and unpack this task's data into ``root``, one process at a time per folder (tasks that
        share a folder, such as the six μ-Bench tasks, would otherwise unpack over each other)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        with _exclusive(root / ".lifebench-download.lock", root):
            return self.fetch(self, root, show_progress=show_progress)

    def mirrored(self, base_url: str, files: Mapping[str, bytes] | None = None) -> TaskSpec:
        """This spec with its sources fetched from ``base_url`` instead (a local mirror of the same paths).

        With ``files`` (the mirror's contents by path), each pinned checksum is replaced by that of the mirrored
        file: how a test serves :meth:`fixture` files and still takes every download through verification.
        """
        sources = self.sources
        if files is not None:
            sources = tuple(dataclasses.replace(
                s, md5=hashlib.md5(files[s.path]).hexdigest() if s.md5 else None,
                sha256=hashlib.sha256(files[s.path]).hexdigest() if s.sha256 else None) for s in self.sources)
        return dataclasses.replace(self, base_url=base_url.rstrip("/"), sources=sources)

    def url(self, source: Source) -> str:
        return f"{self.base_url}/{source.path}"


@contextmanager
def _exclusive(lock: Path, root: Path):
    """Hold an exclusive lock on ``lock`` (``flock``: the system drops it when its process dies, so a killed
    download never blocks the rerun); waits, saying so, while another process holds it."""
    import fcntl

    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another lifebench process is downloading into %s; waiting for it to finish", root)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_SPECS: dict[str, TaskSpec] = {}
_discovered = False


def register(*new: TaskSpec) -> TaskSpec:
    """Register ``new`` specs (from the module that declares them); returns the first. A name taken by a
    different spec is an error, never a silent overwrite."""
    import inspect

    caller = inspect.currentframe().f_back.f_globals.get("__name__", "")  # type: ignore[union-attr]
    for spec in new:
        spec = dataclasses.replace(spec, module=spec.module or caller)
        if spec.suite is not None and spec.suite not in SUITE_ORDER:
            raise ValueError(f"task {spec.name!r}: suite {spec.suite!r} is not one of {SUITE_ORDER}")
        if spec.kind not in KINDS:
            raise ValueError(f"task {spec.name!r}: kind {spec.kind!r} is not one of {KINDS}")
        have = _SPECS.get(spec.name)
        if have is not None and have.module != spec.module:
            raise ValueError(f"task {spec.name!r} is registered twice: by {have.module} and {spec.module}")
        _SPECS[spec.name] = spec
    return _SPECS[new[0].name]


def _discover() -> None:
    """Import every module of the built-in task packages and of the ``lifebench.tasks`` entry points, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for package in _PACKAGES:
        pkg = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not break the built-in tasks
            log.warning("task plugin %s (%s) did not load: %s", ep.name, ep.value, e)


def specs() -> dict[str, TaskSpec]:
    """Every registered task by name, suites in :data:`SUITE_ORDER`, each in registration order."""
    _discover()
    rank = {s: i for i, s in enumerate(SUITE_ORDER)}
    ordered = sorted(_SPECS.values(), key=lambda s: rank.get(s.suite, len(rank)))  # stable: keeps module order
    return {s.name: s for s in ordered}


class _Catalog(Mapping[str, TaskSpec]):
    """:func:`specs` as a read-only mapping that discovers the task modules on first use."""

    def __getitem__(self, name: str) -> TaskSpec:
        return specs()[name]

    def __iter__(self):
        return iter(specs())

    def __len__(self) -> int:
        return len(specs())


class _Suites(Mapping[str, list[str]]):
    """Suite name -> its task names, in :data:`SUITE_ORDER`."""

    def _table(self) -> dict[str, list[str]]:
        every = specs().values()
        return {suite: [s.name for s in every if s.suite == suite] for suite in SUITE_ORDER}

    def __getitem__(self, suite: str) -> list[str]:
        return self._table()[suite]

    def __iter__(self):
        return iter(SUITE_ORDER)

    def __len__(self) -> int:
        return len(SUITE_ORDER)


CATALOG: Mapping[str, TaskSpec] = _Catalog()
SUITES: Mapping[str, list[str]] = _Suites()


def get_info(name: str) -> TaskSpec:
    if name not in CATALOG:
        raise UnknownNameError("benchmark task", name, list(CATALOG))
    return CATALOG[name]


def data_status(name: str, data_root: str | Path) -> tuple[Path, str | None]:
    """``(root, None)`` when the task's data is usable under ``data_root/<folder>``, else ``(root, why not)``."""
    spec = get_info(name)
    root = Path(data_root) / spec.data_folder
    why = spec.missing(root)
    if why:
        return root, f"{why} (get it: lifebench download {name} --dir {data_root})"
    return root, None


def fetch_sources(spec: TaskSpec, root: Path, *, show_progress: bool = True) -> Path:
    """The ``fetch`` of a task whose download is its list of sources: each file fetched (resumable) and verified
    against its checksum (or the one recorded on first download), archives unpacked into ``root/<into>`` through a
    staging folder (their top folder renamed to ``rename_to`` where the source says so), plain files saved as
    ``root/<name>``. Idempotent: verified files are not fetched again."""
    from lifebench.download import download, extract, extract_renamed

    for source in spec.sources:
        dest = root / ".downloads" / source.name if source.unpack else root / source.name
        path = download(spec.url(source), dest, md5=source.md5, sha256=source.sha256, show_progress=show_progress)
        if source.rename_to:
            extract_renamed(path, root / source.into, source.top or "", source.rename_to)
        elif source.unpack:
            extract(path, root / source.into)
    return root


def via_base_url(download: Callable[..., Path]) -> Callable[..., Path]:
    """A ``fetch`` for a module whose ``download(root, *, base_url, show_progress)`` builds its own URLs."""

    def fetch(spec: TaskSpec, root: Path, *, show_progress: bool = True) -> Path:
        return download(root, base_url=spec.base_url or None, show_progress=show_progress)

    return fetch
