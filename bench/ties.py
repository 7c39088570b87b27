"""Calibration and power of the "tied with the best" mark, old rule against new, by simulation with known truth.

Each simulated task has ``n`` test examples and ``k`` models whose per-example correctness is drawn from a
Gaussian latent model: example i has a difficulty ``z_i`` shared by all models and model m its own noise
``e_mi``; model m is right when ``sqrt(rho) z_i + sqrt(1 - rho) e_mi < Phi^-1(p_m)``. So every model has true
accuracy exactly ``p_m``, models err on different examples (``rho = 0``: independently; ``rho = 0.5``: errors
correlated, as for models that find the same images hard). Every model of a replication is scored on the same
bootstrap resamples of one shared index matrix (:func:`lifebench.metrics.resample_indices`), as the leaderboard
does; the accuracy on resample b is ``counts_b . correct / n``. Replications come in blocks of 200, each block
with its own index matrix, so the rates average over index matrices too.

Three rules mark a model "significantly worse than the best" at ``alpha = 0.05``:

* ``old``: lifebench before issue 13: the best by point estimate, then a one-sided uncentred paired bootstrap
  test of each other model against it, ``p = (1 + #{b: best_b - m_b <= 0}) / (B + 1)``, Holm over ``k - 1``;
* ``2s-holm``: the same comparisons with the best, two-sided and centred,
  ``p = (1 + #{b: |d_b - d| >= |d|}) / (B + 1)``, Holm over ``k - 1``;
* ``max-t``: the step-down max test over all pairs with each pair's gap divided by its bootstrap sd, estimated
  once from the resamples (shipped briefly during issue 13; kept here for comparison);
* ``new``: :func:`lifebench.metrics.ties_with_best` as shipped (step-down max of the raw gaps over all pairs).

Scenarios (accuracy ``p0 = 0.80``):

* ``equal``: all k models at ``p0``; **FWER** = share of replications with any model marked worse;
* ``gap g``: one model at ``p0 + g``, the other k - 1 at ``p0``; **power** = mean share of the k - 1 worse models
  marked worse; **err** = share of replications where the truly best model is marked worse;
* ``top2 g`` (``--top2``): two models at ``p0 + g``, the rest at ``p0``; err = either top model marked worse.

Monte Carlo error: ``± SE`` is ``sqrt(p (1 - p) / R)`` for a rate from R replications and the standard error of
the per-replication share for power. Run (about 15 minutes on 2 shared cores; ``--quick`` a few seconds)::

    .venv/bin/python bench/ties.py                          # k 2,5,10 x n 200,500,2000 x gap 0,1,2,3,5 x rho 0,0.5
    .venv/bin/python bench/ties.py --quick                  # k 2,5,10 at n 500, 600 replications
    .venv/bin/python bench/ties.py --top2 --gaps 3,5        # two equal models at the top
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time

import numpy as np
from scipy.stats import norm

from lifebench.metrics import Estimate, holm, resample_indices, task_seed, ties_with_best

ALPHA = 0.05
P0 = 0.80
BLOCK = 200  # replications per index matrix


def counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Copies of each example in each resample, ``(B, n)`` float32, from lifebench's own index matrix."""
    idx = resample_indices(n, n_resamples, seed).astype(np.int64)
    flat = (idx + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float32)


def simulate(k_counts: np.ndarray, accuracy: np.ndarray, rho: float, reps: int, rng: np.random.Generator):
    """Point accuracies ``(R, k)`` and resampled accuracies ``(R, k, B)`` of ``reps`` simulated test sets."""
    n = k_counts.shape[1]
    latent = np.sqrt(rho) * rng.standard_normal((reps, n, 1)) + np.sqrt(1 - rho) * rng.standard_normal(
        (reps, n, accuracy.size))
    correct = (latent < norm.ppf(accuracy)).astype(np.float32)
    resampled = np.einsum("bn,rnk->rkb", k_counts, correct, optimize=True) / n
    return correct.mean(axis=1, dtype=np.float64), resampled.astype(np.float64)


