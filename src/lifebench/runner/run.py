"""Run jobs in this process: load each backbone once, embed each task once, fit, predict, store.

A job whose config hash is already in the store is skipped without loading anything (``force``
recomputes it; the embedding cache still saves the forward pass). Each finished job is written to the
store in one transaction, so a crash or kill loses only the job in flight and never leaves half of one.

One pipeline for every job: :func:`_strategy` looks once at the task's kind (:attr:`Task.kind
<lifebench.tasks.base.Task.kind>`), whether the protocol is zero-shot and whether the backbone is generative, and
picks a strategy; the strategy returns per-unit records (a part, a fold, or the whole split: ``ids``, ``y_true``,
``y_pred``, ``score``, ``topk``, ``part``, ``group``, ``extra``, ``info``), and :func:`_write` turns them into one
experiment and its predictions. Why: the checks and the bookkeeping live in one place, and a new kind is one
short function plus one row of :data:`_STRATEGIES`, not another flag tested in several branches.
"""

from __future__ import annotations

import functools
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifebench.backbones import load_backbone
from lifebench.errors import ConfigError, DataError, StoreFullError
from lifebench.features import Embeddings, embed, embed_texts, resolve_device, zero_shot_weights
from lifebench.protocols import PROTOCOLS, ZeroShot, fit_info, make_protocol, top_k
from lifebench.protocols.zeroshot import zero_shot_choices
from lifebench.runner.plan import Job
from lifebench.store import Experiment, Predictions, Store
from lifebench.store.provenance import collect as collect_provenance
from lifebench.store.sqlite import LEASE_S, worker_owner
from lifebench.tasks.base import UNKNOWN, Task
from lifebench.tasks.taxonomy import class_texts, default_templates, load_templates
from lifebench.vlm.run import answer_questions

__all__ = ["JobResult", "RunOptions", "plan_status", "run_jobs"]

log = logging.getLogger(__name__)

TOPK = 5


@dataclass(frozen=True)
class RunOptions:
    cache_dir: Path | None = None
    device: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    skip_bad_images: bool = False
    force: bool = False
    show_progress: bool = True
    keep_going: bool = False
    """Record a job that raises as failed and go on with the others (sweeps); else the error stops the run."""
    endpoint: str | None = None
    """Base URL of an OpenAI-compatible chat API, for ``openai-compatible:`` backbones (:mod:`lifebench.vlm`)."""


@dataclass
class JobResult:
    job: Job
    status: str
    """"done" (ran now), "skipped" (already in the store), "running elsewhere" (another worker holds its
    claim) or "failed" (it raised, with ``RunOptions.keep_going``; else the error stops the run)."""
    experiment_id: int | None = None
    n_encoded: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    fit_info: dict = field(default_factory=dict)
    error: str = ""


def _device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return f"{device} {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    import platform

    return f"cpu {platform.processor() or platform.machine()}"


def plan_status(jobs: list[Job], store: Store | None, force: bool = False) -> list[tuple[Job, str]]:
    """Each job with what a run would do: "run", "rerun (--force)", "skip: done (experiment N)" or "skip:
    running elsewhere" (another worker holds a live claim on it). ``store`` None: no store yet, every job runs."""
    if store is None:
        return [(job, "run") for job in jobs]
    out = []
    for job in jobs:
        exp = store.get(job.config_hash)
        if exp is None and (held := store.claimed(job.config_hash)):
            out.append((job, f"skip: running elsewhere ({held[0]}, alive {held[1]:.0f} s ago)"))
        elif exp is None:
            out.append((job, "run"))
        elif force:
            out.append((job, f"rerun (--force; replaces experiment {exp.id})"))
        else:
            out.append((job, f"skip: done (experiment {exp.id})"))
    return out


