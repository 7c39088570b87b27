"""FungiCLEF 2023 on the Danish Fungi 300px images: open-set species classification per observation.

* Source: :data:`BASE_URL` (Danish Fungi dataset site, Picek et al. 2022) serves ``DF20-300px.tar.gz`` (train
  images, about 6.5 GB), ``DF21_300px.tar.gz`` (validation and public-test images, about 2.5 GB),
  ``FungiCLEF2023_train_metadata_PRODUCTION.csv``, ``FungiCLEF2023_val_metadata_PRODUCTION.csv`` and
  ``poison_status_list.csv``. No checksums are published: each file's SHA-256 is recorded on first download
  and checked on every later use (trust on first use). The poison list is fetched with the data, never at import
  (BioBench fetched it over HTTP whenever its module was imported).
* Layout: ``<root>/DF20_300/<image>``, ``<root>/DF21_300/<image>``, the two metadata CSVs and
  ``poison_status_list.csv`` in ``<root>``; the archives are kept in ``<root>/.downloads``.
* Metadata columns used: ``image_path`` (a file name in ``DF20_300/`` or ``DF21_300/``), ``class_id`` (an
  integer; -1 marks an observation of a species outside the 1,604 training species) and ``observationID``
  (several photos of one fungus). The train CSV writes names as ``*.JPG`` while ``DF20_300/`` holds ``*.jpg``:
  a name that is not found as written is looked for in lower case, as BioBench did.
* Poison list: columns ``class_id`` and ``poisonous`` (1 = poisonous), read by class id as the official FungiCLEF
  2023 evaluator reads it.
* Split (given): DF20 train images (image-level) -> DF21 validation images, mean-pooled per ``observationID``
  (one test row per observation, labelled with the observation's class).
* Protocol: ``openset``: SimpleShot plus a Mahalanobis-distance detector that predicts "unknown" beyond the 95th
  percentile of the training examples' distances (BioBench's ``MahalanobisOpenSetClassifier``).
* Metric: ``fungiclef_score``, the normalised user-focused loss of FungiCLEF 2023 as BioBench reports it,
  ``1 - sum(cost) / sum(worst)`` over the per-observation ``cost`` and ``worst`` that :func:`user_loss_rows`
  returns (equal to BioBench's ``user_loss_score_normalized``).

Labels are the class ids as strings (``"-1"`` for the unknown species). An observation whose class is not among
the training classes counts as "unknown" truth; "the training classes" are those of the whole DF20 training
set, also under ``--n-train`` (a species left out of the subsample is still known, as in BioBench's score).
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.errors import DataError
from lifebench.tasks.base import UNKNOWN, Examples, Task
from lifebench.tasks.catalog import Source, TaskSpec, fetch_sources, register
from lifebench.tasks.fixtures import tar_bytes
from lifebench.tasks.folder import read_csv

__all__ = ["ARCHIVES", "BASE_URL", "POISON_CSV", "TRAIN_CSV", "VAL_CSV", "download", "load", "make_fixture",
           "missing", "user_loss_rows"]

log = logging.getLogger(__name__)

BASE_URL = "http://ptak.felk.cvut.cz/plants/DanishFungiDataset"
ARCHIVES = {"DF20-300px.tar.gz": "DF20_300", "DF21_300px.tar.gz": "DF21_300"}  # archive -> folder it unpacks to
TRAIN_CSV = "FungiCLEF2023_train_metadata_PRODUCTION.csv"
VAL_CSV = "FungiCLEF2023_val_metadata_PRODUCTION.csv"
POISON_CSV = "poison_status_list.csv"
METADATA_COLUMNS = ("observationID", "image_path", "class_id")
POISON_COLUMNS = ("class_id", "poisonous")
UNKNOWN_CLASS_ID = -1

# FungiCLEF 2023 costs
COST_UNKNOWN_AS_KNOWN = 10.0
COST_KNOWN_AS_UNKNOWN = 0.1
COST_WRONG_KNOWN = 1.0
COST_POISONOUS_AS_EDIBLE = 100.0  # PSC
COST_EDIBLE_AS_POISONOUS = 1.0  # ESC


def missing(root: Path) -> str | None:
    root = Path(root)
    for folder in ARCHIVES.values():
        if not (root / folder).is_dir():
            return f"no {folder}/ folder in {root}"
    for name in (TRAIN_CSV, VAL_CSV, POISON_CSV):
        if not (root / name).is_file():
            return f"no {name} in {root}"
    return None


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Fetch the two image archives (about 9 GB), the metadata CSVs and the poison list (:data:`SPEC`'s sources) into
    ``root``. No checksums are published, so each file's SHA-256 is recorded on first download and checked
    afterwards. ``base_url``: a mirror serving the same file names."""
    return (SPEC if base_url is None else SPEC.mirrored(base_url)).download(root, show_progress=show_progress)


