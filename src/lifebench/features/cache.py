"""The on-disk embedding cache: one class for image and text embeddings, and no model code.

Layout under the cache folder::

    embeddings/<key>/shard-00000.npz ...  vectors (rows, D) float32, ok (rows,) bool, errors (rows,) str;
                                          each written to a temporary file and renamed, so a shard on disk is whole
    embeddings/<key>/meta.json            written last, when every shard is present: marks the entry complete
    texts/<key>.npy                       text-tower vectors of one list of strings, written atomically

Why a class of its own: the encoding loop (:mod:`lifebench.features.encode`) should only turn pixels into vectors.
Keeping every read, write and validity rule of the cache here means a killed run's rule ("a shard on disk is whole,
an unreadable one is recomputed, an entry is complete only with its meta.json") is written once, for images and
texts alike, and a reader without the model (``cached``) applies the same rules as the writer.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import numpy as np

from lifebench.fsutil import atomic_write

__all__ = ["EmbeddingCache", "ImageEntry"]

log = logging.getLogger(__name__)


def _savez(f, arrays: dict[str, np.ndarray]) -> None:
    np.savez(f, **arrays)


class ImageEntry:
    """One image-embedding entry: ``n`` rows split into shards of ``shard_rows``, filled in any order.

    The entry keeps the arrays being filled; :meth:`add` records rows as they arrive and writes each shard the
    moment all its rows are there, so a kill loses at most the shards in flight.
    """

    def __init__(self, folder: Path | None, n: int, shard_rows: int) -> None:
        self.folder = folder
        self.n = n
        n_shards = max(1, -(-n // shard_rows))
        self.bounds = [(s * shard_rows, min(n, (s + 1) * shard_rows)) for s in range(n_shards)]
        self.vectors: np.ndarray | None = None
        self.ok = np.zeros(n, dtype=bool)
        self.errors = np.full(n, "", dtype=object)
        self.done = np.zeros(n_shards, dtype=bool)
        self._filled = np.zeros(n, dtype=bool)

    def _shard(self, s: int) -> Path:
        assert self.folder is not None
        return self.folder / f"shard-{s:05d}.npz"

    def _ensure(self, dim: int) -> np.ndarray:
        if self.vectors is None:
            self.vectors = np.zeros((self.n, dim), dtype=np.float32)
        return self.vectors

    def load(self) -> None:
        """Read every whole shard already on disk; an unreadable or wrong-sized one is deleted (recomputed)."""
        if self.folder is None or not self.folder.is_dir():
            return
        for s, (a, b) in enumerate(self.bounds):
            path = self._shard(s)
            if not path.exists():
                continue
            try:
                with np.load(path, allow_pickle=False) as z:
                    vectors, ok, errors = z["vectors"], z["ok"], z["errors"]
                if not len(vectors) == len(ok) == len(errors) == b - a:
                    raise ValueError(f"{len(vectors)} rows, expected {b - a}")
            except Exception as e:  # noqa: BLE001 - any unreadable shard is recomputed
                log.warning("discarding unreadable cache shard %s (%s)", path, e)
                path.unlink(missing_ok=True)
                continue
            self._ensure(vectors.shape[1])[a:b] = vectors
            self.ok[a:b], self.errors[a:b] = ok, errors
            self._filled[a:b] = True
            self.done[s] = True

    def todo(self) -> np.ndarray:
        """Row indices not loaded from disk, in order."""
        return np.flatnonzero(~self._filled)

    def first_bad_loaded(self) -> int | None:
        """Index of the first unreadable image among the loaded shards, else None."""
        for s, (a, b) in enumerate(self.bounds):
            if self.done[s] and not self.ok[a:b].all():
                return a + int(np.flatnonzero(~self.ok[a:b])[0])
        return None

    def add(self, idx: np.ndarray, vectors: np.ndarray, errors: list[str]) -> None:
        """Record encoded rows (rows whose image failed get a zero vector) and write every shard now complete."""
        out = self._ensure(vectors.shape[1])
        out[idx] = vectors
        bad = np.array([bool(e) for e in errors], dtype=bool)
        out[idx[bad]] = 0.0
        self.ok[idx] = ~bad
        self.errors[idx] = errors
        self._filled[idx] = True
        self.flush()

    def flush(self) -> None:
        """Write each complete shard not yet on disk (the folder is made on the first write)."""
        if self.folder is None or self.vectors is None:
            return
        for s, (a, b) in enumerate(self.bounds):
            if not self.done[s] and self._filled[a:b].all():
                self.folder.mkdir(parents=True, exist_ok=True)
                shard = {"vectors": self.vectors[a:b], "ok": self.ok[a:b],
                         "errors": np.asarray(self.errors[a:b], dtype=str)}
                atomic_write(self._shard(s), functools.partial(_savez, arrays=shard))
                self.done[s] = True

    def complete(self, meta: dict) -> None:
        """Mark the entry complete by writing ``meta.json`` last (only once every shard is on disk)."""
        if self.folder is None or not self.done.all() or (self.folder / "meta.json").exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


class EmbeddingCache:
    """The embedding cache under one folder; ``EmbeddingCache(None)`` caches nothing (every method is a no-op)."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = None if root is None else Path(root)

    def image_entry(self, key: str, n: int, shard_rows: int) -> ImageEntry:
        """The entry for ``key`` with whatever whole shards are already on disk loaded."""
        entry = ImageEntry(None if self.root is None else self.root / "embeddings" / key, n, shard_rows)
        entry.load()
        return entry

    def cached_images(self, key: str, n: int, manifest: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(vectors, ok)`` of a complete entry made for ``n`` examples with manifest hash ``manifest``, else None.

        For readers without the model (reports that re-fit on stored embeddings)."""
        if self.root is None:
            return None
        folder = self.root / "embeddings" / key
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta.get("n") != n or meta.get("manifest") != manifest:
            return None
        vectors, ok = [], []
        for shard in sorted(folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    vectors.append(z["vectors"])
                    ok.append(z["ok"])
            except (OSError, ValueError, KeyError):
                return None
        if not vectors or sum(len(v) for v in vectors) != n:
            return None
        return np.concatenate(vectors), np.concatenate(ok)

    def _text_path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / "texts" / f"{key}.npy"

    def texts(self, key: str) -> np.ndarray | None:
        """Cached text vectors for ``key``, or None (an unreadable file counts as missing and is recomputed)."""
        path = self._text_path(key)
        if path is None or not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            log.warning("discarding unreadable text cache %s (%s)", path, e)
            path.unlink(missing_ok=True)
            return None

    def save_texts(self, key: str, vectors: np.ndarray) -> None:
        path = self._text_path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, functools.partial(np.save, arr=vectors))
