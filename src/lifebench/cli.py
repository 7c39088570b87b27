"""The ``lifebench`` command line. The only module that prints.

Every user error becomes one line on stderr (``lifebench: error: ...``) and exit code 2; bugs keep their
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lifebench import __version__
from lifebench.config import DEFAULT_RESAMPLES, cache_dir, data_dir, default_store
from lifebench.errors import ConfigError, DataError, LifebenchError
from lifebench.fsutil import nearest_existing
from lifebench.tasks.taxonomy import RANKS, TEXT_TYPES, load_templates

log = logging.getLogger("lifebench.cli")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line, with where to find help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _RootParser(_Parser):
    """The ``lifebench`` parser: ``run --config FILE`` is merged here, so that the command line, a sweep's workers
    and the Python API (which all parse through this parser) read a config file the same way."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(_merge_run_config(self, argv), namespace)


def _merge_run_config(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with the keys of ``run --config FILE`` put in: defaults < file < command line. A key the command
    line gives is dropped from the file's (a list such as --model is replaced, not extended)."""
    if "run" not in argv or not any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    run = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]  # noqa: SLF001
    saved = [(a, a.default, a.required) for a in run._actions]  # noqa: SLF001
    try:  # parse once with no defaults and nothing required: what is left is what the command line gave
        for action, _, _ in saved:
            action.default, action.required = argparse.SUPPRESS, False
        given = vars(_Parser.parse_known_args(parser, argv)[0])
    finally:
        for action, default, required in saved:
            action.default, action.required = default, required
    if given.get("command") != "run" or "config" not in given:
        return argv
    from lifebench.runner.sweep import read_run_config

    options = run._option_string_actions  # noqa: SLF001
    from_file = [x for option, group in read_run_config(given["config"])
                 if options[option].dest not in given for x in group]
    at = next(i for i, a in enumerate(argv) if not a.startswith("-"))  # the command (global options take no value)
    return [*argv[:at + 1], *from_file, *argv[at + 1:]]


def _bounded(low: float | None = None, high: float | None = None, *, kind: type = int,
             exclusive: bool = False, hint: str = "") -> Callable[[str], Any]:
    """An argparse type: a finite number of ``kind`` (int or float) in ``[low, high]`` (``(low, high)`` when
    ``exclusive``); argparse puts the option's name before the one-line error. Every numeric option of every
    command goes through this, so that 10**12 resamples or a seed of 2**70 is refused while parsing, naming the
    option, rather than failing deep inside numpy with a traceback or a 14 TiB allocation."""
    what, fmt = ("a whole number", str) if kind is int else ("a number", lambda v: f"{v:g}")
    span = (f"between {fmt(low)} and {fmt(high)} (exclusive)" if exclusive else f"from {fmt(low)} to {fmt(high)}") \
        if low is not None and high is not None else f">= {fmt(low)}" if low is not None else f"<= {fmt(high)}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not {what}; give {what} {span}{hint}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not finite; give {what} {span}")
        below = low is not None and (value <= low if exclusive else value < low)
        above = high is not None and (value >= high if exclusive else value > high)
        if below or above:
            shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
            side = (f"is not above {fmt(low)}" if exclusive else f"is below {fmt(low)}") if below else \
                (f"is not below {fmt(high)}" if exclusive else f"is above {fmt(high)}")
            raise argparse.ArgumentTypeError(f"{shown} {side}; give {what} {span}{hint}")
        return value

    return parse


def _processes(text: str) -> int | str:
    """``sweep --processes``: "gpus" or a number of worker processes."""
    return text if text == "gpus" else _bounded(1, 1024, hint=' or "gpus"')(text)


SEED = _bounded(0, 2**32 - 1, hint=" (numpy's seed range)")
FRACTION = _bounded(0, 1, kind=float, exclusive=True)
MAX_RESAMPLES = 1_000_000  # 4 bytes x resamples x test images are held at once: 4 GB at 1000 images
MAX_STEPS = 10_000_000  # fine-tuning epochs or steps: beyond this a typo (an extra 0 or 1e12) would run for years


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--param {text!r} is not KEY=VALUE; for example --param C=0.1")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_common_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=_bounded(1, 65536), default=None, help="images per forward pass (default: auto)")
    p.add_argument("--workers", type=_bounded(0, 512), default=None,
                   help="image decoding processes, 0 to decode in the main process (default: auto)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="embedding cache (default $LIFEBENCH_CACHE or ~/.cache/lifebench)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out unreadable images (counted and logged) instead of stopping")


def _add_decode_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decode", choices=["lifebench", "full", "reference"], default="lifebench",
                   help="how images become pixels: lifebench (transparency on white, EXIF rotation; fast JPEG draft "
                   "decoding on CPU, nvJPEG on CUDA; default), full (the same without draft or nvJPEG decoding) or "
                   "reference (Image.open(p).convert('RGB') as BioCLIP, CLIP_benchmark and eVLLM load images, to "
                   "reproduce their numbers); part of the embedding cache key and of the experiment's config")


def _add_bootstrap_options(p: argparse.ArgumentParser, *, seed_alias: bool = False,
                            confidence: bool = False) -> None:
    """The bootstrap's settings, named alike in every command. ``--bootstrap-seed`` is the bootstrap seed
    everywhere, because ``run --seed`` is the probe seed; ``seed_alias`` keeps the hidden ``--seed`` spelling in the
    commands where it used to mean the bootstrap seed, so existing scripts keep working."""
    p.add_argument("--resamples", type=_bounded(1000, MAX_RESAMPLES, hint=" (fewer give unstable 95% intervals)"),
                   default=DEFAULT_RESAMPLES, help="bootstrap resamples, 1000 to 1000000 (default 1000)")
    if seed_alias:  # first, so that the visible spelling is the option's name (the Python API maps dest -> option)
        p.add_argument("--seed", dest="bootstrap_seed", type=SEED, default=0, help=argparse.SUPPRESS)
    p.add_argument("--bootstrap-seed", type=SEED, default=0, help="seed of the bootstrap resampling (default 0)")
    if confidence:
        p.add_argument("--confidence", type=FRACTION, default=0.95,
                       help="interval level (default 0.95); where models are marked tied with the best, the tie test "
                       "runs at family-wise error 1 - confidence (0.05)")


def _add_output_format_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["table", "json", "csv", "md"], default="table",
                   help="how the leaderboard is printed to standard output: table (aligned text, default), json, csv "
                   "(one row per cell, the columns of leaderboard.csv) or md; with json, csv and md standard output "
                   "holds only the leaderboard, so it can be piped (the files written are named on standard error)")
    p.add_argument("--limit", type=_bounded(1), default=None, metavar="N",
                   help="print only the first N models (best first by mean score) for a quick look; the files "
                   "written keep every model")


