"""Expand what was asked (models x tasks x protocols x seeds) into jobs, each with a config hash.

The hash covers everything that determines a job's predictions: the task's data (manifest, split and
class list), the backbone's canonical id (plus size and modification time of a local checkpoint), the
protocol and its parameters, a generative model's decoding settings, the seed and the lifebench version's
result format. Equal hash = same
experiment, so the store can skip it (done) or refuse a duplicate.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from lifebench.errors import ConfigError
from lifebench.tasks.base import Task

__all__ = ["RESULT_FORMAT", "Job", "expand"]

RESULT_FORMAT = 2
"""Bump when a change to lifebench changes predictions for the same inputs, so old results are redone."""

SETTING_DEFAULTS: dict[str, Any] = {"decode": "lifebench", "answer_scoring": "strict"}
_DECODE_NAMES = {"auto": "lifebench", "pil": "full"}
"""Data-path names of the user-facing decodings (:data:`lifebench.features.datapath.DECODINGS`): one name, one hash."""


@dataclass(frozen=True)
class Job:
    """One experiment: one backbone, one task, one protocol with its parameters, one seed."""

    task: Task = field(compare=False, repr=False)
    backbone: str
    protocol: str
    params: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    task_name: str = ""
    settings: tuple[tuple[str, Any], ...] = ()
    """Run settings that change predictions without being protocol parameters: ``decode`` (how images become
    pixels, :data:`lifebench.features.datapath.DECODINGS`) and ``answer_scoring`` (how a generative reply is scored)."""

    def setting(self, name: str) -> Any:
        """A run setting of this job (:attr:`settings`), or its default: ``decode`` "lifebench", ``answer_scoring``
        "strict"."""
        return dict(self.settings).get(name, SETTING_DEFAULTS[name])

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def config(self) -> dict[str, Any]:
        """The JSON-able configuration stored with the experiment."""
        config = {
            "task": self.task.name,
            "task_manifest": self.task.manifest_hash(),
            "task_source": self.task.source,
            "split": self.task.split_source,
            "metric": self.task.metric,
            "backbone": self.backbone,
            "backbone_file": _file_signature(self.backbone),
            "templates_sha256": _templates_digest(self.param_dict.get("templates")),
            "protocol": self.protocol,
            "params": self.param_dict,
            "seed": self.seed,
            "result_format": RESULT_FORMAT,
        }
        if generation := _decoding(self.backbone, self.setting("answer_scoring")):
            config["generation"] = generation  # a generative model reads the image file itself: no decode setting
        elif self.setting("decode") != SETTING_DEFAULTS["decode"]:
            config["decode"] = self.setting("decode")  # absent for the default, so earlier results keep their hash
        if self.task.taxonomy:
            config["taxonomy"] = {c: dict(t) for c, t in self.task.taxonomy.items()}
        return config

    @functools.cached_property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True, default=str).encode()).hexdigest()[:24]

    def label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.task.name} | {self.backbone} | {self.protocol}{f'({params})' if params else ''} | seed {self.seed}"


def _decoding(backbone_id: str, answer_scoring: str = "strict") -> dict | None:
    """A generative model's decoding and scoring settings (reply length, prompt, answer scoring), which decide its
    scored answers; None otherwise."""
    from lifebench.backbones import parse_backbone_id
    from lifebench.vlm.choice import decoding_settings

    return decoding_settings(parse_backbone_id(backbone_id).family, answer_scoring)


def _templates_digest(templates: str | None) -> str | None:
    """SHA-256 of a zero-shot templates file, so editing the file invalidates results made with it."""
    if not templates or not os.path.isfile(templates):
        return None
    with open(templates, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _file_signature(backbone_id: str) -> str | None:
    """Size and mtime of a local checkpoint named in ``family:arch@/path``; None for hub or built-in ids."""
    _, _, weights = backbone_id.partition("@")
    if weights and os.path.exists(weights):
        st = os.stat(weights)
        return f"{st.st_size}:{st.st_mtime_ns}"
    return None


def expand(
    tasks: list[Task],
    backbones: list[str],
    protocols: list[str] | None = None,
    params: dict[str, Any] | None = None,
    seeds: list[int] | None = None,
    n_train: list[int] | None = None,
    shots: list[int] | None = None,
    protocol_params: dict[str, dict[str, Any]] | None = None,
    settings: dict[str, Any] | None = None,
    skipped: list[tuple[str, str]] | None = None,
    skippable: Collection[str] | None = None,
) -> list[Job]:
    """All combinations, grouped by backbone (so each model is loaded once), then task, protocol, seed.

    ``protocols`` None uses each task's own protocol. ``n_train`` lists training-set sizes for a
    sample-efficiency study: each job then trains on a class-balanced subsample drawn with its seed
    (:meth:`Task.with_n_train`); the task is named ``<task>@n<N>``. ``shots`` lists k for k-shot jobs: k
    support images per class drawn with the seed (the fold), the rest are queries (:meth:`Task.with_shots`);
    the task is named ``<task>@<k>shot``. ``protocol_params`` adds parameters to the jobs of one protocol
    only (e.g. ``{"zero-shot": {"text_type": "taxon_com"}}``). ``settings`` are the run settings every job gets
    (:attr:`Job.settings`, e.g. ``{"decode": "reference", "answer_scoring": "evllm"}``).

    A (task, k) that cannot be drawn (a class with too few images, e.g. Birds 525's five test images per class at
    k = 5), or a (task, N) that ``--n-train`` cannot serve (Beluga's leave-one-out, an N larger than the training
    set), raises :class:`ConfigError`, unless ``skipped`` is given and the task is in ``skippable`` (None: every
    task): then its jobs are left out and ``("<task>@<k>shot", reason)`` (or ``@n<N>``) is appended to ``skipped``
    once, so one unfit pair in a suite does not stop the rest of it.
    """
    if n_train and shots:
        raise ConfigError("--n-train and --shots exclude each other: give a training-set size or shots per class")
    items = tuple(sorted((params or {}).items()))
    variants: dict[tuple[int, int | None, int], Task | None] = {}
    unfit: dict[str, str] = {}

    def variant(t: Task, n: int | None, seed: int) -> Task | None:
        key = (id(t), n, seed)
        if key not in variants:
            try:
                variants[key] = t if n is None else t.with_shots(n, seed) if shots else t.with_n_train(n, seed)
            except ConfigError as e:
                if skipped is None or (skippable is not None and t.name not in skippable):
                    raise
                unfit.setdefault(f"{t.name}@{n}shot" if shots else f"{t.name}@n{n}", str(e))
                variants[key] = None
        return variants[key]

    run_settings = dict(settings or {})
    if "decode" in run_settings:
        run_settings["decode"] = _DECODE_NAMES.get(run_settings["decode"], run_settings["decode"])
    run_settings = tuple(sorted(run_settings.items()))
    jobs = []
    for b, t, s, n in itertools.product(backbones, tasks, seeds or [0], shots or n_train or [None]):
        task = variant(t, n, s)
        if task is None:
            continue
        for p in protocols or [t.protocol]:
            own = tuple(sorted({**dict(items), **(protocol_params or {}).get(p, {})}.items()))
            jobs.append(Job(task=task, backbone=b, protocol=p, params=own, seed=s, task_name=task.name,
                            settings=run_settings))
    if skipped is not None:
        skipped.extend(unfit.items())
    return jobs