def run_jobs(jobs: list[Job], store: Store, options: RunOptions) -> list[JobResult]:
    """Run ``jobs`` (grouped by backbone) and write each result to ``store``; returns one result per job.

    Each job is claimed in the store just before it runs, so several workers given the same jobs (local
    processes, Slurm array tasks) share them out; a backbone is loaded only once one of its jobs is claimed.
    With ``options.keep_going`` a job that raises is recorded as failed (with its error) and the others go on.

    SIGTERM (a cluster's preemption or time limit) and SIGINT raise KeyboardInterrupt while the jobs run, so this
    process's claims are released on the way out and a rerun anywhere takes the jobs over at once; a kill -9
    leaves them to be taken over by the next worker on this host (or, elsewhere, after the lease).
    """
    results: list[JobResult] = []
    owner = worker_owner()
    device = resolve_device(options.device)
    provenance = collect_provenance(device=_device_name(device))
    by_backbone: dict[str, list[Job]] = {}
    for job in jobs:
        by_backbone.setdefault(job.backbone, []).append(job)
    with _interruptible(), _Heartbeat(store.path, owner):
        try:
            for backbone_id, group in by_backbone.items():
                _run_group(backbone_id, group, store, options, device, provenance, results, owner)
        finally:  # a signal between taking a claim and the job's own cleanup leaves none behind either
            store.release(None, owner)
    return results


@contextmanager
def _interruptible() -> Iterator[None]:
    """While the jobs run, SIGTERM and SIGINT raise KeyboardInterrupt (once: a second signal does not cut the
    cleanup short); the previous handlers come back afterwards. A handler the caller set (or SIG_IGN, as for a
    background job) is kept; in a thread other than the main one nothing changes (Python allows handlers only
    there). SIGXFSZ needs nothing: Python ignores it, so a file-size limit (ulimit -f) is a write error."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
            previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Heartbeat:
    """Renews this worker's claims from a background thread (with its own connection) while it runs."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path, self.owner, self.stop = path, owner, threading.Event()
        self.thread = threading.Thread(target=self._beat, name="lifebench-heartbeat", daemon=True)

    def _beat(self) -> None:
        with Store(self.path) as store:
            while not self.stop.wait(LEASE_S / 10):
                try:
                    store.heartbeat(self.owner)
                except sqlite3.Error as err:  # a busy store must not end the heartbeats (claims would expire)
                    log.warning("could not renew claims (%s); retrying", err)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _run_group(backbone_id: str, group: list[Job], store: Store, options: RunOptions, device, provenance: dict,
               results: list[JobResult], owner: str) -> None:
    """Run one backbone's jobs: claim each, load the backbone on the first claim, embed each task once."""
    backbone, load_s = None, 0.0
    embeddings: dict[tuple[str, str], Embeddings] = {}
    for job in group:
        done = None if options.force else store.get(job.config_hash)
        if done is not None:
            log.info("skip (already in the store): %s", job.label())
            results.append(JobResult(job, "skipped", experiment_id=done.id))
            continue
        if not store.claim(job.config_hash, owner, job.label(), replace=options.force):
            done = store.get(job.config_hash)  # finished by another worker since the check above
            log.info("skip (%s): %s", "already in the store" if done else "running elsewhere", job.label())
            results.append(JobResult(job, "skipped", experiment_id=done.id) if done else
                           JobResult(job, "running elsewhere"))
            continue
        try:
            if backbone is None:
                t0 = time.perf_counter()
                backbone = load_backbone(backbone_id)
                load_s = time.perf_counter() - t0
                log.info("loaded %s in %.1f s", backbone.id, load_s)
            strategy = _strategy(job, backbone)  # before embedding: a job that cannot run stops at once
            emb, first_use, timings = None, False, {"load_backbone": load_s}
            if not getattr(backbone, "generative", False):  # a VLM answers each question itself: nothing to embed
                decode = job.setting("decode")  # the job's own setting, which its config hash covers
                key = (job.task.examples.manifest_hash(), decode)  # tasks on the same images share one embedding
                first_use = key not in embeddings
                if first_use:
                    embeddings[key] = embed(
                        backbone, job.task.examples, cache_dir=options.cache_dir, device=device,
                        batch_size=options.batch_size, num_workers=options.num_workers,
                        skip_bad_images=options.skip_bad_images, show_progress=options.show_progress,
                        decode=decode,
                    )
                emb = embeddings[key]
                timings["embed"] = emb.seconds if first_use else 0.0
            load_s = 0.0  # charged to the first job after loading only
            run = _JobRun(job, emb, backbone, options, device, timings)
            results.append(_run_one(run, strategy, store, first_use, provenance))
        except Exception as err:
            if not options.keep_going or isinstance(err, StoreFullError):  # a full disk fails every job after it
                raise
            log.error("failed: %s: %s", job.label(), err)
            store.record_failure(job.config_hash, job.label(), owner, f"{type(err).__name__}: {err}")
            results.append(JobResult(job, "failed", error=f"{type(err).__name__}: {err}"))
        finally:
            store.release(job.config_hash, owner)  # a no-op after a write, which released it already


