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

A worker killed at any point loses only the job in flight: its claim expires after ``LEASE_S`` without a
heartbeat and another worker (or a rerun) takes the job over.
"""

from __future__ import annotations

import difflib
import logging
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifebench.errors import ConfigError

__all__ = ["KEY_ALIASES", "SWEEP_KEYS", "SweepSpec", "load", "read_run_config", "run_local", "run_option_groups",
           "status_text", "submit_slurm", "wait_slurm"]

log = logging.getLogger(__name__)

# sweep (and ``run --config``) key -> (run option, kind); "list" repeats the option, "flag" is a boolean switch
SWEEP_KEYS: dict[str, tuple[str, str]] = {
    "models": ("--model", "list"), "tasks": ("--task", "list"), "suites": ("--suite", "list"),
    "protocols": ("--protocol", "list"), "seeds": ("--seed", "list"), "n_train": ("--n-train", "list"),
    "shots": ("--shots", "csv"), "params": ("--param", "table"), "text_type": ("--text-type", "value"),
    "templates": ("--templates", "path"), "data_root": ("--data-root", "path"), "store": ("--store", "path"),
    "cache_dir": ("--cache-dir", "path"), "device": ("--device", "value"), "batch_size": ("--batch-size", "value"),
    "workers": ("--workers", "value"), "test_size": ("--test-size", "value"), "folds": ("--folds", "value"),
    "split_seed": ("--split-seed", "value"), "resamples": ("--resamples", "value"),
    "bootstrap_seed": ("--bootstrap-seed", "value"), "endpoint": ("--endpoint", "value"),
    "skip_bad_images": ("--skip-bad-images", "flag"), "force": ("--force", "flag"),
    "decode": ("--decode", "value"), "answer_scoring": ("--answer-scoring", "value"),
}
# older spellings of keys, still read: alias -> key
KEY_ALIASES = {"loader_workers": "workers"}
EXECUTOR_KEYS = ("kind", "processes", "slurm")
SLURM_KEYS = ("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism", "folder",
              "account", "qos", "constraint", "additional_parameters")


@dataclass
class SweepSpec:
    path: Path
    run_argv: list[str]
    executor: dict[str, Any] = field(default_factory=dict)


def _unknown(where: str, key: str, valid: Any) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint} (valid keys: {', '.join(sorted(valid))})")


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}") from None


def run_option_groups(data: dict[str, Any], path: Path, what: str = "sweep file") -> list[tuple[str, list[str]]]:
    """The run keys of a sweep or config file as ``lifebench run`` arguments, one ``(option, argv)`` group per key,
    so that ``run --config`` can drop a key the command line gives again. Paths are relative to the file's folder.
    One table and one validation for both files, so a key means the same in a sweep and in ``run --config``."""
    base = path.resolve().parent
    where = f"{what} {path}"
    for alias, key in KEY_ALIASES.items():
        if alias in data and key in data:
            raise ConfigError(f"{where}: {alias} and {key} are the same setting; keep {key}")
    groups: list[tuple[str, list[str]]] = []
    for key, value in data.items():
        key = KEY_ALIASES.get(key, key)
        if key not in SWEEP_KEYS:
            raise _unknown(where, key, SWEEP_KEYS)
        option, kind = SWEEP_KEYS[key]
        argv: list[str] = []
        if kind == "list":
            values = value if isinstance(value, list) else [value]
            if key == "tasks":  # a task folder or manifest is relative to the file, a task name is not
                values = [str(base / v) if (base / str(v)).exists() else v for v in values]
            for v in values:
                argv += [option, str(v)]
        elif kind == "csv":
            argv += [option, ",".join(str(v) for v in (value if isinstance(value, list) else [value]))]
        elif kind == "table":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a table, e.g. {key} = {{ C = 1.0 }}")
            for k, v in value.items():
                argv += [option, f"{k}={str(v).lower() if isinstance(v, bool) else v}"]
        elif kind == "flag":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} = {value!r}; write {key} = true or {key} = false")
            if value:
                argv.append(option)
        elif kind == "path":
            argv += [option, str(base / Path(str(value)).expanduser())]
        else:
            argv += [option, str(value)]
        groups.append((option, argv))
    return groups


def _check_executor(executor: dict[str, Any], where: str) -> str:
    """Validate an ``[executor]`` table; returns its kind."""
    for key in executor:
        if key not in EXECUTOR_KEYS:
            raise _unknown(f"{where}, [executor]", key, EXECUTOR_KEYS)
    for key in executor.get("slurm", {}):
        if key not in SLURM_KEYS:
            raise _unknown(f"{where}, [executor.slurm]", key, SLURM_KEYS)
    kind = executor.get("kind", "inprocess")
    if kind not in ("inprocess", "local", "slurm"):
        raise ConfigError(f"{where}: [executor] kind = {kind!r}; use inprocess, local or slurm")
    return kind


def read_run_config(path: str | os.PathLike[str]) -> list[tuple[str, list[str]]]:
    """``lifebench run --config FILE``: the file's run keys as ``(option, argv)`` groups. A sweep file is a valid
    config file: its ``[executor]`` table is checked and otherwise left to ``lifebench sweep`` (run runs here)."""
    path = Path(path)
    data = _read(path, "config file")
    _check_executor(data.pop("executor", {}), f"config file {path}")
    return run_option_groups(data, path, "config file")


def load(path: str | os.PathLike[str]) -> SweepSpec:
    """Read a sweep file into ``lifebench run`` arguments and the executor settings; paths in it are relative
    to the file's folder."""
    path = Path(path)
    data = _read(path, "sweep file")
    executor = data.pop("executor", {})
    argv = [x for _, group in run_option_groups(data, path) for x in group]
    kind = _check_executor(executor, f"sweep file {path}")
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
