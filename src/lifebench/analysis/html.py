"""A static HTML report of an analysis: one folder, no build step, no network, works from ``file://``.

``index.html`` holds the analysis numbers, a sortable and filterable leaderboard (intervals, best and tied
models marked), the plots (``plots/*.svg`` and ``.png`` beside it), the exclusions and the run provenance.
The small script and style sheet are inline. The page is a Jinja2 template with autoescaping
(``lifebench/report/templates/analysis.html.j2``, sharing its chrome and sort/filter script with the results page),
so every name that comes from the data (models, tasks, families, provenance values) is shown, never run.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from pathlib import Path
from typing import Any

from lifebench.analysis.analyze import _NAMES, PAPER, Analysis
from lifebench.analysis.stats import STATISTICS, Agreement
from lifebench.errors import ConfigError, MissingDependencyError
from lifebench.fsutil import atomic_write

__all__ = ["render_html", "write_report"]

logger = logging.getLogger(__name__)

_PROVENANCE_ROWS = 500  # records shown in the page; analysis.json has all of them


def write_report(analysis: Analysis, out_dir: str | os.PathLike[str], *, plots: bool = True) -> dict[str, Path]:
    """Write the whole report into ``out_dir``: ``index.html``, ``plots/``, ``analysis.{txt,json}`` and the
    results as ``results.{parquet,csv,json}``. Returns name -> path of what was written."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create report folder {out} ({exc.strerror}); pass a writable --out folder") from exc
    written: dict[str, Path] = {}
    written |= {f"results.{k}": v for k, v in analysis.results.write(out).items()}
    written |= {f"analysis.{k}": v for k, v in analysis.write(out).items()}
    made: dict[str, dict[str, Any]] = {}
    plot_note = "Plots were not drawn (--no-plots)."
    if plots:
        from lifebench.analysis.plots import write_plots

        try:
            made = write_plots(analysis, out / "plots")
        except MissingDependencyError as exc:
            logger.warning("%s; the report has no plots", exc)
            plot_note = f"No plots: {exc}."
    page = render_html(analysis, made, plot_note=plot_note)
    written["html"] = atomic_write(out / "index.html", lambda f: f.write(page.encode("utf-8")))
    for name, info in made.items():
        written[f"plot.{name}.png"], written[f"plot.{name}.svg"] = info["png"], info["svg"]
    for path in written.values():  # atomic writes create owner-only files; a report is for everyone to read
        path.chmod(0o644)
    return written


# ---------------------------------------------------------------------------------------------- rendering
# The page is src/lifebench/report/templates/analysis.html.j2 (autoescaped, sharing base.html.j2 with the results
# page); the functions below only turn the analysis into plain values: formatted numbers and raw names.


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _ci(low: float | None, high: float | None) -> dict[str, str | None]:
    """An interval's bounds as the template's ``ci`` macro takes them: no interval when the low end is None."""
    return {"low": None, "high": None} if low is None else {"low": _num(low), "high": _num(high)}


def _agreement(title: str, a: Agreement, **extra: str) -> dict[str, Any]:
    cells = [{"v": _num(iv.point, 6), "point": _num(iv.point), **_ci(iv.low, iv.high)}
             for iv in (getattr(a, k) for k in STATISTICS)]
    return {"title": title, "n_models": a.n_models, "cells": cells, **extra}


def _params(v: float | None) -> str:
    if v is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if v >= size:
            return f"{v / size:.1f}{unit}"
    return f"{v:.0f}"


def _leaderboard(a: Analysis) -> list[dict[str, Any]]:
    """One row per model: the suite-mean models in rank order, then the others by name."""
    rs = a.results
    scores = {(s.task, s.model): s for s in rs.scores}
    suite_rows = {r.model: r for r in a.leaderboard}
    models = [r.model for r in a.leaderboard] + sorted(m for m in {s.model for s in rs.scores} if m not in suite_rows)
    labels = rs.labels()
    rows = []
    for m in models:
        info = rs.models.get(m)
        label = labels.get(m, m)
        family = (info.family if info else None) or ""
        params = info.params if info else None
        row: dict[str, Any] = {
            "model": m, "label": label, "family": family, "search": f"{label} {m} {family}".lower(),
            "params_v": "" if params is None else f"{params:.0f}", "params": _params(params),
            "release": (info.release if info else None) or "", "rank": None, "mean": None,
        }  # fmt: skip
        if (r := suite_rows.get(m)) is not None:
            row |= {"rank": r.rank, "rank_low": r.rank_low, "rank_high": r.rank_high,
                    "mean_v": f"{r.mean:.6f}", "mean": _num(r.mean)}
            row |= {f"mean_{k}": v for k, v in _ci(r.low, r.high).items()}
        cells = []
        for t in rs.tasks:
            s = scores.get((t, m))
            if s is None:
                cells.append(None)
                continue
            rank = a.task_ranks.get((t, m))
            tip = f"rank {rank[0]}" if rank else ""
            if rank and rank[1] is not None:
                tip += f" [{rank[1]}–{rank[2]}]"
            if s.pvalue is not None:
                tip += f"; adjusted p = {s.pvalue:.3g} (max test)"
            cells.append({"v": f"{s.point:.6f}", "point": _num(s.point), **_ci(s.low, s.high), "tip": tip,
                          "cls": "best" if s.is_best else "tied" if s.tied else ""})
        row["cells"] = cells
        rows.append(row)
    return rows


