"""The three data paths: PIL-exact batched resizing, DCT-domain draft decoding, byte workers + batched JPEG
decoding, and the embed() machinery around them (cache key per path, padding for compile, batch-size memo)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from conftest import TinyBackbone, write_image
from lifebench import features
from lifebench.backbones.base import Backbone, Preprocess
from lifebench.errors import ConfigError
from lifebench.features import embed
from lifebench.features.datapath import (
    apply_orientation,
    decode_jpegs,
    default_workers,
    preprocess_file,
    preprocess_tensors,
    resize_crop_normalize,
    resolve_decode,
)
from lifebench.images import load_rgb, load_rgb_reduced
from lifebench.tasks.base import Examples

INTERPOLATIONS = ["nearest", "bilinear", "bicubic", "lanczos"]


def _chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients, a few shapes and mild noise: JPEG-friendly, and asymmetric so flips show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([255 * xx / w, 255 * yy / h, 128 + 100 * np.sin(xx / 37 + yy / 53)], axis=-1)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((w // 8, h // 6, w // 2, h // 2), fill=(230, 40, 40))
    draw.rectangle((w * 2 // 3, h // 2, w - 5, h - 5), fill=(20, 20, 200))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 4, (h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _save_jpeg(path, arr: np.ndarray, orientation: int = 1, **kw) -> str:
    img = Image.fromarray(arr)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(path, "JPEG", quality=90, exif=exif, **kw)
    return str(path)


# ------------------------------------------------------------------------- batched PIL-exact resampling


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_tensor_resize_equals_pil_preprocess_bit_for_bit(interpolation):
    rng = np.random.default_rng(hash(interpolation) % 1000)
    # wide, tall (Pillow 13 resizes those vertical pass first), upsampled, and not resized at all
    sizes = [(97, 61), (40, 230), (300, 64), (12, 9), (33, 33)]
    for k, (w, h) in enumerate(sizes):
        pre = Preprocess(crop=24, resize=24 + k * 3, interpolation=interpolation,
                         resize_mode="squash" if k % 2 else "shortest")
        arrs = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
        got = resize_crop_normalize(torch.stack([_chw(a) for a in arrs]), pre)
        want = torch.stack([pre(Image.fromarray(a)) for a in arrs])
        assert torch.equal(got, want), (interpolation, w, h)
    same = Preprocess(crop=16, resize=16, interpolation=interpolation)
    arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # no resize, no crop: scaling only
    assert torch.equal(resize_crop_normalize(_chw(arr)[None], same)[0], same(Image.fromarray(arr)))


def test_float32_resampling_is_within_one_level_of_pil():
    rng = np.random.default_rng(3)
    pre = Preprocess(crop=32, resize=36, interpolation="bicubic")
    arrs = rng.integers(0, 256, (4, 150, 110, 3), dtype=np.uint8)
    got = resize_crop_normalize(torch.stack([_chw(a) for a in arrs]), pre, dtype=torch.float32)
    want = torch.stack([pre(Image.fromarray(a)) for a in arrs])
    one_level = 1 / 255 / min(pre.std)
    diff = (got - want).abs()
    assert float(diff.max()) <= one_level + 1e-6
    assert float((diff > 0).float().mean()) < 0.01


def test_preprocess_tensors_mixes_sizes_and_gives_zero_rows_for_missing_images():
    rng = np.random.default_rng(4)
    pre = Preprocess(crop=20, resize=22, interpolation="bilinear")
    arrs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in [(50, 40), (31, 77), (50, 40)]]
    images = [_chw(arrs[0]), None, _chw(arrs[1]), _chw(arrs[2])]
    out = preprocess_tensors(images, pre, torch.device("cpu"))
    assert out.shape == (4, 3, 20, 20)
    assert torch.equal(out[1], torch.zeros(3, 20, 20))
    for row, arr in zip([0, 2, 3], arrs, strict=True):
        assert torch.equal(out[row], pre(Image.fromarray(arr)))


def test_geometry_puts_the_crop_where_the_pil_path_does():
    # A one-pixel marker survives a NEAREST resize; where it lands in Preprocess's output fixes the crop offset.
    for w, h, mode in [(200, 100, "shortest"), (75, 180, "shortest"), (90, 60, "squash")]:
        pre = Preprocess(crop=32, resize=45, interpolation="nearest", resize_mode=mode)
        geo = pre.geometry(w, h)
        arr = np.zeros((h, w, 3), dtype=np.uint8)
        # the source pixel that lands on output pixel (5, 7) of the crop, by PIL's nearest rule
        sx = int((geo.left + 7 + 0.5) * w / geo.new_w)
        sy = int((geo.top + 5 + 0.5) * h / geo.new_h)
        arr[sy, sx] = 255
        out = pre(Image.fromarray(arr))
        assert out.shape == (3, 32, 32)
        hits = torch.nonzero(out[0] > 0)
        assert [5, 7] in hits.tolist(), (w, h, mode)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pil_exif_transpose(tmp_path, orientation):
    arr = np.random.default_rng(orientation).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.png", exif=exif)
    want = np.asarray(load_rgb(tmp_path / "o.png"))
    got = apply_orientation(_chw(arr), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------- JPEG decoding


def test_batched_jpeg_decode_equals_pil_and_marks_the_bad_stream():
    streams, want = [], []
    for k, (w, h, sub) in enumerate([(64, 48, 0), (40, 70, 2), (33, 17, 1)]):
        buf = io.BytesIO()
        Image.fromarray(_photo(w, h, seed=k)).save(buf, "JPEG", quality=85, subsampling=sub)
        streams.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
        want.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    streams.insert(1, torch.frombuffer(bytearray(b"\xff\xd8\xff" + b"\x00" * 40 + b"\xff\xd9"), dtype=torch.uint8))
    got = decode_jpegs(streams, torch.device("cpu"))
    assert got[1] is None
    for img, ref in zip([got[0], got[2], got[3]], want, strict=True):
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), ref)


# ---------------------------------------------------------------------------------------- draft decode


def test_draft_takes_the_largest_reduction_that_still_covers_the_target(tmp_path):
    path = _save_jpeg(tmp_path / "big.jpg", _photo(1003, 757))
    pre = Preprocess(crop=64, resize=72, interpolation="bicubic")
    geo = pre.geometry(1003, 757)  # (95, 72): 757 // 72 = 10, so 1/8 is the largest allowed
    reduced = load_rgb_reduced(path, lambda size: (pre.geometry(*size).new_w, pre.geometry(*size).new_h))
    assert reduced.scale == 8 and reduced.full_size == (1003, 757)
    assert reduced.image.size == (126, 95)  # libjpeg rounds up
    assert reduced.image.size[0] >= geo.new_w and reduced.image.size[1] >= geo.new_h
    assert reduced.box == pytest.approx((0, 0, 1003 / 8, 757 / 8))
    small = _save_jpeg(tmp_path / "small.jpg", _photo(120, 90))  # 90 // 72 = 1: no reduction
    assert load_rgb_reduced(small, lambda size: (96, 72)).scale == 1


def test_pil_draft_is_the_pil_path_when_nothing_can_be_reduced(tmp_path):
    pre = Preprocess(crop=40, resize=52, interpolation="bicubic")
    paths = [str(write_image(tmp_path / f"{k}.png", np.random.default_rng(k), size=size))
             for k, size in enumerate([(120, 90), (67, 103), (52, 52)])]
    paths.append(_save_jpeg(tmp_path / "j.jpg", _photo(90, 103)))  # 90 // 52 = 1: no reduction
    for path in paths:
        assert torch.equal(preprocess_file(path, pre, draft=True), pre(load_rgb(path)))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_draft_decode_stays_close_to_full_decode_for_every_orientation(tmp_path, orientation):
    path = _save_jpeg(tmp_path / "p.jpg", _photo(601, 403, seed=orientation), orientation=orientation)
    pre = Preprocess(crop=48, resize=54, interpolation="bicubic")
    full = pre(load_rgb(path))
    drafted = preprocess_file(path, pre, draft=True)
    assert load_rgb_reduced(path, lambda s: (pre.geometry(*s).new_w, pre.geometry(*s).new_h)).scale == 4
    # normalised units (std 0.229). Measured: mean 0.0065, max 0.087 for every orientation; ignoring the
    # partial last row/column of the reduced image (a box at the wrong corner) gives mean >= 0.017, max >= 0.4.
    diff = (drafted - full).abs()
    assert float(diff.mean()) < 0.012 and float(diff.max()) < 0.2


# ------------------------------------------------------------------------------------ end to end: embed


def _mixed_folder(root) -> Examples:
    root.mkdir(parents=True, exist_ok=True)
    paths = [
        _save_jpeg(root / "a.jpg", _photo(64, 48, 1)),
        _save_jpeg(root / "b.jpg", _photo(52, 70, 2), orientation=6),
        _save_jpeg(root / "c.jpg", _photo(40, 40, 3), progressive=True),
    ]
    Image.fromarray(_photo(45, 60, 4)[..., 0]).save(root / "d.jpg", quality=90)  # grayscale JPEG
    Image.fromarray(_photo(30, 30, 5)).convert("CMYK").save(root / "e.jpg", quality=90)  # CMYK: PIL decodes
    rgba = np.dstack([_photo(36, 28, 6), np.full((28, 36), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "f.png")
    paths += [str(root / "d.jpg"), str(root / "e.jpg"), str(root / "f.png")]
    write_image(root / "g.png", np.random.default_rng(0), size=(25, 31))
    paths.append(str(root / "g.png"))
    data = (root / "a.jpg").read_bytes()
    (root / "h.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (root / "i.jpg").write_bytes(b"")  # empty
    paths += [str(root / "h.jpg"), str(root / "i.jpg")]
    n = len(paths)
    return Examples(ids=np.array([f"x{i}" for i in range(n)]), paths=np.array(paths), labels=np.array(["a"] * n))


@pytest.mark.parametrize("workers", [0, 2])
def test_tensor_path_embeds_exactly_like_the_pil_path(tmp_path, workers):
    ex = _mixed_folder(tmp_path / "img")
    bb = TinyBackbone(crop=12)
    ref = embed(bb, ex, device="cpu", decode="pil", skip_bad_images=True, num_workers=0, show_progress=False)
    got = embed(bb, ex, device="cpu", decode="tensor", skip_bad_images=True, num_workers=workers, batch_size=4,
                show_progress=False)
    np.testing.assert_array_equal(got.ok, ref.ok)
    assert list(got.ok) == [True] * 7 + [False, False]
    assert got.errors == ref.errors and "truncated" in got.errors["x7"] and "empty" in got.errors["x8"]
    np.testing.assert_array_equal(got.vectors, ref.vectors)
    assert got.key != ref.key


def test_decode_paths_never_share_a_cache_entry(tmp_path):
    ex = _mixed_folder(tmp_path / "img")
    cache = tmp_path / "cache"
    keys = set()
    for decode in ["pil", "pil-draft", "tensor"]:
        first = embed(TinyBackbone(), ex, cache_dir=cache, device="cpu", decode=decode, skip_bad_images=True,
                      num_workers=0, show_progress=False)
        assert first.n_encoded == len(ex)  # nothing reused from another path
        again = embed(TinyBackbone(), ex, cache_dir=cache, device="cpu", decode=decode, skip_bad_images=True,
                      num_workers=0, show_progress=False)
        assert again.from_cache and again.key == first.key
        keys.add(first.key)
    assert len(keys) == 3


def test_auto_decode_and_bad_decode_names():
    assert resolve_decode("auto", torch.device("cpu")) == "pil-draft"
    assert resolve_decode("tensor", torch.device("cpu")) == "tensor"
    with pytest.raises(ConfigError, match="'nvjpeg'.*pil-draft"):
        resolve_decode("nvjpeg", torch.device("cpu"))


def test_default_workers_leave_a_core_for_the_model(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr("lifebench.features.datapath._cores", lambda: 16)
    assert default_workers(100, "pil", cuda) == 0
    assert default_workers(10_000, "pil", cuda) == 15
    assert default_workers(10_000, "tensor", cuda) == 8
    assert default_workers(10_000, "pil-draft", cpu) == 2  # the model already uses every core
    monkeypatch.setattr("lifebench.features.datapath._cores", lambda: 2)
    assert default_workers(10_000, "pil-draft", cuda) == 1
    assert default_workers(10_000, "pil-draft", cpu) == 0


def test_timm_vectors_from_tensor_path_equal_pil_path(tmp_path):
    from lifebench.backbones import load_backbone

    root = tmp_path / "img"
    root.mkdir()
    paths = [_save_jpeg(root / f"{k}.jpg", _photo(200 + 7 * k, 150 + 3 * k, k)) for k in range(4)]
    ex = Examples(ids=np.array([str(k) for k in range(4)]), paths=np.array(paths), labels=np.array(["a"] * 4))
    bb = load_backbone("timm:test_vit@random")
    ref = embed(bb, ex, device="cpu", decode="pil", num_workers=0, show_progress=False)
    got = embed(bb, ex, device="cpu", decode="tensor", num_workers=0, show_progress=False)
    np.testing.assert_array_equal(got.vectors, ref.vectors)  # same pixels, same batches: same vectors


# ------------------------------------------------------------------------- compile padding, batch memo


def test_compile_pads_every_batch_to_one_shape_and_compiles_once(tmp_path, monkeypatch):
    shapes, compiles = [], []

    def fake_compile(fn, **kwargs):
        compiles.append(kwargs)

        def run(x):
            shapes.append(tuple(x.shape))
            return fn(x)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    rng = np.random.default_rng(0)
    paths = [str(write_image(tmp_path / f"{i}.png", rng, size=(20 + i, 18))) for i in range(10)]
    ex = Examples(ids=np.arange(10).astype(str), paths=np.array(paths), labels=np.array(["a"] * 10))
    bb = TinyBackbone()
    plain = embed(bb, ex, device="cpu", batch_size=4, num_workers=0, show_progress=False)
    comp = embed(bb, ex, device="cpu", batch_size=4, num_workers=0, show_progress=False, compile=True)
    embed(bb, ex, device="cpu", batch_size=4, num_workers=0, show_progress=False, compile=True, decode="pil")
    assert {shape[0] for shape in shapes} == {4} and len(shapes) == 6  # batches 4 + 4 + 2 padded to 4, twice
    assert len(compiles) == 1 and compiles[0]["dynamic"] is False  # TinyBackbone's module has no children
    np.testing.assert_allclose(comp.vectors, plain.vectors, rtol=1e-6, atol=1e-6)
    assert comp.key != plain.key
    assert bb.module._compiled_call_impl is None  # eager again outside embed(compile=True)


def testauto_batch_size_is_searched_once_per_backbone(monkeypatch):
    probes = []

    def fake_probe(backbone, device, bs):
        probes.append(bs)
        if bs > 64:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(features.encode, "_probe_batch", fake_probe)
    cuda = torch.device("cuda")
    bb = TinyBackbone()
    assert features.auto_batch_size(bb, cuda) == 64
    assert probes == [512, 256, 128, 64]
    assert features.auto_batch_size(bb, cuda) == 64 and len(probes) == 4  # reused: no new search
    assert features.auto_batch_size(TinyBackbone(seed=1), cuda) == 64 and len(probes) == 8
    assert features.auto_batch_size(bb, torch.device("cpu")) == 32


def test_make_encoder_is_the_backbone_forward_on_cpu():
    bb = TinyBackbone()
    x = torch.randn(5, 3, 8, 8)
    enc = features.make_encoder(bb, torch.device("cpu"), batch_size=8)
    with torch.inference_mode():
        want = bb.encode_images(x)
    assert torch.equal(enc(x), want)


def test_jpeg_orientation_from_the_header_matches_exif_transpose(tmp_path):
    # the tensor path reads orientation from the header in a worker and transposes after decoding
    path = _save_jpeg(tmp_path / "r.jpg", _photo(40, 24), orientation=8)
    with Image.open(path) as img:
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    raw = decode_jpegs([torch.frombuffer(bytearray(open(path, "rb").read()), dtype=torch.uint8)],
                       torch.device("cpu"))[0]
    np.testing.assert_array_equal(apply_orientation(raw, 8).permute(1, 2, 0).numpy(), upright)


class _Tokens(torch.nn.Module):
    """A class token expanded over the batch, as in a ViT: what inductor trips on inside inference_mode."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 3, generator=g), requires_grad=False)
        self.proj = torch.nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        return self.proj(tokens).mean(1)


