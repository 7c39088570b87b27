"""The Python API for notebooks: ``import lifebench as lb``.

Thin wrappers over what the command line runs, so a notebook and ``lifebench run`` give the same numbers: options
are the command line's (``workers=0`` is ``--workers 0``) and are parsed and checked by its parser, the plan is
``lifebench run``'s, scores come from :func:`lifebench.report.build_leaderboard` and rows from
:mod:`lifebench.export`. Tables are pandas DataFrames when pandas imports (it is not a dependency of lifebench),
else lists of dicts with the same columns. See docs/python.md.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lifebench.errors import ConfigError

__all__ = ["Results", "embed", "evaluate", "load_store", "models", "tasks"]


def _frame(rows: list[dict[str, Any]]) -> Any:
    """A pandas DataFrame of ``rows`` when pandas is installed, else the rows themselves."""
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows)


def _argv(command: str, options: dict[str, Any]) -> list[str]:
    """Keyword options as the command line of ``command``: ``batch_size=64`` -> ``--batch-size 64``, a list
    repeats the option, True is a flag, ``param={"C": 0.1}`` -> ``--param C=0.1``."""
    from lifebench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # noqa: SLF001
    flags = {a.dest: a.option_strings[0] for a in sub._actions if a.option_strings and a.dest != "help"}  # noqa: SLF001
    argv: list[str] = []
    for key, value in options.items():
        if key not in flags:
            raise ConfigError(f"{key}={value!r} is not an option of lifebench {command}; use one of "
                              f"{', '.join(sorted(flags))}")
        flag = flags[key]
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, dict):
            argv += [x for k, v in value.items() for x in (flag, f"{k}={json.dumps(v)}")]
        elif isinstance(value, list | tuple):
            argv += [x for v in value for x in (flag, str(v))]
        else:
            argv += [flag, str(value)]
    return argv


def _parse(command: str, argv: list[str]) -> Any:
    """The command line's parsed arguments; a bad value is a ConfigError with argparse's one-line message."""
    from lifebench.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args([command, *argv])
    except SystemExit:
        message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "invalid options"
        raise ConfigError(message.removeprefix(f"lifebench {command}: error: ")) from None


def _as_list(value: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    return [str(value)] if isinstance(value, str | os.PathLike) else [str(v) for v in value]


class Results:
    """The results in a store: the leaderboard and per-image predictions, as tables.

    ``tasks`` limits both to those tasks (None: every task in the store). ``n_resamples``, ``seed`` and
    ``confidence`` are the bootstrap settings of the leaderboard's intervals and ties (as ``lifebench report``).
    """

    def __init__(self, store: str | os.PathLike[str], *, tasks: Sequence[str] | None = None,
                 n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> None:
        self.store = Path(store)
        self.tasks = list(tasks) if tasks else None
        self.settings = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}

    def __repr__(self) -> str:
        return f"Results({str(self.store)!r}, tasks={self.tasks!r})"

    def board(self, **options: Any) -> Any:
        """The :class:`lifebench.report.Leaderboard` itself (``print(results.board().to_text())`` prints what
        ``lifebench report`` prints); ``options`` go to :func:`lifebench.report.build_leaderboard`."""
        from lifebench.report import build_leaderboard

        return build_leaderboard(self.store, tasks=self.tasks, **{**self.settings, **options})

    @functools.cached_property
    def leaderboard(self) -> Any:
        """One row per (task, model) cell: the leaderboard export's columns (task, model, metric, point, low,
        high, is_best, tied, pvalue, ...), as ``lifebench export --what leaderboard`` writes them."""
        from lifebench.analysis.results import from_store

        return _frame(from_store(self.store, tasks=self.tasks, **self.settings).rows())

    def predictions(self, task: str | None = None) -> Any:
        """One row per stored prediction (per test image) of ``task`` (default: every task of these results), in
        the predictions export's columns (:data:`lifebench.export.PREDICTION_COLUMNS`)."""
        from lifebench.export import prediction_rows

        return _frame(prediction_rows(self.store, tasks=[task] if task else self.tasks))


def load_store(path: str | os.PathLike[str], **settings: Any) -> Results:
    """The :class:`Results` of a store file, or of a predictions export (rebuilt as a temporary store that lives
    as long as the returned object)."""
    from lifebench.export import is_export, rebuild_store

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no results store at {path}; pass the store 'lifebench run' wrote or an exported file")
    if not is_export(path):
        return Results(path, **settings)
    tmp = tempfile.mkdtemp(prefix="lifebench-export-")
    results = Results(rebuild_store(path, Path(tmp) / "results.sqlite"), **settings)
    weakref.finalize(results, shutil.rmtree, tmp, ignore_errors=True)
    return results


def evaluate(models: str | Sequence[str], tasks: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
             store: str | os.PathLike[str] | None = None, **options: Any) -> Results:
    """Evaluate each model on each task as ``lifebench run`` does, and return the :class:`Results` of those
    tasks. ``tasks`` are folders, manifests or task names; ``store`` defaults as for ``lifebench run``.
    ``options`` are ``lifebench run``'s options by their Python names, e.g. ``protocol="knn"``, ``seed=[0, 1]``,
    ``workers=0``, ``test_size=0.5``, ``param={"C": 0.1}``, ``resamples=2000``. Experiments already in the store
    are not run again unless ``force=True``."""
    from lifebench import cli
    from lifebench.runner import run_jobs
    from lifebench.store import Store

    argv = [x for m in _as_list(models) for x in ("--model", m)]
    argv += [x for t in _as_list(tasks) for x in ("--task", t)]
    if store is not None:
        argv += ["--store", str(store)]
    args = _parse("run", argv + _argv("run", options) + ["--no-report"])
    jobs, _, store_path = cli._plan(args)  # noqa: SLF001 - the command line's own validation and plan
    if not jobs:
        raise ConfigError("nothing to run: no task has data; check the task names and data_root")
    with Store(store_path) as st:
        run_jobs(jobs, st, cli._run_options(args))  # noqa: SLF001
    return Results(store_path, tasks=list(dict.fromkeys(j.task.name for j in jobs)), n_resamples=args.resamples)


def embed(model: str, task: str | os.PathLike[str], **options: Any) -> tuple[Any, Any]:
    """``(ids, vectors)``: the example ids of ``task``'s readable images and their ``(n, D)`` float32 embeddings
    by ``model``, as ``lifebench embed`` computes them (through the embedding cache). ``options`` are
    ``lifebench embed``'s (``workers=0``, ``device="cpu"``, ``no_cache=True``, ...)."""
    import numpy as np

    from lifebench import cli

    args = _parse("embed", ["--task", str(task), "--model", model, "--out", "unused.npy", *_argv("embed", options)])
    task_, _, emb = cli._embed_task(args)  # noqa: SLF001
    keep = np.flatnonzero(emb.ok)
    return task_.examples.ids[keep], emb.vectors[keep]


def tasks() -> Any:
    """The built-in benchmark tasks (what ``lifebench ls tasks`` lists): name, display name, suite, train and test
    size, modality, kingdom, default protocol and metric, and how the benchmark evaluates it."""
    from lifebench.tasks import CATALOG

    keys = ("name", "display", "suite", "n_train", "n_test", "modality", "kingdom", "protocol", "metric", "method")
    return _frame([{k: getattr(t, k) for k in keys} for t in CATALOG.values()])


def models() -> Any:
    """The backbone families, named backbones and aliases (what ``lifebench ls backbones`` lists): name, family,
    id syntax, whether it has a text tower (zero-shot), whether it works offline, and a line of help."""
    from lifebench.backbones import describe

    return _frame(describe())