def _fix(root: Path) -> str:
    return f"run: lifebench download fungiclef --dir {Path(root).parent}"


def _read_csv(path: Path, required: Iterable[str], root: Path) -> list[dict[str, str]]:
    return read_csv(path, tuple(required), fix=_fix(root))


def _class_id(value: str, path: Path, row: int, root: Path) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise DataError(f"fungiclef: row {row} of {path} has class_id={value!r}, not an integer; {_fix(root)}")
    return int(number)


def _poisonous(path: Path, root: Path) -> frozenset[str]:
    """Labels (class ids as strings) that the poison list marks poisonous (``poisonous == 1``)."""
    out = set()
    for i, r in enumerate(_read_csv(path, POISON_COLUMNS, root)):
        flag = r["poisonous"].strip().lower()
        if flag in ("1", "1.0", "true"):
            out.add(str(_class_id(r["class_id"], path, i + 2, root)))
        elif flag not in ("0", "0.0", "false", ""):
            raise DataError(f"fungiclef: row {i + 2} of {path} has poisonous={r['poisonous']!r}, not 0 or 1; "
                            f"{_fix(root)}")
    return frozenset(out)


def _resolve(folder: Path, names: list[str], csv_path: Path, root: Path) -> list[str]:
    """File names as found in ``folder``: as written, else in lower case (the DF20 ``.JPG`` vs ``.jpg`` quirk)."""
    present = {e.name for e in os.scandir(folder)}
    found, lost = [], []
    for name in names:
        if name in present or (os.sep in name and (folder / name).is_file()):
            found.append(name)
        elif name.lower() in present or (os.sep in name and (folder / name.lower()).is_file()):
            found.append(name.lower())
        else:
            lost.append(name)
    if lost:
        shown = ", ".join(dict.fromkeys(lost[:3])) + (", ..." if len(lost) > 3 else "")
        raise DataError(f"fungiclef: {len(lost)} image(s) listed in {csv_path.name} are missing from {folder}: "
                        f"{shown}; download the dataset again ({_fix(root)})")
    return found


