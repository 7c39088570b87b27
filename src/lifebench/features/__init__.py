"""The ONLY place where images (and class texts) become embeddings.

Three modules, one job each:

* :mod:`~lifebench.features.datapath`: files to pixels (decoding, resampling, batching, worker processes; on CUDA,
  nvJPEG and on-device resizing), using the backbone's :class:`~lifebench.backbones.base.Preprocess` geometry;
* :mod:`~lifebench.features.encode`: pixels to vectors (batch size, precision, compile, host copies) and the cache key;
* :mod:`~lifebench.features.cache`: the on-disk embedding cache for image and text vectors.
"""

from lifebench.features.cache import EmbeddingCache
from lifebench.features.encode import (
    CACHE_FORMAT,
    DEFAULT_SHARD_ROWS,
    Embeddings,
    auto_batch_size,
    cached_embeddings,
    embed,
    embed_texts,
    embedding_key,
    make_encoder,
    resolve_device,
    zero_shot_weights,
)

__all__ = ["CACHE_FORMAT", "DEFAULT_SHARD_ROWS", "EmbeddingCache", "Embeddings", "auto_batch_size",
           "cached_embeddings", "embed", "embed_texts", "embedding_key", "make_encoder", "resolve_device",
           "zero_shot_weights"]
