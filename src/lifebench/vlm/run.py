"""The generative protocol: ask a VLM each multiple-choice question of a task and parse what it picked.

One request per test example: its image and the μ-Bench prompt (:func:`~lifebench.vlm.choice.build_prompt`). The
reply is parsed into an option (:func:`~lifebench.vlm.choice.parse_answer`); an unparsed reply becomes
``<unknown>`` (scored wrong) with the per-example column ``unparsed`` = 1, and is counted in the fit info
(``n_unparsed``, ``unparsed_rate``, a few of the replies) next to the request tally (requests sent and cached,
retries, tokens, cost).

:func:`answer_questions` returns the same per-unit record as the runner's other strategies, and the runner stores
it like any other experiment, so leaderboards, bootstrap intervals and paired comparisons with contrastive models
work unchanged. This module imports neither the runner nor the store: the dependency runs one way, runner -> vlm.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lifebench.tasks.base import UNKNOWN, Task
from lifebench.vlm.base import GenerativeBackbone, Request
from lifebench.vlm.choice import INSTRUCTION, build_prompt, score_reply

__all__ = ["answer_questions"]

log = logging.getLogger(__name__)

_SHOW = 5


def answer_questions(task: Task, backbone: GenerativeBackbone, *, cache_dir: Path | None = None,
                     endpoint: str | None = None, show_progress: bool = True,
                     answer_scoring: str = "strict") -> dict:
    """Answer every test question of ``task`` (a multiple-choice task) with ``backbone``.

    Returns the runner's per-unit record: ``ids``, ``y_true``, ``y_pred`` (the picked options, ``<unknown>`` where
    a reply names none), ``score`` None (a reply carries no confidence), ``topk`` (the pick alone), ``part`` and
    ``group`` None, ``extra`` {"unparsed": 0/1 per example}, ``info`` (request tally, unparsed replies, decoding
    settings, prompt, answer scoring). The caller has checked that the task has questions and moved the model to its
    device. ``answer_scoring`` is ``strict`` (:func:`~lifebench.vlm.choice.parse_answer`) or ``evllm`` (μ-Bench's
    ``check_prediction``, :func:`~lifebench.vlm.choice.evllm_correct`).
    """
    if task.questions is None:
        raise ValueError(f"task {task.name!r} has no multiple-choice questions to answer")
    rows = np.asarray(task.test_idx)
    questions = [task.questions[i] for i in rows.tolist()]
    requests = [Request(str(task.examples.paths[i]), build_prompt(q.text, q.options))
                for i, q in zip(rows.tolist(), questions, strict=True)]
    replies, tally = backbone.answer(requests, cache_dir=cache_dir, endpoint=endpoint, show_progress=show_progress)
    golds = task.examples.labels[rows].astype(str).tolist()
    scored = [score_reply(r.text, q.options, q.options.index(g), answer_scoring)
              for r, q, g in zip(replies, questions, golds, strict=True)]
    picks = [p for p, _ in scored]
    y_pred = np.array([_prediction(p, ok, q.options, g, answer_scoring)
                       for (p, ok), q, g in zip(scored, questions, golds, strict=True)], dtype=object).astype(str)
    # scored wrong for naming no option the scoring accepts: under evllm a credited hedge is not, an uncredited
    # "(B)" is, so the rate printed next to the accuracy describes the same predictions
    unparsed = (y_pred == UNKNOWN).astype(np.float64)
    n_bad = int(unparsed.sum())
    if n_bad:
        shown = "; ".join(repr((r.text or "")[:60]) for r, bad in zip(replies, unparsed, strict=True) if bad)
        log.warning("%s on %s: %d of %d replies name no option (counted wrong), e.g. %s", backbone.id, task.name,
                    n_bad, len(picks), shown[:300])
    log.info("%s on %s: %d requests sent, %d from the cache", backbone.id, task.name, tally.sent, tally.cached)
    info = {"n_train": 0, "n_questions": len(picks), "n_unparsed": n_bad,
            "unparsed_rate": n_bad / len(picks) if picks else 0.0,
            "unparsed_examples": [r.text for r, bad in zip(replies, unparsed, strict=True) if bad][:_SHOW],
            "requests": tally.as_dict(), "settings": backbone.settings(endpoint), "prompt": INSTRUCTION,
            "answer_scoring": answer_scoring,
            "n_scored_unlike_strict": sum(ok != (p is not None and q.options[p] == g)
                                          for (p, ok), q, g in zip(scored, questions, golds, strict=True))}
    return {"ids": task.examples.ids[rows].astype(str), "y_true": task.examples.labels[rows].astype(str),
            "y_pred": y_pred, "score": None, "topk": y_pred[:, None], "part": None, "group": None,
            "extra": {"unparsed": unparsed}, "info": info}


def _prediction(pick: int | None, correct: bool, options, gold: str, answer_scoring: str) -> str:
    """The stored prediction: under ``strict`` the option the reply names (``<unknown>`` if none); under ``evllm``
    the gold option when check_prediction credits the reply, else the named option if it is another one, else
    ``<unknown>``, so that accuracy over the stored predictions is the scoring's accuracy."""
    named = options[pick] if pick is not None else UNKNOWN
    if answer_scoring != "evllm":
        return named
    if correct:
        return gold
    return named if named != gold else UNKNOWN