class _GuardedBackbone(Backbone):
    """Enters inference_mode inside encode_images, as the timm and open_clip adapters do."""

    family, pooling, embed_dim = "test", "mean", 5

    def __init__(self) -> None:
        self.module = torch.nn.Sequential(_Tokens()).eval()
        self.id = "test:guarded"
        self.preprocess = Preprocess(crop=8, resize=8, interpolation="bilinear")

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(pixels)


def test_real_torch_compile_works_when_the_backbone_enters_inference_mode_itself(tmp_path):
    # torch.compile(backbone.encode_images) fails here in inductor ("Cannot set version_counter for inference
    # tensor"); embed compiles the module's children instead. This runs the real compiler (a few seconds).
    rng = np.random.default_rng(0)
    paths = [str(write_image(tmp_path / f"{i}.png", rng, size=(20 + i, 18))) for i in range(6)]
    ex = Examples(ids=np.arange(6).astype(str), paths=np.array(paths), labels=np.array(["a"] * 6))
    bb = _GuardedBackbone()
    plain = embed(bb, ex, device="cpu", batch_size=4, num_workers=0, show_progress=False)
    comp = embed(bb, ex, device="cpu", batch_size=4, num_workers=0, show_progress=False, compile=True)
    np.testing.assert_allclose(comp.vectors, plain.vectors, rtol=1e-5, atol=1e-6)
    assert all(m._compiled_call_impl is None for m in bb.module.children())
