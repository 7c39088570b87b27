"""SYKE plankton (IFCB): phytoplankton images from an Imaging FlowCytobot in the Baltic Sea.

Two zips from b2share.eudat.eu:

* train: SYKE-plankton_IFCB_2022 (record ``xvnrp-7ga56``), ``phytoplankton_labeled.zip``, which unpacks to
  ``labeled_20201020/<class>/*.png``; it becomes ``<root>/train/`` (63,074 images);
* test: SYKE-plankton_IFCB_Utö_2021 (record ``w7y96-6jd66``), ``phytoplankton_Utö_2021_labeled.zip``, which
  unpacks to ``phytoplankton_Utö_2021_labeled/<class>/*.png``; it becomes ``<root>/val/`` (151,236 images).

Each zip is unpacked into a hidden staging folder and its folder is renamed to ``train``/``val`` only when
extraction finished, so ``<root>/train`` never exists half-full. If a zip's folder name comes out differently
(the ``ö`` can be stored decomposed or in a legacy code page), its one top-level folder is used, with a
warning. Images are single-channel PNGs, decoded to RGB by :mod:`lifebench.images`.

Protocol: logistic probe on frozen features, train -> val; metric: macro-F1 over the classes present in val.
BioBench built its label map per split from independently sorted folder lists, so a class present in only one
split shifted every later label (its near-chance plankton scores fit that). Here one sorted class list over
both splits is THE label map. A class with test images but no training images is an error naming the class.

No checksum is recorded in our references (b2share lists one per file, not fetched here), so the first
download records each zip's SHA-256 and every later use is checked against it (trust on first use).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import unicodedata
import zipfile
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from lifebench.download import download as fetch_file
from lifebench.download import extract
from lifebench.errors import DataError
from lifebench.tasks.base import Task
from lifebench.tasks.folder import load_task

__all__ = ["ARCHIVES", "BASE_URL", "download", "load", "make_fixture", "missing"]

log = logging.getLogger(__name__)

BASE_URL = "https://b2share.eudat.eu/records"
ARCHIVES = {  # split -> (b2share record, archive, the folder it unpacks to)
    "train": ("xvnrp-7ga56", "phytoplankton_labeled.zip", "labeled_20201020"),
    "val": ("w7y96-6jd66", "phytoplankton_Utö_2021_labeled.zip", "phytoplankton_Utö_2021_labeled"),
}


def missing(root: Path) -> str | None:
    for split in ARCHIVES:
        if not (Path(root) / split).is_dir():
            return f"no {split}/ folder in {root}"
    return None


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Fetch both zips, check them against the SHA-256 recorded on first download, unpack to train/ and val/."""
    root, base_url = Path(root), base_url or BASE_URL
    for split, (record, name, folder) in ARCHIVES.items():
        archive = fetch_file(f"{base_url}/{record}/files/{quote(name)}", root / ".downloads" / name,
                             show_progress=show_progress)
        _unpack(archive, root, split, folder)
    return root


def _unpack(archive: Path, root: Path, split: str, folder: str) -> None:
    """Unpack ``archive`` into a staging folder, then rename its ``folder`` to ``root/split``."""
    target, staging = root / split, root / f".unpack-{split}"
    if target.is_dir():
        shutil.rmtree(staging, ignore_errors=True)  # left over if a run died after the rename
        return
    entries = extract(archive, staging)
    os.replace(_top_folder(entries, folder, archive.name), target)
    shutil.rmtree(staging)


def _top_folder(entries: list[Path], folder: str, archive: str) -> Path:
    dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".") and e.name != "__MACOSX"]
    for d in dirs:
        if unicodedata.normalize("NFC", d.name) == folder:
            return d
    if len(dirs) == 1:
        log.warning("%s unpacked to %s/, not %s/; using it", archive, dirs[0].name, folder)
        return dirs[0]
    found = ", ".join(sorted(e.name for e in entries)) or "nothing"
    raise DataError(f"{archive} did not unpack to one {folder}/ folder (found: {found}); the archive changed "
                    "upstream: report it, or unpack it yourself into train/ and val/ holding class folders")


def load(root: Path, *, skip_bad_images: bool = False, **_: object) -> Task:
    why = missing(root)
    if why:
        raise DataError(f"plankton: {why}; run: lifebench download plankton --dir {Path(root).parent}")
    return load_task(root, name="plankton", skip_bad_images=skip_bad_images)


# Taxon folder names in the dataset's style; the last train class has no test images, so a label map built
# per split (BioBench) shifts the test labels after it.
_TRAIN_CLASSES = ("Aphanizomenon_flosaquae", "Chaetoceros_sp_single", "Dolichospermum_Anabaenopsis",
                  "Snowella_Woronichinia")
_VAL_CLASSES = ("Aphanizomenon_flosaquae", "Dolichospermum_Anabaenopsis", "Snowella_Woronichinia")


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """Tiny zips in the real layout: ``labeled_20201020/<class>/D<time>_IFCB<n>_<roi>.png`` (grayscale).

    ``per_class`` images per class in train, 2 per class in val; ``Chaetoceros_sp_single`` is only in train.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split, (_, name, folder) in ARCHIVES.items():
        classes, n, ifcb = (_TRAIN_CLASSES, per_class, 114) if split == "train" else (_VAL_CLASSES, 2, 110)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for c in classes:
                level = 40 + 50 * _TRAIN_CLASSES.index(c)  # class-dependent brightness
                for i in range(n):
                    h, w = int(rng.integers(16, 40)), int(rng.integers(24, 64))
                    arr = np.clip(rng.normal(level, 20, (h, w)), 0, 255).astype(np.uint8)
                    img = io.BytesIO()
                    Image.fromarray(arr).save(img, format="PNG")
                    stamp = f"D2020{rng.integers(5, 10):02d}{rng.integers(1, 29):02d}T{rng.integers(0, 24):02d}0000"
                    z.writestr(f"{folder}/{c}/{stamp}_IFCB{ifcb}_{i + 1:05d}.png", img.getvalue())
        out[name] = buf.getvalue()
    return out
