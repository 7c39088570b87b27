"""The eight Meta-Album Mini sets of BioCLIP's species suite, one module for all of them.

Meta-Album (Ullah et al., NeurIPS 2022 Datasets and Benchmarks; meta-album.github.io) formats 40 image datasets
uniformly, in Micro, Mini and Extended versions; a Mini set holds 40 images (128x128) of each class. BioCLIP
evaluates eight Mini sets (:data:`SETS`): task ``ma-plankton`` is ``PLK_Mini`` and so on; the ``ma-`` prefix keeps
them apart from BioBench's ``plankton`` and ``plantnet``, which are different datasets.

Source: OpenML, one dataset per set, stored in OpenML's object store as ``<CODE>.zip`` beside the dataset's
Parquet table (openml-python downloads the bucket and unpacks that zip in place):
``https://data.openml.org/datasets/<id // 10000, 4 digits>/<id>/<CODE>.zip``. A zip placed by hand at
``<root>/<CODE>.zip`` (e.g. from meta-album.github.io) is used instead of downloading.

Layout (Meta-Album's data format), unpacked into ``<root>``::

    <CODE>/labels.csv    columns FILE_NAME, CATEGORY, SUPER_CATEGORY (comma-separated, UTF-8, quoted as needed)
    <CODE>/info.json     dataset facts, including image_column_name / category_column_name
    <CODE>/images/<FILE_NAME>

``info.json`` may rename the two columns; the format also allows the images beside ``labels.csv`` instead of in
``images/``; both are honoured. The class is ``CATEGORY`` as written (BioCLIP's ``asis`` text type):
underscores, accents and authorities stay. Meta-Album gives no ranks or common names, so the task has no taxonomy.

Every image is both train and test (see :mod:`lifebench.tasks.treeoflife`); protocol ``zero-shot``, metric
``accuracy``. No checksum is published, so the first download records the zip's SHA-256 (trust on first use).

Which set a folder holds: the ``dataset`` argument, else the folder's name (``<data root>/<task name>``, as
``lifebench download`` and ``run`` use it, or the Meta-Album code), else the one ``<CODE>/`` or ``<CODE>.zip``
found inside it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.download import download as fetch_file
from lifebench.download import extract
from lifebench.errors import DataError
from lifebench.tasks.base import Task
from lifebench.tasks.catalog import TaskSpec, register
from lifebench.tasks.folder import read_csv
from lifebench.tasks.treeoflife import every_image_task

__all__ = ["BASE_URL", "SETS", "MetaAlbumSet", "archive_url", "download", "load", "make_fixture", "missing",
           "which_set"]

log = logging.getLogger(__name__)

BASE_URL = "https://data.openml.org/datasets"
DEFAULT_COLUMNS = ("FILE_NAME", "CATEGORY")
_SHOW = 3


@dataclass(frozen=True)
class MetaAlbumSet:
    task: str
    code: str
    openml_id: int
    display: str
    release: int
    """Meta-Album release set (0, 1 or 2) the dataset came out in."""
    domain: str
    n_classes: int
    """Classes in the Mini version (40 images each), as in BioCLIP's annotation files."""


SETS: dict[str, MetaAlbumSet] = {s.task: s for s in [
    MetaAlbumSet("ma-plankton", "PLK_Mini", 44282, "Plankton (WHOI)", 0, "small animals", 86),
    MetaAlbumSet("ma-insects", "INS_Mini", 44306, "Insects (SPIPOLL)", 2, "small animals", 104),
    MetaAlbumSet("ma-insects2", "INS_2_Mini", 44292, "Insects 2 (IP102)", 1, "small animals", 102),
    MetaAlbumSet("ma-plantnet", "PLT_NET_Mini", 44293, "PlantNet", 1, "plants", 25),
    MetaAlbumSet("ma-fungi", "FNG_Mini", 44302, "Fungi (Danish Fungi)", 2, "plants", 25),
    MetaAlbumSet("ma-plantvillage", "PLT_VIL_Mini", 44286, "PlantVillage", 0, "plant diseases", 38),
    MetaAlbumSet("ma-medleaf", "MED_LF_Mini", 44299, "Medicinal Leaf", 1, "plant diseases", 25),
    MetaAlbumSet("ma-plantdoc", "PLT_DOC_Mini", 44303, "PlantDoc", 2, "plant diseases", 27),
]}
_BY_CODE = {s.code.lower(): s for s in SETS.values()}


