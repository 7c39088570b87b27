"""iNat21 (mini): 10,000 species from the iNaturalist 2021 competition, a BioBench reference task.

Archives from the ml-inat-competition-datasets S3 bucket, checked against the MD5s the competition publishes
(the same values are in ``torchvision.datasets.inaturalist.DATASET_MD5``):

* ``train_mini.tar.gz`` (42 GB, 500,000 images, 50 per species) unpacks to ``<root>/train_mini/<class>/``;
* ``val.tar.gz`` (8.4 GB, 100,000 images, 10 per species) unpacks to ``<root>/val/<class>/``.

Class folders are named ``<5-digit id>_<kingdom>_<phylum>_<class>_<order>_<family>_<genus>_<epithet>``.
Protocol: logistic probe on frozen features, train_mini -> val; metric: top-1 accuracy.

The real folder is ``train_mini/``, not the ``train/`` that :func:`~lifebench.tasks.folder.load_task` reads, so
:func:`split_view` makes a hidden folder ``<root>/.lifebench-split/`` holding two relative symbolic links,
``train -> ../train_mini`` and ``val -> ../val``, and the task is loaded from there: no image is copied or
moved, and every check of ``load_task`` applies. Example ids are therefore ``train/<class>/<file>`` and
``val/<class>/<file>``. The links are made by :func:`download` and, if absent, by :func:`load` (which then
needs write access to ``root`` once).

Unlike BioBench's script, ``download(splits=...)`` fetches and unpacks only the splits asked for.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.download import download as fetch_file
from lifebench.download import extract
from lifebench.errors import ConfigError, DataError
from lifebench.tasks.base import Task
from lifebench.tasks.folder import load_task

__all__ = ["ARCHIVES", "BASE_URL", "SPLITS", "VIEW", "download", "load", "make_fixture", "missing", "split_view"]

log = logging.getLogger(__name__)

BASE_URL = "https://ml-inat-competition-datasets.s3.amazonaws.com/2021"
ARCHIVES = {  # split (= the folder it unpacks to) -> (archive, published MD5)
    "train_mini": ("train_mini.tar.gz", "db6ed8330e634445efc8fec83ae81442"),
    "val": ("val.tar.gz", "f6f6e0e242e3d4c9569ba56400938afc"),
}
SPLITS = tuple(ARCHIVES)
VIEW = ".lifebench-split"


def missing(root: Path) -> str | None:
    for split in SPLITS:
        if not (Path(root) / split).is_dir():
            return f"no {split}/ folder in {root}"
    return None


def download(root: Path, *, splits: Sequence[str] = SPLITS, base_url: str | None = None,
             show_progress: bool = True) -> Path:
    """Fetch the archives of ``splits`` (train_mini 42 GB, val 8.4 GB), check their MD5s, unpack into ``root``."""
    root, base_url = Path(root), base_url or BASE_URL
    unknown = [s for s in splits if s not in ARCHIVES]
    if unknown:
        raise ConfigError(f"inat21: unknown split {unknown[0]!r}; choose from {', '.join(SPLITS)}")
    for split in splits:
        name, md5 = ARCHIVES[split]
        archive = fetch_file(f"{base_url}/{name}", root / ".downloads" / name, md5=md5, show_progress=show_progress)
        extract(archive, root)
    if missing(root) is None:
        split_view(root, root / "train_mini", root / "val")
    return root


def load(root: Path, *, skip_bad_images: bool = False, **_: object) -> Task:
    root = Path(root)
    why = missing(root)
    if why:
        raise DataError(f"inat21: {why}; run: lifebench download inat21 --dir {root.parent}")
    view = split_view(root, root / "train_mini", root / "val")
    task = load_task(view, name="inat21", skip_bad_images=skip_bad_images)
    return dataclasses.replace(task, metric="accuracy", source=str(root.resolve()))


def split_view(root: Path, train: Path, test: Path) -> Path:
    """``<root>/.lifebench-split`` with relative links ``train -> train`` and ``val -> test``; made once, reused.

    A folder layout that :func:`~lifebench.tasks.folder.load_task` cannot read directly (a train folder with
    another name, or a third split it would prefer as the test split) is read through this view. The view is
    swapped in by a rename, so concurrent loaders never see half of it.
    """
    root = Path(root)
    view = root / VIEW
    want = {"train": os.path.relpath(train, view), "val": os.path.relpath(test, view)}

    def ready() -> bool:
        try:
            return sorted(os.listdir(view)) == sorted(want) and all(
                os.readlink(view / k) == v for k, v in want.items())
        except OSError:
            return False

    if ready():
        return view
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{VIEW}-"))
        for k, v in want.items():
            os.symlink(v, tmp / k, target_is_directory=True)
        if view.is_symlink() or view.is_file():
            view.unlink()
        elif view.is_dir():
            shutil.rmtree(view)  # a stale view: removes its links, never what they point to
        os.replace(tmp, view)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if ready():  # another process made it meanwhile
            return view
        raise DataError(f"cannot make the split view {view} ({e}); give write access to {root} once, or make it "
                        f"yourself: mkdir {view} && ln -s {want['train']} {view}/train && "
                        f"ln -s {want['val']} {view}/val") from None
    log.info("made %s: train -> %s, val -> %s", view, want["train"], want["val"])
    return view


# Class folders in the real naming scheme (id_kingdom_phylum_class_order_family_genus_epithet), ids from 0.
_FIXTURE_CLASSES = (
    "00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris",
    "00001_Animalia_Arthropoda_Insecta_Lepidoptera_Nymphalidae_Danaus_plexippus",
    "00002_Plantae_Tracheophyta_Magnoliopsida_Asterales_Asteraceae_Bellis_perennis",
)


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """Tiny archives in the real layout: ``train_mini.tar.gz`` holds ``train_mini/<class>/<uuid>.jpg``.

    ``per_class`` images per species in train_mini and one per species in val.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split, (name, _) in ARCHIVES.items():
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for k, c in enumerate(_FIXTURE_CLASSES):
                for _ in range(per_class if split == "train_mini" else 1):
                    arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                    arr[..., k % 3] = 210
                    img = io.BytesIO()
                    Image.fromarray(arr).save(img, format="JPEG", quality=90)
                    data = img.getvalue()
                    uuid = "-".join(rng.bytes(n).hex() for n in (4, 2, 2, 2, 6))
                    info = tarfile.TarInfo(f"{split}/{c}/{uuid}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        out[name] = buf.getvalue()
    return out
