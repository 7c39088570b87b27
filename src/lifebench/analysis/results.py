"""Scores of many models on many tasks, from a lifebench store or imported from other benchmarks.

A :class:`ResultSet` holds one :class:`Score` per (task, model), model metadata and, for a lifebench store
only, each score's bootstrap resamples over the task's test examples (paired across models). Readers:

* :func:`from_store`: a lifebench results store, scored by :func:`lifebench.report.build_leaderboard`
  (per-example predictions: intervals, ties and resamples are computed here);
* :func:`load_results`: files, each one of
  - BioBench's published ``results.json`` (``meta``, ``models[]``, ``benchmark_tasks[]``,
    ``prior_work_tasks[]``, ``results[]``, ``bests[]``): point estimates with the published intervals
    and ties;
  - CLIP_benchmark per-run JSON files (``dataset``, ``model``, ``pretrained``, ``task``, ``metrics``,
    ``language``), or a folder of them: point estimates only;
  - a lifebench export written by :meth:`ResultSet.write` (``.json``, ``.csv`` or ``.parquet``).

Imported results carry no per-example predictions, so their analysis bootstraps over models only and says
so (:attr:`ResultSet.per_example` is False).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifebench.errors import ConfigError, DataError, one_line, shown
from lifebench.fsutil import atomic_write, read_text
from lifebench.store.provenance import machine_summary
from lifebench.store.sqlite import reads_store
from lifebench.tasks.folder import read_csv

__all__ = ["EXPORT_SCHEMA", "Model", "ResultSet", "Score", "from_store", "load_results", "unique_labels"]

logger = logging.getLogger(__name__)

EXPORT_SCHEMA = "lifebench-results/1"
CLIP_METRICS = ("acc1", "acc5", "mean_per_class_recall")
_CLIP_TASKS = ("zeroshot_classification", "linear_probe")


@dataclass(frozen=True)
class Model:
    """A model (checkpoint) and what is known about it; None where the source does not say."""

    name: str
    display: str = ""
    family: str | None = None
    params: float | None = None
    """Parameter count."""
    resolution: int | None = None
    release: str | None = None
    """Release date, ISO ``YYYY-MM-DD``."""

    @property
    def label(self) -> str:
        """The source's display name, which other models may share; :func:`unique_labels` tells them apart."""
        return self.display or self.name


def unique_labels(models: Iterable[Model]) -> dict[str, str]:
    """Model name -> a label no other model has.

    Sources give one display name to several checkpoints: BioBench's results.json calls ViT-B-16-SigLIP at
    224, 256, 384 and 512 px all "SigLIP ViT-B/16", and two ResNet-18 checkpoints at 288 px both "ResNet-18".
    A table, tie list or plot with two identical labels cannot be read, so a shared display name gets the
    resolution where that tells the models apart, and the checkpoint name where it does not.
    """
    models = list(models)
    groups: dict[str, list[Model]] = {}
    for m in models:
        groups.setdefault(m.label, []).append(m)
    out: dict[str, str] = {}
    for label, group in groups.items():
        if len(group) == 1:
            out[group[0].name] = label
            continue
        resolutions = Counter(m.resolution for m in group)
        for m in group:
            extra = []
            if m.resolution is not None and len(resolutions) > 1:
                extra.append(f"{m.resolution} px")
            if (m.resolution is None or resolutions[m.resolution] > 1) and m.name != label:
                extra.append(m.name)
            out[m.name] = f"{label} ({', '.join(extra)})" if extra else label
    clash = Counter(out.values())  # a made-up label can equal another model's own display name
    by_name = {m.name: m for m in models}
    return {n: f"{by_name[n].label} ({n})" if clash[v] > 1 and v != by_name[n].label else v for n, v in out.items()}


@dataclass(frozen=True)
class Score:
    """One model's score on one task: the point estimate and, where known, its interval and tie status."""

    task: str
    model: str
    point: float
    low: float | None = None
    high: float | None = None
    metric: str = ""
    is_best: bool = False
    tied: bool | None = None
    """Not significantly worse than the task's best model (never True for the best); None: not tested."""
    pvalue: float | None = None
    source: str = ""