def _first_models(board, limit: int | None):
    """``board`` with only its first ``limit`` models (best first), for ``--limit``; the marks of best and tied
    stay those of the whole board, so a quick look never calls a model best that is not."""
    if limit is None:
        return board
    import dataclasses

    keep = set(board.models()[:limit])
    return dataclasses.replace(board, cells=tuple(c for c in board.cells if (c.backbone, c.protocol) in keep))


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-size", type=FRACTION, default=None,
                   help="test fraction per class when the data names no split (default 0.25; demo tasks 0.5); "
                   "folders of fewer than 400 images are cross-fitted in 5 folds unless this is given")
    p.add_argument("--folds", type=_bounded(2, 1000), default=None, metavar="K",
                   help="K-fold cross-fitting instead of one split, for data without a given split: every image is "
                   "predicted once by a probe fit on the other folds (good for small collections)")
    p.add_argument("--split-seed", type=SEED, default=0, help="seed of the split or folds (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = _RootParser(prog="lifebench", description=(
        "Choose a vision model for your biology images: embed once with frozen backbones, fit light probes, "
        "and compare with paired bootstrap confidence intervals."))
    parser.add_argument("--version", action="version", version=f"lifebench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="evaluate models on tasks and store the results",
                       description="Evaluate each --model on each --task with each --protocol; finished "
                       "experiments are skipped unless --force. Prints the leaderboard of the tasks run.")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="read options from a TOML file with the keys of a sweep file (models, tasks, seeds, workers, "
                   "...; see docs/sweeps.md); an option given on the command line replaces the file's")
    p.add_argument("--task", action="append", default=[], metavar="TASK",
                   help="a folder (class sub-folders, optionally under train/ and test/), a CSV/Parquet manifest "
                   "(path,label[,split][,group]) or a task name from 'lifebench ls tasks'; repeatable")
    p.add_argument("--suite", action="append", default=[], metavar="SUITE",
                   help="every task of a suite whose data is under --data-root: ecology, reference, tree-of-life or "
                   "microscopy; "
                   "repeatable")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding one sub-folder per benchmark task (default $LIFEBENCH_DATA or "
                   "~/.local/share/lifebench)")
    p.add_argument("--model", action="append", required=True, metavar="ID",
                   help="backbone id, e.g. efficientnet-lite0, timm:resnet50.a1_in1k, open_clip:hf-hub:imageomics/bioclip, "
                   "hf:facebook/dinov2-base, timm:vit_small_patch16_224@random; see 'lifebench ls backbones'; repeatable")
    p.add_argument("--protocol", action="append", default=None, metavar="NAME",
                   help="logreg, simpleshot, knn, ... (default: each task's own protocol, e.g. logreg; see "
                   "'lifebench ls protocols'); repeatable")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="protocol parameter, e.g. C=0.1 or class_weight=balanced; repeatable")
    p.add_argument("--seed", action="append", type=SEED, default=None,
                   help="probe seed (default 0); repeatable")
    p.add_argument("--shots", default=None, metavar="K[,K...]",
                   help="few-shot: K training images per class (the support set), the other images are queries; "
                   "each --seed is one fold (default 5 folds, seeds 0-4); e.g. --protocol few-shot --shots 1,5")
    p.add_argument("--text-type", default=None, choices=TEXT_TYPES,
                   help="zero-shot class names (BioCLIP's text types, from the task's taxonomy columns): asis (the "
                   "labels, default), sci, com, taxon, sci_com or taxon_com")
    p.add_argument("--templates", default=None, metavar="FILE",
                   help="zero-shot prompt templates, one per line with {} for the class name (default: BioCLIP's 81)")
    p.add_argument("--endpoint", default=None, metavar="URL",
                   help="base URL of an OpenAI-compatible chat API for openai-compatible:<model> (e.g. "
                   "http://localhost:8000/v1; default $LIFEBENCH_ENDPOINT or $OPENAI_BASE_URL; key: $OPENAI_API_KEY)")
    p.add_argument("--n-train", action="append", type=_bounded(2, 10**9), default=None, metavar="N",
                   help="train on N examples (clips for video tasks), class-balanced, drawn with the seed, for "
                   "sample-efficiency studies; results go under the task name TASK@nN; repeatable")
    _add_task_options(p)
    p.add_argument("--store", type=Path, default=None,
                   help="results database (default $LIFEBENCH_STORE or lifebench-results/results.sqlite)")
    # --out names a command's output folder in every command; --report-dir is the older name, still read
    p.add_argument("--report-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", dest="report_dir", type=Path, default=None,
                   help="write leaderboard.{md,csv,json} and the results page here (default: next to the store)")
    _add_bootstrap_options(p)
    p.add_argument("--force", action="store_true", help="recompute experiments already in the store")
    p.add_argument("--dry-run", action="store_true", help="list what would run and what would be skipped, then stop")
    p.add_argument("--keep-going", action="store_true",
                   help="record a failing experiment (see 'lifebench status') and go on with the others")
    p.add_argument("--no-report", action="store_true", help="do not print the leaderboard at the end")
    p.add_argument("--answer-scoring", choices=["strict", "evllm"], default="strict",
                   help="how a generative model's replies are scored: strict (a reply naming several options is "
                   "wrong; default) or evllm (μ-Bench's check_prediction: the lettered gold option in the reply or "
                   "the gold letter first, to reproduce the paper)")
    _add_common_run_options(p)
    _add_decode_option(p)

    p = sub.add_parser("sweep", help="run a sweep file (TOML) here, on local worker processes, or on Slurm",
                       description="Run every experiment of a sweep file: the keys of 'lifebench run' (models, tasks, "
                       "suites, protocols, n_train, shots, seeds, params, store, ...) plus an [executor] table. Workers "
                       "share the jobs through claims in the store, so a sweep can be rerun or resumed at any time.")
    p.add_argument("file", type=Path, help="the sweep file (see docs/sweeps.md)")
    p.add_argument("--dry-run", action="store_true", help="print the plan with counts and skip reasons, then stop")
    p.add_argument("--executor", choices=["inprocess", "local", "slurm"], default=None,
                   help="override the file's [executor] kind")
    p.add_argument("--processes", type=_processes, default=None, metavar="N|gpus",
                   help="local executor: worker processes, or 'gpus' for one per visible GPU")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return (follow with lifebench status)")

    p = sub.add_parser("status", help="progress of a sweep: done, running, failed, remaining, ETA",
                       description="Compare a sweep file's plan with its store: what is done, what live workers are "
                       "running now, what failed (with the error) and what remains, with an ETA.")
    p.add_argument("file", type=Path, help="the sweep file")

    p = sub.add_parser("demo", help="evaluate three models on a real 5-class organism task, offline",
                       description="Evaluate EfficientNet-Lite0 (ImageNet-pretrained), a random-init ViT and raw "
                       "pixels on 161 Tux Paint organism photos (bird, mammal, insect, fish, flower) fetched with "
                       "apt-get; falls back to a generated task where apt is not available.")
    p.add_argument("--out", type=Path, default=Path("lifebench-demo"), help="output folder (default lifebench-demo)")
    p.add_argument("--synthetic", action="store_true", help="use the generated shapes task instead of the photos")
    p.add_argument("--force", action="store_true", help="recompute experiments already in the demo store")
    _add_bootstrap_options(p)
    _add_common_run_options(p)
    _add_decode_option(p)

    p = sub.add_parser("embed", help="export embeddings of a task's images (npy or Parquet)",
                       description="Embed every image of TASK with MODEL and write the vectors. .npy writes an "
                       "(n, D) float32 array plus a sidecar CSV with the same stem, <stem>.ids.csv (row, id, label, split); .parquet writes "
                       "one row per image with columns id, label, split, path, embedding.")
    p.add_argument("--task", required=True, help="folder, manifest or task name")
    p.add_argument("--model", required=True, help="backbone id")
    p.add_argument("--out", type=Path, required=True, help="output file ending in .npy or .parquet")
    _add_task_options(p)
    _add_common_run_options(p)
    _add_decode_option(p)

    p = sub.add_parser("download", help="download, verify and unpack a benchmark task's data",
                       description="Fetch a benchmark task's archives with resume and checksum verification, then "
                       "unpack them into DIR/TASK. Rerunning skips what is already verified.")
    p.add_argument("task", help="a task name from 'lifebench ls tasks'")
    p.add_argument("--dir", type=Path, default=None,
                   help="data root (default $LIFEBENCH_DATA or ~/.local/share/lifebench); the task goes in DIR/TASK")

    p = sub.add_parser("ls", help="list backbones, tasks, protocols or metrics")
    p.add_argument("what", choices=["backbones", "tasks", "protocols", "metrics"])

    p = sub.add_parser("report", help="leaderboard with CIs from a results store",
                       description="Read every experiment in the store and write leaderboard.{md,csv,json}: "
                       "score [95%% CI] per model and task, the best marked and the models statistically tied "
                       "with it (paired bootstrap max test over all pairs, family-wise error 1 - confidence).")
    p.add_argument("--store", type=Path, default=None, help="results database (default as for 'run')")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: next to the store)")
    p.add_argument("--task", action="append", default=None, help="only these tasks; repeatable")
    p.add_argument("--metric", default=None,
                   help="score every task with this metric instead of its own (e.g. accuracy, top5_accuracy, "
                   "top1_accuracy or mean_ap for re-identification; see 'lifebench ls metrics')")
    _add_bootstrap_options(p, seed_alias=True, confidence=True)
    p.add_argument("--per-class", type=_bounded(1), nargs="?", const=5, default=None, metavar="N",
                   help="also score every class (F1 with paired intervals, precision, recall) and each model's "
                   "confusion matrix: per_class.csv, per_class.json, confusion/; print the best model's N lowest "
                   "classes per task (default 5)")
    p.add_argument("--compare", nargs=2, default=None, metavar="MODEL",
                   help="size the test set that would resolve these two models (backbone or backbone/protocol) "
                   "instead of the best and the runner-up of each task")
    p.add_argument("--power", type=FRACTION, default=0.8,
                   help="power the test-set size estimate is for (default 0.8)")
    p.add_argument("--html", type=Path, default=None, metavar="DIR",
                   help="also write a results page DIR/index.html: leaderboard, per-class F1, confusion matrices, "
                   "the images each model got wrong, sample-efficiency curves (static, works offline)")
    _add_output_format_options(p)

    p = sub.add_parser("merge", help="copy the experiments of other stores into one (no duplicates)",
                       description="Copy every experiment of each FROM store into INTO (created if missing). An "
                       "experiment already in INTO (same configuration hash) is kept as it is.")
    p.add_argument("into", type=Path, help="the store to merge into")
    p.add_argument("sources", type=Path, nargs="+", metavar="FROM", help="stores to copy from")

    p = sub.add_parser("microscopy-report", help="μ-Bench by question type, dataset, domain and taxonomy group; "
                       "specialists minus generalists", description="From the store's ubench-* results: accuracy with "
                       "paired bootstrap CIs per question type, source dataset, domain and taxonomy group, and each "
                       "specialist-minus-generalist difference (table and bar plots); see docs/microscopy.md.")
    p.add_argument("--store", type=Path, default=None, help="results database (default as for 'run')")
    p.add_argument("--data-root", type=Path, default=None, help="data root holding ubench/ (as for 'run')")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: next to the store)")
    p.add_argument("--model", action="append", default=None, metavar="ID", help="only these models; repeatable")
    p.add_argument("--specialist", action="append", default=[], metavar="ID", help="tag this model a specialist")
    p.add_argument("--generalist", action="append", default=[], metavar="ID", help="tag this model a generalist")
    _add_bootstrap_options(p, seed_alias=True)
    p.add_argument("--no-plots", action="store_true", help="skip the bar plots")

    p = sub.add_parser("interpolate", help="weight-space interpolation (WiSE-FT) of two checkpoints, scored per suite",
                       description="Build (1 - alpha) * A + alpha * B for each alpha from two checkpoints of one "
                       "architecture (ids like open_clip:ViT-B-16@/ckpt/a.pt), evaluate each on the tasks like any model "
                       "and plot each suite's mean score against alpha (interpolation.{png,csv,json} in --out).")
    p.add_argument("a", metavar="A", help="backbone id of the first checkpoint (alpha 0)")
    p.add_argument("b", metavar="B", help="backbone id of the second checkpoint (alpha 1), same architecture")
    p.add_argument("--alphas", default="0:1:0.1", help="alphas: 0,0.5,1 or start:stop:step (default 0:1:0.1)")
    p.add_argument("--suite", action="append", default=[], metavar="SUITE", help="a suite (one curve each); repeatable")
    p.add_argument("--task", action="append", default=[], metavar="TASK", help="a task (curve 'tasks'); repeatable")
    p.add_argument("--data-root", type=Path, default=None, help="data root of benchmark tasks (as for 'run')")
    p.add_argument("--store", type=Path, default=None, help="results database (default as for 'run')")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: next to the store)")
    _add_bootstrap_options(p)
    p.add_argument("--force", action="store_true", help="recompute experiments already in the store")
    _add_task_options(p)
    _add_common_run_options(p)

    p = sub.add_parser("finetune", help="fine-tune an open_clip (contrastive) or timm model on a task's training split",
                       description="Fine-tune MODEL on the training split of --task (its test split is held out) and "
                       "write a safetensors checkpoint that 'lifebench run' loads as open_clip:ARCH@OUT (timm:NAME@OUT). "
                       "Seeded; rerun the same command to resume a killed run from its last checkpoint (docs/finetune.md).")
    p.add_argument("model", metavar="MODEL", help="open_clip:ARCH/TAG, open_clip:ARCH@CKPT|random, or timm:NAME[@...]")
    p.add_argument("--task", required=True, metavar="TASK", help="a task name, folder or manifest (as for 'run')")
    p.add_argument("--out", required=True, type=Path, metavar="CKPT", help="the .safetensors file to write")
    p.add_argument("--epochs", type=_bounded(1, MAX_STEPS), default=10, help="passes over the training split (default 10)")
    p.add_argument("--steps", type=_bounded(1, MAX_STEPS), default=None, help="optimizer steps instead of --epochs")
    p.add_argument("--batch-size", type=_bounded(2, 65536), default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate of AdamW (default 1e-5)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1, as wise-ft)")
    p.add_argument("--warmup-steps", type=_bounded(0, MAX_STEPS), default=None,
                   help="linear warmup before the cosine decay (default: 10%% of the steps, at most 500)")
    p.add_argument("--text-type", default="mixed", choices=["mixed", *TEXT_TYPES],
                   help="open_clip captions: mixed (BioCLIP: one of sci, com, taxon, sci_com, taxon_com per step; "
                   "default) or one text type")
    p.add_argument("--label-smoothing", type=_bounded(0, 1, kind=float), default=0.1, help="timm classification loss (default 0.1)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the data order, flips and new head (default 0)")
    p.add_argument("--checkpoint-every", type=_bounded(1, MAX_STEPS), default=50, help="steps between checkpoints (default 50)")
    p.add_argument("--restart", action="store_true", help="discard a resumable checkpoint of this --out and start over")
    p.add_argument("--data-root", type=Path, default=None, help="data root of benchmark tasks (as for 'run')")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--workers", type=_bounded(0, 512), default=0, help="image decoding processes (default 0)")
    p.add_argument("--skip-bad-images", action="store_true", help=argparse.SUPPRESS)
    _add_task_options(p)

    p = sub.add_parser("forgetting", help="gain on the target, forgetting per suite and the best WiSE-FT alpha",
                       description="Evaluate BASE, FINETUNED and their interpolations at each alpha on --target and on "
                       "the reference suites and tasks, with paired intervals against BASE: the gain on the target, the "
                       "forgetting per suite, the best alpha within --budget, a plot and a leakage check "
                       "(forgetting.{txt,csv,json,png} in --out).")
    p.add_argument("base", metavar="BASE", help="backbone id of the model before fine-tuning (alpha 0)")
    p.add_argument("finetuned", metavar="FINETUNED", help="backbone id of the fine-tuned checkpoint (alpha 1)")
    p.add_argument("--target", required=True, metavar="TASK", help="the task fine-tuned on (its test split is scored)")
    p.add_argument("--suite", action="append", default=[], metavar="SUITE", help="a reference suite; repeatable")
    p.add_argument("--task", action="append", default=[], metavar="TASK", help="a reference task (group 'tasks'); "
                   "repeatable")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="alphas: 0,0.5,1 or start:stop:step "
                   "(default 0,0.25,0.5,0.75,1)")
    p.add_argument("--budget", type=_bounded(0, 1, kind=float), default=0.01,
                   help="the most forgetting (base minus model, per suite) the best alpha may cost (default 0.01)")
    p.add_argument("--data-root", type=Path, default=None, help="data root of benchmark tasks (as for 'run')")
    p.add_argument("--store", type=Path, default=None, help="results database (default as for 'run')")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: next to the store)")
    _add_bootstrap_options(p)
    p.add_argument("--force", action="store_true", help="recompute experiments already in the store")
    _add_task_options(p)
    _add_common_run_options(p)

    p = sub.add_parser("taxonomy", help="taxonomy-aware scores of a task: accuracy per rank, error distance, t-SNE",
                       description="Per model of TASK in the store: accuracy at each rank (kingdom ... species) and "
                       "the mean taxonomic distance of the errors, with paired bootstrap CIs (see docs/taxonomy.md). "
                       "With --plot-dir, also t-SNE pictures coloured by taxon and the tree correlation of each "
                       "model's embedding space (the task's images are needed: cached embeddings or re-embedded).")
    p.add_argument("--store", type=Path, default=None, help="results database (default as for 'run')")
    p.add_argument("--task", required=True, help="task name in the store, or the folder, manifest or task name run")
    p.add_argument("--data-root", type=Path, default=None, help="data root of benchmark tasks (as for 'run')")
    p.add_argument("--model", action="append", default=None, metavar="ID",
                   help="only this backbone (or backbone/protocol); repeatable (default: every model of the task)")
    p.add_argument("--rank", action="append", default=None, choices=RANKS,
                   help="rank to colour the pictures by, one panel each; repeatable (default: every rank with at "
                   "least two taxa)")
    p.add_argument("--plot-dir", type=Path, default=None, help="write taxonomy-<task>-<model>.png pictures here")
    p.add_argument("--method", default="tsne", choices=["tsne", "umap"],
                   help="projection of the pictures (default tsne; umap needs umap-learn)")
    p.add_argument("--out", type=Path, default=None,
                   help="write taxonomy-<task>.{txt,csv,json} here (default: next to the store)")
    _add_bootstrap_options(p, seed_alias=True, confidence=True)
    _add_task_options(p)
    _add_common_run_options(p)

    p = sub.add_parser("analyze", help="does ImageNet rank predict the suite? rank statistics, plots, HTML report",
                       description="Rank agreement of a reference task (default imagenet1k) with the suite mean and "
                       "each suite task (R², Spearman ρ, Kendall τ-b, mis-ranked pairs, bootstrap CIs), the threshold "
                       "sweep, leave-one-task-out stability and the suite leaderboard, from a store or imported results "
                       "(BioBench results.json, CLIP_benchmark JSON, a lifebench export). Writes index.html, plots, "
                       "results.{parquet,csv,json} and analysis.{txt,json} to --out. See docs/analysis.md.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--store", type=Path, default=None, help="results database (default as for 'run')")
    source.add_argument("--results", action="append", type=Path, default=None, metavar="FILE",
                        help="imported results: BioBench results.json, CLIP_benchmark JSON files or their folder, or a "
                        "lifebench export (.json, .csv, .parquet); repeatable")
    p.add_argument("--reference", default="imagenet1k", help="the reference task (default imagenet1k)")
    p.add_argument("--task", action="append", default=None, metavar="TASK",
                   help="suite task; repeatable (default: BioBench's benchmark tasks, or the store's ecology tasks)")
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default: 'analysis' next to the store, or lifebench-analysis)")
    _add_bootstrap_options(p, seed_alias=True, confidence=True)
    p.add_argument("--min-models", type=_bounded(3, 10**6), default=10, help="threshold sweep: fewest models at a threshold (default 10)")
    p.add_argument("--clip-metric", default="acc1", choices=["acc1", "acc5", "mean_per_class_recall"],
                   help="CLIP_benchmark metric to import (default acc1)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots (no matplotlib needed)")

    p = sub.add_parser("export", help="write per-image predictions or the leaderboard to Parquet, CSV or JSON",
                       description="Export a store: --what predictions (default) writes one row per test image and "
                       "experiment (task, model, protocol, seed, example_id, y_true, y_pred, score, topk, part, group), "
                       "which 'report --store FILE' and 'analyze --store FILE' read back; --what leaderboard writes "
                       "the leaderboard cells that 'analyze --results FILE' reads. The suffix of --out picks the "
                       "format. See docs/python.md.")
    p.add_argument("--store", type=Path, default=None, help="results database (default as for 'run')")
    p.add_argument("--out", type=Path, required=True, help="output file ending in .parquet, .csv or .json")
    p.add_argument("--what", choices=["predictions", "leaderboard"], default="predictions",
                   help="per-image predictions (default) or the leaderboard cells")
    p.add_argument("--task", action="append", default=None, help="only these tasks; repeatable")
    _add_bootstrap_options(p, seed_alias=True, confidence=True)

    p = sub.add_parser("completion", help="print a shell completion script",
                       description="Print a bash completion script for lifebench, made from this version's options. "
                       "Load it with: source <(lifebench completion bash), or save it to "
                       "~/.local/share/bash-completion/completions/lifebench.")
    p.add_argument("shell", choices=["bash"], help="the shell (bash)")
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("lifebench")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _cache(args) -> Path | None:
    if getattr(args, "no_cache", False):
        return None
    return args.cache_dir or cache_dir()


