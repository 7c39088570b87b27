"""Protocols checked against scikit-learn references (LogisticRegression, NearestCentroid, KNeighborsClassifier)."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from lifebench.errors import ConfigError, DataError, UnknownNameError
from lifebench.protocols import PROTOCOLS, fit_info, logreg, make_protocol, top_k
from lifebench.protocols.knn import KNN
from lifebench.protocols.logreg import (
    DEFAULT_CS,
    LogisticProbe,
    _macro_f1,
    _stratified_folds,
    _stratified_holdout,
    fit_many_binary,
)
from lifebench.protocols.simpleshot import SimpleShot


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These problems are tiny; on a shared 2-core machine extra threads only spin and wait (60x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """load_digits scaled to [0, 1] (pixel counts / 16, exact in float16), split 70/30 stratified."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def _imbalanced(X, y, seed=0):
    """Keep 8 + 12 * c examples of class c (8 to 116): a skewed subset."""
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: 8 + 12 * c] for c in np.unique(y)])
    return X[keep], y[keep]


# ---------------------------------------------------------------- LogisticProbe vs scikit-learn


def _assert_same_model(ours: LogisticProbe, ref: LogisticRegression, X_test: np.ndarray) -> None:
    agree = np.mean(ours.predict(X_test) == ref.predict(X_test))
    assert agree >= 0.995
    assert np.abs(ours.predict_proba(X_test) - ref.predict_proba(X_test)).max() < 1e-3
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-4)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-3)


@pytest.mark.parametrize("C", [0.1, 1.0])
def test_logreg_matches_sklearn(digits, C):
    X_tr, X_te, y_tr, _ = digits
    ref = LogisticRegression(C=C, tol=1e-8, max_iter=5000).fit(X_tr, y_tr)
    ours = LogisticProbe(C=C, standardize=False, dtype="float64", tol=1e-8).fit(X_tr, y_tr)
    assert ours.coef_.shape == (10, 64)
    _assert_same_model(ours, ref, X_te)
    assert ours.C_ == C and ours.val_scores_ == {}


def test_logreg_balanced_class_weight_matches_sklearn(digits):
    X_tr, X_te, y_tr, _ = digits
    X_imb, y_imb = _imbalanced(X_tr, y_tr)
    ref = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-8, max_iter=5000).fit(X_imb, y_imb)
    ours = LogisticProbe(C=1.0, class_weight="balanced", standardize=False, dtype="float64", tol=1e-8)
    ours.fit(X_imb, y_imb)
    _assert_same_model(ours, ref, X_te)
    # the weights matter: the unweighted fit is a different model
    plain = LogisticProbe(C=1.0, standardize=False, dtype="float64", tol=1e-8).fit(X_imb, y_imb)
    assert np.abs(plain.coef_ - ours.coef_).max() > 1e-2


def test_logreg_sample_weight_matches_sklearn(digits):
    X_tr, X_te, y_tr, _ = digits
    sw = np.random.default_rng(1).uniform(0.2, 3.0, size=len(y_tr))
    ref = LogisticRegression(C=0.3, class_weight="balanced", tol=1e-8, max_iter=5000)
    ref.fit(X_tr, y_tr, sample_weight=sw)
    ours = LogisticProbe(C=0.3, class_weight="balanced", standardize=False, dtype="float64", tol=1e-8)
    ours.fit(X_tr, y_tr, sample_weight=sw)
    _assert_same_model(ours, ref, X_te)


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_logreg_binary_matches_sklearn(digits, C):
    X_tr, X_te, y_tr, y_te = digits
    tr, te = np.isin(y_tr, [3, 8]), np.isin(y_te, [3, 8])
    ref = LogisticRegression(C=C, tol=1e-8, max_iter=5000).fit(X_tr[tr], y_tr[tr])
    ours = LogisticProbe(C=C, standardize=False, dtype="float64", tol=1e-8).fit(X_tr[tr], y_tr[tr])
    assert ours.coef_.shape == (1, 64) and ours.decision_function(X_te[te]).shape == (te.sum(), 2)
    _assert_same_model(ours, ref, X_te[te])


def test_logreg_standardize_equals_scaler_pipeline(digits):
    X_tr, X_te, y_tr, _ = digits
    scaler = StandardScaler().fit(X_tr)
    ref = LogisticRegression(C=0.1, tol=1e-8, max_iter=5000).fit(scaler.transform(X_tr), y_tr)
    ours = LogisticProbe(C=0.1, standardize=True, dtype="float64", tol=1e-8).fit(X_tr, y_tr)
    np.testing.assert_allclose(ours.mean_, scaler.mean_, atol=1e-12)
    np.testing.assert_allclose(ours.scale_, scaler.scale_, atol=1e-12)
    p_ref = ref.predict_proba(scaler.transform(X_te))
    assert np.abs(ours.predict_proba(X_te) - p_ref).max() < 1e-3
    # coef_ is documented to be in the original feature space: X @ coef_.T + intercept_ are the logits
    logits = X_te @ ours.coef_.T + ours.intercept_
    np.testing.assert_allclose(logits, ours.decision_function(X_te), atol=1e-8)
    np.testing.assert_allclose(ours.coef_, ref.coef_ / scaler.scale_, atol=1e-3)


