"""Probe speed and quality: lifebench's LogisticProbe against a BioBench-style linear probe, side by side.

The probes are fit on the SAME synthetic features in ONE run and scored on the same held-out test set:

* ``biobench``: our own re-implementation of BioBench's ``LinearProbeClassifier`` (the comparison baseline,
  see the BioBench reference notes (shared/reference/biobench.md) section 3): ``LayerNorm(D) -> Linear(D, C)``, AdamW (lr 3e-4, weight
  decay 1e-2 on the weight matrix only), cosine schedule from lr to 1e-2 * lr with no warm-up, plain
  cross-entropy, batches of 2048 from a shuffling ``DataLoader`` over a ``TensorDataset``, a fixed 10,000
  steps, no validation or search. On CUDA it runs under ``autocast`` + ``GradScaler`` as BioBench does; on a
  CPU it runs in float32 (BioBench's ``autocast("cpu")`` would switch to bfloat16, many times slower per
  step on CPUs without bfloat16 units, which would flatter us).
* ``lifebench``: :class:`lifebench.protocols.LogisticProbe` with its defaults: standardisation, ``C`` chosen
  from 13 values on a stratified 20% of train, refit on all of train, L-BFGS to tolerance.
* ``lifebench, C fixed``: the same probe told the ``C`` it chose (one fit, no search), for scale.
* ``sklearn``: the same recipe written with scikit-learn, as a CPU user would write it: features standardised
  with train statistics, the same stratified 20% hold-out (lifebench's split, same seed), one
  ``LogisticRegression(C=c, max_iter=1000)`` (lbfgs, default ``tol=1e-4``, float64) per grid value from
  scratch, macro-F1 on the hold-out (ties to the smaller C), refit on all of train at the chosen C.
  ``--sklearn-tol`` changes its tolerance (lifebench fits to ``tol=1e-6``).

Speed against scikit-learn on several sizes, without the slow BioBench-style baseline (one thread for both,
BLAS and OpenMP pools limited too; each time is the minimum of ``--repeats`` runs, lifebench and scikit-learn
alternating so that both see the same load)::

    .venv/bin/python bench/probe.py --baseline sklearn --repeats 3 \
        --sizes 8000x256x100,8000x512x200,20000x256x100,20000x512x200

Features imitate frozen-backbone embeddings: hierarchical class means (20 groups of 5 classes), a power-law
covariance spectrum in a random basis, heavy-tailed (Student-t) noise with class-specific spread, a few
large-magnitude "outlier" dimensions and a non-zero mean. Scenarios: ``balanced`` (200 training examples per
class) and ``zipf`` (long-tailed: class ``r`` gets ``n_max / r`` examples, at least 5). The test set has 50
examples of every class. Everything is seeded.

Run (about 15 minutes on one CPU thread, most of it the 10,000 baseline steps)::

    .venv/bin/python bench/probe.py                      # both scenarios, 20k x 1024, 100 classes, 1 thread
    .venv/bin/python bench/probe.py --device cuda        # the same on a GPU
    .venv/bin/python bench/probe.py --steps 500          # quick look: baseline time extrapolated, see below

``--steps N`` (N < 10,000) trains the baseline for N steps with the schedule shortened to N steps, reports
the measured time per step x 10,000 as its time (labelled "extrapolated"), and its macro-F1 as that of the
SHORT run, which is not the 10,000-step result.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.utils import check_random_state
from threadpoolctl import threadpool_limits

from lifebench.protocols import LogisticProbe
from lifebench.protocols.logreg import DEFAULT_CS, _stratified_holdout

BIOBENCH_STEPS = 10_000


# --------------------------------------------------------------------------------------------------- data


def class_counts(scenario: str, n_classes: int, n_train: int) -> np.ndarray:
    """Training examples per class: equal, or Zipf (``n_max / rank``, at least 5) summing to about ``n_train``."""
    if scenario == "balanced":
        return np.full(n_classes, n_train // n_classes)
    if scenario == "zipf":
        weights = 1.0 / np.arange(1, n_classes + 1)
        return np.maximum(5, np.round(n_train * weights / weights.sum())).astype(int)
    raise ValueError(f"unknown scenario {scenario!r}; use 'balanced' or 'zipf'")


def make_features(
    counts: np.ndarray, dim: int, n_test_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/test features (float32) and labels with embedding-like structure (see module docstring)."""
    rng = np.random.default_rng(seed)
    n_classes = counts.size
    spectrum = np.arange(1, dim + 1) ** -1.0
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    groups = np.arange(n_classes) % 20
    group_means = rng.standard_normal((20, dim)) * np.sqrt(spectrum)
    means = 0.16 * (group_means[groups] + 0.7 * rng.standard_normal((n_classes, dim)) * np.sqrt(spectrum))
    spread = np.exp(rng.normal(0.0, 0.25, n_classes))  # some classes are more diffuse than others
    scales = np.exp(rng.normal(0.0, 0.3, dim))
    scales[rng.choice(dim, 8, replace=False)] *= 10.0  # a few large-magnitude dimensions
    offset = rng.normal(0.0, 0.5, dim)

    def draw(per_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(n_classes), per_class)
        noise = rng.standard_t(5, size=(y.size, dim)) * np.sqrt(3 / 5)  # unit variance, heavy tails
        latent = means[y] + noise * np.sqrt(spectrum) * spread[y, None]
        X = (latent @ basis.T) * scales + offset
        order = rng.permutation(y.size)
        return X[order].astype(np.float32), y[order]

    X_train, y_train = draw(counts)
    X_test, y_test = draw(np.full(n_classes, n_test_per_class))
    return X_train, y_train, X_test, y_test


