"""Per-class F1 with paired bootstrap intervals, and confusion matrices, from the stored predictions.

Why: a macro-F1 of 0.80 can hide a class at 0.20, and the class a scientist cares about (a rare species, one
cell phenotype) is often that one. The per-class numbers come from the same aligned predictions and the same
shared bootstrap resamples as the leaderboard's cells, so a per-class comparison of two models is paired exactly
as the leaderboard's ties are: resample ``b`` holds the same test images for every model.

Vectorised on the count matrix ``K`` of :class:`~lifebench.metrics.ResampleCounts`: for each model, one sparse
product over ``K`` keyed by ``true class`` for the right answers and ``C + predicted class`` for the wrong ones
gives the true and false positives of every class in every resample; the per-resample support comes from the
cache the metrics already filled. Nothing here runs unless a report asks for it (``report --per-class``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lifebench.fsutil import atomic_write
from lifebench.metrics import ResampleCounts

if TYPE_CHECKING:
    from lifebench.report.leaderboard import Cell, _SeedData

__all__ = ["ClassScore", "Confusion", "PerClass", "per_class_scores", "percentile_columns"]


@dataclass(frozen=True)
class ClassScore:
    """One model's scores on one class of a task (a row of ``per_class.csv``).

    ``f1_low``/``f1_high`` are the percentile bootstrap interval of the class's F1 over the resamples that hold
    the class; ``diff_best`` is this model's F1 minus the task's best model's (the leaderboard's ``*``) on the
    same class, with its paired interval ``diff_low``/``diff_high`` (None for the best model itself). With several
    seeds, F1, precision, recall and their resamples are means over the seeds and ``support`` is a sum.
    """

    task: str
    metric: str
    backbone: str
    protocol: str
    class_name: str
    support: int
    precision: float
    recall: float
    f1: float
    f1_low: float
    f1_high: float
    diff_best: float | None
    diff_low: float | None
    diff_high: float | None
    n_seeds: int = 1


@dataclass(frozen=True)
class Confusion:
    """Counts of (true class, predicted class) for one model on one task; rows true, columns predicted, both in
    the order of ``labels`` (every class that is a true label or any model's prediction on the task; summed over
    seeds)."""

    task: str
    metric: str
    backbone: str
    protocol: str
    labels: tuple[str, ...]
    counts: np.ndarray = dataclasses.field(repr=False, compare=False)


def percentile_columns(res: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of every column of ``res`` (B, k) over its finite entries, as ``np.nanquantile``'s
    default (linear) method gives it, without its per-column Python loop; NaN where a column has no finite entry.
    """
    tail = (1.0 - confidence) / 2.0
    ordered = np.sort(np.where(np.isfinite(res), res, np.nan), axis=0)  # NaN sort last
    finite = np.isfinite(res).sum(axis=0)
    out = []
    for q in (tail, 1.0 - tail):
        pos = q * np.maximum(finite - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(finite - 1, 0))
        a = np.take_along_axis(ordered, lo[None], axis=0)[0]
        b = np.take_along_axis(ordered, hi[None], axis=0)[0]
        value = a + (pos - lo) * (b - a)
        out.append(np.where(finite > 0, value, np.nan))
    return out[0], out[1]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


@dataclass
class _Sums:
    """Running sums over seeds for one model: points, per-resample F1 and confusion counts."""

    f1: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    seeds_with_class: np.ndarray
    support: np.ndarray
    f1_res: np.ndarray
    res_count: np.ndarray
    confusion: np.ndarray


