"""The task contract: labelled image references, a train/test split, and one canonical class list.

A task never imports a backbone. It describes data; ``lifebench.features`` turns its images into vectors and a
protocol consumes those vectors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from lifebench.errors import ConfigError, DataError

__all__ = ["BIOCLIP_FOLDS", "KINDS", "POOLINGS", "UNKNOWN", "Examples", "Part", "Question", "Task", "bioclip_support"]

UNKNOWN = "<unknown>"
"""The label stored for an open-set "none of the known classes" prediction (a protocol predicts code -1)."""

POOLINGS = ("max", "mean")
"""How the embeddings of examples sharing a group (frames of a clip, photos of an observation) become one."""

KINDS = ("plain", "parts", "folds", "leave-one-out", "open-set", "multiple-choice")
"""How a task is evaluated (:attr:`Task.kind`); the runner picks one strategy per kind. Pooling is not a kind:
it is an option of either side (``Task.pool_train``, ``Task.pool_test``) that combines with every kind."""


@dataclass(frozen=True, eq=False)
class Examples:
    """Parallel arrays, one entry per image: a stable string id, an image path, a string label, a group.

    ``ids`` are unique and stable across runs (a path relative to the dataset root, or the manifest's id);
    they key the embedding cache rows and the stored predictions. ``groups`` (optional) hold a
    clustering variable such as a site, individual or observation.
    """

    ids: np.ndarray
    paths: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("paths", "labels") + (("groups",) if self.groups is not None else ()):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Examples.{name} has {len(getattr(self, name))} entries, ids has {n}")
        if len(set(self.ids.tolist())) != n:
            raise DataError("example ids are not unique; give each image its own id or path")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> Examples:
        idx = np.asarray(idx)
        return Examples(
            ids=self.ids[idx],
            paths=self.paths[idx],
            labels=self.labels[idx],
            groups=None if self.groups is None else self.groups[idx],
        )

    def manifest_hash(self) -> str:
        """Hash of (id, path, file size, modification time) for every example, in order.

        Any added, removed, renamed or rewritten file changes it, so the embedding cache misses;
        reading the file contents is not needed.
        """
        h = hashlib.sha256()
        for i, p in zip(self.ids.tolist(), self.paths.tolist(), strict=True):
            try:
                st = os.stat(p)
                sig = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                sig = "missing"
            h.update(f"{i}\0{p}\0{sig}\n".encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Part:
    """One fit-and-predict unit of a task that has several: a FishNet trait, a NeWT binary task.

    ``labels`` holds one string label per example of the task (the whole ``examples``, not just this
    part's); ``train_idx`` and ``test_idx`` index into ``examples``. Stored predictions of a part carry
    the part's name, and their ids are ``"<part>/<example id>"`` so that they stay unique across parts.
    """

    name: str
    labels: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray

    @property
    def classes(self) -> tuple[str, ...]:
        rows = np.concatenate([self.train_idx, self.test_idx])
        return tuple(sorted(set(self.labels[rows].tolist())))


@dataclass(frozen=True)
class Question:
    """A multiple-choice question about one image (μ-Bench): its text and its answer options, in order.

    ``captions`` holds, per option, the sentence a contrastive model matches the image against (the dataset's
    caption of that option); None uses the option text itself. The example's label is one of ``options``.
    """

    text: str
    options: tuple[str, ...]
    captions: tuple[str, ...] | None = None


@dataclass(frozen=True, eq=False)
class Task:
    """A labelled image collection with a train/test split.

    ``classes`` is THE label map: sorted class names, built once from the labels of all examples, so
    integer codes mean the same class in every split (the defect of label maps built per folder).
    ``train_idx`` and ``test_idx`` index into ``examples``.
    """

    name: str
    examples: Examples
    train_idx: np.ndarray
    test_idx: np.ndarray
    classes: tuple[str, ...] = field(default=())
    metric: str = "macro_f1"
    protocol: str = "logreg"
    source: str = ""
    description: str = ""
    split_source: str = "given"
    """"given" when the data named its splits, else how lifebench made them (for example "stratified 25%, seed 0")."""
    folds: np.ndarray | None = None
    """Cross-fitting instead of one split: fold number per example. Each fold is predicted by a probe fit on
    the other folds, so every example is a test example once. ``train_idx`` then holds every example and
    ``test_idx`` too. Good for small collections, where one split wastes half the images."""
    parts: tuple[Part, ...] = ()
    """Several fit-and-predict units on the same images (see :class:`Part`); empty for one label per image."""
    pool_train: str | None = None
    pool_test: str | None = None
    """Combine the embeddings of the examples that share ``examples.groups`` into one example ("max" or
    "mean"), on the train or the test side: frames into a clip (KABR, MammalNet), photos into an
    observation (FungiCLEF's test side). The pooled example's label is its members' most common label."""
    leave_one_out: bool = False
    """Every example is predicted from all the others (re-identification); ``train_idx == test_idx``."""
    open_set: bool = False
    """Test labels may be absent from training: FungiCLEF's unknown species, iWildCam's test-only classes (each
    scored as a miss). Otherwise a test class without training images is a data error."""
    row_extras: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]] | None = field(
        default=None, repr=False)
    """``row_extras(y_true, y_pred, train_labels) -> {name: float array}``: per-prediction quantities that
    the task's metric needs beyond the labels (FungiCLEF's costs); stored with the predictions."""
    taxonomy: Mapping[str, Mapping[str, str]] | None = field(default=None, repr=False)
    """Per class: its ranks (``kingdom`` ... ``species``, the epithet) and ``common`` name, where known. Zero-shot
    classifiers build class names from it (:mod:`lifebench.tasks.taxonomy`); taxonomy-aware metrics use it."""
    text_type: str = "asis"
    """How zero-shot names this task's classes unless ``--text-type`` says otherwise (BioCLIP: ``taxon_com`` for
    Rare Species, ``asis`` for Meta-Album and the bird sets)."""
    questions: np.ndarray | None = field(default=None, repr=False)
    """Multiple-choice tasks: per example its :class:`Question` (None where the example is not asked; such rows
    must stay out of ``test_idx``). Zero-shot then picks among each question's own options by their captions, and a
    generative model (:mod:`lifebench.vlm`) answers the lettered question; None: every class is a candidate."""

    def __post_init__(self) -> None:
        if not self.classes:
            object.__setattr__(self, "classes", tuple(sorted(set(self.examples.labels.tolist()))))
        for side in ("pool_train", "pool_test"):
            how = getattr(self, side)
            if how is not None and how not in POOLINGS:
                raise ValueError(f"Task.{side}={how!r}; use one of {POOLINGS} or None")
            if how is not None and self.examples.groups is None:
                raise ValueError(f"Task.{side} needs examples.groups: the clip or observation of each example")
        if self.questions is not None:
            _check_questions(self)

    def evaluation_splits(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(train indices, test indices) pairs to fit and predict: one pair, or one per fold."""
        if self.folds is None:
            return [(np.asarray(self.train_idx), np.asarray(self.test_idx))]
        folds = np.asarray(self.folds)
        return [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in np.unique(folds)]

    def units(self) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """``(part name, labels, train indices, test indices)`` per fit: one per part, per fold, or one."""
        if self.parts:
            return [(p.name, p.labels, np.asarray(p.train_idx), np.asarray(p.test_idx)) for p in self.parts]
        return [("", self.examples.labels, tr, te) for tr, te in self.evaluation_splits()]

    @property
    def kind(self) -> str:
        """How this task is evaluated, one of :data:`KINDS`, read from its fields once so that the runner does not
        test each flag itself.

        A task that sets several of the fields gets the first that applies, in this order: ``questions``
        ("multiple-choice"), ``parts``, ``leave_one_out``, ``open_set`` ("open-set"), ``folds``, else "plain".
        Open set outranks folds because it changes what is scored (test classes without training images are
        allowed), while folds only change how the split is iterated, which :meth:`units` does for every kind. A
        multiple-choice task is multiple choice only under zero-shot or a generative model; a probe scores it as a
        plain task.
        """
        if self.questions is not None:
            return "multiple-choice"
        if self.parts:
            return "parts"
        if self.leave_one_out:
            return "leave-one-out"
        if self.open_set:
            return "open-set"
        return "folds" if self.folds is not None else "plain"

    def with_n_train(self, n: int, seed: int = 0) -> Task:
        """This task with ``n`` training examples, spread over the classes as evenly as possible (seeded,
        nested in ``n``); the test side is unchanged. Pooled training sides draw whole groups (clips).

        ``n`` may be at most the number of training examples (clips when pooled); ``n`` equal to it keeps them all.
        A larger ``n`` raises :class:`ConfigError`: the task would be named ``@n<n>`` but train on fewer.

        Tasks with parts follow BioBench's meaning of ``n_train`` (see :meth:`_parts_with_n_train`). Leave-one-out
        tasks (re-identification) refuse: every image is a query against all the others, so there is no training
        side to shrink (BioBench's Beluga ignores ``n_train`` too); folds refuse as before.
        """
        from lifebench.tasks.split import subsample_total

        if self.leave_one_out:
            raise ConfigError(f"task {self.name!r} is scored leave-one-out (each image is a query against all the "
                              "others), so it has no training set to shrink: run it without --n-train")
        if self.folds is not None:
            raise ConfigError(f"task {self.name!r} uses cross-fitting folds; --n-train needs a task with one "
                              "train/test split")
        if self.parts:
            return self._parts_with_n_train(n, seed)
        train = np.asarray(self.train_idx)
        labels = self.examples.labels[train]
        if self.pool_train is None:
            picked = train[subsample_total(labels, n, seed)]
            available, unit = len(train), "training image"
        else:
            groups = self.examples.groups[train]
            first = np.unique(groups, return_index=True)[1]
            keep = set(groups[first][subsample_total(labels[first], n, seed)].tolist())
            picked = train[np.isin(groups, list(keep))]
            available, unit = len(first), "training clip"
        if n > available:
            raise ConfigError(f"--n-train {n} is too large: task {self.name!r} has {_count(available, unit)}; give "
                              f"--n-train of at most {available}")
        return dataclasses.replace(self, name=f"{self.name}@n{n}", train_idx=picked,
                                   split_source=f"{self.split_source}; {n} training examples, class-balanced, seed {seed}")

    def _parts_with_n_train(self, n: int, seed: int) -> Task:
        """``n`` training images for a task with parts, in BioBench's two meanings.

        * Parts sharing one training set (FishNet's traits): ``n`` images drawn uniformly from it, the same for
          every part, because BioBench's FishNet draws ``n_train`` rows of ``train.csv`` at random
          (``rng.choice(len(dataset), n_train, replace=False)``) for one model of all nine traits; a class balance
          over nine binary traits at once does not exist. A prefix of one seeded permutation, so nested in ``n``.
        * Parts with their own training sets (NeWT's tasks): per part, :func:`~lifebench.tasks.split.subsample_shares`
          (``n // 2`` images of label 0, the rest of label 1, a label with fewer kept whole: BioBench's
          ``newt.sample``), each part with its own seed stream derived from ``seed`` and the part's name.

        ``n`` larger than the largest training set raises :class:`ConfigError` (no part would be subsampled), and so
        does a shared draw that leaves a part with one label (BioBench's single MLP fits anyway; a probe per part
        cannot), naming the part.
        """
        from lifebench.tasks.split import subsample_shares

        trains = [np.asarray(p.train_idx) for p in self.parts]
        most = max(len(t) for t in trains)
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ConfigError(f"--n-train {n!r} is not a positive whole number; give e.g. 16")
        if n > most:
            raise ConfigError(f"--n-train {n} is too large: the largest part of task {self.name!r} has "
                              f"{_count(most, 'training image')}; give --n-train of at most {most}")
        if all(np.array_equal(t, trains[0]) for t in trains[1:]):
            picked = np.sort(trains[0][np.random.default_rng(seed).permutation(len(trains[0]))[:n]])
            parts = tuple(dataclasses.replace(p, train_idx=picked) for p in self.parts)
            how = f"{n} training images drawn uniformly, the same for every part, seed {seed}"
            one = next((p.name for p in parts if n < len(trains[0]) and len(set(p.labels[picked].tolist())) < 2), None)
            if one is not None:  # BioBench's one MLP fits anyway; a probe per part cannot learn from one label
                raise ConfigError(f"--n-train {n} (seed {seed}) leaves part {one!r} of task {self.name!r} with training "
                                  "images of one label only, and a probe needs two: give a larger --n-train")
        else:
            k = max(len(set(p.labels[t].tolist())) for p, t in zip(self.parts, trains, strict=True))
            if n < k:
                raise ConfigError(f"--n-train {n} is too small for task {self.name!r}: each part draws n // {k} "
                                  f"training images of each of its {k} labels; give --n-train of at least {k}")
            parts = tuple(dataclasses.replace(p, train_idx=t[subsample_shares(p.labels[t], n, [seed, _stable(p.name)])])
                          for p, t in zip(self.parts, trains, strict=True))
            picked = np.unique(np.concatenate([p.train_idx for p in parts]))
            how = f"{n} training images per part, equal shares of its labels, seed {seed}"
        return dataclasses.replace(self, name=f"{self.name}@n{n}", train_idx=picked, parts=parts,
                                   split_source=f"{self.split_source}; {how}")

    def with_shots(self, k: int, fold: int = 0) -> Task:
        """This task as a ``k``-shot problem: ``k`` training images per class (the support set), drawn as
        BioCLIP draws fold ``fold`` (:func:`bioclip_support`); the test side keeps the rest of the test images
        (support images never score).

        With ``train_idx == test_idx`` (every image in both, as in BioCLIP's few-shot protocol), the queries
        are every image outside the support set.

        Every class with training images must have at least ``k`` of them, and a class whose test images are all
        training images too (the shared case above) at least ``k + 1`` of those, so that one stays a query;
        otherwise :class:`ConfigError` names the class that limits ``k`` and the largest ``k`` that works.
        (BioCLIP accepts a class with exactly ``k`` images as a centroid without queries; no class of its suite
        is that small for k <= 5 except every class of Birds 525's test split at k = 5, where BioCLIP's
        ``few_shot.py`` is left with no query at all and cannot run either.)
        """
        if self.parts or self.leave_one_out or self.folds is not None or self.pool_train:
            raise ConfigError(f"task {self.name!r} has several parts, leave-one-out, folds or pooled clips; "
                              "--shots needs a task with one label per image")
        self._check_shots(k)
        train = np.asarray(self.train_idx)
        support = np.sort(train[bioclip_support(self.examples.labels[train], k, fold)])
        test = np.setdiff1d(np.asarray(self.test_idx), support)
        return dataclasses.replace(self, name=f"{self.name}@{k}shot", train_idx=support, test_idx=test,
                                   split_source=f"{k}-shot support per class, BioCLIP's draw of fold {fold}; "
                                                "queries: the other images")

    def _check_shots(self, k: int) -> None:
        """Raise :class:`ConfigError` unless every class can give ``k`` support images and keep a query."""
        train, test = np.asarray(self.train_idx), np.asarray(self.test_idx)
        names, codes = np.unique(self.examples.labels, return_inverse=True)
        codes = codes.reshape(-1)
        in_train = np.zeros(len(codes), dtype=bool)
        in_train[train] = True
        n_train = np.bincount(codes[train], minlength=len(names))
        n_test = np.bincount(codes[test], minlength=len(names))
        n_test_shared = np.bincount(codes[test[in_train[test]]], minlength=len(names))
        shared = (n_test > 0) & (n_test_shared == n_test)  # every query candidate could be drawn as support
        limit = np.where(shared, np.minimum(n_train, n_test - 1), n_train)
        limit = np.where(n_train > 0, limit, np.iinfo(np.int64).max)  # classes without training images: no support
        worst = int(np.argmin(limit))
        if k <= limit[worst]:
            return
        c, most = str(names[worst]), int(limit[worst])
        if not shared[worst]:
            has = f"has only {_count(n_train[worst], 'training image')}"
        elif n_test[worst] == n_train[worst]:
            has = f"has only {_count(n_train[worst], 'image')}, and k-shot needs k support images plus at least one query"
        else:
            has = (f"has only {_count(n_test[worst], 'test image')}, all of them training images too, and k-shot needs "
                   "at least one left as a query")
        fix = f"give --shots of at most {most}" if most >= 1 else "add images to it or remove the class"
        raise ConfigError(f"--shots {k} is too large: class {c!r} of task {self.name!r} {has}; {fix}")

    @property
    def train(self) -> Examples:
        return self.examples.subset(self.train_idx)

    @property
    def test(self) -> Examples:
        return self.examples.subset(self.test_idx)

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Map string labels to integer codes through the canonical class list."""
        index = {c: i for i, c in enumerate(self.classes)}
        try:
            return np.fromiter((index[lab] for lab in labels.tolist()), dtype=np.int64, count=len(labels))
        except KeyError as e:
            raise DataError(f"label {e.args[0]!r} is not one of the task's classes") from None

    def manifest_hash(self) -> str:
        """Hash of the examples, the split and the class list: changes whenever the task's data does."""
        h = hashlib.sha256(self.examples.manifest_hash().encode())
        h.update(np.asarray(self.train_idx, dtype=np.int64).tobytes())
        h.update(np.asarray(self.test_idx, dtype=np.int64).tobytes())
        h.update("\0".join(self.classes).encode())
        if self.folds is not None:
            h.update(b"folds")
            h.update(np.asarray(self.folds, dtype=np.int64).tobytes())
        for part in self.parts:
            h.update(f"part\0{part.name}\0".encode())
            h.update("\0".join(part.labels.tolist()).encode())
            h.update(np.asarray(part.train_idx, dtype=np.int64).tobytes())
            h.update(np.asarray(part.test_idx, dtype=np.int64).tobytes())
        h.update(f"{self.pool_train}|{self.pool_test}|{self.leave_one_out}|{self.open_set}".encode())
        if self.taxonomy:
            h.update(repr(sorted((c, sorted(t.items())) for c, t in self.taxonomy.items())).encode())
            h.update(self.text_type.encode())
        if self.examples.groups is not None and (self.pool_train or self.pool_test):
            h.update("\0".join(map(str, self.examples.groups.tolist())).encode())
        if self.questions is not None:
            h.update(b"questions")
            for i in np.asarray(self.test_idx).tolist():
                q = self.questions[i]
                h.update(repr((self.examples.labels[i], q.text, q.options, q.captions)).encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        train_labels = self.examples.labels[self.train_idx]
        test_labels = self.examples.labels[self.test_idx]
        return {
            "name": self.name,
            "n_images": len(self.examples),
            "n_train": len(self.train_idx),
            "n_test": len(self.test_idx),
            "n_classes": len(self.classes),
            "counts": {c: int((self.examples.labels == c).sum()) for c in self.classes},
            "train_counts": {c: int((train_labels == c).sum()) for c in self.classes},
            "test_counts": {c: int((test_labels == c).sum()) for c in self.classes},
            "metric": self.metric,
            "split": self.split_source,
            "source": self.source,
        }


def _stable(name: str) -> int:
    """A number from a name that is the same in every process (``hash`` of a str is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


BIOCLIP_FOLDS = 5
"""Folds per shot count in BioCLIP's few-shot run (``eval_few_shot.sh``: ``--nfold 5 --kshot_list 1 5``)."""


def bioclip_support(labels: np.ndarray, k: int, fold: int) -> np.ndarray:
    """Positions of the ``k``-shot support set of fold ``fold`` in ``labels``, drawn exactly as BioCLIP draws it.

    BioCLIP (Imageomics/bioclip @ 4ea3247, ``src/evaluation/few_shot.py``, ``split``) keeps, per class, the list
    of its images in data order (classes in order of first appearance); each fold calls ``random.seed(fold)``
    and then ``random.shuffle``s every class's list in that order, in place, and takes the first ``k`` of each.
    Because the shuffles are in place and the lists are shared by all folds and shot counts of one run, fold
    ``f`` of ``k`` shots sees the lists after every earlier shuffle of its run: BioCLIP's published run is
    ``--kshot_list 1 5 --nfold 5``, so the draw for ``k > 1`` replays the five 1-shot folds (seeds 0-4) first,
    then seeds ``0 .. fold``; ``k = 1`` replays seeds ``0 .. fold``. Python's ``random`` is used as BioCLIP uses
    it, so equal data order gives the same support images.
    """
    order: dict[str, list[int]] = {}
    for i, label in enumerate(np.asarray(labels).tolist()):
        order.setdefault(label, []).append(i)
    members = list(order.values())
    seeds = (list(range(BIOCLIP_FOLDS)) if k > 1 else []) + list(range(fold + 1))
    for seed in seeds:
        rng = random.Random(seed)
        for m in members:
            rng.shuffle(m)
    return np.array([i for m in members for i in m[:k]], dtype=np.int64)


def _count(n: int, what: str) -> str:
    """``"1 image"``, ``"3 images"``."""
    return f"{int(n)} {what}{'' if int(n) == 1 else 's'}"


def _check_questions(task: Task) -> None:
    """Every test example of a multiple-choice task has a question whose options include its label."""
    if len(task.questions) != len(task.examples):
        raise ValueError(f"Task.questions has {len(task.questions)} entries, examples has {len(task.examples)}")
    for i in np.asarray(task.test_idx).tolist():
        q, eid = task.questions[i], task.examples.ids[i]
        if q is None:
            raise DataError(f"task {task.name!r}: test example {eid} has no question; leave it out of the test split")
        if not q.options:
            raise DataError(f"task {task.name!r}: the question of example {eid} has no options; a multiple-choice "
                            "question needs at least one: fix or remove that row")
        if q.captions is not None and len(q.captions) != len(q.options):
            raise DataError(f"task {task.name!r}: example {eid} has {len(q.options)} options but {len(q.captions)} "
                            "captions; give one caption per option (or none)")
        if task.examples.labels[i] not in q.options:
            raise DataError(f"task {task.name!r}: the answer {task.examples.labels[i]!r} of example {eid} is not one "
                            f"of its options {list(q.options)}; fix that row")
