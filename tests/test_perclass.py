"""Per-class F1 with paired intervals, confusion matrices, and the "how many more labels?" estimate.

Per-class numbers are checked against scikit-learn on the same predictions (points, confusion matrix, and the F1
of every bootstrap resample); the labels estimate is checked by simulation with known truth.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from lifebench.cli import main
from lifebench.errors import ConfigError
from lifebench.metrics import ResampleCounts, accuracy_resampled, macro_f1_resampled, resample_indices
from lifebench.metrics.classification import macro_f1
from lifebench.report import build_leaderboard
from lifebench.report.labels_needed import compare_pair, n_for_power
from lifebench.report.leaderboard import Cell, _SeedData
from lifebench.report.perclass import per_class_scores, percentile_columns
from lifebench.store import Experiment, Predictions, Store

CLASSES = np.array(["ant", "bee", "cod", "dace", "eel", "fly"])  # "fly" is predicted, never true
N = 300


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Imbalanced labels (one class with 2 examples) and three models; 'wide' predicts 'fly' sometimes."""
    rng = np.random.default_rng(seed)
    y = rng.choice(5, N, p=[0.45, 0.3, 0.15, 0.093, 0.007])
    y[:2] = 4  # 'eel' has at least 2 examples
    preds = {}
    for name, acc in (("good", 0.85), ("fair", 0.7), ("wide", 0.75)):
        right = rng.random(N) < acc
        wrong = (y + rng.integers(1, 6 if name == "wide" else 5, N)) % (6 if name == "wide" else 5)
        preds[name] = np.where(right, y, np.where(wrong == y, (y + 1) % 5, wrong))
    return np.array([f"x{i:04d}" for i in range(N)]), y, preds


def _store(path: Path, metric: str = "macro_f1") -> Store:
    ids, y, preds = _data()
    store = Store(path)
    for name, p in preds.items():
        exp = Experiment(config_hash=f"bugs/{name}", task="bugs", backbone=name, protocol="logreg", metric=metric,
                         classes=tuple(CLASSES))
        store.write(exp, Predictions(ids, CLASSES[y], CLASSES[p]))
    return store


def test_per_class_and_confusion_equal_sklearn(tmp_path: Path) -> None:
    _, y, preds = _data()
    with _store(tmp_path / "r.sqlite") as store:
        board = build_leaderboard(store, n_resamples=200, per_class=True)
    assert board.per_class is not None
    present = np.unique(y)
    for name, p in preds.items():
        rows = sorted((s for s in board.per_class.scores if s.backbone == name), key=lambda s: s.class_name)
        assert [s.class_name for s in rows] == CLASSES[present].tolist()  # the classes present in the labels
        precision, recall, f1, support = precision_recall_fscore_support(y, p, labels=present, zero_division=0)
        np.testing.assert_allclose([s.f1 for s in rows], f1, rtol=0, atol=1e-12)
        np.testing.assert_allclose([s.f1 for s in rows], f1_score(y, p, average=None, labels=present,
                                                                  zero_division=0), rtol=0, atol=1e-12)
        np.testing.assert_allclose([s.precision for s in rows], precision, rtol=0, atol=1e-12)
        np.testing.assert_allclose([s.recall for s in rows], recall, rtol=0, atol=1e-12)
        assert [s.support for s in rows] == support.tolist()
        assert all(s.f1_low <= s.f1 <= s.f1_high or s.support < 5 for s in rows)
        (cm,) = [c for c in board.per_class.confusions if c.backbone == name]
        assert cm.labels == tuple(CLASSES)  # 'fly' is an axis: 'wide' predicts it
        np.testing.assert_array_equal(cm.counts, confusion_matrix(y, p, labels=np.arange(len(CLASSES))))
    # the mean of the per-class F1 is the leaderboard's macro-F1
    for c in board.cells:
        assert np.mean([s.f1 for s in board.per_class.scores if s.backbone == c.backbone]) == pytest.approx(c.point)
    assert build_leaderboard(_store(tmp_path / "r.sqlite"), n_resamples=200).per_class is None  # only when asked


