"""Herbarium 2019 (FGVC6, New York Botanical Garden): herbarium sheets of flowering plants.

Layout after download: ``<root>/train/<class>/...`` (34,225 images) and ``<root>/validation/<class>/...``
(2,679 images), one folder per species id. The competition's test split has no public labels and is not
used. Protocol: logistic probe on frozen features, train -> validation; metric: macro-F1 over the classes
present in validation. Classes come from one sorted list over both splits (BioBench built one per split).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.download import download as fetch_file
from lifebench.download import extract
from lifebench.errors import DataError
from lifebench.tasks.base import Task
from lifebench.tasks.folder import load_task

__all__ = ["ARCHIVES", "BASE_URL", "download", "load", "make_fixture", "missing"]

BASE_URL = "https://storage.googleapis.com/nybg/herbarium-2019-fgvc6"
ARCHIVES = {  # archive -> (published MD5, the folder it unpacks to)
    "train.tar.gz": ("53c6b9ee2f831f5101dbe00958091dc8", "train"),
    "validation.tar.gz": ("2f854d580949e54f114993a74adc3d4b", "validation"),
}


def missing(root: Path) -> str | None:
    for folder in ("train", "validation"):
        if not (Path(root) / folder).is_dir():
            return f"no {folder}/ folder in {root}"
    return None


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Fetch both archives (about 41 GB), check their MD5s, and unpack them into ``root``."""
    root, base_url = Path(root), base_url or BASE_URL
    for name, (md5, _) in ARCHIVES.items():
        archive = fetch_file(f"{base_url}/{name}", root / ".downloads" / name, md5=md5, show_progress=show_progress)
        extract(archive, root)
    return root


def load(root: Path, **_: object) -> Task:
    why = missing(root)
    if why:
        raise DataError(f"herbarium19: {why}; run: lifebench download herbarium19 --dir {Path(root).parent}")
    return load_task(root, name="herbarium19")


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """Tiny archives in the real layout: ``train.tar.gz`` holds ``train/<id>/<id>.jpg`` and so on."""
    rng = np.random.default_rng(seed)
    classes = ["0", "1", "17"]
    out = {}
    for name, (_, folder) in ARCHIVES.items():
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for c in classes:
                for i in range(per_class if folder == "train" else 1):
                    img = io.BytesIO()
                    arr = rng.integers(0, 255, (48, 32, 3), dtype=np.uint8)
                    arr[..., int(c) % 3] = 200  # class-coloured sheets, so a probe can learn something
                    Image.fromarray(arr).save(img, format="JPEG", quality=90)
                    data = img.getvalue()
                    info = tarfile.TarInfo(f"{folder}/{c}/{c}_{i:04d}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        out[name] = buf.getvalue()
    return out
