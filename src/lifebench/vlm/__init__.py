"""Vision-language evaluation of multiple-choice tasks (the microscopy suite, μ-Bench).

* Contrastive models (open_clip, CLIP, BiomedCLIP): protocol ``zero-shot`` picks, per question, the option whose
  caption is most similar to the image (:func:`~lifebench.protocols.zeroshot.zero_shot_choices`; the runner calls it when a
  task has ``questions``).
* Generative models answer the lettered question in text (:mod:`lifebench.vlm.run`), behind one small interface
  (:class:`~lifebench.vlm.base.GenerativeBackbone`) with two back-ends: ``openai-compatible:<model>`` (any
  OpenAI-compatible chat endpoint, :mod:`lifebench.vlm.openai`) and ``hf-vlm:<repo or folder>`` (a local Hugging
  Face model, :mod:`lifebench.vlm.hf`). Replies are parsed by :func:`~lifebench.vlm.choice.parse_answer` and
  scored ``strict`` or as μ-Bench's ``check_prediction`` (``evllm``, :func:`~lifebench.vlm.choice.score_reply`).

Importing this package imports neither transformers nor any HTTP client, and contacts nothing.
"""

from lifebench.vlm.base import GenerativeBackbone, Reply, Request, ResponseCache, Tally
from lifebench.vlm.choice import INSTRUCTION, LETTERS, build_prompt, evllm_correct, parse_answer, score_reply

__all__ = ["INSTRUCTION", "LETTERS", "GenerativeBackbone", "Reply", "Request", "ResponseCache", "Tally",
           "build_prompt", "evllm_correct", "parse_answer", "score_reply"]
