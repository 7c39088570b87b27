"""A static results page for any store: ``lifebench report --html DIR`` (and ``run`` writes it too).

Why one self-contained page: a scientist who ran lifebench on their own images needs to judge the leaderboard
(which classes fail, what gets confused with what, which images each model got wrong) without a server, a build
step or the network. Everything is rendered from Jinja2 templates with autoescaping on, so model ids, class names
and task names, which come from the user's folders, can never become markup or script. The numbers are the
leaderboard's own (:func:`~lifebench.report.leaderboard.build_leaderboard` with ``per_class=True``): the page
adds no statistics of its own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lifebench.errors import ConfigError, LifebenchError
from lifebench.fsutil import atomic_write
from lifebench.report.leaderboard import Leaderboard, _newest_per_model, build_leaderboard
from lifebench.store.sqlite import Experiment, Store, reads_store

__all__ = ["render_results_page", "write_results_page"]

logger = logging.getLogger(__name__)

MAX_WRONG = 50
MAX_PAGE_CLASSES = 100
"""Tasks with more classes get no per-class table or confusion matrix on the page (1,000 classes x 85 models would
be megabytes of HTML); `lifebench report --per-class` writes them as CSV and JSON instead."""
"""Wrong test images shown per model and task (the most confident mistakes first)."""
THUMB_SIZE = (160, 160)
_N_TRAIN = re.compile(r"^(?P<base>.+)@n(?P<n>\d+)$")


def _env():
    """The Jinja2 environment of every lifebench page (this one and ``analyze``'s): templates are read as package
    data so that an installed wheel finds them, and autoescaping keeps names from the user's data inert."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("lifebench.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


# ---------------------------------------------------------------------------------------------- images


class _ImagePaths:
    """Maps a stored example id back to its image file, from the experiment's recorded ``task_source``.

    Folder tasks key examples by the path relative to the folder and manifests by their path column (relative to
    the manifest), so ``source/id`` (or the manifest's folder / id) is tried first; otherwise the task is loaded again with :func:`lifebench.tasks.resolve_task` and its
    ``Examples`` give the path of each id. A registered task whose source is not a path is loaded by its name (the
    demo's photos; a benchmark from the default data folder). Moved or absent data gives no path: the gallery then
    shows the id alone.
    """

    def __init__(self) -> None:
        self._by_source: dict[str, dict[str, str] | None] = {}

    def path(self, exp: Experiment, example_id: str) -> Path | None:
        source = str(exp.config.get("task_source") or "")
        if source and os.path.exists(source):
            # folder ids are relative to the folder; a manifest's ids are usually its paths, relative to the manifest
            direct = (Path(source) if os.path.isdir(source) else Path(source).parent) / example_id
            if direct.is_file():
                return direct
        else:  # a registered task (the demo's photos, a benchmark in the default data folder): load it by name
            source = exp.task.split("@")[0]
        if source not in self._by_source:
            self._by_source[source] = self._load(source)
        found = (self._by_source[source] or {}).get(example_id)
        return Path(found) if found and os.path.isfile(found) else None

    @staticmethod
    def _load(source: str) -> dict[str, str] | None:
        from lifebench.tasks import resolve_task

        try:
            task = resolve_task(source)
        except (LifebenchError, OSError, ValueError) as exc:
            logger.info("results page: cannot reload task source %s for thumbnails (%s)", source, exc)
            return None
        return dict(zip(task.examples.ids.tolist(), task.examples.paths.tolist(), strict=True))


def _thumbnail(image: Path, out_dir: Path) -> str | None:
    """``thumbs/<hash>.jpg`` (relative to the page) of ``image``, made once; None when it cannot be read.

    Decoded as lifebench's default decoding shows images to a model (transparency on white, EXIF rotation applied),
    so a cut-out photo looks as the model saw it; written to a temporary name and renamed, so a killed report never
    leaves a half-written thumbnail that a later one would reuse."""
    from lifebench.images import load_rgb

    name = hashlib.sha256(str(image.resolve()).encode()).hexdigest()[:20] + ".jpg"
    target = out_dir / "thumbs" / name
    if not target.exists():
        try:
            im = load_rgb(image)
            im.thumbnail(THUMB_SIZE)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.part")
            im.save(partial, "JPEG", quality=80)
            os.replace(partial, target)
        except (OSError, LifebenchError) as exc:
            logger.warning("results page: no thumbnail of %s (%s)", image, exc)
            return None
    return f"thumbs/{name}"


# ---------------------------------------------------------------------------------------------- sections


def _leaderboard(board: Leaderboard) -> dict[str, Any]:
    cols = board.columns()
    index = {(c.backbone, c.protocol, c.task, c.metric): c for c in board.cells}
    n_test = {(c.task, c.metric): c.n_test for c in board.cells}
    rows = []
    for m in board.models():
        cells = []
        for task, metric in cols:
            c = index.get((*m, task, metric))
            if c is None:
                cells.append(None)
                continue
            mark = "best" if c.is_best else "tied" if c.tied else ""
            cells.append({
                "v": f"{c.point:.6g}", "point": _num(c.point), "low": _num(c.low), "high": _num(c.high), "mark": mark,
                "title": ("best on the task" if c.is_best else
                          f"not significantly worse than the best (adjusted p = {_num(c.pvalue)})" if c.tied else
                          f"worse than the best (adjusted p = {_num(c.pvalue)})")
                + (f"; {c.n_seeds} seeds, sd {_num(c.seed_std)}" if c.n_seeds > 1 else ""),
            })  # fmt: skip
        label = board.label(*m)
        rows.append({"label": label, "search": label.lower(), "cells": cells})
    headers = [{"task": t, "metric": mt, "n": n_test[(t, mt)]} for t, mt in cols]
    return {"headers": headers, "rows": rows, "legend": board.legend("bold *", "="), "caveats": board.caveats()}


def _per_class(board: Leaderboard) -> list[dict[str, Any]]:
    """Per task column: classes as rows, models as columns (F1 [CI], support), and each model's confusion matrix."""
    if board.per_class is None:
        return []
    by_col: dict[tuple[str, str], list] = defaultdict(list)
    for s in board.per_class.scores:
        by_col[(s.task, s.metric)].append(s)
    confusions: dict[tuple[str, str], list] = defaultdict(list)
    for c in board.per_class.confusions:
        confusions[(c.task, c.metric)].append(c)
    best = {(c.task, c.metric): (c.backbone, c.protocol) for c in board.cells if c.is_best}
    out = []
    for col, scores in sorted(by_col.items()):
        models = list(dict.fromkeys((s.backbone, s.protocol) for s in scores))
        classes = sorted({s.class_name for s in scores})
        if len(classes) > MAX_PAGE_CLASSES:
            logger.info("%s: %d classes; the page leaves out its per-class table and confusion matrices (lifebench "
                        "report --per-class writes them as files)", col[0], len(classes))
            continue
        table = {(s.class_name, s.backbone, s.protocol): s for s in scores}
        support = {s.class_name: s.support for s in scores if (s.backbone, s.protocol) == models[0]}
        rows = []
        for name in classes:
            cells = []
            for m in models:
                s = table.get((name, *m))
                cells.append(None if s is None else {
                    "v": f"{s.f1:.6g}", "f1": _num(s.f1), "low": _num(s.f1_low), "high": _num(s.f1_high),
                    "precision": _num(s.precision), "recall": _num(s.recall),
                    "better": s.diff_low is not None and s.diff_low > 0,
                    "worse": s.diff_high is not None and s.diff_high < 0,
                })  # fmt: skip
            rows.append({"name": name, "support": support.get(name, 0), "cells": cells})
        matrices = []
        for c in confusions[col]:
            counts = np.asarray(c.counts)
            matrices.append({
                "model": board.label(c.backbone, c.protocol), "key": f"{c.backbone}/{c.protocol}",
                "best": (c.backbone, c.protocol) == best.get(col), "labels": list(c.labels),
                "rows": counts.tolist(), "max": int(counts.max()) if counts.size else 0,
            })  # fmt: skip
        if matrices and not any(m["best"] for m in matrices):
            matrices[0]["best"] = True
        out.append({"task": col[0], "metric": col[1], "models": [board.label(*m) for m in models], "rows": rows,
                    "matrices": matrices})
    return out


def _gallery(store: Store, board: Leaderboard, out_dir: Path, max_wrong: int) -> list[dict[str, Any]]:
    """Per task and model, its wrong test predictions (most confident first) with thumbnails where found."""
    paths = _ImagePaths()
    tasks = sorted({(c.task, c.metric) for c in board.cells})
    wanted = {(c.task, c.backbone, c.protocol) for c in board.cells}
    out = []
    for task, _metric in tasks:
        if board.per_class is not None and not any(s.task == task for s in board.per_class.scores):
            continue  # not scored from one predicted class per example (re-ID, parts, ...)
        of_task = store.experiments(task=task)
        newest = {}
        for s in sorted({e.seed for e in of_task}):
            for e in _newest_per_model(task, (e for e in of_task if e.seed == s)):
                newest.setdefault((e.backbone, e.protocol), e)  # the lowest seed's experiment
        models = []
        rank = {m: i for i, m in enumerate(board.models())}  # the leaderboard's order: best first
        for (backbone, protocol), e in sorted(newest.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])):
            if (task, backbone, protocol) not in wanted:
                continue
            p = store.predictions(e.id, topk=False)
            wrong = np.flatnonzero(p.y_true != p.y_pred)
            score = np.where(np.isfinite(p.score), p.score, -np.inf)
            order = wrong[np.argsort(-score[wrong], kind="stable")][:max_wrong]
            items = []
            for i in order.tolist():
                image = paths.path(e, str(p.ids[i]))
                items.append({
                    "id": str(p.ids[i]), "true": str(p.y_true[i]), "pred": str(p.y_pred[i]),
                    "score": _num(float(p.score[i])), "thumb": _thumbnail(image, out_dir) if image else None,
                })  # fmt: skip
            models.append({"model": board.label(backbone, protocol), "n_wrong": int(wrong.size), "n_test": len(p),
                           "wrong": items})
        if models:
            out.append({"task": task, "models": models})
    return out


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def _curves(board: Leaderboard) -> list[dict[str, Any]]:
    """Sample-efficiency curves: per base task and metric, each model's score [CI] against N for ``TASK@nN``."""
    by_base: dict[tuple[str, str], dict[str, list[tuple[int, float, float, float]]]] = defaultdict(
        lambda: defaultdict(list))
    for c in board.cells:
        if (m := _N_TRAIN.match(c.task)) and math.isfinite(c.point):
            by_base[(m["base"], c.metric)][board.label(c.backbone, c.protocol)].append(
                (int(m["n"]), c.point, c.low if math.isfinite(c.low) else c.point,
                 c.high if math.isfinite(c.high) else c.point))
    out = []
    w, h, left, right, top, bottom = 640, 320, 56, 160, 16, 40
    for (base, metric), models in sorted(by_base.items()):
        ns = sorted({n for pts in models.values() for n, *_ in pts})
        values = [v for pts in models.values() for _, *vals in pts for v in vals if math.isfinite(v)]
        lo, hi = min(values), max(values)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.05, hi + 0.05
        lx = [math.log(n) for n in ns]

        def x(n: int, lx=lx) -> float:
            span = (lx[-1] - lx[0]) or 1.0
            return left + (math.log(n) - lx[0]) / span * (w - left - right) if len(lx) > 1 else left + (w - left - right) / 2

        def y(v: float, lo=lo, hi=hi) -> float:
            return top + (hi - v) / (hi - lo) * (h - top - bottom)

        series = []
        for k, (label, pts) in enumerate(sorted(models.items())):
            pts = sorted(pts)
            colour = _PALETTE[k % len(_PALETTE)]
            series.append({
                "label": label, "colour": colour, "legend_y": top + 14 + 18 * k,
                "line": " ".join(f"{x(n):.1f},{y(p):.1f}" for n, p, _, _ in pts),
                "points": [{"x": f"{x(n):.1f}", "y": f"{y(p):.1f}", "y_low": f"{y(lo_):.1f}",
                            "y_high": f"{y(hi_):.1f}", "title": f"{label}, N={n}: {p:.3f} [{lo_:.3f}, {hi_:.3f}]"}
                           for n, p, lo_, hi_ in pts],
            })  # fmt: skip
        ticks_y = [{"y": f"{y(v):.1f}", "text": f"{v:.2f}"} for v in np.linspace(lo, hi, 5).tolist()]
        out.append({"task": base, "metric": metric, "width": w, "height": h, "left": left, "plot_right": w - right,
                    "top": top, "bottom": h - bottom, "ticks_x": [{"x": f"{x(n):.1f}", "text": str(n)} for n in ns],
                    "ticks_y": ticks_y, "series": series})
    return out


