"""Point metrics against scikit-learn; resampled metrics against a Python loop over resamples."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, top_k_accuracy_score

from lifebench.errors import ConfigError, DataError, UnknownNameError
from lifebench.metrics import (
    METRICS,
    Metric,
    accuracy,
    accuracy_resampled,
    balanced_accuracy,
    balanced_accuracy_resampled,
    get_metric,
    macro_f1,
    macro_f1_resampled,
    resample_indices,
    top_k_accuracy,
    top_k_accuracy_resampled,
)
from lifebench.metrics import classification as clf

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def labelled(draw: st.DrawFn, max_n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred): imbalanced classes, classes missing from y_true, predictions of unseen classes."""
    n = draw(st.integers(1, max_n))
    n_classes = draw(st.integers(1, 8))
    if draw(st.booleans()):
        # Free-form lists: hypothesis shrinks these to minimal edge cases.
        y_true = draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n))
        y_pred = draw(st.lists(st.integers(0, n_classes + 1), min_size=n, max_size=n))
        return np.array(y_true, dtype=np.int64), np.array(y_pred, dtype=np.int64)
    # Generative: zero weights drop classes, skewed weights make rare ones; predictions mostly right.
    weights = np.array(draw(st.lists(st.integers(0, 20), min_size=n_classes, max_size=n_classes)), float)
    weights[draw(st.integers(0, n_classes - 1))] += 1.0
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    y_true = rng.choice(n_classes, size=n, p=weights / weights.sum())
    correct = rng.random(n) < draw(st.floats(0.0, 1.0))
    y_pred = np.where(correct, y_true, rng.integers(0, n_classes + 2, size=n))
    dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8]))
    return y_true.astype(dtype), y_pred.astype(dtype)


