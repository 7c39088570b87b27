"""Images become embeddings here: decoding, batching, precision, device, compile, and the cache key.

The key is a SHA-256 over everything that changes the vectors: the backbone id, a hash of its weights,
its preprocessing, its pooling, the numeric precision, whether the model was compiled, which decoder and
resampler made the pixels (see :mod:`lifebench.features.datapath`), and the dataset manifest (ids, paths, file
sizes and modification times). A changed file, model or transform therefore misses, and vectors from the
CPU and GPU data paths never mix. The cache itself (:mod:`lifebench.features.cache`) keeps whole shards only, so a
killed run keeps the shards it finished and the next run computes only the missing ones.

Throughput: images are decoded and preprocessed by :func:`lifebench.features.datapath.iter_batches` (worker
processes; on CUDA, batched nvJPEG decoding and on-device resizing), the model runs under bf16 autocast in
channels-last layout on CUDA, optionally compiled with every batch padded to one shape, and each batch's
vectors are copied to the host asynchronously while the next batch is decoded. The auto batch size is found
once per backbone object and device and reused by later calls (other tasks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from lifebench.backbones.base import Backbone
from lifebench.device import resolve_device
from lifebench.errors import BadImageError, ConfigError
from lifebench.features import datapath
from lifebench.features.cache import EmbeddingCache
from lifebench.progress import progress
from lifebench.tasks.base import Examples

__all__ = ["Embeddings", "auto_batch_size", "cached_embeddings", "embed", "embed_texts", "embedding_key", "make_encoder", "resolve_device",
           "zero_shot_weights"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
DEFAULT_SHARD_ROWS = 8192


@dataclass(frozen=True, eq=False)
class Embeddings:
    """One vector per example, in the order of the examples given to :func:`embed`."""

    ids: np.ndarray
    vectors: np.ndarray
    """(n, D) float32; rows of unreadable images (only with ``skip_bad_images``) are zero."""
    ok: np.ndarray
    """(n,) bool: False where the image could not be decoded."""
    errors: dict[str, str] = field(default_factory=dict)
    """example id -> why its image could not be decoded."""
    key: str = ""
    decode: str = ""
    """The data path the pixels came from (:func:`lifebench.features.datapath.decode_identity`), e.g. ``pil-draft``."""
    from_cache: bool = False
    n_encoded: int = 0
    """Images that went through the model in this call (0 on a full cache hit)."""
    seconds: float = 0.0


def _precision(device: torch.device) -> str:
    return "bf16-autocast" if device.type == "cuda" else "fp32"


def embedding_key(backbone: Backbone, examples: Examples, precision: str, decode: str = "pil",
                  compiled: bool = False) -> str:
    """Cache key for ``examples`` embedded by ``backbone`` at ``precision``.

    ``decode`` is :func:`lifebench.features.datapath.decode_identity` of the data path used; ``compiled`` whether the
    model ran under ``torch.compile`` (its fused kernels round differently).
    """
    payload = {
        "format": CACHE_FORMAT,
        "backbone": backbone.cache_identity(),
        "manifest": examples.manifest_hash(),
        "precision": precision,
        "decode": decode,
        "compiled": compiled,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


_BATCH_MEMO = "_lifebench_auto_batch_size"
_COMPILED_MEMO = "_lifebench_compiled_encoder"


def _probe_batch(backbone: Backbone, device: torch.device, bs: int) -> None:
    """One forward pass of ``bs`` blank images, as :func:`embed` runs it; raises OutOfMemoryError if too big."""
    shape = (3, backbone.preprocess.crop, backbone.preprocess.crop)
    try:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            x = torch.zeros((bs, *shape), device=device).contiguous(memory_format=torch.channels_last)
            backbone.encode_images(x)
        torch.cuda.synchronize(device)
    finally:
        torch.cuda.empty_cache()


def auto_batch_size(backbone: Backbone, device: torch.device, start: int = 512) -> int:
    """Largest power-of-two batch (<= start) whose forward pass fits in GPU memory; 32 on CPU.

    Found once per backbone object and device (memoised on the backbone), so later tasks skip the search.
    """
    if device.type != "cuda":
        return 32
    memo: dict[tuple[str, int], int] = backbone.__dict__.setdefault(_BATCH_MEMO, {})
    key = (str(device), backbone.preprocess.crop)
    if key in memo:
        return memo[key]
    bs = start
    while bs >= 1:
        try:
            _probe_batch(backbone, device, bs)
            log.info("auto batch size for %s on %s: %d", backbone.id, device, bs)
            memo[key] = bs
            return bs
        except torch.OutOfMemoryError:
            bs //= 2
    raise ConfigError(f"backbone {backbone.id!r} does not fit on {device} even with batch size 1")


def _compiled_parts(backbone: Backbone) -> list[tuple[torch.nn.Module, Callable]]:
    """``torch.compile`` of each direct child of the backbone's module (or of the module if it has none).

    Compiled once per backbone object. The children, not ``encode_images`` itself: backbones enter
    ``torch.inference_mode()`` inside ``encode_images``, and inductor cannot trace into that context
    ("Cannot set version_counter for inference tensor"), while a child called inside it compiles fine.
    """
    parts = backbone.__dict__.get(_COMPILED_MEMO)
    if parts is None:
        modules = list(backbone.module.children()) or [backbone.module]
        parts = [(m, torch.compile(m._call_impl, dynamic=False)) for m in modules]
        backbone.__dict__[_COMPILED_MEMO] = parts
    return parts


@contextlib.contextmanager
def _use_compiled(parts: list[tuple[torch.nn.Module, Callable]]) -> Iterator[None]:
    """Route calls of the compiled modules to their compiled versions inside the block only (as
    ``nn.Module.compile`` does, but undone afterwards, so eager callers of the backbone stay eager)."""
    for module, compiled in parts:
        module._compiled_call_impl = compiled
    try:
        yield
    finally:
        for module, _ in parts:
            module._compiled_call_impl = None


def make_encoder(backbone: Backbone, device: torch.device, batch_size: int, compile: bool = False  # noqa: A002
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward pass :func:`embed` runs: (n <= batch_size, 3, H, W) pixels on ``device`` -> (n, D) float32.

    On CUDA it runs under bf16 autocast with the input (and the module) in channels-last layout. With
    ``compile`` the model's parts are compiled once per backbone object (reused by later calls) and every
    batch is padded to ``batch_size`` rows, so a short last batch does not trigger a recompilation.
    """
    cuda = device.type == "cuda"
    if cuda:
        backbone.module.to(memory_format=torch.channels_last)
    parts = _compiled_parts(backbone) if compile else []

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        n = len(pixels)
        if compile and n < batch_size:
            pad = pixels.new_zeros((batch_size - n, *pixels.shape[1:]))
            pixels = torch.cat([pixels, pad])
        if cuda:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with _use_compiled(parts), torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16,
                                                                          enabled=cuda):
            out = backbone.encode_images(pixels)
        return out[:n].float()

    return encode