@dataclass
class ResultSet:
    """Scores of models on tasks plus where they came from."""

    scores: list[Score]
    models: dict[str, Model]
    tasks: dict[str, str]
    """Task name -> display name, in display order."""
    suite: list[str]
    """The tasks whose mean is the suite score by default (e.g. BioBench's benchmark tasks)."""
    source: str
    per_example: bool = False
    """True when every score has bootstrap resamples over its task's test examples (a lifebench store)."""
    resamples: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)
    """(task, model) -> the score on each bootstrap resample, shape (B,), paired across models of a task."""
    provenance: list[dict[str, Any]] = field(default_factory=list, repr=False)
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """What the import left out, one line each."""

    def point(self, task: str, model: str) -> float | None:
        return self._index().get((task, model))

    def _index(self) -> dict[tuple[str, str], float]:
        return {(s.task, s.model): s.point for s in self.scores}

    @property
    def kind(self) -> str:
        return "per-example predictions" if self.per_example else "point estimates (no per-example predictions)"

    def labels(self) -> dict[str, str]:
        """Model name -> its unique label (:func:`unique_labels`) for every model with a score or metadata."""
        known = dict(self.models)
        for s in self.scores:
            known.setdefault(s.model, Model(s.model))
        return unique_labels(known.values())

    @property
    def resampled(self) -> str:
        """What the source holds and what the analysis's intervals resample, in one sentence for headers.

        Imported files hold one score per model and task, so the analysis can resample only the models: its
        intervals leave out test-set noise and cannot pair models image by image. The per-task intervals and
        ties shown are the source's own, drawn by its own method (BioBench's macro-F1 tasks redraw the test
        images for each model, so their "ties" are unpaired: reporting.py bootstrap_scores_macro_f1)."""
        if self.per_example:
            return ("lifebench store, per-example predictions: intervals resample each task's test images (the "
                    "same resamples for every model, so models are paired) and, for statistics over models, the "
                    "models")
        parts = []
        for fmt in dict.fromkeys(str(p["format"]) for p in self.provenance if p.get("format")):
            if fmt == "BioBench results.json":
                meta = next(p for p in self.provenance if p.get("format") == fmt)
                parts.append(f"BioBench results (per-task intervals and ties as published: "
                             f"{meta.get('n_bootstraps', '?')} bootstrap resamples of each task's test images, "
                             f"Holm at alpha {meta.get('alpha', '?')}; its macro-F1 tasks redraw the images for "
                             "each model, so their ties are unpaired)")
            elif fmt == "CLIP_benchmark":
                parts.append("CLIP_benchmark results (point scores only: no intervals or ties)")
            elif fmt == EXPORT_SCHEMA:
                parts.append("a lifebench export (per-task intervals and ties from the analysis that wrote it)")
            else:
                parts.append(fmt)
        return ("imported " + ("; ".join(parts) or "results") + ". Per-model scores only, no per-example "
                "predictions: intervals here resample the models, not the test images, so they leave out "
                "test-set noise and models are not paired")

    # ------------------------------------------------------------------------------------------ export

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per score with the model's metadata, the columns of every export."""
        suite = set(self.suite)
        labels = self.labels()
        out = []
        for s in self.scores:
            m = self.models.get(s.model, Model(s.model))
            out.append({
                "task": s.task, "task_display": self.tasks.get(s.task, s.task), "in_suite": s.task in suite,
                "model": s.model, "label": labels.get(s.model, s.model), "display": m.display or s.model,
                "family": m.family, "params": m.params,
                "resolution": m.resolution, "release": m.release, "metric": s.metric, "point": s.point,
                "low": s.low, "high": s.high, "is_best": s.is_best, "tied": s.tied, "pvalue": s.pvalue,
                "source": s.source, "kind": self.kind,
            })  # fmt: skip
        return out

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``results.parquet``, ``results.csv`` and ``results.json`` into ``out_dir`` (atomically)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        types = _export_types()
        columns = list(types)
        table = pa.table({c: pa.array([r[c] for r in rows], type=types[c]) for c in columns})
        table = table.replace_schema_metadata({"lifebench": json.dumps(
            {"schema": EXPORT_SCHEMA, "source": self.source, "suite": self.suite}, default=str)})

        def write_csv(f) -> None:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: "" if r[k] is None else r[k] for k in columns})
            f.write(text.getvalue().encode("utf-8"))

        doc = {
            "schema": EXPORT_SCHEMA, "source": self.source, "kind": self.kind, "meta": self.meta,
            "suite": self.suite, "tasks": [{"name": k, "display": v} for k, v in self.tasks.items()],
            "models": [dataclasses.asdict(m) for m in self.models.values()],
            "results": [{k: _finite(r[k]) for k in ("task", "model", "label", "metric", "point", "low", "high",
                                                     "is_best", "tied", "pvalue", "source")} for r in rows],
            "notes": self.notes,
        }  # fmt: skip
        text = json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"
        return {
            "parquet": atomic_write(out / "results.parquet", lambda f: pq.write_table(table, f)),
            "csv": atomic_write(out / "results.csv", write_csv),
            "json": atomic_write(out / "results.json", lambda f: f.write(text.encode("utf-8"))),
        }


