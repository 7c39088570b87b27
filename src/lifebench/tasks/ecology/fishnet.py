"""FishNet (Khan et al., ICCV 2023): fish photos with nine ecological traits, each a binary task.

Sources: the image zip on Google Drive (about 5.4 GB; file id below) and the split files ``train.csv`` and
``test.csv`` from the FishNet repository's ``anns/`` folder. After download:

* ``<root>/train.csv``, ``<root>/test.csv``: pandas-written CSVs (two index columns first, ``""`` and
  ``Unnamed: 0``) with, among others, ``image`` (a file name, or a FishBase URL whose last part is the file
  name: 8,495 of the 18,901 rows of the published ``test.csv``), ``Folder`` (family folder) and the traits
  ``FeedingPath`` (``pelagic`` / ``benthic``), ``Tropical, Temperate, Subtropical, Boreal, Polar, freshwater,
  saltwater, brackish`` (0/1);
* ``<root>/Image_Library/<Folder>/<file name>``; the example id is that path relative to ``<root>``.

Rows with a missing trait are dropped (as in BioBench: 886 of the published test rows, 18,015 kept). Each
trait is a :class:`~lifebench.tasks.base.Part` over the same images; a logistic probe is fit per trait (BioBench
trained one MLP for all nine, whose learning-rate schedule halved the rate every 20 steps, so it stopped
learning after a few hundred steps, and whose dropout stayed on at test time). ``--n-train N`` draws N training
images uniformly, the same for all traits, as BioBench's ``n_train`` does. Metric: the mean over traits of the 2-class
macro-F1 (``trait_macro_f1``), with images resampled as a whole in the bootstrap (BioBench resampled only
the first trait). No file has a published checksum: the SHA-256 is recorded on first download.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from lifebench.download import download as fetch_file
from lifebench.download import extract
from lifebench.errors import DataError
from lifebench.tasks.base import Examples, Part, Task
from lifebench.tasks.catalog import TaskSpec, register
from lifebench.tasks.fixtures import jpeg, zip_bytes
from lifebench.tasks.folder import read_csv

__all__ = ["ANNOTATIONS_URL", "IMAGES_URL", "TRAITS", "download", "load", "make_fixture", "missing"]

log = logging.getLogger(__name__)

IMAGES_URL = "https://drive.usercontent.google.com/download?id=1mqLoap9QIVGYaPJ7T_KSBfLxJOg2yFY3&export=download&confirm=t"
ANNOTATIONS_URL = "https://raw.githubusercontent.com/faixan-khan/FishNet/main/anns"
IMAGES_ZIP, LIBRARY = "FishNet.zip", "Image_Library"
SPLITS = ("train", "test")
TRAITS = ("FeedingPath", "Tropical", "Temperate", "Subtropical", "Boreal", "Polar", "freshwater", "saltwater",
          "brackish")
HEADER = ("", "Unnamed: 0", "species", "image", "SpecCode", "Genus", "Subfamily", "Family", "Order", "Class",
          "SuperClass", "source", "Folder", "Troph", *TRAITS, "NewOrder", "Frequency")
_FEEDING = {"pelagic": "1", "benthic": "0"}


def missing(root: Path) -> str | None:
    root = Path(root)
    for split in SPLITS:
        if not (root / f"{split}.csv").is_file():
            return f"no {split}.csv in {root}"
    if not (root / LIBRARY).is_dir():
        return f"no {LIBRARY}/ folder in {root}"
    return None


def download(root: Path, *, images_url: str | None = None, annotations_url: str | None = None,
             show_progress: bool = True) -> Path:
    """Fetch the split CSVs and the image zip (5.4 GB), record their SHA-256 on first use, unpack the images."""
    root = Path(root)
    for split in SPLITS:
        fetch_file(f"{annotations_url or ANNOTATIONS_URL}/{split}.csv", root / f"{split}.csv",
                   show_progress=show_progress)
    archive = fetch_file(images_url or IMAGES_URL, root / ".downloads" / IMAGES_ZIP, show_progress=show_progress)
    extract(archive, root)
    if not (root / LIBRARY).is_dir():
        raise DataError(f"{IMAGES_ZIP} did not unpack to an {LIBRARY}/ folder; the archive changed upstream: report "
                        f"it, or unpack the images yourself into {root / LIBRARY}")
    return root


def _file_name(image: str) -> str:
    """The file name an ``image`` value is stored under: the part after the last ``/``.

    In FishNet's published ``anns/test.csv`` 8,495 of 18,901 ``image`` values are FishBase URLs (e.g.
    ``https://www.fishbase.se/images/species/Zefla_u2.jpg``) while the zip holds ``Image_Library/<Folder>/Zefla_u2.jpg``;
    BioBench (``image_name.split("/")[-1]``) and FishNet's own ``main.py`` keep the same part.
    """
    return image.strip().rsplit("/", 1)[-1]


def _read(path: Path, root: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """Relative image paths, absolute paths and per-row trait labels of one split.

    Rows with a missing trait are dropped, as BioBench drops rows with a null in any of the nine trait columns
    (886 of the 18,901 rows of the published ``test.csv``, where a row lacks all nine or none).
    """
    rows = read_csv(path, ("image", "Folder", *TRAITS),
                    fix=f"expected FishNet's {path.name} (lifebench download fishnet fetches it)")
    rels, paths, traits = [], [], []
    for line, r in enumerate(rows, start=2):
        values = [_FEEDING.get(r[t].strip(), r[t].strip()) if t == "FeedingPath" else r[t].strip()
                  for t in TRAITS]
        if any(v == "" for v in values):
            continue
        values = [v.split(".")[0] for v in values]  # "1.0" as pandas may write it
        if any(v not in ("0", "1") for v in values):
            raise DataError(f"{path} line {line}: trait values {values}; FishNet traits are 0/1 and FeedingPath "
                            "pelagic/benthic")
        name = _file_name(r["image"])
        if not name:
            raise DataError(f"{path} line {line}: image {r['image']!r} names no file; download {path.name} again")
        rel = f"{LIBRARY}/{r['Folder'].strip()}/{name}"
        rels.append(rel)
        paths.append(str(root / rel))
        traits.append(values)
    return rels, paths, traits


def _unique_ids(rels: list[str], n_train: int) -> list[str]:
    """Example ids: the image's path relative to the root, ``#1``, ``#2``... added to a path listed again.

    Two rows whose ``Folder`` and file-name part coincide name one file. BioBench keeps every such row (its
    dataset is the filtered CSV, row by row), so lifebench keeps them too, with ids that stay unique; a warning
    counts them, and how many sit in both splits (an image scored on after being trained on). The published
    ``test.csv`` has none (0 of 18,901 rows, URLs reduced to their file name).
    """
    seen: Counter[str] = Counter()
    ids = []
    for rel in rels:
        ids.append(rel if seen[rel] == 0 else f"{rel}#{seen[rel]}")
        seen[rel] += 1
    repeated = sum(c - 1 for c in seen.values())
    if repeated:
        both = len(set(rels[:n_train]) & set(rels[n_train:]))
        log.warning("fishnet: %d rows name an image already listed (same Folder and file name); kept, as BioBench "
                    "keeps them, %d of those images are in both train.csv and test.csv", repeated, both)
    return ids


def load(root: Path, **_: object) -> Task:
    root = Path(root)
    if why := missing(root):
        raise DataError(f"fishnet: {why}; run: lifebench download fishnet --dir {root.parent}")
    split_rows = {s: _read(root / f"{s}.csv", root) for s in SPLITS}
    n_train = len(split_rows["train"][0])
    ids = _unique_ids(split_rows["train"][0] + split_rows["test"][0], n_train)
    paths = split_rows["train"][1] + split_rows["test"][1]
    absent = [p for p in dict.fromkeys(paths) if not Path(p).is_file()]
    if absent:
        raise DataError(f"fishnet: {len(absent)} images listed in the split CSVs are missing, e.g. {absent[0]}; "
                        f"unpack {IMAGES_ZIP} again (lifebench download fishnet)")
    train, test = np.arange(n_train), np.arange(n_train, len(ids))
    traits = np.array(split_rows["train"][2] + split_rows["test"][2], dtype=object).reshape(len(ids), len(TRAITS))
    parts = tuple(Part(t, traits[:, k].astype(str), train, test) for k, t in enumerate(TRAITS))
    examples = Examples(ids=np.array(ids, dtype=object), paths=np.array(paths, dtype=object),
                        labels=np.full(len(ids), "", dtype=object))
    return Task(name="fishnet", examples=examples, train_idx=train, test_idx=test, classes=("0", "1"),
                metric="trait_macro_f1", parts=parts, source="FishNet (Khan et al. 2023)",
                split_source="given (train.csv -> test.csv)",
                description="9 binary traits; mean of 2-class macro-F1 over traits")


def make_fixture(*, per_split: tuple[int, int] = (16, 8), seed: int = 0) -> dict[str, bytes]:
    """``train.csv``, ``test.csv`` and the image zip in the real layout. Each trait is tied to one colour
    channel's brightness bit pattern, so a probe on pixels can learn several of them; one row has a missing
    trait and is dropped; the second row of each split names its image by a FishBase URL, as the real CSVs do."""
    rng = np.random.default_rng(seed)
    families = ["Sciaenidae", "Acanthuridae", "Sparidae"]
    images, out = {}, {}
    for split, n in zip(SPLITS, per_split, strict=True):
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(HEADER)
        for i in range(n):
            family = families[i % 3]
            name = f"{int(rng.integers(1 << 62)):016x}-{split}-{i:03d}.jpg"
            image = f"https://www.fishbase.se/images/species/{name}" if i == 1 else name  # as FishBase rows are
            bits = rng.integers(0, 2, len(TRAITS))
            arr = rng.integers(0, 60, (32, 48, 3), dtype=np.uint8)
            for k, b in enumerate(bits):  # trait k brightens a band of rows in channel k % 3
                arr[3 * k: 3 * k + 3, :, k % 3] += np.uint8(190 * b)
            images[f"{LIBRARY}/{family}/{name}"] = jpeg(arr, quality=95)
            values = ["pelagic" if bits[0] else "benthic", *map(str, bits[1:])]
            if split == "train" and i == n - 1:
                values[3] = ""  # a missing trait: the row is dropped
            w.writerow([i, i, "", image, "", "Genus", "", family, "Perciformes", "Actinopterygii", "", "inat", family,
                        "3.38", *values, "Perciformes", "0.28"])
        out[f"{split}.csv"] = text.getvalue().encode()
    out[IMAGES_ZIP] = zip_bytes(images)
    return out


def _fetch(spec: TaskSpec, root: Path, *, show_progress: bool = True) -> Path:
    if not spec.base_url:  # the published places: annotations on GitHub, images on Google Drive
        return download(root, show_progress=show_progress)
    return download(root, images_url=f"{spec.base_url}/{IMAGES_ZIP}", annotations_url=spec.base_url,
                    show_progress=show_progress)


SPEC = register(TaskSpec(
    name="fishnet", display="FishNet", suite="ecology", modality="web photos", kingdom="Animalia",
    protocol="logreg", metric="trait_macro_f1", kind="parts",
    method="9 binary traits, logistic probe each; mean of 2-class macro-F1", n_train=75631, n_test=18901,
    source="FishNet (Khan et al. 2023)", license="see the FishNet repository", size="5.4 GB", load=load,
    missing=missing, fetch=_fetch, fixture=lambda spec, **kw: make_fixture(**kw),
    
    upstream=("samuelstevens/biobench@6376d97 src/biobench/fishnet/__init__.py",
              "faixan-khan/FishNet@b76b1b5 anns/test.csv, main.py"),
))
