"""Export a results store to Parquet, CSV or JSON, and read the exports back.

Two kinds of export, in one documented schema (docs/python.md, "Export schema"):

* **predictions** (:data:`PREDICTIONS_SCHEMA`): one row per stored prediction, i.e. per test image (per part of
  a multi-part task), with the experiment it belongs to (task, model, backbone, protocol, metric, n_train, seed,
  experiment id, config hash) and the prediction (example_id, y_true, y_pred, score, topk, part, group and any
  ``extra.<name>`` columns a metric needs). What is stored once per experiment (the class list, the
  configuration, provenance, timings, creation time) goes beside the rows: in the Parquet file's metadata, in the
  JSON document, or in ``<stem>.experiments.json`` next to a CSV file. That is everything the store holds about
  an experiment, so :func:`open_results` can rebuild the store and ``lifebench report`` scores an export exactly
  as it scores the store;
* **leaderboard** (:data:`lifebench.analysis.results.EXPORT_SCHEMA`): one row per leaderboard cell (task, model,
  metric, point, low, high, is_best, tied, pvalue, ...), the rows ``lifebench analyze`` writes and reads with
  ``--results``.

Files are written atomically (a temporary file beside the target, then ``os.replace``), so a reader never sees
half an export.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from lifebench.errors import ConfigError, DataError, one_line
from lifebench.fsutil import atomic_write, read_text
from lifebench.store.sqlite import reads_store

__all__ = ["FORMATS", "PREDICTIONS_SCHEMA", "PREDICTION_COLUMNS", "export", "open_results", "prediction_rows",
           "read_predictions", "rebuild_store"]

logger = logging.getLogger(__name__)

PREDICTIONS_SCHEMA = "lifebench-predictions/1"
FORMATS = (".parquet", ".csv", ".json")
PREDICTION_COLUMNS = ("task", "model", "backbone", "protocol", "metric", "n_train", "seed", "experiment_id",
                      "config_hash", "example_id", "y_true", "y_pred", "score", "topk", "part", "group")
"""The columns of a predictions export, in order; ``extra.<name>`` columns follow where a metric needs them."""
_OPTIONAL = ("topk", "part", "group")
_EXPERIMENT_KEYS = ("id", "config_hash", "task", "backbone", "protocol", "metric", "n_train", "seed", "config",
                    "classes", "fit_info", "provenance", "timings", "created_at")


def _check_suffix(path: Path) -> None:
    if path.suffix not in FORMATS:
        raise ConfigError(f"--out {path} must end in .parquet, .csv or .json (the export's format)")


# ---------------------------------------------------------------------------------------------- writing


def _experiments(store: Any, tasks: Sequence[str] | None) -> list:
    every = store.experiments()
    if tasks:
        known = sorted({e.task for e in every})
        for t in tasks:
            if t not in known:
                from lifebench.errors import UnknownNameError

                raise UnknownNameError("task", t, known, hint=f"tasks with results in {store.path}")
        every = [e for e in every if e.task in set(tasks)]
    if not every:
        raise ConfigError(f"results store {store.path} holds no experiments; run `lifebench run` first")
    return every


def _collect(store: Any, tasks: Sequence[str] | None) -> tuple[dict[str, list], list[dict[str, Any]]]:
    """The predictions of every experiment as columns (Python lists), and one metadata dict per experiment."""
    exps = _experiments(store, tasks)
    several = len({e.protocol for e in exps}) > 1  # the leaderboard's row label (Leaderboard.label)
    cols: dict[str, list] = {c: [] for c in PREDICTION_COLUMNS}
    extra_names = sorted({k for e in exps for k in store.predictions(e.id, topk=False).extra})
    cols |= {f"extra.{k}": [] for k in extra_names}
    meta = []
    for e in exps:
        p = store.predictions(e.id)
        n = len(p)
        model = f"{e.backbone} ({e.protocol})" if several else e.backbone
        for key, value in (("task", e.task), ("model", model), ("backbone", e.backbone), ("protocol", e.protocol),
                           ("metric", e.metric), ("n_train", e.n_train), ("seed", e.seed),
                           ("experiment_id", e.id), ("config_hash", e.config_hash)):
            cols[key] += [value] * n
        cols["example_id"] += p.ids.astype(str).tolist()
        cols["y_true"] += p.y_true.astype(str).tolist()
        cols["y_pred"] += p.y_pred.astype(str).tolist()
        cols["score"] += [None if math.isnan(s) else float(s) for s in p.score]
        cols["topk"] += [None] * n if p.topk is None else p.topk.astype(str).tolist()
        for name in ("part", "group"):
            values = getattr(p, name)
            cols[name] += [None] * n if values is None else values.astype(str).tolist()
        for k in extra_names:
            values = p.extra.get(k)
            cols[f"extra.{k}"] += [None] * n if values is None else \
                [None if math.isnan(v) else float(v) for v in values]
        info = {k: getattr(e, k) for k in _EXPERIMENT_KEYS}
        info["classes"] = list(e.classes)
        info["columns"] = [c for c in _OPTIONAL if getattr(p, c) is not None] + [f"extra.{k}" for k in p.extra]
        info["n"] = n
        meta.append(info)
    return cols, meta


@reads_store
def prediction_rows(store: Any, tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One dict per stored prediction, keyed by the export's columns (``topk`` a list; None where not stored)."""
    cols, _ = _collect(store, tasks)
    names = list(cols)
    return [dict(zip(names, values, strict=True)) for values in zip(*cols.values(), strict=True)]


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _dumps(obj: object, **kw: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_json_default, **kw)


