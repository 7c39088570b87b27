"""The ONLY place where images become embeddings: decoding, batching, precision, device, and the cache.

Cache layout (``<cache_dir>/embeddings/<key>/``)::

    shard-00000.npz ...   vectors (rows, D) float32, ok (rows,) bool, errors (rows,) str; each written
                          to a temporary file and renamed, so a shard on disk is always whole
    meta.json             written last, when every shard is present: marks the entry complete

The key is a SHA-256 over everything that changes the vectors: the backbone id, a hash of its weights,
its preprocessing, its pooling, the numeric precision, and the dataset manifest (ids, paths, file sizes
and modification times). A changed file, model or transform therefore misses. A killed run keeps the
shards it finished; the next run computes only the missing ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lifebench.backbones.base import Backbone
from lifebench.errors import BadImageError, ConfigError
from lifebench.images import load_rgb
from lifebench.progress import progress
from lifebench.tasks.base import Examples

__all__ = ["Embeddings", "embed", "embedding_key", "resolve_device"]

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
    from_cache: bool = False
    n_encoded: int = 0
    """Images that went through the model in this call (0 on a full cache hit)."""
    seconds: float = 0.0


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" picks CUDA when available, else CPU; an unavailable device is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return dev


def _precision(device: torch.device) -> str:
    return "bf16-autocast" if device.type == "cuda" else "fp32"


def embedding_key(backbone: Backbone, examples: Examples, precision: str) -> str:
    """Cache key for ``examples`` embedded by ``backbone`` at ``precision``."""
    payload = {
        "format": CACHE_FORMAT,
        "backbone": backbone.cache_identity(),
        "manifest": examples.manifest_hash(),
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses one image; failures come back as an error string, not an exception."""

    def __init__(self, paths: np.ndarray, indices: np.ndarray, preprocess) -> None:
        self.paths = paths
        self.indices = indices
        self.preprocess = preprocess
        self.shape = (3, preprocess.crop, preprocess.crop)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        try:
            x = self.preprocess(load_rgb(self.paths[i]))
            err = ""
        except BadImageError as e:
            x = torch.zeros(self.shape)
            err = e.reason
        return i, x, err


def _shard_path(entry: Path, s: int) -> Path:
    return entry / f"shard-{s:05d}.npz"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_shard(path: Path, rows: int):
    try:
        with np.load(path, allow_pickle=False) as z:
            vectors, ok, errors = z["vectors"], z["ok"], z["errors"]
        if len(vectors) != rows or len(ok) != rows or len(errors) != rows:
            raise ValueError(f"{len(vectors)} rows, expected {rows}")
        return vectors, ok, errors
    except Exception as e:  # noqa: BLE001 - any unreadable shard is recomputed
        log.warning("discarding unreadable cache shard %s (%s)", path, e)
        path.unlink(missing_ok=True)
        return None


