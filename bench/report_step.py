"""Report-step speed: ``build_leaderboard`` over 85 models x 13 tasks of stored synthetic predictions.

The store is built once through the public API (:class:`lifebench.store.Store`, one ``write`` per experiment,
with top-5 labels as the runner stores them) and reused while its specification is unchanged. Then
``lifebench.report.build_leaderboard(store, n_resamples=1000)`` runs end to end, followed by the renderers,
with the time split into stages by wrapping (in this process only) the functions the leaderboard calls:

* load: ``Store.experiments`` and ``Store.predictions`` (SQL, the stored columns);
* align: the rest of ``_load_aligned`` (shared test ids, reordering, label checks);
* encode: labels to integer codes (``_encode``);
* resample: the shared ``(B, n)`` bootstrap index matrix per task (``resample_indices``);
* bootstrap: the metric on every resample for every model, with the interval terms (``bootstrap_many``);
* ties: paired tests against the best model with Holm correction (``ties_with_best``);
* render: ``to_text``, ``to_markdown`` and ``Leaderboard.write`` (md, csv, json).
* labels: the "how many more labels?" estimate for each task (``labels_needed``; always on);
* per_class: per-class F1 with paired intervals and confusion matrices (``per_class_scores``; only with
  ``--per-class``, whose files and text are then part of render).

Tasks are scored on worker threads while the main thread reads the next ones, so the stage times are summed over
threads and add up to more than the wall time; the total is wall time, and the CPU time is printed beside it.

``--baseline REV`` times the same report with lifebench's ``src`` as of git revision ``REV`` (``git archive``
into a temporary folder; nothing in the checkout changes) side by side with the working tree: each side in its
own process, alternating, ``--reps`` times, the minimum of each reported with the ratio; and it checks that both
give the same intervals, tie marks and resampled scores. 8966e9e is the commit before the 2026-12-03 changes.

Test-set sizes (13 tasks, 158,900 test predictions per model, 13.5 million stored rows in all) span BioBench's
range with the largest scaled down: 2,000 to 40,000 examples (Plankton's 151k counted as 40k), 2 to 1,000
classes, macro-F1 for 11 tasks and accuracy for 2. Run::

    .venv/bin/python bench/report_step.py                   # builds the store on first use (a few minutes)
    .venv/bin/python bench/report_step.py --profile 25      # plus the 25 costliest functions (cProfile)
    .venv/bin/python bench/report_step.py --models 10       # a smaller store for a quick look
    .venv/bin/python bench/report_step.py --check 5        # plus: 5 models' resampled scores against the index path
    .venv/bin/python bench/report_step.py --per-class      # as `lifebench report --per-class`
    .venv/bin/python bench/report_step.py --baseline 8966e9e --reps 3   # old vs new, side by side, same output?
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import lifebench.report.leaderboard as lb
from lifebench.metrics import get_metric, resample_indices, task_seed
from lifebench.metrics.bootstrap import class_strata
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
STAGES = ("load", "align", "encode", "resample", "bootstrap", "ties", "labels", "per_class", "render")


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
    """Accumulates wall time of wrapped functions, counting nested calls once per thread (the outermost stage
    wins) and summing over threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._local = threading.local()
        self._lock = threading.Lock()

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._local, "depth", 0)
            if depth:
                return fn(*args, **kwargs)
            self._local.depth = 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[stage] += time.perf_counter() - t
                self._local.depth = 0

        return timed