# --------------------------------------------------------------------------------------------------- baseline


class BioBenchStyleProbe:
    """Comparison baseline: a re-implementation of BioBench's LinearProbeClassifier (own code, same recipe).

    ``LayerNorm + Linear`` trained with AdamW (weight decay on parameters with ndim > 1 only) for ``n_steps``
    batches of ``batch_size`` from a shuffling DataLoader, lr set after every step by a cosine schedule from
    ``lr`` to ``lr * 1e-2``; plain cross-entropy; autocast + GradScaler on CUDA.
    """

    def __init__(
        self,
        n_steps: int = BIOBENCH_STEPS,
        batch_size: int = 2048,
        lr: float = 3e-4,
        weight_decay: float = 1e-2,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        self.n_steps, self.batch_size, self.lr, self.weight_decay = n_steps, batch_size, lr, weight_decay
        self.device, self.seed = device, seed

    def _lr(self, step: int) -> float:
        """Cosine decay from ``lr`` (step 0) to ``lr * 1e-2`` (step ``n_steps``), no warm-up."""
        final = self.lr * 1e-2
        return final + 0.5 * (self.lr - final) * (1.0 + math.cos(math.pi * step / self.n_steps))

    def fit(self, X: np.ndarray, y: np.ndarray) -> BioBenchStyleProbe:
        torch.manual_seed(self.seed)  # BioBench sets no seed; we do, for repeatable benchmarks
        dim, n_classes = X.shape[1], int(y.max()) + 1
        cuda = torch.device(self.device).type == "cuda"
        self.model_ = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, n_classes)).to(
            self.device
        )
        self.model_.train()
        decay = [p for p in self.model_.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model_.parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        data = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y).long())
        loader = torch.utils.data.DataLoader(
            data, self.batch_size, shuffle=True, pin_memory=cuda, drop_last=False
        )
        scaler = torch.amp.GradScaler("cuda", enabled=cuda)
        batches = iter(loader)
        for step in range(self.n_steps):
            try:
                xb, yb = next(batches)
            except StopIteration:
                batches = iter(loader)
                xb, yb = next(batches)
            xb, yb = xb.to(self.device), yb.to(self.device)
            with torch.autocast("cuda", enabled=cuda):
                loss = torch.nn.functional.cross_entropy(self.model_(xb), yb)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            for group in opt.param_groups:
                group["lr"] = self._lr(step + 1)
            opt.zero_grad(set_to_none=True)
        self.model_.eval()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model_(torch.from_numpy(X).to(self.device)).argmax(1).cpu().numpy()