def _pool(vectors: np.ndarray, labels: np.ndarray, groups: np.ndarray, rows: np.ndarray, how: str | None):
    """Features, labels and ids of ``rows``, or of their groups when ``how`` pools ("max" or "mean").

    A pooled example is the element-wise max or mean of its members' embeddings, labelled with the members'
    most common label (ties: the first in sorted order), and identified by its group id.
    """
    if how is None:
        return vectors[rows], labels[rows], None
    g = groups[rows].astype(str)
    order = np.argsort(g, kind="stable")
    rows, g = rows[order], g[order]
    ids, starts, counts = np.unique(g, return_index=True, return_counts=True)
    X = vectors[rows]
    pooled = np.maximum.reduceat(X, starts, axis=0) if how == "max" else np.add.reduceat(X, starts, axis=0) / counts[:, None]
    names, codes = np.unique(labels[rows], return_inverse=True)
    tally = np.zeros((ids.size, names.size), dtype=np.int64)
    np.add.at(tally, (np.repeat(np.arange(ids.size), counts), codes), 1)
    return pooled, names[tally.argmax(axis=1)], ids


def _ranked(est, X: np.ndarray, names: np.ndarray):
    """Predicted labels, ranked labels (best first, the prediction first) and the prediction's confidence."""
    scores = np.asarray(est.decision_function(X), dtype=np.float64)
    if scores.ndim == 1:  # a binary decision function scores the positive class
        scores = np.stack([-scores, scores], axis=1)
    fitted = np.asarray(est.classes_)
    pred = np.asarray(est.predict(X))  # the estimator's own tie-breaking; -1 = none of the known classes
    known = pred >= 0
    col = np.searchsorted(fitted, np.where(known, pred, fitted[0]))
    bumped = scores.copy()
    bumped[np.flatnonzero(known), col[known]] = np.inf
    ranked = names[fitted[top_k(bumped, min(TOPK, scores.shape[1]))]].astype(object)
    if not known.all():  # an open-set "unknown" goes first, the known classes after it
        ranked[~known] = np.concatenate([np.full((int((~known).sum()), 1), UNKNOWN, dtype=object),
                                         ranked[~known][:, :-1]], axis=1)
    confidence = est.predict_proba(X) if hasattr(est, "predict_proba") else scores
    conf = np.where(known, np.asarray(confidence, dtype=np.float64)[np.arange(len(X)), col], np.nan)
    return np.where(known, names[np.where(known, pred, 0)], UNKNOWN).astype(str), ranked.astype(str), conf


def _zero_shot_weights(task, est: ZeroShot, backbone, options: RunOptions, device) -> tuple[np.ndarray, list[str]]:
    """The class weights of ``task.classes`` for the zero-shot estimator ``est``, from ``backbone``'s text tower,
    and the class texts they were built from."""
    templates = default_templates() if est.templates == "bioclip" else load_templates(est.templates)
    names = class_texts(list(task.classes), task.taxonomy, est.text_type or task.text_type)
    log.info("zero-shot %s: %d classes x %d templates, e.g. %r", task.name, len(names), len(templates),
             templates[0].format(names[0]))
    return zero_shot_weights(backbone, names, templates, cache_dir=options.cache_dir, device=device), names


@dataclass
class _Unit:
    """One fit-and-predict unit with its unreadable images dropped: a part, a fold, or the whole split.

    ``X_test``, ``y_test`` and ``ids`` are already pooled per group when the task pools its test side."""

    name: str
    """The part's name; "" for a fold or the whole split."""
    labels: np.ndarray
    train: np.ndarray
    test: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    ids: np.ndarray
    where: str
    """How errors name the unit: ``task 'x'`` or ``task 'x', part 'y'``."""

    def record(self, y_pred: np.ndarray, ranked: np.ndarray, conf: np.ndarray, extra: dict, info: dict) -> dict:
        """The per-unit record every strategy returns; a part's ids become ``"<part>/<id>"`` to stay unique."""
        ids = np.char.add(f"{self.name}/", self.ids) if self.name else self.ids
        return {"ids": ids, "y_true": self.y_test.astype(str), "y_pred": y_pred, "score": conf, "topk": ranked,
                "part": np.full(len(ids), self.name) if self.name else None, "group": self.ids, "extra": extra,
                "info": info}


