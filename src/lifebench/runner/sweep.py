"""Sweeps: a TOML file of models x tasks x protocols x n_train x seeds, run here, by local workers or on Slurm.

A sweep file holds the options of ``lifebench run`` as keys (``models = [...]``, ``suites = ["ecology"]``,
``n_train = [100, 1000]``, ...) and an ``[executor]`` table. It is turned into the argument list of
``lifebench run``, so a sweep means exactly what the same ``run`` command means and is checked the same way.

Every executor starts workers that each run the whole plan with ``--keep-going``: a worker claims a job in the
store just before running it, skips what is stored or claimed by a live worker, and records what fails. So
the executors differ only in where workers run:

* ``inprocess``: one worker, this process;
* ``local``: N worker processes here (``processes = "gpus"``: one per visible GPU, each seeing one);
* ``slurm``: one Slurm array task per backbone through submitit, each loading its backbone once. A task hit by
  its time limit or preempted is requeued by submitit's checkpointing and resumes where the store says.

A worker killed at any point loses only the job in flight. On its own host its claim is released at once:
SIGTERM and SIGINT release it on the way out, and after a kill -9 the next worker sees that the claiming process
is gone and takes the job over. A claim from another host expires after ``LEASE_S`` without a heartbeat.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifebench.errors import ConfigError, one_line, shown
from lifebench.fsutil import read_text

__all__ = ["KEY_ALIASES", "SCHEMA", "SWEEP_KEYS", "SweepSpec", "load", "read_run_config", "run_local",
           "run_option_groups", "status_text", "submit_slurm", "validate", "wait_slurm"]

log = logging.getLogger(__name__)


@dataclass
class SweepSpec:
    path: Path
    run_argv: list[str]
    executor: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ the schema
# Sweep files and ``run --config`` files are checked against one typed schema before anything runs, so that a
# value of the wrong type (``processes = [2]``, ``store = ["r.sqlite"]``) stops with one line naming the file, the
# key and the type expected, instead of a traceback or, worse, a store file named "['r.sqlite']". The schema checks
# types and simple lower bounds; the ranges and choices of ``lifebench run`` options are checked once more where the
# command line's are (argparse), so a key and its option can never disagree.


@dataclass(frozen=True)
class Leaf:
    """A single value: ``expect`` says what it must be in a message ("an integer ≥ 1"); ``fix``, when given,
    is a message of its own (``{key}`` and ``{value}`` filled in) for types that read better as an example."""

    expect: str
    ok: Callable[[Any], bool]
    fix: str = ""


@dataclass(frozen=True)
class OneOrList:
    """One value or a list of them (``models = "bioclip"`` is ``models = ["bioclip"]``)."""

    item: Leaf
    expect: str


@dataclass(frozen=True)
class TableOf:
    """A table whose keys are free (protocol parameters, Slurm options) and whose values are ``value``."""

    value: Leaf
    expect: str


Spec = Leaf | OneOrList | TableOf | dict[str, Any]
"""A key's type: a value, one value or a list, a table of free keys, or a table with its own schema."""


def _int(low: int) -> Leaf:
    return Leaf(f"an integer ≥ {low}", lambda v: type(v) is int and v >= low)


def _one_of(*choices: str) -> Leaf:
    return Leaf(f"one of {', '.join(choices)}", lambda v: v in choices,
                fix="{key} = {value}; use " + ", ".join(choices[:-1]) + f" or {choices[-1]}")


INT = Leaf("an integer", lambda v: type(v) is int)
TEXT = Leaf("a non-empty string", lambda v: isinstance(v, str) and v != "")
PATH = Leaf("a path (a non-empty string)", TEXT.ok)
NUMBER = Leaf("a number", lambda v: type(v) in (int, float))
BOOL = Leaf("true or false", lambda v: isinstance(v, bool), fix="{key} = {value}; write {key} = true or {key} = false")
SCALAR = Leaf("a string, number or boolean", lambda v: isinstance(v, str | int | float))
PARAM = Leaf("a string, number, boolean or a list of them",
             lambda v: SCALAR.ok(v) or (isinstance(v, list) and all(SCALAR.ok(x) for x in v)))
TEXTS = OneOrList(TEXT, "a string or a list of strings")

