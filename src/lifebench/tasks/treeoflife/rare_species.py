"""Rare Species (Hugging Face ``imageomics/rare-species``): 400 IUCN-listed animal species, 30 EOL images each.

Built with BioCLIP from Encyclopedia of Life images of species listed by the IUCN Red List as Near Threatened to
Extinct in the Wild, and held out of TreeOfLife-10M. The compilation is CC0; each image keeps its own licence
(CC0 to CC BY-NC-SA, listed in the repository's ``metadata/licenses.csv``).

Layout (the dataset repository, mirrored under ``<root>``)::

    metadata.csv                                   one row per image (the Hub's image-folder metadata)
    dataset/<Kingdom-Phylum-Class-Order-Family-Genus-species>/<eol_content_id>_<eol_page_id>_eol-full-size-copy.jpg
    metadata/rarespecies-catalog.csv, metadata/licenses.csv   (not needed; not downloaded)

``metadata.csv`` columns: ``file_name`` (path from the repository root), ``rarespecies_id``, ``eol_content_id``,
``eol_page_id``, ``kingdom``, ``phylum``, ``class``, ``order``, ``family``, ``genus``, ``species`` (the epithet),
``sciName`` ("Genus species") and ``common``. The class is ``sciName``; every class carries its seven ranks and
common name, which BioCLIP's ``taxon_com`` text uses ("Animalia Chordata Aves ... Myadestes obscurus with common
name 'Oma'o").

Download: ``metadata.csv``, then every image it lists, each through
``https://huggingface.co/datasets/imageomics/rare-species/resolve/main/<path>`` (resumable; ``HF_TOKEN`` is sent
as a bearer token when set, never to the CDN a request is redirected to). No checksums are published per file,
so each file's SHA-256 is recorded on first download (in ``lifebench-checksums.json`` beside it) and checked on
every later use. Class folders download in parallel, one thread per folder.

Every image is both train and test (see :mod:`lifebench.tasks.treeoflife`); protocol ``zero-shot`` (BioCLIP used
the ``taxon_com`` text type here), metric ``accuracy``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import threading
import uuid
from collections import Counter, defaultdict
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import numpy as np
from PIL import Image

from lifebench.download import download as fetch_file
from lifebench.download import hf_headers
from lifebench.errors import DataError
from lifebench.progress import progress
from lifebench.tasks.base import Task
from lifebench.tasks.catalog import TaskSpec, register, via_base_url
from lifebench.tasks.folder import read_csv
from lifebench.tasks.taxonomy import RANKS, rank_columns
from lifebench.tasks.treeoflife import every_image_task, one_taxonomy_per_class

__all__ = ["BASE_URL", "METADATA", "REPO", "download", "load", "make_fixture", "missing"]

log = logging.getLogger(__name__)

REPO = "imageomics/rare-species"
REVISION = "main"
BASE_URL = f"https://huggingface.co/datasets/{REPO}/resolve/{REVISION}"
METADATA = "metadata.csv"
WORKERS = 8
_SHOW = 3
# metadata.csv column -> key; first match wins (the Hub file uses the first spelling of each, BioCLIP's annotation
# CSV the second). The ranks' columns come from taxonomy.rank_columns (BioCLIP's `cls` vs `class`).
_COLUMNS = {"file": ("file_name", "filepath", "file_path"), "sci": ("sciName", "sciname", "scientific_name"),
            "common": ("common", "common_name")}


def _read(meta: Path) -> list[dict[str, str]]:
    """Rows of ``metadata.csv`` as {file, sci, common, kingdom ... species}, checked; line numbers in errors."""
    raw = [{k: (v or "").strip() for k, v in r.items() if k} for r in read_csv(
        meta, header=str.strip, fix="delete it and run: lifebench download rare-species")]
    if not raw:
        raise DataError(f"{meta} lists no images; delete it and run: lifebench download rare-species")
    header = list(raw[0])
    ranks = rank_columns(header)
    cols = {**{key: next((c for c in names if c in header), None) for key, names in _COLUMNS.items()},
            **{r: ranks.get(r) for r in RANKS}}
    needed = [k for k in ("file", "genus", "species") if cols[k] is None]
    if needed:
        raise DataError(f"{meta} has no {', '.join(_COLUMNS.get(k, (k,))[0] for k in needed)} column (columns: "
                        f"{', '.join(header) or 'none'}); delete it and run: lifebench download rare-species")
    rows, bad = [], []
    for line, r in enumerate(raw, start=2):
        row = {k: r.get(c, "") if c else "" for k, c in cols.items()}
        p = PurePosixPath(row["file"])
        if not row["file"] or p.is_absolute() or ".." in p.parts:
            bad.append(f"line {line}: file_name {row['file']!r}")
        elif not (row["sci"] or (row["genus"] and row["species"])):
            bad.append(f"line {line}: no sciName, genus or species")
        else:
            rows.append(row)
    if bad:
        raise DataError(f"{meta}: {len(bad)} unusable rows ({'; '.join(bad[:_SHOW])}); delete it and run: "
                        "lifebench download rare-species")
    return rows


def missing(root: Path) -> str | None:
    root = Path(root)
    meta = root / METADATA
    if not meta.is_file():
        return f"no {METADATA} in {root}"
    try:
        rows = _read(meta)
    except DataError as e:  # a broken metadata.csv is a reason to download again, not a crash of `run --suite`
        return str(e)
    absent = sum(not (root / r["file"]).is_file() for r in rows)
    if absent:
        return f"{absent} of {len(rows)} images listed in {METADATA} are missing under {root}"
    return None


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True,
             workers: int = WORKERS) -> Path:
    """Fetch ``metadata.csv`` and every image it lists that is not here yet (about 12,000 files)."""
    root, base = Path(root), (base_url or BASE_URL).rstrip("/")
    headers = hf_headers() or None
    meta = fetch_file(f"{base}/{METADATA}", root / METADATA, headers=headers, show_progress=False)
    rows = _read(meta)
    by_folder: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_folder[str(PurePosixPath(r["file"]).parent)].append(r["file"])
    lock = threading.Lock()

    def fetch_folder(files: list[str], bar) -> None:  # one thread per folder: its checksum record has one writer
        for name in files:
            fetch_file(f"{base}/{quote(name)}", root / name, headers=headers, show_progress=False)
            with lock:
                bar.update(1)

    with _per_file_logs_muted(), progress(len(rows), "rare-species images", "img", show_progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(fetch_folder, files, bar) for files in by_folder.values()]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in done:
            f.result()  # re-raises the first failure (a DataError naming the file)
    return root


class _PerFileInfo(logging.Filter):
    """Drops the INFO lines that :func:`lifebench.download.download` writes per file (its progress and the
    "recorded sha256" note): 12,000 images would give 24,000 lines. Warnings (retries, resumes) pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        if record.name == "lifebench.progress":
            return not (record.args and str(record.args[0]).startswith("download "))
        return not str(record.msg).startswith("recorded sha256")


