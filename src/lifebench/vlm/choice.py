"""Multiple-choice questions: the lettered prompt, parsing a model's answer, and contrastive choice.

* :func:`build_prompt` writes μ-Bench's generative prompt (eVLLM ``generative_inference.py``): ``"Answer with a
  single letter, no extra details."``, then ``"\\nQuestion:" + question + "\\n"`` and the options one per line,
  each prefixed ``"A) "``, ``"B) "``, ...
* :func:`parse_answer` reads the option a reply names: a letter (``"B"``, ``"B)"``, ``"(B) basophil"``,
  ``"b."``, ``"The answer is B"``, ``"**B**"``) or an option's text alone (``"basophil"``). A reply that names no
  option, or several (``"B or C"``, ``"Either A or D"``, ``"A, B"``, the option list echoed back), is *unparsed*
  (None): it is scored wrong and counted next to the accuracy. This is answer scoring ``strict``, the default.
* :func:`evllm_correct` is μ-Bench's own scoring, eVLLM's ``check_prediction`` (answer scoring ``evllm``, to
  reproduce the paper's numbers): a reply is correct when it contains the lettered gold option (``"B) basophil"``)
  or starts with the gold letter, so it credits hedges that start with the right letter. :func:`score_reply` applies
  either scoring to one reply.

The contrastive protocol (the option whose caption is most similar to the image) is
:func:`lifebench.protocols.zeroshot.zero_shot_choices`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from lifebench.config import env_number
from lifebench.errors import ConfigError, DataError

__all__ = ["ANSWER_SCORINGS", "INSTRUCTION", "LETTERS", "build_prompt", "decoding_settings", "evllm_correct",
           "max_tokens", "parse_answer", "score_reply"]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
INSTRUCTION = "Answer with a single letter, no extra details."
"""μ-Bench's instruction to generative models (eVLLM ``evaluate_dataset(prompt=...)``)."""

ANSWER_SCORINGS = ("strict", "evllm")
"""How a generative reply is scored: ``strict`` (:func:`parse_answer`; hedges are unparsed) or ``evllm`` (μ-Bench's
``check_prediction``, :func:`evllm_correct`)."""
PARSER_VERSION = 2
"""Bumped when :func:`parse_answer` reads replies differently (2: a reply naming several options is unparsed), so
experiments parsed by an older version are redone (their replies come from the response cache)."""

_MAX_TOKENS = {"openai-compatible": 64, "hf-vlm": 32}
"""Default reply length per generative back-end; ``$LIFEBENCH_VLM_MAX_TOKENS`` overrides both."""


def max_tokens(family: str) -> int:
    """The most tokens a ``family`` model may generate per reply."""
    return int(env_number("LIFEBENCH_VLM_MAX_TOKENS", _MAX_TOKENS[family], int, 1))


def decoding_settings(family: str, answer_scoring: str = "strict") -> dict | None:
    """What, besides the model and the questions, decides a generative model's scored answers (greedy decoding, the
    reply length, the prompt, how replies are scored): part of the experiment's configuration, so changing any of
    it reruns the experiment. None for a ``family`` that does not generate."""
    if family not in _MAX_TOKENS:
        return None
    check_scoring(answer_scoring)
    return {"max_tokens": max_tokens(family), "temperature": 0.0,
            "prompt_sha256": hashlib.sha256(build_prompt("{question}", ["{option}"]).encode()).hexdigest()[:16],
            "answer_scoring": answer_scoring, "parser": PARSER_VERSION}


def check_scoring(answer_scoring: str) -> str:
    """``answer_scoring`` if it is one of :data:`ANSWER_SCORINGS`; else a ConfigError naming the choices."""
    if answer_scoring not in ANSWER_SCORINGS:
        raise ConfigError(f"unknown answer scoring {answer_scoring!r}; use strict (a reply naming several options "
                          "is wrong) or evllm (μ-Bench's check_prediction, to reproduce the paper)")
    return answer_scoring


def build_prompt(question: str, options: Sequence[str]) -> str:
    """The μ-Bench prompt: instruction, ``Question:<text>`` and the lettered options, one per line."""
    if not options:
        raise DataError(f"the question {question[:80]!r} has no options; a multiple-choice question needs at least "
                        "one: fix or remove it")
    if len(options) > len(LETTERS):
        raise DataError(f"the question {question[:80]!r} has {len(options)} options; at most {len(LETTERS)} can be "
                        "lettered A-Z")
    lettered = "\n".join(f"{LETTERS[i]}) {option}" for i, option in enumerate(options))
    return f"{INSTRUCTION}\nQuestion:{question}\n{lettered}"


