"""Classification metrics on integer-coded labels ``0..C-1``, pointwise and over bootstrap resamples.

Every metric comes in two forms:

* ``metric(y_true, y_pred)`` scores one test set and returns a float;
* ``metric_resampled(y_true, y_pred, idx)`` scores every bootstrap resample at once. ``idx`` has shape
  ``(B, m)`` and row ``b`` holds the test-set indices of resample ``b``; the result has shape ``(B,)`` and
  equals ``[metric(y_true[r], y_pred[r]) for r in idx]`` to floating-point round-off.

Class-averaged metrics (balanced accuracy, macro-F1) average over the classes present in ``y_true``
(the WILDS convention): a predicted class that never occurs in the labels is not averaged, it only
costs the recall of the true classes it was predicted for. In a resample, "present" means present in
that resample's labels; with resamples drawn within true classes (``resample_indices(..., strata=y_true)``,
what the leaderboard does) every class keeps its support, so the averaged class set is that of the test set.

Each metric with a cheap leave-one-out form also has ``metric_jackknife(y_true, y_pred)``: the metric with each
example left out in turn, shape ``(n,)``. For the count metrics it comes from the confusion counts in O(n): leaving
out an example changes one confusion cell, hence at most two classes' terms. :mod:`lifebench.metrics.bootstrap`
turns it into the acceleration of a BCa interval.

The resampled forms never loop over ``B`` in Python: per-class counts of all resamples come from one
``np.bincount`` on ``b * C + class``. Rows are processed in chunks of about ``_CHUNK_ELEMENTS`` index
entries so that ``B = 1000`` resamples of ``n = 150_000`` examples stay within a few hundred MB.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from lifebench.errors import ConfigError, DataError
from lifebench.registry import Registry

__all__ = [
    "METRICS",
    "Metric",
    "ResampleCounts",
    "accuracy",
    "accuracy_jackknife",
    "accuracy_flip",
    "accuracy_resampled",
    "accuracy_resampled_many",
    "balanced_accuracy",
    "balanced_accuracy_jackknife",
    "balanced_accuracy_flip",
    "balanced_accuracy_resampled",
    "balanced_accuracy_resampled_many",
    "get_metric",
    "macro_f1",
    "macro_f1_jackknife",
    "macro_f1_flip",
    "macro_f1_resampled",
    "macro_f1_resampled_many",
    "top_k_accuracy",
    "top_k_accuracy_jackknife",
    "top_k_accuracy_flip",
    "top_k_accuracy_resampled",
    "top_k_accuracy_resampled_many",
]

logger = logging.getLogger(__name__)

# Index entries per chunk of resamples; bounds the temporaries of the resampled metrics (~40 bytes each).
_CHUNK_ELEMENTS = 1 << 21


# --------------------------------------------------------------------------------------------------------
# input checks


def _labels(y: object, name: str) -> np.ndarray:
    """Return ``y`` as a non-empty 1-D array of non-negative integer class codes."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise DataError(
            f"{name} must be a 1-D array of class codes, got shape {arr.shape}; pass one label per example"
        )
    if arr.size == 0:
        raise DataError(f"{name} is empty; a metric needs at least one test example")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"{name} must hold integer class codes 0..C-1, got dtype {arr.dtype}; "
            "encode labels with np.unique(labels, return_inverse=True)"
        )
    if arr.min() < 0:
        raise DataError(f"{name} holds a negative class code {int(arr.min())}; class codes must be 0..C-1")
    return arr


def _pair(y_true: object, y_pred: object) -> tuple[np.ndarray, np.ndarray]:
    yt = _labels(y_true, "y_true")
    yp = _labels(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise DataError(
            f"y_true has {yt.size} examples but y_pred has {yp.size}; pass one prediction per test example"
        )
    return yt, yp


def _topk(y_true: object, topk: object, k: int) -> tuple[np.ndarray, np.ndarray]:
    yt = _labels(y_true, "y_true")
    tk = np.asarray(topk)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}; use k=1 for top-1 accuracy")
    if tk.ndim != 2 or tk.shape[0] != yt.size:
        raise DataError(
            f"topk must have shape (n, K) = ({yt.size}, K) with ranked class codes, got shape {tk.shape}; "
            "pass one row of ranked predictions per test example"
        )
    if not np.issubdtype(tk.dtype, np.integer):
        raise DataError(f"topk must hold integer class codes, got dtype {tk.dtype}")
    if tk.shape[1] < k:
        raise DataError(
            f"top-{k} accuracy needs at least {k} ranked predictions per example, topk has {tk.shape[1]}; "
            f"store the top {k} (or more) classes per example"
        )
    return yt, tk