def _write_predictions(store: Any, out: Path, tasks: Sequence[str] | None) -> int:
    cols, meta = _collect(store, tasks)
    header = {"schema": PREDICTIONS_SCHEMA, "store": str(store.path), "experiments": meta}
    n = len(cols["example_id"])
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        s, i, f = pa.string(), pa.int64(), pa.float64()
        types = {"n_train": i, "seed": i, "experiment_id": i, "score": f, "topk": pa.list_(s)}
        table = pa.table({c: pa.array(v, type=types.get(c, f if c.startswith("extra.") else s))
                          for c, v in cols.items()})
        table = table.replace_schema_metadata({"lifebench": _dumps(header)})
        atomic_write(out, lambda fh: pq.write_table(table, fh))
    elif out.suffix == ".json":
        names = list(cols)
        doc = {**header, "columns": names,
               "predictions": [dict(zip(names, v, strict=True)) for v in zip(*cols.values(), strict=True)]}
        text = _dumps(doc, indent=1) + "\n"
        atomic_write(out, lambda fh: fh.write(text.encode("utf-8")))
    else:  # CSV: the ranked labels as a JSON list per cell; the per-experiment metadata in a sidecar file
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(cols)
        for row in zip(*cols.values(), strict=True):
            writer.writerow(["" if v is None else _dumps(v) if isinstance(v, list) else v for v in row])
        def write(fh: IO[bytes]) -> None:  # the CSV synced before the sidecar is replaced: a failed write keeps both
            fh.write(buf.getvalue().encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
            atomic_write(_sidecar(out), lambda g: g.write((_dumps(header, indent=1) + "\n").encode("utf-8")))

        atomic_write(out, write)
    return n


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".experiments.json")


def _write_leaderboard(store: Any, out: Path, tasks: Sequence[str] | None, **board: Any) -> int:
    """The leaderboard cells as :meth:`ResultSet.write` writes them (the schema ``analyze --results`` reads):
    written into a temporary folder beside ``out``, then the one file asked for is moved onto ``out``."""
    from lifebench.analysis.results import from_store

    results = from_store(store, tasks=tasks, **board)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        written = results.write(tmp)
        os.replace(written[out.suffix.lstrip(".")], out)
    return len(results.scores)


def export(store: Any, out: str | os.PathLike[str], *, what: str = "predictions",
           tasks: Sequence[str] | None = None, **board: Any) -> int:
    """Write ``what`` ("predictions" or "leaderboard") of ``store`` (a Store or its path) to ``out``, whose
    suffix (.parquet, .csv, .json) picks the format; returns the number of rows. ``board`` passes bootstrap
    settings (n_resamples, seed, confidence) to the leaderboard."""
    out = Path(out)
    _check_suffix(out)
    if what not in ("predictions", "leaderboard"):
        raise ConfigError(f"--what {what!r} is not predictions or leaderboard")
    out.parent.mkdir(parents=True, exist_ok=True)
    if what == "leaderboard":
        return reads_store(_write_leaderboard)(store, out, tasks, **board)
    return reads_store(_write_predictions)(store, out, tasks)


# ---------------------------------------------------------------------------------------------- reading


def _bad(path: Path, why: str) -> DataError:
    return DataError(f"{path}: {why}; export it again with 'lifebench export --store STORE --out {path.name}'")