def user_loss_rows(y_true: np.ndarray, y_pred: np.ndarray, train_labels: Iterable[str], *,
                   poisonous: Iterable[str], known: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Per test row (observation): FungiCLEF's ``cost`` and the ``worst`` cost it could have had.

    ``1 - sum(cost) / sum(worst)`` equals BioBench's ``user_loss_score_normalized``: ``cost`` is the
    classification error with unknown (10 for an unknown observation predicted as a known class, 0.1 for a known
    one predicted unknown, 1 for a wrong known class) plus the poisonous/edible confusion cost (100 for a
    poisonous species predicted edible, 1 for an edible one predicted poisonous); ``worst`` is 10 (truth unknown)
    or 1, plus 100 (truth poisonous) or 1. The truth is unknown when its label is not among ``known`` (default:
    ``train_labels``); a prediction is unknown when it is :data:`~lifebench.tasks.base.UNKNOWN`, and counts as
    edible.

    :func:`load` binds ``known`` to the task's whole training class set, so that ``--n-train`` (which shows the
    probe fewer species) does not turn a species the probe never saw into "unknown" truth: BioBench scores with
    the metadata's class ids, where unknown is ``-1``, whatever its probe was trained on.
    """
    y_true = np.asarray(y_true, dtype=object).astype(str)
    y_pred = np.asarray(y_pred, dtype=object).astype(str)
    classes = train_labels if known is None else known
    is_known = np.isin(y_true, np.asarray(sorted(set(map(str, classes))), dtype=str))
    pred_unknown = y_pred == UNKNOWN
    ce = np.where(~is_known, np.where(pred_unknown, 0.0, COST_UNKNOWN_AS_KNOWN),
                  np.where(pred_unknown, COST_KNOWN_AS_UNKNOWN, np.where(y_pred != y_true, COST_WRONG_KNOWN, 0.0)))
    poison = np.asarray(sorted(set(map(str, poisonous))), dtype=str)
    true_p, pred_p = np.isin(y_true, poison), np.isin(y_pred, poison) & ~pred_unknown
    psc = np.where(true_p & ~pred_p, COST_POISONOUS_AS_EDIBLE, 0.0) + np.where(~true_p & pred_p,
                                                                                COST_EDIBLE_AS_POISONOUS, 0.0)
    worst = (np.where(is_known, 1.0, COST_UNKNOWN_AS_KNOWN)
             + np.where(true_p, COST_POISONOUS_AS_EDIBLE, COST_EDIBLE_AS_POISONOUS))
    return {"cost": ce + psc, "worst": worst}


def load(root: Path, **_: object) -> Task:
    """DF20 train images -> DF21 validation observations (mean-pooled), open set, as a :class:`Task`.

    Raises :class:`DataError` naming what is missing or malformed (a folder, a CSV or a column, an image the
    metadata lists, the poison list) and how to get it.
    """
    root = Path(root)
    why = missing(root)
    if why:
        raise DataError(f"fungiclef: {why}; {_fix(root)}")
    poisonous = _poisonous(root / POISON_CSV, root)
    ids, paths, labels, groups, split = [], [], [], [], []
    for csv_name, folder, side in ((TRAIN_CSV, "DF20_300", "train"), (VAL_CSV, "DF21_300", "test")):
        path = root / csv_name
        required = ("image_path", "class_id") if side == "train" else ("image_path", "class_id", "observationID")
        rows = _read_csv(path, required, root)
        cids = [_class_id(r["class_id"], path, i + 2, root) for i, r in enumerate(rows)]
        if side == "train":
            n_unknown = sum(c == UNKNOWN_CLASS_ID for c in cids)
            if n_unknown:
                log.warning("fungiclef: %d rows of %s have class_id -1 (unknown species); they are not trained on",
                            n_unknown, csv_name)
                rows = [r for r, c in zip(rows, cids, strict=True) if c != UNKNOWN_CLASS_ID]
                cids = [c for c in cids if c != UNKNOWN_CLASS_ID]
        if not rows:
            raise DataError(f"fungiclef: {path} lists no images; {_fix(root)}")
        names = _resolve(root / folder, [r["image_path"].strip() for r in rows], path, root)
        seen: Counter[str] = Counter()
        for r, c, name in zip(rows, cids, names, strict=True):
            rel = f"{folder}/{name}"
            ids.append(rel if seen[rel] == 0 else f"{rel}#{seen[rel]}")  # a file listed twice keeps both rows
            seen[rel] += 1
            paths.append(str(root / folder / name))
            labels.append(str(c))
            obs = (r.get("observationID") or "").strip()
            groups.append(obs if obs else ids[-1])  # a train row without an observation is its own group
            split.append(side)
    examples = Examples(ids=np.array(ids, dtype=object), paths=np.array(paths, dtype=object),
                        labels=np.array(labels, dtype=object), groups=np.array(groups, dtype=object))
    split_arr = np.array(split)
    train_idx, test_idx = np.flatnonzero(split_arr == "train"), np.flatnonzero(split_arr == "test")
    train_classes = set(examples.labels[train_idx].tolist())
    test_labels = examples.labels[test_idx]
    n_unknown = len(set(examples.groups[test_idx][~np.isin(test_labels, list(train_classes))].tolist()))
    log.info("fungiclef: %d train images (%d classes), %d val images in %d observations (%d of unknown species)",
             len(train_idx), len(train_classes), len(test_idx), len(set(examples.groups[test_idx].tolist())),
             n_unknown)
    return Task(
        name="fungiclef",
        examples=examples,
        train_idx=train_idx,
        test_idx=test_idx,
        metric="fungiclef_score",
        protocol="openset",
        source=str(root.resolve()),
        description="Danish Fungi DF20 (train) / DF21 (val) 300px, FungiCLEF 2023 metadata; open set, test "
                    "rows are observations (mean of their photos' embeddings)",
        split_source="given (DF20 train images -> DF21 val, pooled per observationID)",
        pool_train=None,
        pool_test="mean",
        open_set=True,
        row_extras=functools.partial(user_loss_rows, poisonous=poisonous, known=frozenset(train_classes)),
    )


# Fixture: (observationID, class_id, photos). Classes 0-2 are trained on; 2 is poisonous; -1 is the unknown species.
_FIXTURE_VAL = (("3051873471", 0, 2), ("3052044122", 1, 3), ("3052103583", 2, 2), ("3053005790", -1, 3),
                ("3053127314", 0, 3), ("3054449217", 1, 2))
_FIXTURE_COLOURS = {0: (220, 40, 40), 1: (40, 200, 40), 2: (40, 40, 220), -1: (235, 235, 235)}
_FIXTURE_POISONOUS = {0: 0, 1: 0, 2: 1, 3: 0}


def _jpeg(rng: np.random.Generator, colour: tuple[int, int, int]) -> bytes:
    arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    arr = (arr * 0.25 + np.asarray(colour) * 0.75).astype(np.uint8)  # class-coloured, so a probe can learn
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _csv(header: Iterable[str], rows: Iterable[Iterable[object]]) -> bytes:
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return text.getvalue().encode()


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """Tiny files in the real layout, by name: the two archives, the two metadata CSVs and the poison list.

    Train: ``per_class`` photos of classes 0, 1, 2 (2 poisonous), named ``*.JPG`` in the CSV but stored as
    ``*.jpg`` in ``DF20_300/`` (the real quirk). Val: 6 observations of 2-3 photos each, one of them of the unknown
    species (class_id -1) and one of the poisonous species.
    """
    rng = np.random.default_rng(seed)
    train_rows, train_files = [], {}
    for c in (0, 1, 2):
        for i in range(per_class):
            obs = str(2237851000 + 10 * c + i)
            name = f"{obs}-{75264 + 100 * c + i}.JPG"
            train_rows.append((obs, name, c))
            train_files[f"DF20_300/{name.lower()}"] = _jpeg(rng, _FIXTURE_COLOURS[c])
    val_rows, val_files = [], {}
    for obs, c, photos in _FIXTURE_VAL:
        for p in range(photos):
            name = f"{p}-{obs}.JPG"
            val_rows.append((obs, name, c))
            val_files[f"DF21_300/{name}"] = _jpeg(rng, _FIXTURE_COLOURS[c])
    return {
        "DF20-300px.tar.gz": tar_bytes(train_files),
        "DF21_300px.tar.gz": tar_bytes(val_files),
        TRAIN_CSV: _csv(METADATA_COLUMNS, train_rows),
        VAL_CSV: _csv(METADATA_COLUMNS, val_rows),
        POISON_CSV: _csv(POISON_COLUMNS, sorted(_FIXTURE_POISONOUS.items())),
    }


SPEC = register(TaskSpec(
    name="fungiclef", display="FungiCLEF", suite="ecology", modality="in-situ photos", kingdom="Fungi",
    protocol="openset", metric="fungiclef_score", kind="open-set",
    method="open-set SimpleShot + Mahalanobis, per observation", n_train=295938, n_test=60832,
    source="Danish Fungi DF20/DF21 300px (FungiCLEF 2023 metadata)",
    license="BSD per the DF20 repository; non-commercial research use only", size="about 9 GB", load=load,
    missing=missing, fetch=fetch_sources, fixture=lambda spec, **kw: make_fixture(**kw), base_url=BASE_URL,
    sources=(*(Source(name) for name in ARCHIVES), *(Source(name, unpack=False) for name in (TRAIN_CSV, VAL_CSV,
                                                                                              POISON_CSV))),
    upstream=("samuelstevens/biobench@6376d97 src/biobench/fungiclef/__init__.py, metrics.py",
              "BohemianVRA/FGVC-Competitions@ecb583b FungiCLEF2023/evaluate.py"),
))