def test_seeds_average_f1_and_sum_counts(tmp_path: Path) -> None:
    """Two seeds with the same test set and predictions: F1 as for one seed, support and confusion doubled."""
    ids, y, preds = _data()
    with Store(tmp_path / "r.sqlite") as store:
        for seed in (0, 1):
            for name, p in preds.items():
                exp = Experiment(config_hash=f"bugs/{name}/{seed}", task="bugs", backbone=name, protocol="logreg",
                                 metric="macro_f1", seed=seed, classes=tuple(CLASSES))
                store.write(exp, Predictions(ids, CLASSES[y], CLASSES[p]))
        board = build_leaderboard(store, n_resamples=200, per_class=True)
    assert board.per_class is not None
    present = np.unique(y)
    for name, p in preds.items():
        rows = sorted((s for s in board.per_class.scores if s.backbone == name), key=lambda s: s.class_name)
        np.testing.assert_allclose([s.f1 for s in rows], f1_score(y, p, average=None, labels=present,
                                                                  zero_division=0), atol=1e-12)
        assert [s.support for s in rows] == (2 * np.bincount(y)[present]).tolist()
        assert {s.n_seeds for s in rows} == {2}
        (cm,) = [c for c in board.per_class.confusions if c.backbone == name]
        np.testing.assert_array_equal(cm.counts, 2 * confusion_matrix(y, p, labels=np.arange(len(CLASSES))))


def test_resampled_f1_and_paired_difference_equal_sklearn_per_resample() -> None:
    """The interval of each class's F1 and of its difference to the best are percentiles of scikit-learn's
    per-class F1 on each resample (NaN where the class is absent from the resample's labels)."""
    _, y, preds = _data(1)
    names = list(preds)
    idx = resample_indices(N, 150, 7)
    data = _SeedData({f"{m}/logreg": None for m in names}, np.arange(N), y, [preds[m] for m in names], CLASSES)
    best = max(names, key=lambda m: macro_f1(y, preds[m]))
    cells = [Cell("bugs", m, "logreg", "macro_f1", 0.0, 0, 0, N, m == best, False, None) for m in names]
    scores, _ = per_class_scores("bugs", "macro_f1", [data], [ResampleCounts(idx)], cells, 0.9)
    present = np.unique(y)

    def per_resample(p: np.ndarray) -> np.ndarray:
        out = np.array([f1_score(y[r], p[r], average=None, labels=present, zero_division=0) for r in idx])
        absent = np.array([~np.isin(present, y[r]) for r in idx])
        return np.where(absent, np.nan, out)

    ref_best = per_resample(preds[best])
    for m in names:
        ref = per_resample(preds[m])
        rows = sorted((s for s in scores if s.backbone == m), key=lambda s: s.class_name)
        np.testing.assert_allclose([s.f1_low for s in rows], np.nanquantile(ref, 0.05, axis=0), atol=1e-12)
        np.testing.assert_allclose([s.f1_high for s in rows], np.nanquantile(ref, 0.95, axis=0), atol=1e-12)
        if m == best:
            assert all(s.diff_best is None for s in rows)
        else:
            np.testing.assert_allclose([s.diff_low for s in rows], np.nanquantile(ref - ref_best, 0.05, axis=0),
                                       atol=1e-12)


def test_percentile_columns_match_nanquantile() -> None:
    rng = np.random.default_rng(3)
    res = rng.random((101, 7))
    res[rng.random(res.shape) < 0.3] = np.nan
    res[:, 6] = np.nan
    res[:100, 5] = np.nan  # one finite value
    low, high = percentile_columns(res, 0.95)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        np.testing.assert_allclose(low, np.nanquantile(res, 0.025, axis=0), equal_nan=True)
        np.testing.assert_allclose(high, np.nanquantile(res, 0.975, axis=0), equal_nan=True)


def test_per_class_comparison_is_paired() -> None:
    """A model equal to the best except that it fixes 8 of the best's mistakes on one class: its paired difference
    on that class excludes 0, while the two marginal intervals overlap; on classes it does not touch it is 0."""
    _, y, preds = _data(2)
    best = preds["good"].copy()
    target = 1
    missed = np.flatnonzero((y == target) & (best != target))[:8]
    assert missed.size == 8
    better = best.copy()
    better[missed] = target
    data = _SeedData({"good/p": None, "better/p": None}, np.arange(N), y, [best, better], CLASSES)
    cells = [Cell("t", "good", "p", "macro_f1", 0.0, 0, 0, N, True, False, None),
             Cell("t", "better", "p", "macro_f1", 0.0, 0, 0, N, False, True, 1.0)]
    scores, _ = per_class_scores("t", "macro_f1", [data], [ResampleCounts(resample_indices(N, 1000, 0))], cells,
                                 0.95)
    mine = {s.class_name: s for s in scores if s.backbone == "better"}
    theirs = {s.class_name: s for s in scores if s.backbone == "good"}
    bee = CLASSES[target]
    assert mine[bee].diff_low > 0 and mine[bee].diff_best > 0
    assert mine[bee].f1_low < theirs[bee].f1_high  # the unpaired intervals overlap
    touched = set(CLASSES[best[missed]]) | {bee}  # the fixed examples' old predictions lose false positives
    assert len(touched) < len(mine)
    for name, s in mine.items():
        if name not in touched:
            assert s.diff_low == s.diff_high == s.diff_best == 0.0


