"""ImageNet-1K (ILSVRC 2012): 1,000 object classes, a BioBench reference task.

**Source.** The gated Hugging Face dataset ``ILSVRC/imagenet-1k``. Its ``main`` branch holds Parquet shards,
not the loading script and tarballs BioBench used through ``datasets.load_dataset(..., trust_remote_code=True)``:

* ``data/train-NNNNN-of-00294.parquet``: 294 shards, about 155 GB, 1,281,167 rows;
* ``data/validation-NNNNN-of-00014.parquet``: 14 shards, 6.7 GB, 50,000 rows;
* ``data/test-NNNNN-of-00028.parquet``: 100,000 unlabelled rows (label -1), never downloaded;
* ``classes.py``: ``IMAGENET2012_CLASSES``, the 1,000 WordNet ids (wnids) in sorted order with their names.

Each row has ``image``, a struct of ``bytes`` (the original JPEG file) and ``path`` (its file name), and
``label``, an int64 index into ``IMAGENET2012_CLASSES``. The file name carries the wnid after its last ``_``:
``n01440764_10026_n01440764.JPEG`` in train and ``ILSVRC2012_val_00000001_n01751748.JPEG`` in validation.
Older revisions of the repository held ``imagenet-1k.py``, ``classes.py`` and the tarballs
``data/train_images_{0..4}.tar.gz``, ``data/val_images.tar.gz`` and ``data/test_images.tar.gz``. Their members
are the same flat file names.

These facts come from public code that reads the repository, cross-checked between several independent
projects (the shard names and counts, the ``image``/``label`` schema, the ``path`` format). The hub itself was not
reachable when this module was written. What was not verified: the exact byte content of ``main`` today, and
whether every train ``path`` repeats its wnid as a prefix. The loader checks both prefix and suffix and fails
with the offending name if that assumption is wrong.

**Download.** Through :func:`lifebench.download.download` against the resolve URLs
``https://huggingface.co/datasets/ILSVRC/imagenet-1k/resolve/main/data/<shard>`` (``HF_ENDPOINT`` replaces the
host, as in ``huggingface_hub``), with ``Authorization: Bearer <token>``. The token comes from ``HF_TOKEN``, else
from the file that ``hf auth login`` writes (``HF_TOKEN_PATH``, else ``$HF_HOME/token``). It is never sent to
the CDN the hub redirects to. The reasons for not using ``huggingface_hub.hf_hub_download``:

* ``huggingface_hub`` is an optional extra of lifebench, and an ImageNet download should not need it;
* this path gives the same contract as every other task: resume with HTTP Range, a SHA-256 recorded on first
  download and checked on every later use (lifebench pins no checksum: none could be read from the gated
  repository), and tests against a local HTTP server;
* the hub refuses a gated file with HTTP 401 or 403, and that becomes one ``DataError`` line telling the user to
  accept the terms and set ``HF_TOKEN``.

Shards go to ``<root>/.downloads/``. Once ``train/`` and ``val/`` are in place, ``.downloads/`` can be deleted. A
split whose folder exists is never fetched again.

**Unpack.** The JPEG bytes of every row are written unchanged to ``<root>/train/<path>`` or ``<root>/val/<path>``,
flat. That is the layout ``tar -xzf`` of the old tarballs gives, so such a copy loads as well. A split is
unpacked into ``<root>/.unpack-<split>/``, one shard at a time, with a marker per finished shard so an
interrupted unpack resumes. It is renamed to ``train/`` or ``val/`` only when every shard is in and the file
count equals the shards' row count. Checks on the way: file names must match the pattern of their split, and a
label id must always go with the same wnid. A shard that pyarrow cannot read is deleted, and its recorded
checksum is forgotten, so the next run fetches it again.

**Task.** Labels are the wnids parsed from the file names. Classes are the sorted wnids, which is also the order
of ``IMAGENET2012_CLASSES`` and so of the hub's label ids. Example ids are ``train/<file>`` and ``val/<file>``.
The split is train -> validation, as given. Protocol: logistic probe. Metric: top-1 accuracy (``"accuracy"``).
All 50,000 validation images are evaluated. BioBench's bootstrap had ``n = 49_362`` hard-coded, and its sharded
loader silently dropped the images of partial last batches. The folders are listed with ``os.scandir``, without
a ``stat`` per file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.download import CHECKSUMS_FILE, hf_download, hf_resolve_url
from lifebench.errors import DataError
from lifebench.progress import progress
from lifebench.tasks.base import Examples, Task
from lifebench.tasks.catalog import TaskSpec, register, via_base_url

__all__ = ["EXPECTED", "REPO", "REVISION", "SPLITS", "download", "hub_url", "load", "make_fixture", "missing",
           "shard_names", "wnid_of"]

log = logging.getLogger(__name__)

REPO = "ILSVRC/imagenet-1k"
REVISION = "main"
PAGE = f"https://huggingface.co/datasets/{REPO}"
SPLITS = {"val": ("validation", 14), "train": ("train", 294)}
"""Folder under the root -> (the hub's split name, number of Parquet shards). val first: it is 23x smaller."""
EXPECTED = {"train": 1_281_167, "val": 50_000}
_NAMES = {  # both end in _<wnid>.JPEG, so the wnid is name[-14:-5]; a train name starts with its wnid too
    "train": re.compile(r"(n\d{8})_\d+_\1\.JPEG"),
    "val": re.compile(r"ILSVRC2012_val_\d{8}_n\d{8}\.JPEG"),
}
_EXAMPLE = {"train": "n01440764_10026_n01440764.JPEG", "val": "ILSVRC2012_val_00000001_n01751748.JPEG"}


def wnid_of(name: str, split: str) -> str | None:
    """The WordNet id in an ImageNet file name of ``split`` ("train" or "val"), or None if it has another form."""
    return name[-14:-5] if _NAMES[split].fullmatch(name) else None


def shard_names(split: str) -> list[str]:
    """The hub's Parquet file names of ``split`` ("train" or "val"), e.g. ``validation-00000-of-00014.parquet``."""
    prefix, n = SPLITS[split]
    return [f"{prefix}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


def hub_url() -> str:
    """``<endpoint>/datasets/ILSVRC/imagenet-1k/resolve/main``; the endpoint is ``$HF_ENDPOINT`` if set."""
    return hf_resolve_url(REPO, REVISION)


def missing(root: Path) -> str | None:
    for split in SPLITS:
        if not (Path(root) / split).is_dir():
            return f"no {split}/ folder in {root}"
    return None


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Fetch the train and validation shards (about 162 GB), unpack their JPEGs into ``train/`` and ``val/``.

    Needs ``HF_TOKEN`` (or ``hf auth login``) for an account that accepted the dataset's terms on its page.
    """
    root, base_url = Path(root), (base_url or hub_url()).rstrip("/")
    label_wnid: dict[int, str] = {}
    for split in SPLITS:
        if (root / split).is_dir():
            continue
        shards = [hf_download(f"{base_url}/data/{name}", root / ".downloads" / name, task="imagenet1k", repo=REPO,
                              expected=f"data/{name}", gated=True, show_progress=show_progress)
                  for name in shard_names(split)]
        _unpack_split(root, split, shards, label_wnid, show_progress)
    return root


class _Unreadable(Exception):
    pass


def _rows(shard: Path) -> Iterator[tuple[str | None, bytes | None, int | None]]:
    """``(image.path, image.bytes, label)`` per row of a shard; a file pyarrow cannot parse raises _Unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(shard)
        schema = pf.schema_arrow
        image = schema.field("image").type if "image" in schema.names else None
        if (not isinstance(image, pa.StructType) or image.get_field_index("bytes") < 0
                or image.get_field_index("path") < 0 or "label" not in schema.names):
            raise DataError(f"imagenet1k: {shard.name} has columns {schema}; expected image (bytes, path) and "
                            "label as on the Hugging Face hub: the dataset's layout changed, report it")
        for batch in pf.iter_batches(batch_size=256, columns=["image", "label"]):
            images = batch.column(0)
            yield from zip(images.field("path").to_pylist(), images.field("bytes").to_pylist(),
                           batch.column(1).to_pylist(), strict=True)
    except (pa.ArrowException, OSError) as e:
        raise _Unreadable(str(e)) from None


def _num_rows(shard: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(shard).metadata.num_rows
    except (pa.ArrowException, OSError) as e:
        _forget(shard)
        raise DataError(f"imagenet1k: cannot read {shard.name} ({e}); it was deleted: rerun to fetch it again") from None


def _forget(shard: Path) -> None:
    """Delete a shard and its trust-on-first-use checksum, so that the next download fetches and records it anew."""
    shard.unlink(missing_ok=True)
    table_path = shard.parent / CHECKSUMS_FILE
    try:
        table = json.loads(table_path.read_text())
    except (OSError, ValueError):
        return
    if table.pop(shard.name, None) is not None:
        fd, tmp = tempfile.mkstemp(dir=shard.parent, prefix=CHECKSUMS_FILE, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, table_path)


def _unpack_split(root: Path, split: str, shards: list[Path], label_wnid: dict[int, str],
                  show_progress: bool) -> None:
    staging = root / f".unpack-{split}"
    staging.mkdir(parents=True, exist_ok=True)
    rows = {s.name: _num_rows(s) for s in shards}
    total = sum(rows.values())
    with progress(total, f"unpack {split}", "img", show_progress) as bar:
        for shard in shards:
            done = staging / f".done-{shard.name}"
            if not done.exists():
                _unpack_shard(shard, staging, split, label_wnid)
                done.touch()
            bar.update(rows[shard.name])
    with os.scandir(staging) as it:
        count = sum(1 for e in it if not e.name.startswith("."))
    if count != total:
        raise DataError(f"imagenet1k: the {split} shards hold {total} rows but {count} distinct files were "
                        f"unpacked into {staging}; rows share a file name upstream: report it")
    for shard in shards:
        (staging / f".done-{shard.name}").unlink()
    try:
        os.replace(staging, root / split)
    except OSError as e:
        raise DataError(f"imagenet1k: cannot rename {staging} to {root / split} ({e}); remove "
                        f"{root / split} and rerun") from None
    log.info("unpacked %d %s images into %s", total, split, root / split)


def _unpack_shard(shard: Path, staging: Path, split: str, label_wnid: dict[int, str]) -> None:
    try:
        for path, data, label in _rows(shard):
            name = (path or "").replace("\\", "/").rsplit("/", 1)[-1]
            wnid = wnid_of(name, split)
            if wnid is None:
                raise DataError(f"imagenet1k: {shard.name} has an image named {path!r}, not like "
                                f"{_EXAMPLE[split]}: the dataset's layout changed, report it")
            if data is None:
                raise DataError(f"imagenet1k: {shard.name} has no image bytes for {name}; report it upstream")
            if label is not None and label_wnid.setdefault(label, wnid) != wnid:
                raise DataError(f"imagenet1k: {shard.name}: {name} has label {label}, which other images give "
                                f"to {label_wnid[label]}; the shard's labels and file names disagree: report it")
            try:
                (staging / name).write_bytes(data)
            except OSError as e:
                raise DataError(f"imagenet1k: cannot write {staging / name} ({e.strerror}); fix that (free space, "
                                "permissions) and rerun: finished shards are kept") from None
    except _Unreadable as e:
        _forget(shard)
        raise DataError(f"imagenet1k: cannot read {shard.name} ({e}); it was deleted: rerun to fetch it "
                        "again") from None


def _scan(folder: Path, split: str) -> list[str]:
    """Sorted image file names in ``folder``; hidden entries are skipped, anything else is an error.

    ``DirEntry.is_file`` uses the file type the directory listing gives, so no file is stat'ed on local disks.
    """
    found, bad = [], []
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            if name[0] != ".":
                (found if entry.is_file() else bad).append(name)
    match = _NAMES[split].fullmatch
    bad += [name for name in found if match(name) is None]
    if bad:
        bad.sort()
        raise DataError(f"imagenet1k: {folder / bad[0]} is not an image file named like {_EXAMPLE[split]} "
                        f"({len(bad)} such entries); {split}/ holds the images flat, as lifebench download "
                        "imagenet1k unpacks them: move the others out")
    if not found:
        raise DataError(f"imagenet1k: no images in {folder}; remove it and run lifebench download imagenet1k")
    found.sort()
    return found


def load(root: Path, **_: object) -> Task:
    root = Path(root)
    why = missing(root)
    if why:
        raise DataError(f"imagenet1k: {why}; run: lifebench download imagenet1k --dir {root.parent} (needs "
                        f"HF_TOKEN of an account that accepted the terms at {PAGE})")
    ids: list[str] = []
    paths: list[str] = []
    labels: list[str] = []
    counts = {}
    for split in ("train", "val"):
        folder = root / split
        rows = _scan(folder, split)
        prefix = str(folder) + os.sep
        ids += [f"{split}/{name}" for name in rows]
        paths += [prefix + name for name in rows]
        labels += [sys.intern(name[-14:-5]) for name in rows]  # the wnid; 1.3M labels share 1,000 strings
        counts[split] = len(rows)
    classes = tuple(sorted(set(labels[:counts["train"]])))
    unseen = sorted(set(labels[counts["train"]:]) - set(classes))
    if unseen:
        example = next(i for i, lab in zip(ids, labels, strict=True) if lab == unseen[0])
        raise DataError(f"imagenet1k: class {unseen[0]} (e.g. {example}) appears in val but not in train "
                        f"({len(unseen)} such classes); unpack the train shards again (remove train/ and rerun "
                        "lifebench download imagenet1k)")
    if counts != EXPECTED or len(classes) != 1000:
        log.warning("imagenet1k: %d train and %d val images in %d classes; ILSVRC 2012 has 1,281,167 and 50,000 "
                    "in 1,000, so scores are not comparable with published ones", counts["train"], counts["val"],
                    len(classes))
    n_train = counts["train"]
    examples = Examples(ids=np.array(ids, dtype=object), paths=np.array(paths, dtype=object),
                        labels=np.array(labels, dtype=object))
    return Task(name="imagenet1k", examples=examples, train_idx=np.arange(n_train),
                test_idx=np.arange(n_train, len(ids)), classes=classes, metric="accuracy", protocol="logreg",
                source=str(root.resolve()), split_source="given",
                description=f"ImageNet-1K (ILSVRC 2012) from Hugging Face {REPO}: train -> validation")


# A few real classes with their index in IMAGENET2012_CLASSES (= their rank among the sorted wnids).
_FIXTURE_CLASSES = (("n01440764", 0), ("n01443537", 1), ("n01484850", 2), ("n01751748", 65))
_COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40))


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """Tiny shards with the hub's file names and schema, by repository path (``data/<shard>``).

    All 294 train and 14 validation shards exist, as on the hub: ``per_class`` train and 2 validation images per
    class are dealt round-robin over them in shuffled order, so most shards are empty. Columns: ``image`` (struct
    of ``bytes`` and ``path``) and ``label`` (int64, the class's index in ``IMAGENET2012_CLASSES``). The
    ``huggingface`` schema metadata of the real files is left out; lifebench does not read it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_val = 2
    image_ids = rng.choice(np.arange(1, 20_000), size=per_class * len(_FIXTURE_CLASSES), replace=False)
    val_ids = rng.choice(np.arange(1, EXPECTED["val"] + 1), size=n_val * len(_FIXTURE_CLASSES), replace=False)
    rows: dict[str, list[tuple[str, bytes, int]]] = {"train": [], "val": []}
    for k, ((wnid, label), colour) in enumerate(zip(_FIXTURE_CLASSES, _COLOURS, strict=True)):
        for split, n in (("train", per_class), ("val", n_val)):
            for i in range(n):
                arr = (rng.integers(0, 256, (36, 44, 3)) * 0.3 + np.asarray(colour) * 0.7).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=90)
                name = (f"{wnid}_{image_ids[k * per_class + i]}_{wnid}.JPEG" if split == "train"
                        else f"ILSVRC2012_val_{val_ids[k * n_val + i]:08d}_{wnid}.JPEG")
                rows[split].append((name, buf.getvalue(), label))
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("label", pa.int64())])
    out = {}
    for split, split_rows in rows.items():
        names = shard_names(split)
        order = rng.permutation(len(split_rows))
        for s, name in enumerate(names):
            part = [split_rows[j] for j in order[s::len(names)]]
            table = pa.table({"image": [{"bytes": b, "path": p} for p, b, _ in part],
                              "label": [lab for _, _, lab in part]}, schema=schema)
            buf = io.BytesIO()
            pq.write_table(table, buf)
            out[f"data/{name}"] = buf.getvalue()
    return out


SPEC = register(TaskSpec(
    name="imagenet1k", display="ImageNet-1K", suite="reference", modality="web photos", kingdom="-",
    protocol="logreg", metric="accuracy", kind="plain", method="logistic probe, train -> validation",
    n_train=1281167, n_test=50000, source="Hugging Face ILSVRC/imagenet-1k (gated; Parquet shards)",
    license="ImageNet terms of access: non-commercial research and education",
    size="about 162 GB (train 155, val 6.7)", load=load, missing=missing, fetch=via_base_url(download),
    fixture=lambda spec, **kw: make_fixture(**kw),
    upstream=("samuelstevens/biobench@6376d97 src/biobench/imagenet1k/__init__.py", "Hugging Face ILSVRC/imagenet-1k imagenet-1k.py, classes.py"),
))
