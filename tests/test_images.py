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
