"""Does "about N test images would resolve it" hold? Simulation with known truth for the report's labels estimate.

For accuracy and macro-F1, two correlated models on an imbalanced 10-class population of 200,000 examples (the
truth: their scores on the whole population; test sets are drawn from it with replacement):

* true n*: the formula of :mod:`lifebench.report.labels_needed` with the true gap and the true per-example sd of
  the paired difference (sd of the difference over 2,000 test sets of 4,000, times sqrt(4000));
* resolution at n*: the fraction of R test sets of n* images whose paired percentile bootstrap interval (the
  report's, B resamples) excludes 0, against the stated power (80%); binomial MC error;
* from pilots of n0 images, as a user has them: the estimate with the pilot's own gap (what the report prints)
  and with the true gap (only the sd estimated), as ratios to n*; and how often n* lies in the printed 50% range.

Run::

    .venv/bin/python bench/labels_needed.py            # about 2 minutes on one core
    .venv/bin/python bench/labels_needed.py --quick    # fewer replications
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from lifebench.metrics import ResampleCounts, accuracy_resampled, macro_f1_resampled, resample_indices
from lifebench.metrics.classification import accuracy, macro_f1
from lifebench.report.labels_needed import compare_pair, n_for_power
from lifebench.report.leaderboard import Cell

CLASSES = 10
POPULATION = 200_000


def population(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True labels and two models' predictions: B is A with 8% of its answers flipped, mostly for the worse."""
    rng = np.random.default_rng(seed)
    probs = 1.0 / np.arange(1, CLASSES + 1) ** 1.1
    y = rng.choice(CLASSES, POPULATION, p=probs / probs.sum())
    recall = np.linspace(0.9, 0.55, CLASSES)  # rarer classes are harder
    right_a = rng.random(POPULATION) < recall[y]
    wrong = (y + rng.integers(1, 3, POPULATION)) % CLASSES  # mistakes go to neighbouring classes
    a = np.where(right_a, y, wrong)
    flip = rng.random(POPULATION) < 0.08
    b = np.where(flip & right_a & (rng.random(POPULATION) < 0.62), wrong, np.where(flip & ~right_a, y, a))
    return y, a, b


def cell(point: float, n: int) -> Cell:
    return Cell(task="sim", backbone="m", protocol="p", metric="m", point=point, low=point, high=point, n_test=n,
                is_best=False, tied=False, pvalue=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reps, pilots, n_res = (150, 150, 400) if args.quick else (400, 400, 1000)
    confidence, power = 0.95, 0.8
    y, a, b = population(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    t0 = time.perf_counter()
    print(f"population: {POPULATION:,} examples, {CLASSES} classes (Zipf 1.1), two correlated models; "
          f"{confidence:.0%} two-sided, power {power:.0%}; B = {n_res} resamples per test set")
    for name, fn, resampled in (("accuracy", accuracy, accuracy_resampled), ("macro_f1", macro_f1, macro_f1_resampled)):
        true_gap = fn(y, a) - fn(y, b)
        big = rng.integers(0, POPULATION, (2000, 4000))
        sigma = float(np.std(resampled(y, a, big) - resampled(y, b, big), ddof=1) * math.sqrt(4000))
        n_star = math.ceil(n_for_power(sigma, true_gap, confidence, power))
        # resolution at n*: the report's paired percentile interval on R fresh test sets of n* images
        hits = 0
        for _ in range(reps):
            rows = rng.integers(0, POPULATION, n_star)
            yt, at, bt = y[rows], a[rows], b[rows]
            idx = ResampleCounts(resample_indices(n_star, n_res, int(rng.integers(2**32))))
            diff = resampled(yt, at, idx) - resampled(yt, bt, idx)
            low, high = np.quantile(diff, [(1 - confidence) / 2, (1 + confidence) / 2])
            hits += bool(low > 0 or high < 0)
        rate = hits / reps
        # pilots of n0 images: the printed estimate, the estimate with the true gap, and the 50% range
        n0 = 400
        ratio, oracle, covered, reversed_ = [], [], 0, 0
        for _ in range(pilots):
            rows = rng.integers(0, POPULATION, n0)
            yt, at, bt = y[rows], a[rows], b[rows]
            idx = ResampleCounts(resample_indices(n0, n_res, int(rng.integers(2**32))))
            ra, rb = resampled(yt, at, idx), resampled(yt, bt, idx)
            est = compare_pair("sim", name, cell(fn(yt, at), n0), cell(fn(yt, bt), n0), ra, rb, chosen="named",
                               confidence=confidence, power=power)
            if est.n_needed is None or est.difference * true_gap < 0:
                reversed_ += 1
                ratio.append(math.inf)
            else:
                ratio.append(est.n_needed / n_star)
            oracle.append(n_for_power(est.sigma, true_gap, confidence, power) / n_star)
            high = math.inf if est.n_needed_high is None else est.n_needed_high
            covered += est.n_needed_low is not None and est.n_needed_low <= n_star <= high and est.difference * true_gap > 0
        se = math.sqrt(rate * (1 - rate) / reps)
        cov = covered / pilots
        q = np.quantile(ratio, [0.25, 0.5, 0.75])
        qo = np.quantile(oracle, [0.25, 0.5, 0.75])
        print(f"\n{name}: true gap {true_gap:.4f}, per-example sd of the difference {sigma:.4f}, n* = {n_star:,}")
        print(f"  resolved at n* (paired percentile interval excludes 0): {rate:.3f} +- {se:.3f} of {reps} test sets "
              f"(stated {power:.2f})")
        print(f"  pilots of {n0}: estimate/n* with the pilot's gap: median {q[1]:.2f} (IQR {q[0]:.2f}-{q[2]:.2f}); "
              f"order reversed or no gap in {reversed_}/{pilots}")
        print(f"  pilots of {n0}: estimate/n* with the true gap (sd only estimated): median {qo[1]:.3f} "
              f"(IQR {qo[0]:.3f}-{qo[2]:.3f})")
        print(f"  n* inside the printed 50% range: {cov:.3f} +- {math.sqrt(cov * (1 - cov) / pilots):.3f} of {pilots} "
              "pilots (stated 0.50)")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