def test_logreg_float16_input_default_float32(digits):
    X_tr, X_te, y_tr, _ = digits
    ref = LogisticRegression(C=1.0, tol=1e-8, max_iter=5000).fit(X_tr, y_tr)
    ours = LogisticProbe(C=1.0, standardize=False).fit(X_tr.astype(np.float16), y_tr)
    assert ours.decision_function(X_te.astype(np.float16)).dtype == np.float32
    assert np.mean(ours.predict(X_te) == ref.predict(X_te)) >= 0.995
    assert np.abs(ours.predict_proba(X_te) - ref.predict_proba(X_te)).max() < 5e-3


# ---------------------------------------------------------------- choosing C


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 6, 200)
    y_true[y_true == 4] = 2  # class 4 absent from the truth but predicted below
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 6, 200))
    ref = f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro")
    assert _macro_f1(y_true, y_pred, 6) == pytest.approx(ref, abs=1e-12)


def test_stratified_holdout():
    codes = np.repeat(np.arange(5), [1, 2, 5, 10, 23])
    fit_a, val_a = _stratified_holdout(codes, 5, 0.2, np.random.RandomState(3))
    fit_b, val_b = _stratified_holdout(codes, 5, 0.2, np.random.RandomState(3))
    np.testing.assert_array_equal(val_a, val_b)
    assert np.intersect1d(fit_a, val_a).size == 0 and np.union1d(fit_a, val_a).size == codes.size
    # round(0.2 m), at least 1 and at most m - 1; the single-example class is never held out
    np.testing.assert_array_equal(np.bincount(codes[val_a], minlength=5), [0, 1, 1, 2, 5])
    assert set(codes[fit_a]) == set(range(5))


def test_choose_C_reproduces_sklearn_validation_scores(digits):
    X_tr, _, y_tr, _ = digits
    grid = (0.001, 0.01, 0.1, 1.0)
    probe = LogisticProbe(Cs=grid, dtype="float64", tol=1e-8, random_state=7).fit(X_tr, y_tr)
    assert probe.C_ in grid and set(probe.val_scores_) == set(grid)
    assert len(y_tr) >= probe.cv_below and probe.val_folds_ == 1  # 1257 examples: one hold-out
    # recompute every held-out score with scikit-learn on the same split and standardisation
    classes, codes = np.unique(y_tr, return_inverse=True)
    fit_idx, val_idx = _stratified_holdout(codes, len(classes), 0.2, np.random.RandomState(7))
    Z = StandardScaler().fit(X_tr).transform(X_tr)
    expected = {}
    for C in grid:
        ref = LogisticRegression(C=C, tol=1e-8, max_iter=5000).fit(Z[fit_idx], y_tr[fit_idx])
        pred = ref.predict(Z[val_idx])
        expected[C] = f1_score(y_tr[val_idx], pred, labels=np.unique(y_tr[val_idx]), average="macro")
        assert probe.val_scores_[C] == pytest.approx(expected[C], abs=0.005)
    assert probe.C_ == max(grid, key=lambda c: (expected[c], -c))


def test_stratified_folds():
    codes = np.repeat(np.arange(4), [1, 2, 3, 14])
    folds = _stratified_folds(codes, 4, 5, np.random.RandomState(0))
    assert len(folds) == 5
    vals = np.concatenate([v for _, v in folds])
    assert np.sort(vals).tolist() == np.flatnonzero(codes > 0).tolist()  # every example but the single one, once
    for fit, val in folds:
        assert np.intersect1d(fit, val).size == 0 and np.union1d(fit, val).size == codes.size
        assert set(codes[fit]) == {0, 1, 2, 3}  # every class is fitted in every fold
    # the folds are scikit-learn's StratifiedKFold over the classes with two or more examples
    several = np.flatnonzero(codes > 0)
    with pytest.warns(UserWarning, match="least populated class"):  # lifebench's own folds stay quiet
        ref = list(StratifiedKFold(5, shuffle=True, random_state=0).split(several[:, None], codes[several]))
    for (_, val), (_, ref_val) in zip(folds, ref, strict=True):
        np.testing.assert_array_equal(val, several[ref_val])
    assert len(_stratified_folds(codes[codes < 3], 3, 5, np.random.RandomState(0))) == 3  # k <= largest class
    assert _stratified_folds(np.arange(4), 4, 5, np.random.RandomState(0)) == []


def _macro_f1_present(estimator, X, y):
    """lifebench's selection score as a scikit-learn scorer: macro-F1 over the classes in the validation labels."""
    return f1_score(y, estimator.predict(X), labels=np.unique(y), average="macro")