def _legend(a: Analysis) -> str:
    if a.results.per_example:
        return (f"{a.confidence * 100:g}% percentile bootstrap intervals over each task's test examples "
                f"({a.n_boot} resamples shared by all models of a task); the suite mean's interval and the rank "
                "intervals come from the joint bootstrap (each resample averages the tasks' resampled scores). "
                "★ best on the task; ≈ not significantly worse than the best (step-down paired bootstrap max "
                f"test over all pairs of models, family-wise error at most {1 - a.confidence:.2g}).")
    return ("Imported point estimates without per-example predictions: task intervals and ties are the "
            "source's own (★ best, ≈ tied, where the source publishes them); the suite mean has no interval "
            "and ranks have no interval.")


def _provenance(a: Analysis) -> dict[str, Any]:
    """The first records (analysis.json has all of them), their keys in order of appearance, values as text."""
    rows = a.results.provenance[:_PROVENANCE_ROWS]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]

    def show(v: object) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k} {x}" for k, x in v.items())
        if isinstance(v, list):
            return " ".join(map(str, v))
        return "" if v is None else str(v)

    return {"total": len(a.results.provenance), "columns": keys, "rows": [[show(r.get(k)) for k in keys] for r in rows]}


def render_html(analysis: Analysis, plots: dict[str, dict[str, Any]] | None = None, *,
                plot_note: str = "No plots.") -> str:
    """The report page as one string."""
    from lifebench.report.html import _env

    a = analysis
    rs = a.results
    labels = rs.labels()
    ref = rs.tasks.get(a.reference, a.reference)
    models = {s.model for s in rs.scores}
    context = {
        "title": f"Does {ref} rank predict the suite?", "ref": ref, "source": rs.source, "kind": rs.kind,
        "n_suite_models": len(a.suite_models), "suite": [rs.tasks.get(t, t) for t in a.suite],
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "resampled": rs.resampled,
        "confidence": a.confidence, "interval": a.interval, "n_boot": a.n_boot, "seed": a.seed,
        "min_models": a.min_models, "paper": PAPER, "statistics": [_NAMES[k] for k in STATISTICS],
        "agreement": [_agreement("suite mean", a.vs_suite)]
        + [_agreement(rs.tasks.get(t, t), ag) for t, ag in a.vs_task.items()],
        "sweep": [_agreement("suite mean", r.vs_suite, threshold=f"{r.threshold:.2f}")
                  for r in a.sweep if r.vs_suite is not None],
        "loto": [{"task": rs.tasks.get(r.task, r.task), "tau": _num(r.kendall_tau_b), "misranked": _num(r.misranked),
                  "top": labels.get(r.top, r.top)} for r in a.loto],
        "legend": _legend(a),
        "tasks": [{"id": t, "name": name, "reference": t == a.reference} for t, name in rs.tasks.items()],
        "board": _leaderboard(a),
        "families": sorted({(rs.models[m].family or "") for m in models if m in rs.models} - {""}),
        "bests": [{"task": rs.tasks.get(b["task"], b["task"]), "best": labels.get(b["best"], b["best"]),
                   "ties": None if b["ties"] is None else [labels.get(m, m) for m in b["ties"]],
                   "n_models": b["n_models"]} for b in a.bests()],
        "plots": [{"name": name, "title": info["title"], "caption": info["caption"]} for name, info in (plots or {}).items()],
        "plot_note": plot_note,
        "excluded": a.excluded,
        "provenance": _provenance(a),
    }  # fmt: skip
    return _env().get_template("analysis.html.j2").render(**context)