def _suite_tasks(args) -> tuple[list[str], list[tuple[str, str]]]:
    """Task names of the requested suites whose data is present, and (name, reason) for the others."""
    from lifebench.tasks.catalog import SUITES, data_status

    root = args.data_root or data_dir()
    present, skipped = [], []
    for suite in args.suite:
        if suite not in SUITES:
            from lifebench.errors import UnknownNameError

            raise UnknownNameError("suite", suite, SUITES)
        for name in SUITES[suite]:
            _, why = data_status(name, root)
            (skipped.append((name, why)) if why else present.append(name))
    return present, skipped


def _resolve_tasks(args, names: list[str]):
    from lifebench.tasks import resolve_task

    kw: dict[str, Any] = {"seed": args.split_seed, "skip_bad_images": args.skip_bad_images}
    if getattr(args, "data_root", None) is not None:
        kw["data_root"] = args.data_root
    if args.test_size is not None and args.folds is not None:
        raise ConfigError("--test-size and --folds exclude each other: give one split or K folds")
    if args.test_size is not None:
        if not 0 < args.test_size < 1:
            raise ConfigError(f"--test-size {args.test_size} must be between 0 and 1, e.g. 0.25")
        kw["test_size"] = args.test_size
        kw["n_folds"] = None
    if args.folds is not None:
        if args.folds < 2:
            raise ConfigError(f"--folds {args.folds} must be at least 2, e.g. 5")
        kw["n_folds"] = args.folds
    tasks, seen = [], set()
    for name in names:
        task = resolve_task(name, **kw)
        if task.name in seen:
            raise ConfigError(f"two tasks are named {task.name!r}; rename one folder or manifest")
        seen.add(task.name)
        tasks.append(task)
    return tasks


