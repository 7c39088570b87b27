"""The results store: one SQLite file (WAL mode) of experiments and their per-example predictions.

Per-example predictions are the source of truth; every statistic in a report is computed from them.
An experiment is identified by the hash of its configuration: writing a hash that is already stored is a
no-op that returns the stored id, so reruns never duplicate results.

Why this design
---------------
* **One transaction per experiment.** The experiment row and all its prediction rows are written inside one
  ``BEGIN IMMEDIATE ... COMMIT``; a crash, a kill or an exception half-way leaves nothing (SQLite rolls back
  the uncommitted WAL frames on the next open). ``BEGIN IMMEDIATE`` takes the write lock before the
  duplicate check, so two processes writing the same hash cannot both insert it.
* **WAL + busy timeout.** Readers never block the writer and writers from several processes queue for up
  to 30 s instead of failing with "database is locked".
* **Predictions stored column by column.** One blob per experiment holds its prediction arrays; a report
  reads millions of predictions without building a Python object per row. The blob is written and replaced
  only as a whole, inside the experiment's transaction.
* **One connection per process.** A :class:`Store` that finds itself in a forked child opens a fresh
  connection there; SQLite connections must not be shared across ``fork``.
* **Claims name their process.** A claim's owner is ``host:pid:start:token`` (:func:`worker_owner`), so a claim
  left by a process of this host that is gone (killed -9, out of memory) is taken over at once, without waiting
  for its lease; a claim of another host can only expire. The owner column stays TEXT, so stores written by
  older versions, and older versions sharing a store, keep working.
* **A full disk is one line.** "database or disk is full" or a file-size limit during :meth:`Store.write`
  rolls the experiment's transaction back (what was stored before is untouched) and raises
  :class:`StoreFullError` with the space the write needed.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import io
import json
import logging
import math
import os
import random
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from lifebench.errors import ConfigError, StoreFullError
from lifebench.fsutil import nearest_existing

__all__ = ["SCHEMA_VERSION", "Experiment", "Predictions", "Store", "StoreFullError", "check_store_path",
           "reads_store", "worker_owner"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

SCHEMA_VERSION = 3
"""1: one SQL row per prediction. 2: one row per experiment holding its predictions column by column
(loading a million predictions takes milliseconds instead of seconds); version 1 stores are converted on open.
3: label columns (true, predicted and ranked classes, parts, groups) stored as integer codes into their sorted
distinct values, several times smaller than fixed-width strings; version 2 blobs are read as they are."""
BUSY_TIMEOUT_S = 30.0


def lease_from_env() -> float:
    """``$LIFEBENCH_LEASE_S`` in seconds (600 when unset); ConfigError naming the value when it is no number of
    seconds >= 1. The CLI calls it before a command runs, so a bad value is one line and exit 2."""
    text = os.environ.get("LIFEBENCH_LEASE_S", "600")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"LIFEBENCH_LEASE_S={text!r} is not a number of seconds >= 1; set it to the seconds a "
                          "claim lives without a heartbeat (default 600) or unset it")
    return value


def _lease_s() -> float:
    try:
        return lease_from_env()
    except ConfigError:  # importing never fails: the CLI reports the bad value before any command runs
        return 600.0


LEASE_S = _lease_s()
"""A worker renews its claims every LEASE_S / 10 seconds; a claim not renewed for LEASE_S (default 10 minutes,
``$LIFEBENCH_LEASE_S`` to change) has expired and another worker takes the job over. The lease is what protects
claims of other hosts; a claim of this host whose process is gone ends at once (:func:`worker_owner`)."""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of a process from ``/proc/<pid>/stat`` (state ``Z``: a zombie, already dead; start
    time in clock ticks after boot, which tells a process from a later one given the same pid), or None where
    there is no /proc (macOS) or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # the name (field 2) is in parentheses and may hold anything
    if len(fields) < 20:
        return None
    return fields[0].decode(), fields[19].decode()


@functools.cache
def _pid_space() -> str:
    """This kernel boot and pid namespace, e.g. ``3f2a9c1e-4026531836``: pids name the same processes only for
    processes that share both (a container with its host's name may have its own pids), "" where unknown."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        ns = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return ""
    return f"{boot}-{ns}"


def worker_owner() -> str:
    """A claim owner naming this process: ``host:pid:start:token``.

    Why: the owner lets another process on this host see that the claim's worker is gone (killed -9, out of
    memory) and take its jobs over at once, instead of waiting out the lease. ``start`` (its start time and the pid
    space it runs in, see :func:`_proc_stat` and :func:`_pid_space`) keeps a later process that got the same pid
    from passing for it; the random token tells apart two runs in one process.
    """
    pid = os.getpid()
    stat = _proc_stat(pid)
    start = f"{stat[1] if stat else ''}.{_pid_space()}"
    return f"{socket.gethostname()}:{pid}:{start}:{secrets.token_hex(3)}"


def _owner_gone(owner: str) -> bool:
    """Whether ``owner`` (see :func:`worker_owner`) is a process of this host that has ended.

    False for another host's worker, an owner of unknown form, or a process that may still run: only its lease
    ends those claims. An owner of the older form ``host:pid:token`` is judged by its pid alone.
    """
    parts = owner.split(":")
    if len(parts) not in (3, 4) or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return False
    pid, start, space = int(parts[1]), "", ""
    if len(parts) == 4:
        start, _, space = parts[2].partition(".")
        if space != _pid_space():  # another container or boot of this host name: its pids are not ours
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user has this pid: judged by its start time below
        pass
    except OSError:
        return False
    stat = _proc_stat(pid)
    return stat is not None and (stat[0] in ("Z", "X") or bool(start) and stat[1] != start)  # ended, or a later process


def _is_full(exc: BaseException) -> bool:
    """Whether an error from SQLite or the OS means that the disk, or a file-size limit, left no room to write."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR") or any(
        m in str(exc) for m in ("database or disk is full", "disk I/O error"))


def _is_locked(exc: BaseException) -> bool:
    """Whether SQLite gave up waiting (``BUSY_TIMEOUT_S``) for another process's write lock."""
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _locked_error(path: Path) -> ConfigError:
    return ConfigError(f"results store {path} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s; "
                       "retry when that process has finished writing")


def _full_error(path: Path, what: str, nbytes: int, exc: BaseException) -> StoreFullError:
    """The one-line error of a write that found no room: the space it needs (the write-ahead log and then the
    database each hold the new pages, plus a margin for indexes and page slack) and what is free now."""
    folder = path.resolve().parent
    try:
        free = f" ({_size(shutil.disk_usage(folder).free)} free now)"
    except OSError:
        free = ""
    limit = ""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY:
            limit = f" and a file-size limit (ulimit -f, now {_size(soft)}) above the store's size"
    except (ImportError, OSError, ValueError):
        pass
    return StoreFullError(
        f"results store {path}: could not write {what} ({exc}); it was rolled back and every result stored before "
        f"is kept. Writing it needs about {_size(2 * nbytes + (1 << 20))} free in {folder}{free}{limit}: free some "
        "space or pass another --store, then rerun (stored experiments are skipped)")


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# JSON columns are declared TEXT: a declared type "JSON" would get NUMERIC affinity and turn "5" into 5.
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS experiments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids are never reused, even after a replace
        config_hash TEXT UNIQUE NOT NULL,
        task TEXT NOT NULL,
        backbone TEXT NOT NULL,
        protocol TEXT NOT NULL,
        metric TEXT NOT NULL,
        n_train INTEGER,
        seed INTEGER NOT NULL,
        config TEXT NOT NULL,      -- JSON object
        classes TEXT NOT NULL,     -- JSON list: the canonical class list
        fit_info TEXT NOT NULL,    -- JSON object, e.g. the chosen regularisation
        provenance TEXT NOT NULL,  -- JSON object, see lifebench.store.provenance
        timings TEXT NOT NULL,     -- JSON object: seconds per stage
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS experiments_by_task ON experiments (task, backbone, protocol)",
    """
    CREATE TABLE IF NOT EXISTS predictions (
        experiment_id INTEGER PRIMARY KEY REFERENCES experiments (id) ON DELETE CASCADE,
        n INTEGER NOT NULL,        -- number of predictions
        data BLOB NOT NULL         -- the Predictions columns as one uncompressed .npz (numpy arrays)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS failures (
        config_hash TEXT PRIMARY KEY,  -- the latest failure of an experiment not (yet) stored
        label TEXT NOT NULL,
        owner TEXT NOT NULL,
        error TEXT NOT NULL,
        failed_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS claims (
        config_hash TEXT PRIMARY KEY,  -- an experiment some worker is computing now
        owner TEXT NOT NULL,           -- host:pid:random of that worker
        label TEXT NOT NULL,           -- what it runs, for the dry-run plan
        claimed_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL     -- a claim without a heartbeat for LEASE_S seconds has expired
    )
    """,
)

