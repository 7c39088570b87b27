"""Leaderboards from stored per-example predictions, with paired bootstrap intervals and ties.

Per task, every model is scored on the same test examples and the same bootstrap index matrix (seeded by
the task name), so the intervals are comparable and the tie test between the best model and each other
model is paired. See :mod:`lifebench.metrics.bootstrap` for the statistics.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import functools
import io
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from lifebench.errors import ConfigError, DataError, UnknownNameError
from lifebench.fsutil import atomic_write
from lifebench.metrics import (
    Estimate,
    Metric,
    ResampleCounts,
    bootstrap_many,
    estimate,
    get_metric,
    resample_indices,
    task_seed,
    ties_with_best,
)
from lifebench.metrics.bootstrap import class_strata
from lifebench.report.caveats import sample_warnings
from lifebench.report.labels_needed import LabelsNeeded, check_options, labels_needed, labels_needed_text
from lifebench.report.perclass import PerClass, per_class_scores
from lifebench.store.provenance import machine_summary
from lifebench.store.sqlite import Experiment, Predictions, Store, reads_store
from lifebench.tasks.base import UNKNOWN

__all__ = ["Cell", "Leaderboard", "build_leaderboard"]

logger = logging.getLogger(__name__)

BEST_TEXT = "*"
TIED_TEXT = "="
TIED_MARKDOWN = "≈"
MISSING = "–"
# Ranked predictions are padded (with -1) to this width when they already list every class.
_TOPK_MIN_WIDTH = 5
# Threads scoring tasks side by side (the store is read on the calling thread meanwhile).
_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Cell:
    """One model's score on one task.

    ``tied`` is True for a model that is not significantly worse than the best one (never for the best
    itself); ``pvalue`` is its family-wise adjusted p-value, the smallest alpha at which the step-down max test
    of :func:`~lifebench.metrics.ties_with_best` would mark it worse than the best (None for the best).
    """

    task: str
    backbone: str
    protocol: str
    metric: str
    point: float
    low: float
    high: float
    n_test: int
    is_best: bool
    tied: bool
    pvalue: float | None
    n_seeds: int = 1
    """Seeds (few-shot folds, training subsamples) averaged into this cell."""
    seed_std: float | None = None
    """Standard deviation of the per-seed scores (None for one seed)."""
    warnings: list[str] = field(default_factory=list)
    """Why the score needs care: a small test set, classes with few test images, a zero-width interval
    (:func:`lifebench.report.caveats.sample_warnings`)."""


def _fmt(cell: Cell) -> str:
    spread = f" sd {cell.seed_std:.3f}/{cell.n_seeds}" if cell.seed_std is not None else ""
    return f"{cell.point:.3f} [{cell.low:.3f}, {cell.high:.3f}]{spread}"


@functools.cache
def _higher_is_better(metric: str) -> bool:
    try:
        return get_metric(metric).higher_is_better
    except UnknownNameError:
        return True


@dataclass(frozen=True)
class Leaderboard:
    """Cells of a model x task table plus the settings that produced them (``meta``)."""

    cells: tuple[Cell, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    resamples: dict[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    """(task, metric, backbone, protocol) -> the cell's score on each shared bootstrap resample, shape (B,)."""
    per_class: PerClass | None = field(default=None, repr=False, compare=False)
    """Per-class scores and confusion matrices (``build_leaderboard(per_class=True)``), else None."""
    labels_needed: tuple[LabelsNeeded, ...] = field(default=(), repr=False, compare=False)
    """Per task column, the best model against the runner-up (or two named models): their paired difference now
    and the test-set size that would resolve it (:mod:`lifebench.report.labels_needed`)."""

    def labels_needed_text(self) -> str:
        """The "how many more labels?" block of the report ("" when no column has two models)."""
        return labels_needed_text(self.labels_needed, {m: self.label(*m) for m in self.models()})

    # ------------------------------------------------------------------------------------------ layout

    def columns(self) -> list[tuple[str, str]]:
        """(task, metric) pairs, sorted."""
        return sorted({(c.task, c.metric) for c in self.cells})

    def models(self) -> list[tuple[str, str]]:
        """(backbone, protocol) pairs, best first by the mean point estimate over their cells."""
        scores: dict[tuple[str, str], list[float]] = defaultdict(list)
        for c in self.cells:
            scores[(c.backbone, c.protocol)].append(c.point if _higher_is_better(c.metric) else -c.point)
        return sorted(scores, key=lambda m: (-float(np.mean(scores[m])), m))

    def label(self, backbone: str, protocol: str) -> str:
        """Row label: the backbone, plus the protocol when the board holds more than one protocol."""
        if len({c.protocol for c in self.cells}) > 1:
            return f"{backbone} ({protocol})"
        return backbone

    def _grid(self) -> tuple[list[str], list[tuple[str, list[Cell | None]]]]:
        cols = self.columns()
        index = {(c.backbone, c.protocol, c.task, c.metric): c for c in self.cells}
        n_test = {(c.task, c.metric): c.n_test for c in self.cells}
        headers = [f"{task} ({metric}, n={n_test[(task, metric)]})" for task, metric in cols]
        rows = [
            (self.label(*m), [index.get((*m, task, metric)) for task, metric in cols]) for m in self.models()
        ]
        return headers, rows

    def legend(self, best: str, tied: str) -> str:
        """One line explaining the numbers and the markers."""
        conf = self.meta.get("confidence", 0.95)
        alpha = self.meta.get("alpha")
        level = f"{alpha:g}" if isinstance(alpha, int | float) else "?"
        return (
            f"Point estimate [{conf * 100:g}% CI]: BCa bootstrap over test examples drawn within their true class, "
            f"{self.meta.get('n_resamples', '?')} resamples shared by all models of a task (seed "
            f"{self.meta.get('seed', '?')}). {best}: best on the task; {tied}: not significantly worse than the "
            f"best (step-down paired bootstrap max test over all pairs of models, family-wise error at most "
            f"{level}: adjusted p > {level}); "
            f"{MISSING}: no result."
            + (" Cells averaged over seeds (few-shot folds, training subsamples) show 'sd S/N': the standard "
               "deviation of the N per-seed scores; their interval is for the mean." if any(
                   c.n_seeds > 1 for c in self.cells) else "")
        )

    # ------------------------------------------------------------------------------------------ renderers

    def to_markdown(self) -> str:
        """A model x task Markdown table with a legend line below it."""
        if not self.cells:
            return "_No results._\n"
        headers, rows = self._grid()

        def esc(text: str) -> str:
            return text.replace("|", "\\|")

        def show(cell: Cell | None) -> str:
            if cell is None:
                return MISSING
            if cell.is_best:
                return f"**{_fmt(cell)}**"
            return f"{_fmt(cell)} {TIED_MARKDOWN}" if cell.tied else _fmt(cell)

        lines = [
            "| model | " + " | ".join(esc(h) for h in headers) + " |",
            "|:--|" + "--:|" * len(headers),
        ]
        lines += [f"| {esc(label)} | " + " | ".join(show(c) for c in cells) + " |" for label, cells in rows]
        return "\n".join(lines) + "\n\n" + self.legend("**bold**", TIED_MARKDOWN) + "\n" + "".join(
            f"\n> Warning: {esc(w)}\n" for w in self.caveats())

    def to_text(self) -> str:
        """Aligned plain text for terminals; ``*`` marks the best model of a task, ``=`` a tie with it."""
        if not self.cells:
            return "No results.\n"
        headers, rows = self._grid()

        def show(cell: Cell | None) -> str:
            if cell is None:
                return MISSING + " "
            return _fmt(cell) + (BEST_TEXT if cell.is_best else TIED_TEXT if cell.tied else " ")

        table = [["model", *headers]] + [[label, *(show(c) for c in cells)] for label, cells in rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]

        def line(row: Sequence[str]) -> str:
            return "  ".join(
                (text.ljust(w) if i == 0 else text.rjust(w))
                for i, (text, w) in enumerate(zip(row, widths, strict=True))
            )

        out = [line(table[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in table[1:]]
        return "\n".join(out) + "\n" + self.legend(BEST_TEXT, TIED_TEXT) + "\n" + "".join(
            f"warning: {w}\n" for w in self.caveats())

    def caveats(self) -> list[str]:
        """Each distinct cell warning once, as ``task (metric): warning``, naming the models when not all of the
        column's models have it."""
        column: dict[tuple[str, str], list[Cell]] = defaultdict(list)
        for c in self.cells:
            column[(c.task, c.metric)].append(c)
        out = []
        for (task, metric), cells in column.items():
            who: dict[str, list[str]] = defaultdict(list)
            for c in cells:
                for w in c.warnings:
                    who[w].append(self.label(c.backbone, c.protocol))
            for w, models in who.items():
                some = f", {', '.join(models)}" if len(models) < len(cells) else ""
                out.append(f"{task} ({metric}{some}): {w}")
        return out

    def csv_text(self) -> str:
        """One row per cell (long format) with a header of the :class:`Cell` fields (``report --format csv``)."""
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=[f.name for f in dataclasses.fields(Cell)])
        writer.writeheader()
        for cell in self.cells:
            writer.writerow({k: ("" if v is None else "; ".join(v) if isinstance(v, list) else v)
                             for k, v in dataclasses.asdict(cell).items()})
        return buf.getvalue()

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`csv_text` to ``path``."""
        text = self.csv_text()
        return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))

    def json_text(self) -> str:
        """``{"meta": ..., "cells": [...], "labels_needed": [...]}``; non-finite numbers become null."""
        def finite(v: object) -> object:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        cells = [{k: finite(v) for k, v in dataclasses.asdict(c).items()} for c in self.cells]
        needed = [{k: finite(v) for k, v in dataclasses.asdict(r).items()} for r in self.labels_needed]
        return json.dumps({"meta": self.meta, "cells": cells, "labels_needed": needed}, indent=2,
                          ensure_ascii=False) + "\n"

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`json_text` to ``path``."""
        text = self.json_text()
        return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.json`` into ``out_dir``."""
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create report folder {out} ({exc.strerror}); pass a writable --out folder"
            ) from exc
        text = (f"# Leaderboard\n\nGenerated {self.meta.get('generated_at', '')}.\n\n{self.to_markdown()}"
                + (f"\n## How many more labels?\n\n{self.labels_needed_text()}" if self.labels_needed else ""))
        md = atomic_write(out / "leaderboard.md", lambda fh: fh.write(text.encode("utf-8")))  # whole, or the old one
        return {
            "md": md,
            "csv": self.to_csv(out / "leaderboard.csv"),
            "json": self.to_json(out / "leaderboard.json"),
        } | ({} if self.per_class is None else self.per_class.write(out))


# ---------------------------------------------------------------------------------------------- building


def _same_data(task: str, exps: list[Experiment]) -> list[Experiment]:
    """Only the experiments on the task's newest data (manifest, split, classes): never pair across datasets.

    Two different folders with the same name, a changed folder, or another split all share a task name but
    not a ``task_manifest``; comparing their predictions would pair unrelated examples.
    """
    if not exps:
        return exps
    newest = max(exps, key=lambda e: (e.created_at or 0.0, e.id or 0))
    manifest = newest.config.get("task_manifest")
    kept = [e for e in exps if e.config.get("task_manifest") == manifest]
    if len(kept) < len(exps):
        others = sorted({f"{e.backbone}/{e.protocol}" for e in exps if e not in kept})
        logger.warning(
            "task %s: left out %d experiments on other data of the same name (a changed folder, another split or "
            "another dataset: %s); rerun them on the current data to compare", task, len(exps) - len(kept),
            ", ".join(others),
        )  # fmt: skip
    return kept


def _newest_per_model(task: str, exps: Iterable[Experiment]) -> list[Experiment]:
    by_model: dict[tuple[str, str], list[Experiment]] = defaultdict(list)
    for e in _same_data(task, list(exps)):
        by_model[(e.backbone, e.protocol)].append(e)
    kept = []
    for (backbone, protocol), group in sorted(by_model.items()):
        newest = max(group, key=lambda e: (e.created_at or 0.0, e.id or 0))
        if len(group) > 1:
            logger.warning(
                "task %s: %d experiments of %s with protocol %s; using the newest (%s, n_train=%s, seed=%s)",
                task, len(group), backbone, protocol, newest.config_hash, newest.n_train, newest.seed,
            )  # fmt: skip
        kept.append(newest)
    return kept


def _encode(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Integer codes of ``labels`` in the sorted array ``classes``; labels not in it get -1."""
    if classes.size == 0:
        return np.full(labels.shape, -1, dtype=np.int64)
    pos = np.searchsorted(classes, labels)
    clipped = np.minimum(pos, classes.size - 1)
    return np.where(classes[clipped] == labels, clipped, -1).astype(np.int64)


def _codes(p: Predictions, column: str, classes: np.ndarray) -> np.ndarray:
    """The label column ``column`` of ``p`` as codes in the sorted array ``classes`` (-1 where absent)."""
    vocab, codes = p.categorical(column)
    return _encode(vocab, classes)[codes]


def _model(e: Experiment) -> str:
    return f"{e.backbone}/{e.protocol}"


def _lacking(p: Predictions, metric: Metric) -> str | None:
    """What ``metric`` needs that the predictions ``p`` do not hold, or None."""
    if metric.needs == "topk" and p.topk is None:
        return "top-k labels"
    if metric.needs == "parts" and (p.part is None or p.group is None):
        return "parts"
    if missing := [c for c in metric.extra_columns if c not in p.extra]:
        return f"per-example {', '.join(missing)}"
    return None


def _parts_matrix(p: Predictions, labels: np.ndarray, parts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``labels`` (codes, one per prediction) as a (parts, groups) matrix; every cell must be filled."""
    assert p.part is not None and p.group is not None
    out = np.full((parts.size, groups.size), -1, dtype=np.int64)
    out[np.searchsorted(parts, p.part), np.searchsorted(groups, p.group)] = labels
    if (out < 0).any():
        raise DataError("per-part predictions do not cover every image in every part; rerun the task")
    return out


def _load_aligned(
    store: Store, task: str, metric: Metric, exps: list[Experiment]
) -> list[tuple[Experiment, Predictions]]:
    """Each experiment's predictions restricted to the test ids that all of them share, in id order."""
    loaded = []
    for e in exps:
        assert e.id is not None
        p = store.predictions(e.id, topk=metric.needs == "topk")
        if lacking := _lacking(p, metric):
            logger.warning("task %s: %s stored no %s; it is left out of %s", task, _model(e), lacking, metric.name)
        elif len(p) == 0:
            logger.warning("task %s: %s stored no predictions; it is left out", task, _model(e))
        else:
            loaded.append((e, p))
    if not loaded:
        return []
    common = loaded[0][1].ids
    if all(_equal(p.ids, common) for _, p in loaded[1:]):
        aligned = loaded  # the usual case: every model scored the same examples (stored sorted by id)
        return _same_truth(task, aligned)
    for _, p in loaded[1:]:
        common = np.intersect1d(common, p.ids, assume_unique=True)
    if any(len(p) != common.size for _, p in loaded):
        counts = ", ".join(f"{_model(e)}: {len(p)}" for e, p in loaded)
        logger.warning(
            "task %s: models were scored on different test examples (%s); comparing on the %d they share",
            task, counts, common.size,
        )  # fmt: skip
    if common.size == 0:
        raise DataError(
            f"task {task}: the stored models share no test example ids; rerun them on the same split "
            "(lifebench run --force)"
        )
    aligned = [(e, p.take(np.intersect1d(common, p.ids, assume_unique=True, return_indices=True)[2]))
               for e, p in loaded]
    return _same_truth(task, aligned)


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal`` of two label or id arrays, by one memory comparison when they have the same dtype (the
    usual case: 85 models' test ids compared in microseconds, not element by element)."""
    if a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes():
        return True
    return bool(np.array_equal(a, b))


def _same_truth(task: str, aligned: list[tuple[Experiment, Predictions]]) -> list[tuple[Experiment, Predictions]]:
    """``aligned`` unchanged, after checking that every model stored the same true labels."""
    first, y_true = aligned[0][0], aligned[0][1].y_true
    for e, p in aligned[1:]:
        if not _equal(p.y_true, y_true) and (differ := int(np.count_nonzero(p.y_true != y_true))):
            raise DataError(
                f"task {task}: {_model(e)} and {_model(first)} stored different true labels for {differ} test "
                "examples; the task data changed between runs: rerun the stale one with --force"
            )
    return aligned


@dataclass
class _SeedData:
    """One seed's aligned data for a task: the models' experiments, the ids of the resampled units (test examples,
    or images for per-part tasks), the true codes and each model's predictions in the metric's form."""

    found: dict[str, Experiment]
    units: np.ndarray
    codes_true: np.ndarray
    preds: list[np.ndarray]
    classes: np.ndarray  # the sorted class names the codes index


def _seed_data(store: Store, task: str, metric: Metric, exps: list[Experiment]) -> _SeedData | None:
    """The aligned, encoded predictions of one seed's experiments; None when none can be scored."""
    aligned = _load_aligned(store, task, metric, exps)
    if not aligned:
        return None
    first = aligned[0][1]
    classes = set().union(*(e.classes for e, _ in aligned))
    seen = set(first.categorical("y_true")[0].tolist()).union(
        *(p.categorical("y_pred")[0].tolist() for _, p in aligned))
    if extra := seen - classes - {UNKNOWN}:  # an open-set "none of the known classes" is no class
        logger.warning("task %s: labels missing from the stored class lists: %s", task, sorted(extra)[:10])
    class_arr = np.array(sorted(classes | seen), dtype=str)
    codes_true, units = _codes(first, "y_true", class_arr), first.ids

    if metric.needs == "parts":
        parts, units = np.unique(first.part), np.unique(first.group)
        codes_true = _parts_matrix(first, codes_true, parts, units)  # images are resampled, all parts together

    def prediction(p: Predictions) -> np.ndarray:
        if metric.needs == "topk":
            assert p.topk is not None
            pred = _codes(p, "topk", class_arr)
            if pred.shape[1] >= class_arr.size:  # the ranking lists every class: padding changes nothing
                pred = np.pad(
                    pred, ((0, 0), (0, max(0, _TOPK_MIN_WIDTH - pred.shape[1]))), constant_values=-1
                )
            return pred
        if metric.needs == "parts":
            return _parts_matrix(p, _codes(p, "y_pred", class_arr), parts, units)
        if metric.extra_columns:
            return np.stack([p.extra[c] for c in metric.extra_columns], axis=1)
        return _codes(p, "y_pred", class_arr)

    return _SeedData({_model(e): e for e, _ in aligned}, units, codes_true, [prediction(p) for _, p in aligned],
                     class_arr)


def _strata(units: np.ndarray, per_seed: list[_SeedData]) -> np.ndarray | None:
    """The true class of each resampled unit of any seed, which the resamples are drawn within (every class keeps
    its support, so class-averaged metrics average the same classes in every resample); None for per-part tasks,
    whose images have one class per part and are resampled plainly."""
    if any(d.codes_true.ndim != 1 for d in per_seed):
        return None
    labels = np.empty(units.size, dtype=object)
    for d in per_seed:
        labels[np.searchsorted(units, d.units)] = d.classes[d.codes_true]
    return class_strata(labels.astype(str))  # classes under MIN_CLASS_STRATUM examples pooled


def _estimates(metric: Metric, data: _SeedData, idx: ResampleCounts, confidence: float) -> dict[str, Estimate]:
    """Each model's paired bootstrap estimate on ``idx``, all models in one pass."""
    return dict(zip(data.found, bootstrap_many(metric, data.codes_true, data.preds, idx, confidence), strict=True))


def _task_data(store: Store, task: str, metric: Metric, by_seed: dict[int, list[Experiment]]) -> list[_SeedData]:
    """Each seed's aligned predictions of ``task`` (the store reads, on the calling thread: a SQLite connection
    stays on its thread)."""
    return [d for _, exps in sorted(by_seed.items()) if (d := _seed_data(store, task, metric, exps))]


def _score_task(
    task: str,
    metric: Metric,
    per_seed: list[_SeedData],
    seeds: list[int],
    *,
    n_resamples: int,
    seed: int,
    confidence: float,
    alpha: float,
    keep: dict[tuple[str, str, str, str], np.ndarray] | None = None,
    per_class: list[tuple[list, list]] | None = None,
) -> list[Cell]:
    """Cells of one task scored with ``metric``, one per model.

    With several seeds (few-shot folds, training subsamples) a model's score is the mean over the seeds that
    every model has, and its bootstrap distribution the per-resample mean over seeds. The resamples are drawn
    once, over every test example of any seed, and each seed sees them restricted to its own test set
    (:meth:`ResampleCounts.subset`): an example keeps its number of copies in a resample whatever the seed, so
    seeds sharing test examples do not average away their sampling noise, and the comparison stays paired.
    ``per_seed`` comes from :func:`_task_data`; nothing here reads the store, so tasks are scored on worker
    threads (numpy releases the GIL in the products, the bincounts and the sorts).
    """
    if not per_seed:
        return []
    units = functools.reduce(np.union1d, (d.units for d in per_seed)) if len(per_seed) > 1 else per_seed[0].units
    # Seeded by the task's base name: variants with the same test set (task@n100, task@n500) share resamples,
    # so their differences (a sample-efficiency curve) are paired too.
    strata = _strata(units, per_seed)
    every = ResampleCounts(resample_indices(int(units.size), n_resamples, task_seed(task.split("@")[0], seed),
                                            strata=strata), strata=strata)
    estimates = [
        _estimates(metric, d, every if d.units.size == units.size else every.subset(np.searchsorted(units, d.units)),
                   confidence)
        for d in per_seed
    ]  # fmt: skip
    models = sorted(set.intersection(*(set(est) for est in estimates)))
    if not models:  # each model ran other seeds: no seed average compares them on the same test examples
        raise DataError(f"task {task}: no model has results for every seed ({', '.join(str(s) for s in seeds)})"
                        "; run each model with the same --seed values, then report again")
    if dropped := sorted(set().union(*(set(est) for est in estimates)) - set(models)):
        logger.warning("task %s: %s lack results for some seeds (%s); they are left out of the seed average", task,
                       ", ".join(dropped), ", ".join(str(s) for s in seeds))
    combined: dict[str, Estimate] = {}
    spread: dict[str, float | None] = {}
    for m in models:
        points = np.array([est[m].point for est in estimates])
        resamples = np.mean([est[m].resamples for est in estimates], axis=0)
        combined[m] = estimate(float(points.mean()), resamples, confidence,  # BCa terms: the seeds' mean
                               acceleration=float(np.mean([est[m].acceleration or 0.0 for est in estimates])),
                               expansion=float(np.mean([est[m].expansion for est in estimates])))
        spread[m] = float(points.std(ddof=1)) if len(points) > 1 else None
    best, tied, pvalues = ties_with_best(combined, alpha=alpha, higher_is_better=metric.higher_is_better)
    cells, n_test = [], int(per_seed[0].units.size)
    truth = per_seed[0].codes_true  # test images per class, for metrics that are per class (not re-ID or parts)
    counts = np.bincount(truth[truth >= 0]) if metric.needs in ("pred", "topk") else None
    for m in models:
        e, est = per_seed[0].found[m], combined[m]
        if keep is not None:
            keep[(task, metric.name, e.backbone, e.protocol)] = est.resamples
        cells.append(
            Cell(
                task=task, backbone=e.backbone, protocol=e.protocol, metric=metric.name, point=est.point,
                low=est.low, high=est.high, n_test=n_test, is_best=m == best, tied=m != best and m in tied,
                pvalue=None if m == best else pvalues[m], n_seeds=len(per_seed),
                seed_std=spread[m], warnings=sample_warnings(n_test, counts, (est.low, est.high)),
            )
        )  # fmt: skip
    if per_class is not None and metric.needs == "pred":  # per-class scores on the same resamples (when asked)
        idxs = [every if d.units.size == units.size else every.subset(np.searchsorted(units, d.units))
                for d in per_seed]
        per_class.append(per_class_scores(task, metric.name, per_seed, idxs, cells, confidence))
    return cells


@reads_store
def build_leaderboard(
    store: Store | str | os.PathLike[str],
    *,
    tasks: Sequence[str] | None = None,
    metric: str | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    alpha: float | None = None,
    per_class: bool = False,
    compare: Sequence[str] | None = None,
    power: float = 0.8,
) -> Leaderboard:
    """Score every stored model on every task, with paired bootstrap intervals and ties with the best.

    Parameters
    ----------
    store:
        A :class:`~lifebench.store.Store` or the path of an existing store file.
    tasks:
        Tasks to include; None means every task in the store.
    metric:
        Metric name for every task; None uses each experiment's own ``metric`` column (a task whose
        experiments name different metrics gets one column per metric).
    n_resamples, seed, confidence, alpha:
        Bootstrap resamples, base seed (combined with the task name), interval coverage and the
        family-wise error rate of the tie test (default ``1 - confidence``: the models marked tied then form a
        ``confidence``-level set of the models that may be the best, at the level of the intervals).
    per_class:
        Also compute each class's F1 with paired intervals and each model's confusion matrix (tasks scored from
        one predicted class per example); off by default, as it costs time on large suites.
    compare, power:
        The two models (``backbone/protocol`` or a backbone) whose difference :attr:`Leaderboard.labels_needed`
        sizes (default: the best and the runner-up of each task), and the power it is sized for.
    """
    check_options(power, compare)
    if alpha is None:
        alpha = round(1.0 - confidence, 12)  # 0.05, not 0.050000000000000044
    every = store.experiments()
    known = sorted({e.task for e in every})
    if not known:
        raise ConfigError(f"results store {store.path} holds no experiments; run `lifebench run` first")
    for t in tasks or ():
        if t not in known:
            raise UnknownNameError("task", t, known, hint=f"tasks with results in {store.path}")
    forced = None if metric is None else get_metric(metric)

    cells: list[Cell] = []
    kept: dict[tuple[str, str, str, str], np.ndarray] = {}
    classes: list[tuple[list, list]] | None = [] if per_class else None
    jobs = []  # (scoring, its resamples, its per-class scores), in task order
    # Tasks are scored on _THREADS worker threads while this thread reads the next ones from the store; BLAS
    # keeps to one thread in each (more threads than cores spin-wait, many times slower on a busy machine).
    with ThreadPoolExecutor(_THREADS) as pool, threadpool_limits(1, user_api="blas"):
        for task in known if tasks is None else list(dict.fromkeys(tasks)):
            by_metric: dict[str, list[Experiment]] = defaultdict(list)
            of_task = [e for e in every if e.task == task]
            for s in sorted({e.seed for e in of_task}):
                for e in _newest_per_model(task, (e for e in of_task if e.seed == s)):
                    by_metric[forced.name if forced else e.metric].append(e)
            for name, exps in sorted(by_metric.items()):
                by_seed: dict[int, list[Experiment]] = defaultdict(list)
                for e in exps:
                    by_seed[e.seed].append(e)
                scored = forced or get_metric(name)
                keep_task: dict[tuple[str, str, str, str], np.ndarray] = {}
                classes_task: list[tuple[list, list]] | None = [] if per_class else None
                jobs.append((pool.submit(
                    _score_task, task, scored, _task_data(store, task, scored, by_seed), sorted(by_seed),
                    n_resamples=n_resamples, seed=seed, confidence=confidence, alpha=alpha, keep=keep_task,
                    per_class=classes_task,
                ), keep_task, classes_task))  # fmt: skip
        for job, keep_task, classes_task in jobs:
            cells += job.result()
            kept |= keep_task
            if classes is not None and classes_task is not None:
                classes += classes_task

    if not cells:
        stored = sorted({e.metric for e in every if tasks is None or e.task in tasks})
        raise ConfigError(
            f"nothing in {store.path} can be scored" + (f" with --metric {metric}" if metric else "")
            + f": its experiments were scored with {', '.join(stored)} and hold no predictions that fit; "
            + ("pass one of those with --metric, or none" if metric else "rerun them with `lifebench run --force`")
        )
    meta = {
        "store": str(store.path),
        "tasks": sorted({c.task for c in cells}),
        "metric": metric,
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": confidence,
        "alpha": alpha,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    scored = set(meta["tasks"])  # where the scored experiments ran (CPU, threads, BLAS, device), once per setting
    meta["machines"] = sorted({machine_summary(e.provenance or {}) for e in every if e.task in scored})
    needed = labels_needed(cells, kept, confidence=confidence, power=power, compare=compare,
                           higher_is_better={c.metric: _higher_is_better(c.metric) for c in cells})
    meta["labels_needed"] = {"compare": list(compare) if compare else "best vs runner-up", "power": power}
    by_class = None if classes is None else PerClass(
        tuple(s for scores, _ in classes for s in scores), tuple(c for _, cms in classes for c in cms),
        meta={k: meta[k] for k in ("store", "n_resamples", "seed", "confidence", "generated_at")})
    board = Leaderboard(cells=tuple(cells), meta=meta, resamples=kept, per_class=by_class, labels_needed=tuple(needed))
    for line in board.caveats():
        logger.warning("%s", line)
    return board