@pytest.mark.parametrize(("binary", "seed"), [(False, 0), (False, 1), (False, 2), (True, 0), (True, 2)])
def test_choose_C_by_kfold_on_small_training_set_equals_logistic_regression_cv(binary, seed):
    """Below cv_below examples C is chosen as LogisticRegressionCV chooses it: the same StratifiedKFold folds, the
    mean validation score per C, ties to the smaller C (argmax over an ascending grid), refit on everything. The
    hold-out on these 165 examples (33 held out, class 0 with 3 examples) chose another C in every case here."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: 3 + 3 * c] for c in range(10)])
    X, y = X[keep] / 16.0, y[keep] % 2 if binary else y[keep]
    grid = (0.003, 0.03, 0.3, 3.0, 30.0)
    probe = LogisticProbe(Cs=grid, dtype="float64", tol=1e-8, random_state=seed).fit(X, y)
    holdout = LogisticProbe(Cs=grid, dtype="float64", tol=1e-8, random_state=seed, cv_below=0).fit(X, y)
    Z = StandardScaler().fit(X).transform(X)  # the probe standardises with all of train, then folds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the least populated class has only 3 members"
        ref = LogisticRegressionCV(
            Cs=list(grid), cv=StratifiedKFold(5, shuffle=True, random_state=seed), scoring=_macro_f1_present,
            tol=1e-8, max_iter=10000, l1_ratios=(0.0,), use_legacy_attributes=False,
        ).fit(Z, y)
    ref_scores = np.asarray(ref.scores_).reshape(5, len(grid)).mean(axis=0)
    assert probe.val_folds_ == 5 and holdout.val_folds_ == 1
    np.testing.assert_allclose([probe.val_scores_[c] for c in grid], ref_scores, atol=1e-12)
    assert probe.C_ == float(np.ravel(ref.C_)[0]) != holdout.C_
    assert fit_info(probe)["val_folds"] == 5
    # the final model is LogisticRegressionCV's refit on all examples
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(Z), atol=1e-4)


def test_choose_C_reproducible_refit_on_all_train_and_accurate(digits):
    X_tr, X_te, y_tr, y_te = digits
    a = LogisticProbe(random_state=0).fit(X_tr, y_tr)
    b = LogisticProbe(random_state=0).fit(X_tr, y_tr)
    assert a.C_ in DEFAULT_CS and len(a.val_scores_) == len(DEFAULT_CS)
    assert a.C_ == b.C_ and a.val_scores_ == b.val_scores_
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert np.mean(a.predict(X_te) == y_te) >= 0.95
    # the final model is the fit of all of train at the chosen C ...
    full = LogisticProbe(C=a.C_, dtype="float32").fit(X_tr, y_tr)
    np.testing.assert_allclose(a.predict_proba(X_te), full.predict_proba(X_te), atol=2e-3)
    # ... not the model of the fitting part alone
    classes, codes = np.unique(y_tr, return_inverse=True)
    fit_idx, _ = _stratified_holdout(codes, len(classes), 0.2, np.random.RandomState(0))
    part = LogisticProbe(C=a.C_).fit(X_tr[fit_idx], y_tr[fit_idx])
    assert np.abs(part.predict_proba(X_te) - a.predict_proba(X_te)).max() > 1e-2
    info = json.loads(json.dumps(fit_info(a)))
    assert info["C"] == a.C_ and info["C_selected"] is True and info["n_iter"] == a.n_iter_
    assert info["val_scores"] == {repr(c): s for c, s in a.val_scores_.items()}


def test_choose_C_with_a_single_example_class(digits, caplog):
    X_tr, X_te, y_tr, _ = digits
    keep = np.concatenate([np.flatnonzero(y_tr != 9), np.flatnonzero(y_tr == 9)[:1]])
    with caplog.at_level(logging.WARNING, logger="lifebench.protocols.logreg"):
        probe = LogisticProbe(Cs=(0.01, 0.1, 1.0)).fit(X_tr[keep], y_tr[keep])
    assert "1 of 10 classes have a single training example" in caplog.text
    assert probe.C_ in (0.01, 0.1, 1.0)
    assert list(probe.classes_) == list(range(10)) and probe.predict_proba(X_te).shape == (len(X_te), 10)


def test_choose_C_with_nothing_to_hold_out(caplog):
    X = np.random.default_rng(0).normal(size=(4, 3))
    with caplog.at_level(logging.WARNING, logger="lifebench.protocols.logreg"):
        probe = LogisticProbe(Cs=(0.01, 3.0, 30.0)).fit(X, ["a", "b", "c", "d"])
    assert "nothing can be held out" in caplog.text
    assert probe.C_ == 3.0 and probe.val_scores_ == {}  # the grid value nearest 1 (log scale)


def test_logreg_fewer_rows_than_features_matches_sklearn():
    """n < D is solved in row-space coordinates; the model must still be scikit-learn's."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(45, 120)) + rng.normal(size=120)
    y = np.arange(45) % 3
    X[:, :3] += 1.5 * np.eye(3)[y]
    X_te = rng.normal(size=(30, 120))
    for labels in (y, (y == 1).astype(int)):
        ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(X, labels)
        ours = LogisticProbe(C=0.5, standardize=False, dtype="float64", tol=1e-10).fit(X, labels)
        np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-4)
        np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-4)
        np.testing.assert_allclose(ours.predict_proba(X_te), ref.predict_proba(X_te), atol=2e-5)