def _parse_shots(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        shots = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        shots = []
    if not shots or min(shots) < 1 or max(shots) > 10**6:
        raise ConfigError(f"--shots {text!r}: give whole numbers of images per class from 1 to 1000000, "
                          "e.g. --shots 1,5")
    return sorted(set(shots))


def _check_resamples(n: int) -> None:
    if n < 1000:
        raise ConfigError(f"--resamples {n} is too few for stable 95% intervals; use 1000 or more")


def _print_leaderboard(store, task_names, resamples: int, out_dir: Path | None, metric: str | None = None,
                       seed: int = 0) -> None:
    from lifebench.report import build_leaderboard

    board = build_leaderboard(store, tasks=task_names, n_resamples=resamples, metric=metric, seed=seed,
                              per_class=out_dir is not None)  # the results page shows per-class scores
    print()
    print(board.to_text())
    if out_dir is not None:
        from lifebench.report.html import write_results_page

        # per-class scores for the page only: their files (one dense confusion CSV per model) come with report --per-class
        written = dataclasses.replace(board, per_class=None).write(out_dir)
        written["html"] = write_results_page(store, out_dir, board=board)
        print(f"\nreport: {', '.join(str(p) for p in written.values())}")


def _task_line(task) -> str:
    """One line saying what a task holds and how it is split (``run`` and ``demo``)."""
    import numpy as np

    labels = task.examples.labels
    names, counts = np.unique(labels, return_counts=True)
    what = ", ".join(f"{c} {n}" for c, n in zip(names, counts, strict=True)) if len(names) <= 8 else \
        f"{len(names)} classes"
    split = task.split_source if task.folds is not None else \
        f"{len(task.train_idx)} train / {len(task.test_idx)} test, {task.split_source}"
    return f"task {task.name}: {len(labels)} images ({what}); {split}"


def _print_accuracy(store, tasks, resamples: int, seed: int = 0) -> None:
    """Accuracy of every model, and the share of the most common test class, per task: what a reader compares a
    macro-F1 leaderboard against (a probe that always answers the majority class scores this accuracy). Tasks
    scored on single labels only (not re-identification, per-part or multiple-choice tasks)."""
    import numpy as np

    from lifebench.report import build_leaderboard

    tasks = [t for t in tasks if t.kind in ("plain", "folds")]
    if not tasks:
        return
    acc = build_leaderboard(store, tasks=[t.name for t in tasks], n_resamples=resamples, metric="accuracy",
                            seed=seed)
    for task in tasks:
        print("\naccuracy:" if len(tasks) == 1 else f"\naccuracy on {task.name}:")
        for cell in sorted((c for c in acc.cells if c.task == task.name), key=lambda c: -c.point):
            print(f"  {acc.label(cell.backbone, cell.protocol):<20} {cell.point:.3f} [{cell.low:.3f}, {cell.high:.3f}]")
        test = task.examples.labels[task.test_idx]  # every image when cross-fitted
        print(f"  {'(majority class)':<20} {np.unique(test, return_counts=True)[1].max() / test.size:.3f}")


def _plan(args):
    """Validate a ``run`` (or one sweep's) arguments and expand them: ``(jobs, skipped tasks, store path)``.

    Everything that can be wrong with the request fails here, before any model is loaded or job submitted."""
    from lifebench.backbones import canonical_id, may_have_text_tower
    from lifebench.protocols import make_protocol
    from lifebench.runner import expand
    from lifebench.store import Store, check_store_path

    _check_resamples(args.resamples)
    models = [canonical_id(m) for m in args.model]
    if not args.dry_run:  # a missing extra fails now, before any data is read (a dry run lists it instead)
        from lifebench import extras

        extras.require(extras.needs_for_run(models, executor=getattr(args, "executor_kind", None)))
    if any(m.startswith("openai-compatible:") for m in models):  # no endpoint fails now, before anything runs
        from lifebench.vlm.openai import resolve_endpoint

        resolve_endpoint(getattr(args, "endpoint", None))
    params = dict(_parse_param(p) for p in args.param)
    for reserved, option in (("random_state", "--seed"), ("device", "--device")):
        if reserved in params:
            raise ConfigError(f"--param {reserved}=... is set by lifebench; use {option} instead")
    for p in args.protocol or []:  # unknown protocols and parameters fail now, before any model is loaded
        make_protocol(p, **params)
    for n in args.n_train or []:
        if n < 2:
            raise ConfigError(f"--n-train {n} is too small; give at least 2 (one example of each of two classes)")
    shots = _parse_shots(args.shots)
    zero_shot = {k: v for k, v in (("text_type", args.text_type), ("templates", args.templates)) if v is not None}
    if zero_shot.get("templates"):
        load_templates(zero_shot["templates"])  # a bad file fails now, before any model is loaded
    seeds = args.seed or ([0, 1, 2, 3, 4] if shots else [0])
    if not args.task and not args.suite:
        raise ConfigError("give at least one --task (a folder, manifest or task name) or --suite")
    suite_names, skipped = _suite_tasks(args)
    tasks = _resolve_tasks(args, list(dict.fromkeys([*args.task, *suite_names])))  # a task named twice runs once
    for p in {t.protocol for t in tasks} if not args.protocol else ():
        make_protocol(p, **params)
    if zero_shot and "zero-shot" not in (args.protocol or {t.protocol for t in tasks}):
        raise ConfigError("--text-type and --templates set up zero-shot classification; add --protocol zero-shot")
    store_path = args.store or default_store()
    if Path(store_path).exists():
        Store(store_path).close()  # an unusable store fails now; a missing one is made when the first job runs
    else:
        check_store_path(store_path)
    # a (suite task, k) that cannot be drawn is one skip line; a task named with --task still fails at once
    jobs = expand(tasks, models, args.protocol, params, seeds, args.n_train, shots, {"zero-shot": zero_shot},
                  skipped=skipped, skippable=set(suite_names) - set(args.task),
                  settings={"decode": args.decode, "answer_scoring": args.answer_scoring})
    for job in jobs:
        if job.protocol == "zero-shot" and not may_have_text_tower(job.backbone):
            raise ConfigError(f"{job.label()}: backbone {job.backbone!r} has no text tower, so it cannot classify "
                              "zero-shot; use a model with one (open_clip, CLIP, SigLIP, BioCLIP) or give --protocol "
                              "few-shot, simpleshot or logreg")
    return jobs, skipped, store_path


def _run_options(args):
    """The runner's options of a parsed ``run`` command line (also used by :func:`lifebench.api.evaluate`)."""
    from lifebench.runner import RunOptions

    return RunOptions(cache_dir=_cache(args), device=args.device, batch_size=args.batch_size,
                      num_workers=args.workers, skip_bad_images=args.skip_bad_images, force=args.force,
                      keep_going=args.keep_going, show_progress=not args.quiet, endpoint=args.endpoint)


def cmd_run(args, plan=None) -> int:
    """``lifebench run``; ``plan`` is ``_plan(args)`` when the caller has made it already (sweeps)."""
    from lifebench.runner import plan_status, run_jobs
    from lifebench.store import Store

    jobs, skipped, store_path = plan or _plan(args)
    described = "\n".join(_task_line(t) for t in {j.task.name: j.task for j in jobs
                                                  if j.task.kind in ("plain", "folds")}.values())
    if args.dry_run:  # reads the store if there is one; writes nothing
        print(f"plan: {len(jobs)} jobs, {len(skipped)} tasks skipped; store {store_path}")
        if described:
            print(described)
        with Store(store_path) if Path(store_path).exists() else contextlib.nullcontext() as store:
            for job, what in plan_status(jobs, store, args.force):
                print(f"  {what:<40} {job.label()}")
        for name, why in skipped:
            print(f"  {'skip: ' + name:<40} {why}")
        from lifebench import extras

        for line in extras.missing_lines(extras.needs_for_run(dict.fromkeys(j.backbone for j in jobs),
                                                               executor=getattr(args, "executor_kind", None))):
            print(line)
        return 0
    if not jobs:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped[:2])
        raise ConfigError(f"nothing to run: every task was skipped ({reasons}{'; ...' if len(skipped) > 2 else ''})")
    if described:
        print(described)
    with _new_store_removed_on_error(store_path), Store(store_path) as store:
        for name, why in skipped:
            log.info("skipping task %s: %s", name, why)
        options = _run_options(args)
        t0 = time.perf_counter()
        results = run_jobs(jobs, store, options)
        n_done = sum(r.status == "done" for r in results)
        n_skip = sum(r.status == "skipped" for r in results)
        n_elsewhere = sum(r.status == "running elsewhere" for r in results)
        n_img = sum(r.n_encoded for r in results)
        failed = [r for r in results if r.status == "failed"]
        elsewhere = f", {n_elsewhere} running elsewhere" if n_elsewhere else ""
        print(f"{n_done} experiments run, {n_skip} already in the store{elsewhere}"
              f"{f', {len(failed)} failed' if failed else ''}; {n_img} images through a model; "
              f"{time.perf_counter() - t0:.1f} s")
        for r in failed:
            print(f"  failed: {r.job.label()}: {r.error}")
        scored = {r.job.task.name: r.job.task for r in results if r.status in ("done", "skipped")}
        if scored and not args.no_report:
            _print_leaderboard(store, sorted(scored), args.resamples,
                               args.report_dir or Path(store_path).parent, seed=args.bootstrap_seed)
            _print_accuracy(store, [scored[name] for name in sorted(scored)], args.resamples, args.bootstrap_seed)
    return 1 if failed else 0


