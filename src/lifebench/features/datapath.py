"""From image files to batches of preprocessed pixels on the compute device, four ways.

:func:`lifebench.features.embed` is the only caller; this module never touches a model. Every mode
implements the same :class:`~lifebench.backbones.base.Preprocess` (resize, centre crop, scale, normalise):

``"pil"``
    Worker processes decode with PIL (:func:`lifebench.images.load_rgb`: lifebench's pixel policy, transparency
    on white and EXIF rotation applied) and apply ``Preprocess`` itself. The exact path the others approximate.
``"pil-draft"``
    As ``"pil"``, but libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 scale (PIL draft mode, a DCT-domain
    downscale) whenever the reduced image still covers the resize target on both sides, so the final PIL
    resize is still a downscale (PIL then resamples only the region the centre crop keeps). Vectors differ
    from ``"pil"`` only for JPEGs at least twice the resize target. The default on CPU.
``"tensor"``
    Worker processes only read file bytes (and EXIF orientation from the header). JPEGs are decoded in
    batches by ``torchvision.io.decode_jpeg`` on the compute device (nvJPEG on CUDA, libjpeg-turbo on CPU);
    other formats, CMYK JPEGs and anything the batch decoder rejects are decoded by PIL. Resize, crop and
    normalise then run on the device, in batches of equally sized images, by :func:`resize_crop_normalize`,
    which reproduces PIL's fixed-point resampling exactly (see there). The default on CUDA. It follows
    lifebench's pixel policy too (EXIF orientation from the header, PIL's policy for every non-JPEG).
``"reference"``
    As ``"pil"``, but decoded as the reference loaders do (:func:`lifebench.images.load_reference`,
    ``Image.open(p).convert("RGB")``: no compositing on white, no EXIF rotation, full decode), on any device.

The user-facing choice is one of :data:`DECODINGS` (``--decode`` of ``run`` and ``embed``): ``lifebench`` (the
default: "pil-draft" on a CPU, "tensor" on CUDA), ``full`` ("pil": the same pixels without the draft or
nvJPEG shortcuts) or ``reference`` (the reference loaders' pixels, to reproduce BioCLIP, CLIP_benchmark or
μ-Bench numbers). :func:`resolve_decode` maps either vocabulary to a mode.

Modes produce slightly different vectors (nvJPEG's IDCT and chroma upsampling are not libjpeg's; a DCT
downscale is not a full decode), so :func:`decode_identity` names the mode and device for the cache key.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL
import torch
from PIL import Image

from lifebench.backbones.base import Geometry, Preprocess
from lifebench.errors import BadImageError, ConfigError, MissingDependencyError
from lifebench.images import exif_orientation, load_reference, load_rgb, load_rgb_reduced

__all__ = [
    "DECODE_MODES",
    "DECODINGS",
    "Batch",
    "apply_orientation",
    "decode_identity",
    "decode_jpegs",
    "default_workers",
    "iter_batches",
    "preprocess_file",
    "preprocess_tensors",
    "resample_weights",
    "resize_crop_normalize",
    "resolve_decode",
]

log = logging.getLogger(__name__)

DECODE_MODES = ("pil", "pil-draft", "tensor", "reference")
DECODINGS = {"lifebench": "auto", "full": "pil", "reference": "reference"}
"""User-facing decoding -> data path: ``lifebench`` (composite on white + EXIF rotation, fastest path: JPEG draft
decoding on a CPU, nvJPEG on CUDA), ``full`` (the same policy, full PIL decode), ``reference``
(``Image.open(p).convert("RGB")``, as BioCLIP, CLIP_benchmark and eVLLM load images)."""

PRECISION_BITS = 22
"""PIL's fixed-point precision for 8-bit resampling (``32 - 8 - 2`` in libImaging/Resample.c)."""

_JPEG, _PIXELS, _ERROR = 0, 1, 2
# Elements (images x channels x rows x columns) resampled at once; bounds the float64 working memory.
_RESAMPLE_CHUNK_ELEMS = 1 << 25
# Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as the
# width (python-pillow/Pillow#9549); earlier versions always run the horizontal pass first.
_PIL_VERTICAL_FIRST = int(PIL.__version__.split(".")[0]) >= 13


