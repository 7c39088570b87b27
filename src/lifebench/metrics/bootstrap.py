"""Paired bootstrap confidence intervals and ties between models.

Why this design
---------------
* **Bootstrap over test predictions.** Probes are cheap but refitting them thousands of times is not, and the
  question a user asks is "how sure are we about this score on this test set?". So the uncertainty we report
  is the sampling uncertainty of the test set: resample test examples with replacement and recompute the
  metric from the stored per-example predictions. Training-set and seed variance are reported separately
  (by repeated runs), not folded in here.
* **Paired across models.** :func:`resample_indices` builds ONE ``(B, n)`` index matrix per (task, split),
  seeded by :func:`task_seed`, and every model is scored on the same resamples. Two models evaluated on the
  same hard examples then move together, so the bootstrap distribution of their *difference* is much
  narrower than the two marginal intervals suggest. Overlapping per-model intervals do not mean a tie;
  :func:`ties_with_best` tests the paired differences instead.
* **Resampling within true classes.** With ``strata=y_true`` every resample keeps each class's number of test
  examples, so the class-averaged metrics (macro-F1, balanced accuracy) average over the same classes in every
  resample as in the point estimate. Plain resampling drops a class with one example from 37% of resamples and
  changes the averaged set, a different quantity from the point estimate; its macro-F1 intervals covered 91-93%
  and balanced accuracy 86% (n = 50), 70% with 40 rare classes. The estimand is then the metric at the test
  set's class composition: the sampling noise of which images of each class were drawn, not of how many images
  of each class (docs/statistics.md, "Intervals").
* **BCa limits.** The percentile interval is centred on the bootstrap distribution, which for a biased plug-in
  statistic (macro-F1 is biased downward at small class sizes) sits on the wrong side of the estimate, so the
  misses fall on one side. The bias-corrected and accelerated interval (Efron 1987) moves the quantile levels
  by the bias ``z0`` (the share of resamples below the point) and the acceleration ``a`` (the skewness of the
  jackknife influence values, within strata), which :func:`acceleration` computes from a metric's O(n)
  ``jackknife_fn``. Metrics without one get ``a = 0`` (bias-corrected percentile). Coverage measured by
  ``bench/coverage.py``. The limits are quantiles of the resamples, so they stay inside the metric's range; the
  point can fall outside them only when nearly every resample lies on one side of it, and nothing widens them.
* **Ties by a max test over all pairs.** A model is tied with the best unless some model beats it by more
  than the paired bootstrap allows: a step-down test of the largest gap over every pair of models, on centred
  resampled differences (unstudentized: a per-pair sd estimated once made it exceed ``alpha`` with many models). The best is picked from the same data, so a per-model test against it (even with
  Holm) marks equal models worse too often; the max over all pairs keeps that chance at most ``alpha``.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lifebench.errors import ConfigError
from lifebench.metrics.classification import Metric, ResampleCounts, get_metric

__all__ = ["MIN_CLASS_STRATUM", "Estimate", "bootstrap_ci", "bootstrap_many", "class_strata", "estimate", "holm", "jackknife_terms",
           "resample_indices", "smoothed_variance", "task_seed", "ties_with_best"]

logger = logging.getLogger(__name__)

# Classes with fewer test examples than this are resampled together in one pooled stratum (:func:`class_strata`).
MIN_CLASS_STRATUM = 10
_RESAMPLED_VARIANCE = True
# The share of one flip that a class whose test examples are all right (or all wrong) keeps in the variance floor
# (:func:`smoothed_variance`); chosen by simulation (bench/coverage.py; docs/statistics.md, "Intervals").
_PSEUDO_COUNT = 0.1


def task_seed(task_name: str, seed: int = 0) -> int:
    """A seed derived from ``task_name`` and ``seed``, identical across processes, platforms and versions.

    Uses SHA-256 (Python's ``hash()`` is salted per process). To give each split its own resamples, include
    the split in the name, e.g. ``task_seed("fishnet/test")``. Returns an integer in ``[0, 2**63)``.
    """
    digest = hashlib.sha256(f"{task_name}\x00{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resample_indices(n: int, n_resamples: int = 1000, seed: int = 0, strata: np.ndarray | None = None
                     ) -> np.ndarray:
    """Bootstrap index matrix of shape ``(n_resamples, n)``; row ``b`` holds the examples of resample ``b``.

    Drawn with replacement by ``numpy.random.default_rng(seed)``: uniformly over all ``n`` examples, or, with
    ``strata`` (one label per example, e.g. the true classes), entry ``i`` of a row uniformly among the examples of
    ``i``'s stratum, so every resample holds as many examples of each stratum as the test set. Build ONE matrix
    per (task, split), with ``seed=task_seed(...)``, and score every model on it so comparisons are paired.
    The dtype is int32, or int64 when ``n >= 2**31``. Memory is ``4 * n_resamples * n`` bytes.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"n must be a positive number of test examples, got {n!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise ConfigError(
            f"n_resamples must be a positive integer, got {n_resamples!r}; 1000 is the usual choice"
        )
    rng = np.random.default_rng(seed)
    dtype = _index_dtype(int(n))
    if strata is None:
        return rng.integers(0, n, size=(int(n_resamples), int(n)), dtype=dtype)
    codes = _strata_codes(strata, int(n))
    order = np.argsort(codes, kind="stable").astype(dtype)  # the examples of each stratum, consecutively
    sizes = np.bincount(codes)
    first = (np.cumsum(sizes) - sizes)[codes].astype(dtype)  # where entry i's stratum starts in ``order``
    span = sizes[codes].astype(np.float64)
    out = np.empty((int(n_resamples), int(n)), dtype=dtype)
    step = max(1, (1 << 21) // int(n))  # rows per block: bounds the float64 temporaries
    for start in range(0, int(n_resamples), step):
        rows = min(step, int(n_resamples) - start)
        # A uniform float scaled by the stratum's size, floored: uniform over the stratum (to 2**-53), and about
        # twice as fast as integers with a bound per element.
        draw = rng.random((rows, int(n)))
        draw *= span
        offset = draw.astype(dtype)
        offset += first
        np.take(order, offset, out=out[start:start + rows])  # in place: no temporaries of the block's size
    return out


def class_strata(labels: object, min_size: int = MIN_CLASS_STRATUM) -> np.ndarray:
    """The strata to resample a test set within: each class with at least ``min_size`` test examples is its own
    stratum, and the smaller classes share one pooled stratum. Integer codes, one per example.

    Why pool: resampled within its own stratum, a class of one example never varies (and a class of a few
    examples rarely does), so its share of the sampling noise of a class-averaged metric is missing from the
    interval; with many such classes the intervals were far too narrow (docs/statistics.md, "Intervals"). In a
    pooled stratum the small classes' examples are drawn from one another, so their noise is estimated from
    their pooled spread, and only the set of small classes in a resample varies; the large classes keep their
    support. Pass the result to both :func:`resample_indices` and :class:`ResampleCounts` (the acceleration and
    expansion are computed within the same strata)."""
    codes = np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(codes)
    small = sizes < min_size
    if np.count_nonzero(small) < 2:  # nothing to pool with
        return codes
    remap = np.cumsum(~small) - 1
    remap[small] = np.count_nonzero(~small)
    return remap[codes]


def _strata_codes(strata: object, n: int) -> np.ndarray:
    """Stratum labels (any sortable values, one per example) as non-negative integer codes; labels that already
    are such codes (class codes) are used as they are, saving a sort per model."""
    arr = np.asarray(strata)
    if arr.shape != (n,):
        raise ConfigError(f"strata must hold one label per example, shape ({n},), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 4 * n:
        return arr
    return np.unique(arr, return_inverse=True)[1].reshape(n)


def _compact_codes(labels: np.ndarray) -> np.ndarray:
    """``np.unique(labels, return_inverse=True)[1]``: codes 0..K-1 of the distinct labels in sorted order; O(n)
    by counting for labels that are already small non-negative integer codes (no sort per model)."""
    labels = labels.reshape(-1)
    if np.issubdtype(labels.dtype, np.integer) and labels.size and labels.min() >= 0 and labels.max() <= 4 * labels.size:
        seen = np.bincount(labels) > 0
        return (np.cumsum(seen) - 1)[labels]
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def _index_dtype(n: int) -> type[np.signedinteger]:
    """Smallest signed dtype (int32 or int64) that holds indices ``0..n-1`` for ``n`` examples."""
    return np.int64 if n >= 2**31 else np.int32


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval.

    Attributes
    ----------
    point:
        The metric on the full test set.
    low, high:
        Interval bounds, quantiles of ``resamples`` (``low <= high``; they contain ``point`` except when nearly
        every resample lies on one side of it).
    resamples:
        The metric on each bootstrap resample, shape ``(B,)``, read-only.
    confidence:
        Nominal coverage of the interval, e.g. 0.95.
    acceleration:
        The BCa acceleration used (0.0 for a bias-corrected percentile interval), or None for a plain
        percentile interval.
    expansion:
        The factor the limits were stretched by about the point (:func:`jackknife_terms`; 1.0 for none).
    """

    point: float
    low: float
    high: float
    resamples: np.ndarray = field(repr=False, compare=False)
    confidence: float = 0.95
    acceleration: float | None = None
    expansion: float = 1.0


def bootstrap_ci(
    metric: Metric | str,
    y_true: np.ndarray,
    y_pred_or_topk: np.ndarray,
    idx: np.ndarray | ResampleCounts,
    confidence: float = 0.95,
    strata: np.ndarray | None = None,
) -> Estimate:
    """Point estimate and BCa bootstrap interval of ``metric`` (:func:`estimate`).

    Parameters
    ----------
    metric:
        A :class:`Metric` or a registered metric name such as ``"macro_f1"``.
    y_true:
        True class codes, shape ``(n,)``.
    y_pred_or_topk:
        Predicted classes ``(n,)`` or ranked classes ``(n, K)``, as ``metric.needs`` says.
    idx:
        Bootstrap index matrix ``(B, n)`` from :func:`resample_indices`, shared by all models of the task, or a
        :class:`ResampleCounts` of it.
    confidence:
        Nominal coverage in (0, 1).
    strata:
        The labels ``idx`` was drawn within (``resample_indices(..., strata=...)``), for the acceleration; None
        takes those of a :class:`ResampleCounts`, else plain resampling.
    """
    if isinstance(metric, str):
        metric = get_metric(metric)
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be strictly between 0 and 1, got {confidence!r}; e.g. 0.95")
    if strata is None and isinstance(idx, ResampleCounts):
        strata = idx.strata
    point = float(metric.fn(y_true, y_pred_or_topk))
    resampled = metric.resampled_fn(y_true, y_pred_or_topk, idx)
    return estimate(point, resampled, confidence,
                    **_metric_terms(metric, y_true, y_pred_or_topk, strata, confidence, resampled))


def bootstrap_many(
    metric: Metric | str,
    y_true: np.ndarray,
    preds: Sequence[np.ndarray],
    idx: ResampleCounts,
    confidence: float = 0.95,
) -> list[Estimate]:
    """:func:`bootstrap_ci` of each model in ``preds`` on the same resamples, in one pass where the metric has a
    ``resampled_many_fn`` (the same numbers, faster)."""
    if isinstance(metric, str):
        metric = get_metric(metric)
    if not preds:
        return []
    if metric.resampled_many_fn is None:
        return [bootstrap_ci(metric, y_true, p, idx, confidence) for p in preds]
    resampled = metric.resampled_many_fn(y_true, preds, idx)
    return [estimate(float(metric.fn(y_true, p)), r, confidence, **_metric_terms(metric, y_true, p, idx.strata,
                                                                                  confidence, r))
            for p, r in zip(preds, resampled, strict=True)]


def _metric_terms(metric: Metric, y_true: np.ndarray, pred: np.ndarray, strata: np.ndarray | None,
                  confidence: float, resampled: np.ndarray | None = None) -> dict[str, float]:
    """``estimate``'s keywords for ``metric``: :func:`jackknife_terms` of its jackknife (with the variance floor of
    :func:`smoothed_variance` where the metric has a ``flip_fn``), or a bias-corrected percentile interval
    (``acceleration=0.0``) for a metric without one. Strata that do not match the jackknife's units (per-part
    metrics resample images, not labels) are not used."""
    if metric.jackknife_fn is None:
        return {"acceleration": 0.0}
    jack = metric.jackknife_fn(y_true, pred)
    strata = strata if strata is not None and np.shape(strata) == jack.shape else None
    floor = None
    if metric.flip_fn is not None and np.shape(y_true) == jack.shape:
        floor = smoothed_variance(metric.flip_fn(y_true, pred), y_true, strata)
    finite = None if resampled is None else resampled[np.isfinite(resampled)]
    a, expansion = jackknife_terms(jack, strata, confidence, _RESAMPLED_VARIANCE and finite is not None
                                   and finite.size > 1 and float(np.var(finite)) or None, floor)
    return {"acceleration": a, "expansion": expansion}


def smoothed_variance(flips: np.ndarray, classes: np.ndarray, strata: np.ndarray | None = None,
                      pseudo: float | None = None) -> np.ndarray:
    """A floor under each stratum's variance, from each class's hit count kept off 0 and 1: one value per stratum.

    A class with ``x`` hits among its ``m`` test examples, whose outcomes move the metric by ``d`` each (``flips``,
    a metric's ``flip_fn``; hits are the examples whose flip is negative), contributes ``d**2 m p (1 - p)`` with
    ``p = x / m`` kept within ``[c / m, 1 - c / m]`` (``c = pseudo``, ``c / m`` at most 1/2), ``d**2`` the mean of
    the class's squared flips. Summed over the classes of a stratum, this is the stratum's binomial (delta-method)
    variance, except that a class whose test examples are all right (or all wrong) keeps the variance of ``c``
    flips instead of none. Why: the plug-in ``p = 1`` of such a class gives no variance in the resamples or the
    jackknife however few its examples (the Wald interval's failure for a proportion near 0 or 1, which Wilson
    1927 and Agresti and Coull 1998 fix by keeping the estimate off the boundary); with near-perfect recall in
    small classes the interval of a class-averaged metric was then too narrow exactly when its point was high.
    ``c = 0.1`` (``_PSEUDO_COUNT``) was chosen by simulation: 0.25-1 over-covered (97-99%), 0.1 put every
    metric's coverage within one Monte Carlo error of 95% (docs/statistics.md, "Intervals")."""
    pseudo = _PSEUDO_COUNT if pseudo is None else pseudo
    flips = np.asarray(flips, dtype=np.float64)
    codes = _compact_codes(np.asarray(classes))
    stratum = np.zeros(flips.size, dtype=np.int64) if strata is None else _strata_codes(strata, flips.size)
    m = np.bincount(codes).astype(np.float64)
    hits = np.bincount(codes, weights=(flips < 0).astype(np.float64), minlength=m.size)
    square = np.bincount(codes, weights=np.where(np.isfinite(flips), flips, 0.0) ** 2, minlength=m.size) / m
    bound = np.minimum(pseudo / m, 0.5)
    p = np.clip(hits / m, bound, 1.0 - bound)
    per_class = square * m * p * (1.0 - p)
    class_stratum = np.zeros(m.size, dtype=np.int64)
    class_stratum[codes] = stratum  # the pooled classes share one stratum, so any example's stratum serves
    return np.bincount(class_stratum, weights=per_class, minlength=int(stratum.max()) + 1)


def jackknife_terms(jackknife: np.ndarray, strata: np.ndarray | None = None, confidence: float = 0.95,
                    resampled_variance: float | None = None, floor: np.ndarray | None = None
                    ) -> tuple[float, float]:
    """``(acceleration, expansion)`` of a BCa interval from leave-one-out values ``jackknife`` (n,), for
    resamples drawn plainly or within ``strata``.

    The jackknife influence of example ``i`` in a stratum of ``m`` examples is ``u_i = (m - 1) (mean - jack_i)``,
    the mean taken over its stratum (NaN leave-one-out values count as no influence).

    * Acceleration: a stratum's resampled mean has variance ``sum(u**2) / m**2`` and third cumulant
      ``sum(u**3) / m**3``, so ``a = sum_s sum(u**3) / m**3 / (6 (sum_s sum(u**2) / m**2) ** 1.5)``, the skewness
      of the linearised statistic over 6 (Efron 1987; Davison and Hinkley 1997, sec. 5.3); with one stratum the
      usual ``sum(u**3) / (6 sum(u**2) ** 1.5)``.
    * Expansion: the bootstrap variance of a stratum of ``m`` examples is the plug-in one, too small by
      ``(m - 1) / m``, and with small classes the class-averaged metrics' variance rests on a few classes' few
      examples. The interval is widened about the point by ``sqrt(v / v_boot) * t_df / z``: ``v`` the unbiased
      variance ``sum_s v_s``, ``v_s = sum(u**2) / (m (m - 1))``, ``v_boot`` the plug-in one, and ``t_df / z`` the
      Student-to-normal quantile ratio at the Welch-Satterthwaite degrees of freedom
      ``df = v**2 / sum_s v_s**2 / (m - 1)`` (Hesterberg's expanded percentile interval, by stratum). 1.0 for a
      large plain sample. Without it, 95% intervals of balanced accuracy on 200 examples of 10 imbalanced classes
      covered 87-88% (docs/statistics.md).
    * Floor: with ``floor`` (one value per stratum, :func:`smoothed_variance`), ``v_s`` is at least the floor, so a
      stratum whose classes are all right (no jackknife variance) still widens the interval; without it, a strong
      classifier's 95% intervals covered 85-88% (balanced accuracy, macro-F1) at n = 50 and 93% at n = 200.

    A stratum of one example adds nothing to the acceleration. ``(a, 1.0)`` when nothing varies.
    """
    from scipy.special import ndtri, stdtrit  # what scipy.stats' t.ppf and norm.ppf call, without its import

    jack = np.asarray(jackknife, dtype=np.float64)
    codes = np.zeros(jack.size, dtype=np.int64) if strata is None else _strata_codes(strata, jack.size)
    sizes = np.bincount(codes).astype(np.float64)
    defined = np.isfinite(jack)
    totals = np.bincount(codes, weights=np.where(defined, jack, 0.0), minlength=sizes.size)
    counts = np.bincount(codes, weights=defined.astype(np.float64), minlength=sizes.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = totals / counts
    m = sizes[codes]
    u = np.where(defined, (m - 1.0) * (mean[codes] - jack), 0.0)
    boot = float(np.sum(u**2 / (sizes**2)[codes]))  # powers of the S stratum sizes, not of n copies
    a = float(np.sum(u**3 / (sizes**3)[codes])) / (6.0 * boot**1.5) if boot > 0 else 0.0
    per_stratum = np.bincount(codes, weights=u**2 / (m * np.maximum(m - 1.0, 1.0)), minlength=sizes.size)
    if floor is not None:
        per_stratum = np.maximum(per_stratum, np.asarray(floor, dtype=np.float64)[:sizes.size])
    if resampled_variance is not None and resampled_variance > 0:
        boot = float(resampled_variance)
    v = float(per_stratum.sum())
    if not (boot > 0 and v > 0):
        return a, 1.0
    df = v**2 / float(np.sum(per_stratum**2 / np.maximum(sizes - 1.0, 1.0)))
    tail = (1.0 - confidence) / 2.0
    return a, float(np.sqrt(v / boot) * stdtrit(df, 1.0 - tail) / ndtri(1.0 - tail))


def estimate(point: float, resamples: np.ndarray, confidence: float = 0.95, *,
             acceleration: float | None = None, expansion: float = 1.0) -> Estimate:
    """The interval of ``point`` from its bootstrap ``resamples``, over the resamples where the statistic is
    defined (NaN ones left out; all NaN gives a NaN interval). The one place where lifebench turns bootstrap
    resamples into an interval.

    With ``acceleration`` (a float; see :func:`jackknife_terms`) it is the BCa interval: the quantiles of the
    resamples at levels ``Phi(z0 + (z0 + z) / (1 - a (z0 + z)))`` for ``z = Phi^-1(tail)`` and
    ``Phi^-1(1 - tail)``, where ``z0 = Phi^-1(share of resamples below point, ties counted half)`` corrects the
    bootstrap's bias (kept within ``[0.5 / B, 1 - 0.5 / B]``); ``acceleration=0.0`` gives the bias-corrected
    percentile interval. Then ``expansion`` (from :func:`jackknife_terms`) stretches both limits away from the
    point (limits of a metric whose resamples lie in [0, 1] stay in [0, 1]). Without ``acceleration`` (None): the plain percentile interval,
    for statistics with no bias model (correlations across models, rank agreement). Nothing moves a limit to
    take in the point."""
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be strictly between 0 and 1, got {confidence!r}; e.g. 0.95")
    resamples = np.asarray(resamples, dtype=np.float64).copy()
    resamples.setflags(write=False)
    finite = resamples[np.isfinite(resamples)]
    if not np.isfinite(point) or finite.size == 0:
        return Estimate(point=float(point), low=np.nan, high=np.nan, resamples=resamples, confidence=confidence,
                        acceleration=acceleration, expansion=expansion)
    tail = (1.0 - confidence) / 2.0
    levels = np.array([tail, 1.0 - tail])
    if acceleration is not None:
        from scipy.special import ndtr, ndtri

        below = (np.count_nonzero(finite < point) + 0.5 * np.count_nonzero(finite == point)) / finite.size
        z0 = float(ndtri(np.clip(below, 0.5 / finite.size, 1.0 - 0.5 / finite.size)))
        z = z0 + ndtri(levels)
        levels = ndtr(z0 + z / np.maximum(1.0 - acceleration * z, 1e-12))  # past the pole: level 0 or 1
    low, high = np.quantile(finite, levels)
    if expansion != 1.0:  # a metric whose resamples lie in [0, 1] keeps its limits there
        low, high = np.clip(point + expansion * (np.array([low, high]) - point), min(0.0, finite.min()),
                            max(1.0, finite.max()))
    return Estimate(point=float(point), low=float(low), high=float(high), resamples=resamples,
                    confidence=confidence, acceleration=acceleration, expansion=expansion)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order.

    With p-values sorted ascending as ``p_(1) <= ... <= p_(m)``, the adjusted value of ``p_(i)`` is
    ``min(1, max_{j <= i} (m - j + 1) * p_(j))``. Rejecting where the adjusted value is ``<= alpha``
    controls the family-wise error rate at ``alpha``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"pvalues must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = np.empty(m, dtype=np.float64)
    out[order] = adjusted
    return out


def ties_with_best(
    estimates: Mapping[str, Estimate], alpha: float = 0.05, higher_is_better: bool = True
) -> tuple[str, set[str], dict[str, float]]:
    """Which models cannot be told apart from the best one, with family-wise error at most ``alpha``.

    The best model has the best point estimate (the first one in ``estimates`` order on exact ties). A model is
    marked worse when some other model beats it by more than the paired bootstrap allows, in a step-down test of
    the largest gap over every pair of models (:func:`_stepdown_max`). Why every pair: the best is chosen from the same
    data, so its gap to the others is the largest gap among all pairs; testing only "best vs model" with a
    Holm correction over the ``k - 1`` comparisons marked an equal model worse in 9% of test sets for 2 equal
    models and 15% for 5 (one-sided; 6-13% two-sided for 5-10 models). The max over all pairs bounds, for
    models of equal true score, the chance that any of them is marked worse by ``alpha`` (measured in
    ``bench/ties.py``; docs/statistics.md). All estimates must come from the same index matrix (same ``B``).

    Returns
    -------
    best:
        Name of the best model.
    tied:
        Models not significantly worse than the best, including the best itself.
    pvalues:
        Family-wise adjusted p-value per model: the smallest ``alpha`` at which it would be marked worse; the best
        model gets 1.0. A model whose point estimate is not finite (e.g. mean average precision with no query that
        has a match) is neither best nor tested: NaN, not tied.
    """
    if not estimates:
        raise ValueError("ties_with_best needs at least one estimate")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be strictly between 0 and 1, got {alpha!r}; e.g. 0.05")
    sizes = {name: est.resamples.shape for name, est in estimates.items()}
    if len(set(sizes.values())) != 1 or any(len(s) != 1 for s in sizes.values()):
        raise ValueError(
            f"estimates have different resample shapes {sizes}; score every model on the same index matrix"
        )
    sign = 1.0 if higher_is_better else -1.0
    scored = [name for name in estimates if np.isfinite(estimates[name].point)]
    best = max(scored or list(estimates), key=lambda name: sign * estimates[name].point)
    pvalues = {name: np.nan for name in estimates} | {best: 1.0}
    if len(scored) > 1:
        points = sign * np.array([estimates[name].point for name in scored], dtype=np.float64)
        resamples = sign * np.stack([np.asarray(estimates[name].resamples, dtype=np.float64) for name in scored])
        adjusted = _stepdown_max(points, resamples)
        pvalues |= {name: float(p) for name, p in zip(scored, adjusted, strict=True) if name != best}
    tied = {best} | {name for name in scored if name != best and pvalues[name] > alpha}
    return best, tied, pvalues


def _stepdown_max(points: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """Adjusted p-values of "model i is a best model" from ``points`` ``(k,)`` and paired ``resamples``
    ``(k, B)``, higher being better. NaN resamples (the metric undefined there) are left out pair by pair.

    Evidence against model i: its largest gap, ``T_i = max_j (point_j - point_i)`` over the models j whose
    difference with i is defined on some resample. Its null distribution comes from the centred resamples,
    ``T*_ib = max_j ((res_jb - point_j) - (res_ib - point_i))``: when i is truly a best model, ``T_i`` is at most
    the same max over the true centred differences, whatever the other models' true scores, so centring (not the
    raw resamples, whose difference is centred on the observed gap) gives the null. Step-down (Romano and Wolf,
    2005): with models in decreasing order of ``T``, the l-th is compared with the resampled max of ``T*`` over
    itself and the models after it, and the p-values are made monotone by a running max. Differences within
    roundoff of 0 count as 0, so a pair whose difference never varies is certain evidence when its points differ
    and none when they do not.

    Why raw gaps, not gaps divided by each pair's bootstrap sd (a max-t): that sd is estimated from the same data
    and resamples, and the max over pairs picks the pair whose sd came out too small, a selection the resamples
    (each divided by the same fixed sd) do not reproduce. The studentized test marked one of 5 and 10 equal
    models worse in 5.4 and 5.9% of test sets (pooled, nominal 5%); the raw max in 4.9% (docs/statistics.md).
    All models of a task share one metric, so the gaps are on one scale; the price is power against a gap
    between two low-variance models (both near 0 or 1) when high-variance models are in the same test.
    """
    k, n_res = resamples.shape
    centred = resamples - points[:, None]
    tiny = 1e-9 * (1.0 + float(np.nanmax(np.abs(resamples), initial=0.0)))  # roundoff, not sampling spread
    if np.isfinite(resamples).all():  # every pair defined: the max over j != i from each column's top two, O(k B)
        def snap(x: np.ndarray) -> np.ndarray:  # monotone, so the max of snapped gaps is the snapped max
            return np.where(np.abs(x) > tiny, x, 0.0)

        top = np.argmax(centred, axis=0)
        first = centred[top, np.arange(n_res)]
        second = np.max(np.where(np.arange(k)[:, None] == top, -np.inf, centred), axis=0)
        null = snap(np.where(np.arange(k)[:, None] == top, second, first) - centred)
        best = int(np.argmax(points))
        runner_up = np.max(np.delete(points, best))
        observed = snap(np.where(np.arange(k) == best, runner_up, points[best]) - points)
    else:
        observed, null = _pair_max_loop(points, centred, tiny)
    order = np.argsort(-observed, kind="stable")
    tail_max = np.fmax.accumulate(null[order][::-1], axis=0)[::-1]  # row l: max over models order[l:]
    valid = ~np.isnan(tail_max)
    exceed = np.count_nonzero(valid & (tail_max >= observed[order][:, None]), axis=1)
    adjusted = np.minimum(np.maximum.accumulate((1 + exceed) / (1 + valid.sum(axis=1))), 1.0)
    out = np.empty(k, dtype=np.float64)
    out[order] = adjusted
    return out


def _pair_max_loop(points: np.ndarray, centred: np.ndarray, tiny: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_stepdown_max`'s ``T_i`` and ``T*_ib`` pair by pair, leaving out the pairs (and the resamples of a
    pair) where a difference is undefined (NaN); O(k**2 B), for resamples with NaN."""
    k, n_res = centred.shape
    observed = np.full(k, -np.inf)
    null = np.full((k, n_res), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: pairs never defined
        for i in range(k):
            diff = centred - centred[i]  # centred resampled difference j - i, every j at once
            diff = np.where(np.abs(diff) > tiny, diff, np.where(np.isnan(diff), np.nan, 0.0))
            gap = points - points[i]
            gap = np.where(np.abs(gap) > tiny, gap, 0.0)
            keep = ~np.isnan(diff).all(axis=1) & (np.arange(k) != i)
            if keep.any():
                observed[i] = gap[keep].max()
                null[i] = np.fmax.reduce(diff[keep], axis=0)
    return observed, null
