"""open_clip backbones (CLIP, SigLIP, BioCLIP): image and text towers in one embedding space.

Ids: ``open_clip:<ARCH>/<TAG>``, ``open_clip:hf-hub:<org>/<name>``, ``open_clip:local-dir:<dir>``,
``open_clip:<ARCH>@random[:<seed>]`` and ``open_clip:<ARCH>@<checkpoint>``. Image features are
``model.encode_image`` (the projected, unnormalised embedding); text features ``model.encode_text`` of
open_clip's tokenizer for the model. The eval transform comes from the model's preprocess config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lifebench.backbones import (
    BackboneId,
    freeze,
    import_optional,
    infer_embed_dim,
    is_weights_error,
    seeded,
    short_error,
    unreadable_checkpoint,
)
from lifebench.backbones.base import Backbone, Preprocess
from lifebench.errors import ConfigError, UnknownNameError

__all__ = ["OpenClipBackbone", "load", "preprocess_from_open_clip"]

log = logging.getLogger(__name__)

_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


class OpenClipBackbone(Backbone):
    """An open_clip model; ``encode_images`` and ``encode_text`` give projected embeddings."""

    family = "open_clip"
    pooling = "open_clip:encode_image"
    supports_text = True

    def __init__(self, model: torch.nn.Module, *, id: str, tokenizer_name: str, preprocess: Preprocess) -> None:  # noqa: A002
        self.module = freeze(model)
        self.id = id
        self.preprocess = preprocess
        self._tokenizer_name = tokenizer_name
        self._tokenizer: Any = None
        dim = getattr(getattr(model, "visual", None), "output_dim", None)
        self.embed_dim = int(dim) if dim else infer_embed_dim(self.encode_images, preprocess.crop)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module.encode_image(pixels, normalize=False).float()

    @property
    def tokenizer(self) -> Any:
        """open_clip's tokenizer for this model (built on first use)."""
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self._tokenizer_name)
        return self._tokenizer

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            return self.module.encode_text(tokens, normalize=False).float()


def preprocess_from_open_clip(cfg: Mapping[str, Any]) -> Preprocess:
    """Map an open_clip preprocess config (``size, mean, std, interpolation, resize_mode``) to a Preprocess.

    open_clip's eval transform resizes the shortest side to ``size`` and centre-crops ``size``
    (``"shortest"``), or resizes both sides to ``size`` (``"squash"``).
    """
    size = cfg.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h != w:
        raise ConfigError(f"open_clip image size {size} is not square; only square inputs are supported")
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ConfigError(f"open_clip resize_mode {mode!r} is not supported; supported: shortest, squash")
    try:
        return Preprocess(crop=int(h), resize=int(h), mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
                          std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
                          interpolation=cfg.get("interpolation", "bicubic"), resize_mode=mode)
    except ValueError as err:
        raise ConfigError(f"open_clip preprocess config {dict(cfg)} cannot be used: {err}") from err


def _tag_preprocess(open_clip: Any, arch: str) -> dict[str, Any]:
    """The preprocessing shared by all of ``arch``'s pretrained tags, if they agree (else {})."""
    cfgs = {tuple((k, repr(open_clip.get_pretrained_cfg(arch, t).get(k))) for k in _PREPROCESS_KEYS)
            for t in open_clip.list_pretrained_tags_by_model(arch)}
    if len(cfgs) != 1:
        return {}
    cfg = open_clip.get_pretrained_cfg(arch, open_clip.list_pretrained_tags_by_model(arch)[0])
    return {k: cfg[k] for k in _PREPROCESS_KEYS if cfg.get(k) is not None}


def _from_checkpoint(open_clip: Any, arch: str, path: str, pp: dict[str, Any]) -> torch.nn.Module:
    try:
        return open_clip.create_model_from_pretrained(
            arch, pretrained=path, return_transform=False, image_mean=pp.get("mean"), image_std=pp.get("std"),
            image_interpolation=pp.get("interpolation"), image_resize_mode=pp.get("resize_mode"))
    except Exception as err:
        if isinstance(err, RuntimeError) and "state_dict" in str(err):  # a state dict of another architecture
            raise ConfigError(f"checkpoint {path} does not fit open_clip architecture {arch!r}: {short_error(err)}; "
                              "check the architecture name") from err
        raise unreadable_checkpoint(path, err) from err  # not a checkpoint at all (unpickling, zip, end of file)


_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pth")  # what open_clip looks for in a local-dir folder


def _from_named(open_clip: Any, name: str) -> torch.nn.Module:
    """An ``hf-hub:`` or ``local-dir:`` model. A folder without weights is refused: open_clip would only log a
    warning and return random weights, which would be scored as if they were the model."""
    folder = name.removeprefix("local-dir:")
    local = name.startswith("local-dir:")
    if local and not any(p for pattern in _WEIGHT_PATTERNS for p in Path(folder).glob(pattern)):
        raise ConfigError(f"{folder} holds no weights file ({', '.join(_WEIGHT_PATTERNS)}); put the model's weights "
                          "beside its open_clip_config.json")
    try:
        return open_clip.create_model_from_pretrained(name, return_transform=False)
    except Exception as err:
        if is_weights_error(err):
            raise unreadable_checkpoint(folder, err) from err
        if local and isinstance(err, ValueError | RuntimeError | KeyError | TypeError):
            raise ConfigError(f"cannot load the open_clip model in {folder}: {short_error(err)}; the folder needs a "
                              "valid open_clip_config.json (model_cfg, preprocess_cfg) and that model's weights"
                              ) from err
        raise


def load(parsed: BackboneId, *, seed: int, id: str) -> OpenClipBackbone:  # noqa: A002
    """Registry loader for ``open_clip:`` ids."""
    open_clip = import_optional("open_clip", package="open_clip_torch", extra="openclip", purpose=f"backbone {id!r}")
    name, weights = parsed.name, parsed.weights
    if name.startswith(("hf-hub:", "local-dir:")):
        model = _from_named(open_clip, name)
    else:
        if name not in open_clip.list_models():
            raise UnknownNameError("open_clip architecture", name, open_clip.list_models(),
                                   hint="see open_clip.list_models()")
        if parsed.is_random or weights.startswith("/"):
            # open_clip keeps mean/std on the tag; a random or local model takes its arch's tags' values.
            pp = _tag_preprocess(open_clip, name)
            if not pp and open_clip.list_pretrained_tags_by_model(name):
                log.warning("the pretrained tags of %s disagree on preprocessing; %s uses open_clip's defaults",
                            name, id)
            if parsed.is_random:
                with seeded(seed):
                    model = open_clip.create_model(name, pretrained=None, pretrained_text=False,
                                                   force_preprocess_cfg=pp)
            else:
                model = _from_checkpoint(open_clip, name, weights, pp)
        else:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if weights not in tags:
                raise UnknownNameError(f"open_clip pretrained tag for {name}", weights, tags,
                                       hint="see open_clip.list_pretrained()")
            model = open_clip.create_model_from_pretrained(name, pretrained=weights, return_transform=False)
    preprocess = preprocess_from_open_clip(open_clip.get_model_preprocess_cfg(model))
    return OpenClipBackbone(model, id=id, tokenizer_name=name, preprocess=preprocess)