# ---------------------------------------------------------------------------------------------- modes


def _has_tensor_decoder() -> bool:
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=8)
def _device_decoder_works(device: str) -> bool:
    """Whether torchvision can decode a JPEG on ``device`` (CUDA builds may lack nvJPEG)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, "JPEG")
    stream = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    try:
        return decode_jpegs([stream], torch.device(device))[0] is not None
    except (ImportError, RuntimeError):
        return False


def resolve_decode(decode: str, device: torch.device) -> str:
    """Map ``decode`` ("auto", one of :data:`DECODE_MODES` or one of :data:`DECODINGS`) to the mode used on
    ``device``.

    "auto" (= "lifebench") is "tensor" on CUDA (when torchvision can decode JPEGs there) and "pil-draft" elsewhere.
    """
    decode = DECODINGS.get(decode, decode)
    if decode == "auto":
        if device.type == "cuda" and _has_tensor_decoder():
            if _device_decoder_works(str(device)):
                return "tensor"
            log.warning("torchvision cannot decode JPEGs on %s (no nvJPEG); decoding with PIL on the CPU", device)
        return "pil-draft"
    if decode not in DECODE_MODES:
        raise ConfigError(f"unknown decode mode {decode!r}; use {', '.join(DECODINGS)} (or a data path: auto, "
                          f"{', '.join(DECODE_MODES)})")
    if decode == "tensor":
        if not _has_tensor_decoder():
            raise MissingDependencyError("torchvision", "timm", "decode='tensor'")
        if device.type == "cuda" and not _device_decoder_works(str(device)):
            raise ConfigError(f"decode='tensor' needs a torchvision built with nvJPEG to decode on {device}; "
                              "use decode='pil-draft'")
    return decode


def resample_dtype(device: torch.device) -> torch.dtype:
    """float64 makes :func:`resize_crop_normalize` exact; MPS has no float64, so float32 there."""
    return torch.float32 if device.type == "mps" else torch.float64


def decode_identity(mode: str, device: torch.device) -> str:
    """Which decoder and resampler produce the pixels: part of the embedding cache key."""
    if mode != "tensor":
        return mode
    decoder = "nvjpeg" if device.type == "cuda" else "libjpeg-turbo"
    bits = "f64" if resample_dtype(device) == torch.float64 else "f32"
    return f"tensor:{decoder}:pil-resample-{bits}"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(n_images: int, mode: str, device: torch.device | None = None) -> int:
    """Worker processes for ``n_images``: none for small jobs; for a GPU, one per core but one.

    The "tensor" mode's workers only read bytes, so a few suffice. On a CPU device the model already runs on
    every core, and decoding is a few percent of a ViT's forward time there, so workers mostly add
    oversubscription: one per 8 cores (none on a small machine), and decoding otherwise runs inline.
    """
    if n_images < 256:
        return 0
    cores = _cores()
    if device is not None and device.type == "cpu":
        return cores // 8
    cap = 8 if mode == "tensor" else 32
    return max(1, min(cap, cores - 1))


# ------------------------------------------------------------------------------ PIL-exact resampling


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        px = x * np.pi
        return np.where(x == 0.0, 1.0, np.sin(px) / px)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0)}


@functools.lru_cache(maxsize=512)
def resample_weights(in_size: int, out_size: int, interpolation: str, start: int = 0,
                     length: int | None = None) -> np.ndarray:
    """PIL's 8-bit resampling of one axis as a matrix: rows ``start:start+length`` of (out_size, in_size).

    Entries are PIL's integer fixed-point coefficients (units of 2**-22), computed as libImaging/Resample.c
    does (``precompute_coeffs`` then ``normalize_coeffs_8bpc``), so that
    ``clip(floor((W @ x + 2**21) / 2**22), 0, 255)`` is PIL's output pixel for pixel. "nearest" follows
    PIL's scale-only affine transform (source column ``floor((x + 0.5) * in / out)``, accumulated the same way).
    """
    length = out_size - start if length is None else length
    rows = np.arange(start, start + length)
    scale = in_size / out_size
    mat = np.zeros((length, in_size), dtype=np.float64)
    if interpolation == "nearest":
        steps = np.full(out_size, scale)
        steps[0] = scale * 0.5
        src = np.minimum(np.cumsum(steps).astype(np.int64), in_size - 1)  # sequential, as PIL's loop adds
        mat[np.arange(length), src[rows]] = float(1 << PRECISION_BITS)
        mat.setflags(write=False)  # cached: shared by every caller
        return mat
    fn, support = _FILTERS[interpolation]
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = (rows + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    valid = taps[None, :] < xmax[:, None]
    cols = xmin[:, None] + taps[None, :]
    w = np.where(valid, fn((cols - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    ww = np.cumsum(w, axis=1)[:, -1]  # sequential sum, in PIL's order
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    scaled = w * float(1 << PRECISION_BITS)
    fixed = np.where(w < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled))
    r, t = np.nonzero(valid)
    mat[r, cols[r, t]] = fixed[r, t]
    mat.setflags(write=False)  # cached: shared by every caller
    return mat


def _vertical_first(w: int, h: int, new_w: int, new_h: int) -> bool:
    """Whether the installed Pillow resizes ``w x h -> new_w x new_h`` vertical pass first."""
    return _PIL_VERTICAL_FIRST and h - new_h > 0 and h - new_h > (w - new_w) * 2


@functools.lru_cache(maxsize=256)
def _weights_on(in_size: int, out_size: int, interpolation: str, start: int, length: int,
                dtype: torch.dtype, device: str) -> torch.Tensor:
    w = np.array(resample_weights(in_size, out_size, interpolation, start, length))
    return torch.from_numpy(w).to(device=device, dtype=dtype, non_blocking=True)


@functools.lru_cache(maxsize=32)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return m.to(device, non_blocking=True), s.to(device, non_blocking=True)


def _round_fixed(y: torch.Tensor) -> torch.Tensor:
    """PIL's ``clip8``: floor((sum + 2**21) / 2**22) clipped to 0..255 (exact in float64)."""
    half = float(1 << (PRECISION_BITS - 1))
    return torch.floor((y + half) * (1.0 / (1 << PRECISION_BITS))).clamp_(0.0, 255.0)