def per_class_scores(
    task: str,
    metric: str,
    per_seed: Sequence[_SeedData],
    idxs: Sequence[ResampleCounts],
    cells: Sequence[Cell],
    confidence: float,
) -> tuple[list[ClassScore], list[Confusion]]:
    """Per-class scores and confusion matrices of the models in ``cells`` (one task column, already scored).

    ``per_seed`` and ``idxs`` are the leaderboard's aligned data and shared resamples of each seed; a model is
    included when it has a cell. Per-resample F1 is NaN for a class absent from that resample's labels (it is
    not estimated there), so a class's interval and its paired difference use the resamples that hold it.
    """
    models = {f"{c.backbone}/{c.protocol}": c for c in cells}
    best = next((m for m, c in models.items() if c.is_best), None)
    # Class axes shared by every model of the task: classes that are a true label or any model's prediction.
    used: set[str] = set()
    for d in per_seed:
        codes = np.unique(np.concatenate([d.codes_true, *(d.preds[i] for i, m in enumerate(d.found) if m in models)]))
        used.update(d.classes[codes[codes >= 0]].tolist())
    labels = np.array(sorted(used), dtype=str)
    n_labels = labels.size
    n_res = idxs[0].n_resamples

    # Per seed: labels on the task's axis, classes present, per-resample support (cached in idx).
    seeds = []
    for d, idx in zip(per_seed, idxs, strict=True):
        remap = np.searchsorted(labels, d.classes)  # seed's codes -> task's label axis
        yt = remap[d.codes_true]
        seeds.append((d, idx, remap, yt, np.bincount(yt, minlength=n_labels) > 0, idx.support(yt, n_labels)))
    rows = np.flatnonzero(np.any([present for *_, present, _ in seeds], axis=0))

    def model_sums(m: str) -> _Sums:
        """One model's sums over seeds; one model at a time keeps memory at O(B C) for a 1000-class task."""
        zeros = np.zeros(n_labels)
        s = _Sums(zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy(), np.zeros((n_res, n_labels)),
                  np.zeros((n_res, n_labels)), np.zeros((n_labels, n_labels), dtype=np.int64))
        for d, idx, remap, yt, present, support_b in seeds:
            yp = remap[d.preds[list(d.found).index(m)]]
            conf = np.bincount(yt * n_labels + yp, minlength=n_labels * n_labels).reshape(n_labels, n_labels)
            tp, support, predicted = np.diag(conf), conf.sum(axis=1), conf.sum(axis=0)
            # One sparse product: right answers keyed by class, wrong ones by C + predicted class.
            both = idx.keyed_sum(np.where(yp == yt, yt, n_labels + yp), 2 * n_labels)
            tp_b, fp_b = both[:, :n_labels], both[:, n_labels:]
            with np.errstate(invalid="ignore", divide="ignore"):  # F1 = 2 tp / (support + predicted)
                f1_b = np.where(support_b > 0, 2.0 * tp_b / (support_b + tp_b + fp_b), np.nan)
            s.f1 += np.where(present, _ratio(2.0 * tp, support + predicted), 0.0)
            s.precision += np.where(present, _ratio(tp, predicted), 0.0)
            s.recall += np.where(present, _ratio(tp, support), 0.0)
            s.seeds_with_class += present
            s.support += support
            finite = np.isfinite(f1_b)
            s.f1_res += np.where(finite, f1_b, 0.0)
            s.res_count += finite
            s.confusion += conf
        return s

    def mean_res(s: _Sums) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s.f1_res / np.where(s.res_count > 0, s.res_count, np.nan))[:, rows]

    order = ([best] if best in models else []) + [m for m in models if m != best and m in per_seed[0].found]
    best_res = best_f1 = None
    scores: list[ClassScore] = []
    confusions: list[Confusion] = []
    for m in order:
        s, cell = model_sums(m), models[m]
        res = mean_res(s)
        with_class = s.seeds_with_class[rows]
        f1 = s.f1[rows] / with_class
        low, high = percentile_columns(res, confidence)
        diff = d_low = d_high = None
        if m == best:
            best_res, best_f1 = res, f1
        elif best_res is not None:
            diff = f1 - best_f1
            d_low, d_high = percentile_columns(res - best_res, confidence)
        for j, r in enumerate(rows):
            scores.append(ClassScore(
                task=task, metric=metric, backbone=cell.backbone, protocol=cell.protocol,
                class_name=str(labels[r]), support=int(s.support[r]), precision=float(s.precision[r] / with_class[j]),
                recall=float(s.recall[r] / with_class[j]), f1=float(f1[j]), f1_low=float(low[j]),
                f1_high=float(high[j]), diff_best=None if diff is None else float(diff[j]),
                diff_low=None if d_low is None else float(d_low[j]),
                diff_high=None if d_high is None else float(d_high[j]), n_seeds=cell.n_seeds,
            ))  # fmt: skip
        confusions.append(Confusion(task, metric, cell.backbone, cell.protocol, tuple(labels.tolist()), s.confusion))
    return scores, confusions