@contextlib.contextmanager
def _per_file_logs_muted():
    quiet = _PerFileInfo()
    loggers = [logging.getLogger("lifebench.progress"), logging.getLogger("lifebench.download")]
    for lg in loggers:
        lg.addFilter(quiet)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(quiet)


def _epithet(genus: str, species: str) -> str:
    """The species epithet alone, also when the column holds "Genus epithet"."""
    words = species.split()
    return " ".join(words[1:]) if len(words) > 1 and words[0].lower() == genus.lower() else species


def load(root: Path, **_: object) -> Task:
    root = Path(root)
    get = f"run: lifebench download rare-species --dir {root.parent}"
    if not (root / METADATA).is_file():
        raise DataError(f"rare-species: no {METADATA} in {root}; {get}")
    rows = _read(root / METADATA)
    absent = [r["file"] for r in rows if not (root / r["file"]).is_file()]
    if absent:
        raise DataError(f"rare-species: {len(absent)} of {len(rows)} images listed in {METADATA} are missing under "
                        f"{root} (e.g. {', '.join(absent[:_SHOW])}); {get} (it fetches only the missing ones)")
    ids, paths, labels = [], [], []
    taxa: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        species = _epithet(r["genus"], r["species"])
        label = r["sci"] or f"{r['genus']} {species}"
        ids.append(r["file"])
        paths.append(str(root / r["file"]))
        labels.append(label)
        taxa[label].append({**{k: r[k] for k in RANKS if k != "species"}, "species": species, "common": r["common"]})
    counts = Counter(labels).values()
    return every_image_task(
        "rare-species", ids, paths, labels, taxonomy=one_taxonomy_per_class("rare-species", taxa), source=str(root),
        text_type="taxon_com",
        description=f"Rare Species (HF {REPO}): {len(ids)} images of {len(counts)} IUCN-listed species "
                    f"({min(counts)}-{max(counts)} each), all seven ranks and a common name per species")