def resize_crop_normalize(images: torch.Tensor, pre: Preprocess, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``pre`` applied to a batch of equally sized uint8 images (B, 3, H, W) on any device.

    Resizing is PIL's separable two-pass resampling (one axis, rounding to 8 bits, the other axis, rounding;
    in the order the installed Pillow uses), written as two matrix products with PIL's own fixed-point
    coefficients and restricted to the rows and columns the centre crop keeps. In float64 every product
    and partial sum is an integer below 2**53, so the result equals PIL's bit for bit; scaling and
    normalising are then the same float32 operations as ``Preprocess``. In float32
    (``dtype=torch.float32``), a pixel may differ by one level.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    dtype = dtype or resample_dtype(images.device)
    _, _, h, w = images.shape
    geo = pre.geometry(w, h)
    c, dev = pre.crop, str(images.device)
    resize = (geo.new_w, geo.new_h) != (w, h)
    y = images.to(dtype)

    def horizontal(y: torch.Tensor) -> torch.Tensor:
        if resize and geo.new_w != w:
            wx = _weights_on(w, geo.new_w, pre.interpolation, geo.left, c, dtype, dev)
            return _round_fixed(torch.matmul(y, wx.T))
        return y[..., geo.left : geo.left + c]

    def vertical(y: torch.Tensor) -> torch.Tensor:
        if resize and geo.new_h != h:
            wy = _weights_on(h, geo.new_h, pre.interpolation, geo.top, c, dtype, dev)
            return _round_fixed(torch.matmul(wy, y))
        return y[..., geo.top : geo.top + c, :]

    if _vertical_first(w, h, geo.new_w, geo.new_h):
        y = horizontal(vertical(y))
    else:
        y = vertical(horizontal(y))
    x = y.to(torch.float32) / 255.0
    mean, std = _mean_std(tuple(pre.mean), tuple(pre.std), dev)
    return (x - mean) / std


