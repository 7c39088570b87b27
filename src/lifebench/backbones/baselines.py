"""Baselines that need no download: ``pixels`` (raw thumbnails) and ``random-vit`` (random-init ViT).

They answer "does the model beat no model at all?" and "is the pretraining worth anything?".
"""

from __future__ import annotations

import torch

from lifebench.backbones import BackboneId
from lifebench.backbones.base import Backbone, Preprocess
from lifebench.backbones.timm_backbone import TimmBackbone, build_timm

__all__ = ["PIXELS_SIZE", "RANDOM_VIT_ARCH", "PixelsBackbone", "load_pixels", "load_random_vit"]

PIXELS_SIZE = 32
"""Side of the thumbnail: shortest side resized to 32 (bilinear, antialiased), centre crop 32x32."""

RANDOM_VIT_ARCH = "vit_small_patch16_224"


class PixelsBackbone(Backbone):
    """Raw RGB values in [0, 1] of a 32x32 centre crop, flattened to 3 * 32 * 32 = 3072 numbers.

    There are no weights; ``module`` is a parameter-free ``Flatten`` so the fingerprint is still defined.
    """

    family = "baseline"
    pooling = "flatten"

    def __init__(self, *, id: str = "pixels") -> None:  # noqa: A002
        self.id = id
        self.module = torch.nn.Flatten(start_dim=1).eval()
        self.preprocess = Preprocess(crop=PIXELS_SIZE, resize=PIXELS_SIZE, mean=(0.0, 0.0, 0.0),
                                     std=(1.0, 1.0, 1.0), interpolation="bilinear")
        self.embed_dim = 3 * PIXELS_SIZE * PIXELS_SIZE

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if tuple(pixels.shape[1:]) != (3, PIXELS_SIZE, PIXELS_SIZE):
            raise ValueError(f"pixels backbone expects (B, 3, {PIXELS_SIZE}, {PIXELS_SIZE}) input, "
                             f"got {tuple(pixels.shape)}; preprocess images with its .preprocess")
        with torch.inference_mode():
            return self.module(pixels).float()


def load_pixels(parsed: BackboneId, *, seed: int, id: str) -> PixelsBackbone:  # noqa: A002
    """Registry loader for ``pixels``."""
    return PixelsBackbone(id=id)


def load_random_vit(parsed: BackboneId, *, seed: int, id: str) -> TimmBackbone:  # noqa: A002
    """Registry loader for ``random-vit``: timm ViT-S/16 initialised under ``torch.manual_seed(seed)``."""
    return build_timm(RANDOM_VIT_ARCH, "random", seed=seed, id=id, family="baseline")