def timed_report(path: Path, n_resamples: int, out_dir: Path, per_class: bool = False
                 ) -> tuple[dict[str, float], float, Any]:
    """Run build_leaderboard and the renderers once; return seconds per stage, the total, and the board.
    (Works with older lifebench sources too: ``--baseline``.)"""
    clock = StageClock()
    originals = {  # the names the leaderboard looks up at call time (older sources have the same ones)
        "predictions": Store.predictions,
        "experiments": Store.experiments,
        "_encode": lb._encode,
        "resample_indices": lb.resample_indices,
        "bootstrap_many": lb.bootstrap_many,
        "ties_with_best": lb.ties_with_best,
        "_load_aligned": lb._load_aligned,
        "labels_needed": lb.labels_needed,
        "per_class_scores": lb.per_class_scores,
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
    lb.bootstrap_many = clock.wrap("bootstrap", originals["bootstrap_many"])
    lb.ties_with_best = clock.wrap("ties", originals["ties_with_best"])
    lb._load_aligned = aligned
    lb.labels_needed = clock.wrap("labels", originals["labels_needed"])
    lb.per_class_scores = clock.wrap("per_class", originals["per_class_scores"])
    try:
        t0 = time.perf_counter()
        board = build_leaderboard(path, n_resamples=n_resamples, per_class=per_class)
        t = time.perf_counter()
        board.to_text()
        board.labels_needed_text()
        if board.per_class is not None:
            board.per_class.to_text()
        board.to_markdown()
        board.write(out_dir)
        clock.seconds["render"] += time.perf_counter() - t
        total = time.perf_counter() - t0
    finally:
        Store.predictions = originals["predictions"]  # type: ignore[method-assign]
        Store.experiments = originals["experiments"]  # type: ignore[method-assign]
        for name in ("_encode", "resample_indices", "bootstrap_many", "ties_with_best", "_load_aligned",
                     "labels_needed", "per_class_scores"):
            setattr(lb, name, originals[name])
    seconds = dict(clock.seconds) | dict(align_inner)
    return seconds, total, board


def check_against_index_path(path: Path, n_resamples: int, n_models: int, seed: int = 0) -> tuple[float, int]:
    """Largest difference between the leaderboard's resampled scores and the plain index-matrix computation
    (``metric.resampled_fn`` on the ``(B, n)`` index matrix), over the first ``n_models`` models of each task."""
    worst, checked = 0.0, 0
    board = build_leaderboard(path, n_resamples=n_resamples, seed=seed)
    with Store(path) as store:
        every = store.experiments()
        for task in sorted({e.task for e in every}):
            exps = lb._newest_per_model(task, (e for e in every if e.task == task))[:n_models]
            metric = get_metric(exps[0].metric)
            aligned = lb._load_aligned(store, task, metric, exps)
            classes = np.array(sorted(set().union(*(e.classes for e, _ in aligned))))
            y = lb._encode(aligned[0][1].y_true, classes)
            idx = resample_indices(y.size, n_resamples, task_seed(task, seed), strata=class_strata(y))  # as the leaderboard
            for e, p in aligned:
                reference = metric.resampled_fn(y, lb._encode(p.y_pred, classes), idx)
                got = board.resamples[(task, metric.name, e.backbone, e.protocol)]
                worst = max(worst, float(np.abs(reference - got).max()))
                checked += 1
    return worst, checked


def child_run(path: Path, n_resamples: int, out: Path) -> None:
    """One timed report in this process (whichever lifebench PYTHONPATH selects); wall and CPU time, stages, and
    the board's numbers saved to ``out`` for :func:`side_by_side`."""
    out_dir = Path(tempfile.mkdtemp(prefix="lifebench-report-bench-out-"))
    try:
        cpu = time.process_time()
        seconds, total, board = timed_report(path, n_resamples, out_dir)
        cpu = time.process_time() - cpu
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    keys = sorted(board.resamples)
    np.savez(out, wall=total, cpu=cpu, stages=json.dumps(seconds),
             cells=np.array([(c.task, c.metric, c.backbone, c.protocol) for c in board.cells]),
             numbers=np.array([(c.point, c.low, c.high, c.is_best, c.tied, np.nan if c.pvalue is None else c.pvalue)
                               for c in board.cells], dtype=np.float64),
             keys=np.array(keys), resamples=np.stack([board.resamples[k] for k in keys]))


def side_by_side(path: Path, args: argparse.Namespace) -> None:
    """Time the report with the sources of ``args.baseline`` and with the working tree, alternating, each in a
    fresh process; print the minimum wall and CPU time of each and their ratios, then whether the two boards
    agree (intervals, tie marks, p-values, resampled scores)."""
    repo = Path(__file__).resolve().parent.parent
    work = Path(tempfile.mkdtemp(prefix="lifebench-report-baseline-"))
    try:
        archive = subprocess.run(["git", "-C", str(repo), "archive", args.baseline, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
        sides = {f"baseline {args.baseline}": work / "src", "working tree": repo / "src"}
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in range(args.reps):
            for name, src in sides.items():
                out = work / f"{len(runs[name])}-{name.split()[0]}.npz"
                env = {**os.environ, "PYTHONPATH": str(src)}
                subprocess.run([sys.executable, __file__, "--child", str(out), "--store", str(args.store),
                                "--models", str(args.models), "--resamples", str(args.resamples),
                                "--seed", str(args.seed)], env=env, check=True, stdout=subprocess.DEVNULL)
                with np.load(out) as z:
                    runs[name].append({k: z[k] for k in z.files})
                print(f"  run {r + 1}/{args.reps} {name}: {float(runs[name][-1]['wall']):.2f} s wall, "
                      f"{float(runs[name][-1]['cpu']):.2f} s CPU", flush=True)
        (old_name, old), (new_name, new) = runs.items()
        best = {name: (min(float(x["wall"]) for x in xs), min(float(x["cpu"]) for x in xs))
                for name, xs in runs.items()}
        print(f"\nbuild_leaderboard + rendering, {args.models} models x {len(TASKS)} tasks, {args.resamples} "
              f"resamples, minimum of {args.reps} runs each, alternating ({os.cpu_count()} CPU cores):")
        for name in runs:
            stages = json.loads(str(min(runs[name], key=lambda x: float(x["wall"]))["stages"]))
            split = ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if v >= 0.05)
            print(f"  {name:<22} {best[name][0]:7.2f} s wall  {best[name][1]:7.2f} s CPU   (stages, summed over "
                  f"threads: {split})")
        print(f"  ratio (baseline / working tree): {best[old_name][0] / best[new_name][0]:.2f}x wall, "
              f"{best[old_name][1] / best[new_name][1]:.2f}x CPU; target <= 10 s wall: "
              f"{'met' if best[new_name][0] <= 10 else 'missed'}")
        a, b = old[0], new[0]
        same_cells = np.array_equal(a["cells"], b["cells"]) and np.array_equal(a["keys"], b["keys"])
        if not same_cells:
            print("  output: the two boards hold different cells")
            return
        diff = np.abs(a["numbers"] - b["numbers"])
        print(f"  output: largest difference of point, low, high: {np.nanmax(diff[:, :3]):.1e}; of p-values: "
              f"{np.nanmax(diff[:, 5], initial=0.0):.1e}; of resampled scores: "
              f"{np.nanmax(np.abs(a['resamples'] - b['resamples'])):.1e}; best and tie marks "
              f"{'identical' if np.array_equal(a['numbers'][:, 3:5], b['numbers'][:, 3:5]) else 'DIFFERENT'} "
              f"({int(a['numbers'][:, 4].sum())} tied cells)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
    parser.add_argument("--check", type=int, default=0, metavar="N",
                        help="also compare N models per task with the index-matrix computation")
    parser.add_argument("--per-class", action="store_true",
                        help="also per-class scores and confusion matrices, as `lifebench report --per-class`")
    parser.add_argument("--baseline", metavar="REV",
                        help="also time lifebench's src at git revision REV, side by side, and compare the output")
    parser.add_argument("--reps", type=int, default=3, help="runs of each side with --baseline (minimum reported)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # one timed run, results to this .npz
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

    if args.child:
        return child_run(path, args.resamples, args.child)
    if args.baseline:
        return side_by_side(path, args)

    out_dir = Path(tempfile.mkdtemp(prefix="lifebench-report-bench-out-"))
    try:
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        seconds, total, board = timed_report(path, args.resamples, out_dir, args.per_class)
        n_cells = len(board.cells)
        if profiler:
            profiler.disable()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    print(f"\nbuild_leaderboard + rendering: {total:.2f} s for {n_cells} cells (target <= 10 s)")
    accounted = sum(seconds.get(s, 0.0) for s in STAGES)
    for stage in STAGES:
        s = seconds.get(stage, 0.0)
        print(f"  {stage:<10} {s:8.2f} s  {100 * s / total:5.1f}%")
    if total >= accounted:  # stages run on several threads at once can add up to more than the total
        print(f"  {'other':<10} {total - accounted:8.2f} s  {100 * (total - accounted) / total:5.1f}%")
    else:
        print(f"  (stages summed over threads: {accounted:.2f} s in {total:.2f} s of wall time)")
    if profiler:
        print()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    if args.check:
        worst, checked = check_against_index_path(path, args.resamples, args.check)
        print(f"\nlargest difference from the index-matrix computation over {checked} models: {worst:.1e}")

if __name__ == "__main__":
    main()