def test_lbfgs_batch_equals_problems_solved_alone(digits):
    """Problems solved together (with early finishers dropped from the batch) equal each one solved alone."""
    X_tr, _, y_tr, _ = digits
    Z = torch.as_tensor(StandardScaler().fit_transform(X_tr))
    parts = [np.flatnonzero(y_tr < 5), np.flatnonzero(y_tr >= 5)]  # two 5-class tasks, different rows
    Zs = [Z[torch.as_tensor(i)] for i in parts]
    codes = [y_tr[i] % 5 for i in parts]
    weights = [np.ones(i.size) for i in parts]
    k = 5
    Cs = np.array([[0.01, 1.0, 100.0], [0.1, 3.0, 30.0]])
    design = logreg._design(Zs, codes, weights, k)
    lam = torch.as_tensor(1.0 / (Cs * design.totals[:, None]))
    together = logreg._lbfgs(
        logreg._Objective(design.Z, design.y, design.w, lam, False),
        torch.zeros(2, 3, k, 65, dtype=torch.float64),
        500,
        1e-9,
    )
    assert len(set(together.n_iter.ravel().tolist())) > 1  # they stopped at different iterations
    for t in range(2):
        for s in range(3):
            one = logreg._design([Zs[t]], [codes[t]], [weights[t]], k)
            alone = logreg._lbfgs(
                logreg._Objective(one.Z, one.y, one.w, lam[t : t + 1, s : s + 1], False),
                torch.zeros(1, 1, k, 65, dtype=torch.float64),
                500,
                1e-9,
            )
            # identical iterations up to rounding (batched products sum in another order), which the weakly
            # regularised problems amplify a little
            np.testing.assert_allclose(together.theta[t, s], alone.theta[0, 0], atol=1e-4)
            # near the tolerance that rounding can cost an iteration or two (154 vs 152 seen on 500-step budgets)
            assert abs(int(together.n_iter[t, s]) - int(alone.n_iter[0, 0])) <= max(2, 0.02 * int(alone.n_iter[0, 0]))


def test_choose_C_path_equals_batched_grid(digits, monkeypatch):
    """A large task walks the grid warm-started; it must choose as the batched grid does."""
    X_tr, X_te, y_tr, _ = digits
    grid = (0.001, 0.01, 0.1, 1.0, 10.0)
    batched = LogisticProbe(Cs=grid, dtype="float64", tol=1e-9, random_state=2).fit(X_tr, y_tr)
    monkeypatch.setattr(logreg, "_PATH_MACS", 0)
    path = LogisticProbe(Cs=grid, dtype="float64", tol=1e-9, random_state=2).fit(X_tr, y_tr)
    assert path.C_ == batched.C_
    # the path screens every C at tol 1e-4 and polishes its two best (and any within 0.005) to tol: those score
    # as exact fits,
    # the others as the screen saw them (within a few held-out predictions)
    exact = [c for c in grid if path.val_scores_[c] == pytest.approx(batched.val_scores_[c], abs=0.003)]
    assert path.C_ in exact and len(exact) >= 2
    for c in grid:
        assert path.val_scores_[c] == pytest.approx(batched.val_scores_[c], abs=0.02)
    # two solvers stopped at tol 1e-9 from different starts: probabilities agree to a few 1e-5
    np.testing.assert_allclose(path.predict_proba(X_te), batched.predict_proba(X_te), atol=5e-5)


@pytest.mark.parametrize("seed", range(5))
def test_screened_path_chooses_as_exact_path(digits, monkeypatch, seed):
    """The path screens at tol 1e-4 and polishes the best-screened C values; on five hold-out seeds it chooses the C
    that fitting every grid value to tol chooses, and the same final model."""
    X_tr, X_te, y_tr, _ = digits
    monkeypatch.setattr(logreg, "_PATH_MACS", 0)
    # float64 and tol 1e-8: in float32 near-separable large-C fits stop where their start leads them, and their
    # held-out scores then differ by a prediction or two whatever the search does
    screened = LogisticProbe(random_state=seed, dtype="float64", tol=1e-8).fit(X_tr, y_tr)
    monkeypatch.setattr(logreg, "_SELECT_TOL", 0.0)  # no screen (tol < 0 never holds): every C fit to tol
    exact = LogisticProbe(random_state=seed, dtype="float64", tol=1e-8).fit(X_tr, y_tr)
    assert screened.C_ == exact.C_
    assert screened.val_scores_[screened.C_] == pytest.approx(exact.val_scores_[exact.C_], abs=0.003)
    assert np.mean(screened.predict(X_te) == exact.predict(X_te)) >= 0.995