@dataclass
class _JobRun:
    """One job in flight: what every strategy reads (job, embeddings, backbone, options) and adds to (timings)."""

    job: Job
    emb: Embeddings | None
    """None for a generative backbone, which reads the images itself."""
    backbone: Any
    options: RunOptions
    device: Any
    timings: dict[str, float]
    weights: dict[tuple, np.ndarray] = field(default_factory=dict)
    """Zero-shot class weights per (text type, templates): built once per job, not once per fold."""

    @property
    def task(self) -> Task:
        return self.job.task

    def protocol(self):
        """A fresh estimator of the job's protocol: each unit gets its own, so folds and parts never share a fit."""
        return make_protocol(self.job.protocol, **self.job.param_dict, random_state=self.job.seed,
                             device=str(self.device))

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the seconds the block takes to ``timings[phase]`` (summed over units)."""
        t = time.perf_counter()
        yield
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t

    def class_weights(self, est: ZeroShot) -> tuple[np.ndarray, list[str]]:
        key = (est.text_type, est.templates)
        if key not in self.weights:
            self.weights[key] = _zero_shot_weights(self.task, est, self.backbone, self.options, self.device)
        return self.weights[key]

    def caption_weights(self, texts: list[str]) -> np.ndarray:
        """The text-tower vectors of multiple-choice captions, embedded as written."""
        return embed_texts(self.backbone, texts, cache_dir=self.options.cache_dir, device=self.device)

    def units(self) -> Iterator[_Unit]:
        """The task's units (:meth:`Task.units`) that keep at least one readable test image."""
        task, emb = self.task, self.emb
        for name, labels, train_all, test_all in task.units():
            train, test = train_all[emb.ok[train_all]], test_all[emb.ok[test_all]]
            if len(test):
                X_test, y_test, pooled_ids = _pool(emb.vectors, labels, task.examples.groups, test, task.pool_test)
                ids = task.examples.ids[test].astype(str) if pooled_ids is None else pooled_ids
                where = f"task {task.name!r}" + (f", part {name!r}" if name else "")
                yield _Unit(name, labels, train, test, X_test, y_test, ids, where)


def _fit_probe(run: _JobRun, unit: _Unit, est, *, same_images: bool = False, unseen: bool = False):
    """Fit ``est`` on the unit's training side; returns the training labels and the class names it was fit on.

    ``same_images``: train and test may share images (leave-one-out), else a probe would be scored on images it
    was fit on; ``unseen``: test classes without training images are scored as misses, else each is a data error.
    """
    task = run.task
    if not same_images and np.intersect1d(unit.train, unit.test).size:
        raise ConfigError(f"{unit.where} has the same images in train and test (every image is both, as in BioCLIP's "
                          f"suite); a probe would be scored on images it was fit on: use --protocol zero-shot, or "
                          f"--shots K for few-shot")
    X_train, y_train, _ = _pool(run.emb.vectors, unit.labels, task.examples.groups, unit.train, task.pool_train)
    names = np.array(sorted(set(y_train.tolist())), dtype=object)
    if names.size < 2:
        raise DataError(f"{unit.where} has fewer than 2 classes with readable training images")
    if not unseen and (absent := sorted(set(unit.y_test.tolist()) - set(names.tolist()))):
        shown = ", ".join(map(repr, absent[:5])) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise DataError(f"{unit.where}: test classes absent from training: {shown}; a probe cannot predict a class it "
                        "never saw: add training images of them or remove them from the test split")
    with run.timed("fit"):
        est.fit(X_train, np.searchsorted(names, y_train))
    return y_train.astype(str), names


def _row_extras(run: _JobRun, unit: _Unit, y_pred: np.ndarray, y_train: np.ndarray, extra: dict) -> dict:
    """``extra`` plus the task's own per-prediction columns (FungiCLEF's costs), where it has them."""
    if run.task.row_extras is None:
        return extra
    return {**extra, **run.task.row_extras(unit.y_test.astype(str), y_pred, y_train)}