def _norm(text: str) -> str:
    """Lower case, every run of non-alphanumeric characters one space: compares option texts loosely."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


_DECORATION = re.compile(r"[*_`\"“”]+")
# A letter opening the reply: "B", "B)", "(B)", "[B]", "B.", "b:", "B -", optionally followed by more text.
_LEADING = re.compile(r"^[(\[]?([A-Za-z])(?:[)\].:,]|\s*$|\s+[-–—]\s)")
# "The answer is B", "Answer: (C)", "correct option is d.", "I choose B", "final answer - A"
_STATED = re.compile(r"\b(?i:answer|option|choice|choose|select|pick)\b(?:\s+(?i:is|would be|will be|=))?\s*[:\-–—]?\s*"
                     r"[(\[]?(?:([A-Z])(?![A-Za-z])|([a-z])(?=\s*(?:[)\].:,;!]|$)))")
_MARKED = re.compile(r"(?<![A-Za-z])([A-Z])\)")
_FINAL = re.compile(r"(?<![A-Za-z'’])([A-Z])[.!)\]]?\s*$")  # "... so it's C." ends on a lone capital letter


def _letter(ch: str, n: int) -> int | None:
    i = LETTERS.index(ch.upper())
    return i if i < n else None


# A capital letter standing alone ("B", "(B)", "B)", "B.", "B,"): an option's letter, unless it is the article
# "A" or the pronoun "I" opening a phrase ("A basophil", "I think"); "A or D", "A and B" still name A.
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'’&/-])([A-Z])(?![A-Za-z0-9'’&/-])")
_WORD_AFTER = re.compile(r"\s+([a-z]+)")
_CONNECTIVES = {"or", "and", "nor", "vs", "versus"}


def _pick(t: str, opts: list[str], n: int) -> int | None:
    """The option ``t`` names by the first rule that fires (see :func:`parse_answer`), not yet checked for others."""
    whole = _norm(t)
    if whole and opts.count(whole) == 1:
        return opts.index(whole)
    if m := _LEADING.match(t):
        return _letter(m.group(1), n)
    if (m := re.match(r"^([A-Z])\s+(.+)$", t)) and (i := _letter(m.group(1), n)) is not None and \
            _norm(m.group(2)).startswith(opts[i]) and opts[i]:
        return i
    stated = {_letter(a or b, n) for a, b in _STATED.findall(t)}
    if len(stated) == 1:
        return stated.pop()
    found = _texts_named(whole, opts)
    if len({opts[i] for i in found}) == 1:
        return found[0]
    marked = {_letter(ch, n) for ch in _MARKED.findall(t)}
    if len(marked) == 1:
        return marked.pop()
    if m := _FINAL.search(t):
        return _letter(m.group(1), n)
    return None


def _texts_named(whole: str, opts: list[str]) -> list[int]:
    """Options whose text occurs as whole words in the normalised reply ``whole``; an option whose text is part of
    another matched option's longer text does not count on its own ("microscopy" in "fluorescence microscopy")."""
    padded = f" {whole} "
    found = [i for i, o in enumerate(opts) if o and f" {o} " in padded]
    return [i for i in found if not any(j != i and opts[i] != opts[j] and f" {opts[i]} " in f" {opts[j]} "
                                        for j in found)]


def _letters_named(t: str, n: int) -> set[int]:
    """Options named by a standalone capital letter anywhere in ``t`` (within the ``n`` options)."""
    named = set()
    for m in _STANDALONE.finditer(t):
        ch = m.group(1)
        if ch in "AI" and (w := _WORD_AFTER.match(t, m.end())) and w.group(1) not in _CONNECTIVES:
            continue  # "A basophil", "I think": an article or a pronoun, not a letter
        if (i := _letter(ch, n)) is not None:
            named.add(i)
    return named


def parse_answer(text: str | None, options: Sequence[str]) -> int | None:
    """Index of the option that ``text`` names, or None when it names none, or several.

    The first rule that fires gives the pick: the reply is an option's text; it opens with a letter (``B``,
    ``B)``, ``(B) basophil``, ``b.``), or with a capital letter followed by that option's text (``B basophil``); it
    states a letter (``The answer is B``); it contains exactly one option's text (options contained in a longer
    matched option do not count); it marks exactly one letter as ``X)``; it ends on a lone capital letter. Letters
    beyond the options are not answers. Then the pick must be the only option the reply names: any other option
    named by a standalone capital letter (``"B or C"``, ``"A, B"``, an echoed option list) or by its text makes the
    reply unparsed, since a hedge is not an answer (docs/microscopy.md). The article "A" and the pronoun "I" before
    a word ("A basophil", "I think it's C") are not letters.
    """
    if text is None:
        return None
    n = len(options)
    t = _DECORATION.sub("", text).strip().strip("'‘’").strip()
    if not t or not n:
        return None
    opts = [_norm(o) for o in options]
    pick = _pick(t, opts, n)
    if pick is None:
        return None
    named = _letters_named(t, n) | {i for i in _texts_named(_norm(t), opts)}
    if any(opts[i] != opts[pick] for i in named):
        return None
    return pick


def evllm_correct(text: str | None, options: Sequence[str], answer: int) -> bool:
    """μ-Bench's scoring of a reply: eVLLM ``check_prediction`` (Ale9806/eVLLM@c6108d4,
    ``src/evlm/eval/eval_utils.py``), where the gold is the lettered option ``add_alphabet`` writes into the prompt
    (``"B) basophil"``) and the letter is the gold position's. Correct when that lettered option is a substring of
    the reply, or the reply's first character is the gold letter (case-sensitive, the reply as the model wrote it:
    ``"B or C"`` is correct for B, ``"basophil"`` alone is not). No reply (None) counts as an empty one."""
    reply = text or ""
    letter = LETTERS[answer]
    return f"{letter}) {options[answer]}" in reply or letter in reply[0:1]


def score_reply(text: str | None, options: Sequence[str], answer: int, scoring: str = "strict") -> tuple[int | None,
                                                                                                          bool]:
    """``(pick, correct)`` for one reply to a question whose gold option is ``answer``, under ``scoring``.

    ``pick`` is :func:`parse_answer`'s reading under both scorings (None: unparsed). ``correct`` is ``pick ==
    answer`` under ``strict`` and :func:`evllm_correct` under ``evllm``; the two differ on hedges and on an
    option's text given without its letter (see docs/microscopy.md)."""
    pick = parse_answer(text, options)
    if check_scoring(scoring) == "evllm":
        return pick, evllm_correct(text, options, answer)
    return pick, pick == answer