# sweep (and ``run --config``) key -> (run option, how it becomes arguments, type). "list" repeats the option,
# "csv" joins the values with commas, "table" gives KEY=VALUE per entry, "flag" is a switch, "path" is relative
# to the file's folder, "value" is passed as it is.
SWEEP_KEYS: dict[str, tuple[str, str, Spec]] = {
    "models": ("--model", "list", TEXTS), "tasks": ("--task", "list", TEXTS), "suites": ("--suite", "list", TEXTS),
    "protocols": ("--protocol", "list", TEXTS),
    "seeds": ("--seed", "list", OneOrList(_int(0), "an integer ≥ 0 or a list of them")),
    "n_train": ("--n-train", "list", OneOrList(_int(1), "an integer ≥ 1 or a list of them")),
    "shots": ("--shots", "csv", OneOrList(_int(1), "an integer ≥ 1 or a list of them")),
    "params": ("--param", "table", TableOf(PARAM, "a table of protocol parameters, e.g. params = { C = 1.0 }")),
    "text_type": ("--text-type", "value", TEXT), "templates": ("--templates", "path", PATH),
    "data_root": ("--data-root", "path", PATH), "store": ("--store", "path", PATH),
    "cache_dir": ("--cache-dir", "path", PATH), "device": ("--device", "value", TEXT),
    "batch_size": ("--batch-size", "value", _int(1)), "workers": ("--workers", "value", _int(0)),
    "test_size": ("--test-size", "value", NUMBER), "folds": ("--folds", "value", _int(2)),
    "split_seed": ("--split-seed", "value", _int(0)), "resamples": ("--resamples", "value", INT),
    "bootstrap_seed": ("--bootstrap-seed", "value", _int(0)), "endpoint": ("--endpoint", "value", TEXT),
    "skip_bad_images": ("--skip-bad-images", "flag", BOOL), "force": ("--force", "flag", BOOL),
    "decode": ("--decode", "value", TEXT), "answer_scoring": ("--answer-scoring", "value", TEXT),
}
# older spellings of keys, still read: alias -> key
KEY_ALIASES = {"loader_workers": "workers"}
SLURM_SCHEMA: dict[str, Spec] = {
    "partition": TEXT, "gpus_per_node": _int(0), "cpus_per_task": _int(1), "mem_gb": _int(1),
    "timeout_min": _int(1), "array_parallelism": _int(1), "folder": PATH, "account": TEXT, "qos": TEXT,
    "constraint": TEXT,
    "additional_parameters": TableOf(SCALAR, "a table of sbatch options, e.g. { nodelist = \"node7\" }"),
}
EXECUTOR_SCHEMA: dict[str, Spec] = {
    "kind": _one_of("inprocess", "local", "slurm"),
    "processes": Leaf('an integer ≥ 1 or "gpus"', lambda v: (type(v) is int and v >= 1) or v == "gpus"
                      or (isinstance(v, str) and v.isascii() and v.isdigit() and int(v) >= 1)),
    "slurm": SLURM_SCHEMA,
}
SCHEMA: dict[str, Spec] = {**{k: t for k, (_, _, t) in SWEEP_KEYS.items()}, "executor": EXECUTOR_SCHEMA}
"""Every key a sweep or ``run --config`` file may hold, with its type; tables nest (``[executor.slurm]``)."""


def _kind(value: Any) -> str:
    """What a TOML value is, in a message's words."""
    for t, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
                    (list, "a list"), (dict, "a table"), (dt.datetime, "a date-time"), (dt.date, "a date"),
                    (dt.time, "a time")):
        if isinstance(value, t):
            return name
    return type(value).__name__


def _dotted(parent: str, key: str) -> str:
    """The TOML path of ``key`` in the table at ``parent`` (a key that is not bare is quoted, as TOML writes it)."""
    key = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)  # escaped: the message stays one line
    return f"{parent}.{key}" if parent else key


def _places(schema: dict[str, Spec], at: str = "") -> dict[str, list[str]]:
    """key name -> the tables it belongs in ("" is the top level), to say where a key put in the wrong table goes."""
    out: dict[str, list[str]] = {}
    for key, spec in schema.items():
        out.setdefault(key, []).append(at)
        if isinstance(spec, dict):
            for k, tables in _places(spec, _dotted(at, key)).items():
                out.setdefault(k, []).extend(tables)
    return out


