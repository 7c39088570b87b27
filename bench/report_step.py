"""Report-step speed: ``build_leaderboard`` over 85 models x 13 tasks of stored synthetic predictions.

The store is built once through the public API (:class:`lifebench.store.Store`, one ``write`` per experiment,
with top-5 labels as the runner stores them) and reused while its specification is unchanged. Then
``lifebench.report.build_leaderboard(store, n_resamples=1000)`` runs end to end, followed by the renderers,
with the time split into stages by wrapping (in this process only) the functions the leaderboard calls:

* load: ``Store.experiments`` and ``Store.predictions`` (SQL, string arrays, JSON top-k);
* align: the rest of ``_load_aligned`` (shared test ids, reordering, label checks);
* encode: labels to integer codes (``_encode``);
* resample: the shared ``(B, n)`` bootstrap index matrix per task (``resample_indices``);
* bootstrap: the metric on every resample for every model (``bootstrap_ci``);
* ties: paired tests against the best model with Holm correction (``ties_with_best``);
* render: ``to_text``, ``to_markdown`` and ``Leaderboard.write`` (md, csv, json).

Test-set sizes (13 tasks, 158,900 test predictions per model, 13.5 million stored rows in all) span BioBench's
range with the largest scaled down: 2,000 to 40,000 examples (Plankton's 151k counted as 40k), 2 to 1,000
classes, macro-F1 for 11 tasks and accuracy for 2. Run::

    .venv/bin/python bench/report_step.py                   # builds the store on first use (a few minutes)
    .venv/bin/python bench/report_step.py --profile 25      # plus the 25 costliest functions (cProfile)
    .venv/bin/python bench/report_step.py --models 10       # a smaller store for a quick look
    .venv/bin/python bench/report_step.py --proposed        # plus the proposed bootstrap, timed and checked

``--proposed`` times the bootstrap as docs/performance.md ("Report step") proposes to compute it, on the same
aligned predictions and the same index matrices, and checks that it gives the same resampled scores: per
task, the ``(B, n)`` index matrix becomes ONE per-example count matrix ``K`` (n x B; ``K[i, b]`` = copies of
example ``i`` in resample ``b``), the per-class support is summed once, and each model then needs a single
pass over ``K``: one ``index_add`` of its rows keyed by "correct, class c" or "wrong, predicted c" gives the
true positives and predicted counts of every class in every resample (accuracy: one matrix product for all
models). It is a measurement aid, not library code.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lifebench.report.leaderboard as lb
from lifebench.metrics import get_metric, resample_indices, task_seed
from lifebench.report import build_leaderboard
from lifebench.store import Experiment, Predictions, Store

#: (name, test examples, classes, metric): sizes from 2k to 40k
TASKS: list[tuple[str, int, int, str]] = [
    ("t01", 2_000, 10, "macro_f1"),
    ("t02", 2_500, 50, "macro_f1"),
    ("t03", 3_000, 5, "macro_f1"),
    ("t04", 4_000, 200, "macro_f1"),
    ("t05", 5_000, 20, "macro_f1"),
    ("t06", 6_000, 9, "macro_f1"),
    ("t07", 8_000, 100, "macro_f1"),
    ("t08", 10_000, 1_000, "macro_f1"),
    ("t09", 12_000, 30, "macro_f1"),
    ("t10", 16_400, 2, "accuracy"),
    ("t11", 20_000, 182, "macro_f1"),
    ("t12", 30_000, 500, "macro_f1"),
    ("t13", 40_000, 50, "accuracy"),
]
TOPK = 5
STAGES = ("load", "align", "encode", "resample", "bootstrap", "ties", "render")


def _spec(n_models: int, seed: int) -> dict[str, Any]:
    return {"version": 1, "models": n_models, "seed": seed, "tasks": TASKS, "topk": TOPK}


def build_store(path: Path, n_models: int, seed: int) -> None:
    """Write ``n_models`` x 13 experiments of synthetic predictions (model quality varies from 30% to 90%)."""
    rng = np.random.default_rng(seed)
    quality = np.linspace(0.3, 0.9, n_models)
    with Store(path) as store:
        for name, n, k, metric in TASKS:
            classes = np.array([f"{name}-c{c:04d}" for c in range(k)])
            ids = np.array([f"{name}-{i:06d}" for i in range(n)])
            y = rng.zipf(1.3, n) % k  # long-tailed test labels, as in most biology sets
            for m in range(n_models):
                right = rng.random(n) < quality[m]
                # wrong answers favour "nearby" classes, so models make correlated mistakes
                wrong = (y + rng.integers(1, max(2, k // 10 + 1), n)) % k
                pred = np.where(right, y, wrong)
                others = (pred[:, None] + np.arange(1, TOPK)[None, :]) % k
                ranked = np.concatenate([pred[:, None], others], axis=1)[:, : min(TOPK, k)]
                exp = Experiment(
                    config_hash=hashlib.sha256(f"{name}/{m}".encode()).hexdigest()[:16],
                    task=name,
                    backbone=f"model-{m:03d}",
                    protocol="logreg",
                    metric=metric,
                    n_train=4 * n,
                    seed=0,
                    classes=tuple(classes),
                    fit_info={"C": 1.0},
                    timings={"fit": 1.0},
                )
                store.write(exp, Predictions(ids, classes[y], classes[pred], rng.random(n), classes[ranked]))
            print(f"  stored {name}: {n_models} models x {n} predictions", flush=True)


class StageClock:
    """Accumulates wall time of wrapped functions, counting nested calls once (the outermost stage wins)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t
                self._depth -= 1

        return timed


