"""Decode one image file into an 8-bit RGB PIL image, whatever its mode.

Policy (documented in docs/data.md):

* EXIF orientation is applied, so a photo is seen the way a person sees it.
* Transparent images (RGBA, LA, palette with transparency) are composited onto white, not black: cut-out
  photos of organisms keep their outline instead of a black silhouette.
* Grayscale, bilevel, palette, CMYK, YCbCr and LAB images are converted to RGB.
* 16-bit, 32-bit integer and float images (microscopy) are rescaled per image from their min..max to 0..255,
  as image viewers do; a constant image becomes black.
* Multi-frame files (GIF, multi-page TIFF) contribute their first frame.

Anything PIL cannot fully decode (empty, truncated, corrupt, not an image) raises BadImageError naming the
file.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lifebench.errors import BadImageError

__all__ = ["load_rgb"]

_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Decompression-bomb guard: PIL refuses images over 2x this many pixels; 1 gigapixel is plenty for slides.
Image.MAX_IMAGE_PIXELS = 1_000_000_000


def _to_uint8_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        scaled = np.zeros(arr.shape, dtype=np.uint8)
    else:
        scaled = np.clip(np.round((arr - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Read ``path`` completely and return an RGB image; raise BadImageError for unreadable files."""
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, "the file is empty (0 bytes)")
    except OSError as e:
        raise BadImageError(path, f"cannot open it ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency expressed in bytes"
            with Image.open(path) as img:
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return _convert(img)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image, or a format PIL cannot read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(path, f"corrupt or truncated ({e})") from None


def _convert(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in _WIDE_MODES:
        return _to_uint8_rgb(img)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")
