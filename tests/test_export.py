"""``lifebench export``: predictions and leaderboards to Parquet/CSV/JSON, and read back by report and analyze."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifebench.analysis import analyze, from_store, load_results
from lifebench.cli import main
from lifebench.errors import ConfigError, DataError
from lifebench.export import PREDICTION_COLUMNS, export, open_results, prediction_rows, read_predictions
from lifebench.report import build_leaderboard
from lifebench.store import Experiment, Predictions, Store

B = 1000
CLASSES = ("ant", "bee", "cod")


def _store(path: Path) -> Path:
    """Two tasks, three models, two protocols: top-k lists, unknown scores, a multi-part task with groups and an
    extra metric column, so every optional column of the export is exercised."""
    rng = np.random.default_rng(0)
    n = 60
    ids = np.array([f"img{i:03d}" for i in range(n)])
    y = rng.choice(CLASSES, n)
    with Store(path) as store:
        for k, (backbone, protocol, acc) in enumerate([("pixels", "logreg", 0.55), ("vit", "logreg", 0.8),
                                                       ("vit", "knn", 0.7)]):
            right = rng.random(n) < acc
            pred = np.where(right, y, rng.choice(CLASSES, n))
            topk = np.stack([pred, np.where(pred == "ant", "bee", "ant"), np.full(n, "")], axis=1)
            score = rng.random(n)
            score[:3] = np.nan  # unknown confidences stay unknown
            store.write(Experiment(f"bugs/{backbone}/{protocol}", "bugs", backbone, protocol, "macro_f1",
                                   classes=CLASSES, config={"task_manifest": "abc", "C": 0.1},
                                   fit_info={"C": 1.0}, provenance={"hostname": "h", "device": "cpu"},
                                   timings={"fit": 0.5}, created_at=1000.0 + k),
                        Predictions(ids, y, pred, score, topk=topk))
        parts = np.array(["fin", "eye"] * 20)
        pid = np.array([f"f{i // 2}/{p}" for i, p in enumerate(parts)])
        py = rng.choice(["0", "1"], 40)
        for backbone, protocol in (("pixels", "logreg"), ("vit", "logreg"), ("vit", "knn")):
            pp = np.where(rng.random(40) < 0.7, py, "0")
            store.write(Experiment(f"fish/{backbone}/{protocol}", "fish", backbone, protocol, "accuracy", n_train=8,
                                   classes=("0", "1"), created_at=2000.0),
                        Predictions(pid, py, pp, part=parts, group=np.array([f"f{i // 2}" for i in range(40)]),
                                    extra={"weight": rng.random(40)}))
    return path


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return _store(tmp_path / "results.sqlite")


def _same(a: Predictions, b: Predictions) -> None:
    for name in ("ids", "y_true", "y_pred", "part", "group"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or x.tolist() == y.tolist()), name
    np.testing.assert_array_equal(a.score, b.score)  # NaN where unknown, equal floats otherwise
    assert (a.topk is None) == (b.topk is None) and (a.topk is None or a.topk.tolist() == b.topk.tolist())
    assert a.extra.keys() == b.extra.keys() and all(np.array_equal(a.extra[k], b.extra[k]) for k in a.extra)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_predictions_round_trip_exactly(store_path: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"preds{suffix}"
    assert export(store_path, out) == 3 * 60 + 3 * 40
    with Store(store_path, create=False) as store:
        originals = [(e, store.predictions(e.id)) for e in store.experiments()]
    back = read_predictions(out)
    assert len(back) == len(originals)
    for (e, p), (e2, p2) in zip(originals, back, strict=True):
        assert (e2.config_hash, e2.task, e2.backbone, e2.protocol, e2.metric, e2.n_train, e2.seed, e2.config,
                e2.classes, e2.fit_info, e2.provenance, e2.timings, e2.created_at) == \
               (e.config_hash, e.task, e.backbone, e.protocol, e.metric, e.n_train, e.seed, e.config, e.classes,
                e.fit_info, e.provenance, e.timings, e.created_at)
        _same(p, p2)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary file left behind


def test_report_on_an_export_equals_report_on_the_store(store_path: Path, tmp_path: Path) -> None:
    want = build_leaderboard(store_path, n_resamples=B, per_class=True)
    for suffix in (".parquet", ".csv"):
        out = tmp_path / f"preds{suffix}"
        export(store_path, out)
        with open_results(out) as store:
            got = build_leaderboard(store, n_resamples=B, per_class=True)
        assert got.cells == want.cells and got.to_text() == want.to_text()
        for key, values in want.resamples.items():
            np.testing.assert_array_equal(got.resamples[key], values)


def test_report_command_reads_a_predictions_export(store_path: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "--store", str(store_path), "--out", str(tmp_path / "p.parquet")]) == 0
    assert "wrote 300 prediction rows" in capsys.readouterr().out
    assert main(["report", "--store", str(store_path), "--out", str(tmp_path / "a")]) == 0
    from_store_text = capsys.readouterr().out.split("\nreport:")[0]
    assert main(["report", "--store", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "b")]) == 0
    from_export_text = capsys.readouterr().out.split("\nreport:")[0]
    assert from_export_text == from_store_text and "vit (logreg)" in from_store_text
    assert (tmp_path / "a" / "leaderboard.csv").read_text() == (tmp_path / "b" / "leaderboard.csv").read_text()


def test_prediction_rows_follow_the_documented_columns(store_path: Path) -> None:
    rows = prediction_rows(store_path, tasks=["fish"])
    assert list(rows[0]) == [*PREDICTION_COLUMNS, "extra.weight"]
    first = next(r for r in rows if r["example_id"] == "f0/eye" and r["backbone"] == "vit")
    assert first["part"] == "eye" and first["group"] == "f0" and first["model"] == "vit (logreg)"
    assert first["n_train"] == 8 and first["topk"] is None and first["score"] is None
    assert isinstance(first["extra.weight"], float)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_leaderboard_export_feeds_analyze_with_the_stores_numbers(store_path: Path, tmp_path: Path,
                                                                  suffix: str) -> None:
    out = tmp_path / f"board{suffix}"
    assert main(["export", "--store", str(store_path), "--out", str(out), "--what", "leaderboard"]) == 0
    stored = from_store(store_path, n_resamples=B)
    imported = load_results([out])
    key = lambda s: (s.task, s.model)  # noqa: E731
    for a, b in zip(sorted(stored.scores, key=key), sorted(imported.scores, key=key), strict=True):
        assert (a.task, a.model, a.metric, a.is_best, a.tied) == (b.task, b.model, b.metric, b.is_best, b.tied)
        assert a.point == pytest.approx(b.point, abs=1e-12) and a.low == pytest.approx(b.low, abs=1e-12)
        assert a.high == pytest.approx(b.high, abs=1e-12)
    # the analysis's point statistics (rank agreement of the reference task with the suite) agree too
    want = analyze(stored, reference="bugs", suite=["fish"], n_boot=B, min_models=3)
    got = analyze(imported, reference="bugs", suite=["fish"], n_boot=B, min_models=3)
    assert [(r.model, r.rank) for r in got.leaderboard] == [(r.model, r.rank) for r in want.leaderboard]
    assert [r.mean for r in got.leaderboard] == pytest.approx([r.mean for r in want.leaderboard], abs=1e-12)
    for name in ("r2", "spearman", "kendall_tau_b", "misranked"):
        assert getattr(got.vs_suite, name).point == pytest.approx(getattr(want.vs_suite, name).point)


def test_export_errors_are_one_line(store_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.parquet, \.csv or \.json"):
        export(store_path, tmp_path / "x.xlsx")
    with pytest.raises(ConfigError, match="nosuch"):
        export(store_path, tmp_path / "x.csv", tasks=["nosuch"])
    board = tmp_path / "board.json"
    export(store_path, board, what="leaderboard", n_resamples=B)
    with pytest.raises(DataError, match="not a predictions export"):
        read_predictions(board)
    export(store_path, tmp_path / "p.csv")
    (tmp_path / "p.experiments.json").unlink()
    with pytest.raises(DataError, match="p.experiments.json"):
        read_predictions(tmp_path / "p.csv")


def test_a_damaged_export_or_sidecar_is_one_line(store_path: Path, tmp_path: Path) -> None:
    # before: a truncated sidecar raised JSONDecodeError, a non-UTF-8 one UnicodeDecodeError (tracebacks)
    export(store_path, tmp_path / "p.csv")
    side = tmp_path / "p.experiments.json"
    side.write_text('{"schema": ')
    with pytest.raises(DataError, match=r"p\.experiments\.json is not valid JSON \(Expecting value: line 1"):
        read_predictions(tmp_path / "p.csv")
    side.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match=r"p\.experiments\.json is not UTF-8 text \(byte 0xff at offset 0, line 1\)"):
        read_predictions(tmp_path / "p.csv")
    (tmp_path / "q.json").write_bytes(b"[" * 100_000)
    with pytest.raises(DataError, match=r"q\.json: not valid JSON \(maximum recursion depth"):
        read_predictions(tmp_path / "q.json")