def test_lbfgs_monitor_drops_problems_and_leaves_the_rest(digits):
    """A monitor may stop a problem mid-run ("dropped", used for out-of-reach C values in the polish); the other
    problems of the batch go on exactly as without it."""
    X_tr, _, y_tr, _ = digits
    design = logreg._design([torch.as_tensor(StandardScaler().fit_transform(X_tr))], [y_tr], [np.ones(y_tr.size)], 10)
    lam = torch.as_tensor(1.0 / (np.array([[0.1, 10.0]]) * design.totals[:, None]))
    fun = logreg._Objective(design.Z, design.y, design.w, lam, False)
    theta0 = torch.zeros(1, 2, 10, 65, dtype=torch.float64)
    plain = logreg._lbfgs(fun, theta0, 500, 1e-8)
    seen = []

    def drop_second(theta, running):
        seen.append(running.clone())
        return np.array([[False, True]])

    watched = logreg._lbfgs(fun, theta0, 500, 1e-8, monitor=drop_second, every=5)
    assert seen[0].tolist() == [[True, True]]
    assert logreg._REASONS[watched.reason[0, 1]] == "dropped" and watched.n_iter[0, 1] == 5
    assert logreg._REASONS[watched.reason[0, 0]] != "dropped" and plain.n_iter[0, 1] > 5
    np.testing.assert_allclose(watched.theta[0, 0], plain.theta[0, 0], atol=1e-4)


def test_low_precision_phase_ends_at_the_float_fit(digits, monkeypatch, caplog):
    """A large fit to tol runs its first iterations on bfloat16 products, then finishes in its own precision:
    it ends at the same solution as a fit without the low-precision phase."""
    X_tr, X_te, y_tr, _ = digits
    monkeypatch.setattr(logreg, "_PATH_MACS", 0)
    monkeypatch.setattr(logreg, "_low_precision", lambda device: None)
    plain = LogisticProbe(C=1.0, dtype="float64", tol=1e-8).fit(X_tr, y_tr)
    monkeypatch.setattr(logreg, "_low_precision", lambda device: torch.bfloat16)
    with caplog.at_level(logging.DEBUG, logger="lifebench.protocols.logreg"):
        mixed = LogisticProbe(C=1.0, dtype="float64", tol=1e-8).fit(X_tr, y_tr)
    assert "low-precision phase" in caplog.text
    np.testing.assert_allclose(mixed.predict_proba(X_te), plain.predict_proba(X_te), atol=1e-4)
    assert np.mean(mixed.predict(X_te) == plain.predict(X_te)) >= 0.995


# ---------------------------------------------------------------- many binary tasks at once


@pytest.fixture(scope="module")
def binary_tasks(digits):
    """Five one-vs-one digit tasks on shared features, each with its own (overlapping) training rows."""
    X_tr, X_te, y_tr, y_te = digits
    rng = np.random.default_rng(0)
    tasks, tests = [], []
    for a, b in [(3, 8), (1, 7), (4, 9), (0, 6), (5, 8)]:
        rows = np.flatnonzero(np.isin(y_tr, [a, b]))
        rows = np.sort(rng.choice(rows, size=int(0.8 * rows.size), replace=False))
        tasks.append((rows, np.where(y_tr[rows] == a, "yes", "no")))
        tests.append(np.isin(y_te, [a, b]))
    return X_tr, X_te, tasks, tests


@pytest.mark.parametrize("standardize", [False, True])
def test_fit_many_binary_matches_sklearn_per_task(binary_tasks, standardize):
    X_tr, X_te, tasks, tests = binary_tasks
    # one task as a boolean mask: the same rows
    mask = np.zeros(len(X_tr), dtype=bool)
    mask[tasks[2][0]] = True
    given = [tasks[0], tasks[1], (mask, tasks[2][1]), tasks[3], tasks[4]]
    probes = fit_many_binary(X_tr, given, C=0.3, standardize=standardize, dtype="float64", tol=1e-9)
    assert len(probes) == len(tasks)
    for probe, (rows, labels), test in zip(probes, tasks, tests, strict=True):
        scaler = StandardScaler(with_mean=standardize, with_std=standardize).fit(X_tr[rows])
        ref = LogisticRegression(C=0.3, tol=1e-10, max_iter=10000).fit(scaler.transform(X_tr[rows]), labels)
        assert list(probe.classes_) == ["no", "yes"] and probe.C_ == 0.3
        Xq = X_te[test]
        np.testing.assert_allclose(
            probe.predict_proba(Xq), ref.predict_proba(scaler.transform(Xq)), atol=1e-5
        )
        np.testing.assert_array_equal(probe.predict(Xq), ref.predict(scaler.transform(Xq)))