class SklearnRecipe:
    """Comparison baseline on the CPU: lifebench's recipe written with scikit-learn's ``LogisticRegression``.

    Standardise with train statistics; hold out the same stratified ``val_fraction`` as ``LogisticProbe``
    (its own splitter and seed, so both score the same examples); fit every ``C`` of the grid from scratch;
    keep the best held-out macro-F1 (ties to the smaller ``C``); refit on all of train at that ``C``. This is
    ``LogisticProbe``'s recipe from 1,000 training examples on (below that it cross-validates instead).
    """

    def __init__(self, Cs=DEFAULT_CS, tol: float = 1e-4, max_iter: int = 1000, seed: int = 0) -> None:
        self.Cs, self.tol, self.max_iter, self.seed = sorted(Cs), tol, max_iter, seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> SklearnRecipe:
        X = X.astype(np.float64)
        self.mean_, self.std_ = X.mean(0), X.std(0)
        self.std_[self.std_ == 0] = 1.0
        Z = (X - self.mean_) / self.std_
        fit, val = _stratified_holdout(y, int(y.max()) + 1, 0.2, check_random_state(self.seed))
        scores = []
        for c in self.Cs:
            model = LogisticRegression(C=c, tol=self.tol, max_iter=self.max_iter).fit(Z[fit], y[fit])
            scores.append(f1_score(y[val], model.predict(Z[val]), average="macro"))
        self.C_ = self.Cs[int(np.argmax(scores))]  # argmax takes the first, i.e. the smaller C, on ties
        self.model_ = LogisticRegression(C=self.C_, tol=self.tol, max_iter=self.max_iter).fit(Z, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict((X.astype(np.float64) - self.mean_) / self.std_)


# --------------------------------------------------------------------------------------------------- run


@dataclass
class Row:
    scenario: str
    probe: str
    seconds: float
    extrapolated: bool
    macro_f1: float
    accuracy: float
    note: str = ""


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_scenario(args: argparse.Namespace, scenario: str) -> list[Row]:
    counts = class_counts(scenario, args.classes, args.n_train)
    X, y, X_test, y_test = make_features(counts, args.dim, args.n_test_per_class, args.seed)
    print(
        f"\n[{scenario}] train {X.shape[0]} x {X.shape[1]}, {args.classes} classes "
        f"({counts.max()}..{counts.min()} per class), test {X_test.shape[0]} (balanced)",
        flush=True,
    )

    def scores(pred: np.ndarray) -> tuple[float, float]:
        return float(f1_score(y_test, pred, average="macro")), float(accuracy_score(y_test, pred))

    rows = []
    if args.baseline in ("biobench", "both"):
        rows.append(run_biobench(args, scenario, X, y, X_test, scores))
    # lifebench and scikit-learn alternate, `repeats` times each; each keeps its fastest run
    ours_times, sk_times = [], []
    for _ in range(args.repeats):
        _sync(args.device)
        t = time.perf_counter()
        ours = LogisticProbe(device=args.device, random_state=args.seed).fit(X, y)
        _sync(args.device)
        ours_times.append(time.perf_counter() - t)
        if args.baseline in ("sklearn", "both"):
            t = time.perf_counter()
            sk = SklearnRecipe(tol=args.sklearn_tol, seed=args.seed).fit(X, y)
            sk_times.append(time.perf_counter() - t)
    spread = f" (runs {', '.join(f'{s:.1f}' for s in ours_times)} s)" if args.repeats > 1 else ""
    rows.append(
        Row(scenario, "lifebench", min(ours_times), False, *scores(ours.predict(X_test)), f"C={ours.C_:g}{spread}")
    )
    print(f"  lifebench done (C={ours.C_:g})", flush=True)
    if sk_times:
        spread = f" (runs {', '.join(f'{s:.1f}' for s in sk_times)} s)" if args.repeats > 1 else ""
        rows.append(
            Row(scenario, "sklearn", min(sk_times), False, *scores(sk.predict(X_test)), f"C={sk.C_:g}{spread}")
        )
        print(f"  sklearn done (C={sk.C_:g})", flush=True)

    t = time.perf_counter()
    fixed = LogisticProbe(C=ours.C_, device=args.device).fit(X, y)
    _sync(args.device)
    rows.append(
        Row(scenario, "lifebench, C fixed", time.perf_counter() - t, False, *scores(fixed.predict(X_test)))
    )
    return rows


def run_biobench(
    args: argparse.Namespace, scenario: str, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, scores
) -> Row:
    steps = min(args.steps, BIOBENCH_STEPS)
    _sync(args.device)
    t = time.perf_counter()
    base = BioBenchStyleProbe(n_steps=steps, device=args.device, seed=args.seed).fit(X, y)
    _sync(args.device)
    elapsed = time.perf_counter() - t
    short = steps < BIOBENCH_STEPS
    note = (
        f"{steps} steps run, time x {BIOBENCH_STEPS / steps:.3g}; macro-F1 of the {steps}-step run"
        if short
        else ""
    )
    print(f"  biobench done ({elapsed:.1f} s for {steps} steps)", flush=True)
    return Row(
        scenario, "biobench", elapsed * BIOBENCH_STEPS / steps, short, *scores(base.predict(X_test)), note
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["balanced", "zipf", "both"], default="both")
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument(
        "--sizes", help="comma-separated NxDxK (train rows x dims x classes), e.g. 8000x256x100; overrides the three"
    )
    parser.add_argument("--n-test-per-class", type=int, default=50)
    parser.add_argument(
        "--baseline",
        choices=["biobench", "sklearn", "both"],
        help="which baselines to run (default: both on a CPU, biobench on a GPU)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of lifebench and sklearn (min kept)")
    parser.add_argument("--sklearn-tol", type=float, default=1e-4, help="LogisticRegression tol (its default)")
    parser.add_argument(
        "--steps", type=int, default=BIOBENCH_STEPS, help="baseline steps (< 10,000 extrapolates)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch, BLAS and OpenMP threads (the dev machine has 2 cores)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be positive")
    on_cpu = torch.device(args.device).type == "cpu"
    args.baseline = args.baseline or ("both" if on_cpu else "biobench")
    if args.baseline != "biobench" and not on_cpu:
        parser.error("the scikit-learn baseline runs on the CPU only: use --baseline biobench with --device cuda")
    sizes = [(args.n_train, args.dim, args.classes)]
    if args.sizes:
        try:
            sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
        except ValueError:
            parser.error(f"--sizes {args.sizes!r}: use comma-separated NxDxK, e.g. 8000x256x100")
    torch.set_num_threads(args.threads)
    device = (
        torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else platform.processor()
    )
    print(
        f"device {args.device} ({device or 'cpu'}), torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    )
    scenarios = ["balanced", "zipf"] if args.scenario == "both" else [args.scenario]
    rows = []
    with threadpool_limits(args.threads):
        for n, d, k in sizes:
            args.n_train, args.dim, args.classes = n, d, k
            for s in scenarios:
                for row in run_scenario(args, s):
                    row.scenario = f"{s} {n}x{d}x{k}"
                    rows.append(row)

    print(
        f"\n{'scenario':<24} {'probe':<20} {'time (s)':>10} {'x biobench':>10} {'x sklearn':>10} "
        f"{'macro-F1':>9} {'accuracy':>9}  note"
    )
    for s in dict.fromkeys(r.scenario for r in rows):
        group = [r for r in rows if r.scenario == s]
        ref = {r.probe: r.seconds for r in group if r.probe in ("biobench", "sklearn")}
        for r in group:
            mark = "*" if r.extrapolated else " "
            ratios = [f"{ref[b] / r.seconds:>10.2f}" if b in ref else f"{'-':>10}" for b in ("biobench", "sklearn")]
            print(
                f"{r.scenario:<24} {r.probe:<20} {r.seconds:>9.1f}{mark} {' '.join(ratios)} "
                f"{r.macro_f1:>9.4f} {r.accuracy:>9.4f}  {r.note}"
            )
    if any(r.extrapolated for r in rows):
        print("* extrapolated: measured time per step x 10,000 (see the note for what the macro-F1 is)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": [asdict(r) for r in rows]}, fh, indent=2)


if __name__ == "__main__":
    main()