def _finite(v: object) -> object:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _file_part(text: str) -> str:
    """``text`` with every character that is unsafe in a file name replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", text)


@dataclass(frozen=True)
class PerClass:
    """Per-class scores and confusion matrices of a leaderboard (``build_leaderboard(per_class=True)``)."""

    scores: tuple[ClassScore, ...]
    confusions: tuple[Confusion, ...]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_text(self, n_classes: int = 5) -> str:
        """Per task, the best model's ``n_classes`` lowest-F1 classes, and which models are significantly better
        there (their paired difference interval lies above 0)."""
        if not self.scores:
            return "Per-class scores: none (no task is scored from one predicted class per example).\n"
        conf = self.meta.get("confidence", 0.95)
        several = len({s.protocol for s in self.scores}) > 1

        def name(s: ClassScore) -> str:
            return f"{s.backbone} ({s.protocol})" if several else s.backbone

        by_column: dict[tuple[str, str], list[ClassScore]] = {}
        for s in self.scores:
            by_column.setdefault((s.task, s.metric), []).append(s)
        out = [f"Per-class F1 [{conf * 100:g}% CI] of each task's best model: its {n_classes} lowest classes, and "
               "the models whose F1 on the class is higher than the best's (paired bootstrap interval of the "
               "difference above 0). Every class and model: per_class.csv."]
        for (task, metric), scores in sorted(by_column.items()):
            best = [s for s in scores if s.diff_best is None]
            if not best:
                continue
            lead = name(best[0])
            mine = sorted((s for s in best if s.backbone == best[0].backbone and s.protocol == best[0].protocol),
                          key=lambda s: (s.f1, s.class_name))
            table = [["class", "n", "F1 [CI]", "precision", "recall", "better here"]]
            shown = {s.class_name for s in mine[:n_classes]}
            above: dict[str, list[ClassScore]] = {}
            for o in scores:
                if o.class_name in shown and o.diff_low is not None and o.diff_low > 0:
                    above.setdefault(o.class_name, []).append(o)
            for s in mine[:n_classes]:
                better = sorted(above.get(s.class_name, []), key=lambda o: -o.f1)
                table.append([
                    s.class_name, str(s.support), f"{s.f1:.3f} [{s.f1_low:.3f}, {s.f1_high:.3f}]",
                    f"{s.precision:.3f}", f"{s.recall:.3f}",
                    f"{len(better)}: {name(better[0])} {better[0].f1:.3f}" if better else "0",
                ])  # fmt: skip
            widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
            out.append(f"\n{task} ({metric}): {lead}, lowest {min(n_classes, len(mine))} of {len(mine)} classes")
            out += ["  " + "  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w)
                                     for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
                    for r in table]
        return "\n".join(out) + "\n"

    def _confusion_names(self) -> dict[int, str]:
        """File name (under ``confusion/``) of each confusion matrix; unique even when sanitising merges names."""
        names: dict[int, str] = {}
        taken: set[str] = set()
        for i, c in enumerate(self.confusions):
            stem = "__".join(_file_part(p) for p in (c.task, c.backbone, c.protocol))
            if stem in taken:
                stem += "__" + hashlib.sha256(f"{c.task}\0{c.metric}\0{c.backbone}\0{c.protocol}".encode()).hexdigest()[:8]
            taken.add(stem)
            names[i] = f"{stem}.csv"
        return names

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``per_class.csv``, ``per_class.json`` and ``confusion/<task>__<backbone>__<protocol>.csv``."""
        out = Path(out_dir)
        fields = [f.name for f in dataclasses.fields(ClassScore)]
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        for s in self.scores:
            writer.writerow({k: ("" if v is None else v) for k, v in dataclasses.asdict(s).items()})
        csv_path = atomic_write(out / "per_class.csv", lambda fh: fh.write(buf.getvalue().encode("utf-8")))
        folder = out / "confusion"
        folder.mkdir(exist_ok=True)
        names = self._confusion_names()
        for i, c in enumerate(self.confusions):
            buf = io.StringIO(newline="")
            writer = csv.writer(buf)
            writer.writerow(["true \\ predicted", *c.labels])
            writer.writerows([label, *row] for label, row in zip(c.labels, c.counts.tolist(), strict=True))
            data = buf.getvalue().encode("utf-8")
            atomic_write(folder / names[i], lambda fh, data=data: fh.write(data))
        columns: dict[tuple[str, str], dict[str, Any]] = {}
        for i, c in enumerate(self.confusions):
            col = columns.setdefault((c.task, c.metric), {"task": c.task, "metric": c.metric,
                                                          "labels": list(c.labels), "models": {}})
            true, pred = np.nonzero(c.counts)
            col["models"][(c.backbone, c.protocol)] = {
                "backbone": c.backbone, "protocol": c.protocol, "classes": [],
                "confusion": [[int(t), int(p), int(c.counts[t, p])] for t, p in zip(true, pred, strict=True)],
                "confusion_csv": f"confusion/{names[i]}",
            }  # fmt: skip
        keep = [f for f in fields if f not in ("task", "metric", "backbone", "protocol")]
        for s in self.scores:
            entry = columns[(s.task, s.metric)]["models"][(s.backbone, s.protocol)]
            entry["classes"].append({k: _finite(getattr(s, k)) for k in keep})
        tasks = [dict(col, models=list(col["models"].values())) for _, col in sorted(columns.items())]
        doc = json.dumps({"meta": self.meta, "tasks": tasks}, ensure_ascii=False) + "\n"
        json_path = atomic_write(out / "per_class.json", lambda fh: fh.write(doc.encode("utf-8")))
        return {"per_class_csv": csv_path, "per_class_json": json_path, "confusion": folder}
