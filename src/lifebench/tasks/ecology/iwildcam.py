"""iWildCam 2020 in its WILDS v2.0 form: camera-trap photos of animal species, split by camera location.

Facts from the ``wilds`` package source (2.0.0: ``wilds/datasets/iwildcam_dataset.py``, ``wilds_dataset.py``) and
the WILDS repository's ``dataset_preprocessing/iwildcam/create_split.py``, which wrote the released files. The
``wilds`` package is not needed here: only its layout and its download URL are used.

* Archive: ``<BASE_URL>/blob/`` (a CodaLab bundle, 11,957,420,032 bytes compressed). WILDS saves it as
  ``<root>/iwildcam_v2.0/archive.tar.gz`` and unpacks it there; no checksum is published (``md5=None``), so the
  download is trusted on first use (its SHA-256 is recorded and checked on every later use).
* Layout: ``<root>/iwildcam_v2.0/`` holds ``RELEASE_v2.0.txt``, ``metadata.csv``, ``categories.csv`` and
  ``train/<filename>``; every split's images are in ``train/``.
* ``metadata.csv``: an unnamed index column, then ``split, location_remapped, location, sequence_remapped,
  seq_id, y, category_id, datetime, filename, image_id``. ``split`` is one of ``train``, ``val`` (OOD
  validation), ``test`` (OOD test: camera locations never seen in train), ``id_val``, ``id_test``.
* Labels: ``y`` numbers the category ids that occur in the data, in sorted order, from 0 (contiguous);
  ``categories.csv`` (``y, category_id, name``) names them and gives ``y = 99999`` to unused categories.
* Groups: WILDS' ``location`` metadata field is ``location_remapped`` (0..n_locations-1).

Protocol (BioBench): train on WILDS ``train``, test on WILDS ``test`` (OOD); logistic probe; macro-F1 over the
classes present in the test labels, as WILDS' ``F1(average="macro")`` does (``labels=torch.unique(y_true)``).
BioBench averaged over every label id up to the largest one seen, counting absent classes as 0.

Labels are the category names from ``categories.csv`` (readable in reports; a name shared by two ``y`` gets
`` (y=<y>)`` appended). Example ids are the ``filename`` values; groups are ``location_remapped`` as strings.
A class present in the test split but not in train (WILDS' preprocessing drops such test images, so the
released data should have none) is kept: no closed-set probe can predict it, so it counts as a miss.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.errors import ConfigError, DataError
from lifebench.tasks.base import Examples, Task
from lifebench.tasks.catalog import Source, TaskSpec, fetch_sources, register
from lifebench.tasks.fixtures import tar_bytes
from lifebench.tasks.folder import read_csv

__all__ = ["ARCHIVE", "BASE_URL", "BLOB", "COMPRESSED_SIZE", "SPEC", "SPLITS", "VERSION_DIR", "download", "load",
           "make_fixture", "missing"]

log = logging.getLogger(__name__)

BASE_URL = "https://worksheets.codalab.org/rest/bundles/0x6313da2b204647e79a14b468131fcd64/contents"
BLOB = "blob/"  # the bundle's URL path under BASE_URL, as WILDS requests it
ARCHIVE = "archive.tar.gz"  # the name WILDS saves the bundle under (no checksum is published for it)
COMPRESSED_SIZE = 11_957_420_032
VERSION_DIR = "iwildcam_v2.0"
RELEASE_FILE = "RELEASE_v2.0.txt"
SPLITS = ("train", "val", "test", "id_val", "id_test")
METADATA_COLUMNS = ("", "split", "location_remapped", "location", "sequence_remapped", "seq_id", "y", "category_id",
                    "datetime", "filename", "image_id")
_REQUIRED = ("split", "location_remapped", "y", "filename")
_UNUSED_Y = 99999


def data_dir(root: Path) -> Path:
    """``root/iwildcam_v2.0`` (WILDS' layout), or ``root`` itself when it is that folder."""
    root = Path(root)
    if not (root / VERSION_DIR).is_dir() and (root / "metadata.csv").is_file():
        return root
    return root / VERSION_DIR


def missing(root: Path) -> str | None:
    d = data_dir(root)
    for name in ("metadata.csv", "categories.csv"):
        if not (d / name).is_file():
            return f"no {VERSION_DIR}/{name} in {root}"
    if not (d / "train").is_dir():
        return f"no {VERSION_DIR}/train/ folder in {root}"
    return None


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Fetch the WILDS archive (about 12 GB; :data:`SPEC`'s source, its SHA-256 recorded on first use) and unpack it
    into ``root/iwildcam_v2.0``. ``base_url``: a mirror serving the same path (``<base_url>/blob/``)."""
    return (SPEC if base_url is None else SPEC.mirrored(base_url)).download(root, show_progress=show_progress)


def _class_names(path: Path) -> dict[int, str]:
    rows = read_csv(path, ("y", "name"), fix="expected y, category_id, name: download the dataset again")
    return {int(r["y"]): r["name"].strip() for r in rows}


def _labels(ys: list[int], names: dict[int, str], path: Path) -> dict[int, str]:
    """``y -> label`` for the ``y`` values used: the category name, made unique where two ``y`` share one."""
    unknown = sorted(set(ys) - set(names))
    if unknown:
        raise DataError(f"iwildcam: y={unknown[0]} in metadata.csv has no row in {path}; download the dataset again")
    used = sorted(set(ys))
    counts = Counter(names[y] for y in used)
    return {y: names[y] if counts[names[y]] == 1 else f"{names[y]} (y={y})" for y in used}


def load(root: Path, *, test_split: str = "test", **_: object) -> Task:
    """WILDS ``train`` -> ``test_split`` (default ``test``, the OOD test split) as a :class:`Task`.

    Only the rows of those two splits are read into the task. Raises :class:`DataError` naming what is missing
    (a file, a column, images listed in ``metadata.csv`` but absent from ``train/``).
    """
    root = Path(root)
    if test_split not in SPLITS or test_split == "train":
        raise ConfigError(f"iwildcam: unknown test split {test_split!r}; choose from "
                          f"{', '.join(s for s in SPLITS if s != 'train')}")
    why = missing(root)
    if why:
        raise DataError(f"iwildcam: {why}; run: lifebench download iwildcam --dir {root.parent}")
    d = data_dir(root)
    rows = read_csv(d / "metadata.csv", _REQUIRED, fix="download the dataset again")
    keep, ys = [], []
    for i, r in enumerate(rows):
        if r["split"] not in SPLITS:
            raise DataError(f"iwildcam: row {i + 2} of {d / 'metadata.csv'} has split {r['split']!r}, not one of "
                            f"{', '.join(SPLITS)}; download the dataset again")
        if r["split"] in ("train", test_split):
            try:
                ys.append(int(r["y"]))
            except ValueError:
                raise DataError(f"iwildcam: row {i + 2} of {d / 'metadata.csv'} has y={r['y']!r}, not an integer; "
                                "download the dataset again") from None
            keep.append(r)
    label_of = _labels(ys, _class_names(d / "categories.csv"), d / "categories.csv")
    filenames = [r["filename"] for r in keep]
    _check_images(d / "train", filenames)

    seen: Counter[str] = Counter()
    ids = []
    for f in filenames:  # a file listed twice keeps both rows, as WILDS does, under distinct ids
        ids.append(f if seen[f] == 0 else f"{f}#{seen[f]}")
        seen[f] += 1
    split = np.array([r["split"] for r in keep])
    examples = Examples(
        ids=np.array(ids, dtype=object),
        paths=np.array([str(d / "train" / f) for f in filenames], dtype=object),
        labels=np.array([label_of[y] for y in ys], dtype=object),
        groups=np.array([r["location_remapped"] for r in keep], dtype=object),
    )
    train_idx, test_idx = np.flatnonzero(split == "train"), np.flatnonzero(split == test_split)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"iwildcam: {d / 'metadata.csv'} has {len(train_idx)} train and {len(test_idx)} "
                        f"{test_split} rows; download the dataset again")
    unseen = sorted(set(examples.labels[test_idx].tolist()) - set(examples.labels[train_idx].tolist()))
    if unseen:
        n = int(np.isin(examples.labels[test_idx], unseen).sum())
        log.warning("iwildcam: %d %s classes (%d images) never occur in train, e.g. %r; no probe can predict them, "
                    "so they count as misses in macro-F1", len(unseen), test_split, n, unseen[0])
    kind = "OOD" if test_split in ("val", "test") else "ID"
    return Task(
        name="iwildcam",
        examples=examples,
        train_idx=train_idx,
        test_idx=test_idx,
        metric="macro_f1",
        protocol="logreg",
        source=str(d.resolve()),
        description="WILDS iWildCam v2.0 camera traps; groups are camera locations (location_remapped)",
        split_source=f"given (WILDS split {test_split!r}, {kind}, used as test)",
        open_set=True,  # WILDS' test splits hold classes that never occur in train: kept, scored as misses
    )


def _check_images(folder: Path, filenames: list[str]) -> None:
    present = {e.name for e in os.scandir(folder)}
    lost = [f for f in dict.fromkeys(filenames) if f not in present and not (folder / f).is_file()]
    if lost:
        shown = ", ".join(lost[:3]) + (", ..." if len(lost) > 3 else "")
        raise DataError(f"iwildcam: {len(lost)} image(s) listed in metadata.csv are missing from {folder}: {shown}; "
                        "download the dataset again")


# Illustrative categories (category_id, name); the last one is unused, so categories.csv gives it y = 99999.
_FIXTURE_CATEGORIES = ((0, "empty"), (2, "tayassu pecari"), (3, "dasyprocta punctata"), (7, "meleagris ocellata"))
_FIXTURE_LOCATIONS = {"train": (10, 23, 40), "id_val": (23,), "id_test": (40,), "val": (88,), "test": (51, 77)}


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """A tiny ``archive.tar.gz`` in the real layout: ``metadata.csv``, ``categories.csv``, ``train/<uuid>.jpg``.

    Three used classes and one unused category; ``per_class`` train images per class at 3 camera locations,
    2 test images per class at 2 other locations (OOD), and one image each in ``val``, ``id_val``, ``id_test``.
    """
    rng = np.random.default_rng(seed)
    used = _FIXTURE_CATEGORIES[:3]
    y_of = {cid: y for y, cid in enumerate(sorted(cid for cid, _ in used))}
    counts = {"train": per_class, "test": 2, "val": 1, "id_val": 1, "id_test": 1}
    rows, images = [], {}
    for split, n in counts.items():
        for k, (cid, _) in enumerate(used):
            if split in ("val", "id_val", "id_test") and k > 0:
                continue
            for i in range(n):
                image_id = str(uuid.UUID(bytes=rng.bytes(16), version=1))
                locs = _FIXTURE_LOCATIONS[split]
                rows.append({"split": split, "location": locs[i % len(locs)],
                             "seq_id": str(uuid.UUID(bytes=rng.bytes(16), version=1)), "y": y_of[cid],
                             "category_id": cid, "filename": f"{image_id}.jpg", "image_id": image_id,
                             "datetime": f"2013-0{1 + int(rng.integers(9))}-1{int(rng.integers(10))} "
                                         f"0{int(rng.integers(10))}:{int(rng.integers(10, 60))}:00.000"})
                arr = rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)
                arr[..., k % 3] = 210  # class-coloured frames, so a probe can learn something
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=90)
                images[f"{image_id}.jpg"] = buf.getvalue()
    locations = sorted({r["location"] for r in rows})
    sequences = sorted({r["seq_id"] for r in rows})
    for r in rows:
        r["location_remapped"] = locations.index(r["location"])
        r["sequence_remapped"] = sequences.index(r["seq_id"])
    rows.sort(key=lambda r: (r["split"], r["location_remapped"], r["sequence_remapped"], r["datetime"]))

    meta = io.StringIO()
    w = csv.writer(meta, lineterminator="\n")
    w.writerow(METADATA_COLUMNS)
    for i, r in enumerate(rows):
        w.writerow([i, *(r[c] for c in METADATA_COLUMNS[1:])])
    cats = io.StringIO()
    w = csv.writer(cats, lineterminator="\n")
    w.writerow(["y", "category_id", "name"])
    for cid, name in sorted(_FIXTURE_CATEGORIES, key=lambda c: y_of.get(c[0], _UNUSED_Y)):
        w.writerow([y_of.get(cid, _UNUSED_Y), cid, name])

    files = {RELEASE_FILE: b"v2.0 (lifebench test fixture)\n", "metadata.csv": meta.getvalue().encode(),
             "categories.csv": cats.getvalue().encode(), **{f"train/{k}": v for k, v in images.items()}}
    return {ARCHIVE: tar_bytes(files)}


SPEC = register(TaskSpec(
    name="iwildcam", display="iWildCam (WILDS)", suite="ecology", modality="camera traps", kingdom="Animalia",
    protocol="logreg", metric="macro_f1", kind="open-set", method="logistic probe, WILDS train -> test (OOD)",
    n_train=None, n_test=42700, source="WILDS iwildcam v2.0", license="see source", size="not recorded", load=load,
    missing=missing, fetch=fetch_sources, fixture=lambda spec, **kw: {BLOB: make_fixture(**kw)[ARCHIVE]},
    base_url=BASE_URL, sources=(Source(BLOB, save_as=ARCHIVE, into=VERSION_DIR),),
    upstream=("samuelstevens/biobench@6376d97 src/biobench/iwildcam/__init__.py", "wilds 2.0.0 wilds/datasets/iwildcam_dataset.py",
              "p-lambda/wilds@4726775 dataset_preprocessing/iwildcam/create_split.py"),
))
