"""Leaderboards from a synthetic store: points match scikit-learn, intervals are paired, ties are right."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from lifebench.errors import ConfigError, DataError, UnknownNameError
from lifebench.metrics import Estimate, resample_indices, task_seed, ties_with_best
from lifebench.report import Cell, Leaderboard, build_leaderboard
from lifebench.store import Experiment, Predictions, Store

CLASSES = np.array(["ant", "bee", "cod", "dace", "eel"])
N = 400
B = 500  # resamples: enough for stable ties, fast to run


def truth(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.array([f"x{i:04d}" for i in range(n)]), CLASSES[rng.integers(0, len(CLASSES), n)]


def predict(y_true: np.ndarray, correct: np.ndarray, seed: int) -> np.ndarray:
    """``y_true`` where ``correct``, a different random class elsewhere."""
    rng = np.random.default_rng(seed)
    codes = np.searchsorted(CLASSES, y_true)
    wrong = (codes + rng.integers(1, len(CLASSES), codes.size)) % len(CLASSES)
    return CLASSES[np.where(correct, codes, wrong)]


def three_models() -> dict[str, np.ndarray]:
    """Predictions of a strong model, a near-copy of it, and a clearly weaker model."""
    _, y = truth()
    rng = np.random.default_rng(1)
    strong = rng.random(N) < 0.85
    copy = strong.copy()
    right, wrong = np.flatnonzero(strong), np.flatnonzero(~strong)
    copy[right[:4]] = False  # the copy breaks 4 examples and fixes 3: one fewer correct overall
    copy[wrong[:3]] = True
    weak = rng.random(N) < 0.65
    return {"strong": predict(y, strong, 2), "copy": predict(y, copy, 3), "weak": predict(y, weak, 4)}


def add(store: Store, task: str, backbone: str, ids, y_true, y_pred, *, metric="accuracy", protocol="logreg",
        topk=None, created_at=None, classes=CLASSES) -> int:  # fmt: skip
    exp = Experiment(
        config_hash=f"{task}/{backbone}/{protocol}/{created_at}",
        task=task, backbone=backbone, protocol=protocol, metric=metric,
        classes=tuple(classes), created_at=created_at,
    )  # fmt: skip
    # Stored in shuffled order: alignment must not depend on write order.
    order = np.random.default_rng(len(backbone)).permutation(len(ids))
    preds = Predictions(ids[order], y_true[order], y_pred[order], topk=None if topk is None else topk[order])
    return store.write(exp, preds)


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "results.sqlite") as s:
        ids, y = truth()
        for name, pred in three_models().items():
            add(s, "bugs", name, ids, y, pred)
        yield s


def cells_by_model(board: Leaderboard, task: str) -> dict[str, Cell]:
    return {c.backbone: c for c in board.cells if c.task == task}


def test_points_match_sklearn_and_ties(store: Store) -> None:
    board = build_leaderboard(store, n_resamples=B, seed=0)
    _, y = truth()
    preds = three_models()
    cells = cells_by_model(board, "bugs")
    assert set(cells) == {"strong", "copy", "weak"}
    for name, cell in cells.items():
        assert cell.point == pytest.approx(accuracy_score(y, preds[name]), abs=1e-12)
        assert cell.low <= cell.point <= cell.high and cell.low < cell.high
        assert (cell.metric, cell.n_test, cell.protocol) == ("accuracy", N, "logreg")
    assert cells["strong"].point - cells["copy"].point == pytest.approx(1 / N)
    assert cells["weak"].point < cells["strong"].point - 0.1

    assert cells["strong"].is_best and not cells["strong"].tied and cells["strong"].pvalue is None
    assert cells["copy"].tied and not cells["copy"].is_best and cells["copy"].pvalue > 0.05
    assert not cells["weak"].tied and not cells["weak"].is_best and cells["weak"].pvalue < 0.01
    assert board.models() == [("strong", "logreg"), ("copy", "logreg"), ("weak", "logreg")]


def test_interval_is_bca_bootstrap_on_the_shared_task_resamples(store: Store) -> None:
    from lifebench.metrics import bootstrap_ci

    board = build_leaderboard(store, n_resamples=B, seed=7, confidence=0.9)
    ids, y = truth()
    order = np.argsort(ids)  # ids are stored and aligned in sorted order; resampled within true classes
    idx = resample_indices(N, B, task_seed("bugs", 7), strata=y[order])
    codes = {v: i for i, v in enumerate(sorted(set(y) | {v for p in three_models().values() for v in p}))}
    y_codes = np.array([codes[v] for v in y[order]])
    for name, pred in three_models().items():
        hits = (y[order] == pred[order])[idx].mean(axis=1)
        est = bootstrap_ci("accuracy", y_codes, np.array([codes[v] for v in pred[order]]), idx, 0.9, strata=y_codes)
        np.testing.assert_allclose(est.resamples, hits, rtol=0, atol=1e-12)
        cell = cells_by_model(board, "bugs")[name]
        assert (cell.low, cell.high) == pytest.approx((est.low, est.high), abs=1e-12)


def test_own_metric_column_macro_f1(store: Store) -> None:
    ids, y = truth(300, seed=9)
    preds = {}
    for k, name in enumerate(["strong", "weak"]):
        correct = np.random.default_rng(20 + k).random(300) < (0.8 - 0.3 * k)
        preds[name] = predict(y, correct, 30 + k)
        add(store, "fish", name, ids, y, preds[name], metric="macro_f1")
    board = build_leaderboard(store, n_resamples=B)
    fish = cells_by_model(board, "fish")
    for name, pred in preds.items():
        assert fish[name].metric == "macro_f1"
        assert fish[name].point == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert {c.metric for c in board.cells if c.task == "bugs"} == {"accuracy"}
    # Forcing one metric for every task.
    forced = build_leaderboard(store, n_resamples=B, metric="macro_f1", tasks=["bugs"])
    _, y_bugs = truth()
    for name, pred in three_models().items():
        cell = cells_by_model(forced, "bugs")[name]
        assert cell.metric == "macro_f1"
        assert cell.point == pytest.approx(f1_score(y_bugs, pred, average="macro"), abs=1e-12)


def test_intersection_of_test_ids_is_used_with_a_warning(store: Store, caplog) -> None:
    ids, y = truth()
    partial = three_models()["weak"]
    keep = np.ones(N, bool)
    keep[::40] = False  # 10 examples missing
    add(store, "bugs", "partial", ids[keep], y[keep], partial[keep])
    with caplog.at_level(logging.WARNING, logger="lifebench.report.leaderboard"):
        board = build_leaderboard(store, n_resamples=B)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert (
        "partial/logreg: 390" in warning and "strong/logreg: 400" in warning and "390 they share" in warning
    )
    cells = cells_by_model(board, "bugs")
    preds = three_models()
    for name in ("strong", "copy", "weak"):
        assert cells[name].n_test == 390
        assert cells[name].point == pytest.approx(accuracy_score(y[keep], preds[name][keep]))
    assert cells["partial"].point == pytest.approx(accuracy_score(y[keep], partial[keep]))


def test_newest_experiment_per_model_is_used(tmp_path: Path, caplog) -> None:
    ids, y = truth()
    preds = three_models()
    with Store(tmp_path / "r.sqlite") as s:
        add(s, "bugs", "vit", ids, y, preds["weak"], created_at=100.0)
        add(s, "bugs", "vit", ids, y, preds["strong"], created_at=200.0)
        add(s, "bugs", "vit", ids, y, preds["copy"], created_at=150.0)
        with caplog.at_level(logging.WARNING):
            board = build_leaderboard(s, n_resamples=B)
    assert "3 experiments of vit" in caplog.text
    (cell,) = board.cells
    assert cell.point == pytest.approx(accuracy_score(y, preds["strong"]))
    assert cell.is_best and not cell.tied


def test_top5_uses_stored_rankings(tmp_path: Path, caplog) -> None:
    ids, y = truth()
    rng = np.random.default_rng(3)
    labels = np.append(CLASSES, "not-a-class")  # a ranked label outside the class list
    ranked = {name: labels[np.argsort(rng.random((N, labels.size)), axis=1)[:, :5]] for name in ("a", "b")}
    with Store(tmp_path / "r.sqlite") as s:
        for name, topk in ranked.items():
            add(s, "bugs", name, ids, y, topk[:, 0], topk=topk, metric="top5_accuracy")
        add(s, "bugs", "no-ranking", ids, y, y, metric="top5_accuracy")
        with caplog.at_level(logging.WARNING):
            board = build_leaderboard(s, n_resamples=B)
    assert "no-ranking/logreg stored no top-k labels" in caplog.text
    cells = cells_by_model(board, "bugs")
    assert set(cells) == {"a", "b"}
    for name, topk in ranked.items():
        want = np.mean([y[i] in topk[i] for i in range(N)])
        assert 0.6 < want < 0.95  # the outside label sometimes takes a slot
        assert cells[name].point == pytest.approx(want)


def test_top5_with_fewer_than_five_classes(tmp_path: Path) -> None:
    three = CLASSES[:3]
    ids = np.array([f"x{i}" for i in range(60)])
    y = three[np.arange(60) % 3]
    topk = np.array([np.roll(three, i) for i in range(60)])  # every row ranks all three classes
    with Store(tmp_path / "r.sqlite") as s:
        add(s, "tiny", "m", ids, y, topk[:, 0], topk=topk, metric="top5_accuracy", classes=three)
        (cell,) = build_leaderboard(s, n_resamples=50).cells
    assert cell.point == 1.0


def test_renderers_parse_back(store: Store, tmp_path: Path) -> None:
    ids, y = truth()
    add(store, "bugs", "strong", ids, y, three_models()["strong"], protocol="knn")
    board = build_leaderboard(store, n_resamples=B, alpha=0.05)
    by_row = {(c.backbone, c.protocol): c for c in board.cells}

    md = board.to_markdown()
    lines = md.splitlines()
    assert lines[0].startswith("| model | bugs (accuracy, n=400) |")
    rows = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in lines[2:] if ln.startswith("| ")}
    best = next(c for c in board.cells if c.is_best)
    fmt = f"{best.point:.3f} [{best.low:.3f}, {best.high:.3f}]"
    assert rows[f"{best.backbone} ({best.protocol})"] == f"**{fmt}**"
    weak = by_row[("weak", "logreg")]
    assert rows["weak (logreg)"] == f"{weak.point:.3f} [{weak.low:.3f}, {weak.high:.3f}]"
    tied_labels = {f"{c.backbone} ({c.protocol})" for c in board.cells if c.tied}
    assert "copy (logreg)" in tied_labels
    assert all(rows[label].endswith("≈") for label in tied_labels)
    assert "**bold**" in lines[-1] and "≈" in lines[-1]

    text = board.to_text().splitlines()
    table = text[: 2 + len(board.models())]
    assert len({len(ln) for ln in table}) == 1  # aligned
    assert text[2].startswith(f"{best.backbone} ({best.protocol})") and text[2].endswith("*")
    assert any(ln.startswith("copy (logreg)") and ln.endswith("=") for ln in text)
    assert any(ln.startswith("weak (logreg)") and ln.endswith(" ") for ln in text)

    paths = board.write(tmp_path / "out" / "report")
    assert set(paths) == {"md", "csv", "json"} and all(p.is_file() for p in paths.values())
    assert board.to_markdown() in paths["md"].read_text()

    with paths["csv"].open(newline="") as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == len(board.cells)
    for row, cell in zip(read, board.cells, strict=True):
        assert (
            row["backbone"] == cell.backbone and row["protocol"] == cell.protocol and row["task"] == cell.task
        )
        assert (
            float(row["point"]) == cell.point
            and float(row["low"]) == cell.low
            and float(row["high"]) == cell.high
        )
        assert int(row["n_test"]) == cell.n_test
        assert row["is_best"] == str(cell.is_best) and row["tied"] == str(cell.tied)
        assert row["pvalue"] == ("" if cell.pvalue is None else repr(cell.pvalue))

    data = json.loads(paths["json"].read_text())
    assert data["meta"]["n_resamples"] == B and data["meta"]["alpha"] == 0.05 and data["meta"]["seed"] == 0
    assert [Cell(**c) for c in data["cells"]] == list(board.cells)
    assert [dataclasses.asdict(c) for c in board.cells] == data["cells"]


def test_single_protocol_rows_are_backbones(store: Store) -> None:
    board = build_leaderboard(store, n_resamples=B)
    assert [board.label(*m) for m in board.models()] == ["strong", "copy", "weak"]


def test_errors(tmp_path: Path, store: Store) -> None:
    with pytest.raises(ConfigError, match="no results store at"):
        build_leaderboard(tmp_path / "missing.sqlite")
    with Store(tmp_path / "empty.sqlite") as empty, pytest.raises(ConfigError, match="holds no experiments"):
        build_leaderboard(empty)
    with pytest.raises(UnknownNameError, match="'bug'.*did you mean 'bugs'"):
        build_leaderboard(store, tasks=["bug"])
    with pytest.raises(UnknownNameError, match="metric"):
        build_leaderboard(store, metric="acuracy")
    ids, y = truth()
    flipped = y.copy()
    flipped[:5] = np.where(y[:5] == "ant", "bee", "ant")
    add(store, "bugs", "stale", ids, flipped, y)
    with pytest.raises(DataError, match="different true labels for 5 test examples"):
        build_leaderboard(store, n_resamples=B)


def test_build_from_a_path(store: Store) -> None:
    board = build_leaderboard(store.path, n_resamples=B)
    assert len(board.cells) == 3


def _add_seeded(store: Store, task: str, backbone: str, ids, y_true, y_pred, seed: int) -> None:
    exp = Experiment(config_hash=f"{task}/{backbone}/{seed}", task=task, backbone=backbone, protocol="zero-shot",
                     metric="macro_f1", classes=tuple(CLASSES), seed=seed)
    store.write(exp, Predictions(ids, y_true, y_pred))


@pytest.mark.parametrize("n_seeds", [4, 10])
def test_repeating_a_seed_adds_no_confidence(tmp_path: Path, n_seeds: int) -> None:
    """The same predictions under several seeds (a deterministic protocol run with --seed 0..S-1) must give the
    interval and tie test of one seed: the seeds share their test examples, so they share their resamples."""
    ids, y = truth()
    models = three_models()
    boards = []
    for seeds in (1, n_seeds):
        with Store(tmp_path / f"s{seeds}.sqlite") as s:
            for seed in range(seeds):
                for name in ("strong", "copy"):
                    _add_seeded(s, "bugs", name, ids, y, models[name], seed)
            boards.append(cells_by_model(build_leaderboard(s, n_resamples=B), "bugs"))
    one, many = boards
    assert many["strong"].n_seeds == n_seeds and many["strong"].seed_std == 0.0
    for name in ("strong", "copy"):
        assert (many[name].point, many[name].low, many[name].high) == pytest.approx(
            (one[name].point, one[name].low, one[name].high), abs=1e-12)
    assert many["copy"].pvalue == pytest.approx(one["copy"].pvalue) and many["copy"].tied == one["copy"].tied


def test_models_that_share_no_seed_are_one_line_error(tmp_path: Path) -> None:
    ids, y = truth()
    models = three_models()
    with Store(tmp_path / "s.sqlite") as s:
        _add_seeded(s, "bugs", "strong", ids, y, models["strong"], 0)
        _add_seeded(s, "bugs", "weak", ids, y, models["weak"], 1)
        with pytest.raises(DataError, match=r"^task bugs: no model has results for every seed \(0, 1\); run each "
                                            r"model with the same --seed values"):
            build_leaderboard(s, n_resamples=B)


def test_seeds_with_overlapping_test_sets_see_each_example_the_same_number_of_times(tmp_path: Path) -> None:
    """Few-shot folds: each seed's test set leaves out its own support images. A seed's resample b must hold every
    example it shares with the others exactly as often as theirs does: one draw over the union of test ids."""
    from lifebench.metrics import ResampleCounts, macro_f1, resample_indices, task_seed

    ids, y = truth()
    models = three_models()
    keep = {s: np.setdiff1d(np.arange(N), np.arange(10 * s, 10 * s + 10)) for s in range(3)}  # fold s drops 10
    with Store(tmp_path / "folds.sqlite") as s:
        for seed, rows in keep.items():
            for name in ("strong", "weak"):
                _add_seeded(s, "bugs", name, ids[rows], y[rows], models[name][rows], seed)
        board = build_leaderboard(s, n_resamples=B, seed=3)
    every = ResampleCounts(resample_indices(N, B, task_seed("bugs", 3), strata=y))  # within true classes
    K = every.counts(N)
    codes = {n: np.searchsorted(CLASSES, v) for n, v in (("y", y), *models.items())}
    for name in ("strong", "weak"):
        want = np.zeros(B)
        for rows in keep.values():  # resample b of a fold: its examples, each repeated as often as in draw b
            for b in range(B):
                drawn = np.repeat(rows, K[rows, b].astype(int))
                want[b] += macro_f1(codes["y"][drawn], codes[name][drawn]) / len(keep)
        np.testing.assert_allclose(board.resamples[("bugs", "macro_f1", name, "zero-shot")], want, rtol=0, atol=1e-12)
        cell = cells_by_model(board, "bugs")[name]
        assert cell.n_seeds == 3 and cell.n_test == N - 10
        assert cell.point == pytest.approx(np.mean([macro_f1(codes["y"][r], codes[name][r]) for r in keep.values()]))


# ---------------------------------------------------------------------------------------------- ties


def test_tie_level_follows_confidence(store: Store) -> None:
    """``--confidence 0.9`` used to print 'p > 0.05': the tie test now runs at alpha = 1 - confidence unless alpha
    is given, and the legend prints the level it used."""
    board = build_leaderboard(store, n_resamples=B, confidence=0.9)
    assert board.meta["alpha"] == 0.1 and board.meta["confidence"] == 0.9
    legend = board.to_text().splitlines()[-1]
    assert "[90% CI]" in legend and "family-wise error at most 0.1: adjusted p > 0.1)" in legend
    assert "0.05" not in legend
    assert all(c.is_best or c.tied == (c.pvalue > 0.1) for c in board.cells)
    assert build_leaderboard(store, n_resamples=B).meta["alpha"] == 0.05  # not 0.050000000000000044
    explicit = build_leaderboard(store, n_resamples=B, confidence=0.9, alpha=0.01)
    assert explicit.meta["alpha"] == 0.01 and "adjusted p > 0.01)" in explicit.to_markdown()


def test_report_cli_prints_the_level_used(store: Store, tmp_path: Path, capsys) -> None:
    from lifebench.cli import main

    assert main(["report", "--store", str(store.path), "--out", str(tmp_path), "--confidence", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "adjusted p > 0.1)" in out and "p > 0.05" not in out
    assert json.loads((tmp_path / "leaderboard.json").read_text())["meta"]["alpha"] == 0.1


def test_pvalues_are_the_max_t_test_on_the_shared_resamples(store: Store, tmp_path: Path) -> None:
    """A twin of the strong model (same accuracy, errors on other examples) is tied with it; every cell's mark and
    p-value, in the table and in the JSON and CSV files, is ``ties_with_best`` on the task's shared resamples."""
    ids, y = truth()
    strong = predict(y, np.random.default_rng(1).random(N) < 0.85, 2) == y
    twin = np.random.default_rng(9).permutation(strong)
    assert twin.sum() == strong.sum() and np.count_nonzero(twin != strong) > 80
    add(store, "bugs", "twin", ids, y, predict(y, twin, 5))
    board = build_leaderboard(store, n_resamples=B)
    cells = cells_by_model(board, "bugs")
    ests = {name: Estimate(point=c.point, low=c.low, high=c.high,
                           resamples=board.resamples[("bugs", "accuracy", name, "logreg")])
            for name, c in cells.items()}
    best, tied, pvalues = ties_with_best(ests, alpha=0.05)
    assert best == "strong" and tied == {"strong", "twin", "copy"}
    assert cells["twin"].tied and cells["twin"].pvalue == pytest.approx(1.0, abs=0.01)
    assert not cells["weak"].tied and cells["weak"].pvalue == pytest.approx(1 / (B + 1))
    stored = {c["backbone"]: c for c in json.loads(board.to_json(tmp_path / "b.json").read_text())["cells"]}
    with board.to_csv(tmp_path / "b.csv").open(encoding="utf-8") as fh:
        rows = {r["backbone"]: r for r in csv.DictReader(fh)}
    for name, c in cells.items():
        assert c.is_best == (name == best) and c.tied == (name != best and name in tied)
        want = None if name == best else pvalues[name]
        assert c.pvalue == want and stored[name]["pvalue"] == want
        assert rows[name]["pvalue"] == ("" if want is None else repr(want))


