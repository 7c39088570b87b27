"""Pl@ntNet-300K: 1,081 plant species photographed by Pl@ntNet users, long-tailed and label-ambiguous.

One zip from Zenodo record 5645731, ``plantnet_300K.zip`` (29.5 GB). Images lie in
``images/{train,val,test}/<species id>/<image id>.jpg``; BioBench trains on ``train`` (243,916 images) and tests
on ``val`` (31,118), never on ``test``, and so does lifebench. Protocol: logistic probe on frozen features;
metric: macro-F1 over the species present in val.

Where ``images/`` lies: BioBench documents ``<root>/images/...``, but it unzips into the data folder, and public
code that reads the zip puts everything under a top folder ``plantnet_300K/`` (beside
``plantnet300K_metadata.json`` and ``plantnet300K_species_id_2_name.json``); our references do not record the
zip's listing. So both ``<root>/images/`` and ``<root>/plantnet_300K/images/`` are accepted, and the fixture
uses the latter.

``images/`` holds a ``test/`` folder that :func:`~lifebench.tasks.folder.load_task` would prefer as the test
split, so the task is read through the link view of :func:`lifebench.tasks.ecology.inat21.split_view`
(``<root>/.lifebench-split/{train,val}``, relative symbolic links; nothing is copied). Example ids are
``train/<species>/<file>`` and ``val/<species>/<file>``.

Checksum: Zenodo publishes an MD5 for the file, but it is not recorded in our references and cannot be fetched
here, so none is pinned: the first download records the zip's SHA-256 and every later use is checked against
it (trust on first use). Pinning the published MD5 is a one-line change to :data:`MD5`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.download import download as fetch_file
from lifebench.download import extract
from lifebench.errors import DataError
from lifebench.tasks.base import Task
from lifebench.tasks.ecology.inat21 import split_view
from lifebench.tasks.folder import load_task

__all__ = ["ARCHIVE", "BASE_URL", "MD5", "ZIP_FOLDER", "download", "images_dir", "load", "make_fixture", "missing"]

BASE_URL = "https://zenodo.org/records/5645731/files"
ARCHIVE = "plantnet_300K.zip"
MD5: str | None = None
"""Zenodo's published MD5 of :data:`ARCHIVE`; None until it is recorded (then trust on first use applies)."""
ZIP_FOLDER = "plantnet_300K"


def images_dir(root: Path) -> Path | None:
    """The ``images`` folder holding ``train/`` and ``val/``: ``root/images`` or ``root/plantnet_300K/images``."""
    for images in (Path(root) / "images", Path(root) / ZIP_FOLDER / "images"):
        if (images / "train").is_dir() and (images / "val").is_dir():
            return images
    return None


def missing(root: Path) -> str | None:
    if images_dir(root) is None:
        return f"no images/train/ and images/val/ folders in {root} or in {Path(root) / ZIP_FOLDER}"
    return None


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Fetch ``plantnet_300K.zip`` (29.5 GB), verify it (see the module docstring) and unpack it into ``root``."""
    root, base_url = Path(root), base_url or BASE_URL
    archive = fetch_file(f"{base_url}/{ARCHIVE}", root / ".downloads" / ARCHIVE, md5=MD5,
                         show_progress=show_progress)
    extract(archive, root)
    images = images_dir(root)
    if images is not None:
        split_view(root, images / "train", images / "val")
    return root


def load(root: Path, *, skip_bad_images: bool = False, **_: object) -> Task:
    images = images_dir(root)
    if images is None:
        raise DataError(f"plantnet: {missing(root)}; run: lifebench download plantnet --dir {Path(root).parent}")
    view = split_view(Path(root), images / "train", images / "val")
    task = load_task(view, name="plantnet", skip_bad_images=skip_bad_images)
    return dataclasses.replace(task, source=str(images.resolve()))


# Species ids in the dataset's style (numeric folder names); ids and names are illustrative only.
_FIXTURE_SPECIES = {"1355868": "Lactuca virosa L.", "1355920": "Trifolium repens L.", "1363227": "Daucus carota L."}


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """A tiny ``plantnet_300K.zip`` in the real layout: ``plantnet_300K/images/<split>/<species>/<sha1>.jpg``.

    ``per_class`` images per species in train, 1 in val, 2 in test (which the task must not use), plus the
    two metadata JSON files beside ``images/``.
    """
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    metadata = {}
    with zipfile.ZipFile(buf, "w") as z:
        for split, n in (("train", per_class), ("val", 1), ("test", 2)):
            for k, species in enumerate(_FIXTURE_SPECIES):
                for _ in range(n):
                    arr = rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)
                    arr[..., k % 3] = 220
                    img = io.BytesIO()
                    Image.fromarray(arr).save(img, format="JPEG", quality=90)
                    image_id = rng.bytes(20).hex()
                    z.writestr(f"{ZIP_FOLDER}/images/{split}/{species}/{image_id}.jpg", img.getvalue())
                    metadata[image_id] = {"species_id": species, "split": split, "organ": "leaf"}
        z.writestr(f"{ZIP_FOLDER}/plantnet300K_metadata.json", json.dumps(metadata))
        z.writestr(f"{ZIP_FOLDER}/plantnet300K_species_id_2_name.json", json.dumps(_FIXTURE_SPECIES))
    return {ARCHIVE: buf.getvalue()}