@st.composite
def ranked(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(y_true, scores, topk, k) with topk the classes sorted by descending score, K >= k columns."""
    n = draw(st.integers(1, 50))
    n_classes = draw(st.integers(3, 10))
    k = draw(st.integers(1, n_classes))
    n_cols = draw(st.integers(k, n_classes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    weights = rng.dirichlet(np.full(n_classes, 0.3))
    y_true = rng.choice(n_classes, size=n, p=weights)
    scores = rng.random((n, n_classes))
    scores[np.arange(n), y_true] += rng.random(n)  # informative but imperfect scores
    topk = np.argsort(-scores, axis=1)[:, :n_cols]
    return y_true, scores, topk, k


# ------------------------------------------------------------------------------------------------------
# point metrics vs scikit-learn


@SETTINGS
@given(labelled())
def test_point_metrics_match_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    y_true, y_pred = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from y_true
        ref_bal = balanced_accuracy_score(y_true, y_pred)
        ref_f1 = f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)
    assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(ref_bal, abs=1e-12)
    assert macro_f1(y_true, y_pred) == pytest.approx(ref_f1, abs=1e-12)


@SETTINGS
@given(ranked())
def test_top_k_matches_sklearn(data: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> None:
    y_true, scores, topk, k = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k >= n_classes warns "perfect score"
        ref = top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(scores.shape[1]))
    assert top_k_accuracy(y_true, topk, k) == pytest.approx(ref, abs=1e-12)


def test_macro_f1_averages_only_classes_in_y_true() -> None:
    # class 0: tp=1, support=2, predicted=1 -> F1 = 2/3; class 1: F1 = 1; class 2 is only predicted.
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 1, 1])
    assert macro_f1(y_true, y_pred) == pytest.approx((2 / 3 + 1) / 2)
    # sklearn's default label set (union of y_true and y_pred) would also average class 2's F1 of 0.
    assert f1_score(y_true, y_pred, average="macro") == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx((0.5 + 1.0) / 2)


def test_top_k_hand_example() -> None:
    y_true = np.array([2, 0, 1])
    topk = np.array([[2, 1], [1, 0], [0, 2]])
    assert top_k_accuracy(y_true, topk, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(y_true, topk, 2) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------------
# resampled metrics vs a loop over rows of idx

PAIRS = [
    (accuracy, accuracy_resampled),
    (balanced_accuracy, balanced_accuracy_resampled),
    (macro_f1, macro_f1_resampled),
]


@SETTINGS
@given(labelled(), st.integers(1, 12), st.integers(0, 2**32 - 1), st.booleans())
def test_resampled_equals_loop(
    data: tuple[np.ndarray, np.ndarray], n_resamples: int, seed: int, same_m: bool
) -> None:
    y_true, y_pred = data
    n = y_true.size
    m = n if same_m else 1 + seed % 7  # m-out-of-n resamples work too
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, m))
    for point_fn, resampled_fn in PAIRS:
        got = resampled_fn(y_true, y_pred, idx)
        want = np.array([point_fn(y_true[row], y_pred[row]) for row in idx])
        assert got.shape == (n_resamples,) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=resampled_fn.__name__)


@SETTINGS
@given(ranked(), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_top_k_resampled_equals_loop(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, int], n_resamples: int, seed: int
) -> None:
    y_true, _, topk, k = data
    idx = resample_indices(y_true.size, n_resamples, seed)
    got = top_k_accuracy_resampled(y_true, topk, idx, k)
    want = np.array([top_k_accuracy(y_true[row], topk[row], k) for row in idx])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_resampled_in_small_chunks_is_exact_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    n, n_resamples, n_classes = 2000, 300, 12
    y_true = rng.integers(0, n_classes, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, n_classes, n))
    idx = resample_indices(n, n_resamples, seed=3)
    unchunked = {fn.__name__: fn(y_true, y_pred, idx) for _, fn in PAIRS}

    monkeypatch.setattr(clf, "_CHUNK_ELEMENTS", 5 * n)  # 5 resamples per chunk, 60 chunks
    for point_fn, resampled_fn in PAIRS:
        tracemalloc.start()
        got = resampled_fn(y_true, y_pred, idx)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(got, unchunked[resampled_fn.__name__])
        want = np.array([point_fn(y_true[row], y_pred[row]) for row in idx[::37]])
        np.testing.assert_allclose(got[::37], want, rtol=0, atol=1e-12)
        # All-at-once temporaries would be ~ 4 arrays x 8 bytes x 600k entries = 19 MB; chunks ~ 0.3 MB.
        assert peak < 2_000_000, (resampled_fn.__name__, peak)


# ------------------------------------------------------------------------------------------------------
# registry and errors


def test_registry_names_and_lookup() -> None:
    assert METRICS.names() == ["accuracy", "balanced_accuracy", "fungiclef_score", "macro_f1", "mean_ap",
                               "top1_accuracy", "top5_accuracy", "trait_macro_f1"]
    top5 = get_metric("top5_accuracy")
    assert isinstance(top5, Metric) and top5.needs == "topk" and top5.higher_is_better
    y_true = np.array([0, 1, 2, 3, 4, 5])
    topk = np.tile(np.arange(6), (6, 1))  # every row ranks 0..5, so classes 0-4 are in the top 5
    assert top5.fn(y_true, topk) == pytest.approx(5 / 6)
    np.testing.assert_allclose(top5.resampled_fn(y_true, topk, np.array([[5, 5], [0, 5]])), [0.0, 0.5])
    f1 = get_metric("macro_f1")
    assert f1.needs == "pred" and f1.fn is macro_f1 and f1.resampled_fn is macro_f1_resampled


def test_unknown_metric_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError, match="macro_f1"):
        get_metric("macro-f1")


def test_metric_rejects_bad_needs() -> None:
    with pytest.raises(ConfigError, match="needs"):
        Metric("x", accuracy, accuracy_resampled, needs="logits")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([0, 1], [0], "one prediction per test example"),
        ([], [], "empty"),
        ([0.0, 1.0], [0, 1], "integer class codes"),
        ([0, -1], [0, 1], "negative"),
        ([[0, 1]], [[0, 1]], "1-D"),
    ],
)
def test_bad_labels_raise_data_error(y_true: list, y_pred: list, message: str) -> None:
    with pytest.raises(DataError, match=message):
        macro_f1(y_true, y_pred)


def test_bad_inputs_for_resampled_and_topk() -> None:
    y = np.array([0, 1, 1])
    with pytest.raises(DataError, match="test set has 3 examples"):
        accuracy_resampled(y, y, np.array([[0, 3]]))
    with pytest.raises(DataError, match="test set has 3 examples"):
        macro_f1_resampled(y, y, np.array([[0, -1]]))
    with pytest.raises(DataError, match="shape"):
        macro_f1_resampled(y, y, np.array([0, 1]))
    with pytest.raises(DataError, match="at least 5 ranked predictions"):
        top_k_accuracy(y, np.zeros((3, 2), dtype=int), 5)
    with pytest.raises(ConfigError, match="positive integer"):
        top_k_accuracy(y, np.zeros((3, 2), dtype=int), 0)


def test_resample_counts_give_the_same_resamples_as_the_index_matrix() -> None:
    from lifebench.metrics import METRICS, ResampleCounts, resample_indices

    rng = np.random.default_rng(3)
    n, C = 700, 12
    y = rng.integers(0, C, n)
    pred = np.where(rng.random(n) < 0.5, y, rng.integers(0, C + 2, n))  # some predicted classes never true
    topk = np.stack([pred, *(rng.integers(0, C, n) for _ in range(4))], axis=1)
    idx = resample_indices(n, 200, 5)
    counts = ResampleCounts(idx)
    ap = np.where(rng.random(n) < 0.1, np.nan, rng.random(n))[:, None]  # NaN: a query with nothing to find
    costs = np.stack([rng.random(n), 1 + rng.random(n)], axis=1)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy", "top1_accuracy", "mean_ap",
                 "fungiclef_score"):
        metric = METRICS.get(name)
        arg = {"topk": topk, "extra:ap": ap, "extra:cost,worst": costs}.get(metric.needs, pred)
        np.testing.assert_allclose(metric.resampled_fn(y, arg, counts), metric.resampled_fn(y, arg, idx),
                                   rtol=0, atol=1e-12, err_msg=name)
    assert counts.counts(n).sum(axis=0).tolist() == [n] * 200  # each resample holds n draws


@pytest.mark.parametrize("block_elements", [None, 2000])  # 2000: the models go through in blocks of one
def test_many_models_at_once_give_each_models_own_resamples_and_intervals(block_elements, monkeypatch) -> None:
    from lifebench.metrics import (
        METRICS,
        ResampleCounts,
        bootstrap_ci,
        bootstrap_many,
        classification,
        resample_indices,
    )

    if block_elements:
        monkeypatch.setattr(classification, "_CHUNK_ELEMENTS", block_elements)

    rng = np.random.default_rng(11)
    n, C = 900, 40
    y = np.sort(rng.integers(0, C, n))[rng.permutation(n)]
    y[y == 7] = 8  # class 7 never true
    preds = [np.where(rng.random(n) < q, y, rng.integers(0, C + 3, n)) for q in (0.1, 0.5, 0.9, 1.0)]
    preds.append(np.full(n, C + 2))  # every prediction wrong, of a class that is never true
    topks = [np.stack([p, *(rng.integers(0, C, n) for _ in range(4))], axis=1) for p in preds]
    idx = resample_indices(n, 300, 2)
    counts = ResampleCounts(idx)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy"):
        metric = METRICS.get(name)
        args = topks if metric.needs == "topk" else preds
        many = metric.resampled_many_fn(y, args, counts)
        assert many.shape == (len(args), 300)
        for i, arg in enumerate(args):  # each row equals that model alone on the index matrix
            np.testing.assert_allclose(many[i], metric.resampled_fn(y, arg, idx), rtol=0, atol=1e-12,
                                       err_msg=f"{name}, model {i}")
        for got, want in zip(bootstrap_many(metric, y, args, counts), (bootstrap_ci(metric, y, a, idx) for a in args),
                             strict=True):
            assert (got.point, got.low, got.high, got.acceleration) == pytest.approx(
                (want.point, want.low, want.high, want.acceleration), abs=1e-12)
    assert METRICS.get("macro_f1").resampled_many_fn(y, preds[3:4], counts)[0].tolist() == [1.0] * 300
    assert bootstrap_many("macro_f1", y, [], counts) == []