# ---------------------------------------------------------------------------------------------- page


def render_results_page(store: Store, board: Leaderboard, out_dir: Path, *, max_wrong: int = MAX_WRONG) -> str:
    """The page's HTML for ``board`` (built with ``per_class=True``); thumbnails are written under
    ``out_dir/thumbs``."""
    context = {
        "meta": board.meta,
        "board": _leaderboard(board),
        "per_class": _per_class(board),
        "gallery": _gallery(store, board, out_dir, max_wrong),
        "curves": _curves(board),
        "max_wrong": max_wrong,
    }
    return _env().get_template("results.html.j2").render(**context)


@reads_store
def write_results_page(
    store: Store | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    board: Leaderboard | None = None,
    max_wrong: int = MAX_WRONG,
    **build: Any,
) -> Path:
    """Write ``out_dir/index.html`` (and ``out_dir/thumbs/``) for the store; ``build`` goes to
    :func:`build_leaderboard` when ``board`` is None or lacks per-class scores."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create results page folder {out} ({exc.strerror}); pass a writable folder") from exc
    if board is None or board.per_class is None:
        board = build_leaderboard(store, per_class=True, **build)
    text = render_results_page(store, board, out, max_wrong=max_wrong)
    return atomic_write(out / "index.html", lambda f: f.write(text.encode("utf-8")))