def _auto_batch_size(backbone: Backbone, device: torch.device, start: int = 512) -> int:
    """Largest power-of-two batch (<= start) whose forward pass fits in GPU memory; 32 on CPU."""
    if device.type != "cuda":
        return 32
    shape = (3, backbone.preprocess.crop, backbone.preprocess.crop)
    bs = start
    while bs >= 1:
        try:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                backbone.encode_images(torch.zeros((bs, *shape), device=device))
            torch.cuda.synchronize(device)
            log.info("auto batch size for %s: %d", backbone.id, bs)
            return bs
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            bs //= 2
    raise ConfigError(f"backbone {backbone.id!r} does not fit on {device} even with batch size 1")


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
) -> Embeddings:
    """Embed every example's image with ``backbone``, reading and filling the cache in ``cache_dir``.

    Without ``skip_bad_images`` the first unreadable image raises :class:`BadImageError` (shards that
    finished stay cached). With it, unreadable images get ``ok=False`` and a zero row, and are counted
    and logged.
    """
    t0 = time.perf_counter()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    backbone.to(dev)
    n = len(examples)
    key = embedding_key(backbone, examples, _precision(dev))
    entry = Path(cache_dir) / "embeddings" / key if cache_dir is not None else None
    n_shards = max(1, -(-n // shard_rows))
    bounds = [(s * shard_rows, min(n, (s + 1) * shard_rows)) for s in range(n_shards)]

    vectors: np.ndarray | None = None
    ok = np.zeros(n, dtype=bool)
    errors = np.full(n, "", dtype=object)
    done = np.zeros(n_shards, dtype=bool)
    if entry is not None and entry.is_dir():
        for s, (a, b) in enumerate(bounds):
            p = _shard_path(entry, s)
            if p.exists() and (got := _load_shard(p, b - a)) is not None:
                if vectors is None:
                    vectors = np.zeros((n, got[0].shape[1]), dtype=np.float32)
                vectors[a:b], ok[a:b], errors[a:b] = got
                done[s] = True

    todo = np.concatenate([np.arange(a, b) for s, (a, b) in enumerate(bounds) if not done[s]] or [np.zeros(0, int)])
    if not skip_bad_images and done.any():
        _raise_first_bad(examples, ok, errors, done, bounds)
    n_encoded = 0
    if len(todo):
        if entry is not None:
            entry.mkdir(parents=True, exist_ok=True)
        bs = batch_size or _auto_batch_size(backbone, dev)
        workers = _default_workers(len(todo)) if num_workers is None else num_workers
        ds = _ImageDataset(examples.paths, todo, backbone.preprocess)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=bs, shuffle=False, num_workers=workers, pin_memory=dev.type == "cuda",
            persistent_workers=False,
        )
        filled = np.zeros(n, dtype=bool)
        filled[~np.isin(np.arange(n), todo)] = True
        log.info("embedding %d images with %s on %s (batch %d, %d workers)", len(todo), backbone.id, dev, bs, workers)
        with torch.inference_mode(), progress(len(todo), f"embed {backbone.id}", "img", show_progress) as bar:
            for idx, x, errs in loader:
                idx_np = idx.numpy()
                bad = [j for j, e in enumerate(errs) if e]
                if bad and not skip_bad_images:
                    j = bad[0]
                    raise BadImageError(str(examples.paths[idx_np[j]]), errs[j])
                x = x.to(dev, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    out = backbone.encode_images(x)
                out = out.float().cpu().numpy()
                if vectors is None:
                    vectors = np.zeros((n, out.shape[1]), dtype=np.float32)
                vectors[idx_np] = out
                for j in bad:
                    vectors[idx_np[j]] = 0.0
                ok[idx_np] = [not e for e in errs]
                errors[idx_np] = list(errs)
                filled[idx_np] = True
                n_encoded += len(idx_np)
                bar.update(len(idx_np))
                if entry is not None:
                    _flush_shards(entry, bounds, done, filled, vectors, ok, errors)
        if entry is not None:
            _flush_shards(entry, bounds, done, filled, vectors, ok, errors)
    assert vectors is not None or n == 0
    if vectors is None:
        vectors = np.zeros((0, backbone.embed_dim), dtype=np.float32)
    if entry is not None and not (entry / "meta.json").exists():
        meta = {"key": key, "n": n, "dim": int(vectors.shape[1]), "backbone": backbone.cache_identity(),
                "manifest": examples.manifest_hash(), "precision": _precision(dev), "created": time.time()}
        _atomic_write_text(entry / "meta.json", json.dumps(meta, indent=1))
    err_map = {str(examples.ids[i]): str(errors[i]) for i in np.flatnonzero(~ok)}
    if err_map:
        log.warning("%d of %d images could not be read and are left out (first: %s: %s)", len(err_map), n,
                    *next(iter(err_map.items())))
    return Embeddings(ids=examples.ids, vectors=vectors, ok=ok, errors=err_map, key=key,
                      from_cache=n_encoded == 0, n_encoded=n_encoded, seconds=time.perf_counter() - t0)


def _raise_first_bad(examples, ok, errors, done, bounds) -> None:
    for s, (a, b) in enumerate(bounds):
        if done[s] and not ok[a:b].all():
            i = a + int(np.flatnonzero(~ok[a:b])[0])
            raise BadImageError(str(examples.paths[i]), str(errors[i]))


def _flush_shards(entry, bounds, done, filled, vectors, ok, errors) -> None:
    for s, (a, b) in enumerate(bounds):
        if not done[s] and filled[a:b].all():
            _atomic_savez(_shard_path(entry, s), vectors=vectors[a:b], ok=ok[a:b],
                          errors=np.asarray(errors[a:b], dtype=str))
            done[s] = True


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _default_workers(n_images: int) -> int:
    if n_images < 256:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def clear_cache(cache_dir: str | os.PathLike) -> int:
    """Delete every cached embedding; returns how many entries were removed."""
    root = Path(cache_dir) / "embeddings"
    if not root.is_dir():
        return 0
    entries = [p for p in root.iterdir() if p.is_dir()]
    for p in entries:
        shutil.rmtree(p, ignore_errors=True)
    return len(entries)
