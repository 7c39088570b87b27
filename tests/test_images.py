"""Every image mode a user may have decodes to RGB; every broken file raises BadImageError naming it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lifebench.errors import BadImageError
from lifebench.images import load_rgb


def _rgb(path):
    img = load_rgb(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    arr = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(arr, "L").save(tmp_path / "g.png")
    out = _rgb(tmp_path / "g.png")
    assert out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out[..., 0], arr)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red
    arr[:2, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = _rgb(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[3, 3], [255, 255, 255])


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (6, 6), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.info["transparency"] = 0
    img.putpixel((0, 0), 0)
    img.save(tmp_path / "p.png", transparency=0)
    out = _rgb(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[3, 3], [10, 200, 30])


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    out = _rgb(tmp_path / "c.jpg")
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60  # cyan 0 + magenta/yellow full = red


def test_16bit_is_rescaled_min_to_max(tmp_path):
    arr = np.linspace(1000, 5000, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(arr).save(tmp_path / "w.tif")
    out = _rgb(tmp_path / "w.tif")
    assert out.min() == 0 and out.max() == 255
    expected = np.round((arr.astype(float) - 1000) / 4000 * 255)
    np.testing.assert_array_equal(out[..., 1], expected)


def test_float_and_constant_images(tmp_path):
    Image.fromarray(np.full((5, 5), 3.5, dtype=np.float32), "F").save(tmp_path / "f.tif")
    assert _rgb(tmp_path / "f.tif").max() == 0


def test_bilevel(tmp_path):
    Image.new("1", (5, 5), 1).save(tmp_path / "b.png")
    assert _rgb(tmp_path / "b.png").min() == 255


def _corrupt_png(p):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
    data = bytearray(p.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 64] = bytes(64)  # zero part of the compressed pixel stream
    p.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("these are field notes, not pixels"), "not an image"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "not an image"),
        (_corrupt_png, "corrupt"),
    ],
)
def test_broken_files_raise_naming_the_file(tmp_path, make, reason):
    p = tmp_path / "bad.png"
    make(p)
    with pytest.raises(BadImageError) as e:
        load_rgb(p)
    assert str(p) in str(e.value) and reason in str(e.value) and "--skip-bad-images" in str(e.value)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg", quality=95)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated"):
        load_rgb(tmp_path / "t.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="cannot open"):
        load_rgb(tmp_path / "nope.png")


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "o.jpg", exif=exif)
    assert load_rgb(tmp_path / "o.jpg").size == (10, 20)


# ------------------------------------------------------------------- decoding "reference" (issue 12, defect 10)

def transparent_png(path):
    """A cut-out: the left half opaque green, the right half fully transparent but storing red (as many cut-out
    PNGs do), so compositing on white and dropping the alpha channel give different pixels."""
    arr = np.zeros((40, 48, 4), dtype=np.uint8)
    arr[..., 1] = np.linspace(40, 220, 48, dtype=np.uint8)[None, :]
    arr[:, 24:, :3] = (230, 10, 10)
    arr[:, :24, 3] = 255
    Image.fromarray(arr, "RGBA").save(path)
    return path


def rotated_jpeg(path, size=(256, 160)):
    """A JPEG stored sideways with EXIF orientation 6, large enough for draft decoding at 1/2 or more."""
    x = np.linspace(0, 255, size[0], dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, size[1], dtype=np.float64)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (size[1], size[0], 1)), np.broadcast_to(y, (size[1], size[0], 1)),
                          np.full((size[1], size[0], 1), 90.0)], axis=2).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr, "RGB").save(path, quality=92, exif=exif)
    return path


def test_reference_decoding_is_image_open_convert_rgb_and_lifebench_differs(tmp_path):
    from lifebench.images import load_reference

    for p in (transparent_png(tmp_path / "cutout.png"), rotated_jpeg(tmp_path / "sideways.jpg")):
        with Image.open(p) as img:
            want = np.asarray(img.convert("RGB"))
        np.testing.assert_array_equal(np.asarray(load_reference(p)), want)
        assert np.asarray(load_rgb(p)).shape != want.shape or (np.asarray(load_rgb(p)) != want).any()
    ref = np.asarray(load_reference(tmp_path / "cutout.png"))
    np.testing.assert_array_equal(ref[5, 40], [230, 10, 10])  # the stored colour under alpha 0
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "cutout.png"))[5, 40], [255, 255, 255])
    assert load_reference(tmp_path / "sideways.jpg").size == (256, 160)  # not rotated
    assert load_rgb(tmp_path / "sideways.jpg").size == (160, 256)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty"):
        load_reference(tmp_path / "empty.png")


def test_reference_pixels_equal_open_clips_transform_on_every_path(tmp_path, tiny_open_clip):
    """Under decode "reference" the pixels a backbone sees are open_clip's own eval transform applied to
    ``Image.open(p).convert("RGB")`` (what BioCLIP's and CLIP_benchmark's loaders feed it), on the worker data path
    and through ``resolve_decode``; under the default they differ on both files."""
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from lifebench.features import datapath
    from lifebench.backbones import load_backbone

    torch.manual_seed(3)
    model = tiny_open_clip.create_model("lbtest-tiny-clip", pretrained=None, pretrained_text=False).eval()
    theirs = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    b = load_backbone("open_clip:lbtest-tiny-clip@random:3")
    paths = np.array([str(transparent_png(tmp_path / "cutout.png")), str(rotated_jpeg(tmp_path / "sideways.jpg"))])
    cpu = torch.device("cpu")
    assert datapath.resolve_decode("reference", cpu) == "reference"
    assert datapath.resolve_decode("lifebench", cpu) == "pil-draft" and datapath.resolve_decode("full", cpu) == "pil"
    (batch,) = datapath.iter_batches("reference", paths, np.arange(2), b.preprocess, 8, cpu, 0)
    (default,) = datapath.iter_batches(datapath.resolve_decode("lifebench", cpu), paths, np.arange(2), b.preprocess,
                                       8, cpu, 0)
    for k, p in enumerate(paths):
        with Image.open(p) as img:
            want = theirs(img.convert("RGB"))
        assert (batch.pixels[k] - want).abs().max().item() < 1e-5
        assert (default.pixels[k] - want).abs().max().item() > 0.1


def test_the_gpu_path_never_takes_reference_or_full_and_a_bad_mode_is_one_line():
    """The nvJPEG path applies lifebench's policy only, so "reference" and "full" go through PIL workers on CUDA too
    (no device needed to check the mapping); an unknown mode names the choices."""
    import torch

    from lifebench.features.datapath import resolve_decode
    from lifebench.errors import ConfigError

    cuda = torch.device("cuda")
    assert resolve_decode("reference", cuda) == "reference" and resolve_decode("full", cuda) == "pil"
    with pytest.raises(ConfigError, match=r"^unknown decode mode 'plain'; use lifebench, full, reference") as e:
        resolve_decode("plain", cuda)
    assert "\n" not in str(e.value)
