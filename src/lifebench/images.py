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

:func:`load_rgb_reduced` is the same decode for a caller that will downscale anyway: a JPEG is decoded by
libjpeg at 1/2, 1/4 or 1/8 scale (PIL "draft" mode, scaling in the DCT domain) when the result still covers
the size the caller asks for, which is several times cheaper for large photos.

:func:`load_reference` is how the reference loaders read an image (BioCLIP ``src/evaluation/data.py``,
CLIP_benchmark, eVLLM's model wrappers): ``Image.open(path).convert("RGB")``, full decode, no EXIF rotation, the
alpha channel dropped (a transparent pixel shows whatever colour it stores, often black) and 16-bit images
clipped to 255 by PIL's conversion. lifebench's policy above differs from it only on transparent, EXIF-rotated
and wide (16-bit, float) images; decoding ``reference`` (:data:`lifebench.features.datapath.DECODINGS`) uses it so that a
paper's numbers can be reproduced pixel for pixel.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lifebench.errors import BadImageError

__all__ = ["EXIF_ORIENTATION", "Reduced", "exif_orientation", "load_reference", "load_rgb", "load_rgb_reduced"]

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
    return _load(os.fspath(path), None).image


EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose does)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation of an opened image, 1 (upright) when absent or invalid."""
    value = img.getexif().get(EXIF_ORIENTATION, 1)
    return value if value in _TRANSPOSE else 1


@dataclass(frozen=True)
class Reduced:
    """An image decoded at reduced scale, and where the full image lies in it."""

    image: Image.Image
    """RGB, upright; possibly smaller than the file (``scale`` > 1)."""
    full_size: tuple[int, int]
    """(width, height) that :func:`load_rgb` would return for the same file."""
    box: tuple[float, float, float, float]
    """The full image's extent in ``image`` pixels, for ``Image.resize(..., box=box)``: libjpeg rounds the
    reduced size up, so the last row or column may cover less than ``scale`` source pixels."""
    scale: int
    """1 (not reduced), 2, 4 or 8."""


def load_rgb_reduced(
    path: str | os.PathLike, min_size: Callable[[tuple[int, int]], tuple[int, int]]
) -> Reduced:
    """Like :func:`load_rgb`, but a JPEG may be decoded at 1/2, 1/4 or 1/8 scale.

    ``min_size`` maps the upright full size (w, h) to the smallest (w, h) the caller can use; the largest
    reduction that keeps both sides at least that large is taken (none when even 1/2 is too small, and
    never for other formats). Resizing ``image`` with ``box`` to the size the caller wanted then differs from
    resizing the full decode only by the DCT-domain downscale.
    """
    return _load(os.fspath(path), min_size)


def load_reference(path: str | os.PathLike) -> Image.Image:
    """``Image.open(path).convert("RGB")``, the reference loaders' decode (see the module docstring); unreadable
    files raise BadImageError like :func:`load_rgb`."""
    path = os.fspath(path)
    with _bad_image(path), Image.open(path) as img:
        return img.convert("RGB")


@contextlib.contextmanager
def _bad_image(path: str) -> Iterator[None]:
    """Turn every way PIL fails on ``path`` (empty, missing, not an image, truncated) into one BadImageError."""
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, "the file is empty (0 bytes)")
    except OSError as e:
        raise BadImageError(path, f"cannot open it ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency expressed in bytes"
            yield
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image, or a format PIL cannot read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(path, f"corrupt or truncated ({e})") from None


def _load(path: str, min_size: Callable[[tuple[int, int]], tuple[int, int]] | None) -> Reduced:
    with _bad_image(path), Image.open(path) as img:
        img.seek(0)
        orientation, scale = 1, 1
        raw_size = img.size
        if min_size is not None and img.format in ("JPEG", "MPO"):
            orientation = exif_orientation(img)
            scale = _draft(img, orientation, min_size)
        img.load()
        decoded_size = img.size
        img = ImageOps.exif_transpose(img) or img
        out = _convert(img)
    if scale == 1:
        return Reduced(image=out, full_size=out.size, box=(0.0, 0.0, *map(float, out.size)), scale=1)
    raw_w, raw_h = raw_size
    full_size = (raw_h, raw_w) if orientation in (5, 6, 7, 8) else (raw_w, raw_h)
    box = _upright_box((raw_w / scale, raw_h / scale), decoded_size, orientation)
    return Reduced(image=out, full_size=full_size, box=box, scale=scale)


def _draft(img: Image.Image, orientation: int, min_size: Callable[[tuple[int, int]], tuple[int, int]]) -> int:
    """Ask libjpeg for the largest DCT downscale that keeps ``min_size``; returns the scale taken."""
    raw_w, raw_h = img.size
    swap = orientation in (5, 6, 7, 8)
    need_w, need_h = min_size((raw_h, raw_w) if swap else (raw_w, raw_h))
    if swap:
        need_w, need_h = need_h, need_w
    if raw_w // max(1, need_w) < 2 or raw_h // max(1, need_h) < 2:
        return 1
    if img.draft(img.mode, (max(1, need_w), max(1, need_h))) is None:
        return 1
    return int(img.decoderconfig[0]) if img.decoderconfig else 1


def _upright_box(
    extent: tuple[float, float], decoded: tuple[int, int], orientation: int
) -> tuple[float, float, float, float]:
    """Where the region [0, ew] x [0, eh] of the decoded (raw orientation) image lies after EXIF transposing."""
    ew, eh = extent
    cw, ch = decoded
    corners = [_transpose_point(x, y, cw, ch, orientation) for x, y in ((0.0, 0.0), (ew, eh))]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return (min(xs), min(ys), max(xs), max(ys))


def _transpose_point(x: float, y: float, w: int, h: int, orientation: int) -> tuple[float, float]:
    """Map a point of a w x h canvas through the transpose that EXIF ``orientation`` calls for."""
    if orientation == 2:  # flip left-right
        return w - x, y
    if orientation == 3:  # rotate 180
        return w - x, h - y
    if orientation == 4:  # flip top-bottom
        return x, h - y
    if orientation == 5:  # transpose (main diagonal)
        return y, x
    if orientation == 6:  # rotate 90 clockwise (PIL ROTATE_270)
        return h - y, x
    if orientation == 7:  # transverse (anti-diagonal)
        return h - y, w - x
    if orientation == 8:  # rotate 90 counter-clockwise (PIL ROTATE_90)
        return y, w - x
    return x, y


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