def _json(path: Path, text: str | bytes, what: str = "") -> Any:
    """``text`` (the export ``path`` itself, or ``what`` of it) parsed as JSON; a damaged one is one line."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8 bytes, deep nesting
        raise _bad(path, f"{what + ' is ' if what else ''}not valid JSON ({one_line(exc)[:200]})") from None


def _read(path: Path) -> tuple[dict[str, Any], dict[str, list]]:
    """``(header, columns)`` of a predictions export."""
    if not path.is_file():
        raise ConfigError(f"no file {path}; pass a results store or a file written by 'lifebench export'")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise _bad(path, f"not a readable Parquet file ({exc})") from exc
        raw = (table.schema.metadata or {}).get(b"lifebench")
        header = _json(path, raw, "its lifebench metadata") if raw else {}
        cols = {c: table.column(c).to_pylist() for c in table.column_names} if header else {}
    elif path.suffix == ".json":
        header = _json(path, read_text(path, what="export", fix="export it again with 'lifebench export'"))
        rows = header.pop("predictions", None) if isinstance(header, dict) else None
        names = header.get("columns", []) if isinstance(header, dict) else []
        cols = {c: [r.get(c) for r in rows] for c in names} if isinstance(rows, list) else {}
    elif path.suffix == ".csv":
        from lifebench.tasks.folder import read_csv

        side = _sidecar(path)
        if not side.is_file():
            raise _bad(path, f"the per-experiment file {side.name} written beside it is missing")
        header = _json(path, read_text(side, what="export sidecar", fix="export it again with 'lifebench export'"),
                       side.name)
        rows = read_csv(path, ["example_id", "experiment_id"], fix="export it again with 'lifebench export'")
        cols = {c: [r[c] for r in rows] for c in (rows[0] if rows else PREDICTION_COLUMNS)}
        cols["topk"] = [json.loads(v) if v else None for v in cols.get("topk", [])]
    else:
        raise ConfigError(f"{path} is neither a results store nor an export (.parquet, .csv, .json)")
    if not isinstance(header, dict) or header.get("schema") != PREDICTIONS_SCHEMA:
        raise _bad(path, f"not a predictions export (schema {PREDICTIONS_SCHEMA}; a leaderboard export is read "
                         "by 'lifebench analyze --results')")
    if missing := [c for c in ("experiment_id", "example_id", "y_true", "y_pred") if c not in cols]:
        raise _bad(path, f"no column {', '.join(missing)}")
    return header, cols


def read_predictions(path: str | os.PathLike[str]) -> list[tuple[Any, Any]]:
    """``(Experiment, Predictions)`` of every experiment in a predictions export, as the store held them."""
    from lifebench.store import Experiment, Predictions

    path = Path(path)
    header, cols = _read(path)
    exp_ids = np.asarray([int(v) for v in cols["experiment_id"]])
    out = []
    for info in header["experiments"]:
        rows = np.flatnonzero(exp_ids == int(info["id"]))
        if len(rows) != info.get("n", len(rows)):
            raise _bad(path, f"experiment {info['id']} has {len(rows)} rows, not {info['n']}")

        def strings(name: str, rows=rows) -> np.ndarray:
            return np.array([str(cols[name][r]) for r in rows], dtype=str) if len(rows) else np.array([], dtype=str)

        def floats(name: str, rows=rows) -> np.ndarray:
            return np.array([math.nan if cols[name][r] in (None, "") else float(cols[name][r]) for r in rows],
                            dtype=np.float64)

        kept = set(info.get("columns", []))
        topk = None
        if "topk" in kept:
            topk = np.array([cols["topk"][r] for r in rows], dtype=str).reshape(len(rows), -1)
        preds = Predictions(
            ids=strings("example_id"), y_true=strings("y_true"), y_pred=strings("y_pred"),
            score=floats("score") if "score" in cols else None, topk=topk,
            part=strings("part") if "part" in kept else None, group=strings("group") if "group" in kept else None,
            extra={c.removeprefix("extra."): floats(c) for c in kept if c.startswith("extra.")},
        )  # fmt: skip
        exp = Experiment(**{k: info[k] for k in _EXPERIMENT_KEYS if k != "id"})
        out.append((exp, preds))
    return out


def rebuild_store(path: str | os.PathLike[str], into: str | os.PathLike[str]) -> Path:
    """Write the experiments of the predictions export ``path`` into a new store file ``into``."""
    from lifebench.store import Store

    with Store(into) as store:
        for exp, preds in read_predictions(path):
            store.write(exp, preds)
    return Path(into)


def is_export(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an export file (by its suffix) rather than a store."""
    return Path(path).suffix in FORMATS


@contextlib.contextmanager
def open_results(path: str | os.PathLike[str]) -> Iterator[Any]:
    """A :class:`~lifebench.store.Store` for ``path``: the store itself, or, for a predictions export, a store
    rebuilt from it in a temporary folder (removed on exit), so every reader of stores reads exports too."""
    from lifebench.store import Store

    if not is_export(path):
        with Store(path, create=False) as store:
            yield store
        return
    tmp = tempfile.mkdtemp(prefix="lifebench-export-")
    try:
        with Store(rebuild_store(path, Path(tmp) / "results.sqlite"), create=False) as store:
            yield store
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
