"""The demo task: five organism classes from the photo cut-outs in Debian's ``tuxpaint-stamps-default``.

161 PNG cut-outs (bird 38, mammal 67, insect 20, fish 11, flower 25), each labelled by its folder. The
images are GPL-2, so they are never shipped with lifebench: :func:`fetch` gets the package with
``apt-get download`` (apt checks it against the signed archive index; we also pin its SHA-256), and
unpacks only those PNGs into the data directory. If apt is not available, :class:`DataUnavailable` says
so and the demo falls back to a generated task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from lifebench.errors import DataError
from lifebench.tasks.base import Task
from lifebench.tasks.folder import load_task

__all__ = ["load_default", "CLASSES", "DataUnavailable", "fetch", "load"]

log = logging.getLogger(__name__)

PACKAGE = "tuxpaint-stamps-default"
KNOWN_SHA256 = {
    "2022.06.04-1": "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
}
STAMPS = "usr/share/tuxpaint/stamps"
INSTALLED_STAMPS = Path("/") / STAMPS
"""Used directly, without apt, when the package is installed."""
CLASSES = {  # label -> folder under the stamps directory
    "bird": "animals/birds",
    "mammal": "animals/mammals",
    "insect": "animals/insects",
    "fish": "animals/fish",
    "flower": "plants/flowers",
}
EXPECTED_COUNTS = {"bird": 38, "mammal": 67, "insect": 20, "fish": 11, "flower": 25}


class DataUnavailable(DataError):
    """The demo images cannot be fetched on this machine (no apt, or the package cannot be downloaded)."""


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def _download_deb(workdir: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise DataUnavailable("apt-get is not available on this machine, so the Tux Paint photos cannot be fetched")
    res = _run(["apt-get", "download", PACKAGE], workdir)
    if res.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        log.warning("apt-get download failed (%s); running 'apt-get update' once to refresh the package lists",
                    res.stderr.strip()[-200:])
        _run(["apt-get", "update", "-qq"], workdir)
        res = _run(["apt-get", "download", PACKAGE], workdir)
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if res.returncode != 0 or not debs:
        raise DataUnavailable(
            f"apt-get download {PACKAGE} failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}"
            "; run 'apt-get update' (as root) and retry"
        )
    return debs[-1]


def _verify(deb: Path) -> str:
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    version = deb.name.removeprefix(f"{PACKAGE}_").split("_")[0]
    known = KNOWN_SHA256.get(version)
    if known is None:
        log.warning("%s version %s has no pinned checksum (sha256 %s); apt verified it against the archive",
                    PACKAGE, version, digest)
    elif known != digest:
        raise DataError(f"checksum mismatch for {deb.name}: sha256 {digest}, expected {known}; delete it and retry")
    return digest


def _read_data_tar(deb: Path) -> tarfile.TarFile:
    """Open the data archive inside a .deb (an ar archive) without dpkg."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DataError(f"{deb} is not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            elif name.endswith(".gz"):
                import gzip

                body = gzip.decompress(body)
            elif not name.endswith(".tar"):
                raise DataError(f"{deb}: unsupported compression {name}")
            return tarfile.open(fileobj=io.BytesIO(body))
        pos += 60 + size + (size % 2)
    raise DataError(f"{deb} has no data archive")


def fetch(root: Path) -> Path:
    """Make ``root/tuxpaint`` hold the five class folders of PNGs; idempotent; returns the folder."""
    target = Path(root) / "tuxpaint"
    if (target / ".complete").exists():
        return target
    installed = INSTALLED_STAMPS
    Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".tuxpaint-") as tmp:
        tmp = Path(tmp)
        staging = tmp / "tuxpaint"
        if installed.is_dir():
            log.info("using the installed %s package", PACKAGE)
            for label, folder in CLASSES.items():
                for src in sorted((installed / folder).rglob("*.png")):
                    dst = staging / label / src.relative_to(installed / folder)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
            note = "copied from the installed package"
        else:
            log.info("fetching %s with apt-get download (about 160 MB)", PACKAGE)
            deb = _download_deb(tmp)
            digest = _verify(deb)
            with _read_data_tar(deb) as tar:
                for m in tar.getmembers():
                    rel = m.name.lstrip("./")
                    if not (m.isfile() and rel.endswith(".png")):
                        continue
                    for label, folder in CLASSES.items():
                        prefix = f"{STAMPS}/{folder}/"
                        if rel.startswith(prefix):
                            sub = Path(rel[len(prefix) :])
                            if ".." in sub.parts or sub.is_absolute():
                                raise DataError(f"{deb.name}: unsafe path {m.name!r} in archive")
                            dst = staging / label / sub
                            dst.parent.mkdir(parents=True, exist_ok=True)
                            src = tar.extractfile(m)
                            assert src is not None
                            dst.write_bytes(src.read())
            note = f"{deb.name} sha256 {digest}"
        counts = {label: len(list((staging / label).rglob("*.png"))) for label in CLASSES}
        if counts != EXPECTED_COUNTS:
            log.warning("Tux Paint class counts %s differ from the expected %s", counts, EXPECTED_COUNTS)
        (staging / "SOURCE.txt").write_text(
            f"Photo cut-outs from the Debian package {PACKAGE} ({note}). License: GPL-2.\n"
        )
        (staging / ".complete").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return target


def load(root: Path, *, n_folds: int | None = 5, test_size: float = 0.25, seed: int = 0) -> Task:
    """The 5-class organism task, fetched into ``root`` if needed.

    By default every image is predicted once by 5-fold stratified cross-fitting (161 test predictions
    instead of 40 from a single split); ``n_folds=None`` gives one seeded stratified split instead.
    """
    folder = fetch(root)
    task = load_task(folder, name="tuxpaint-organisms", n_folds=n_folds, test_size=test_size, seed=seed)
    return dataclasses.replace(
        task,
        source=f"Debian {PACKAGE} (GPL-2)",
        description="161 photo cut-outs of organisms in 5 classes: bird, mammal, insect, fish, flower",
    )


def load_default(*, n_folds: int | None = 5, test_size: float = 0.25, seed: int = 0, **_: object) -> Task:
    """Factory for the task registry: the task in lifebench's data directory."""
    from lifebench.config import data_dir

    return load(data_dir(), n_folds=n_folds, test_size=test_size, seed=seed)
