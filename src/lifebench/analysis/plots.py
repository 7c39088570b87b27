"""Plots of an :class:`~lifebench.analysis.analyze.Analysis`, each written as PNG and SVG.

* ``reference_vs_suite``: reference score against the suite mean, with the least-squares line and its R²;
* ``threshold_sweep``: Spearman ρ, Kendall τ-b and the mis-ranked fraction against the threshold T, with
  interval bands (suite mean), and Kendall τ-b per task;
* ``task_scores``: every task's scores with their intervals, the best model and its ties marked;
* ``release_date`` and ``params``: suite mean against release date and parameter count, when known.

Matplotlib (``pip install 'lifebench[plots]'``) is imported only here, with the Agg canvas and no pyplot
state. Model names are drawn as plain text (no math parsing), so any name is safe; for the same reason log-axis
ticks get their own formatter (``10⁷``), since matplotlib's default writes a TeX string (mathdefault) that only
math parsing would render. Every figure is made for a paper: axes name the metric, each axis holds one statistic,
point labels that would overlap are moved or left out, and a footnote states the interval method and settings.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from lifebench.errors import MissingDependencyError
from lifebench.fsutil import atomic_write

__all__ = ["write_plots"]

logger = logging.getLogger(__name__)

_BEST, _TIED, _OTHER, _BAND = "#b2182b", "#ef8a62", "#4d4d4d", "#2166ac"
_LABEL_LIMIT = 30  # models; above this, points are not labelled


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "plots", "drawing the analysis plots") from exc
    return matplotlib, Figure


def write_plots(analysis: Any, out_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Draw every plot that the data allows into ``out_dir``; returns name -> {png, svg, title, caption}."""
    matplotlib, figure_cls = _matplotlib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, dict[str, Any]] = {}
    style = {"text.parse_math": False, "svg.hashsalt": "lifebench", "font.size": 9, "axes.grid": True,
             "grid.alpha": 0.3, "savefig.dpi": 120}
    with matplotlib.rc_context(style):
        for name, draw in (("reference_vs_suite", _reference_vs_suite), ("threshold_sweep", _sweep),
                           ("task_scores", _task_scores), ("release_date", _release), ("params", _params)):
            fig = figure_cls(layout="constrained")
            drawn = draw(fig, analysis)
            if drawn is None:
                continue
            title, caption = drawn
            settings = _settings(analysis)
            caption = f"{caption} {settings}"
            fig.supxlabel("\n".join(textwrap.wrap(settings, int(fig.get_figwidth() * 17))), fontsize=6.5,
                          color=_OTHER, ha="left", x=0.01)
            _declutter(fig)
            paths = {}
            for ext in ("png", "svg"):
                paths[ext] = out / f"{name}.{ext}"
                atomic_write(paths[ext], lambda f, ext=ext, fig=fig: fig.savefig(
                    f, format=ext, metadata={"Date": None} if ext == "svg" else None))
                fig.set_layout_engine("none")  # keep the layout computed for the PNG: the SVG is drawn alike
            made[name] = {**paths, "title": title, "caption": caption}
    return made


def _settings(a: Any) -> str:
    """The method and settings behind every interval drawn, as the figure's footnote and the caption's end."""
    return (f"Intervals: {a.confidence * 100:g}% percentile, {a.interval}; {a.n_boot} resamples, seed {a.seed}. "
            f"Resampled: {a.results.resampled}")


def _metric(a: Any, tasks: list[str]) -> str:
    """The metric the scores of ``tasks`` are in ("score" when a source does not say or they differ)."""
    names = {s.metric for s in a.results.scores if s.task in tasks}
    return names.pop() if len(names) == 1 and "" not in names else "score"


def _log_tick(value: float, _pos: Any = None) -> str:
    """A log-axis tick as plain text: ``10⁷`` for a power of ten, else the number itself (``3×10⁶``, ``500``)."""
    if value <= 0:
        return ""
    k = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10**k
    sup = str(k).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
    if abs(mantissa - 1) < 1e-6:
        return f"10{sup}"
    return f"{value:g}" if -3 <= k < 4 else f"{mantissa:.2g}×10{sup}"