def archive_url(s: MetaAlbumSet, base_url: str | None = None) -> str:
    return f"{base_url or BASE_URL}/{s.openml_id // 10000:04d}/{s.openml_id}/{s.code}.zip"


def which_set(root: Path, dataset: str | None = None) -> MetaAlbumSet:
    """The Meta-Album set that ``root`` holds (see the module docstring)."""
    root = Path(root)
    name = dataset or root.name
    s = SETS.get(name) or _BY_CODE.get(name.lower())
    if s:
        return s
    if dataset:
        raise DataError(f"unknown Meta-Album set {dataset!r}; use one of {', '.join(SETS)}")
    found = {s.task for s in SETS.values() for p in (root / s.code, root / f"{s.code}.zip") if p.exists()}
    if len(found) == 1:
        return SETS[found.pop()]
    raise DataError(f"cannot tell which Meta-Album set {root} holds ({'several found' if found else 'none found'}); "
                    f"name the folder after its task ({', '.join(SETS)}) or pass dataset=")


def _folder(root: Path, s: MetaAlbumSet) -> Path:
    return Path(root) / s.code


def missing(root: Path, *, dataset: str | None = None) -> str | None:
    root = Path(root)
    s = which_set(root, dataset)
    folder = _folder(root, s)
    if not (folder / "labels.csv").is_file():
        return f"no {s.code}/labels.csv in {root}"
    return None


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True,
             dataset: str | None = None) -> Path:
    """Fetch ``<CODE>.zip`` (or use one placed in ``root``), check it against the recorded SHA-256, unpack it."""
    root = Path(root)
    s = which_set(root, dataset)
    if missing(root, dataset=s.task) is None:
        return root
    placed = root / f"{s.code}.zip"
    if placed.is_file():
        archive = placed
        log.info("using %s placed by hand instead of downloading it", placed)
    else:
        archive = fetch_file(archive_url(s, base_url), root / ".downloads" / f"{s.code}.zip",
                             show_progress=show_progress)
    (root / f".lifebench-extracted-{archive.name}").unlink(missing_ok=True)  # the folder is gone: unpack again
    entries = extract(archive, root)
    if missing(root, dataset=s.task):
        found = ", ".join(sorted(e.name for e in entries)) or "nothing"
        raise DataError(f"{archive.name} unpacked to {found}, not {s.code}/labels.csv; the archive is not the "
                        f"Meta-Album {s.code} zip: delete it and rerun, or unpack the right zip into {root}")
    return root


