"""Seeded, deterministic train/test splits and class-aware subsamples of a label array.

Every function takes string (or any sortable) labels and returns sorted ``int64`` index arrays into them.
Classes are always visited in sorted order and all randomness comes from one
``numpy.random.default_rng(seed)``, so the same inputs and seed give the same indices on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lifebench.errors import ConfigError

__all__ = [
    "CROSS_FIT_BELOW",
    "DEFAULT_FOLDS",
    "DEFAULT_TEST_SIZE",
    "default_folds",
    "describe_folds",
    "describe_split",
    "make_split",
    "n_test_for",
    "stratified_folds",
    "stratified_split",
    "subsample_per_class",
    "subsample_shares",
    "subsample_total",
]

ArrayLike = np.ndarray | Sequence

DEFAULT_TEST_SIZE = 0.25
"""Test fraction per class of the split made for data that names none."""
DEFAULT_FOLDS = 5
"""Folds of the cross-fitting used by default for small collections (and by the demo)."""
CROSS_FIT_BELOW = 400
"""Collections with fewer images than this and no given split are cross-fitted by default (:func:`default_folds`).

Why 400: a :data:`DEFAULT_TEST_SIZE` split of fewer than 400 images leaves fewer than 100 test images, the size below
which the report warns that a test set is small (:mod:`lifebench.report.caveats`): there one image moves accuracy
by a point or more, and a score of 1.000 on 15 test images says little. Cross-fitting scores every image once, by a
probe fit on the other folds, for five probe fits instead of one; the embeddings, the costly part, are the same."""


def _check_test_size(test_size: float) -> None:
    if isinstance(test_size, bool) or not isinstance(test_size, int | float) or not 0 < test_size < 1:
        raise ConfigError(f"test_size {test_size!r} is not a fraction strictly between 0 and 1; give e.g. 0.25")


def n_test_for(n: int, test_size: float) -> int:
    """Number of test images for a class of ``n`` images.

    ``round(test_size * n)`` (halves round up), at least 1 and at most ``n - 1`` so the class keeps a train
    image; 0 for a class with fewer than 2 images.
    """
    if n < 2:
        return 0
    return min(n - 1, max(1, math.floor(test_size * n + 0.5 + 1e-9)))


def describe_split(test_size: float, seed: int, grouped: bool = False) -> str:
    """The ``Task.split_source`` text for a split made by :func:`stratified_split`."""
    by = " by group" if grouped else ""
    return f"stratified{by} {test_size:.0%} test, seed {seed}"


def stratified_split(
    labels: ArrayLike, test_size: float = 0.25, seed: int = 0, groups: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and test, class by class.

    Without ``groups``, each class of ``n >= 2`` images sends :func:`n_test_for` ``(n, test_size)`` randomly
    chosen images to test; a class with a single image stays in train.

    With ``groups`` (a site, individual, observation...), every group goes wholly to one side. Groups are
    visited in a seeded random order and one joins test when that brings the per-class test counts closer
    (in L1 distance) to the per-class targets above, and never when it would take the last train image of a
    class. With one image per group this gives exactly the ungrouped counts; with large groups the counts
    are as close as this greedy pass gets, and test may even be empty (callers check).

    Returns
    -------
    (train_idx, test_idx):
        Sorted, disjoint ``int64`` arrays that together cover ``range(len(labels))``.
    """
    _check_test_size(test_size)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, y = np.unique(labels, return_inverse=True)
    y = y.reshape(-1)
    test_mask = np.zeros(len(labels), dtype=bool)
    if groups is None:
        for c in range(len(classes)):
            idx = rng.permutation(np.flatnonzero(y == c))
            test_mask[idx[: n_test_for(len(idx), test_size)]] = True
    else:
        groups = np.asarray(groups)
        if len(groups) != len(labels):
            raise ValueError(f"groups has {len(groups)} entries, labels has {len(labels)}")
        test_mask = _group_test_mask(y, len(classes), groups, test_size, rng)
    return np.flatnonzero(~test_mask).astype(np.int64), np.flatnonzero(test_mask).astype(np.int64)


def _group_test_mask(
    y: np.ndarray, n_classes: int, groups: np.ndarray, test_size: float, rng: np.random.Generator
) -> np.ndarray:
    """Greedy group assignment described in :func:`stratified_split`."""
    _, g = np.unique(groups, return_inverse=True)
    g = g.reshape(-1)
    counts = np.zeros((g.max() + 1 if len(g) else 0, n_classes), dtype=np.int64)
    np.add.at(counts, (g, y), 1)
    per_class = counts.sum(axis=0)
    target = np.array([n_test_for(int(n), test_size) for n in per_class], dtype=np.int64)
    cap = np.maximum(per_class - 1, 0)
    taken = np.zeros(n_classes, dtype=np.int64)
    in_test = np.zeros(len(counts), dtype=bool)
    for gi in rng.permutation(len(counts)):
        new = taken + counts[gi]
        if np.any(new > cap):
            continue
        if np.abs(new - target).sum() < np.abs(taken - target).sum():
            in_test[gi] = True
            taken = new
    return in_test[g]


def _check_count(name: str, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"{name} {n!r} is not a positive whole number; give e.g. 5")


def _class_permutations(labels: ArrayLike, seed: int | Sequence[int]) -> list[np.ndarray]:
    """One seeded random permutation of the indices of each class, classes in sorted order."""
    rng = np.random.default_rng(seed)
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    y = y.reshape(-1)
    return [rng.permutation(np.flatnonzero(y == c)) for c in range(int(y.max()) + 1 if len(y) else 0)]


