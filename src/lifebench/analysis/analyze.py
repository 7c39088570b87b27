"""Does the reference task's ranking (ImageNet-1K by default) predict the suite's? And the suite leaderboard.

:func:`analyze` takes a :class:`~lifebench.analysis.results.ResultSet` and computes, for the reference task
against the suite mean and against each suite task: Pearson R², Spearman ρ, Kendall τ-b and the mis-ranked
pair fraction with bootstrap intervals; the threshold sweep (only models whose reference score is at least
T); leave-one-task-out rank stability; and the suite mean per model with its interval and rank interval.
Every definition is in docs/analysis.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifebench.analysis.results import ResultSet
from lifebench.analysis.stats import STATISTICS, Agreement, agreement, statistics
from lifebench.errors import ConfigError, DataError
from lifebench.fsutil import atomic_write
from lifebench.metrics import estimate

__all__ = ["MIN_MODELS", "PAPER", "Analysis", "SuiteRow", "analyze"]

logger = logging.getLogger(__name__)

MIN_MODELS = 3
"""Fewest models for any correlation; a task with fewer is left out (and listed)."""
PAPER = ("BioBench (Stevens 2025, arXiv 2511.16315), 46 checkpoints: ImageNet-1K top-1 explains R² 0.34 of the "
         "ecology-suite variance, Spearman ρ 0.55, and mis-ranks 30% of model pairs above 75% ImageNet-1K accuracy.")
_NAMES = {"r2": "R²", "spearman": "Spearman ρ", "kendall_tau_b": "Kendall τ-b", "misranked": "mis-ranked"}


@dataclass(frozen=True)
class SuiteRow:
    """One model's suite mean, its interval and its rank (1 = best) with the rank's interval."""

    model: str
    mean: float
    low: float | None
    high: float | None
    rank: int
    rank_low: int | None
    rank_high: int | None


@dataclass(frozen=True)
class SweepRow:
    threshold: float
    vs_suite: Agreement | None
    vs_task: dict[str, Agreement] = field(default_factory=dict)


@dataclass(frozen=True)
class LotoRow:
    """Leave-one-task-out: how the suite-mean ranking changes when ``task`` is dropped."""

    task: str
    kendall_tau_b: float
    misranked: float
    top: str
    """Best model by the mean without the task."""


@dataclass
class Analysis:
    reference: str
    suite: list[str]
    results: ResultSet
    interval: str
    """How the intervals were drawn, in words."""
    n_boot: int
    seed: int
    confidence: float
    min_models: int
    suite_models: list[str]
    vs_suite: Agreement
    vs_task: dict[str, Agreement]
    sweep: list[SweepRow]
    loto: list[LotoRow]
    leaderboard: list[SuiteRow]
    task_ranks: dict[tuple[str, str], tuple[int, int | None, int | None]]
    """(task, model) -> (rank, rank_low, rank_high) among the task's models (interval None for imports)."""
    excluded: list[str]

    # ------------------------------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, Any]:
        rs = self.results
        return {
            "reference": self.reference, "suite": self.suite, "source": rs.source, "kind": rs.kind,
            "resampled": rs.resampled, "labels": rs.labels(),
            "interval": self.interval, "n_boot": self.n_boot, "seed": self.seed, "confidence": self.confidence,
            "min_models": self.min_models, "models": self.suite_models, "vs_suite": self.vs_suite.as_dict(),
            "vs_task": {t: a.as_dict() for t, a in self.vs_task.items()},
            "threshold_sweep": [
                {"threshold": r.threshold, "vs_suite": r.vs_suite.as_dict() if r.vs_suite else None,
                 "vs_task": {t: a.as_dict() for t, a in r.vs_task.items()}} for r in self.sweep
            ],
            "leave_one_task_out": [vars(r) for r in self.loto],
            "leaderboard": [vars(r) for r in self.leaderboard],
            "task_ranks": [{"task": t, "model": m, "rank": r[0], "rank_low": r[1], "rank_high": r[2]}
                           for (t, m), r in self.task_ranks.items()],
            "bests": self.bests(), "excluded": self.excluded, "provenance": rs.provenance, "paper": PAPER,
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }  # fmt: skip

    def bests(self) -> list[dict[str, Any]]:
        """Per task: the best model and the models tied with it (None when the source has no tie test)."""
        out = []
        for task in self.results.tasks:
            rows = [s for s in self.results.scores if s.task == task]
            if not rows:
                continue
            best = [s.model for s in rows if s.is_best] or [max(rows, key=lambda s: s.point).model]
            tested = any(s.tied is not None for s in rows)
            ties = sorted(s.model for s in rows if s.tied) if tested else None
            out.append({"task": task, "best": best[0], "ties": ties, "n_models": len(rows)})
        return out

    def to_text(self) -> str:
        rs = self.results
        labels = rs.labels()
        name = lambda m: labels.get(m, m)  # noqa: E731
        lines = [
            f"Does {self.reference} rank predict the suite? {rs.source}",
            f"Resampled: {rs.resampled}.",
            f"{len(self.suite_models)} models with every suite task; suite ({len(self.suite)}): "
            + ", ".join(self.suite),
            f"Intervals: {self.confidence * 100:g}% percentile, {self.interval}; {self.n_boot} resamples, seed "
            f"{self.seed}; an interval can lie below its point estimate (test-set noise pulls resampled correlations "
            "towards 0).", "",
            (f"{self.reference + ' against':<22} {'n':>3}  " + "  ".join(f"{_NAMES[k]:<21}" for k in STATISTICS)
             ).rstrip(),
        ]  # fmt: skip

        def row(title: str, a: Agreement) -> str:
            cells = "  ".join(f"{_fmt_iv(getattr(a, k)):<21}" for k in STATISTICS)
            return f"{title[:22]:<22} {a.n_models:>3}  {cells}".rstrip()

        lines.append(row("suite mean", self.vs_suite))
        lines += [row(t, a) for t, a in self.vs_task.items()]
        lines += ["", f"Threshold sweep: models with {self.reference} >= T, against the suite mean (at least "
                  f"{self.min_models} models):"]
        lines.append((f"{'T':>6} {'n':>4}  " + "  ".join(f"{_NAMES[k]:<21}" for k in STATISTICS)).rstrip())
        for r in self.sweep:
            if r.vs_suite is not None:
                cells = "  ".join(f"{_fmt_iv(getattr(r.vs_suite, k)):<21}" for k in STATISTICS)
                lines.append(f"{r.threshold:>6.2f} {r.vs_suite.n_models:>4}  {cells}".rstrip())
        if not any(r.vs_suite for r in self.sweep):
            lines.append(f"  (none: fewer than {self.min_models} models)")
        if self.loto:
            lines += ["", "Leave-one-task-out rank stability (suite-mean ranking with vs without the task):",
                      f"  {'left out':<22} {'Kendall τ-b':>11} {'mis-ranked':>10}  best model without it"]
            lines += [f"  {r.task[:22]:<22} {r.kendall_tau_b:>11.3f} {r.misranked:>10.3f}  {name(r.top)}"
                      for r in self.loto]
        lines += ["", "Suite mean (rank 1 = best" + ("" if rs.per_example else "; no interval: imported point "
                                                      "estimates") + "):"]
        for r in self.leaderboard:
            ci = f" [{r.low:.3f}, {r.high:.3f}]" if r.low is not None else ""
            ri = f" [{r.rank_low}-{r.rank_high}]" if r.rank_low is not None else ""
            lines.append(f"  {r.rank:>3}{ri:<9} {r.mean:.3f}{ci}  {name(r.model)}")
        lines += ["", "Per task: best model (= tied with it: " + ("paired bootstrap max test)" if rs.per_example
                                                                 else "as published by the source)")]
        for b in self.bests():
            ties = "" if b["ties"] is None else (f"; tied: {', '.join(name(m) for m in b['ties'])}" if b["ties"]
                                                 else "; no ties")
            lines.append(f"  {b['task']}: {name(b['best'])} ({b['n_models']} models{ties})")
        if self.excluded:
            lines += ["", "Excluded:"] + [f"  - {e}" for e in self.excluded]
        lines += ["", f"For context: {PAPER}"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``analysis.txt`` and ``analysis.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = self.to_text()
        doc = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n"
        return {
            "txt": atomic_write(out / "analysis.txt", lambda f: f.write(text.encode("utf-8"))),
            "json": atomic_write(out / "analysis.json", lambda f: f.write(doc.encode("utf-8"))),
        }


def _fmt_iv(iv) -> str:
    if not np.isfinite(iv.point):
        return "n/a"
    if iv.low is None:
        return f"{iv.point:.3f}"
    return f"{iv.point:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def default_thresholds(reference_scores: np.ndarray, step: float = 0.05) -> list[float]:
    """Multiples of ``step`` from the last one at or below the lowest reference score up to the highest."""
    first = int(np.floor(float(np.min(reference_scores)) / step + 1e-9))
    last = int(np.floor(float(np.max(reference_scores)) / step + 1e-9))
    return [round(k * step, 6) for k in range(max(first, 0), last + 1)]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank 1 = best (highest) along the last axis; ties share the better rank (1 + number strictly better)."""
    return 1 + (values[..., None, :] > values[..., :, None]).sum(axis=-1)


def _rank_interval(draws: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - confidence) / 2.0
    ranks = _ranks(draws)  # (B, n)
    return (np.quantile(ranks, tail, axis=0, method="lower").astype(int),
            np.quantile(ranks, 1.0 - tail, axis=0, method="higher").astype(int))


def analyze(
    results: ResultSet,
    *,
    reference: str = "imagenet1k",
    suite: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    thresholds: Sequence[float] | None = None,
    min_models: int = 10,
) -> Analysis:
    """Rank agreement of ``reference`` with the suite and each suite task, sweep, stability and suite board.

    Models without a reference score, suite tasks with fewer than 3 such models, and models lacking a kept
    suite task are left out of the suite analyses and listed in :attr:`Analysis.excluded`. With per-example
    resamples (a lifebench store) every interval also resamples the test examples (``n_boot`` is then the
    number of stored resamples).
    """
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"--confidence {confidence} must be strictly between 0 and 1, e.g. 0.95")
    if min_models < MIN_MODELS:
        raise ConfigError(f"--min-models {min_models} is too few; correlations need at least {MIN_MODELS} models")
    tasks = list(results.tasks)
    if reference not in tasks:
        raise DataError(f"reference task {reference!r} has no scores in {results.source}; tasks there: "
                        f"{', '.join(tasks) or '(none)'}; pass --reference with one of them")
    chosen = list(suite) if suite else [t for t in results.suite if t != reference]
    for t in chosen:
        if t not in results.tasks:
            raise ConfigError(f"suite task {t!r} has no scores in {results.source}; tasks there: {', '.join(tasks)}")
    chosen = [t for t in dict.fromkeys(chosen) if t != reference]
    if not chosen:
        raise ConfigError(f"the suite is empty once the reference {reference} is left out; pass --task to name the "
                          "suite's tasks")
    points = {(s.task, s.model): s.point for s in results.scores}
    per_example = results.per_example
    if per_example:
        n_boot = len(next(iter(results.resamples.values())))
    excluded: list[str] = []
    models = sorted({s.model for s in results.scores})
    ref_models = [m for m in models if (reference, m) in points]
    if lacking := [m for m in models if m not in ref_models]:
        excluded.append(f"{len(lacking)} model(s) without a score on {reference}, left out of every analysis: "
                        + ", ".join(_label(results, m) for m in lacking))
    kept = []
    for t in chosen:
        n = sum((t, m) in points for m in ref_models)
        if n < MIN_MODELS:
            excluded.append(f"task {t}: {n} model(s) with a score on {reference}; needs {MIN_MODELS}, left out of "
                            "the suite")
        else:
            kept.append(t)
    if not kept:
        raise DataError(f"no suite task has {MIN_MODELS} models with a score on {reference} in {results.source}; "
                        "evaluate more models")
    suite_models = [m for m in ref_models if all((t, m) in points for t in kept)]
    for m in ref_models:
        if m not in suite_models:
            miss = [t for t in kept if (t, m) not in points]
            excluded.append(f"model {_label(results, m)}: no score on {', '.join(miss)}; left out of the suite mean")
    if len(suite_models) < MIN_MODELS:
        raise DataError(f"only {len(suite_models)} model(s) have scores on {reference} and every suite task "
                        f"({', '.join(kept)}); the analysis needs {MIN_MODELS}; pass --task to pick a smaller suite")

    def vec(task: str, ms: list[str]) -> np.ndarray:
        return np.array([points[(task, m)] for m in ms])

    def draws(task: str, ms: list[str]) -> np.ndarray | None:
        if not per_example:
            return None
        return np.stack([results.resamples[(task, m)] for m in ms], axis=1)  # (B, n)

    ref = vec(reference, suite_models)
    table = np.stack([vec(t, suite_models) for t in kept], axis=1)  # (models, tasks)
    mean = table.mean(axis=1)
    ref_draws = draws(reference, suite_models)
    mean_draws = None if not per_example else np.mean([draws(t, suite_models) for t in kept], axis=0)
    kw = {"n_boot": n_boot, "seed": seed, "confidence": confidence}
    vs_suite = agreement(ref, mean, x_resamples=ref_draws, y_resamples=mean_draws, **kw)

    vs_task = {}
    for t in kept:
        ms = [m for m in ref_models if (t, m) in points]
        vs_task[t] = agreement(vec(reference, ms), vec(t, ms), x_resamples=draws(reference, ms),
                               y_resamples=draws(t, ms), **kw)

    sweep = []
    for thr in thresholds if thresholds is not None else default_thresholds(ref):
        sel = ref >= thr - 1e-12
        if sel.sum() < min_models:
            break
        cols = np.flatnonzero(sel)
        row_suite = agreement(ref[sel], mean[sel], x_resamples=None if ref_draws is None else ref_draws[:, cols],
                              y_resamples=None if mean_draws is None else mean_draws[:, cols], **kw)
        row_tasks = {}
        for t in kept:
            ms = [m for m in ref_models if (t, m) in points and points[(reference, m)] >= thr - 1e-12]
            if len(ms) >= min_models:
                row_tasks[t] = agreement(vec(reference, ms), vec(t, ms), x_resamples=draws(reference, ms),
                                         y_resamples=draws(t, ms), **kw)
        sweep.append(SweepRow(float(thr), row_suite, row_tasks))

    loto = []
    if len(kept) >= 2:
        for j, t in enumerate(kept):
            without = np.delete(table, j, axis=1).mean(axis=1)
            s = statistics(mean, without)
            loto.append(LotoRow(t, float(s["kendall_tau_b"][0]), float(s["misranked"][0]),
                                suite_models[int(np.argmax(without))]))

    ranks = _ranks(mean)
    board = []
    for i, m in enumerate(suite_models):
        row = SuiteRow(m, float(mean[i]), None, None, int(ranks[i]), None, None)
        if per_example:
            est = estimate(float(mean[i]), mean_draws[:, i], confidence)
            row = dataclasses.replace(row, low=est.low, high=est.high)
        board.append(row)
    if per_example:
        rlow, rhigh = _rank_interval(mean_draws, confidence)
        board = [dataclasses.replace(r, rank_low=int(rlow[i]), rank_high=int(rhigh[i])) for i, r in enumerate(board)]
    board.sort(key=lambda r: (r.rank, r.model))

    task_ranks = {}
    for t in tasks:
        ms = [m for m in models if (t, m) in points]
        r = _ranks(vec(t, ms))
        lo = hi = None
        if per_example:
            lo, hi = _rank_interval(draws(t, ms), confidence)
        for i, m in enumerate(ms):
            task_ranks[(t, m)] = (int(r[i]), None if lo is None else int(lo[i]), None if hi is None else int(hi[i]))

    interval = ("bootstrap over models and test examples (resample b draws models with replacement and scores "
                "them on the b-th paired resample of each task's test examples)" if per_example else
                "bootstrap over models only (imported point estimates: no per-example predictions)")
    return Analysis(
        reference=reference, suite=kept, results=results, interval=interval, n_boot=n_boot, seed=seed,
        confidence=confidence, min_models=min_models, suite_models=suite_models, vs_suite=vs_suite,
        vs_task=vs_task, sweep=sweep, loto=loto, leaderboard=board, task_ranks=task_ranks,
        excluded=list(results.notes) + excluded,
    )  # fmt: skip


def _label(results: ResultSet, model: str) -> str:
    return results.labels().get(model, model)