# Four of the real species (ranks and common names as in the dataset), one with apostrophes in its common name.
_SPECIES = (
    ("Animalia", "Mollusca", "Bivalvia", "Unionida", "Unionidae", "Cyclonaias", "tuberculata", "purple wartyback",
     449393),
    ("Animalia", "Chordata", "Reptilia", "Testudines", "Geoemydidae", "Pangshura", "sylhetensis", "Assam Roofed Turtle",
     793083),
    ("Animalia", "Chordata", "Amphibia", "Caudata", "Cryptobranchidae", "Andrias", "japonicus",
     "Japanese Giant Salamander", 319982),
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Turdidae", "Myadestes", "obscurus", "'Oma'o", 45510188),
)
FIXTURE_COLUMNS = ("rarespecies_id", "eol_content_id", "eol_page_id", "kingdom", "phylum", "class", "order", "family",
                   "genus", "species", "sciName", "common", "file_name")


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """The repository's files by path: ``metadata.csv`` and ``dataset/<taxon folder>/<ids>_eol-full-size-copy.jpg``."""
    rng = np.random.default_rng(seed)
    out: dict[str, bytes] = {}
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(FIXTURE_COLUMNS)
    content_id = 12853730
    for s_i, (*ranks, common, page) in enumerate(_SPECIES):
        folder = "-".join(ranks)
        for _ in range(per_class):
            content_id += 1
            name = f"dataset/{folder}/{content_id}_{page}_eol-full-size-copy.jpg"
            arr = rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)
            arr[..., s_i % 3] = 210
            img = io.BytesIO()
            Image.fromarray(arr).save(img, format="JPEG", quality=90)
            out[name] = img.getvalue()
            rid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            writer.writerow([rid, content_id, page, *ranks, f"{ranks[5]} {ranks[6]}", common, name])
    out[METADATA] = table.getvalue().encode("utf-8")
    return out


SPEC = register(TaskSpec(
    name="rare-species", display="Rare Species", suite="tree-of-life", modality="web photos (EOL)",
    kingdom="Animalia", protocol="zero-shot", metric="accuracy", kind="plain",
    method="zero-shot (taxon_com names); 1/5-shot", n_train=12000, n_test=12000,
    source="Hugging Face imageomics/rare-species",
    license="CC0 compilation; each image CC0 to CC BY-NC-SA (metadata/licenses.csv)", size="not recorded",
    load=load, missing=missing, fetch=via_base_url(download), fixture=lambda spec, **kw: make_fixture(**kw),
    
    upstream=("Imageomics/bioclip@4ea3247", "Imageomics/pybioclip@a96a21f", "imageomics/rare-species metadata.csv"),
))