class ResampleCounts:
    """A bootstrap index matrix ``(B, m)`` together with its count form ``K`` (``K[i, b]`` = copies of example
    ``i`` in resample ``b``), for scoring many models on the same resamples.

    Pass it wherever a resampled metric takes ``idx``, or score many models at once with a metric's
    ``resampled_many_fn``. Accuracy and top-k then cost one matrix product with ``K`` for all models. The
    class-averaged metrics (balanced accuracy, macro-F1) get their true positives from dense products over
    ``K``'s rows grouped by true class (all models together) and their false positives from one sparse product
    over each model's wrong predictions; the per-class support shared by every model is computed once. Results
    equal the index path's (counts and their sums are exact in float32 below 2**24 examples).

    ``strata`` names the groups the resamples were drawn within (``resample_indices(..., strata=...)``), one code
    per example, or None for plain resampling; interval methods read it (a BCa acceleration is computed within
    strata), the resampled metrics do not need it.
    """

    def __init__(self, idx: object | None = None, *, counts: np.ndarray | None = None,
                 strata: np.ndarray | None = None) -> None:
        """From the index matrix ``idx`` (B, m), or from a count matrix ``counts`` (n, B) (see :meth:`subset`)."""
        if (idx is None) == (counts is None):
            raise ValueError("give ResampleCounts an index matrix or a count matrix, not both or neither")
        self.idx = None if idx is None else np.asarray(idx)
        self.strata = None if strata is None else np.asarray(strata)
        self._counts: dict[int, np.ndarray] = {} if counts is None else {counts.shape[0]: counts}
        self._totals: dict[int, np.ndarray] = {}
        self._support: dict[tuple[int, int, bytes], np.ndarray] = {}
        self._by_class: dict[tuple[int, int, bytes], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._checked: dict[int, np.ndarray] = {}
        self._lock = threading.RLock()  # models may be scored from several threads; each cache entry is made once

    @property
    def n(self) -> int:
        """Examples in the test set these resamples draw from."""
        return self.idx.shape[1] if self.idx is not None else next(iter(self._counts))

    @property
    def n_resamples(self) -> int:
        return self.idx.shape[0] if self.idx is not None else next(iter(self._counts.values())).shape[1]

    def subset(self, rows: np.ndarray) -> ResampleCounts:
        """The same resamples seen by a test set made of the examples ``rows`` of this one: its count matrix is
        ``K[rows]``, so a resample holds as many copies of an example as here (and a varying number of draws).

        Test sets that share examples (few-shot folds, training-set subsamples, repeated seeds) are resampled
        together this way, so that averaging their scores resample by resample does not average away the sampling
        noise of the examples they share. Only count-based metrics (those with a ResampleCounts path) use it.

        Resamples drawn within strata keep their strata, but within a subset a stratum's number of draws varies
        (it is fixed only over the whole test set), so the subset's resampling is close to, not exactly,
        stratified."""
        rows = np.asarray(rows)
        return ResampleCounts(counts=self.counts(self.n)[rows],
                              strata=None if self.strata is None else self.strata[rows])

    def counts(self, n: int) -> np.ndarray:
        """``K``: shape ``(n, B)`` float32 copies of each of ``n`` examples in each resample (exact: the counts are
        small integers). Kept for later calls; about ``4 n B`` bytes, 160 MB for 40,000 examples x 1000."""
        with self._lock:
            if n not in self._counts:
                if self.idx is None:
                    raise DataError(f"these resamples cover {self.n} examples, not {n}; score the test set they "
                                    "were made for")
                rows = self.checked(n)
                K = np.empty((n, rows.shape[0]), dtype=np.float32)
                step = 64  # resamples per bincount: one call over ``b * n + index`` instead of one per resample
                for start in range(0, rows.shape[0], step):
                    block = rows[start:start + step]
                    keys = (block + (np.arange(block.shape[0], dtype=np.int64) * n)[:, None]).ravel()
                    K[:, start:start + block.shape[0]] = np.bincount(keys, minlength=block.size).reshape(-1, n).T
                self._counts[n] = K
            return self._counts[n]

    def totals(self, n: int) -> np.ndarray:
        """Draws in each resample: ``n`` for a full test set, varying for a :meth:`subset`; shape (B,) float64."""
        with self._lock:
            if n not in self._totals:
                self._totals[n] = self.counts(n).sum(axis=0, dtype=np.float64)
            return self._totals[n]

    def keyed_sum(self, keys: np.ndarray, n_keys: int, rows: np.ndarray | None = None, n: int | None = None
                  ) -> np.ndarray:
        """``out[b, k]``: copies in resample ``b`` of the examples ``rows`` (default: all ``n``) whose key is ``k``,
        shape (B, n_keys): one pass over those rows of ``K``, whatever the number of keys."""
        from scipy.sparse import csr_matrix

        n = keys.size if n is None else n
        rows = np.arange(n) if rows is None else rows
        select = csr_matrix((np.ones(rows.size, dtype=np.float32), (keys, rows)), shape=(n_keys, n))
        return np.asarray(select @ self.counts(n), dtype=np.float64).T

    def hit_rates(self, hits: np.ndarray) -> np.ndarray:
        """Fraction of hits in every resample for each row of ``hits`` (models x n): one matrix product with
        ``K``; shape (models, B)."""
        hit_counts = (hits.astype(np.float32) @ self.counts(hits.shape[1])).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN for a subset's resample without examples
            return hit_counts / self.totals(hits.shape[1])

    def support(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Per-resample class counts of ``y``, ``(B, n_classes)``; cached for the same labels."""
        key = (y.size, n_classes, y.tobytes())
        with self._lock:
            if key not in self._support:
                self._support[key] = self.keyed_sum(y, n_classes)
            return self._support[key]

    def by_class(self, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(order, bounds, K[order])``: the examples sorted by class (stable), class ``c`` at positions
        ``bounds[c]:bounds[c + 1]``, and ``K``'s rows in that order; cached for the same labels."""
        key = (y.size, n_classes, y.tobytes())
        with self._lock:
            if key not in self._by_class:
                order = np.argsort(y, kind="stable")
                bounds = np.searchsorted(y[order], np.arange(n_classes + 1))
                self._by_class[key] = order, bounds, self.counts(y.size)[order]
            return self._by_class[key]

    def checked(self, n: int) -> np.ndarray:
        """The index matrix, checked once per ``n`` to index ``n`` examples."""
        if self.idx is None:
            raise DataError("these resamples come from a subset of a larger test set and have no index matrix; "
                            "score them with a count-based metric (one that accepts a ResampleCounts)")
        with self._lock:
            if n not in self._checked:
                self._checked[n] = _indices(self.idx, n)
            return self._checked[n]


def _indices(idx: object, n: int) -> np.ndarray:
    """Return ``idx`` as a 2-D integer array of valid indices into ``n`` examples."""
    if isinstance(idx, ResampleCounts):
        return idx.checked(n)
    arr = np.asarray(idx)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(
            f"idx must have shape (B, m) with B, m >= 1, got shape {arr.shape}; build it with resample_indices"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"idx must hold integer indices, got dtype {arr.dtype}; build it with resample_indices"
        )
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n:
        raise DataError(
            f"idx holds indices in [{lo}, {hi}] but the test set has {n} examples; "
            "build idx with resample_indices(n) for this test set"
        )
    return arr


def _row_chunks(rows: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Split ``rows`` (B, m) into consecutive blocks of about ``_CHUNK_ELEMENTS`` entries."""
    step = max(1, _CHUNK_ELEMENTS // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        block = slice(start, start + step)
        yield block, rows[block]


# --------------------------------------------------------------------------------------------------------
# shared arithmetic on per-class counts (shape (B, C)); pointwise metrics use B = 1


def _class_counts(
    y_true: np.ndarray, y_pred: np.ndarray, rows: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-resample true-positive, support and predicted counts, each of shape ``(len(rows), C)``."""
    b = rows.shape[0]
    offsets = np.arange(b, dtype=np.int64)[:, None] * n_classes
    keys_true = offsets + y_true[rows]
    keys_pred = offsets + y_pred[rows]
    hit = (y_true == y_pred)[rows]
    size = b * n_classes
    support = np.bincount(keys_true.ravel(), minlength=size).reshape(b, n_classes)
    predicted = np.bincount(keys_pred.ravel(), minlength=size).reshape(b, n_classes)
    tp = np.bincount(keys_true[hit], minlength=size).reshape(b, n_classes)
    return tp, support, predicted


def _mean_over_present(per_class: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Mean of ``per_class`` over the classes with ``support > 0``, where ``per_class`` is 0 for the others
    (a class never true has no true positives), so a plain sum over all classes serves. NaN for a resample
    without examples (possible for a :meth:`ResampleCounts.subset`)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return per_class.sum(axis=1) / np.count_nonzero(support, axis=1)


def _recall(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-class recall; 0 for a class without support (which has no true positives either)."""
    return tp / np.maximum(support, 1)


def _f1(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (support + predicted); 0 for a class without support."""
    return 2.0 * tp / np.maximum(support + predicted, 1)


_PerClass = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _recall_mean(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return _mean_over_present(_recall(tp, support, predicted), support)


def _f1_mean(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return _mean_over_present(_f1(tp, support, predicted), support)


_CountsReducer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
# The class-averaged reducers as ratios of counts: (scale, whether the denominator holds the predicted count),
# i.e. the mean over present classes of ``scale * tp / max(support [+ predicted], 1)``.
_RATIO_FORM: dict[_CountsReducer, tuple[float, bool]] = {_recall_mean: (1.0, False), _f1_mean: (2.0, True)}


def _confusion_cells(yt: np.ndarray, yp: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(j, k, inverse, tp, support, predicted)``: the occupied confusion cells (true ``j``, predicted ``k``), each
    example's cell, and the per-class counts, as float64."""
    n_classes = int(max(yt.max(), yp.max())) + 1
    cell_of = yt.astype(np.int64) * n_classes + yp
    if n_classes**2 <= min(1 << 22, 16 * cell_of.size):  # the occupied cells by counting, not sorting
        cells = np.flatnonzero(np.bincount(cell_of, minlength=n_classes**2))
        position = np.zeros(n_classes**2, dtype=np.int64)
        position[cells] = np.arange(cells.size)
        inverse = position[cell_of]
    else:
        cells, inverse = np.unique(cell_of, return_inverse=True)
    tp = np.bincount(yt[yt == yp], minlength=n_classes).astype(np.float64)
    support = np.bincount(yt, minlength=n_classes).astype(np.float64)
    predicted = np.bincount(yp, minlength=n_classes).astype(np.float64)
    return cells // n_classes, cells % n_classes, inverse, tp, support, predicted


def _count_jackknife(y_true: object, y_pred: object, per_class: _PerClass) -> np.ndarray:
    """Leave-one-out values of the mean of ``per_class(tp, support, predicted)`` over the present classes: entry
    ``i`` is the metric on the test set without example ``i``, shape ``(n,)`` (NaN where nothing is left).

    Leaving out an example of true class ``j`` predicted as ``k`` lowers ``support[j]`` and ``predicted[k]`` by
    one (and ``tp[j]`` when ``j == k``), so only the terms of classes ``j`` and ``k`` change, and ``j`` leaves the
    average when it was its only example. One evaluation per distinct confusion cell, then a lookup: O(n)."""
    j, k, inverse, tp, support, predicted = _confusion_cells(*_pair(y_true, y_pred))
    terms = per_class(tp, support, predicted)
    same = (j == k).astype(np.float64)
    total = terms.sum() - terms[j] + per_class(tp[j] - same, support[j] - 1, predicted[j] - same)
    other = j != k  # class k loses one prediction (a no-op for a class never true: its term stays 0)
    total[other] += per_class(tp[k[other]], support[k[other]], predicted[k[other]] - 1) - terms[k[other]]
    present = np.count_nonzero(support) - (support[j] == 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / present)[inverse]


def _count_flip(y_true: object, y_pred: object, per_class: _PerClass) -> np.ndarray:
    """The change of the mean of ``per_class(tp, support, predicted)`` over the present classes when example ``i``'s
    outcome flips, shape ``(n,)``: a hit of class ``j`` becomes a miss to no averaged class (``tp[j]`` and
    ``predicted[j]`` down one), a miss ``(j, k)`` becomes a hit (``tp[j]`` and ``predicted[j]`` up one,
    ``predicted[k]`` down one). Negative for a hit, positive for a miss. O(n), one evaluation per cell.

    Why: the jackknife of a class whose test examples are all right (or all wrong) is constant, so it shows no
    variance, however few the examples; the flip says what one different outcome would have been worth, for the
    variance floor of :func:`lifebench.metrics.bootstrap.smoothed_variance`."""
    j, k, inverse, tp, support, predicted = _confusion_cells(*_pair(y_true, y_pred))
    terms = per_class(tp, support, predicted)
    step = np.where(j == k, -1.0, 1.0)
    change = per_class(tp[j] + step, support[j], predicted[j] + step) - terms[j]
    other = j != k
    change[other] += per_class(tp[k[other]], support[k[other]], predicted[k[other]] - 1) - terms[k[other]]
    return (change / np.count_nonzero(support))[inverse]


def _pointwise_from_counts(y_true: object, y_pred: object, reduce: _CountsReducer) -> float:
    yt, yp = _pair(y_true, y_pred)
    n_classes = int(max(yt.max(), yp.max())) + 1
    rows = np.arange(yt.size)[None, :]
    return float(reduce(*_class_counts(yt, yp, rows, n_classes))[0])


def _resampled_from_counts(y_true: object, y_pred: object, idx: object, reduce: _CountsReducer) -> np.ndarray:
    yt, yp = _pair(y_true, y_pred)
    if isinstance(idx, ResampleCounts):
        return _resampled_many_from_counts(yt, [yp], idx, reduce)[0]
    rows = _indices(idx, yt.size)
    n_classes = int(max(yt.max(), yp.max())) + 1
    out = np.empty(rows.shape[0], dtype=np.float64)
    for block, chunk in _row_chunks(rows):
        out[block] = reduce(*_class_counts(yt, yp, chunk, n_classes))
    return out


def _resampled_many_from_counts(
    y_true: object, preds: Sequence[object], idx: ResampleCounts, reduce: _CountsReducer
) -> np.ndarray:
    """``reduce(tp, support, predicted)`` of every resample for each model in ``preds``; shape (models, B).

    True positives: for each class, one dense product of ``K``'s rows of that class with the models' hits.
    Predicted counts (macro-F1 only): those plus one sparse product over each model's wrong predictions, keyed
    by the predicted class. Only the classes present in ``y_true`` are computed (the others add 0 and are not
    averaged), in a (class, resample) layout, and the per-class ratio ``tp / denominator`` is taken from exact
    float32 counts straight into float64 and summed over classes in order: the same numbers, bit for bit, as
    ``reduce`` on all classes, at a fraction of the memory traffic (docs/performance.md, "Report step")."""
    from scipy.sparse import csr_matrix

    scale, with_predicted = _RATIO_FORM[reduce]
    yt = _labels(y_true, "y_true")
    yps = [_pair(yt, p)[1] for p in preds]
    n_classes = int(max(yt.max(), *(p.max() for p in yps))) + 1
    n_res = idx.n_resamples
    order, bounds, sorted_counts = idx.by_class(yt, n_classes)
    present = np.flatnonzero(np.diff(bounds))
    column = np.full(n_classes, -1)
    column[present] = np.arange(present.size)  # class -> row of the per-class arrays; -1 for absent classes
    support = np.ascontiguousarray(idx.support(yt, n_classes)[:, present].T, dtype=np.float32)  # (P, B), exact
    n_present = np.count_nonzero(support, axis=0).astype(np.float64)  # averaged classes in each resample
    counts = idx.counts(yt.size) if with_predicted else None
    out = np.empty((len(yps), n_res), dtype=np.float64)
    step = max(1, 8 * _CHUNK_ELEMENTS // (present.size * n_res))  # models per block: tp is about 64 MB at most
    for start in range(0, len(yps), step):
        block = yps[start:start + step]
        hits = np.stack([(p == yt)[order] for p in block]).astype(np.float32)  # (models, n), in class order
        tp = np.empty((present.size, len(block), n_res), dtype=np.float32)
        for row, c in enumerate(present):
            lo, hi = bounds[c], bounds[c + 1]
            np.matmul(hits[:, lo:hi], sorted_counts[lo:hi], out=tp[row])
        for j, p in enumerate(block):
            if with_predicted:  # support + predicted = support + tp + fp, all exact in float32
                wrong = np.flatnonzero((p != yt) & (column[p] >= 0))
                fp = csr_matrix((np.ones(wrong.size, dtype=np.float32), (column[p[wrong]], wrong)),
                                shape=(present.size, yt.size))
                denominator = np.asarray(fp @ counts)
                denominator += tp[:, j]
                denominator += support
            else:
                denominator = support.copy()
            np.maximum(denominator, 1.0, out=denominator)
            total = np.divide(tp[:, j], denominator, dtype=np.float64).sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):  # NaN for a subset's resample without examples
                out[start + j] = scale * total / n_present  # scale is 1 or 2: exact, as in the reducer
    return out


def _hit_rate_resampled(hits: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty(rows.shape[0], dtype=np.float64)
    for block, chunk in _row_chunks(rows):
        out[block] = np.count_nonzero(hits[chunk], axis=1) / rows.shape[1]
    return out


# --------------------------------------------------------------------------------------------------------
# public metrics


def accuracy(y_true: object, y_pred: object) -> float:
    """Fraction of examples whose predicted class equals the true class."""
    yt, yp = _pair(y_true, y_pred)
    return np.count_nonzero(yt == yp) / yt.size


def accuracy_resampled(y_true: object, y_pred: object, idx: object) -> np.ndarray:
    """:func:`accuracy` of every resample ``y[idx[b]]``; returns shape ``(B,)`` float64."""
    yt, yp = _pair(y_true, y_pred)
    if isinstance(idx, ResampleCounts):
        return idx.hit_rates((yt == yp)[None])[0]
    return _hit_rate_resampled(yt == yp, _indices(idx, yt.size))


def accuracy_resampled_many(y_true: object, preds: Sequence[object], idx: ResampleCounts) -> np.ndarray:
    """:func:`accuracy_resampled` of each model in ``preds``, shape (models, B): one matrix product."""
    return idx.hit_rates(np.stack([np.equal(*_pair(y_true, p)) for p in preds]))


def _hits_jackknife(hits: np.ndarray) -> np.ndarray:
    """Leave-one-out hit rates: (hits - hit_i) / (n - 1); NaN for a one-example test set."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.count_nonzero(hits) - hits) / (hits.size - 1.0)


def accuracy_jackknife(y_true: object, y_pred: object) -> np.ndarray:
    """:func:`accuracy` with each example left out in turn, shape ``(n,)``."""
    return _hits_jackknife(np.equal(*_pair(y_true, y_pred)))


def _hits_flip(hits: np.ndarray) -> np.ndarray:
    """A hit rate's change when one example's outcome flips: -1/n for a hit, +1/n for a miss."""
    return np.where(hits, -1.0, 1.0) / hits.size


def accuracy_flip(y_true: object, y_pred: object) -> np.ndarray:
    """:func:`accuracy`'s change when example ``i``'s outcome flips (hit to miss or back), shape ``(n,)``."""
    return _hits_flip(np.equal(*_pair(y_true, y_pred)))


def balanced_accuracy(y_true: object, y_pred: object) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    return _pointwise_from_counts(y_true, y_pred, _recall_mean)


def balanced_accuracy_resampled(y_true: object, y_pred: object, idx: object) -> np.ndarray:
    """:func:`balanced_accuracy` of every resample ``y[idx[b]]``; returns shape ``(B,)`` float64."""
    return _resampled_from_counts(y_true, y_pred, idx, _recall_mean)


def balanced_accuracy_resampled_many(y_true: object, preds: Sequence[object], idx: ResampleCounts) -> np.ndarray:
    """:func:`balanced_accuracy_resampled` of each model in ``preds``, shape (models, B)."""
    return _resampled_many_from_counts(y_true, preds, idx, _recall_mean)


def balanced_accuracy_jackknife(y_true: object, y_pred: object) -> np.ndarray:
    """:func:`balanced_accuracy` with each example left out in turn, shape ``(n,)``: O(n) from confusion counts."""
    return _count_jackknife(y_true, y_pred, _recall)


def balanced_accuracy_flip(y_true: object, y_pred: object) -> np.ndarray:
    """:func:`balanced_accuracy`'s change when example ``i``'s outcome flips, shape ``(n,)`` (:func:`_count_flip`)."""
    return _count_flip(y_true, y_pred, _recall)


def macro_f1(y_true: object, y_pred: object) -> float:
    """Mean per-class F1 over the classes present in ``y_true`` (WILDS convention).

    Equals ``sklearn.metrics.f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro",
    zero_division=0)``. A predicted class absent from ``y_true`` is not averaged; it only lowers the
    recall of the true classes it was predicted for.
    """
    return _pointwise_from_counts(y_true, y_pred, _f1_mean)


def macro_f1_resampled(y_true: object, y_pred: object, idx: object) -> np.ndarray:
    """:func:`macro_f1` of every resample ``y[idx[b]]``, each over the classes present in that resample."""
    return _resampled_from_counts(y_true, y_pred, idx, _f1_mean)


def macro_f1_resampled_many(y_true: object, preds: Sequence[object], idx: ResampleCounts) -> np.ndarray:
    """:func:`macro_f1_resampled` of each model in ``preds``, shape (models, B)."""
    return _resampled_many_from_counts(y_true, preds, idx, _f1_mean)


def macro_f1_jackknife(y_true: object, y_pred: object) -> np.ndarray:
    """:func:`macro_f1` with each example left out in turn, shape ``(n,)``: O(n) from confusion counts."""
    return _count_jackknife(y_true, y_pred, _f1)


def macro_f1_flip(y_true: object, y_pred: object) -> np.ndarray:
    """:func:`macro_f1`'s change when example ``i``'s outcome flips, shape ``(n,)`` (:func:`_count_flip`)."""
    return _count_flip(y_true, y_pred, _f1)


def top_k_accuracy(y_true: object, topk: object, k: int) -> float:
    """Fraction of examples whose true class is among the first ``k`` columns of ``topk``.

    ``topk`` has shape ``(n, K)`` with ``K >= k``; row ``i`` lists predicted classes, best first.
    """
    yt, tk = _topk(y_true, topk, k)
    return np.count_nonzero((tk[:, :k] == yt[:, None]).any(axis=1)) / yt.size


def top_k_accuracy_resampled(y_true: object, topk: object, idx: object, k: int) -> np.ndarray:
    """:func:`top_k_accuracy` of every resample; returns shape ``(B,)`` float64."""
    yt, tk = _topk(y_true, topk, k)
    hits = (tk[:, :k] == yt[:, None]).any(axis=1)
    if isinstance(idx, ResampleCounts):
        return idx.hit_rates(hits[None])[0]
    return _hit_rate_resampled(hits, _indices(idx, yt.size))


def top_k_accuracy_resampled_many(y_true: object, topks: Sequence[object], idx: ResampleCounts, k: int
                                  ) -> np.ndarray:
    """:func:`top_k_accuracy_resampled` of each model's ranking in ``topks``, shape (models, B)."""
    hits = [(tk[:, :k] == yt[:, None]).any(axis=1) for yt, tk in (_topk(y_true, t, k) for t in topks)]
    return idx.hit_rates(np.stack(hits))


def top_k_accuracy_jackknife(y_true: object, topk: object, k: int) -> np.ndarray:
    """:func:`top_k_accuracy` with each example left out in turn, shape ``(n,)``."""
    yt, tk = _topk(y_true, topk, k)
    return _hits_jackknife((tk[:, :k] == yt[:, None]).any(axis=1))


def top_k_accuracy_flip(y_true: object, topk: object, k: int) -> np.ndarray:
    """:func:`top_k_accuracy`'s change when example ``i``'s outcome flips, shape ``(n,)``."""
    yt, tk = _topk(y_true, topk, k)
    return _hits_flip((tk[:, :k] == yt[:, None]).any(axis=1))


# --------------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class Metric:
    """A named metric with its pointwise and resampled forms.

    Attributes
    ----------
    name:
        Registry name, e.g. ``"macro_f1"``.
    fn:
        ``fn(y_true, y_pred_or_topk) -> float`` on one test set.
    resampled_fn:
        ``resampled_fn(y_true, y_pred_or_topk, idx) -> (B,) float64`` over bootstrap resamples.
    resampled_many_fn:
        Optional ``resampled_many_fn(y_true, [y_pred_or_topk, ...], counts) -> (models, B)``: the same for many
        models on one :class:`ResampleCounts`, faster than one call per model.
    jackknife_fn:
        Optional ``jackknife_fn(y_true, y_pred_or_topk) -> (n,)``: the metric with each resampled unit left out in
        turn, cheap enough for every model of a report. It gives the acceleration of the BCa interval; a metric
        without it gets a bias-corrected percentile interval (acceleration 0).
    flip_fn:
        Optional ``flip_fn(y_true, y_pred_or_topk) -> (n,)``: the metric's change when each example's outcome flips
        (negative for a hit turned miss, positive for a miss turned hit). It gives the variance floor of classes
        whose test examples are all right or all wrong (:func:`lifebench.metrics.bootstrap.smoothed_variance`).
    higher_is_better:
        Direction used when ranking models.
    needs:
        ``"pred"`` (one predicted class per example), ``"topk"`` (ranked classes, shape ``(n, K)``),
        ``"parts"`` (``(parts, images)`` code matrices, images resampled) or ``"extra:a,b"`` (an ``(n, 2)``
        matrix of the stored per-example float columns ``a`` and ``b``).
    description:
        One line for listings.
    """

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    resampled_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    higher_is_better: bool = True
    needs: str = "pred"
    description: str = ""
    resampled_many_fn: Callable[[np.ndarray, Sequence[np.ndarray], ResampleCounts], np.ndarray] | None = None
    jackknife_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    flip_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.needs not in ("pred", "topk", "parts") and not self.needs.startswith("extra:"):
            raise ConfigError(f"metric {self.name!r} has needs={self.needs!r}; use 'pred', 'topk', 'parts' or "
                              "'extra:<column>[,<column>...]'")

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """Names of the stored per-example columns this metric reads (``needs="extra:a,b"``)."""
        return tuple(self.needs.removeprefix("extra:").split(",")) if self.needs.startswith("extra:") else ()


METRICS: Registry[Metric] = Registry("metric", hint="`lifebench ls metrics` lists them")


def _register(metric: Metric) -> None:
    METRICS.register(metric.name, metric, help=metric.description)


_register(Metric("accuracy", accuracy, accuracy_resampled, description="top-1 accuracy",
                 resampled_many_fn=accuracy_resampled_many, jackknife_fn=accuracy_jackknife,
                 flip_fn=accuracy_flip))
_register(
    Metric(
        "balanced_accuracy",
        balanced_accuracy,
        balanced_accuracy_resampled,
        description="mean per-class recall over the classes present in the labels",
        resampled_many_fn=balanced_accuracy_resampled_many,
        jackknife_fn=balanced_accuracy_jackknife,
        flip_fn=balanced_accuracy_flip,
    )
)
_register(
    Metric(
        "macro_f1",
        macro_f1,
        macro_f1_resampled,
        description="mean per-class F1 over the classes present in the labels (WILDS convention)",
        resampled_many_fn=macro_f1_resampled_many,
        jackknife_fn=macro_f1_jackknife,
        flip_fn=macro_f1_flip,
    )
)
_register(
    Metric(
        "top5_accuracy",
        functools.partial(top_k_accuracy, k=5),
        functools.partial(top_k_accuracy_resampled, k=5),
        needs="topk",
        description="true class among the 5 highest-ranked predictions",
        resampled_many_fn=functools.partial(top_k_accuracy_resampled_many, k=5),
        jackknife_fn=functools.partial(top_k_accuracy_jackknife, k=5),
        flip_fn=functools.partial(top_k_accuracy_flip, k=5),
    )
)


def get_metric(name: str) -> Metric:
    """Return the registered :class:`Metric` called ``name``; unknown names raise :class:`UnknownNameError`."""
    return METRICS.get(name)