def timed_report(path: Path, n_resamples: int, out_dir: Path) -> tuple[dict[str, float], float, int]:
    """Run build_leaderboard and the renderers once; return seconds per stage, the total, and the cell count."""
    clock = StageClock()
    originals = {
        "predictions": Store.predictions,
        "experiments": Store.experiments,
        "_encode": lb._encode,
        "resample_indices": lb.resample_indices,
        "bootstrap_ci": lb.bootstrap_ci,
        "ties_with_best": lb.ties_with_best,
        "_load_aligned": lb._load_aligned,
    }
    align_inner: dict[str, float] = defaultdict(float)

    def aligned(*args: Any, **kwargs: Any) -> Any:
        before = clock.seconds["load"] + clock.seconds["encode"]
        t = time.perf_counter()
        out = originals["_load_aligned"](*args, **kwargs)
        align_inner["align"] += (
            time.perf_counter() - t - (clock.seconds["load"] + clock.seconds["encode"] - before)
        )
        return out

    Store.predictions = clock.wrap("load", originals["predictions"])  # type: ignore[method-assign]
    Store.experiments = clock.wrap("load", originals["experiments"])  # type: ignore[method-assign]
    lb._encode = clock.wrap("encode", originals["_encode"])
    lb.resample_indices = clock.wrap("resample", originals["resample_indices"])
    lb.bootstrap_ci = clock.wrap("bootstrap", originals["bootstrap_ci"])
    lb.ties_with_best = clock.wrap("ties", originals["ties_with_best"])
    lb._load_aligned = aligned
    try:
        t0 = time.perf_counter()
        board = build_leaderboard(path, n_resamples=n_resamples)
        t = time.perf_counter()
        board.to_text()
        board.to_markdown()
        board.write(out_dir)
        clock.seconds["render"] += time.perf_counter() - t
        total = time.perf_counter() - t0
    finally:
        Store.predictions = originals["predictions"]  # type: ignore[method-assign]
        Store.experiments = originals["experiments"]  # type: ignore[method-assign]
        for name in ("_encode", "resample_indices", "bootstrap_ci", "ties_with_best", "_load_aligned"):
            setattr(lb, name, originals[name])
    seconds = dict(clock.seconds) | dict(align_inner)
    return seconds, total, len(board.cells)


def _count_matrix(idx: np.ndarray) -> torch.Tensor:
    """(n, B) float32 copies of each example in each resample, from the (B, n) index matrix."""
    n_resamples, n = idx.shape
    counts = np.empty((n_resamples, n), dtype=np.uint8)
    for b in range(n_resamples):
        counts[b] = np.bincount(idx[b], minlength=n)  # an example appears at most ~15 times in a resample
    return torch.from_numpy(np.ascontiguousarray(counts.T)).float()


def _macro_f1_from_counts(
    K: torch.Tensor, y: np.ndarray, pred: np.ndarray, support: torch.Tensor
) -> np.ndarray:
    """Macro-F1 over present classes in every resample: one keyed index_add over the rows of ``K``."""
    n_classes = support.shape[0]
    key = torch.from_numpy(np.where(pred == y, y, n_classes + pred))
    sums = torch.zeros(2 * n_classes, K.shape[1]).index_add_(0, key, K).double()
    tp, predicted = sums[:n_classes], sums[:n_classes] + sums[n_classes:]
    present = support > 0
    f1 = torch.where(present, 2 * tp / (support + predicted).clamp(min=1), 0.0)
    return (f1.sum(0) / present.sum(0)).numpy()