class _HostCopy:
    """A device tensor on its way to the host: on CUDA the copy is asynchronous, into pinned memory."""

    def __init__(self, out: torch.Tensor) -> None:
        self.event = None
        if out.is_cuda:
            self.host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            self.host.copy_(out, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = out

    def numpy(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def embed(
    backbone: Backbone,
    examples: Examples,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    skip_bad_images: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    show_progress: bool = True,
    decode: str = "auto",
    compile: bool = False,  # noqa: A002
) -> Embeddings:
    """Embed every example's image with ``backbone``, reading and filling the cache in ``cache_dir``.

    Without ``skip_bad_images`` the first unreadable image raises :class:`BadImageError` (shards that
    finished stay cached). With it, unreadable images get ``ok=False`` and a zero row, and are counted
    and logged. ``decode`` picks how images become pixels: ``lifebench`` (= "auto", the default), ``full`` or
    ``reference`` (``Image.open(p).convert("RGB")``, as the papers' loaders), or a data path ("pil", "pil-draft",
    "tensor"); see :data:`lifebench.features.datapath.DECODINGS`. It is part of the cache key, so vectors made
    under different decodings never mix. ``compile`` runs the model under ``torch.compile``.
    """
    t0 = time.perf_counter()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    mode = datapath.resolve_decode(decode, dev)
    n = len(examples)
    decode_id = datapath.decode_identity(mode, dev)
    key = embedding_key(backbone, examples, _precision(dev), decode_id, compile)
    entry = EmbeddingCache(cache_dir).image_entry(key, n, shard_rows)
    if not skip_bad_images and (i := entry.first_bad_loaded()) is not None:
        raise BadImageError(str(examples.paths[i]), str(entry.errors[i]))
    todo = entry.todo()
    if len(todo):
        with progress(len(todo), f"embed {backbone.id}", "img", show_progress) as bar:
            for idx, vectors, errs in _encoded(backbone, examples.paths, todo, dev, mode, batch_size, num_workers,
                                               skip_bad_images, compile):
                entry.add(idx, vectors, errs)
                bar.update(len(idx))
    vectors = entry.vectors if entry.vectors is not None else np.zeros((0, backbone.embed_dim), dtype=np.float32)
    entry.complete({"key": key, "n": n, "dim": int(vectors.shape[1]), "backbone": backbone.cache_identity(),
                    "manifest": examples.manifest_hash(), "precision": _precision(dev), "decode": decode_id,
                    "compiled": compile, "created": time.time()})
    ok = entry.ok
    err_map = {str(examples.ids[i]): str(entry.errors[i]) for i in np.flatnonzero(~ok)}
    if err_map:
        log.warning("%d of %d images could not be read and are left out (first: %s: %s)", len(err_map), n,
                    *next(iter(err_map.items())))
    return Embeddings(ids=examples.ids, vectors=vectors, ok=ok, errors=err_map, key=key, decode=decode_id,
                      from_cache=len(todo) == 0, n_encoded=len(todo), seconds=time.perf_counter() - t0)


def _encoded(backbone: Backbone, paths, todo: np.ndarray, dev: torch.device, mode: str, batch_size: int | None,
             num_workers: int | None, skip_bad_images: bool, compile: bool,  # noqa: A002
             ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """``(row indices, (rows, D) float32 vectors, per-row error or "")`` for the images ``todo``, batch by batch.

    The encoding loop alone: no cache I/O. Batch k's vectors travel to the host while batch k+1 is decoded and
    encoded; when an error stops the loop, the batch already encoded is still yielded so the caller keeps it.
    Without ``skip_bad_images`` the first unreadable image raises :class:`BadImageError`.
    """
    backbone.to(dev)
    if dev.type == "cuda":
        backbone.module.to(memory_format=torch.channels_last)
    bs = batch_size or auto_batch_size(backbone, dev)
    workers = datapath.default_workers(len(todo), mode, dev) if num_workers is None else num_workers
    encode = make_encoder(backbone, dev, bs, compile)
    log.info("embedding %d images with %s on %s (batch %d, %d workers, decode %s%s)", len(todo), backbone.id,
             dev, bs, workers, datapath.decode_identity(mode, dev), ", compiled" if compile else "")
    pending: tuple[np.ndarray, list[str], _HostCopy] | None = None
    try:
        for batch in datapath.iter_batches(mode, paths, todo, backbone.preprocess, bs, dev, workers):
            bad = [j for j, e in enumerate(batch.errors) if e]
            if bad and not skip_bad_images:
                raise BadImageError(str(paths[batch.indices[bad[0]]]), batch.errors[bad[0]])
            host = _HostCopy(encode(batch.pixels))
            if pending is not None:
                done, pending = pending, None
                yield done[0], done[2].numpy(), done[1]
            pending = (batch.indices, list(batch.errors), host)
    except GeneratorExit:  # the caller stopped reading: nothing more to hand over
        raise
    except BaseException:
        if pending is not None:  # an error stopped the loop: hand over the batch already encoded, then re-raise
            yield pending[0], pending[2].numpy(), pending[1]
        raise
    if pending is not None:
        yield pending[0], pending[2].numpy(), pending[1]


def embed_texts(backbone: Backbone, texts: list[str], *, cache_dir: str | os.PathLike | None = None,
                device: str | torch.device = "auto", batch_size: int = 256) -> np.ndarray:
    """Text-tower embeddings ``(len(texts), D)`` float32, unnormalised, cached like image embeddings.

    With a ``cache_dir``, the entry ``<cache_dir>/texts/<key>.npy`` is keyed by the backbone's identity (id, weights,
    pooling) and the exact strings, and written atomically.
    """
    if not backbone.supports_text:
        raise ConfigError(f"backbone {backbone.id!r} has no text tower, so it cannot classify zero-shot; use an "
                          "open_clip (e.g. open_clip:hf-hub:imageomics/bioclip) or Hugging Face CLIP/SigLIP model "
                          "('lifebench ls backbones' marks them), or a probe protocol")
    strings = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    key = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "backbone": backbone.cache_identity(),
                                     "texts": strings}, sort_keys=True).encode()).hexdigest()[:32]
    cache = EmbeddingCache(cache_dir)
    if (cached := cache.texts(key)) is not None:
        return cached
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    backbone.to(dev)
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            out.append(backbone.encode_text(list(texts[start:start + batch_size])).float().cpu().numpy())
    vectors = np.concatenate(out).astype(np.float32) if out else np.zeros((0, backbone.embed_dim), np.float32)
    cache.save_texts(key, vectors)
    return vectors


def zero_shot_weights(backbone: Backbone, class_names: list[str], templates: list[str], **kw) -> np.ndarray:
    """Zero-shot classifier ``(C, D)``: per class, the mean of its L2-normalised prompt embeddings (one per
    template, ``{}`` replaced by the class name), normalised again (CLIP's and BioCLIP's recipe)."""
    prompts = [t.format(name) for name in class_names for t in templates]
    E = torch.from_numpy(embed_texts(backbone, prompts, **kw)).double()
    E = torch.nn.functional.normalize(E, dim=1).reshape(len(class_names), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(E, dim=1).float().numpy()


def cached_embeddings(cache_dir: str | os.PathLike[str], key: str, examples) -> tuple[np.ndarray, np.ndarray] | None:
    """``(vectors, ok)`` of ``examples`` read from the cache entry ``key`` (an experiment's ``embedding_key``)
    without the backbone, or None when the entry is missing, incomplete or was made for other examples."""
    return EmbeddingCache(cache_dir).cached_images(key, len(examples), examples.manifest_hash())