def _columns(folder: Path) -> tuple[str, str]:
    """The image and category column names: info.json's where it names them, else FILE_NAME and CATEGORY."""
    info = folder / "info.json"
    if not info.is_file():
        return DEFAULT_COLUMNS
    try:
        meta = json.loads(info.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("%s is not valid JSON (%s); using the columns %s", info, e, ", ".join(DEFAULT_COLUMNS))
        return DEFAULT_COLUMNS
    return (str(meta.get("image_column_name") or DEFAULT_COLUMNS[0]),
            str(meta.get("category_column_name") or DEFAULT_COLUMNS[1]))


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _image_index(folder: Path) -> tuple[Path, dict[str, str]]:
    """The image folder (``images/``, else beside labels.csv) and its files by NFC-normalised name."""
    images = folder / "images" if (folder / "images").is_dir() else folder
    with os.scandir(images) as it:
        return images, {_nfc(e.name): e.path for e in it if e.is_file() and not e.name.startswith(".")}


def load(root: Path, *, dataset: str | None = None, **_: object) -> Task:
    root = Path(root)
    s = which_set(root, dataset)
    why = missing(root, dataset=s.task)
    if why:
        raise DataError(f"{s.task}: {why}; run: lifebench download {s.task} --dir {root.parent}")
    folder = _folder(root, s)
    labels_csv = folder / "labels.csv"
    image_col, category_col = _columns(folder)
    rows = [{k: v or "" for k, v in r.items() if k} for r in read_csv(
        labels_csv, (image_col, category_col), header=str.strip,
        fix="Meta-Album's labels.csv has FILE_NAME, CATEGORY and SUPER_CATEGORY: download the set again")]
    images, index = _image_index(folder)
    ids, paths, labels, lost, unnamed = [], [], [], [], []
    for i, r in enumerate(rows, start=2):  # line numbers as an editor shows them (the header is line 1)
        fname, cat = r[image_col].strip(), r[category_col].strip()
        if not fname or not cat:
            unnamed.append(str(i))
            continue
        path = index.get(_nfc(fname))
        if path is None:
            lost.append(fname)
            continue
        ids.append(fname)
        paths.append(path)
        labels.append(cat)
    if unnamed:
        raise DataError(f"{labels_csv}: {len(unnamed)} rows have an empty {image_col} or {category_col} (lines "
                        f"{', '.join(unnamed[:_SHOW])}); fix or remove them")
    if lost:
        raise DataError(f"{len(lost)} images listed in {labels_csv} are not in {images} (e.g. "
                        f"{', '.join(lost[:_SHOW])}); delete {folder} and run: lifebench download {s.task} "
                        f"--dir {root.parent}")
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        raise DataError(f"{labels_csv} lists {', '.join(dup[:_SHOW])} more than once; keep one row per image")
    listed = {_nfc(i) for i in ids} | {"labels.csv", "info.json"}
    unlisted = sum(n not in listed for n in index)
    if unlisted:
        log.info("%s: %d files in %s are not in labels.csv and are ignored", s.task, unlisted, images)
    n_classes = len(set(labels))
    return every_image_task(
        s.task, ids, paths, labels, taxonomy=None, source=str(folder),
        description=f"Meta-Album {s.display} ({s.code}, OpenML {s.openml_id}): {len(ids)} images, "
                    f"{n_classes} classes; class names as written in CATEGORY")


# Real class names of each set, as BioCLIP's annotation files (Imageomics/bioclip @ 4ea3247,
# data/annotation/meta-album/<CODE>/metadata.csv) write them (tests/test_upstream_treeoflife.py checks they are);
# the fixture writes the real file-name and extension conventions of each set.
_FIXTURE: dict[str, tuple[tuple[str, ...], str, str]] = {
    "ma-plankton": (("Cylindrotheca", "Emiliania_huxleyi", "G_delicatula_detritus"), "IFCB5_2011_326_{i:05d}.png",
                    "PNG"),
    "ma-insects": (("Les Hélophiles (Helophilus, Parhelophilus)", "Le Syrphe ceinturé (Episyrphus balteatus)",
                    "Les Syrphes à l'aspect de bourdon (Merodon et autres)"),
                   "15392961{i:05d}.jpg", "JPEG"),
    "ma-insects2": (("aphids", "red spider", "rice leaf roller"), "{i}.jpg", "JPEG"),
    "ma-plantnet": (("Daucus_carota", "Fragaria_vesca", "Lavandula_angustifolia"), "1ec5fd7c8315abf{i:05d}.jpg",
                    "JPEG"),
    "ma-fungi": (("Amanita fulva (Schaeff.) Fr.", "Amanita muscaria (L.) Lam., 1783", "Boletus edulis Bull."),
                 "2238577590-{i}.JPG", "JPEG"),
    "ma-plantvillage": (("Apple___Apple_scab", "Grape___healthy", "Tomato___Late_blight"), "{i}.jpg", "JPEG"),
    "ma-medleaf": (("Basella Alba (Basale)", "Jasminum (Jasmine)", "Piper Betle (Betel)"), "{i}.jpg", "JPEG"),
    "ma-plantdoc": (("Apple leaf", "Tomato leaf late blight", "grape leaf black rot"), "{i}.jpg", "JPEG"),
}


def make_fixture(*, dataset: str = "ma-plankton", per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """``{"<CODE>.zip": bytes}``: a tiny set in Meta-Album's layout (labels.csv, info.json, images/).

    Images are 32x32 and class-coloured so that a probe can learn something; file names follow the set's style.
    """
    s = SETS[dataset]
    classes, pattern, fmt = _FIXTURE[dataset]
    rng = np.random.default_rng(seed)
    buf, table = io.BytesIO(), io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["FILE_NAME", "CATEGORY", "SUPER_CATEGORY"])
    with zipfile.ZipFile(buf, "w") as z:
        k = 0
        for c_i, cls in enumerate(classes):
            for _ in range(per_class):
                k += 1
                name = pattern.format(i=k)
                arr = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                arr[..., c_i % 3] = 220
                img = io.BytesIO()
                Image.fromarray(arr).save(img, format=fmt)
                z.writestr(f"{s.code}/images/{name}", img.getvalue())
                writer.writerow([name, cls, s.display.split(" (")[0]])
        z.writestr(f"{s.code}/labels.csv", table.getvalue().encode("utf-8"))
        info = {"dataset_name": s.display, "dataset_description": f"{s.display} (Mini)", "total_categories":
                len(classes), "total_super_categories": 1, "uniform_number_of_images_per_category": True,
                "minimum_images_per_category": per_class, "median_images_per_category": float(per_class),
                "maximum_images_per_category": per_class, "has_super_categories": False,
                "image_column_name": "FILE_NAME", "category_column_name": "CATEGORY",
                "super_category_column_name": "SUPER_CATEGORY"}
        z.writestr(f"{s.code}/info.json", json.dumps(info, indent=4))
    return {f"{s.code}.zip": buf.getvalue()}


def _spec(s: MetaAlbumSet, modality: str, kingdom: str) -> TaskSpec:
    path = archive_url(s, BASE_URL)[len(BASE_URL) + 1:]

    def fetch(spec: TaskSpec, root: Path, *, show_progress: bool = True) -> Path:
        return download(root, base_url=spec.base_url or None, show_progress=show_progress, dataset=s.task)

    def fixture(spec: TaskSpec, **kw) -> dict[str, bytes]:
        return {path: make_fixture(dataset=s.task, **kw)[f"{s.code}.zip"]}

    return TaskSpec(
        name=s.task, display=f"Meta-Album {s.display}", suite="tree-of-life", modality=modality, kingdom=kingdom,
        protocol="zero-shot", metric="accuracy", kind="plain", method="zero-shot (asis names); 1/5-shot",
        n_train=40 * s.n_classes, n_test=40 * s.n_classes, source=f"Meta-Album {s.code} (OpenML {s.openml_id})",
        license="per set (Meta-Album fact sheet); not recorded", size="not recorded", load=load, missing=missing,
        fetch=fetch, fixture=fixture, options={"dataset": s.task},
        upstream=("Imageomics/bioclip@4ea3247 (Meta-Album annotation CSVs)", f"OpenML dataset {s.openml_id}"))


_FACTS = {"ma-plankton": ("micrographs", "plankton"), "ma-insects": ("in-situ photos", "Animalia"),
          "ma-insects2": ("web photos", "Animalia"), "ma-plantnet": ("in-situ photos", "Plantae"),
          "ma-fungi": ("in-situ photos", "Fungi"), "ma-plantvillage": ("leaf photos (lab)", "Plantae"),
          "ma-medleaf": ("leaf photos", "Plantae"), "ma-plantdoc": ("leaf photos (web)", "Plantae")}
register(*(_spec(s, *_FACTS[name]) for name, s in SETS.items()))