def test_fit_many_binary_choosing_C_equals_one_probe_per_task(binary_tasks):
    X_tr, X_te, tasks, tests = binary_tasks
    grid = (0.001, 0.01, 0.1, 1.0, 10.0)
    probes = fit_many_binary(X_tr, tasks, Cs=grid, class_weight="balanced", random_state=4)
    for probe, (rows, labels), test in zip(probes, tasks, tests, strict=True):
        alone = LogisticProbe(Cs=grid, class_weight="balanced", random_state=4).fit(X_tr[rows], labels)
        assert probe.C_ == alone.C_
        assert probe.val_scores_ == pytest.approx(alone.val_scores_, abs=1e-9)
        np.testing.assert_allclose(
            probe.predict_proba(X_te[test]), alone.predict_proba(X_te[test]), atol=2e-3
        )
        assert fit_info(probe) == {**fit_info(alone), "n_iter": probe.n_iter_}


def test_fit_many_binary_errors(binary_tasks):
    X_tr, _, tasks, _ = binary_tasks
    rows = np.arange(30)
    with pytest.raises(DataError, match="task 1 has 3 classes"):
        fit_many_binary(X_tr, [tasks[0], (rows, rows % 3)])
    with pytest.raises(DataError, match=r"task 0: row indices must lie in \[0, "):
        fit_many_binary(X_tr, [(np.array([0, len(X_tr)]), [0, 1])])
    with pytest.raises(DataError, match="task 0: a boolean row mask must have length"):
        fit_many_binary(X_tr, [(np.ones(3, dtype=bool), [0, 1, 0])])
    with pytest.raises(DataError, match="2 labels for 3 examples"):
        fit_many_binary(X_tr, [(np.arange(3), [0, 1])])
    with pytest.raises(ConfigError, match="unknown LogisticProbe parameters"):
        fit_many_binary(X_tr, tasks, c=1.0)
    with pytest.raises(ConfigError, match="C=-1"):
        fit_many_binary(X_tr, tasks, C=-1)
    assert fit_many_binary(X_tr, []) == []


# ---------------------------------------------------------------- SimpleShot and kNN


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=2.0, size=(4, 12))
    y = rng.integers(0, 4, 240)
    X = centres[y] + rng.normal(size=(240, 12)) + 3.0
    return X[:160], y[:160], X[160:], y[160:]


def test_simpleshot_matches_nearest_centroid(blobs):
    X, y, Xq, _ = blobs
    ss = SimpleShot(dtype="float64").fit(X, y)
    mean = X.mean(0)

    def cl2n(A):
        return (A - mean) / np.linalg.norm(A - mean, axis=1, keepdims=True)

    np.testing.assert_allclose(ss.mean_, mean, atol=1e-12)
    np.testing.assert_allclose(ss.transform(Xq), cl2n(Xq), atol=1e-12)
    ref = NearestCentroid().fit(cl2n(X), y)
    np.testing.assert_allclose(ss.centroids_, ref.centroids_, atol=1e-12)
    np.testing.assert_array_equal(ss.predict(Xq), ref.predict(cl2n(Xq)))
    np.testing.assert_allclose(ss.decision_function(Xq), -cdist(cl2n(Xq), ref.centroids_), atol=1e-6)
    ss32 = SimpleShot().fit(X, y)
    assert np.mean(ss32.predict(Xq) == ref.predict(cl2n(Xq))) == 1.0


# BioCLIP's few-shot evaluation, Imageomics/bioclip @ 4ea3247, src/evaluation/few_shot.py, re-implemented here
# line for line (the module cannot be imported: it needs BioCLIP's training package). ``run`` L2-normalises the
# features; ``__main__`` groups them per class in data order; ``split`` shuffles each class in place after
# random.seed(fold); ``get_acc`` applies CL2N and 1-NN to class centroids.


def _bioclip_select(features, target):  # few_shot.py __main__: the per-class lists, classes by first appearance
    select = {}
    for idx in range(len(features)):
        cat = target[idx]
        select.setdefault(cat, {"feature": [], "sample": []})
        select[cat]["feature"].append(features[idx])
        select[cat]["sample"].append(idx)
    return select


def _bioclip_split(select, kshot, nfold):  # few_shot.py split()
    import random

    test, target, train, label = [], [], [], []
    random.seed(nfold)
    for k, v in select.items():
        random.shuffle(v["feature"])
        train.append(v["feature"][:kshot])
        test += v["feature"][kshot:]
        label += [k for _ in range(kshot)]
        target += [k for _ in range(len(v["feature"]) - kshot)]
    return np.vstack(train), np.array(label), test, target


def _bioclip_cl2n(x_flatten, x_mean):  # few_shot.py CL2N()
    x_flatten = x_flatten - x_mean
    return x_flatten / np.linalg.norm(x_flatten, 2, 1)[:, None]


def _bioclip_predict(flatten_train, label, test, n_class, kshot):  # few_shot.py get_acc(), up to the prediction
    train_mean = flatten_train.mean(axis=0)
    flatten_train = _bioclip_cl2n(flatten_train, train_mean)
    test = _bioclip_cl2n(np.asarray(test), train_mean)
    train_center = flatten_train.reshape(n_class, kshot, flatten_train.shape[-1]).mean(1)
    label = label[::kshot]
    distance = np.linalg.norm(train_center[:, None, :] - test, 2, axis=-1)
    idx = np.argpartition(distance, 1, axis=0)[:1]
    return np.take(label, idx)[0]  # scipy's mode of one neighbour is that neighbour