@contextlib.contextmanager
def _new_store_removed_on_error(store_path: str | os.PathLike[str]) -> Iterator[None]:
    """Remove the store (and the folders made for it) that this command created, when the command fails before
    writing any experiment: a failed run leaves nothing behind."""
    path = Path(store_path)
    # lexists: a symlink (even a dangling or looping one) is the user's, never this command's to remove
    made = [] if os.path.lexists(path) else [p for p in (path, *path.parents) if not os.path.lexists(p)]
    try:
        yield
    except BaseException:
        if made and _holds_nothing(path):
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
                p.unlink(missing_ok=True)
            for folder in made[1:]:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        raise


def _holds_nothing(path: Path) -> bool:
    from lifebench.store import Store

    try:
        with Store(path, create=False) as store:
            return not store.experiments() and not store.failures()
    except ConfigError:  # not there, or still without a schema
        return True


DEMO_MODELS = ["efficientnet-lite0", "random-vit", "pixels"]


def cmd_demo(args) -> int:
    from lifebench.runner import RunOptions, expand, run_jobs
    from lifebench.store import Store
    from lifebench.tasks import synthetic, tuxpaint

    _check_resamples(args.resamples)
    t0 = time.perf_counter()
    task = None
    if not args.synthetic:
        try:
            task = tuxpaint.load(data_dir())
        except tuxpaint.DataUnavailable as e:
            print(f"lifebench demo: {e}; running on a generated shapes task instead", file=sys.stderr)
            print("note: the real-photo demo could not run here; the scores below are on generated shapes")
    if task is None:
        task = synthetic.load(data_dir())
    print(_task_line(task))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    with Store(out / "results.sqlite") as store:
        jobs = expand([task], DEMO_MODELS, ["logreg"], settings={"decode": args.decode})
        options = RunOptions(cache_dir=_cache(args), device=args.device, batch_size=args.batch_size,
                             num_workers=args.workers, skip_bad_images=args.skip_bad_images, force=args.force)
        results = run_jobs(jobs, store, options)
        n_img = sum(r.n_encoded for r in results)
        n_skip = sum(r.status == "skipped" for r in results)
        print(f"{len(results) - n_skip} models evaluated, {n_skip} already in {out}/results.sqlite; "
              f"{n_img} images through a model")
        _print_leaderboard(store, [task.name], args.resamples, out, seed=args.bootstrap_seed)
        _print_accuracy(store, [task], args.resamples, args.bootstrap_seed)
        print(f"\ntotal {time.perf_counter() - t0:.1f} s; results in {out}/")
    return 0