def _declutter(fig: Any) -> None:
    """Keep point labels from overlapping: each label (in the order drawn) takes the first of a few offsets where
    it overlaps no label already placed and stays inside its axes, or is hidden. Needs the final layout, so the
    figure is laid out first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    labels = [t for ax in fig.axes for t in ax.texts if getattr(t, "_lifebench_point", False)]
    if not labels:
        return
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    placed: list[Any] = []
    for text in labels:
        box = text.axes.get_window_extent(renderer)
        for dx, dy, ha, va in ((3, 3, "left", "bottom"), (3, -3, "left", "top"), (-3, 3, "right", "bottom"),
                               (-3, -3, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top")):
            text.set_position((dx, dy))
            text.set_ha(ha)
            text.set_va(va)
            extent = text.get_window_extent(renderer)
            inside = (extent.x0 >= box.x0 and extent.x1 <= box.x1 and extent.y0 >= box.y0 and extent.y1 <= box.y1)
            if inside and not any(extent.overlaps(other) for other in placed):
                placed.append(extent)
                break
        else:
            text.set_visible(False)


def _label_points(ax: Any, x: Any, y: Any, labels: list[str]) -> None:
    """Name each point (placed or dropped by :func:`_declutter` once the figure is laid out), highest first, so
    that when labels crowd the best models keep theirs."""
    for i in sorted(range(len(labels)), key=lambda i: -float(y[i])):
        t = ax.annotate(labels[i], (x[i], y[i]), xytext=(3, 3), textcoords="offset points", fontsize=6.5,
                        color=_OTHER)
        t._lifebench_point = True


def _labels(a: Any, models: list[str]) -> list[str]:
    labels = a.results.labels()
    return [labels.get(m, m) for m in models]


def _suite_mean(a: Any) -> dict[str, Any]:
    return {r.model: r for r in a.leaderboard}


def _reference_vs_suite(fig: Any, a: Any) -> tuple[str, str]:
    ax = fig.add_subplot()
    fig.set_size_inches(7.0, 5.0)
    board = _suite_mean(a)
    models = a.suite_models
    x = np.array([a.results.point(a.reference, m) for m in models])
    y = np.array([board[m].mean for m in models])
    scores = {(s.task, s.model): s for s in a.results.scores}
    xerr = _err(x, [scores[(a.reference, m)] for m in models])
    yerr = None
    if all(board[m].low is not None for m in models):
        yerr = np.array([[y[i] - board[m].low, board[m].high - y[i]] for i, m in enumerate(models)]).T
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=_BAND, ecolor="#9ecae1", ms=5, lw=0.8)
    slope, icept = np.polyfit(x, y, 1)
    grid = np.linspace(x.min(), x.max(), 50)
    r2 = a.vs_suite.r2
    iv = f" [{r2.low:.2f}, {r2.high:.2f}]" if r2.low is not None else ""
    ax.plot(grid, slope * grid + icept, color=_BEST, lw=1.5, label=f"least squares, R² = {r2.point:.2f}{iv}")
    if len(models) <= _LABEL_LIMIT:
        _label_points(ax, x, y, _labels(a, models))
    ax.set_xlabel(f"{a.results.tasks.get(a.reference, a.reference)} {_metric(a, [a.reference])}")
    ax.set_ylabel(f"suite mean {_metric(a, a.suite)} ({len(a.suite)} tasks)")
    ax.legend(loc="lower right")
    ax.set_title(f"{a.reference} against the suite mean: Spearman ρ {a.vs_suite.spearman.point:.2f}, "
                 f"Kendall τ-b {a.vs_suite.kendall_tau_b.point:.2f} ({len(models)} models)")
    return (f"{a.reference} score against the suite mean",
            f"Each point is a model; the line is the least-squares fit, R² its squared Pearson correlation "
            f"with its {a.confidence * 100:g}% interval.")


def _err(x: np.ndarray, scores: list[Any]) -> np.ndarray | None:
    if not all(s.low is not None and s.high is not None for s in scores):
        return None
    return np.array([[max(x[i] - s.low, 0.0), max(s.high - x[i], 0.0)] for i, s in enumerate(scores)]).T


def _band(ax: Any, ts: list[float], ivs: list[Any], color: str, label: str, lw: float = 1.6,
          alpha: float = 0.2) -> None:
    point = np.array([iv.point for iv in ivs], dtype=float)
    ax.plot(ts, point, marker="o", ms=3, color=color, lw=lw, label=label)
    if all(iv.low is not None for iv in ivs):
        ax.fill_between(ts, [iv.low for iv in ivs], [iv.high for iv in ivs], color=color, alpha=alpha, lw=0)


def _sweep(fig: Any, a: Any) -> tuple[str, str] | None:
    """One statistic per axis: Spearman ρ, Kendall τ-b and the mis-ranked fraction against the suite mean each in
    a panel of its own, and Kendall τ-b per task in the fourth."""
    rows = [r for r in a.sweep if r.vs_suite is not None]
    if not rows:
        return None
    fig.set_size_inches(9.0, 6.4)
    axes = fig.subplots(2, 2, sharex=True)
    ts = [r.threshold for r in rows]
    xlabel = f"threshold T: models with {a.reference} {_metric(a, [a.reference])} ≥ T"
    panels = (("spearman", "Spearman ρ", _BAND, (-1.05, 1.05)), ("kendall_tau_b", "Kendall τ-b", "#1b7837",
              (-1.05, 1.05)), ("misranked", "mis-ranked pair fraction", _BEST, (-0.02, 1.02)))
    for ax, (attr, label, color, ylim) in zip(axes.flat, panels, strict=False):
        _band(ax, ts, [getattr(r.vs_suite, attr) for r in rows], color, label)
        ax.set_ylim(*ylim)
        if ylim[0] < 0:
            ax.axhline(0, color="#999999", lw=0.6)
        ax.set_ylabel(label)
        ax.set_title(f"{label} with the suite mean", fontsize=9)
    for ax in axes[0]:
        twin = ax.secondary_xaxis("top")
        twin.set_ticks(ts, labels=[str(r.vs_suite.n_models) for r in rows], fontsize=7)
        twin.set_xlabel("models left", fontsize=7.5)
    right = axes[1, 1]
    for k, task in enumerate(a.suite):
        pts = [(r.threshold, r.vs_task[task].kendall_tau_b) for r in rows if task in r.vs_task]
        if pts:
            _band(right, [p[0] for p in pts], [p[1] for p in pts], f"C{k % 10}", a.results.tasks.get(task, task),
                  lw=1.0, alpha=0.08)
    right.set_ylim(-1.05, 1.05)
    right.axhline(0, color="#999999", lw=0.6)
    right.set_ylabel("Kendall τ-b")
    right.set_title("Kendall τ-b with each task", fontsize=9)
    right.legend(loc="lower left", fontsize=6.5, ncols=2)
    for ax in axes[1]:
        ax.set_xlabel(xlabel)
    return ("Threshold sweep",
            f"Agreement of {a.reference} with the suite mean (Spearman ρ, Kendall τ-b, mis-ranked pair fraction: one "
            f"panel each) and Kendall τ-b with each task, among the models whose {a.reference} score is at least T, "
            f"while at least {a.min_models} models remain; bands: {a.confidence * 100:g}% intervals.")


def _task_scores(fig: Any, a: Any) -> tuple[str, str]:
    tasks = list(a.results.tasks)
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    n_models = max(sum(1 for s in a.results.scores if s.task == t) for t in tasks)
    labelled = n_models <= _LABEL_LIMIT
    fig.set_size_inches(4.2 * cols if labelled else 3.2 * cols, rows * ((0.16 if labelled else 0.05) * n_models + 1.0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(tasks):
            ax.set_visible(False)
            continue
        task = tasks[k]
        rows_t = sorted((s for s in a.results.scores if s.task == task), key=lambda s: s.point)
        y = np.arange(len(rows_t))
        x = np.array([s.point for s in rows_t])
        colors = [_BEST if s.is_best else _TIED if s.tied else _OTHER for s in rows_t]
        err = _err(x, rows_t)
        if err is not None:
            ax.errorbar(x, y, xerr=err, fmt="none", ecolor="#bbbbbb", lw=1.0)
        ax.scatter(x, y, c=colors, s=14, zorder=3)
        ax.set_yticks(y, labels=_labels(a, [s.model for s in rows_t]) if labelled else [], fontsize=6.5)
        ax.set_title(a.results.tasks.get(task, task) + (" (reference)" if task == a.reference else ""), fontsize=9)
        ax.set_xlabel(_metric(a, [task]))
        ax.grid(axis="y", alpha=0.1)
    return ("Scores per task",
            "Point estimates with their intervals; red: the task's best model, orange: tied with it (not "
            "significantly worse), grey: the others.")


def _scatter_meta(fig: Any, a: Any, xs: list[Any], xlabel: str, log: bool) -> None:
    board = _suite_mean(a)
    keep = [(x, m) for x, m in zip(xs, a.suite_models, strict=True) if x is not None]
    ax = fig.add_subplot()
    fig.set_size_inches(7.0, 4.5)
    x = [k[0] for k in keep]
    y = [board[m].mean for _, m in keep]
    ax.scatter(x, y, color=_BAND, s=20)
    if len(keep) <= _LABEL_LIMIT:
        _label_points(ax, x, y, _labels(a, [m for _, m in keep]))
    if log:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_log_tick))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"suite mean {_metric(a, a.suite)} ({len(a.suite)} tasks)")


def _release(fig: Any, a: Any) -> tuple[str, str] | None:
    dates = [a.results.models[m].release if m in a.results.models else None for m in a.suite_models]
    parsed = [None if d is None else dt.date.fromisoformat(d) for d in dates]
    if sum(d is not None for d in parsed) < 3:
        return None
    _scatter_meta(fig, a, parsed, "release date", log=False)
    return ("Suite mean against release date", f"{sum(d is not None for d in parsed)} models with a known date.")


def _params(fig: Any, a: Any) -> tuple[str, str] | None:
    params = [a.results.models[m].params if m in a.results.models else None for m in a.suite_models]
    if sum(p is not None and p > 0 for p in params) < 3:
        return None
    _scatter_meta(fig, a, [p if p and p > 0 else None for p in params], "parameters (log scale)", log=True)
    return ("Suite mean against parameter count", f"{sum(p is not None for p in params)} models with a known count.")