_EXPERIMENT_COLUMNS = (
    "config_hash", "task", "backbone", "protocol", "metric", "n_train", "seed",
    "config", "classes", "fit_info", "provenance", "timings", "created_at",
)  # fmt: skip
_JSON_COLUMNS = ("config", "classes", "fit_info", "provenance", "timings")


@dataclass(frozen=True)
class Experiment:
    """One evaluated configuration: a (task, backbone, protocol, n_train, seed) with its metadata.

    ``classes`` is the task's canonical class list; ``fit_info`` holds what the fit chose (e.g. ``C``);
    ``timings`` holds seconds per stage. ``created_at`` (Unix time) is set at write time when None, and
    ``id`` is None until the experiment is stored.
    """

    config_hash: str
    task: str
    backbone: str
    protocol: str
    metric: str
    n_train: int | None = None
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = field(default=(), repr=False)
    fit_info: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    created_at: float | None = None
    id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if not self.config_hash:
            raise ValueError("Experiment.config_hash must be a non-empty string")


@dataclass(frozen=True, eq=False)
class Predictions:
    """Per-example predictions of one experiment, as parallel arrays.

    ``ids``, ``y_true`` and ``y_pred`` hold strings (example ids and class names); ``score`` is the
    confidence of ``y_pred`` (float64, NaN where unknown; None means all unknown); ``topk`` is an optional
    ``(n, k)`` array of ranked predicted class names, best first (``""`` where nothing was ranked).

    Optional, for tasks that need them: ``part`` (the part of a multi-part task each prediction belongs to,
    e.g. a FishNet trait), ``group`` (the unit that bootstrap resampling keeps together, e.g. the image that
    all nine traits of FishNet describe) and ``extra`` (named per-prediction float columns a metric needs,
    e.g. re-identification average precision).
    """

    ids: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    score: np.ndarray | None = None
    topk: np.ndarray | None = None
    part: np.ndarray | None = None
    group: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("ids", "y_true", "y_pred"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1 or len(arr) != n or arr.dtype.kind not in "UO":
                raise ValueError(
                    f"Predictions.{name} must be a 1-D string array of length {n}, got {arr.dtype} {arr.shape}"
                )
            object.__setattr__(self, name, arr)
        score = np.full(n, np.nan) if self.score is None else np.asarray(self.score, dtype=np.float64)
        if score.shape != (n,):
            raise ValueError(f"Predictions.score must have shape ({n},), got {score.shape}")
        object.__setattr__(self, "score", score)
        if self.topk is not None:
            topk = np.asarray(self.topk)
            if topk.ndim != 2 or topk.shape[0] != n or topk.dtype.kind not in "UO":
                raise ValueError(
                    f"Predictions.topk must be an ({n}, k) string array, got {topk.dtype} {topk.shape}"
                )
            object.__setattr__(self, "topk", topk)
        for name in ("part", "group"):
            if getattr(self, name) is not None:
                arr = np.asarray(getattr(self, name)).astype(str)
                if arr.shape != (n,):
                    raise ValueError(f"Predictions.{name} must have shape ({n},), got {arr.shape}")
                object.__setattr__(self, name, arr)
        extra = {}
        for key, values in self.extra.items():
            arr = np.asarray(values, dtype=np.float64)
            if arr.shape != (n,) or not key.isidentifier():
                raise ValueError(f"Predictions.extra[{key!r}] must be a float array of shape ({n},) with a "
                                 f"name that is an identifier, got {arr.shape}")
            extra[key] = arr
        object.__setattr__(self, "extra", extra)
        ids = self.ids
        if n > 1 and not (ids[1:] > ids[:-1]).all() and len(np.unique(ids)) != n:  # stored ids are sorted
            raise ValueError("Predictions.ids must be unique: one prediction per test example")

    def __len__(self) -> int:
        return len(self.ids)

    def categorical(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The label column ``name`` (``y_true``, ``y_pred``, ``topk``, ``part``, ``group``) as its sorted distinct
        values and the position of each entry among them: kept from the stored form, computed otherwise."""
        if (known := self.__dict__.get("_categorical", {}).get(name)) is not None:
            return known
        values = getattr(self, name)
        vocab, codes = np.unique(values, return_inverse=True)
        return vocab, codes.reshape(values.shape)

    def take(self, idx: np.ndarray) -> Predictions:
        """The predictions at positions ``idx``, every column included."""
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return Predictions(self.ids[idx], self.y_true[idx], self.y_pred[idx], self.score[idx], pick(self.topk),
                           pick(self.part), pick(self.group), {k: v[idx] for k, v in self.extra.items()})

    def to_bytes(self) -> bytes:
        """The columns as one ``.npz`` (sorted by id), the stored form; read back with :meth:`from_bytes`.

        Label columns are stored as ``<name>.codes`` (int32) into ``<name>.vocab`` (their sorted distinct values).
        """
        order = np.argsort(self.ids, kind="stable")
        cols: dict[str, np.ndarray] = {"ids": self.ids[order].astype(str), "score": self.score[order]}
        for name in _CODED:
            if (values := getattr(self, name)) is not None:
                vocab, codes = np.unique(values[order].astype(str), return_inverse=True)
                cols[f"{name}.vocab"], cols[f"{name}.codes"] = vocab, codes.reshape(values.shape).astype(np.int32)
        cols |= {f"extra.{k}": v[order] for k, v in self.extra.items()}
        buf = io.BytesIO()
        np.savez(buf, **cols)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, topk: bool = True) -> Predictions:
        """The predictions that :meth:`to_bytes` stored; ``topk=False`` skips the ranked labels."""
        cols, extra, coded = {}, {}, {}
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            for key in z.files:
                name, _, kind = key.partition(".")
                if name == "topk" and not topk:
                    continue
                if name == "extra":
                    extra[kind] = z[key]
                elif kind == "codes":
                    coded[name] = z[f"{name}.vocab"], z[key]
                    cols[name] = coded[name][0][coded[name][1]]
                elif not kind:  # a plain column (schema 2 stored labels as strings too)
                    cols[name] = z[key]
        preds = cls(**cols, extra=extra)
        object.__setattr__(preds, "_categorical", coded)
        return preds


_CODED = ("y_true", "y_pred", "topk", "part", "group")
"""Predictions columns of labels, stored as codes into their distinct values."""


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} as JSON: {obj!r}")


def _dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_json_default)


def _convert_v1(conn: sqlite3.Connection) -> None:
    """Move schema-1 predictions (one row each, in ``predictions_v1``) into per-experiment blobs."""
    ids = [r[0] for r in conn.execute("SELECT DISTINCT experiment_id FROM predictions_v1")]
    for exp_id in ids:
        rows = conn.execute("SELECT example_id, y_true, y_pred, score, topk FROM predictions_v1 "
                            "WHERE experiment_id = ? ORDER BY example_id", (exp_id,)).fetchall()
        example, y_true, y_pred, score, topk = zip(*rows, strict=True)
        preds = Predictions(np.array(example, dtype=str), np.array(y_true, dtype=str), np.array(y_pred, dtype=str),
                            np.array([np.nan if v is None else v for v in score], dtype=np.float64),
                            None if topk[0] is None else np.array([json.loads(t) for t in topk], dtype=str))
        conn.execute("INSERT INTO predictions (experiment_id, n, data) VALUES (?, ?, ?)",
                     (exp_id, len(preds), preds.to_bytes()))
    conn.execute("DROP TABLE predictions_v1")
    logger.info("converted the predictions of %d experiments to the schema-%d store format", len(ids), SCHEMA_VERSION)


def check_store_path(path: str | os.PathLike[str], *, make_folder: bool = False) -> None:
    """Raise ConfigError when ``path`` cannot hold a writable store; writes nothing unless ``make_folder``, which
    creates its missing folders."""
    path = Path(path)
    fix = "pass a file path in a writable folder, e.g. results/lifebench.sqlite"
    if path.is_dir():
        raise ConfigError(f"results store path {path} is a folder; {fix}")
    existing = nearest_existing(path.parent)
    if not existing.is_dir():
        raise ConfigError(f"results store path {path} lies under {existing}, which is not a folder; {fix}")
    # WAL mode creates -wal and -shm files beside the database, so the folder itself must be writable.
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"the folder {existing} of results store {path} is not writable; {fix}")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"results store {path} is not readable and writable; fix its permissions or {fix}")
    if make_folder and existing != path.parent:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the folder {path.parent} for results store {path} ({exc.strerror}); {fix}"
            ) from exc


def _set_wal(conn: sqlite3.Connection) -> str:
    """Switch to WAL mode and return the journal mode now in force.

    The switch needs an exclusive lock, and SQLite answers "database is locked" at once, without calling
    the busy handler, when another process is switching the same new file at the same moment; so retry
    here with a short random back-off, up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


class Store:
    """A results store backed by one SQLite file; safe to open from several processes at once.

    Parameters
    ----------
    path:
        The database file; created (with its folder) when missing.
    create:
        False to open only an existing lifebench store (for reading): a missing file, an empty one or another
        program's SQLite database is then a ConfigError and nothing is written to it.

    Examples
    --------
    >>> with Store("results.sqlite") as store:            # doctest: +SKIP
    ...     exp_id = store.write(experiment, predictions)
    ...     preds = store.predictions(exp_id)
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise ConfigError(f"no results store at {self.path}; run `lifebench run` first or pass the right --store")
        self._create = create
        check_store_path(self.path, make_folder=True)
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = self._open()
        self._inherited: sqlite3.Connection | None = None  # a parent's connection, kept open after a fork

    # ---------------------------------------------------------------------------------------------- setup

    def _open(self) -> sqlite3.Connection:
        path = self.path
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open results store {path} ({exc}); pass a writable file path") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            # The first read of the file header: a file that is not SQLite fails here, before any write.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._refuse_foreign(conn)
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"results store {path} has schema version {version}, newer than this lifebench "
                    f"understands ({SCHEMA_VERSION}); upgrade lifebench or use another store file"
                )
            mode = _set_wal(conn)
            if mode.lower() != "wal":
                logger.warning(
                    "results store %s: journal_mode is %s, not WAL (file system without shared memory?)",
                    path,
                    mode,
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if version < SCHEMA_VERSION:
                self._create_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "locked" in str(exc):
                raise _locked_error(path) from exc
            raise ConfigError(
                f"results store {path} cannot be used ({exc}); it must be a lifebench SQLite file in a "
                "writable folder: pass another path or move this file away"
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Before anything is written to a file without a lifebench schema: refuse another program's database,
        and, when opened for reading, an empty file."""
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        # The schema and its version are committed together: tables with a version read after them are a
        # lifebench store that another process has just created, not a foreign database.
        if tables and conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            raise ConfigError(f"{self.path} is an SQLite database of another program (tables: "
                              f"{', '.join(tables[:5])}), not a lifebench results store; pass another path")
        if not tables and not self._create:
            raise ConfigError(f"{self.path} is empty, not a lifebench results store; pass the store that "
                              "`lifebench run` wrote")

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have created the schema while we waited for the lock.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                if version == 1:
                    conn.execute("ALTER TABLE predictions RENAME TO predictions_v1")
                for statement in _SCHEMA:
                    conn.execute(statement)
                if version == 1:
                    _convert_v1(conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``: the write lock, waited for up to ``BUSY_TIMEOUT_S`` while another process holds it
        (then a one-line error instead of SQLite's bare "database is locked")."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_locked(exc):
                raise _locked_error(self.path) from exc
            raise

    @property
    def conn(self) -> sqlite3.Connection:
        """This process's connection (reopened after a fork, never shared with the parent)."""
        if self._conn is None:
            raise ConfigError(f"results store {self.path} is closed; open a new Store")
        if os.getpid() != self._pid:
            # Deliberately leave the parent's connection unclosed: closing it here could release the
            # parent's POSIX locks on the file. Only the new connection is used in this process.
            self._inherited = self._conn
            self._pid = os.getpid()
            self._conn = self._open()
        return self._conn

    def close(self) -> None:
        """Close the connection; further calls raise ConfigError."""
        if self._conn is not None and os.getpid() == self._pid:
            self._conn.close()
        self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ---------------------------------------------------------------------------------------------- writes

    def write(self, exp: Experiment, preds: Predictions, replace: bool = False) -> int:
        """Store ``exp`` and its predictions in one transaction; return the experiment id.

        If ``exp.config_hash`` is already stored, nothing is written and the stored id is returned, unless
        ``replace`` is True: then the old experiment and its predictions are deleted and the new one
        inserted, in the same transaction. Any error leaves the store as it was; no room on the disk (or a file-size
        limit) is a :class:`StoreFullError` that says how much space the write needs.
        """
        created_at = time.time() if exp.created_at is None else float(exp.created_at)
        values = {
            "config_hash": exp.config_hash, "task": exp.task, "backbone": exp.backbone,
            "protocol": exp.protocol, "metric": exp.metric,
            "n_train": None if exp.n_train is None else int(exp.n_train), "seed": int(exp.seed),
            "config": _dumps(exp.config), "classes": _dumps(list(exp.classes)),
            "fit_info": _dumps(exp.fit_info), "provenance": _dumps(exp.provenance),
            "timings": _dumps(exp.timings), "created_at": created_at,
        }  # fmt: skip
        blob = preds.to_bytes()
        conn = self.conn
        self._begin()
        try:
            row = conn.execute(
                "SELECT id FROM experiments WHERE config_hash = ?", (exp.config_hash,)
            ).fetchone()
            if row is not None and not replace:
                conn.execute("ROLLBACK")
                logger.info(
                    "experiment %s is already stored as id %d; not written again", exp.config_hash, row[0]
                )
                return int(row[0])
            if row is not None:
                conn.execute("DELETE FROM experiments WHERE id = ?", (row[0],))
                logger.info("replacing stored experiment %s (id %d)", exp.config_hash, row[0])
            columns = ", ".join(_EXPERIMENT_COLUMNS)
            marks = ", ".join("?" for _ in _EXPERIMENT_COLUMNS)
            cur = conn.execute(
                f"INSERT INTO experiments ({columns}) VALUES ({marks})",
                [values[c] for c in _EXPERIMENT_COLUMNS],
            )
            exp_id = cur.lastrowid
            assert exp_id is not None
            conn.execute("INSERT INTO predictions (experiment_id, n, data) VALUES (?, ?, ?)",
                         (exp_id, len(preds), blob))
            conn.execute("DELETE FROM claims WHERE config_hash = ?", (exp.config_hash,))
            conn.execute("DELETE FROM failures WHERE config_hash = ?", (exp.config_hash,))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error | OSError) and _is_full(exc):
                nbytes = len(blob) + sum(len(str(v)) for v in values.values())
                raise _full_error(self.path, f"experiment {exp.config_hash}", nbytes, exc) from exc
            raise
        logger.debug("stored experiment %s as id %d with %d predictions", exp.config_hash, exp_id, len(preds))
        return int(exp_id)

    def merge(self, other: str | os.PathLike[str]) -> tuple[int, int]:
        """Copy the experiments of another store into this one; returns ``(added, already here)``.

        An experiment whose configuration hash is already here is left as it is, so merging twice, or merging
        stores that overlap, never duplicates a result."""
        added = already = 0
        with Store(other, create=False) as src:
            for exp in src.experiments():
                if self.has(exp.config_hash):
                    already += 1
                    continue
                assert exp.id is not None
                self.write(dataclasses.replace(exp, id=None), src.predictions(exp.id))
                added += 1
        return added, already

    # ---------------------------------------------------------------------------------------------- claims

    def claim(self, config_hash: str, owner: str, label: str = "", lease_s: float = LEASE_S,
              replace: bool = False) -> bool:
        """Take the claim on an experiment for ``owner``; False when another live worker holds it, or (unless
        ``replace``) when the experiment is already stored: checked in the same transaction, so a job finished
        by another worker a moment ago is never started again.

        A claim whose heartbeat is older than ``lease_s`` (its worker died or was killed on another host), or whose
        owner is a process of this host that has ended (:func:`worker_owner`), is taken over.
        Claims keep two workers sharing a store (several GPUs, Slurm array tasks) from computing the same
        experiment; :meth:`write` releases the writer's claim in the same transaction.
        """
        now = time.time()
        conn = self.conn
        self._begin()
        try:
            row = conn.execute("SELECT owner, heartbeat_at FROM claims WHERE config_hash = ?", (config_hash,)).fetchone()
            stored = not replace and conn.execute("SELECT 1 FROM experiments WHERE config_hash = ?",
                                                  (config_hash,)).fetchone() is not None
            if stored or (row is not None and row[0] != owner and now - row[1] < lease_s and not _owner_gone(row[0])):
                conn.execute("ROLLBACK")
                return False
            if row is not None and row[0] != owner and now - row[1] < lease_s:
                logger.info("taking over the claim of %s on %s: that process of this host has ended", row[0], label)
            conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)", (config_hash, owner, label, now, now))
            conn.execute("COMMIT")
            return True
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and _is_full(exc):
                raise _full_error(self.path, f"the claim on {label or config_hash}", 4096, exc) from exc
            raise

    def heartbeat(self, owner: str) -> None:
        """Renew every claim that ``owner`` holds."""
        self.conn.execute("UPDATE claims SET heartbeat_at = ? WHERE owner = ?", (time.time(), owner))

    def release(self, config_hash: str | None, owner: str) -> None:
        """Drop ``owner``'s claim on an experiment (for a job that failed or was interrupted; a written one is
        released by write), or all its claims when ``config_hash`` is None.

        Releasing is best effort when the disk is full: the claim then stays until its process has ended (this
        host) or its lease expires, and the error that filled the disk is the one reported, not this one."""
        where, params = ("owner = ?", (owner,)) if config_hash is None else \
            ("config_hash = ? AND owner = ?", (config_hash, owner))
        try:
            self.conn.execute(f"DELETE FROM claims WHERE {where}", params)
        except sqlite3.Error as exc:
            if _is_locked(exc):  # a claim of this host ends with its process anyway; the caller's error is the news
                logger.info("could not release the claims of %s in %s (%s)", owner, self.path, exc)
                return
            if not _is_full(exc):
                raise
            logger.warning("could not release the claims of %s in %s (%s); they end when this process does",
                           owner, self.path, exc)

    def record_failure(self, config_hash: str, label: str, owner: str, error: str) -> None:
        """Remember that an experiment failed (the latest error wins; a later successful write clears it)."""
        try:
            self.conn.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?)",
                              (config_hash, label, owner, error[:2000], time.time()))
        except sqlite3.Error as exc:
            if _is_locked(exc):
                raise _locked_error(self.path) from exc
            if not _is_full(exc):
                raise
            raise _full_error(self.path, f"the failure of {label}", len(error[:2000]) + len(label), exc) from exc

    def failures(self) -> dict[str, tuple[str, str]]:
        """``config_hash -> (label, error)`` of the experiments whose latest attempt failed."""
        rows = self.conn.execute("SELECT config_hash, label, error FROM failures").fetchall()
        return {h: (label, err) for h, label, err in rows}

    def claims(self, lease_s: float = LEASE_S) -> dict[str, tuple[str, str]]:
        """``config_hash -> (owner, label)`` of the live claims: what is running now (a claim whose lease has expired,
        or whose process on this host has ended, is not)."""
        rows = self.conn.execute("SELECT config_hash, owner, label FROM claims WHERE heartbeat_at > ?",
                                 (time.time() - lease_s,)).fetchall()
        gone = {o: _owner_gone(o) for o in {o for _, o, _ in rows}}
        return {h: (o, label) for h, o, label in rows if not gone[o]}

    def claimed(self, config_hash: str, lease_s: float = LEASE_S) -> tuple[str, float] | None:
        """``(owner, seconds since its heartbeat)`` of a live claim on the experiment, else None."""
        row = self.conn.execute("SELECT owner, heartbeat_at FROM claims WHERE config_hash = ?", (config_hash,)).fetchone()
        if row is None or time.time() - row[1] >= lease_s or _owner_gone(row[0]):
            return None
        return str(row[0]), time.time() - float(row[1])

    # ---------------------------------------------------------------------------------------------- reads

    def has(self, config_hash: str) -> bool:
        """Whether an experiment with this configuration hash is stored."""
        row = self.conn.execute("SELECT 1 FROM experiments WHERE config_hash = ?", (config_hash,)).fetchone()
        return row is not None

    def get(self, config_hash: str) -> Experiment | None:
        """The stored experiment with this configuration hash, or None."""
        rows = self._select("WHERE config_hash = ?", (config_hash,))
        return rows[0] if rows else None

    def experiments(
        self, task: str | None = None, backbone: str | None = None, protocol: str | None = None
    ) -> list[Experiment]:
        """Stored experiments, optionally filtered by task, backbone and protocol, in insertion order."""
        filters = {"task": task, "backbone": backbone, "protocol": protocol}
        used = {k: v for k, v in filters.items() if v is not None}
        where = ("WHERE " + " AND ".join(f"{k} = ?" for k in used)) if used else ""
        return self._select(where, tuple(used.values()))

    def _select(self, where: str, params: tuple[object, ...]) -> list[Experiment]:
        columns = ", ".join(("id", *_EXPERIMENT_COLUMNS))
        cur = self.conn.execute(f"SELECT {columns} FROM experiments {where} ORDER BY id", params)
        out = []
        for row in cur.fetchall():
            values = dict(zip(("id", *_EXPERIMENT_COLUMNS), row, strict=True))
            for c in _JSON_COLUMNS:
                values[c] = json.loads(values[c])
            out.append(Experiment(**values))
        return out

    def predictions(self, experiment_id: int, *, topk: bool = True) -> Predictions:
        """The predictions of one experiment, ordered by example id; ``topk=False`` leaves the ranked labels unread
        (``topk`` None), which saves most of the time when a metric does not need them."""
        conn = self.conn
        if conn.execute("SELECT 1 FROM experiments WHERE id = ?", (experiment_id,)).fetchone() is None:
            raise ConfigError(
                f"results store {self.path} has no experiment with id {experiment_id!r}; list the stored ones "
                "with Store.experiments()"
            )
        row = conn.execute("SELECT data FROM predictions WHERE experiment_id = ?", (experiment_id,)).fetchone()
        if row is None:
            empty = np.array([], dtype=str)
            return Predictions(ids=empty, y_true=empty, y_pred=empty)
        return Predictions.from_bytes(row[0], topk=topk)


def reads_store(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Let ``fn(store, ...)`` take the path of an existing store file as well as a :class:`Store`: the file is
    opened for the call and closed after it; a missing file is a ConfigError."""

    @functools.wraps(fn)
    def wrapper(store: Store | str | os.PathLike[str], *args: Any, **kwargs: Any) -> _T:
        if isinstance(store, Store):
            return fn(store, *args, **kwargs)
        with Store(store, create=False) as opened:
            return fn(opened, *args, **kwargs)

    return wrapper
