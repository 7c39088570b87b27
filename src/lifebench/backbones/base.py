"""The backbone contract: a frozen image encoder with its own eval preprocessing and a stable identity.

A backbone never trains and never sees a dataloader. ``lifebench.features`` feeds it batches of images that
were preprocessed with :meth:`Backbone.preprocess`, and it returns one pooled vector per image.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "Backbone", "Preprocess",
           "fingerprint_module"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Geometry:
    """Where a :class:`Preprocess` puts an image of a given size: resized to (new_w, new_h), then cropped at
    (left, top)."""

    new_w: int
    new_h: int
    left: int
    top: int


@dataclass(frozen=True)
class Preprocess:
    """An eval transform described as data: resize, centre crop, scale to [0, 1], normalise.

    This covers the eval transforms of timm, open_clip and Hugging Face image processors:

    * ``resize_mode="shortest"``: scale so the shorter side is ``resize`` (aspect kept), then centre-crop
      ``crop`` x ``crop`` (timm's ``crop_pct`` gives ``resize = floor(crop / crop_pct)``);
    * ``resize_mode="squash"``: resize to ``resize`` x ``resize`` ignoring aspect, then centre-crop.

    Being data, it goes into the embedding cache key, and the same description can drive a batched GPU
    implementation later. PIL does the resizing, so the output equals torchvision's on PIL images.
    """

    crop: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_FILTERS:
            raise ValueError(f"interpolation {self.interpolation!r} not in {sorted(_PIL_FILTERS)}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode {self.resize_mode!r} not in ['shortest', 'squash']")
        if self.resize < self.crop:
            raise ValueError(f"resize {self.resize} is smaller than crop {self.crop}")

    def to_dict(self) -> dict:
        return asdict(self)

    def geometry(self, width: int, height: int) -> Geometry:
        """The resize target and crop offsets for a ``width`` x ``height`` image: the one definition that the PIL
        path (:meth:`__call__`) and the batched data paths (:mod:`lifebench.features.datapath`) both use."""
        if self.resize_mode == "shortest":
            if width <= height:
                new_w, new_h = self.resize, max(1, int(self.resize * height / width))
            else:
                new_w, new_h = max(1, int(self.resize * width / height)), self.resize
        else:
            new_w = new_h = self.resize
        # Centre crop with torchvision's rounding: top = round((h - crop) / 2).
        return Geometry(new_w=new_w, new_h=new_h, left=int(round((new_w - self.crop) / 2.0)),
                        top=int(round((new_h - self.crop) / 2.0)))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Transform one RGB PIL image into a normalised float tensor of shape (3, crop, crop)."""
        if img.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {img.mode!r}")
        geo = self.geometry(*img.size)
        if (geo.new_w, geo.new_h) != img.size:
            img = img.resize((geo.new_w, geo.new_h), self.resample)
        return self.to_tensor(img.crop((geo.left, geo.top, geo.left + self.crop, geo.top + self.crop)))

    @property
    def resample(self) -> Image.Resampling:
        """PIL's filter for :attr:`interpolation`."""
        return _PIL_FILTERS[self.interpolation]

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        """Scale an already resized and cropped RGB image to [0, 1] and normalise it: the last step of
        :meth:`__call__`, shared with the data paths that resize and crop by other means."""
        arr = np.asarray(img, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x - mean) / std


def fingerprint_module(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes): changes iff the weights do."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(json.dumps(list(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class Backbone(ABC):
    """A frozen image encoder.

    Subclasses set ``id`` (stable, the key in the store and the cache), ``family``, ``embed_dim`` and
    ``preprocess``, hold their ``torch.nn.Module`` in ``module`` (already in ``eval()`` mode), and
    implement :meth:`encode_images`. Those with a text tower set ``supports_text = True`` and implement
    :meth:`encode_text`.
    """

    id: str
    family: str
    embed_dim: int
    preprocess: Preprocess
    module: torch.nn.Module
    supports_text: bool = False

    _fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """Hash of the weights; computed once, on first use."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_module(self.module)
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def logit_scale(self) -> float | None:
        """The model's learned zero-shot logit scale, ``module.logit_scale.exp()`` (about 100 for CLIP and BioCLIP),
        which BioCLIP's and wise-ft's zero-shot heads multiply the cosine similarities by: open_clip models and
        Hugging Face CLIP/SigLIP keep it as a log-space parameter. None when the model has no text tower or no such
        parameter. Read at use, so a scale set on the module after loading counts."""
        param = getattr(self.module, "logit_scale", None) if self.supports_text else None
        if not isinstance(param, torch.Tensor) or param.numel() != 1:
            return None
        return float(param.detach().float().exp().item())

    def to(self, device: str | torch.device) -> Backbone:
        self.module.to(device)
        return self

    def cache_identity(self) -> dict:
        """Everything about this backbone that changes its vectors; part of the embedding cache key."""
        return {
            "id": self.id,
            "weights": self.fingerprint,
            "preprocess": self.preprocess.to_dict(),
            "pooling": self.pooling,
        }

    pooling: str = "native"
    """How tokens or feature maps become one vector (for example "timm pre_logits" or "cls")."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map a batch (B, 3, H, W) of preprocessed images to pooled embeddings (B, D).

        Called under ``torch.inference_mode()`` with the module in ``eval()`` mode.
        """

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Map strings to text embeddings (T, D) in the image embedding space (text towers only)."""
        raise NotImplementedError(f"backbone {self.id!r} has no text tower")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, embed_dim={self.embed_dim})"