_PLACES = _places(SCHEMA)


def _unknown(where: str, table: str, key: str, valid: Any) -> ConfigError:
    path = _dotted(table, key)
    elsewhere = [t for t in _PLACES.get(key, []) if t != table]
    if elsewhere:  # a key of another table: most often a [table] header above it that TOML applies to every line
        place = "at the top level, above the first [table] header" if elsewhere[0] == "" else f"in [{elsewhere[0]}]"
        return ConfigError(f"{where}: unknown key {path!r}; {key} belongs {place}")
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean {_dotted(table, close[0])!r}?" if close else ""
    inside = f" in [{table}]" if table else ""
    return ConfigError(f"{where}: unknown key {path!r}{hint} (valid keys{inside}: {', '.join(sorted(valid))})")


def _check(value: Any, spec: Spec, key: str, where: str) -> None:
    """Raise a one-line ConfigError naming ``where``, the key path and the type expected when ``value`` does not
    fit ``spec``."""
    def bad(expect: str) -> ConfigError:
        return ConfigError(f"{where}: {key or 'the file'} must be {expect}, got {shown(value)} ({_kind(value)})")

    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise bad(f"a table ([{key}] with keys {', '.join(spec)})")
        for k, v in value.items():
            if k not in spec:
                raise _unknown(where, key, k, spec)
            _check(v, spec[k], _dotted(key, k), where)
    elif isinstance(spec, TableOf):
        if not isinstance(value, dict):
            raise bad(spec.expect)
        for k, v in value.items():
            if not k or "=" in k or "\x00" in k:
                raise ConfigError(f"{where}: {_dotted(key, k)}: a name must be non-empty, without '=' or NUL")
            _check(v, spec.value, _dotted(key, k), where)
    elif isinstance(spec, OneOrList):
        if isinstance(value, list):
            for i, v in enumerate(value):
                _check(v, spec.item, f"{key}[{i}]", where)
        elif not spec.item.ok(value):
            raise bad(spec.expect)
        else:
            _check(value, spec.item, key, where)
    elif not spec.ok(value):
        if spec.fix:
            raise ConfigError(f"{where}: " + spec.fix.format(key=key, value=shown(value)))
        raise bad(spec.expect)
    elif any(isinstance(v, str) and "\x00" in v for v in (value if isinstance(value, list) else [value])):
        raise ConfigError(f"{where}: {key} holds a NUL character (\\u0000), which no name or path can; remove it")