def old_rule(points: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """Marked-worse flags of lifebench's rule before issue 13 (one-sided, uncentred, Holm over k - 1)."""
    best = int(np.argmax(points))
    others = [i for i in range(points.size) if i != best]
    raw = [(1 + np.count_nonzero(resamples[best] - resamples[i] <= 0)) / (resamples.shape[1] + 1) for i in others]
    marked = np.zeros(points.size, dtype=bool)
    marked[others] = holm(raw) <= ALPHA
    return marked


def two_sided_holm(points: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """Marked-worse flags of two-sided centred paired tests against the best, Holm over k - 1."""
    best = int(np.argmax(points))
    others = [i for i in range(points.size) if i != best]
    raw = []
    for i in others:
        gap = points[best] - points[i]
        centred = resamples[best] - resamples[i] - gap
        raw.append((1 + np.count_nonzero(np.abs(centred) >= abs(gap))) / (resamples.shape[1] + 1))
    marked = np.zeros(points.size, dtype=bool)
    marked[others] = holm(raw) <= ALPHA
    return marked


def new_rule(points: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """Marked-worse flags of :func:`lifebench.metrics.ties_with_best`."""
    names = [f"m{i}" for i in range(points.size)]
    estimates = {name: Estimate(point=float(p), low=np.nan, high=np.nan, resamples=r)
                 for name, p, r in zip(names, points, resamples, strict=True)}
    _, tied, _ = ties_with_best(estimates, alpha=ALPHA)
    return np.array([name not in tied for name in names])


def studentized_rule(points: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """Marked-worse flags of the studentized step-down max-t test: ``t_ji = gap_ji / sd_ji`` with ``sd_ji`` the sd
    of the paired resampled difference, the null from the centred resamples divided by the same ``sd_ji``."""
    k = points.size
    centred = resamples - points[:, None]
    observed, null = np.full(k, -np.inf), np.full((k, resamples.shape[1]), -np.inf)
    for i in range(k):
        diff = centred - centred[i]
        sd = diff.std(axis=1, ddof=1)
        keep = (np.arange(k) != i) & (sd > 0)
        if keep.any():
            observed[i] = ((points - points[i])[keep] / sd[keep]).max()
            null[i] = (diff[keep] / sd[keep, None]).max(axis=0)
    order = np.argsort(-observed, kind="stable")
    tail_max = np.maximum.accumulate(null[order][::-1], axis=0)[::-1]
    pvalues = (1 + np.count_nonzero(tail_max >= observed[order][:, None], axis=1)) / (resamples.shape[1] + 1)
    marked = np.zeros(k, dtype=bool)
    marked[order] = np.maximum.accumulate(pvalues) <= ALPHA
    return marked


RULES = {"old": old_rule, "2s-holm": two_sided_holm, "max-t": studentized_rule, "new": new_rule}


def cell(k: int, n: int, gap: float, rho: float, reps: int, n_resamples: int, n_top: int, seed: int) -> dict:
    """Error and power of each rule for one scenario; models ``[0, n_top)`` are the truly best."""
    accuracy = np.full(k, P0)
    accuracy[:n_top] += gap
    top = np.arange(k) < (n_top if gap > 0 else k)
    marked = {name: [] for name in RULES}
    rng = np.random.default_rng([seed, k, n, int(round(gap * 1000)), int(round(rho * 1000)), n_top])
    for block in range(-(-reps // BLOCK)):
        size = min(BLOCK, reps - block * BLOCK)
        k_counts = counts(n, n_resamples, task_seed(f"bench-ties/{k}/{n}/{block}", seed))
        points, resampled = simulate(k_counts, accuracy, rho, size, rng)
        for name, rule in RULES.items():
            marked[name] += [rule(points[r], resampled[r]) for r in range(size)]
    out = {}
    for name, flags in marked.items():
        flags = np.array(flags)
        err = flags[:, top].any(axis=1)
        out[f"{name}_err"] = (err.mean(), np.sqrt(err.mean() * (1 - err.mean()) / reps))
        if gap > 0:
            share = flags[:, ~top].mean(axis=1)
            out[f"{name}_power"] = (share.mean(), share.std(ddof=1) / np.sqrt(reps))
    return out


def fmt(value: tuple[float, float]) -> str:
    return f"{100 * value[0]:.1f} ± {100 * value[1]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="2,5,10", help="numbers of models (default 2,5,10)")
    parser.add_argument("--ns", default="200,500,2000", help="test-set sizes (default 200,500,2000)")
    parser.add_argument("--gaps", default="0,1,2,3,5", help="accuracy gaps in points (default 0,1,2,3,5)")
    parser.add_argument("--rhos", default="0,0.5", help="latent error correlations (default 0,0.5)")
    parser.add_argument("--reps", type=int, default=2000, help="replications per scenario (default 2000)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--top2", action="store_true", help="two equal models at the top instead of one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="k 2,5,10; n 500; gaps 0,3; rho 0; 600 replications")
    args = parser.parse_args()
    if args.quick:
        args.ks, args.ns, args.gaps, args.rhos, args.reps = "2,5,10", "500", "0,3", "0", 600
    ks, ns = [int(x) for x in args.ks.split(",")], [int(x) for x in args.ns.split(",")]
    gaps, rhos = [float(x) / 100 for x in args.gaps.split(",")], [float(x) for x in args.rhos.split(",")]
    n_top = 2 if args.top2 else 1

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if platform.system() == "Linux" else platform.processor()
    print(f"# bench/ties.py {dt.date.today().isoformat()}, {cpu}, numpy {np.__version__}; R = {args.reps} "
          f"replications, B = {args.resamples} resamples, alpha = {ALPHA}, p0 = {P0}, top models = {n_top}")
    print("# err: % of replications with a truly best model marked worse (all models when gap = 0: the FWER); "
          "power: mean % of the worse models marked worse; ± Monte Carlo SE")
    print("| k | n | rho | gap | " + " | ".join(f"{m} err" for m in RULES) + " | "
          + " | ".join(f"{m} power" for m in RULES) + " |")
    print("|--:|--:|--:|--:|" + "--:|" * (2 * len(RULES)))
    t0 = time.perf_counter()
    for k in ks:
        if n_top >= k:
            continue
        for n in ns:
            for rho in rhos:
                for gap in gaps:
                    r = cell(k, n, gap, rho, args.reps, args.resamples, n_top, args.seed)
                    power = [fmt(r[f"{m}_power"]) if gap > 0 else "" for m in RULES]
                    print(f"| {k} | {n} | {rho:g} | {100 * gap:g} | " + " | ".join(fmt(r[f"{m}_err"]) for m in RULES)
                          + " | " + " | ".join(power) + " |", flush=True)
    print(f"# {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
