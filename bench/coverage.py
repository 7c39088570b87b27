"""Coverage of lifebench's 95% bootstrap intervals in simulation with known truth: old method against new.

A population is a class-prior vector ``p`` and a confusion matrix ``M`` (``M[c, j]`` = P(predicted j | true c)):
recall ``r_c`` on the diagonal and the errors of class ``c`` spread over the other classes in proportion to their
priors (a model confuses towards common classes). A simulated test set draws ``n`` true classes iid from ``p``
and each prediction from its row of ``M``, so the class composition varies between test sets as it would for a
random sample. Populations:

* ``balanced``: 10 classes of prior 0.1, recalls 0.90 down to 0.50;
* ``imbalanced``: 10 classes with priors proportional to 0.75**c (26.5% down to 2.0%), recalls 0.85 down to 0.45;
* ``strong``: the same priors, recalls 0.98 down to 0.85 (accuracy 94.5%, the issue's strong classifier);
* ``rare40``: those 10 classes scaled to 80% plus 40 rare classes of prior 0.5% each, recall 0.40.

Estimands (the truth each interval is scored against):

* ``conditional``: the metric at the test set's own class composition ``n_c``: the limit of the metric on ever
  larger test sets with those class proportions, averaged over the classes present in the test set. Accuracy
  ``sum_c n_c r_c / n``; balanced accuracy ``mean_c r_c``; macro-F1 ``mean_c 2 n_c r_c / (n_c + sum_j n_j M[j, c])``.
  This is what the new method (lifebench's intervals) targets.
* ``population``: the same at the population priors over all classes (also the classes missing from the test
  set).

Methods, both on B resamples:

* ``old``: plain resampling of test examples, percentile interval, widened to contain the point estimate
  (lifebench before issue 13);
* ``new``: resampling within true classes, the classes under 10 test examples pooled into one stratum
  (``resample_indices(..., strata=class_strata(y_true))``), BCa limits with the acceleration from the metric's
  jackknife, expanded by the jackknife-to-resampled variance ratio, each stratum's jackknife variance floored by
  the smoothed per-class variance of ``smoothed_variance`` (``bootstrap_ci``).

A cell is the share of R test sets whose interval contains the truth; its Monte Carlo error is
``sqrt(c (1 - c) / R)``. Run (about 10 minutes on one core for the full grid)::

    .venv/bin/python bench/coverage.py                      # R = 500, B = 1000, the full grid
    .venv/bin/python bench/coverage.py --reps 300 --populations strong imbalanced --n 200 1000
    .venv/bin/python bench/coverage.py --reps 100 --n 200   # a quick look
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from lifebench.metrics import bootstrap_ci, get_metric, resample_indices
from lifebench.metrics.bootstrap import class_strata

METRICS = ("accuracy", "macro_f1", "balanced_accuracy")


def population(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(priors, M)`` of the named population (see the module docstring)."""
    common = 0.75 ** np.arange(10)
    if name == "balanced":
        priors, recalls = np.full(10, 0.1), np.linspace(0.90, 0.50, 10)
    elif name == "imbalanced":
        priors, recalls = common / common.sum(), np.linspace(0.85, 0.45, 10)
    elif name == "strong":
        priors, recalls = common / common.sum(), np.linspace(0.98, 0.85, 10)
    elif name == "rare40":
        priors = np.concatenate([0.8 * common / common.sum(), np.full(40, 0.005)])
        recalls = np.concatenate([np.linspace(0.85, 0.45, 10), np.full(40, 0.40)])
    else:
        raise SystemExit(f"unknown population {name!r}; use balanced, imbalanced, strong or rare40")
    off = priors[None, :] / (1.0 - priors[:, None])  # errors of class c spread by the other classes' priors
    M = (1.0 - recalls)[:, None] * off
    np.fill_diagonal(M, recalls)
    return priors, M


def truth(metric: str, weights: np.ndarray, M: np.ndarray) -> float:
    """The metric in the limit of a test set with class proportions ``weights``, over the classes with weight."""
    present = weights > 0
    recalls = np.diag(M)
    if metric == "accuracy":
        return float(weights @ recalls / weights.sum())
    if metric == "balanced_accuracy":
        return float(recalls[present].mean())
    f1 = 2 * weights * recalls / (weights + weights @ M)
    return float(f1[present].mean())


def draw(rng: np.random.Generator, n: int, priors: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = rng.choice(priors.size, size=n, p=priors)
    cdf = np.cumsum(M[y], axis=1)
    pred = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), priors.size - 1)
    return y, pred


def old_interval(metric: str, y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    """Plain percentile interval widened to contain the point (lifebench before issue 13)."""
    m = get_metric(metric)
    point = m.fn(y, pred)
    low, high = np.quantile(m.resampled_fn(y, pred, idx), [0.025, 0.975])
    return min(low, point), max(high, point)


def run_cell(pop: str, n: int, reps: int, n_resamples: int, seed: int) -> dict[tuple[str, str, str], float]:
    """Coverage rates keyed by (metric, method, estimand)."""
    priors, M = population(pop)
    rng = np.random.default_rng([seed, n, ["balanced", "imbalanced", "rare40", "strong"].index(pop)])
    hits: dict[tuple[str, str, str], int] = {}
    for _ in range(reps):
        y, pred = draw(rng, n, priors, M)
        composition = np.bincount(y, minlength=priors.size).astype(np.float64)
        plain = resample_indices(n, n_resamples, int(rng.integers(2**63)))
        strata = class_strata(y)  # classes of 10+ examples, and one pool of the smaller ones
        within = resample_indices(n, n_resamples, int(rng.integers(2**63)), strata=strata)
        for metric in METRICS:
            targets = {"conditional": truth(metric, composition, M), "population": truth(metric, priors, M)}
            est = bootstrap_ci(metric, y, pred, within, strata=strata)  # the BCa terms within the same strata
            intervals = {"old": old_interval(metric, y, pred, plain), "new": (est.low, est.high)}
            for method, (low, high) in intervals.items():
                for estimand, value in targets.items():
                    key = (metric, method, estimand)
                    hits[key] = hits.get(key, 0) + int(low <= value <= high)
    return {key: count / reps for key, count in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=500, help="simulated test sets per cell (R)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per interval (B)")
    parser.add_argument("--n", type=int, nargs="+", default=[50, 200, 1000], help="test-set sizes")
    parser.add_argument("--populations", nargs="+", default=["balanced", "imbalanced", "strong", "rare40"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    mce = np.sqrt(0.95 * 0.05 / args.reps)
    print(f"95% intervals, R = {args.reps} test sets per row, B = {args.resamples}; Monte Carlo error of a rate "
          f"near 0.95: {mce:.3f} (sqrt(c (1 - c) / R)). cond = the metric at the test set's class composition "
          "(lifebench's estimand), pop = at the population priors.\n")
    header = "| population | n | metric | old, cond | old, pop | new, cond | new, pop |"
    print(header)
    print("|:--|--:|:--|--:|--:|--:|--:|")
    for pop in args.populations:
        for n in args.n:
            rates = run_cell(pop, n, args.reps, args.resamples, args.seed)
            for metric in METRICS:
                cells = [rates[(metric, method, estimand)] for method in ("old", "new")
                         for estimand in ("conditional", "population")]
                print(f"| {pop} | {n} | {metric} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s on {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
