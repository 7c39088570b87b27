"""Hugging Face transformers backbones: ``hf:<repo id or local dir>`` (DINOv2, CLIP, SigLIP, ViT, ...).

The model is ``AutoModel.from_pretrained``; the eval transform is read from the checkpoint's image
processor config (``AutoImageProcessor``). Pooling, decided once at load time:

* CLIP/SigLIP-style models (``get_image_features`` and ``get_text_features``): the projected image
  embedding, plus ``encode_text`` through the checkpoint's tokenizer;
* otherwise ``pooler_output`` when the model has a pooler whose weights are in the checkpoint (DINOv2:
  the final-layer-norm CLS token);
* else the CLS token of ``last_hidden_state`` (or the spatial mean for a convolutional feature map).

Centre-crop rounding: :class:`~lifebench.backbones.base.Preprocess` puts the crop window at
``round((h - crop) / 2)`` like torchvision (and the DINOv2 reference eval transform), whereas HF image
processors use ``(h - crop) // 2``; when the margin is odd the two crops can sit one pixel apart.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lifebench.backbones import (
    BackboneId,
    freeze,
    import_optional,
    infer_embed_dim,
    is_weights_error,
    short_error,
    unreadable_checkpoint,
)
from lifebench.backbones.base import Backbone, Preprocess
from lifebench.errors import ConfigError

__all__ = ["HFBackbone", "load", "preprocess_from_image_processor"]

log = logging.getLogger(__name__)

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values
_SIGLIP_TYPES = ("siglip",)


class HFBackbone(Backbone):
    """A transformers vision model (or the image tower of an image+text model)."""

    family = "hf"

    def __init__(self, model: torch.nn.Module, *, id: str, source: str, preprocess: Preprocess,  # noqa: A002
                 pooling: str, embed_dim: int | None = None) -> None:
        self.module = freeze(model)
        self.id = id
        self.preprocess = preprocess
        self.pooling = pooling
        self.supports_text = pooling == "hf:image_features"
        self._source = source
        self._tokenizer: Any = None
        self.embed_dim = embed_dim or infer_embed_dim(self.encode_images, preprocess.crop)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.pooling == "hf:image_features":
                return _features(self.module.get_image_features(pixel_values=pixels)).float()
            out = self.module(pixel_values=pixels)
            if self.pooling == "hf:pooler_output":
                return out.pooler_output.flatten(1).float()
            hidden = out.last_hidden_state
            if self.pooling == "hf:cls":
                return hidden[:, 0].float()
            return hidden.mean(dim=(2, 3)).float()  # "hf:spatial_mean"

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (built on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._source, **_local_kwargs(self._source))
        return self._tokenizer

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if not self.supports_text:
            return super().encode_text(texts)
        # SigLIP was trained on text padded to the full context length, CLIP on unpadded text.
        siglip = getattr(self.module.config, "model_type", "") in _SIGLIP_TYPES
        tok = self.tokenizer(list(texts), padding="max_length" if siglip else True, truncation=True,
                             return_tensors="pt")
        inputs = {k: tok[k].to(self.device) for k in ("input_ids", "attention_mask") if k in tok}
        with torch.inference_mode():
            return _features(self.module.get_text_features(**inputs)).float()


def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _local_kwargs(source: str) -> dict[str, Any]:
    return {"local_files_only": True} if Path(source).is_absolute() else {}


def _get(obj: Any, key: str, default: Any = None) -> Any:
    value = getattr(obj, key, default)
    return default if value is None else value


def preprocess_from_image_processor(proc: Any) -> Preprocess:
    """Map an HF image processor's config to the equivalent :class:`Preprocess`.

    Supported: ``size={"shortest_edge": s}`` with a square centre crop, or ``size={"height": s,
    "width": s}`` (a squash resize) with or without a centre crop; rescale by 1/255; any mean/std.
    """
    name = type(proc).__name__
    if not _get(proc, "do_resize", True):
        raise ConfigError(f"{name} does not resize images; only fixed-size image processors are supported")
    size = _get(proc, "size")
    size = dict(size) if size is not None and not isinstance(size, int) else {}
    size = {k: v for k, v in size.items() if v is not None}
    do_crop = bool(_get(proc, "do_center_crop", False))
    crop_size = dict(_get(proc, "crop_size", {}) or {})
    crop = None
    if do_crop:
        if crop_size.get("height") != crop_size.get("width") or not crop_size.get("height"):
            raise ConfigError(f"{name} crop_size {crop_size} is not square; only square inputs are supported")
        crop = int(crop_size["height"])
    if set(size) == {"shortest_edge"}:
        resize, mode = int(size["shortest_edge"]), "shortest"
        if crop is None:
            raise ConfigError(f"{name} resizes the shortest edge without a centre crop, so outputs are not "
                              "square; this is not supported")
    elif set(size) == {"height", "width"} and size["height"] == size["width"]:
        resize, mode = int(size["height"]), "squash"
    else:
        raise ConfigError(f"{name} size {size} is not supported; expected shortest_edge or equal height/width")
    resample = int(_get(proc, "resample", 3))
    if resample not in _RESAMPLE:
        raise ConfigError(f"{name} resample={resample} is not supported; supported: {sorted(_RESAMPLE)}")
    if _get(proc, "do_rescale", True) and abs(float(_get(proc, "rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise ConfigError(f"{name} rescale_factor {proc.rescale_factor} is not 1/255; not supported")
    if _get(proc, "do_normalize", True):
        mean = tuple(float(v) for v in proc.image_mean)
        std = tuple(float(v) for v in proc.image_std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    try:
        return Preprocess(crop=crop or resize, resize=resize, mean=mean, std=std,  # type: ignore[arg-type]
                          interpolation=_RESAMPLE[resample], resize_mode=mode)
    except ValueError as err:
        raise ConfigError(f"{name} config cannot be used: {err}") from err


def load(parsed: BackboneId, *, seed: int, id: str) -> HFBackbone:  # noqa: A002
    """Registry loader for ``hf:`` ids."""
    transformers = import_optional("transformers", package="transformers", extra="hf", purpose=f"backbone {id!r}")
    source = parsed.name
    kwargs = _local_kwargs(source)
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(source, **kwargs)
        model, info = transformers.AutoModel.from_pretrained(source, output_loading_info=True, **kwargs)
    except OSError as err:
        if not kwargs:
            raise
        raise ConfigError(f"cannot load a transformers model from {source}: {short_error(err)}; the folder needs "
                          "config.json, weights and preprocessor_config.json (save_pretrained writes them)") from err
    except Exception as err:
        if is_weights_error(err):
            raise unreadable_checkpoint(source, err) from err
        if kwargs and isinstance(err, ValueError | EOFError | RuntimeError):  # a local folder's files (bad JSON...)
            raise ConfigError(f"cannot load a transformers model from {source}: {short_error(err)}; the folder "
                              "needs valid config.json, weights and preprocessor_config.json (save_pretrained "
                              "writes them)") from err
        raise
    model = model.float()
    if getattr(model.config, "model_type", "") == "siglip2":
        raise ConfigError(f"{source} is a NaFlex SigLIP2 model (variable resolution), which is not supported; "
                          "use a fixed-resolution checkpoint or open_clip:ViT-B-16-SigLIP2/webli")
    preprocess = preprocess_from_image_processor(processor)
    missing = list(info.get("missing_keys", []))
    missing_pooler = [k for k in missing if ".pooler." in f".{k}"]
    others = [k for k in missing if k not in missing_pooler]
    if others:
        raise ConfigError(f"checkpoint {source} lacks weights for {len(others)} tensors (e.g. {others[:3]}), "
                          "which would stay random; load the matching model class's checkpoint")
    pooling, dim = _choose_pooling(model, preprocess.crop, pooler_missing=bool(missing_pooler))
    log.info("hf backbone %s: %s, pooling %s", source, type(model).__name__, pooling)
    return HFBackbone(model, id=id, source=source, preprocess=preprocess, pooling=pooling, embed_dim=dim)


def _choose_pooling(model: torch.nn.Module, size: int, *, pooler_missing: bool) -> tuple[str, int | None]:
    """The pooling rule for this model, and its width when the probing forward pass shows it."""
    if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
        return "hf:image_features", None
    model.eval()
    with torch.inference_mode():
        out = model(pixel_values=torch.zeros(1, 3, size, size))
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None and not pooler_missing:
        return "hf:pooler_output", int(pooled.flatten(1).shape[1])
    hidden = out.last_hidden_state
    if hidden.ndim == 4:  # a convolutional feature map (B, C, H, W)
        return "hf:spatial_mean", int(hidden.shape[1])
    return "hf:cls", int(hidden.shape[-1])
