"""How well the logistic probe's C choice does on small training sets: one 20% hold-out against 5-fold CV.

Each replication draws a small stratified training set from scikit-learn's digits (64 pixel features, 10 classes;
the rest of the 1,797 images is the test set), fits ``LogisticProbe`` choosing C from the default 13-value grid
by a hold-out (``cv_below=0``, the old rule) and by 5-fold cross-validation (the rule below 1,000 examples), and
also fits every C of the grid to find the one with the best test macro-F1 (the oracle). Reported per training size:
the mean test macro-F1 of each rule, the mean regret (oracle minus rule) with its Monte Carlo standard error, and
how often each rule picks the oracle's C.

    .venv/bin/python bench/small_sample_c.py [--reps 200] [--sizes 30,60,150,400]

One thread (the probes are tiny). Paste the output into docs/statistics.md ("Small samples") with date and machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from lifebench.protocols.logreg import DEFAULT_CS, LogisticProbe, _macro_f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--sizes", default="30,60,150,400", help="training-set sizes (images, all 10 classes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"1 thread; {args.reps} replications per size; digits, 10 classes, test = the images not drawn")
    print("n_train  rule      test macro-F1  regret (SE)        picks oracle C")
    for n in [int(v) for v in args.sizes.split(",")]:
        results: dict[str, list[tuple[float, float, bool]]] = {"hold-out": [], "5-fold": []}
        for rep in range(args.reps):
            rng = np.random.default_rng([n, rep])
            train = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: n // 10] for c in range(10)])
            test = np.setdiff1d(np.arange(len(y)), train)
            per_c = {c: _macro_f1(y[test], LogisticProbe(C=c).fit(X[train], y[train]).predict(X[test]), 10)
                     for c in DEFAULT_CS}
            best = max(per_c.values())
            for rule, below in (("hold-out", 0), ("5-fold", 1000)):
                probe = LogisticProbe(cv_below=below, random_state=rep).fit(X[train], y[train])
                score = per_c[probe.C_]  # the refit at the chosen C is the fixed-C fit above
                results[rule].append((score, best - score, per_c[probe.C_] == best))
        for rule, rows in results.items():
            score, regret, hit = (np.array(v, dtype=float) for v in zip(*rows, strict=True))
            se = regret.std(ddof=1) / np.sqrt(len(regret))
            print(f"{n:>7}  {rule:<8}  {score.mean():.4f}         {regret.mean():.4f} ({se:.4f})    "
                  f"{hit.mean():.2f} +- {np.sqrt(hit.mean() * (1 - hit.mean()) / len(hit)):.2f}")


if __name__ == "__main__":
    main()