def proposed_bootstrap(path: Path, n_resamples: int, seed: int = 0) -> tuple[float, float, int]:
    """Time the proposed bootstrap over all tasks; returns (seconds, largest difference from lifebench's
    resampled scores over the checked models, number of models checked)."""
    seconds, worst, checked = 0.0, 0.0, 0
    with Store(path) as store:
        every = store.experiments()
        for task in sorted({e.task for e in every}):
            exps = lb._newest_per_model(task, (e for e in every if e.task == task))
            metric = get_metric(exps[0].metric)
            aligned = lb._load_aligned(store, task, metric, exps)
            y_str = aligned[0][1].y_true
            classes = np.array(sorted(set(y_str.tolist()).union(*(p.y_pred.tolist() for _, p in aligned))))
            y = lb._encode(y_str, classes)
            preds = [lb._encode(p.y_pred, classes) for _, p in aligned]
            idx = resample_indices(y.size, n_resamples, task_seed(task, seed))
            t = time.perf_counter()
            K = _count_matrix(idx)
            if metric.name == "accuracy":
                hits = torch.from_numpy(np.stack([p == y for p in preds], axis=1).astype(np.float32))
                scores = ((K.T @ hits).double() / y.size).numpy().T  # integer sums: exact in float32
            else:
                support = (
                    torch.zeros(classes.size, n_resamples).index_add_(0, torch.from_numpy(y), K).double()
                )
                scores = np.stack([_macro_f1_from_counts(K, y, p, support) for p in preds])
            seconds += time.perf_counter() - t
            for m in (0, len(preds) - 1):
                reference = metric.resampled_fn(y, preds[m], idx)
                worst = max(worst, float(np.abs(reference - scores[m]).max()))
                checked += 1
    return seconds, worst, checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=85)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "lifebench-report-bench")
    parser.add_argument(
        "--profile", type=int, default=0, help="also print the N costliest functions (cProfile)"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the store even if it matches")
    parser.add_argument("--proposed", action="store_true", help="also time and check the proposed bootstrap")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for --proposed")
    args = parser.parse_args()

    spec = _spec(args.models, args.seed)
    tag = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:10]
    path = args.store / f"store-{args.models}x{len(TASKS)}-{tag}.sqlite"
    if args.rebuild or not path.exists():
        args.store.mkdir(parents=True, exist_ok=True)
        for stale in args.store.glob(f"store-{args.models}x*{tag}.sqlite*"):
            stale.unlink()
        print(f"building {path} ...", flush=True)
        t = time.perf_counter()
        tmp = path.with_name(path.name + ".partial")
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            p.unlink(missing_ok=True)
        build_store(tmp, args.models, args.seed)
        os.replace(tmp, path)
        print(f"built in {time.perf_counter() - t:.0f} s", flush=True)
    n_rows = args.models * sum(n for _, n, _, _ in TASKS)
    size_mb = path.stat().st_size / 2**20
    print(
        f"store {path} ({size_mb:.0f} MB): {args.models} models x {len(TASKS)} tasks, {n_rows:,} predictions, "
        f"test sizes {min(n for _, n, _, _ in TASKS):,}..{max(n for _, n, _, _ in TASKS):,}; "
        f"{args.resamples} resamples; {os.cpu_count()} CPU cores"
    )

    out_dir = Path(tempfile.mkdtemp(prefix="lifebench-report-bench-out-"))
    try:
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        seconds, total, n_cells = timed_report(path, args.resamples, out_dir)
        if profiler:
            profiler.disable()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    print(f"\nbuild_leaderboard + rendering: {total:.2f} s for {n_cells} cells (target <= 10 s)")
    accounted = sum(seconds.get(s, 0.0) for s in STAGES)
    for stage in STAGES:
        s = seconds.get(stage, 0.0)
        print(f"  {stage:<10} {s:8.2f} s  {100 * s / total:5.1f}%")
    print(f"  {'other':<10} {total - accounted:8.2f} s  {100 * (total - accounted) / total:5.1f}%")
    if profiler:
        print()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    if args.proposed:
        torch.set_num_threads(args.threads)
        proposed, worst, checked = proposed_bootstrap(path, args.resamples)
        print(
            f"\nproposed bootstrap ({args.threads} torch thread(s)): {proposed:.2f} s for all {n_cells} cells, against "
            f"{seconds.get('bootstrap', 0.0):.2f} s measured above; largest difference from lifebench's resampled "
            f"scores over {checked} checked models: {worst:.1e}"
        )


if __name__ == "__main__":
    main()