# ------------------------------------------------------------------------------------------ speed changes

BOARD_8966E9E = Path(__file__).parent / "data" / "report_step" / "board_8966e9e.json"


def _speed_case(path: Path) -> Store:
    """Two tasks, six models: accuracy on 5 classes and macro-F1 on 40 long-tailed classes (small ones pooled, a
    predicted class that is never true), with two identical models (an exact tie)."""
    store = Store(path)
    ids, y = truth()
    quality = [0.9, 0.88, 0.8, 0.7, 0.6]
    for m, q in enumerate(quality):
        add(store, "bugs", f"m{m}", ids, y, predict(y, np.random.default_rng(10 + m).random(N) < q, 20 + m))
    add(store, "bugs", "m5", ids, y, predict(y, np.random.default_rng(10).random(N) < quality[0], 20))
    many = np.array([f"c{c:02d}" for c in range(41)])
    rng = np.random.default_rng(3)
    y40 = many[np.minimum(rng.zipf(1.4, N) - 1, 39)]
    codes = np.searchsorted(many, y40)
    for m, q in enumerate(quality + [quality[0]]):
        r = np.random.default_rng(30 + min(m, 4 if m < 5 else 0))
        wrong = np.minimum(codes + r.integers(1, 4, N), 40)  # c40 is predicted but never true
        add(store, "fish", f"m{m}", ids, y40, many[np.where(r.random(N) < q, codes, wrong)], metric="macro_f1",
            classes=many)
    return store