def _embed_task(args):
    """``(task, backbone, embeddings)`` of a parsed ``embed`` command line (also :func:`lifebench.api.embed`)."""
    from lifebench.backbones import canonical_id, load_backbone
    from lifebench.features import embed

    (task,) = _resolve_tasks(args, [args.task])
    backbone = load_backbone(canonical_id(args.model))
    emb = embed(backbone, task.examples, cache_dir=_cache(args), device=args.device, batch_size=args.batch_size,
                num_workers=args.workers, skip_bad_images=args.skip_bad_images, decode=args.decode)
    return task, backbone, emb


def cmd_embed(args) -> int:
    import numpy as np

    from lifebench.fsutil import atomic_write

    out: Path = args.out
    if out.suffix not in (".npy", ".parquet"):
        raise ConfigError(f"--out {out} must end in .npy or .parquet")
    task, backbone, emb = _embed_task(args)
    if task.folds is not None:
        split = np.array([f"fold{f}" for f in task.folds], dtype=object)
    else:
        split = np.full(len(task.examples), "", dtype=object)
        split[task.train_idx] = "train"
        split[task.test_idx] = "test"
    keep = np.flatnonzero(emb.ok)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["row", "id", "label", "split"])
        for row, i in enumerate(keep):
            w.writerow([row, task.examples.ids[i], task.examples.labels[i], split[i]])
        def write(f) -> None:  # the array synced before the sidecar is replaced: a failed write (full disk) keeps both
            np.save(f, emb.vectors[keep])
            f.flush()
            os.fsync(f.fileno())
            atomic_write(out.with_suffix(".ids.csv"), lambda g: g.write(buf.getvalue().encode()))

        atomic_write(out, write)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        vec = emb.vectors[keep]
        table = pa.table({
            "id": task.examples.ids[keep].astype(str), "label": task.examples.labels[keep].astype(str),
            "split": split[keep].astype(str), "path": task.examples.paths[keep].astype(str),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), vec.shape[1]),
        })
        atomic_write(out, lambda f: pq.write_table(table, f))
    print(f"wrote {len(keep)} x {emb.vectors.shape[1]} embeddings of {task.name} by {backbone.id} to {out}"
          f"{' (from cache)' if emb.from_cache else ''}")
    return 0


def cmd_ls(args) -> int:
    if args.what == "backbones":
        from lifebench.backbones import describe

        rows = describe()
        print(f"{'name':<22} {'zero-shot':<9} {'offline':<7} id / help")
        for r in rows:
            print(f"{r['name']:<22} {'yes' if r['zero_shot'] else 'no':<9} {'yes' if r['offline'] else 'no':<7} "
                  f"{r['syntax']}  {r['help']}")
    elif args.what == "tasks":
        from lifebench.tasks import CATALOG, TASKS

        print("A task is a name below, or a path: a folder of class folders (optionally under train/ and test/) or "
              "a CSV/Parquet manifest with columns path,label[,split][,group].\n")
        rows = [(t.name, t.suite or "-", f"{t.n_train:,}" if t.n_train else "?", f"{t.n_test:,}" if t.n_test else "?",
                 t.modality, t.kingdom, f"{t.protocol} / {t.metric}", t.method) for t in CATALOG.values()]
        head = ("name", "suite", "train", "test", "modality", "kingdom", "protocol / metric", "method")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
        for r in [head, *rows]:
            print(" ".join(f"{v:>{w}}" if i in (2, 3) else f"{v:<{w}}"
                           for i, (v, w) in enumerate(zip(r[:-1], widths, strict=True)))
                  + f" {r[-1]}")
        print()
        for name in TASKS.names():
            print(f"{name:<{widths[0]}} {TASKS.help(name)}")
    elif args.what == "protocols":
        from lifebench.protocols import PROTOCOLS

        for name in PROTOCOLS.names():
            print(f"  {name:<12} {PROTOCOLS.help(name)}")
    else:
        from lifebench.metrics import METRICS, get_metric

        for name in METRICS.names():
            print(f"  {name:<18} {get_metric(name).description}")
    return 0


