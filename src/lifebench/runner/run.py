"""Run jobs in this process: load each backbone once, embed each task once, fit, predict, store.

A job whose config hash is already in the store is skipped without loading anything (``force``
recomputes it; the embedding cache still saves the forward pass). Each finished job is written to the
store in one transaction, so a crash or kill loses only the job in flight and never leaves half of one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lifebench.backbones import load_backbone
from lifebench.errors import DataError
from lifebench.features import Embeddings, embed, resolve_device
from lifebench.protocols import fit_info, make_protocol, top_k
from lifebench.runner.plan import Job
from lifebench.store import Experiment, Predictions, Store
from lifebench.store.provenance import collect as collect_provenance

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


@dataclass
class JobResult:
    job: Job
    status: str
    """"done" (ran now) or "skipped" (already in the store). A job that fails raises, stopping the run."""
    experiment_id: int | None = None
    n_encoded: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    fit_info: dict = field(default_factory=dict)


def _device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return f"{device} {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    import platform

    return f"cpu {platform.processor() or platform.machine()}"


def plan_status(jobs: list[Job], store: Store, force: bool = False) -> list[tuple[Job, str]]:
    """Each job with what a run would do: "run", "rerun (--force)" or "skip: done (experiment N)"."""
    out = []
    for job in jobs:
        exp = store.get(job.config_hash)
        if exp is None:
            out.append((job, "run"))
        elif force:
            out.append((job, f"rerun (--force; replaces experiment {exp.id})"))
        else:
            out.append((job, f"skip: done (experiment {exp.id})"))
    return out


def run_jobs(jobs: list[Job], store: Store, options: RunOptions) -> list[JobResult]:
    """Run ``jobs`` (grouped by backbone) and write each result to ``store``; returns one result per job."""
    results: list[JobResult] = []
    device = resolve_device(options.device)
    provenance = collect_provenance(device=_device_name(device))
    by_backbone: dict[str, list[Job]] = {}
    for job in jobs:
        by_backbone.setdefault(job.backbone, []).append(job)
    for backbone_id, group in by_backbone.items():
        todo = []
        for j in group:
            done = None if options.force else store.get(j.config_hash)
            if done is None:
                todo.append(j)
            else:
                log.info("skip (already in the store): %s", j.label())
                results.append(JobResult(j, "skipped", experiment_id=done.id))
        if not todo:
            continue
        t0 = time.perf_counter()
        backbone = load_backbone(backbone_id)
        load_s = time.perf_counter() - t0
        log.info("loaded %s in %.1f s", backbone.id, load_s)
        embeddings: dict[str, Embeddings] = {}
        for job in todo:
            key = job.task.manifest_hash()
            first_use = key not in embeddings
            if first_use:
                embeddings[key] = embed(
                    backbone, job.task.examples, cache_dir=options.cache_dir, device=device,
                    batch_size=options.batch_size, num_workers=options.num_workers,
                    skip_bad_images=options.skip_bad_images, show_progress=options.show_progress,
                )
            emb = embeddings[key]
            timings = {"load_backbone": load_s if first_use else 0.0,
                       "embed": emb.seconds if first_use else 0.0}
            results.append(_run_one(job, emb, store, options, device, timings, first_use, provenance,
                                    backbone.fingerprint))
    return results


def _fit_predict(job: Job, emb: Embeddings, train: np.ndarray, test: np.ndarray, device, timings: dict):
    """Fit the job's protocol on ``train`` rows and score ``test`` rows; returns ranked codes, confidences, info."""
    task = job.task
    y_train = task.encode(task.examples.labels[train])
    est = make_protocol(job.protocol, **job.param_dict, random_state=job.seed, device=str(device))
    t = time.perf_counter()
    est.fit(emb.vectors[train], y_train)
    timings["fit"] = timings.get("fit", 0.0) + time.perf_counter() - t
    t = time.perf_counter()
    X = emb.vectors[test]
    scores = np.asarray(est.decision_function(X), dtype=np.float64)
    if scores.ndim == 1:  # a binary decision function scores the positive class
        scores = np.stack([-scores, scores], axis=1)
    classes = np.asarray(est.classes_)
    # Rank by score, but the first choice is always the estimator's own prediction (its tie-breaking rule).
    predicted = np.searchsorted(classes, est.predict(X))
    bumped = scores.copy()
    bumped[np.arange(len(test)), predicted] = np.inf
    order = top_k(bumped, min(TOPK, scores.shape[1]))
    confidence = est.predict_proba(X) if hasattr(est, "predict_proba") else scores
    conf = np.asarray(confidence, dtype=np.float64)[np.arange(len(test)), predicted]
    timings["predict"] = timings.get("predict", 0.0) + time.perf_counter() - t
    return classes[order], conf, {**fit_info(est), "n_train": int(len(train))}


def _run_one(job: Job, emb: Embeddings, store: Store, options: RunOptions, device, timings: dict,
             first_use: bool, provenance: dict, fingerprint: str) -> JobResult:
    task = job.task
    labels = task.examples.labels
    names = np.array(task.classes, dtype=object)
    parts, infos = [], []
    for train_all, test_all in task.evaluation_splits():
        train = train_all[emb.ok[train_all]]
        test = test_all[emb.ok[test_all]]
        if len(np.unique(labels[train])) < 2:
            raise DataError(f"task {task.name!r} has fewer than 2 classes with readable training images")
        if len(test) == 0:
            continue
        ranked, conf, info = _fit_predict(job, emb, train, test, device, timings)
        parts.append((test, ranked, conf))
        infos.append(info)
    if not parts:
        raise DataError(f"task {task.name!r} has no readable test images")
    test = np.concatenate([p[0] for p in parts])
    width = min(TOPK, len(task.classes))
    # a probe that saw fewer classes than the task ranks fewer: pad with "" (no prediction), never a class
    topk = np.concatenate([np.pad(names[p[1][:, :width]].astype(str), ((0, 0), (0, max(0, width - p[1].shape[1]))),
                                  constant_values="") for p in parts])
    conf = np.concatenate([p[2] for p in parts])
    info = infos[0] if len(infos) == 1 else {"folds": infos}
    n_train = int(round(np.mean([i["n_train"] for i in infos])))
    n_bad = int((~emb.ok).sum())
    exp = Experiment(
        id=None,
        config_hash=job.config_hash,
        task=task.name,
        backbone=job.backbone,
        protocol=job.protocol,
        metric=task.metric,
        n_train=n_train,
        seed=job.seed,
        config=job.config(),
        classes=list(task.classes),
        fit_info={**info, "n_bad_images": n_bad, "embedding_key": emb.key, "embedding_dim": int(emb.vectors.shape[1]),
                  "weights_fingerprint": fingerprint},
        provenance=provenance,
        timings=timings,
        created_at=time.time(),
    )
    preds = Predictions(
        ids=task.examples.ids[test].astype(str),
        y_true=labels[test].astype(str),
        y_pred=topk[:, 0],
        score=conf,
        topk=topk,
    )
    exp_id = store.write(exp, preds, replace=options.force)
    log.info("done: %s (fit %.2f s)", job.label(), timings["fit"])
    return JobResult(job, "done", experiment_id=exp_id, n_encoded=emb.n_encoded if first_use else 0,
                     timings=timings, fit_info=exp.fit_info)
