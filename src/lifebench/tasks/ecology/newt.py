"""NeWT 2021 (Natural World Tasks, Van Horn et al., CVPR 2021): 164 binary tasks on iNaturalist photos.

Two archives from the iNat competition bucket:

* ``newt2021_labels.csv.tar.gz`` holds ``newt2021_labels.csv`` with the columns ``id, task_cluster,
  task_subcluster, task, label, text_label, split, height, width``: one row per image, ``label`` 0 or 1,
  ``split`` train or test;
* ``newt2021_images.tar.gz`` (4.1 GB) holds ``newt2021_images/<id>.jpg``.

Each ``task`` is a :class:`~lifebench.tasks.base.Part` with its own train/test rows; every image is embedded
once. Protocol: one logistic probe per task (C chosen on a held-out part of that task's training images).
Metric: accuracy pooled over the test images of all tasks (BioBench's "micro" NeWT score), so its stored
predictions are ids ``<task>/<image id>`` with labels "0"/"1". Neither archive has a published checksum:
the SHA-256 is recorded on first download and checked on every later use.

``--n-train N`` means what BioBench's ``n_train`` means for NeWT (``newt.sample``): per task, ``N // 2`` random
training images of label 0 and ``N - N // 2`` of label 1, a label with fewer kept whole; test images unchanged.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from lifebench.errors import DataError
from lifebench.tasks.base import Examples, Part, Task
from lifebench.tasks.catalog import Source, TaskSpec, fetch_sources, register
from lifebench.tasks.fixtures import jpeg, tar_bytes
from lifebench.tasks.folder import read_csv

__all__ = ["ARCHIVES", "BASE_URL", "COLUMNS", "download", "load", "make_fixture", "missing"]

BASE_URL = "https://ml-inat-competition-datasets.s3.amazonaws.com/newt"
ARCHIVES = ("newt2021_labels.csv.tar.gz", "newt2021_images.tar.gz")
CSV, IMAGES = "newt2021_labels.csv", "newt2021_images"
COLUMNS = ("id", "task_cluster", "task_subcluster", "task", "label", "text_label", "split", "height", "width")


def missing(root: Path) -> str | None:
    root = Path(root)
    if not (root / CSV).is_file():
        return f"no {CSV} in {root}"
    if not (root / IMAGES).is_dir():
        return f"no {IMAGES}/ folder in {root}"
    return None


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Fetch the labels and images archives (4.1 GB; :data:`SPEC`'s sources, trusted on first use) and unpack them
    into ``root``. ``base_url``: a mirror serving the same file names."""
    return (SPEC if base_url is None else SPEC.mirrored(base_url)).download(root, show_progress=show_progress)


def _rows(path: Path) -> list[dict[str, str]]:
    return read_csv(path, ("id", "task", "label", "split"), fix=f"expected the NeWT 2021 header ({', '.join(COLUMNS)}): "
                    "download it again with lifebench download newt")


def load(root: Path, **_: object) -> Task:
    """Read ``newt2021_labels.csv``: one part per NeWT task, every image embedded once."""
    root = Path(root)
    if why := missing(root):
        raise DataError(f"newt: {why}; run: lifebench download newt --dir {root.parent}")
    rows = _rows(root / CSV)
    if not rows:
        raise DataError(f"{root / CSV} has no rows; download it again with lifebench download newt")
    ids = sorted({r["id"] for r in rows})
    position = {i: k for k, i in enumerate(ids)}
    paths = np.array([str(root / IMAGES / f"{i}.jpg") for i in ids], dtype=object)
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise DataError(f"newt: {len(absent)} images listed in {CSV} are missing, e.g. {absent[0]}; "
                        "unpack newt2021_images.tar.gz again (lifebench download newt)")
    by_task: dict[str, list[dict[str, str]]] = {}
    for line, r in enumerate(rows, start=2):
        if r["label"] not in ("0", "1") or r["split"] not in ("train", "test"):
            raise DataError(f"{root / CSV} line {line}: label {r['label']!r} / split {r['split']!r}; NeWT labels "
                            "are 0 or 1 and splits train or test")
        by_task.setdefault(r["task"], []).append(r)
    parts = []
    for name, task_rows in sorted(by_task.items()):
        labels = np.full(len(ids), "", dtype=object)
        train, test = [], []
        for r in task_rows:
            k = position[r["id"]]
            labels[k] = r["label"]
            (train if r["split"] == "train" else test).append(k)
        if len({labels[k] for k in train}) < 2:
            raise DataError(f"newt task {name!r} has training images of one label only; the labels file is damaged: "
                            "download it again")
        parts.append(Part(name, labels.astype(str), np.array(sorted(train)), np.array(sorted(test))))
    examples = Examples(ids=np.array(ids, dtype=object), paths=paths,
                        labels=np.full(len(ids), "", dtype=object))
    everything = np.arange(len(ids))
    return Task(name="newt", examples=examples, train_idx=everything, test_idx=everything, classes=("0", "1"),
                metric="accuracy", parts=tuple(parts), source="NeWT 2021 (iNaturalist)",
                split_source="given (per-task train/test)",
                description=f"{len(parts)} binary tasks, accuracy pooled over their test images")


def make_fixture(*, tasks: int = 3, per_label: int = 4, seed: int = 0) -> dict[str, bytes]:
    """Both archives in the real layout: ``tasks`` binary tasks with ``per_label`` train images per label and
    two test images per label; label 1 images are brighter in a task-specific channel, so a probe can learn."""
    rng = np.random.default_rng(seed)
    rows, images = [], {}
    clusters = ["appearance", "behavior", "context"]
    for t in range(tasks):
        task = f"{clusters[t % 3][:2]}_task_{t:02d}"
        for label in (0, 1):
            for split, n in (("train", per_label), ("test", 2)):
                for _ in range(n):
                    uid = f"{int(rng.integers(1 << 62)):016x}-{t:04x}-{label}"
                    arr = rng.integers(0, 120, (40, 56, 3), dtype=np.uint8)
                    arr[..., t % 3] += np.uint8(120 * label)
                    images[f"{IMAGES}/{uid}.jpg"] = jpeg(arr)
                    rows.append([uid, clusters[t % 3], "", task, label, ["no", "yes"][label], split, 40, 56])
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows)
    return {ARCHIVES[0]: tar_bytes({CSV: text.getvalue().encode()}), ARCHIVES[1]: tar_bytes(images)}


SPEC = register(TaskSpec(
    name="newt", display="NeWT", suite="reference", modality="in-situ photos", kingdom="Animalia/Plantae/Fungi",
    protocol="logreg", metric="accuracy", kind="parts", method="164 binary tasks, logistic probe each; accuracy "
    "pooled over tasks", n_train=None, n_test=None, source="NeWT 2021 (iNat)",
    license="see the NeWT repository (iNaturalist photos, CC licenses)", size="4.1 GB", load=load,
    missing=missing, fetch=fetch_sources, fixture=lambda spec, **kw: make_fixture(**kw),
    base_url=BASE_URL, sources=tuple(Source(name) for name in ARCHIVES),
    upstream=("samuelstevens/biobench@6376d97 src/biobench/newt/__init__.py",
              "visipedia/newt@e9f2618 README.md, benchmark/newt_task_clusters.csv"),
))