def cmd_download(args) -> int:
    from lifebench.tasks.catalog import get_info

    spec = get_info(args.task)
    root = (args.dir or data_dir()) / spec.data_folder
    t0 = time.perf_counter()
    spec.download(root)
    why = spec.missing(root)
    if why:
        raise DataError(f"{args.task}: the download finished but {why}")
    print(f"{spec.name}: data ready in {root} ({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_report(args) -> int:
    from lifebench.export import open_results

    _check_resamples(args.resamples)
    store_path = args.store or default_store()
    from lifebench.report import build_leaderboard

    with open_results(store_path) as store:  # a store, or a predictions export rebuilt as one
        board = build_leaderboard(store, tasks=args.task, n_resamples=args.resamples, seed=args.bootstrap_seed,
                                  confidence=args.confidence, metric=args.metric,
                                  per_class=args.per_class is not None or args.html is not None,
                                  compare=args.compare, power=args.power)
        shown = _first_models(board, args.limit)
        if args.format == "table":
            print(shown.to_text())
            if board.labels_needed:
                print(board.labels_needed_text())
            if board.per_class is not None and args.per_class is not None:
                print(board.per_class.to_text(args.per_class))
        else:
            print({"json": shown.json_text, "csv": shown.csv_text, "md": shown.to_markdown}[args.format](), end="")
        # per-class files (a dense confusion CSV per model) only when asked for; the page shows them anyway
        files = board if args.per_class is not None else dataclasses.replace(board, per_class=None)
        written = files.write(args.out or Path(store_path).parent)
        if args.html is not None:
            from lifebench.report.html import write_results_page

            written["html"] = write_results_page(store, args.html, board=board)
    print(f"\nreport: {', '.join(str(p) for p in written.values())}",
          file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def cmd_merge(args) -> int:
    from lifebench.store import Store

    for src in args.sources:  # every source readable before anything is written: no half-done merge
        Store(src, create=False).close()
        if os.path.exists(args.into) and os.path.samefile(src, args.into):
            raise ConfigError(f"merge source {src} is the store being merged into ({args.into}); "
                              "name another store to copy from")
    with Store(args.into) as store:
        for src in args.sources:
            added, already = store.merge(src)
            print(f"{src}: {added} experiments added, {already} already in {args.into}")
    return 0


def cmd_sweep(args) -> int:
    from lifebench.runner import sweep

    spec = sweep.load(args.file)
    run_args = build_parser().parse_args(["run", *spec.run_argv])
    run_args.dry_run = args.dry_run  # a dry run lists missing extras; a real one fails on them before planning
    run_args.executor_kind = args.executor or spec.executor.get("kind", "inprocess")
    plan = _plan(run_args)
    jobs, _, store_path = plan
    if args.dry_run:
        run_args.dry_run = True
        return cmd_run(run_args, plan)
    kind = args.executor or spec.executor.get("kind", "inprocess")
    if kind == "inprocess":
        run_args.keep_going = True
        code = cmd_run(run_args, plan)
    elif kind == "local":
        code = sweep.run_local(spec, args.processes or spec.executor.get("processes", 2))
    else:
        submitted, logs = sweep.submit_slurm(spec, sorted({j.backbone for j in jobs}))
        print(f"submitted {len(submitted)} Slurm array tasks (one per backbone): "
              f"{', '.join(j.job_id for j in submitted)}; logs in {logs}")
        if args.no_wait:
            return 0
        code = sweep.wait_slurm(submitted)
    print(sweep.status_text(jobs, store_path))
    return code


def cmd_status(args) -> int:
    from lifebench.runner import sweep

    spec = sweep.load(args.file)
    jobs, _, store_path = _plan(build_parser().parse_args(["run", *spec.run_argv, "--dry-run"]))  # reads only
    print(sweep.status_text(jobs, store_path))
    return 0


def _model_embeddings(args, task, backbone: str, key: str | None):
    """``(vectors, ok)`` of the task's images by ``backbone``: the run's cache entry, else embedded again."""
    from lifebench.backbones import load_backbone
    from lifebench.features import cached_embeddings, embed

    cache = _cache(args)
    if cache is not None and key and (got := cached_embeddings(cache, key, task.examples)) is not None:
        log.info("embeddings of %s by %s from the cache entry %s", task.name, backbone, key)
        return got
    emb = embed(load_backbone(backbone), task.examples, cache_dir=cache, device=args.device,
                batch_size=args.batch_size, num_workers=args.workers, skip_bad_images=args.skip_bad_images)
    return emb.vectors, emb.ok


def cmd_taxonomy(args) -> int:
    from lifebench.report.taxonomy import (
        plot_embedding,
        safe_name,
        taxonomy_report,
        varying_ranks,
    )
    from lifebench.store import Store

    _check_resamples(args.resamples)
    store_path = args.store or default_store()
    kw = {"n_resamples": args.resamples, "seed": args.bootstrap_seed, "confidence": args.confidence}
    with Store(store_path, create=False) as store:
        task, name = None, args.task
        if args.plot_dir is not None or name not in {e.task for e in store.experiments()}:
            (task,) = _resolve_tasks(args, [args.task])
            name = task.name
        board = taxonomy_report(store, name, models=args.model, **kw)
        if task is not None and args.plot_dir is not None:
            embeddings, taxonomy = {}, task.taxonomy or board.taxonomy
            ranks = args.rank or varying_ranks(taxonomy)
            for backbone in dict.fromkeys(row.backbone for row in board.rows):
                newest = max(store.experiments(task=name, backbone=backbone), key=lambda e: (e.created_at or 0, e.id))
                vectors, ok = _model_embeddings(args, task, backbone, newest.fit_info.get("embedding_key"))
                embeddings[backbone] = (vectors[ok], task.examples.labels[ok])
                out = plot_embedding(vectors[ok], task.examples.labels[ok], taxonomy, ranks,
                                     args.plot_dir / f"taxonomy-{safe_name(name)}-{safe_name(backbone)}.png",
                                     args.method, title=f"{backbone} on {name}")
                print(f"picture: {out}")
            board = taxonomy_report(store, name, models=args.model, embeddings=embeddings, **kw)
        print(board.to_text())
        written = board.write(args.out or Path(store_path).parent)
    print(f"report: {', '.join(str(p) for p in written.values())}")
    return 0


COMMANDS = {"sweep": cmd_sweep, "status": cmd_status, "merge": cmd_merge, "run": cmd_run, "demo": cmd_demo, "embed": cmd_embed, "download": cmd_download, "ls": cmd_ls,
            "report": cmd_report, "taxonomy": cmd_taxonomy}


def cmd_analyze(args) -> int:
    from lifebench.analysis import analyze, from_store, load_results
    from lifebench.analysis.html import write_report

    _check_resamples(args.resamples)
    if args.results:
        results = load_results(args.results, clip_metric=args.clip_metric)
        out = args.out or Path("lifebench-analysis")
    else:
        store_path = args.store or default_store()
        from lifebench.export import open_results

        with open_results(store_path) as store:  # a store, or a predictions export rebuilt as one
            names = sorted({e.task for e in store.experiments()})
            if args.reference.split("[")[0] not in names:  # before minutes of bootstrapping, not after
                raise DataError(f"reference task {args.reference!r} has no scores in {store_path}; tasks there: "
                                f"{', '.join(names) or '(none)'}; pass --reference with one of them")
            results = from_store(store, n_resamples=args.resamples, seed=args.bootstrap_seed,
                                 confidence=args.confidence)
        out = args.out or Path(store_path).parent / "analysis"
    analysis = analyze(results, reference=args.reference, suite=args.task, n_boot=args.resamples,
                       seed=args.bootstrap_seed, confidence=args.confidence, min_models=args.min_models)
    print(analysis.to_text())
    written = write_report(analysis, out, plots=not args.no_plots)
    print(f"report: {written['html']} (with results.parquet, results.csv, results.json, analysis.txt, analysis.json"
          f"{' and plots/' if any(k.startswith('plot.') for k in written) else ''})")
    return 0


COMMANDS["analyze"] = cmd_analyze


def cmd_export(args) -> int:
    from lifebench.export import export

    _check_resamples(args.resamples)
    store_path = args.store or default_store()
    n = export(store_path, args.out, what=args.what, tasks=args.task, n_resamples=args.resamples,
               seed=args.bootstrap_seed, confidence=args.confidence)
    print(f"wrote {n} {'prediction' if args.what == 'predictions' else 'leaderboard'} rows to {args.out}")
    return 0


COMMANDS["export"] = cmd_export


def cmd_interpolate(args) -> int:
    from lifebench.interpolate import evaluate, parse_alphas, suite_groups
    from lifebench.runner import RunOptions
    from lifebench.store import Store

    _check_resamples(args.resamples)
    alphas = parse_alphas(args.alphas)
    if not args.suite and not args.task:
        raise ConfigError("give at least one --suite or --task to evaluate the interpolations on")
    groups = suite_groups(args.suite, args.task, args.data_root or data_dir())
    tasks = _resolve_tasks(args, list(dict.fromkeys(n for names in groups.values() for n in names)))
    store_path = args.store or default_store()
    options = RunOptions(cache_dir=_cache(args), device=args.device, batch_size=args.batch_size,
                         num_workers=args.workers, skip_bad_images=args.skip_bad_images, force=args.force,
                         show_progress=not args.quiet)
    with _new_store_removed_on_error(store_path), Store(store_path) as store:  # refused inputs leave no store
        result = evaluate(args.a, args.b, alphas, tasks, groups, store, options, n_resamples=args.resamples,
                          seed=args.bootstrap_seed)
    print(result.to_text())
    written = result.write(args.out or Path(store_path).parent)
    print(f"report: {', '.join(str(p) for p in written.values())}")
    return 0


COMMANDS["interpolate"] = cmd_interpolate


def _split_task(args, name: str, split: dict | None = None):
    """``name`` resolved with one train/test split: ``split`` (a fine-tune's recorded test_size and seed) unless the
    command line gives --test-size, else the task's own; a task that would be cross-fitted gets the default split,
    because a fine-tuned model must be scored on images it did not train on."""
    from lifebench.tasks.split import DEFAULT_TEST_SIZE

    if args.folds is not None:
        raise ConfigError(f"--folds {args.folds}: fine-tuning trains on a train split and scores a held-out test "
                          "split; give --test-size instead")
    if split and args.test_size is None:
        args = argparse.Namespace(**{**vars(args), "test_size": split["test_size"], "split_seed": split["split_seed"]})
    (task,) = _resolve_tasks(args, [name])
    if task.folds is not None:
        args = argparse.Namespace(**{**vars(args), "test_size": DEFAULT_TEST_SIZE})
        (task,) = _resolve_tasks(args, [name])
    return task, {"test_size": args.test_size, "split_seed": args.split_seed}


def cmd_finetune(args) -> int:
    from lifebench.finetune import finetune, make_recipe

    task, split = _split_task(args, args.task)
    print(_task_line(task))
    recipe = make_recipe(args.model, task, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                         text_type=args.text_type, label_smoothing=args.label_smoothing, seed=args.seed,
                         device=args.device, checkpoint_every=args.checkpoint_every)
    result = finetune(recipe, task, args.out, device=args.device, num_workers=args.workers,
                      show_progress=not args.quiet, restart=args.restart, split_options=split)
    if result.resumed_from == -1:
        print(f"{result.path} holds this recipe's weights already (delete it or pass --restart to train again)")
    else:
        resumed = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
        print(f"fine-tuned {recipe.model} on {len(task.train_idx)} training images of {task.name} "
              f"({len(task.test_idx)} test images held out): {recipe.steps} steps{resumed}, loss "
              f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}, {result.seconds:.1f} s")
        print(f"wrote {result.path} (recipe: {result.path.with_suffix('.json')})")
    print(f"load it as {result.backbone_id}")
    return 0


COMMANDS["finetune"] = cmd_finetune


def cmd_forgetting(args) -> int:
    from lifebench.backbones import parse_backbone_id
    from lifebench.finetune import read_recipe
    from lifebench.interpolate import evaluate_forgetting, parse_alphas, suite_groups
    from lifebench.store import Store

    _check_resamples(args.resamples)
    alphas = parse_alphas(args.alphas)
    if not args.suite and not args.task:
        raise ConfigError("give at least one reference --suite or --task to measure forgetting on")
    weights = parse_backbone_id(args.finetuned).weights
    recipe = read_recipe(weights) if weights.startswith("/") else None
    trained = (recipe or {}).get("trained_on", {})
    target, _ = _split_task(args, args.target, trained.get("split_options"))
    if recipe and target.name != trained.get("task"):
        log.warning("FINETUNED was fine-tuned on %s, not on the target %s", trained.get("task"), target.name)
    groups = suite_groups(args.suite, args.task, args.data_root or data_dir())
    refs = [n for n in dict.fromkeys(n for names in groups.values() for n in names) if n != args.target]
    tasks = [t for t in _resolve_tasks(args, refs) if t.name != target.name] + [target]
    store_path = args.store or default_store()
    options = _run_options(argparse.Namespace(**{**vars(args), "keep_going": False, "endpoint": None}))
    with _new_store_removed_on_error(store_path), Store(store_path) as store:
        result = evaluate_forgetting(args.base, args.finetuned, alphas, target, groups, tasks, store, options,
                                     budget=args.budget, n_resamples=args.resamples, seed=args.bootstrap_seed,
                                     recipe=recipe)
    print(result.to_text())
    written = result.write(args.out or Path(store_path).parent)
    print(f"report: {', '.join(str(p) for p in written.values())}")
    return 0


COMMANDS["forgetting"] = cmd_forgetting


def cmd_microscopy_report(args) -> int:
    from lifebench.report.microscopy import build

    _check_resamples(args.resamples)
    store_path = args.store or default_store()
    if not Path(store_path).exists():
        raise ConfigError(f"no results store at {store_path}; run 'lifebench run --suite microscopy' first or pass --store")
    kinds = {**{m: "specialist" for m in args.specialist}, **{m: "generalist" for m in args.generalist}}
    report = build(store_path, args.data_root or data_dir(), kinds=kinds, n_resamples=args.resamples,
                   seed=args.bootstrap_seed, models=args.model)
    print(report.to_text())
    written = report.write(args.out or Path(store_path).parent, plots=not args.no_plots)
    print(f"report: {', '.join(str(p) for p in written.values())}")
    return 0


COMMANDS["microscopy-report"] = cmd_microscopy_report


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script made from ``parser``, so it never lists an option the parser lacks: commands, each
    command's visible options, the choices of an option or positional that has them, and file names otherwise."""
    import shlex

    def visible(actions) -> list[str]:
        return [o for a in actions if a.help != argparse.SUPPRESS for o in a.option_strings]

    def choice_cases(actions) -> str:
        cases = [f"            {'|'.join(a.option_strings)}) COMPREPLY=($(compgen -W "
                 f"{shlex.quote(' '.join(map(str, a.choices)))} -- \"$cur\")); return;;"
                 for a in actions if a.option_strings and a.choices and a.help != argparse.SUPPRESS]
        return "\n".join(cases)

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    blocks = []
    for name, p in sub.choices.items():
        positional = [str(c) for a in p._actions if not a.option_strings and a.choices for c in a.choices]  # noqa: SLF001
        cases = choice_cases(p._actions)  # noqa: SLF001
        blocks.append(f"        {name})\n"
                      + (f"            case \"$prev\" in\n{cases}\n            esac\n" if cases else "")
                      + f"            words={shlex.quote(' '.join(visible(p._actions)))}"  # noqa: SLF001
                      + f" positional={shlex.quote(' '.join(positional))};;")
    top = " ".join([*sub.choices, *visible(parser._actions)])  # noqa: SLF001
    return f"""# bash completion for lifebench {__version__}; made by 'lifebench completion bash'
_lifebench() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" cmd="" words positional i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break;; esac
    done
    case "$cmd" in
        "") COMPREPLY=($(compgen -W {shlex.quote(top)} -- "$cur")); return;;
{chr(10).join(blocks)}
        *) return;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    elif [[ -n "$positional" ]]; then
        COMPREPLY=($(compgen -W "$positional" -- "$cur"))
    fi
    [[ ${{#COMPREPLY[@]}} -gt 0 ]] || COMPREPLY=($(compgen -f -- "$cur"))
}}
complete -o filenames -F _lifebench lifebench
"""


def cmd_completion(args) -> int:
    print(bash_completion(build_parser()), end="")
    return 0


COMMANDS["completion"] = cmd_completion


def _check_output_folders(args) -> None:
    """Refuse an output folder that cannot be written before any work is done (it is made only when written)."""
    for option, attr in (("--out", "out"), ("--out", "report_dir"), ("--plot-dir", "plot_dir"), ("--html", "html")):
        if (value := getattr(args, attr, None)) is None:
            continue
        existing = nearest_existing(Path(value).parent if args.command in ("embed", "export", "finetune") else value)  # a file
        if not existing.is_dir():
            raise ConfigError(f"{option} {value}: {existing} is a file, not a folder; pass a folder path")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {value}: the folder {existing} is not writable; pass a writable folder")


def _error(message: object) -> None:
    """Print ``lifebench: error: MESSAGE`` on one line: a newline, tab or escape sequence inside a value the
    message names (a path can hold any of them) is shown escaped, so that the error stays one readable line."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))
    print(f"lifebench: error: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM turned into it by the runner (a cluster's preemption),
        # caught out here so that one arriving while another error is being reported is still one line
        print("lifebench: interrupted; finished experiments and cache entries are kept", file=sys.stderr)
        return 143 if str(e) == "SIGTERM" else 130  # 128 + the signal's number, as a shell reports it


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    if argv is not None and (bad := next((a for a in argv if "\0" in str(a)), None)) is not None:
        # only a caller of main() can pass one (a process's arguments cannot hold NUL); every path use would fail
        _error(f"argument {str(bad)[:100]!r} holds a NUL character, which no path or value may contain; remove it")
        return 2
    try:
        args = parser.parse_args(argv)
    except LifebenchError as e:  # a bad run --config file
        _error(e)
        return e.exit_code
    if not args.command:
        parser.print_help()
        return 2
    _setup_logging(args.verbose, args.quiet)
    try:
        from lifebench.store.sqlite import lease_from_env

        lease_from_env()  # a bad $LIFEBENCH_LEASE_S is one line here, before anything runs
        _check_output_folders(args)
        return COMMANDS[args.command](args)
    except LifebenchError as e:
        _error(e)
        return e.exit_code
    except BrokenPipeError:  # output piped into a reader that stopped (head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # permission denied, disk full, ...: the user's environment, not a lifebench bug
        where = f": {e.filename}" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):  # files are written atomically: none is half there
            _error(f"the disk is full or the file too large ({e.strerror}) writing {e.filename or 'an output file'}; "
                   "nothing was half-written: free space (or raise the file-size limit) and rerun")
        else:
            _error(f"{e.strerror or e}{where}; check the path and its permissions or free space")
        return 2


if __name__ == "__main__":
    sys.exit(main())