def _export_types() -> dict[str, Any]:
    import pyarrow as pa

    s, f, b = pa.string(), pa.float64(), pa.bool_()
    return {"task": s, "task_display": s, "in_suite": b, "model": s, "label": s, "display": s, "family": s, "params": f,
            "resolution": pa.int64(), "release": s, "metric": s, "point": f, "low": f, "high": f, "is_best": b,
            "tied": b, "pvalue": f, "source": s, "kind": s}


def _finite(v: object) -> object:
    return None if isinstance(v, float) and not math.isfinite(v) else v


# ---------------------------------------------------------------------------------------------- the store


@reads_store
def from_store(
    store: Any, *, tasks: Sequence[str] | None = None, n_resamples: int = 1000, seed: int = 0,
    confidence: float = 0.95, alpha: float | None = None,
) -> ResultSet:
    """Every stored model's score on every task, with paired bootstrap intervals, ties and resamples.

    A model is ``backbone`` (or ``backbone (protocol)`` when the store holds several protocols); a task that
    was scored with several metrics becomes one task per metric, ``task[metric]``.
    """
    from lifebench.report import build_leaderboard
    from lifebench.tasks.catalog import SUITES

    board = build_leaderboard(store, tasks=tasks, n_resamples=n_resamples, seed=seed, confidence=confidence,
                              alpha=alpha)
    metrics: dict[str, set[str]] = {}
    for c in board.cells:
        metrics.setdefault(c.task, set()).add(c.metric)

    def task_key(task: str, metric: str) -> str:
        return task if len(metrics[task]) == 1 else f"{task}[{metric}]"

    scores, resamples, models = [], {}, {}
    for c in board.cells:
        name = board.label(c.backbone, c.protocol)
        key = task_key(c.task, c.metric)
        models.setdefault(name, Model(name, name))
        scores.append(Score(key, name, c.point, c.low, c.high, c.metric, c.is_best, c.tied, c.pvalue,
                            source=str(store.path)))
        resamples[(key, name)] = np.asarray(board.resamples[(c.task, c.metric, c.backbone, c.protocol)])
    task_names = sorted({s.task for s in scores})
    ecology = [t for t in task_names if t.split("[")[0] in SUITES["ecology"]]
    provenance = []
    used = {(c.task, c.backbone, c.protocol) for c in board.cells}
    for e in store.experiments():
        if (e.task, e.backbone, e.protocol) not in used:
            continue
        p = e.provenance or {}
        provenance.append({
            "task": e.task, "model": board.label(e.backbone, e.protocol), "seed": e.seed, "n_train": e.n_train,
            "created": dt.datetime.fromtimestamp(e.created_at or 0, dt.UTC).isoformat(timespec="seconds"),
            "lifebench": p.get("lifebench"), "git_commit": p.get("git_commit"), "git_dirty": p.get("git_dirty"),
            "hostname": p.get("hostname"), "device": p.get("device"), "machine": machine_summary(p),
            "python": p.get("python"),
            "packages": p.get("packages") or {}, "platform": p.get("platform"),
        })  # fmt: skip
    return ResultSet(
        scores=scores, models=dict(sorted(models.items())), tasks={t: t for t in task_names},
        suite=ecology or task_names, source=f"lifebench store {store.path}", per_example=True,
        resamples=resamples, provenance=provenance, meta=dict(board.meta),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- imports


def load_results(paths: Iterable[str | os.PathLike[str]], *, clip_metric: str = "acc1") -> ResultSet:
    """Read and merge result files (BioBench, CLIP_benchmark, lifebench exports; folders of CLIP_benchmark
    files). The same (task, model) in two files is an error."""
    if clip_metric not in CLIP_METRICS:
        raise ConfigError(f"--clip-metric {clip_metric!r} is not one of {', '.join(CLIP_METRICS)}")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise DataError(f"{p} is a folder without .json result files; pass result files or their folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"results file {p} does not exist; pass a BioBench results.json, CLIP_benchmark "
                              "JSON files (or their folder) or a lifebench export")
    if not files:
        raise ConfigError("give at least one results file with --results")
    parts = [_read_one(f, clip_metric) for f in files]
    return parts[0] if len(parts) == 1 else _merge(parts)


def _read_one(path: Path, clip_metric: str) -> ResultSet:
    if path.suffix == ".parquet":
        return _read_export_table(path)
    if path.suffix == ".csv":
        return _read_export_table(path)
    fix = "pass a BioBench results.json, a CLIP_benchmark result or a lifebench export (.json, .csv, .parquet)"
    text = read_text(path, what="results file", fix=fix)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer of over 4300 digits, deep nesting
        raise DataError(f"{path} is not valid JSON ({one_line(exc)[:200]}); {fix}") from None
    if isinstance(doc, dict) and doc.get("schema") == EXPORT_SCHEMA:
        return _read_export_json(path, doc)
    if isinstance(doc, dict) and {"models", "results", "benchmark_tasks"} <= doc.keys():
        return _read_biobench(path, doc)
    if isinstance(doc, dict) and {"dataset", "model", "pretrained", "metrics"} <= doc.keys():
        return _read_clip([(path, doc)], clip_metric)
    keys = ", ".join(sorted(doc)[:8]) if isinstance(doc, dict) else type(doc).__name__
    raise DataError(
        f"{path} is in no known results schema (top level: {keys}); expected BioBench's results.json (models, "
        "benchmark_tasks, results), a CLIP_benchmark result (dataset, model, pretrained, metrics) or a lifebench "
        "export"
    )


def _need(cond: bool, path: Path, where: str, what: str) -> None:
    if not cond:
        raise DataError(f"{path}: {where} {what}; fix the file or re-export it")


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float range
        return None
    return f if math.isfinite(f) else None


_KINDS = {str: "a string", float: "a finite number", int: "a whole number", bool: "true or false", list: "a list"}


def _field(path: Path, where: str, obj: dict[str, Any], key: str, kind: type, required: bool = False) -> Any:
    """``obj[key]`` checked to be of ``kind`` (``float`` and ``int``: a finite JSON number; ``int`` whole); None when
    absent or null unless ``required``. A value of another type is an error naming the file, entry, field and value,
    never silently dropped: a typo in a results file should not quietly remove a model's metadata."""
    v = obj.get(key)
    if v is None:
        _need(not required, path, where, f"has no {key}")
        return None
    if kind in (float, int):
        n = _number(v)
        ok = n is not None and (kind is float or n.is_integer())
        _need(ok, path, where, f"has {key} {shown(v)}, expected {_KINDS[kind]}")
        return int(n) if kind is int else n  # type: ignore[arg-type]
    _need(isinstance(v, kind), path, where, f"has {key} {shown(v)}, expected {_KINDS[kind]}")
    return v


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _release_date(path: Path, where: str, ms: float | None) -> str | None:
    """BioBench's ``release_ms`` (milliseconds since 1970) as an ISO date."""
    if ms is None:
        return None
    try:
        return (_EPOCH + dt.timedelta(milliseconds=ms)).date().isoformat()
    except (OverflowError, ValueError):
        raise DataError(f"{path}: {where} has release_ms {shown(ms)}, which is no date (milliseconds since "
                        "1970 within years 1-9999); fix the file or re-export it") from None


def _read_biobench(path: Path, doc: dict[str, Any]) -> ResultSet:
    src = path.name
    _need(isinstance(doc["models"], list), path, "models", "must be a list")
    models: dict[str, Model] = {}
    for i, m in enumerate(doc["models"]):
        where = f"models[{i}]"
        _need(isinstance(m, dict) and isinstance(m.get("ckpt"), str) and m["ckpt"], path, where,
              "needs a ckpt string")
        models[m["ckpt"]] = Model(
            m["ckpt"], str(m.get("display") or m["ckpt"]), family=None if m.get("family") is None else
            str(m["family"]), params=_field(path, where, m, "params", float),
            resolution=_field(path, where, m, "resolution", int),
            release=_release_date(path, where, _field(path, where, m, "release_ms", float)),
        )  # fmt: skip
    tasks: dict[str, str] = {}
    suite = []
    for key in ("benchmark_tasks", "prior_work_tasks"):
        entries = doc.get(key) or []
        _need(isinstance(entries, list), path, key, "must be a list")
        for i, t in enumerate(entries):
            _need(isinstance(t, dict) and isinstance(t.get("name"), str), path, f"{key}[{i}]", "needs a name")
            tasks[t["name"]] = str(t.get("display") or t["name"])
            if key == "benchmark_tasks":
                suite.append(t["name"])
    bests: dict[str, tuple[str, set[str]]] = {}
    _need(isinstance(doc.get("bests") or [], list), path, "bests", "must be a list")
    for i, b in enumerate(doc.get("bests") or []):
        _need(isinstance(b, dict) and isinstance(b.get("task"), str) and isinstance(b.get("best"), str), path,
              f"bests[{i}]", "needs task and best")
        ties = _field(path, f"bests[{i}]", b, "ties", list) or []
        _need(all(isinstance(t, str) for t in ties), path, f"bests[{i}]", "has ties that are not all model names")
        bests[b["task"]] = (b["best"], set(ties))
    _need(isinstance(doc["results"], list), path, "results", "must be a list")
    scores, seen, notes = [], set(), []
    for i, r in enumerate(doc["results"]):
        where = f"results[{i}]"
        _need(isinstance(r, dict), path, where, "must be an object")
        task, model, mean = r.get("task"), r.get("model"), _number(r.get("mean"))
        _need(isinstance(task, str) and task in tasks, path, where, f"names task {shown(task)}, which is in "
              "neither benchmark_tasks nor prior_work_tasks")
        _need(isinstance(model, str) and model in models, path, where, f"names model {shown(model)}, which is not "
              "in models[]")
        _need(mean is not None, path, where, f"has no numeric mean (got {shown(r.get('mean'))})")
        _need((task, model) not in seen, path, where, f"repeats task {task!r} for model {model!r}")
        seen.add((task, model))
        best, ties = bests.get(task, (None, None))
        tied = None if ties is None else (model in ties and model != best)
        scores.append(Score(task, model, mean, _field(path, where, r, "ci_low", float),
                            _field(path, where, r, "ci_high", float), "", is_best=model == best, tied=tied,
                            source=src))
    for t in tasks:
        if not any(s.task == t for s in scores):
            notes.append(f"task {t}: no results in {src}")
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    prov = [{"file": str(path), "format": "BioBench results.json", **{k: v for k, v in meta.items()
                                                                    if not isinstance(v, dict | list)}}]
    return ResultSet(scores=scores, models=models, tasks=tasks, suite=suite, source=f"BioBench results {path}",
                     provenance=prov, meta={"biobench": meta}, notes=notes)


def _read_clip(docs: list[tuple[Path, dict[str, Any]]], metric: str) -> ResultSet:
    scores, models, tasks, notes, prov = [], {}, {}, [], []
    for path, doc in docs:
        task_kind = doc.get("task", "zeroshot_classification")
        metrics = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
        if task_kind not in _CLIP_TASKS:
            notes.append(f"{path.name}: task {task_kind!r} is not classification; left out")
            continue
        value = _number(metrics.get(metric))
        if value is None:
            notes.append(f"{path.name}: no {metric} in metrics ({', '.join(sorted(metrics)) or 'none'}); left out")
            continue
        dataset = str(doc["dataset"]).removeprefix("wds/")
        lang = doc.get("language")
        task = dataset if not lang or lang == "en" else f"{dataset} ({lang})"
        name = f"{doc['model']}/{doc['pretrained']}" + (" (linear probe)" if task_kind == "linear_probe" else "")
        models.setdefault(name, Model(name, name, family=str(doc["model"])))
        tasks.setdefault(task, task)
        scores.append(Score(task, name, value, metric=metric, source=path.name))
        prov.append({"file": str(path), "format": "CLIP_benchmark", "task": task_kind, "dataset": doc["dataset"],
                     "model": doc["model"], "pretrained": doc["pretrained"], "language": lang})
    rs = ResultSet(scores=scores, models=models, tasks=dict(sorted(tasks.items())), suite=sorted(tasks),
                   source="CLIP_benchmark " + ", ".join(sorted({str(p.parent) for p, _ in docs})),
                   provenance=prov, notes=notes)
    _check_unique(rs)
    return rs


def _read_export_json(path: Path, doc: dict[str, Any]) -> ResultSet:
    _need(isinstance(doc.get("results"), list), path, "results", "must be a list")
    for key in ("models", "tasks", "suite", "notes"):
        _need(isinstance(doc.get(key) or [], list), path, key, "must be a list")
    _need(isinstance(doc.get("meta") or {}, dict), path, "meta", "must be an object")
    models = {}
    for i, m in enumerate(doc.get("models") or []):
        where = f"models[{i}]"
        _need(isinstance(m, dict), path, where, "must be an object")
        name = _field(path, where, m, "name", str, required=True)
        models[name] = Model(name, _field(path, where, m, "display", str) or "", _field(path, where, m, "family", str),
                             _field(path, where, m, "params", float), _field(path, where, m, "resolution", int),
                             _field(path, where, m, "release", str))
    scores = []
    for i, r in enumerate(doc["results"]):
        where = f"results[{i}]"
        _need(isinstance(r, dict), path, where, "must be an object")
        scores.append(Score(
            _field(path, where, r, "task", str, required=True), _field(path, where, r, "model", str, required=True),
            _field(path, where, r, "point", float, required=True), _field(path, where, r, "low", float),
            _field(path, where, r, "high", float), _field(path, where, r, "metric", str) or "",
            bool(_field(path, where, r, "is_best", bool)), _field(path, where, r, "tied", bool),
            _field(path, where, r, "pvalue", float), _field(path, where, r, "source", str) or ""))
    tasks = {}
    for i, t in enumerate(doc.get("tasks") or []):
        _need(isinstance(t, dict), path, f"tasks[{i}]", "must be an object")
        name = _field(path, f"tasks[{i}]", t, "name", str, required=True)
        tasks[name] = _field(path, f"tasks[{i}]", t, "display", str) or name
    for s in scores:
        tasks.setdefault(s.task, s.task)
    suite = doc.get("suite") or list(tasks)
    notes = doc.get("notes") or []
    _need(all(isinstance(x, str) for x in suite), path, "suite", "must list task names")
    _need(all(isinstance(x, str) for x in notes), path, "notes", "must be a list of strings")
    rs = ResultSet(scores=scores, models=models, tasks=tasks, suite=list(suite),
                   source=f"lifebench export {path}", provenance=[{"file": str(path), "format": EXPORT_SCHEMA}],
                   meta=doc.get("meta") or {}, notes=list(notes))
    _check_unique(rs)
    return rs


def _read_export_table(path: Path) -> ResultSet:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise DataError(f"{path} is not a readable Parquet file ({exc}); re-export it") from exc
    else:
        rows = read_csv(path, fix="save the export as UTF-8, or export it again with 'lifebench analyze --out DIR'")
    needed = {"task", "model", "point"}
    if not rows or not needed <= rows[0].keys():
        have = (", ".join(sorted(repr(k) for k in rows[0] if isinstance(k, str))) or "none") if rows else "no rows"
        raise DataError(f"{path} is not a lifebench export (needs columns task, model, point; has {have}); "
                        "export with 'lifebench analyze --out DIR'")

    scores, models, tasks, suite = [], {}, {}, []
    for i, raw in enumerate(rows):
        where = f"row {i + 1}"
        r = _table_row(path, where, raw)
        task, model = _field(path, where, r, "task", str, True), _field(path, where, r, "model", str, True)
        models.setdefault(model, Model(model, _field(path, where, r, "display", str) or model,
                                       _field(path, where, r, "family", str), _field(path, where, r, "params", float),
                                       _field(path, where, r, "resolution", int),
                                       _field(path, where, r, "release", str)))
        tasks.setdefault(task, _field(path, where, r, "task_display", str) or task)
        if _field(path, where, r, "in_suite", bool) and task not in suite:
            suite.append(task)
        scores.append(Score(task, model, _field(path, where, r, "point", float, True),
                            _field(path, where, r, "low", float), _field(path, where, r, "high", float),
                            _field(path, where, r, "metric", str) or "", bool(_field(path, where, r, "is_best", bool)),
                            _field(path, where, r, "tied", bool), _field(path, where, r, "pvalue", float),
                            _field(path, where, r, "source", str) or path.name))
    rs = ResultSet(scores=scores, models=models, tasks=tasks, suite=suite or list(tasks),
                   source=f"lifebench export {path}", provenance=[{"file": str(path), "format": EXPORT_SCHEMA}])
    _check_unique(rs)
    return rs


_TABLE_NUMBERS = frozenset({"point", "low", "high", "pvalue", "params", "resolution"})
_TABLE_FLAGS = frozenset({"in_suite", "is_best", "tied"})


def _table_row(path: Path, where: str, row: dict[Any, Any]) -> dict[str, Any]:
    """A CSV or Parquet export row with the JSON export's types: empty cells dropped, numbers and true/false parsed
    (a value that does not parse is an error naming it), an optional number that is NaN or infinite dropped (the
    JSON export writes those as null)."""
    out: dict[str, Any] = {}
    for key, v in row.items():
        if not isinstance(key, str) or v is None or (isinstance(v, str) and not v.strip()):
            continue  # an extra CSV field (key None), an empty cell
        if key in _TABLE_NUMBERS and isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise DataError(f"{path}: {where} has {key} {shown(v)}, expected a number; fix the file or re-export "
                                "it") from None
        elif key in _TABLE_FLAGS and isinstance(v, str):
            _need(v.strip().lower() in ("true", "false"), path, where, f"has {key} {shown(v)}, expected true or false")
            v = v.strip().lower() == "true"
        if key in _TABLE_NUMBERS and key != "point" and isinstance(v, float) and not math.isfinite(v):
            continue
        out[key] = v
    return out


def _check_unique(rs: ResultSet) -> None:
    seen: dict[tuple[str, str], str] = {}
    for s in rs.scores:
        if (s.task, s.model) in seen:
            raise DataError(f"model {s.model!r} has two scores on task {s.task!r} ({seen[(s.task, s.model)]} and "
                            f"{s.source}); keep one of the files")
        seen[(s.task, s.model)] = s.source


def _merge(parts: list[ResultSet]) -> ResultSet:
    clip = [p for p in parts if p.source.startswith("CLIP_benchmark")]
    if clip and len(clip) > 1:  # CLIP_benchmark writes one file per run: one result set for all of them
        merged_clip = ResultSet(
            scores=[s for p in clip for s in p.scores], models={k: v for p in clip for k, v in p.models.items()},
            tasks={k: v for p in clip for k, v in p.tasks.items()}, suite=[],
            source="CLIP_benchmark " + ", ".join(sorted({p.source.removeprefix("CLIP_benchmark ") for p in clip})),
            provenance=[x for p in clip for x in p.provenance], notes=[n for p in clip for n in p.notes],
        )  # fmt: skip
        merged_clip.suite = sorted(merged_clip.tasks)
        parts = [p for p in parts if p not in clip] + [merged_clip]
    models: dict[str, Model] = {}
    for p in parts:
        for k, v in p.models.items():
            models.setdefault(k, v)
    tasks: dict[str, str] = {}
    for p in parts:
        for k, v in p.tasks.items():
            tasks.setdefault(k, v)
    suite = list(dict.fromkeys(t for p in parts for t in p.suite))
    rs = ResultSet(scores=[s for p in parts for s in p.scores], models=models, tasks=tasks, suite=suite,
                   source="; ".join(p.source for p in parts), provenance=[x for p in parts for x in p.provenance],
                   meta={"merged": [p.meta for p in parts]}, notes=[n for p in parts for n in p.notes])
    _check_unique(rs)
    return rs