def _probe(run: _JobRun, unit: _Unit, *, unseen: bool = False) -> dict:
    """Plain, folds, parts (and a multiple-choice task under a probe): fit on train, rank the test side."""
    est = run.protocol()
    y_train, names = _fit_probe(run, unit, est, unseen=unseen)
    with run.timed("predict"):
        y_pred, ranked, conf = _ranked(est, unit.X_test, names)
        extra = _row_extras(run, unit, y_pred, y_train, {})
    return unit.record(y_pred, ranked, conf, extra, {**fit_info(est), "n_train": len(y_train)})


def _open_set(run: _JobRun, unit: _Unit) -> dict:
    """Open set: as :func:`_probe`, but a test class without training images is scored (a miss), not refused."""
    return _probe(run, unit, unseen=True)


def _leave_one_out(run: _JobRun, unit: _Unit) -> dict:
    """Leave-one-out (re-identification): the protocol predicts each example from all the others."""
    est = run.protocol()
    if not hasattr(est, "leave_one_out"):
        raise ConfigError(f"{unit.where} is scored leave-one-out; protocol {run.job.protocol!r} cannot do that: use "
                          f"--protocol {run.task.protocol}")
    y_train, names = _fit_probe(run, unit, est, same_images=True, unseen=True)
    with run.timed("predict"):
        pred_codes, ranked_codes, extra = est.leave_one_out()
        y_pred = names[np.asarray(pred_codes)].astype(str)
        extra = _row_extras(run, unit, y_pred, y_train, extra)
    return unit.record(y_pred, names[np.asarray(ranked_codes)].astype(str), np.full(len(y_pred), np.nan), extra,
                       {**fit_info(est), "n_train": len(y_train)})


def _zero_shot_info(run: _JobRun, est: ZeroShot) -> dict:
    return {"n_train": 0, "text_type": est.text_type or run.task.text_type, "n_classes": len(run.task.classes)}


def _zero_shot(run: _JobRun, unit: _Unit) -> dict:
    """Zero-shot (plain, folds, open set): every class scored by its name's prompts; no training image is used."""
    est = run.protocol()
    with run.timed("fit"):
        weights, texts = run.class_weights(est)
        est.fit(weights, run.task.classes, texts=texts, model_logit_scale=getattr(run.backbone, "logit_scale", None))
    y_pred, ranked, conf = _ranked(est, unit.X_test, np.array(run.task.classes, dtype=object))
    y_pred, ranked = est.credit_shared_texts(unit.y_test, y_pred, ranked)  # BioCLIP: one class per text
    return unit.record(y_pred, ranked, conf, {}, {**_zero_shot_info(run, est), **fit_info(est)})


def _choices(run: _JobRun, unit: _Unit) -> dict:
    """Zero-shot multiple choice: per question, its own options, matched by their captions."""
    est = run.protocol()
    with run.timed("fit"):
        scale, source = est.resolve_logit_scale(getattr(run.backbone, "logit_scale", None))
        y_pred, ranked, conf = zero_shot_choices(run.task.questions, unit.test, unit.X_test, run.caption_weights,
                                                 scale)
    return unit.record(y_pred, ranked, conf, {}, {**_zero_shot_info(run, est), "logit_scale": scale,
                                                  "logit_scale_source": source})


def _generative(run: _JobRun) -> list[dict]:
    """A generative VLM on a multiple-choice task: it reads each image and answers the lettered question."""
    run.backbone.to(run.device)  # a local model (hf-vlm) runs where --device says
    with run.timed("predict"):
        return [answer_questions(run.task, run.backbone, cache_dir=run.options.cache_dir,
                                 endpoint=run.options.endpoint, show_progress=run.options.show_progress,
                                 answer_scoring=run.job.setting("answer_scoring"))]


_STRATEGIES: dict[tuple[str, bool], Callable[[_JobRun, _Unit], dict]] = {
    # (task kind, zero-shot protocol) -> the strategy run on each unit; a pair missing here cannot run
    ("plain", False): _probe, ("folds", False): _probe, ("parts", False): _probe,
    ("multiple-choice", False): _probe,  # a probe fits the labels and leaves the questions aside
    ("open-set", False): _open_set, ("leave-one-out", False): _leave_one_out,
    ("plain", True): _zero_shot, ("folds", True): _zero_shot, ("open-set", True): _zero_shot,
    ("multiple-choice", True): _choices,
}