def _board_numbers(board: Leaderboard) -> dict[str, list]:
    return {f"{c.task}/{c.backbone}": [c.point, c.low, c.high, c.is_best, c.tied, c.pvalue] for c in board.cells}


def test_report_numbers_unchanged_by_the_speed_work(tmp_path: Path) -> None:
    """The same seed gives the same intervals, p-values and tie marks as the code before the 2026-12-03 speed
    changes (commit 8966e9e, whose output is stored in tests/data/report_step/; regenerate with
    ``PYTHONPATH=<that commit's src>:tests python -c "import test_report as t; t._write_expected()"``)."""
    with _speed_case(tmp_path / "r.sqlite") as store:
        got = _board_numbers(build_leaderboard(store, n_resamples=300, seed=7))
    expected = json.loads(BOARD_8966E9E.read_text())
    assert got.keys() == expected.keys()
    assert sum(v[4] for v in got.values()) >= 2  # some ties to compare (the identical copies at least)
    for key, (point, low, high, best, tied, p) in expected.items():
        g = got[key]
        np.testing.assert_allclose(g[:3], [point, low, high], rtol=0, atol=1e-12, err_msg=key)
        assert (g[3], g[4]) == (best, tied), key
        assert (g[5] is None) == (p is None) and (p is None or abs(g[5] - p) <= 1e-12), key


def _write_expected() -> None:  # pragma: no cover - run by hand against the old sources
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, _speed_case(Path(tmp) / "r.sqlite") as store:
        numbers = _board_numbers(build_leaderboard(store, n_resamples=300, seed=7))
    BOARD_8966E9E.parent.mkdir(parents=True, exist_ok=True)
    BOARD_8966E9E.write_text(json.dumps(numbers, indent=1) + "\n")