def validate(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` (a parsed sweep or config file) checked against :data:`SCHEMA`, with older key names replaced;
    ``where`` ("sweep file PATH") starts every message."""
    data = dict(data)
    for alias, key in KEY_ALIASES.items():
        if alias in data and key in data:
            raise ConfigError(f"{where}: {alias} and {key} are the same setting; keep {key}")
    data = {KEY_ALIASES.get(k, k): v for k, v in data.items()}
    _check(data, SCHEMA, "", where)
    return data


def _read(path: Path, what: str) -> dict[str, Any]:
    """A sweep or config file as validated TOML data; every way it can be unreadable is one line: a DataError
    when it cannot be read or is not UTF-8 (:func:`lifebench.fsutil.read_text`), else a ConfigError."""
    where = f"{what} {path}"
    text = read_text(path, what=what, fix="save it as UTF-8")  # a byte-order mark is not an error
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        last = f"at the end of the file, line {text.rstrip(chr(10)).count(chr(10)) + 1}"
        raise ConfigError(f"{where} is not valid TOML: {one_line(e).replace('at end of document', last)}"
                          ) from None
    except RecursionError:
        raise ConfigError(f"{where} is not valid TOML: arrays or tables nested too deeply") from None
    return validate(data, where)


def _file_path(base: Path, value: str, key: str, where: str) -> Path:
    try:
        return base / Path(value).expanduser()
    except RuntimeError:  # ~user of a user that does not exist here
        raise ConfigError(f"{where}: {key} = {shown(value)}: cannot expand the ~ of this path") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long or not a path at all: not a file
        return False


def run_option_groups(data: dict[str, Any], path: Path, what: str = "sweep file") -> list[tuple[str, list[str]]]:
    """The run keys of a sweep or config file as ``lifebench run`` arguments, one ``(option, argv)`` group per key,
    so that ``run --config`` can drop a key the command line gives again. Paths are relative to the file's folder.
    One table and one validation for both files, so a key means the same in a sweep and in ``run --config``."""
    base = path.resolve().parent
    where = f"{what} {path}"
    data = validate(data, where)
    data.pop("executor", None)
    groups: list[tuple[str, list[str]]] = []
    for key, value in data.items():
        option, kind, _ = SWEEP_KEYS[key]
        values = value if isinstance(value, list) else [value]
        argv: list[str] = []
        if kind == "list":
            if key == "tasks":  # a task folder or manifest is relative to the file, a task name is not
                values = [str(base / v) if _exists(base / v) else v for v in values]
            for v in values:
                argv += [option, str(v)]
        elif kind == "csv":
            argv += [option, ",".join(str(v) for v in values)]
        elif kind == "table":  # --param parses its value as JSON, else keeps the text
            for k, v in value.items():
                argv += [option, f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
        elif kind == "flag":
            if value:
                argv.append(option)
        elif kind == "path":
            argv += [option, str(_file_path(base, value, key, where))]
        else:
            argv += [option, str(value)]
        groups.append((option, argv))
    return groups


def read_run_config(path: str | os.PathLike[str]) -> list[tuple[str, list[str]]]:
    """``lifebench run --config FILE``: the file's run keys as ``(option, argv)`` groups. A sweep file is a valid
    config file: its ``[executor]`` table is checked and otherwise left to ``lifebench sweep`` (run runs here)."""
    path = Path(path)
    return run_option_groups(_read(path, "config file"), path, "config file")


def load(path: str | os.PathLike[str]) -> SweepSpec:
    """Read a sweep file into ``lifebench run`` arguments and the executor settings; paths in it are relative
    to the file's folder. Everything is checked before anything runs or is written."""
    path = Path(path)
    data = _read(path, "sweep file")
    executor = data.pop("executor", {})
    argv = [x for _, group in run_option_groups(data, path) for x in group]
    kind = executor.get("kind", "inprocess")
    if data.get("force") is True and kind != "inprocess":
        raise ConfigError(f"sweep file {path}: force = true with {kind} workers would have every worker redo every "
                          "experiment; recompute with --executor inprocess, or move the store away")
    if "store" not in data:
        raise ConfigError(f"sweep file {path} names no store; add e.g. store = \"results/lifebench.sqlite\" (every "
                          "worker must write to the same one)")
    return SweepSpec(path=path, run_argv=argv, executor=executor)


def _worker_argv(spec: SweepSpec, backbone: str | None = None) -> list[str]:
    """The command of one worker: ``lifebench run`` on the sweep (on one backbone's jobs only, if given)."""
    argv = list(spec.run_argv)
    if backbone is not None:
        keep, i = [], 0
        while i < len(argv):
            if argv[i] == "--model" and i + 1 < len(argv):
                i += 2
                continue
            keep.append(argv[i])
            i += 1
        argv = [*keep, "--model", backbone]
    return [sys.executable, "-m", "lifebench.cli", "-q", "run", *argv, "--keep-going", "--no-report"]


def run_local(spec: SweepSpec, processes: int | str) -> int:
    """Run the sweep with worker processes on this machine; returns 0 when every worker finished cleanly."""
    env = dict(os.environ)
    if processes == "gpus":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise ConfigError("processes = \"gpus\" but no CUDA device is visible; give a number of processes")
        envs = [{**env, "CUDA_VISIBLE_DEVICES": str(i)} for i in range(n)]
    else:
        try:
            n = int(processes)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"processes = {processes!r}; give a positive number of worker processes or \"gpus\"")
        envs = [env] * n
    log.info("starting %d local workers", len(envs))
    workers = [subprocess.Popen(_worker_argv(spec), env=e) for e in envs]
    codes = [w.wait() for w in workers]
    if any(codes):
        log.warning("worker exit codes: %s", codes)
    return 0 if not any(codes) else 1


class SlurmWorker:
    """A Slurm task: run the sweep's jobs of some backbones; on timeout or preemption, requeue itself."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def __call__(self) -> int:
        return subprocess.run(self.argv, check=False).returncode

    def checkpoint(self, *args: Any, **kwargs: Any):  # submitit calls this before a requeue
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmWorker(self.argv))


def _check_partition(partition: str | None) -> None:
    if shutil.which("sinfo") is None:
        raise ConfigError("executor kind = \"slurm\" but this machine has no Slurm (sinfo is not on PATH); run from a "
                          "login node, or use kind = \"local\"")
    out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, check=False)
    names = sorted(set(out.stdout.split()))
    if out.returncode != 0:
        raise ConfigError(f"sinfo failed ({out.stderr.strip() or out.returncode}); is the Slurm controller up?")
    if partition is not None and partition not in names:
        raise ConfigError(f"Slurm partition {partition!r} does not exist (partitions here: "
                          f"{', '.join(names) or 'none'}); fix [executor.slurm] partition")


def submit_slurm(spec: SweepSpec, backbones: list[str]) -> tuple[list, Path]:
    """Submit one Slurm array task per backbone through submitit; returns the jobs and their log folder."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("the slurm executor needs submitit: pip install 'lifebench[slurm]'") from None
    cfg = dict(spec.executor.get("slurm", {}))
    _check_partition(cfg.get("partition"))
    folder = spec.path.resolve().parent / cfg.pop("folder", "lifebench-slurm/%j")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params: dict[str, Any] = {"name": f"lifebench-{spec.path.stem}", "timeout_min": cfg.pop("timeout_min", 240),
                              "slurm_array_parallelism": cfg.pop("array_parallelism", 16)}
    for key in ("partition", "account", "qos", "constraint", "additional_parameters"):
        if key in cfg:
            params[f"slurm_{key}"] = cfg.pop(key)
    params.update(cfg)  # gpus_per_node, cpus_per_task, mem_gb
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(SlurmWorker(_worker_argv(spec, b))) for b in backbones]
    log.info("submitted %d Slurm array tasks: %s", len(jobs), ", ".join(j.job_id for j in jobs))
    return jobs, folder.parent


def wait_slurm(jobs: list) -> int:
    """Follow submitted tasks until they end; 0 when every one finished cleanly."""
    codes = []
    for job in jobs:
        try:
            codes.append(job.result())
        except Exception as err:  # cancelled, node failure, ...: the store says what was finished
            log.warning("Slurm task %s ended without a result: %s", job.job_id, str(err).splitlines()[0])
            codes.append(1)
    return 0 if not any(codes) else 1


def status_text(jobs: list, store_path: str | os.PathLike[str]) -> str:
    """Done / running / failed / remaining counts of a sweep's jobs, the failures' errors and an ETA."""
    import numpy as np

    from lifebench.store import Store

    if not Path(store_path).exists():  # nothing has run yet; reading must not create the store
        return (f"sweep: {len(jobs)} planned, 0 done, 0 running, 0 failed, {len(jobs)} remaining "
                f"(no store yet at {store_path})")
    with Store(store_path, create=False) as store:
        running, failures = store.claims(), store.failures()
        done, times, lines = 0, [], []
        n_running = n_failed = 0
        for job in jobs:
            exp = store.get(job.config_hash)
            if exp is not None:
                done += 1
                times.append(sum(v for v in exp.timings.values() if isinstance(v, int | float)))
            elif job.config_hash in running:
                n_running += 1
            elif job.config_hash in failures:
                n_failed += 1
                lines.append(f"  failed: {job.label()}: {failures[job.config_hash][1]}")
    remaining = len(jobs) - done - n_running - n_failed
    workers = max(1, len({o for o, _ in running.values()}))
    eta = ""
    if remaining + n_running and times:
        seconds = float(np.median(times)) * (remaining + n_running) / workers
        hours, rest = divmod(int(seconds), 3600)
        eta = f"; ETA {hours}:{rest // 60:02d}:{rest % 60:02d} at the median job time on {workers} worker(s)"
    head = (f"sweep: {len(jobs)} planned, {done} done, {n_running} running, {n_failed} failed, {remaining} remaining"
            f"{eta}")
    return "\n".join([head, *lines])