def _strategy(job: Job, backbone) -> Callable[[_JobRun], list[dict]]:
    """How ``job`` runs, decided once from its task's kind, whether its protocol is zero-shot and whether its
    backbone is generative; a combination that cannot run is a :class:`ConfigError` before anything is embedded."""
    task, kind = job.task, job.task.kind
    if getattr(backbone, "generative", False):
        if kind != "multiple-choice":
            raise ConfigError(f"task {task.name!r} has no multiple-choice questions, and {backbone.id!r} is a "
                              "generative model that answers questions; use it on the microscopy suite, or an image "
                              "encoder here")
        if job.protocol != "zero-shot":
            raise ConfigError(f"{job.label()}: a generative model answers without training images; use the task's "
                              "protocol zero-shot (drop --protocol)")
        return _generative
    zero_shot = issubclass(PROTOCOLS.get(job.protocol), ZeroShot)
    per_unit = _STRATEGIES.get((kind, zero_shot))
    if per_unit is None:
        raise ConfigError(f"task {task.name!r} is a {kind!r} task (several parts, or scored leave-one-out); zero-shot "
                          f"needs one class name per label: use the task's own protocol, --protocol {task.protocol}")
    return functools.partial(_each_unit, per_unit)


def _each_unit(per_unit: Callable[[_JobRun, _Unit], dict], run: _JobRun) -> list[dict]:
    return [per_unit(run, unit) for unit in run.units()]


def _run_one(run: _JobRun, strategy: Callable[[_JobRun], list[dict]], store: Store, first_use: bool,
             provenance: dict) -> JobResult:
    """Run one job with its strategy and store what it predicted, in one transaction."""
    records = strategy(run)
    if not records:
        raise DataError(f"task {run.task.name!r} has no readable test images")
    return _write(run, records, store, first_use, provenance)


def _write(run: _JobRun, records: list[dict], store: Store, first_use: bool, provenance: dict) -> JobResult:
    """The experiment and its predictions from a strategy's per-unit records, for every kind; stored at once."""
    job, task, emb, timings = run.job, run.task, run.emb, run.timings
    width = min(TOPK, max(r["topk"].shape[1] for r in records))
    # a probe that saw fewer classes than the task ranks fewer: pad with "" (no prediction), never a class
    topk = np.concatenate([np.pad(r["topk"][:, :width], ((0, 0), (0, width - r["topk"][:, :width].shape[1])),
                                  constant_values="") for r in records])
    parted = records[0]["part"] is not None
    infos = [r["info"] for r in records]
    if len(infos) == 1:
        info = infos[0]
    elif parted:
        info = {"parts": {str(r["part"][0]): r["info"] for r in records}}
    else:
        info = {"folds": infos}
    features = {} if emb is None else {"embedding_key": emb.key, "embedding_dim": int(emb.vectors.shape[1]),
                                       "decode": emb.decode}  # the data path: "lifebench" is device-dependent
    exp = Experiment(
        id=None,
        config_hash=job.config_hash,
        task=task.name,
        backbone=job.backbone,
        protocol=job.protocol,
        metric=task.metric,
        n_train=int(round(np.mean([i["n_train"] for i in infos]))),
        seed=job.seed,
        config=job.config(),
        classes=list(task.classes),
        fit_info={**info, "n_bad_images": 0 if emb is None else int((~emb.ok).sum()), **features,
                  "weights_fingerprint": run.backbone.fingerprint},
        provenance=provenance,
        timings=timings,
        created_at=time.time(),
    )
    extra_names = set(records[0]["extra"])
    if any(set(r["extra"]) != extra_names for r in records):
        raise AssertionError(f"task {task.name!r}: units returned different per-example columns")
    preds = Predictions(
        ids=np.concatenate([r["ids"] for r in records]),
        y_true=np.concatenate([r["y_true"] for r in records]),
        y_pred=np.concatenate([r["y_pred"] for r in records]),
        score=None if records[0]["score"] is None else np.concatenate([r["score"] for r in records]),
        topk=topk,
        part=np.concatenate([r["part"] for r in records]) if parted else None,
        group=np.concatenate([r["group"] for r in records]) if parted else None,
        extra={k: np.concatenate([r["extra"][k] for r in records]) for k in extra_names},
    )
    exp_id = store.write(exp, preds, replace=run.options.force)
    log.info("done: %s (%s)", job.label(), ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    return JobResult(job, "done", experiment_id=exp_id, n_encoded=emb.n_encoded if first_use else 0,
                     timings=timings, fit_info=exp.fit_info)