def test_files_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _store(tmp_path / "r.sqlite").close()
    out = tmp_path / "out"
    assert main(["report", "--store", str(tmp_path / "r.sqlite"), "--out", str(out), "--resamples", "1000"]) == 0
    text = capsys.readouterr().out
    assert "How many test images" in text and "Per-class F1" not in text
    assert not (out / "per_class.csv").exists()
    assert main(["report", "--store", str(tmp_path / "r.sqlite"), "--out", str(out), "--per-class", "2"]) == 0
    text = capsys.readouterr().out
    assert "Per-class F1" in text and "lowest 2 of 5 classes" in text
    with (out / "per_class.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 5 and rows[0].keys() >= {"class_name", "support", "f1", "f1_low", "diff_best"}
    doc = json.loads((out / "per_class.json").read_text())
    (task,) = doc["tasks"]
    assert task["task"] == "bugs" and task["labels"] == CLASSES.tolist()
    _, y, preds = _data()
    for model in task["models"]:
        dense = np.zeros((6, 6), dtype=int)
        for t, p, count in model["confusion"]:
            dense[t, p] = count
        np.testing.assert_array_equal(dense, confusion_matrix(y, preds[model["backbone"]], labels=range(6)))
        with (out / model["confusion_csv"]).open() as fh:
            table = list(csv.reader(fh))
        assert table[0][1:] == CLASSES.tolist() and [r[0] for r in table[1:]] == CLASSES.tolist()
        np.testing.assert_array_equal(np.array([r[1:] for r in table[1:]], dtype=int), dense)
    board = json.loads((out / "leaderboard.json").read_text())
    (needed,) = board["labels_needed"]
    assert needed["chosen"] == "best vs runner-up" and needed["backbone_a"] == "good"
    assert "How many more labels?" in (out / "leaderboard.md").read_text()
    assert main(["report", "--store", str(tmp_path / "r.sqlite"), "--out", str(out), "--compare", "fair", "wide"]) == 0
    assert "fair vs wide (named)" in capsys.readouterr().out
    assert main(["report", "--store", str(tmp_path / "r.sqlite"), "--out", str(out), "--compare", "fair", "nope"]) == 2
    assert "--compare fair nope: no task has results for both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # refused while parsing (exit 2), naming the option
        main(["report", "--store", str(tmp_path / "r.sqlite"), "--out", str(out), "--power", "1.5"])
    assert exit_.value.code == 2 and "argument --power: 1.5 is not below 1" in capsys.readouterr().err


def test_options_checked(tmp_path: Path) -> None:
    with _store(tmp_path / "r.sqlite") as store:
        with pytest.raises(ConfigError, match="--power 0.0 must lie strictly between 0 and 1"):
            build_leaderboard(store, power=0.0)
        with pytest.raises(ConfigError, match="--compare takes two models, got 1"):
            build_leaderboard(store, compare=["good"])


# ------------------------------------------------------------------------------------------ how many more labels


def _cell(point: float, n: int) -> Cell:
    return Cell("t", "m", "p", "accuracy", point, point, point, n, False, False, None)


def _estimate(y, a, b, idx, resampled, fn, power=0.8):
    n = y.size
    return compare_pair("t", "m", _cell(fn(y, a), n), _cell(fn(y, b), n), resampled(y, a, idx),
                        resampled(y, b, idx), chosen="named", confidence=0.95, power=power)


def _accuracy(y, p):
    return float(np.mean(y == p))


def _pilot(n10: int, n01: int, n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A test set of ``n`` with exactly ``n10`` examples only A gets right, ``n01`` only B gets right and a tenth
    that both get wrong (class 1 is the truth, 0 a wrong answer)."""
    y, a, b = (np.ones(n, dtype=np.int64) for _ in range(3))
    b[:n10] = 0
    a[n10:n10 + n01] = 0
    a[n10 + n01:n10 + n01 + n // 10] = b[n10 + n01:n10 + n01 + n // 10] = 0
    return y, a, b


def test_sigma_is_the_discordant_pair_sd_for_accuracy() -> None:
    y, a, b = _pilot(40, 28)
    est = _estimate(y, a, b, resample_indices(y.size, 4000, 1), accuracy_resampled, _accuracy)
    p10, p01 = 40 / 400, 28 / 400
    # bootstrap sd has relative MC error 1/sqrt(2B) = 1.1%; the band is 4 SE
    assert est.sigma == pytest.approx(math.sqrt(p10 + p01 - (p10 - p01) ** 2), rel=0.045)
    assert est.difference == pytest.approx(0.03) and not est.resolved


@pytest.mark.parametrize("power", [0.8, 0.5])
def test_accuracy_estimate_resolves_at_the_stated_power(power: float) -> None:
    """Known truth: the population is the pilot's exact proportions (p10 = 0.10, p01 = 0.07), so the gap holds.
    At the estimated size, the paired interval must exclude 0 in ``power`` of 4,000 simulated test sets (MC SE
    <= 0.008; band 4 SE). An unpaired variance would give ~96%, a formula without the power term 50%."""
    y, a, b = _pilot(40, 28)
    est = _estimate(y, a, b, resample_indices(y.size, 4000, 2), accuracy_resampled, _accuracy, power=power)
    n = est.n_needed
    rng = np.random.default_rng(3)
    counts = rng.multinomial(n, [40 / 400, 28 / 400, 1 - 68 / 400], size=4000)  # A only, B only, concordant
    d = (counts[:, 0] - counts[:, 1]) / n
    se = np.sqrt(((counts[:, 0] + counts[:, 1]) / n - d**2) / n)
    rate = float(np.mean(np.abs(d) > 1.959964 * se))
    assert abs(rate - power) < 4 * math.sqrt(power * (1 - power) / 4000)
    assert n_for_power(est.sigma, 0.03, 0.95, 0.8) == pytest.approx(n if power == 0.8 else n * (1.96 + 0.8416) ** 2
                                                                    / 1.96**2, rel=1e-3)


def test_macro_f1_estimate_scales_with_n() -> None:
    """Known truth for macro-F1: the population is a fixed imbalanced set P (so P's gap is the true gap). At the
    size estimated from P, the difference over 1,000 test sets drawn from P has sd sigma/sqrt(n) (band 4 MC SE,
    2.2% each), and exceeds the 95% threshold in 80% of them (band 4 MC SE)."""
    _, y, preds = _data(4)
    a, b = preds["good"], preds["wide"]
    est = _estimate(y, a, b, resample_indices(N, 4000, 5), macro_f1_resampled, macro_f1)
    n = est.n_needed
    assert n > N  # not resolvable now
    sims = np.random.default_rng(6).integers(0, N, (1000, n))
    d = macro_f1_resampled(y, a, sims) - macro_f1_resampled(y, b, sims)
    assert d.std(ddof=1) == pytest.approx(est.sigma / math.sqrt(n), rel=4 * 0.022)
    rate = float(np.mean(np.sign(est.difference) * d > 1.959964 * est.sigma / math.sqrt(n)))
    assert abs(rate - 0.8) < 4 * math.sqrt(0.16 / 1000)


def test_range_covers_the_true_size_half_the_time() -> None:
    """Pilots of 400 from a population with p10 = 0.10, p01 = 0.07: the true size n* lies in the printed 50% range
    in about half of 300 pilots (MC SE 0.029; band 4 SE)."""
    rng = np.random.default_rng(8)
    p10, p01 = 0.10, 0.07
    sigma = math.sqrt(p10 + p01 - (p10 - p01) ** 2)
    n_star = n_for_power(sigma, p10 - p01, 0.95, 0.8)
    covered = 0
    for k in range(300):
        kind = rng.choice(3, 400, p=[p10, p01, 1 - p10 - p01])
        y = np.ones(400, dtype=np.int64)
        a = np.where(kind == 1, 0, 1)
        b = np.where(kind == 0, 0, 1)
        est = _estimate(y, a, b, resample_indices(400, 500, k), accuracy_resampled, _accuracy)
        high = math.inf if est.n_needed_high is None else est.n_needed_high
        covered += est.difference > 0 and est.n_needed_low is not None and est.n_needed_low <= n_star <= high
    assert abs(covered / 300 - 0.5) < 4 * math.sqrt(0.25 / 300)


def test_identical_models_need_no_labels() -> None:
    y, a, _ = _pilot(40, 28)
    est = _estimate(y, a, a.copy(), resample_indices(400, 200, 0), accuracy_resampled, _accuracy)
    assert est.n_needed is None and est.difference == 0 and "no test set separates them" in est.text()