def test_few_shot_is_bioclips_classifier_and_draw_on_features_of_varying_norm():
    """``few-shot`` = BioCLIP's few_shot.py on the same features: the same support images for every (k, fold) of
    its published run (--kshot_list 1 5 --nfold 5) and 100% the same predictions, on features whose norms vary
    0.3-3x; plain SimpleShot (the old ``few-shot``) predicts differently there."""
    from lifebench.protocols.simpleshot import BioCLIPFewShot
    from lifebench.tasks.base import bioclip_support

    rng = np.random.default_rng(7)
    n_class, per_class, dim = 12, 20, 24
    centres = rng.normal(size=(n_class, dim)) + 2.0  # a shared offset: centring matters
    y = np.repeat(np.arange(n_class), per_class)
    order = rng.permutation(len(y))  # data order mixes the classes, as a metadata CSV may
    y = y[order]
    X = (centres[y] + 1.2 * rng.normal(size=(len(y), dim))) * rng.uniform(0.3, 3.0, size=(len(y), 1))
    feats = X / np.linalg.norm(X, axis=1, keepdims=True)  # run(): F.normalize(image_features, dim=-1)
    select = _bioclip_select(list(np.arange(len(y))), y)  # carry row numbers: the draw only sees list lengths
    assert isinstance(make_protocol("few-shot"), BioCLIPFewShot) and type(make_protocol("simpleshot")) is SimpleShot
    agree, changed = [], 0
    for kshot in (1, 5):
        for n in range(5):
            rows_train, label, rows_test, target = _bioclip_split(select, kshot, n)
            rows_train = rows_train.reshape(-1)
            ours_support = bioclip_support(y.astype(str), kshot, n)
            assert sorted(ours_support.tolist()) == sorted(rows_train.tolist())  # the same support images
            theirs = _bioclip_predict(feats[rows_train], label, feats[np.asarray(rows_test)], n_class, kshot)
            est = make_protocol("few-shot", dtype="float64").fit(X[rows_train], y[rows_train])
            ours = est.predict(X[np.asarray(rows_test)])
            agree.append(np.mean(ours == theirs))
            np.testing.assert_allclose(est.mean_, feats[rows_train].mean(0), atol=1e-12)
            old = SimpleShot(dtype="float64").fit(X[rows_train], y[rows_train]).predict(X[np.asarray(rows_test)])
            changed += int((old != theirs).sum())
            assert np.mean(ours == np.asarray(target)) > 1 / n_class  # it learns something
    assert agree == [1.0] * 10
    # without the first normalisation, predictions differ: on 891 of the 2,040 queries (docs/treeoflife.md quotes it)
    assert changed == 891
    f32 = make_protocol("few-shot").fit(X[rows_train], y[rows_train])
    assert np.mean(f32.predict(X[np.asarray(rows_test)]) == theirs) == 1.0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_knn_matches_sklearn(blobs, metric, weights):
    X, y, Xq, _ = blobs
    ours = KNN(n_neighbors=5, metric=metric, weights=weights, batch_size=32).fit(X, y)
    ref = KNeighborsClassifier(n_neighbors=5, metric=metric, weights=weights, algorithm="brute").fit(X, y)
    d_ours, i_ours = ours.kneighbors(Xq)
    d_ref, i_ref = ref.kneighbors(Xq)
    np.testing.assert_array_equal(i_ours, i_ref)
    np.testing.assert_allclose(d_ours, d_ref, rtol=1e-5, atol=1e-6)
    p_ref = ref.predict_proba(Xq)
    np.testing.assert_allclose(ours.predict_proba(Xq), p_ref, atol=1e-5)
    np.testing.assert_allclose(ours.decision_function(Xq), p_ref, atol=1e-5)
    top2 = np.sort(p_ref, axis=1)[:, -2:]
    untied = top2[:, 1] - top2[:, 0] > 1e-6
    assert untied.sum() >= 60
    np.testing.assert_array_equal(ours.predict(Xq)[untied], ref.predict(Xq)[untied])


def test_knn_tie_goes_to_the_nearer_neighbour():
    X = np.array([[0.1], [0.2], [5.0]])
    y = np.array(["b", "a", "a"])
    knn = KNN(n_neighbors=2, metric="euclidean").fit(X, y)
    # one vote each for "a" and "b"; "b" is nearer to 0 and nearer "a" to 0.3
    assert list(knn.predict([[0.0], [0.3]])) == ["b", "a"]
    np.testing.assert_allclose(knn.decision_function([[0.0]]), [[0.5, 0.5]])