def stratified_folds(labels: ArrayLike, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold number (0..n_folds-1) per example for cross-fitting, stratified by class.

    Each class's images are shuffled and dealt round-robin, starting where the previous class stopped, so
    every fold gets ``floor`` or ``ceil`` of each class's share and fold sizes differ by at most one. A class
    with fewer images than folds is missing from some folds, which is fine: it is always in training.
    """
    _check_count("n_folds", n_folds)
    if n_folds < 2:
        raise ConfigError(f"n_folds {n_folds} must be at least 2; give e.g. 5")
    n = len(np.asarray(labels))
    folds = np.full(n, -1, dtype=np.int64)
    start = 0
    for perm in _class_permutations(labels, seed):
        folds[perm] = (start + np.arange(len(perm))) % n_folds
        start = (start + len(perm)) % n_folds
    return folds


def describe_folds(n_folds: int, seed: int) -> str:
    """The ``Task.split_source`` text for cross-fitting with :func:`stratified_folds`."""
    return f"{n_folds}-fold stratified cross-fitting, seed {seed}"


def default_folds(n_images: int) -> int | None:
    """:data:`DEFAULT_FOLDS` for a collection of ``n_images`` without a given split that is small enough to be
    cross-fitted by default (fewer than :data:`CROSS_FIT_BELOW`), else None (one stratified split)."""
    return DEFAULT_FOLDS if n_images < CROSS_FIT_BELOW else None


def make_split(
    labels: ArrayLike, *, n_folds: int | None = None, test_size: float = DEFAULT_TEST_SIZE, seed: int = 0,
    groups: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """``(train_idx, test_idx, folds, description)`` for data without a given split.

    With ``n_folds``: cross-fitting folds (``train_idx`` and ``test_idx`` then hold every index); otherwise one
    stratified split (by group when ``groups`` is given).
    """
    if n_folds:
        everything = np.arange(len(np.asarray(labels)), dtype=np.int64)
        return everything, everything, stratified_folds(labels, n_folds, seed), describe_folds(n_folds, seed)
    train_idx, test_idx = stratified_split(labels, test_size, seed, groups=groups)
    return train_idx, test_idx, None, describe_split(test_size, seed, grouped=groups is not None)


def subsample_per_class(labels: ArrayLike, n_per_class: int, seed: int = 0) -> np.ndarray:
    """Pick ``n_per_class`` random images of each class (all of a class that has fewer).

    Nested: for one seed, the subsample for a smaller ``n_per_class`` is contained in the one for a larger.
    Returns sorted ``int64`` indices into ``labels``.
    """
    _check_count("n_per_class", n_per_class)
    perms = _class_permutations(labels, seed)
    picked = [p[:n_per_class] for p in perms]
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, dtype=np.int64)


def subsample_total(labels: ArrayLike, n: int, seed: int = 0) -> np.ndarray:
    """Pick ``n`` images in total, spread over the classes as evenly as possible.

    As if dealt round-robin: each round takes one more image of every class that has images left, the
    classes in a seeded random order, so a remainder goes to randomly chosen classes and a small class
    gives its unused share to the others. Per-class counts therefore differ by at most one among classes
    that are not used up. ``n`` at least ``len(labels)`` returns everything. Nested in ``n`` for one seed.
    Returns sorted ``int64`` indices into ``labels``.
    """
    _check_count("n", n)
    perms = _class_permutations(labels, seed)
    sizes = np.array([len(p) for p in perms], dtype=np.int64)
    if n >= sizes.sum():
        return np.arange(int(sizes.sum()), dtype=np.int64)
    # Complete rounds r: the most with sum(min(size, r)) <= n (binary search), then a partial round.
    lo, hi = 0, int(sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(sizes, mid).sum() <= n else (lo, mid - 1)
    quota = np.minimum(sizes, lo)
    order = np.random.default_rng([seed, 1]).permutation(len(perms))
    left = [c for c in order if sizes[c] > lo][: n - int(quota.sum())]
    quota[left] += 1
    picked = [p[:q] for p, q in zip(perms, quota, strict=True)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def subsample_shares(labels: ArrayLike, n: int, seed: int | Sequence[int] = 0) -> np.ndarray:
    """Pick ``n`` images as fixed equal shares of the ``k`` classes: ``n // k`` random images of each, one more
    of each of the last ``n % k`` classes in sorted order; a class with fewer images than its share gives all
    it has, and its shortfall is not passed on to the others.

    This is BioBench's NeWT meaning of ``n_train`` (per task, ``n // 2`` images of label 0 and the rest of label
    1, a label with fewer kept whole), unlike :func:`subsample_total`, which hands a shortfall and the remainder
    to other classes. ``n`` below ``k`` would leave a class without images and raises :class:`ConfigError`.
    Nested in ``n`` for one seed (each share only grows). Returns sorted ``int64`` indices into ``labels``.
    """
    _check_count("n", n)
    perms = _class_permutations(labels, seed)
    k = len(perms)
    if n < k:
        raise ConfigError(f"n {n} is smaller than the {k} classes, so a class would get no image; give at least {k}")
    shares = [n // k + (c >= k - n % k) for c in range(k)]
    picked = [p[:q] for p, q in zip(perms, shares, strict=True)]
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, dtype=np.int64)