def preprocess_tensors(images: Sequence[torch.Tensor | None], pre: Preprocess, device: torch.device,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """``pre`` applied to uint8 (3, H, W) images of any sizes; returns (N, 3, crop, crop) float32 on ``device``.

    Images of one size are resampled together (one pair of matrix products per chunk); ``None`` entries
    (unreadable images) give zero rows. Nothing here waits for the device (no host-to-device copy of
    pageable memory without ``non_blocking``), so on CUDA this overlaps the previous batch's forward pass.
    """
    c = pre.crop
    rows: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, img in enumerate(images):
        if img is not None:
            groups.setdefault((int(img.shape[-2]), int(img.shape[-1])), []).append(k)
    for (h, w), members in groups.items():
        per_chunk = max(1, _RESAMPLE_CHUNK_ELEMS // (3 * h * w))
        for a in range(0, len(members), per_chunk):
            part = members[a : a + per_chunk]
            batch = torch.stack([images[k].to(device, non_blocking=True) for k in part])  # type: ignore[union-attr]
            for k, row in zip(part, resize_crop_normalize(batch, pre, dtype), strict=True):
                rows[k] = row
    if any(r is None for r in rows):
        zero = torch.zeros((3, c, c), dtype=torch.float32, device=device)
        rows = [zero if r is None else r for r in rows]
    if not rows:
        return torch.zeros((0, 3, c, c), dtype=torch.float32, device=device)
    return torch.stack(rows)  # type: ignore[arg-type]


def apply_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Transpose a (C, H, W) tensor as ``PIL.ImageOps.exif_transpose`` does for EXIF ``orientation``."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-2, -1)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(img, -1, (-2, -1))
    if orientation == 7:
        return img.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(img, 1, (-2, -1))
    return img


def decode_jpegs(streams: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG byte streams to uint8 RGB (3, H, W) on ``device`` in one batch; ``None`` where one fails.

    A failing stream makes torchvision reject the whole batch, so then each is retried alone.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not streams:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 deprecates its decoders in favour of torchcodec
        try:
            return list(decode_jpeg(streams, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as e:
            log.debug("batch JPEG decode failed (%s); decoding one by one", e)
        out: list[torch.Tensor | None] = []
        for s in streams:
            try:
                out.append(decode_jpeg(s, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


# ------------------------------------------------------------------------------------- CPU (PIL) path


def preprocess_file(path: str | os.PathLike, pre: Preprocess, draft: bool = False,
                    reference: bool = False) -> torch.Tensor:
    """Decode ``path`` with PIL and apply ``pre``; exactly ``pre(load_rgb(path))`` unless a draft decode helps.

    With ``reference``, exactly ``pre(Image.open(path).convert("RGB"))`` (:func:`lifebench.images.load_reference`).

    With ``draft``, libjpeg may decode a large JPEG at 1/2..1/8 scale (see
    :func:`lifebench.images.load_rgb_reduced`); then only the part of the reduced image that the centre crop
    keeps is resampled (PIL's ``resize(box=...)``: same output grid and filter support as resizing all of
    it, about 40% less work). Images that cannot be reduced go through ``pre`` unchanged.
    """
    if reference:
        return pre(load_reference(path))
    if not draft:
        return pre(load_rgb(path))

    def target(size: tuple[int, int]) -> tuple[int, int]:
        geo = pre.geometry(*size)
        return geo.new_w, geo.new_h

    reduced = load_rgb_reduced(path, target)
    if reduced.scale == 1:
        return pre(reduced.image)
    geo = pre.geometry(*reduced.full_size)
    return pre.to_tensor(_resize_crop_region(reduced.image, reduced.box, geo, pre.crop, pre.resample))


def _resize_crop_region(img: Image.Image, box: tuple[float, float, float, float], geo: Geometry, crop: int,
                        resample: Image.Resampling) -> Image.Image:
    """Resize the ``box`` region of ``img`` to (geo.new_w, geo.new_h) and centre-crop, computing only the crop.

    One single-axis ``resize(box=...)`` per axis, in the order Pillow would use for the whole resize (with
    both axes in one call, Pillow would pick the order from the crop size and round differently). Against
    resizing everything and then cropping, about 3 in 10,000 values move by one or two levels: Pillow takes
    the box in single precision, which shifts a few fixed-point coefficients.
    """
    x0, y0, x1, y1 = box
    sx, sy = (x1 - x0) / geo.new_w, (y1 - y0) / geo.new_h
    cx0, cx1 = x0 + geo.left * sx, x0 + (geo.left + crop) * sx
    cy0, cy1 = y0 + geo.top * sy, y0 + (geo.top + crop) * sy
    w, h = img.size

    def horizontal(im: Image.Image) -> Image.Image:
        return im.resize((crop, im.size[1]), resample, box=(cx0, 0, cx1, im.size[1]))

    def vertical(im: Image.Image) -> Image.Image:
        return im.resize((im.size[0], crop), resample, box=(0, cy0, im.size[0], cy1))

    if _vertical_first(w, h, geo.new_w, geo.new_h):
        return horizontal(vertical(img))
    return vertical(horizontal(img))


class _FileDataset(torch.utils.data.Dataset):
    """One preprocessed image per item; a failure comes back as an error string, not an exception."""

    def __init__(self, paths: np.ndarray, indices: np.ndarray, pre: Preprocess, draft: bool,
                 reference: bool = False) -> None:
        self.paths, self.indices, self.pre, self.draft, self.reference = paths, indices, pre, draft, reference

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor, str]:
        i = int(self.indices[k])
        try:
            return i, preprocess_file(self.paths[i], self.pre, self.draft, self.reference), ""
        except BadImageError as e:
            return i, torch.zeros((3, self.pre.crop, self.pre.crop)), e.reason


# ---------------------------------------------------------------------------------- tensor path (bytes)


@dataclass
class _Packed:
    """One batch as read by a worker: JPEG streams and PIL-decoded pixels, each packed in one tensor."""

    indices: np.ndarray
    kinds: np.ndarray
    orientations: np.ndarray
    errors: list[str]
    streams: torch.Tensor
    stream_bounds: list[tuple[int, int]] = field(default_factory=list)
    pixels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.uint8))
    pixel_shapes: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(offset, 3, H, W) of each decoded image in ``pixels``."""


def _sniff_jpeg(data: bytes) -> int | None:
    """EXIF orientation if ``data`` is a complete RGB or grayscale JPEG the batch decoder can take, else None.

    A stream that does not end in the EOI marker (truncated, or with trailing data) goes to PIL, whose
    verdict on damaged files is the reference; so do CMYK/YCCK JPEGs, which nvJPEG does not convert.
    """
    if data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                if img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L"):
                    return exif_orientation(img)
    except Exception:  # noqa: BLE001 - any header PIL cannot parse is PIL's to report
        return None
    return None


def _read_batch(paths: np.ndarray, indices: np.ndarray) -> _Packed:
    n = len(indices)
    kinds = np.full(n, _ERROR, dtype=np.int8)
    orientations = np.ones(n, dtype=np.int8)
    errors = [""] * n
    streams: list[bytes] = []
    bounds: list[tuple[int, int]] = []
    pixels: list[np.ndarray] = []
    shapes: list[tuple[int, int, int, int]] = []
    pos_s = pos_p = 0
    for k, i in enumerate(indices):
        path = str(paths[int(i)])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""  # load_rgb below reports why
        orientation = _sniff_jpeg(data) if data else None
        if orientation is not None:
            kinds[k], orientations[k] = _JPEG, orientation
            streams.append(data)
            bounds.append((pos_s, pos_s + len(data)))
            pos_s += len(data)
            continue
        try:
            arr = np.ascontiguousarray(np.asarray(load_rgb(path)).transpose(2, 0, 1))
        except BadImageError as e:
            errors[k] = e.reason
            continue
        kinds[k] = _PIXELS
        pixels.append(arr.reshape(-1))
        shapes.append((pos_p, *arr.shape))
        pos_p += arr.size
    joined = np.frombuffer(b"".join(streams), dtype=np.uint8) if streams else np.zeros(0, np.uint8)
    flat = np.concatenate(pixels) if pixels else np.zeros(0, np.uint8)
    return _Packed(indices=np.asarray(indices, dtype=np.int64), kinds=kinds, orientations=orientations,
                   errors=errors, streams=torch.from_numpy(joined.copy()), stream_bounds=bounds,
                   pixels=torch.from_numpy(flat), pixel_shapes=shapes)


class _ByteBatches(torch.utils.data.Dataset):
    """Item k is batch k, read whole by one worker (one tensor of JPEG bytes crosses the process boundary)."""

    def __init__(self, paths: np.ndarray, chunks: list[np.ndarray]) -> None:
        self.paths, self.chunks = paths, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> _Packed:
        return _read_batch(self.paths, self.chunks[k])


def _identity(x):
    return x


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (unchanged when None)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _decode_packed(packed: _Packed, paths: np.ndarray, pre: Preprocess, device: torch.device,
                   dtype: torch.dtype) -> tuple[torch.Tensor, list[str]]:
    n = len(packed.indices)
    errors = list(packed.errors)
    images: list[torch.Tensor | None] = [None] * n
    jpeg_pos = np.flatnonzero(packed.kinds == _JPEG)
    streams = [packed.streams[a:b] for a, b in packed.stream_bounds]
    for k, img in zip(jpeg_pos, decode_jpegs(streams, device), strict=True):
        if img is None:  # the batch decoder refused it: PIL decides (decodes it, or names the damage)
            try:
                arr = np.asarray(load_rgb(str(paths[packed.indices[k]])))
                img = torch.from_numpy(arr.transpose(2, 0, 1).copy()).to(device, non_blocking=True)
            except BadImageError as e:
                errors[k] = e.reason
                continue
        else:
            img = apply_orientation(img, int(packed.orientations[k]))
        images[k] = img
    pix_pos = np.flatnonzero(packed.kinds == _PIXELS)
    for k, (offset, c, h, w) in zip(pix_pos, packed.pixel_shapes, strict=True):
        images[k] = packed.pixels[offset : offset + c * h * w].view(c, h, w)
    return preprocess_tensors(images, pre, device, dtype), errors


# ------------------------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """Preprocessed pixels for some examples, on the compute device."""

    indices: np.ndarray
    """Example indices (positions in the ``paths`` given to :func:`iter_batches`)."""
    pixels: torch.Tensor
    """(B, 3, crop, crop) float32; zero rows where ``errors`` is non-empty."""
    errors: list[str]
    """Why each image could not be read ("" when it could)."""


def iter_batches(mode: str, paths: np.ndarray, indices: np.ndarray, pre: Preprocess, batch_size: int,
                 device: torch.device, num_workers: int) -> Iterator[Batch]:
    """Yield the images ``paths[indices]``, in order, as batches of at most ``batch_size`` preprocessed images."""
    if mode in ("pil", "pil-draft", "reference"):
        ds = _FileDataset(paths, indices, pre, draft=mode == "pil-draft", reference=mode == "reference")
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                             pin_memory=device.type == "cuda")
        it = iter(loader)
        while True:
            # Without workers the per-image tensor ops run here; on one thread, as in a worker (small ops
            # on several OpenMP threads mostly wait for each other, badly so when cores are shared).
            with _threads(1 if num_workers == 0 else None):
                item = next(it, None)
            if item is None:
                return
            idx, x, errs = item
            yield Batch(indices=idx.numpy(), pixels=x.to(device, non_blocking=True), errors=list(errs))
    assert mode == "tensor", mode
    chunks = [indices[a : a + batch_size] for a in range(0, len(indices), batch_size)]
    loader = torch.utils.data.DataLoader(_ByteBatches(paths, chunks), batch_size=None, shuffle=False,
                                         num_workers=num_workers, collate_fn=_identity)
    dtype = resample_dtype(device)
    for packed in loader:
        pixels, errors = _decode_packed(packed, paths, pre, device, dtype)
        yield Batch(indices=packed.indices, pixels=pixels, errors=errors)