def test_knn_distance_weights_exact_match_takes_all_weight():
    X = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    knn = KNN(n_neighbors=3, metric="euclidean", weights="distance").fit(X, [1, 2, 2, 1])
    ref = KNeighborsClassifier(n_neighbors=3, weights="distance", algorithm="brute").fit(X, [1, 2, 2, 1])
    np.testing.assert_allclose(knn.predict_proba([[0.0, 1.0]]), ref.predict_proba([[0.0, 1.0]]))


# ---------------------------------------------------------------- estimator basics, shared helpers


PROTOCOL_INSTANCES = [
    LogisticProbe(C=0.5, max_iter=200),
    LogisticProbe(Cs=(0.1, 1.0)),
    SimpleShot(),
    KNN(n_neighbors=3),
]


@pytest.mark.parametrize("est", PROTOCOL_INSTANCES, ids=lambda e: type(e).__name__)
def test_sklearn_basics_and_string_labels(blobs, est):
    X, y, Xq, _ = blobs
    names = np.array(["owl", "bee", "fern", "moss"])
    params = est.get_params()
    twin = clone(est)
    assert twin.get_params() == params and twin is not est
    assert clone(est).set_params(**params).get_params() == params
    with pytest.raises(NotFittedError):
        twin.predict(Xq)
    with pytest.raises(NotFittedError):
        twin.decision_function(Xq)
    fitted = twin.fit(X.astype(np.float32), names[y])
    assert fitted is twin
    assert list(twin.classes_) == sorted(names)
    scores = twin.decision_function(Xq)
    assert scores.shape == (len(Xq), 4)
    pred = twin.predict(Xq)
    assert set(pred) <= set(names)
    assert np.mean(pred == twin.classes_[scores.argmax(1)]) >= 0.95  # kNN may break vote ties differently
    assert twin.score(Xq, names[blobs[3]]) > 0.8
    assert json.loads(json.dumps(fit_info(twin))) == fit_info(twin)
    with pytest.raises(DataError, match="columns"):
        twin.predict(Xq[:, :5])


@pytest.mark.parametrize("cls", [LogisticProbe, SimpleShot, KNN])
def test_bad_data_raises_data_error(cls):
    X = np.random.default_rng(0).normal(size=(10, 3))
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        cls().fit(bad, np.arange(10) % 2)
    with pytest.raises(DataError, match="9 labels for 10 examples"):
        cls().fit(X, np.arange(9))
    with pytest.raises(DataError, match="2-D"):
        cls().fit(X[0], [0, 1, 0])
    if cls is not KNN:  # a one-class kNN is well defined
        with pytest.raises(DataError, match="at least two"):
            cls().fit(X, np.zeros(10))


def test_top_k_ranks_by_score_then_column():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(top_k(scores, 2), [[1, 2], [0, 1]])
    np.testing.assert_array_equal(top_k(torch.tensor(scores), 5), [[1, 2, 0], [0, 1, 2]])
    rnd = np.random.default_rng(0).normal(size=(20, 8))
    np.testing.assert_array_equal(top_k(rnd, 3), np.argsort(-rnd, axis=1)[:, :3])
    with pytest.raises(ConfigError):
        top_k(scores, 0)


# ---------------------------------------------------------------- registry, make_protocol, devices


def test_registry_and_make_protocol():
    assert PROTOCOLS.names() == ["few-shot", "knn", "logreg", "openset", "reid", "simpleshot", "zero-shot"]
    assert all(PROTOCOLS.help(n) for n in PROTOCOLS)
    est = make_protocol("logreg", C=0.1, class_weight="balanced")
    assert isinstance(est, LogisticProbe) and est.C == 0.1 and est.class_weight == "balanced"
    assert isinstance(make_protocol("knn", n_neighbors=1), KNN)
    assert isinstance(make_protocol("simpleshot"), SimpleShot)


def test_make_protocol_errors():
    with pytest.raises(UnknownNameError, match="did you mean 'logreg'"):
        make_protocol("logrg")
    with pytest.raises(ConfigError, match=r"no parameter 'k'.*n_neighbors"):
        make_protocol("knn", k=3)
    with pytest.raises(ConfigError, match=r"no parameter 'c'; did you mean 'C'\?"):
        make_protocol("logreg", c=1.0)
    with pytest.raises(ConfigError, match="C=-1"):
        make_protocol("logreg", C=-1)
    with pytest.raises(ConfigError, match="metric='manhattan'"):
        make_protocol("knn", metric="manhattan")
    with pytest.raises(ConfigError, match="dtype"):
        make_protocol("simpleshot", dtype="float16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_missing_is_a_config_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        make_protocol("knn", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["logreg", "simpleshot", "knn"])
def test_cuda_matches_cpu(blobs, name):
    X, y, Xq, _ = blobs
    cpu = make_protocol(name, dtype="float64").fit(X, y)
    gpu = make_protocol(name, dtype="float64", device="cuda").fit(X, y)
    np.testing.assert_array_equal(cpu.predict(Xq), gpu.predict(Xq))
    np.testing.assert_allclose(cpu.decision_function(Xq), gpu.decision_function(Xq), atol=1e-4)
