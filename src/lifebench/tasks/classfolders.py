"""Benchmarks published as archives of class folders: the layout is data (:class:`ClassFolders`), not code.

Herbarium 2019, iNat21, Pl@ntNet-300K and SYKE plankton differ only in values: which archives to fetch and their
checksums, which folder each unpacks to, and which two folders of class folders are the train and test splits.
:func:`spec` turns those values into a :class:`~lifebench.tasks.catalog.TaskSpec` whose four functions are the
ones below, shared by every such task:

* fetch: :func:`~lifebench.tasks.catalog.fetch_sources` (each source resumable and verified, unpacked through a
  staging folder and, where the spec says ``rename_to``, its top folder moved there only when extraction finished);
* missing / load: the first existing candidate of each split folder, read by
  :func:`~lifebench.tasks.folder.load_split_folders` (so a benchmark's other folders, such as BioBench's
  unlabelled ``test/`` of Herbarium 2019 or Pl@ntNet's ``test`` split, are never read);
* fixture: tiny archives in the same layout, with the fixture classes the spec names, for the catalog test.
"""

from __future__ import annotations

import io
import logging
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.errors import DataError
from lifebench.tasks.base import Task
from lifebench.tasks.catalog import Source, TaskSpec, fetch_sources
from lifebench.tasks.folder import load_split_folders

__all__ = ["ClassFolders", "spec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassFolders:
    """Where a class-folder benchmark's splits lie under its data folder, and how to make a fixture of it."""

    train: tuple[str, ...]
    """Candidate paths (relative to the data folder) of the training split's class folders; the first present wins."""
    test: tuple[str, ...]
    test_only_classes: str = "error"
    """Test images of classes without training images: "error", "drop" or "open-set" (:func:`load_split_folders`)."""
    ignored: tuple[str, ...] = ()
    """Folders the published data has beside the splits that must not be read (the fixture fills them as decoys)."""
    fixture_classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Class folder names of the fixture's "train" and "test" splits, real-style (``ignored`` folders: train's)."""
    fixture_mode: str = "RGB"
    """"RGB" photos as JPEG, "L" single-channel PNGs (IFCB plankton)."""


def _first(root: Path, candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if (root / c).is_dir()), None)


def _missing(layout: ClassFolders):
    def missing(root: Path) -> str | None:
        for side in (layout.train, layout.test):
            if _first(Path(root), side) is None:
                return f"no {' or '.join(f'{c}/' for c in side)} folder in {root}"
        return None

    return missing


def _load(name: str, layout: ClassFolders):
    def load(root: Path, *, skip_bad_images: bool = False, test_only_classes: str | None = None,
             **_: object) -> Task:
        root = Path(root)
        train, test = _first(root, layout.train), _first(root, layout.test)
        if train is None or test is None:
            raise DataError(f"{name}: {_missing(layout)(root)}; run: lifebench download {name} --dir {root.parent}")
        return load_split_folders(root, train, test, name=name, skip_bad_images=skip_bad_images,
                                  test_only_classes=test_only_classes or layout.test_only_classes)

    return load


def _fixture(layout: ClassFolders):
    def fixture(spec: TaskSpec, *, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
        """Each source's archive in the real layout: ``per_class`` images per class in train, 2 elsewhere."""
        rng = np.random.default_rng(seed)
        every = sorted({c for cs in layout.fixture_classes.values() for c in cs})
        # the published path of each split folder: the first candidate that lies under some source's top folder
        where = [("train", layout.train[0]), ("test", layout.test[0]), *(("train", f) for f in layout.ignored)]
        members: dict[str, list[tuple[str, bytes]]] = {s.path: [] for s in spec.sources}
        for split, folder in where:
            if (held := _holder(spec.sources, folder)) is None:
                if folder in layout.ignored:
                    continue  # a folder no download brings (Herbarium's test/, fetched only by BioBench's script)
                raise ValueError(f"task {spec.name!r}: no source unpacks to {folder}/; give the archive that holds it "
                                 f"its top folder, e.g. Source(..., top={folder.split('/')[0]!r})")
            source, inner = held
            for c in layout.fixture_classes.get(split, ()):
                k = every.index(c)
                for i in range(per_class if folder == layout.train[0] else 2):
                    h, w = int(rng.integers(24, 40)), int(rng.integers(28, 48))
                    if layout.fixture_mode == "L":
                        arr = np.clip(rng.normal(40 + 40 * k, 15, (h, w)), 0, 255).astype(np.uint8)
                        fmt, suffix = "PNG", "png"
                    else:
                        arr = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
                        arr[..., k % 3] = 120 + 40 * (k // 3)  # class colour, so a probe learns something
                        fmt, suffix = "JPEG", "jpg"
                    buf = io.BytesIO()
                    Image.fromarray(arr).save(buf, format=fmt)
                    members[source.path].append((f"{inner}/{c}/{rng.bytes(6).hex()}_{i:03d}.{suffix}", buf.getvalue()))
        return {path: _archive(path, files) for path, files in members.items()}

    return fixture


def _holder(sources: tuple[Source, ...], folder: str) -> tuple[Source, str] | None:
    """The source whose archive holds ``folder`` (a path under the data folder) and the path inside it; None when
    no source brings it."""
    for s in sources:
        placed = s.rename_to or s.top or ""
        if folder == placed or folder.startswith(f"{placed}/"):
            return s, f"{s.top}{folder[len(placed):]}" if s.rename_to else folder
    return None


def _archive(path: str, files: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    if path.endswith(".zip"):
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in files:
                z.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def spec(*, layout: ClassFolders, **facts) -> TaskSpec:
    """A :class:`TaskSpec` for a class-folder benchmark: ``facts`` are the spec's values, ``layout`` its folders."""
    name = facts["name"]
    return TaskSpec(load=_load(name, layout), missing=_missing(layout), fetch=fetch_sources, fixture=_fixture(layout),
                    kind="open-set" if layout.test_only_classes == "open-set" else "plain", **facts)
