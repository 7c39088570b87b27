"""Ecdysis Foundation insects: pinned-specimen photos from the Ecdysis portal (bugbox.ecdysis.bio).

Source: the portal's public collection export. Facts from the portal's own code (EcdysisFoundation/bugbox_open
@ d66a8a4, ``bugbox3/samples/exports.py``, ``views_public.py``, ``templates/pages/collection_download.html``)
and from BioBench (samuelstevens/biobench @ 6376d97, ``src/biobench/ecdysis/{__init__,download}.py``):

* The download page (:data:`PAGE_URL`) links, in this order, the "Reviewed Specimens" export, the "All
  Specimens" export (AI identifications included) and a MetaFormer model zip. The reviewed export is the one
  BioBench used (its first ``.csv.zip`` link). Its file name is ``public-reviewed-img-exp__1__<UTC time>.zip``
  since December 2025 (``.csv.zip`` before), usually as a presigned S3 address with a query string; lifebench
  picks it by that name, else the first link containing ``.csv.zip`` (the older page).
* The zip holds one CSV (``public-reviewed-img-exp__1__<time>.csv`` today; BioBench met a member named ``zip``),
  written by pandas with a UTF-8 byte-order mark, one row per image, columns :data:`COLUMNS` (BioBench listed 17:
  the same without ``immature_stage``, added in January 2026). ``visit_date`` is a date (``YYYY-MM-DD``);
  ``image_thumbnail_large`` is ``specimen_images/<name>_thumbnail_large.<ext>`` and ``public_url`` is the media
  host + that path, so both end in the same file name.

Layout after download::

    <root>/metadata.csv                  the export's CSV, bytes unchanged
    <root>/images/<basename(image_thumbnail_large)>
    <root>/lifebench-images.json         size and SHA-256 of every fetched image
    <root>/.downloads/<export>.zip       the export, SHA-256 recorded on first download

Label: ``"gbif_class|gbif_order|gbif_family|gbif_genus|gbif_species"``. Rows without
``image_thumbnail_large`` or ``public_url`` have no image and are left out (BioBench skipped the first kind).

Split (BioBench's, made independent of row order): within each label, rows sorted by ``visit_date`` (as text,
which is date order for ISO dates; BioBench did the same) with ties broken by ``id`` (numerically for numeric
ids); the earliest ``int(0.8 n)`` rows are train and the rest test. n = 1, 2, 3, 4, 5 give 0/1, 1/1, 2/1, 3/1,
4/1: a label with one row is test only, as in BioBench, so every label has test rows and macro-F1 over the test
labels equals BioBench's average over all label ids; such a class was never trained on and scores 0
(``open_set``). Protocol: logistic probe; metric: macro-F1 over the labels present in test.

Downloads: the export is fetched once (``metadata.csv`` present = no new export; delete it to refresh).
Images are fetched by ``workers`` threads, each with retries and exponential backoff, written to
``<name>.part`` and renamed when complete, so a file under its final name is whole. Their sizes and SHA-256s
go into one manifest, rewritten atomically every 1,000 images or 30 s and when the run ends or is
interrupted (one checksum file per image would double the file count). A rerun checks every image on disk
against the manifest (size, then SHA-256; hashing reads the data once, far less work than fetching it),
refetches the ones that differ and fetches the absent ones; a file on disk with no record (the run was killed
before the manifest was written, or the images came from BioBench's script) is adopted and recorded. A
refetched image whose bytes differ from its record (the portal replaced it) is accepted and re-recorded, with
a warning. Images that still fail after the retries are counted and reported at the end in a DataError.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

import numpy as np
from PIL import Image

from lifebench.download import download as fetch_file
from lifebench.errors import ConfigError, DataError
from lifebench.progress import progress
from lifebench.tasks.base import Examples, Task
from lifebench.tasks.catalog import TaskSpec, register

__all__ = ["COLUMNS", "MANIFEST", "PAGE_PATH", "PAGE_URL", "download", "load", "make_fixture", "missing",
           "temporal_split"]

log = logging.getLogger(__name__)

PAGE_PATH = "/samples/collection-download/1"
PAGE_URL = f"https://bugbox.ecdysis.bio{PAGE_PATH}"
COLUMNS = ("id", "specimen_id", "image_thumbnail_large", "archival_identifier", "archival_stored", "visit_date",
           "country", "state_region", "county_region", "us_state_county_fips", "gbif_class", "gbif_order",
           "gbif_family", "gbif_genus", "gbif_species", "immature_stage", "reviewed", "public_url")
"""The export's columns in order (bugbox_open ``exports.py``); only ``_USED`` are read, so BioBench's 17 load too."""
REVIEWED_EXPORT = "public-reviewed-img-exp"  # bugbox_open exports.py PUBLIC_IMAGES_EXPORT_TITLE
_TAXA = ("gbif_class", "gbif_order", "gbif_family", "gbif_genus", "gbif_species")
_USED = ("id", "image_thumbnail_large", "visit_date", *_TAXA, "public_url")
MANIFEST = "lifebench-images.json"
TRAIN_FRACTION = 0.8

_RETRIES = 3
_BACKOFF_S = 1.0  # first retry waits this long, then 2x, 4x...
_TIMEOUT_S = 30.0
_FLUSH_EVERY, _FLUSH_SECONDS = 1000, 30.0
_SHOW = 3  # how many offending items a message names
_USER_AGENT = "lifebench (dataset download)"


# ---------------------------------------------------------------- reading metadata.csv


@dataclass(frozen=True)
class _Row:
    id: str
    image: str  # file name under images/
    url: str
    date: str
    label: str


def _few(items: list[str]) -> str:
    more = len(items) - _SHOW
    return ", ".join(items[:_SHOW]) + (f" (and {more} more)" if more > 0 else "")


def _read_rows(csv_path: Path) -> list[_Row]:
    """The rows of ``metadata.csv`` that name an image; raises DataError if a needed column is absent."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        absent = [c for c in _USED if c not in (reader.fieldnames or [])]
        if absent:
            raise DataError(f"{csv_path} lacks the column(s) {', '.join(absent)} (it has: "
                            f"{', '.join(reader.fieldnames or []) or 'none'}); the export changed: delete it and "
                            "rerun lifebench download ecdysis, or report it")
        rows, skipped = [], 0
        for r in reader:
            thumb, url = (r["image_thumbnail_large"] or "").strip(), (r["public_url"] or "").strip()
            if not thumb or not url:
                skipped += 1
                continue
            label = "|".join((r[c] or "").strip() for c in _TAXA)
            rows.append(_Row(r["id"].strip(), PurePosixPath(thumb).name, url, (r["visit_date"] or "").strip(), label))
    if skipped:
        log.info("%s: left out %d row(s) without image_thumbnail_large or public_url", csv_path, skipped)
    return rows


def _id_key(i: str) -> tuple[int, int, str]:
    return (0, int(i), "") if i.isdigit() else (1, 0, i)


def temporal_split(labels: list[str], dates: list[str], ids: list[str],
                   train_fraction: float = TRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Per label, the earliest ``floor(train_fraction * n)`` rows (by date, then id) train, the rest test.

    A label with one row goes to test, as in BioBench (``int(0.8 * 1) = 0``). Returns sorted ``int64`` arrays.
    """
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    train, test = [], []
    for members in by_label.values():
        members.sort(key=lambda i: (dates[i], _id_key(ids[i])))
        n = len(members)
        # floor(0.8 n) is already in [1, n - 1] for n >= 2; the clamp keeps that for any fraction.
        n_train = 0 if n == 1 else min(n - 1, max(1, int(np.floor(train_fraction * n + 1e-9))))
        train += members[:n_train]
        test += members[n_train:]
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


# ---------------------------------------------------------------- missing / load


def _absent(root: Path, rows: list[_Row]) -> list[_Row]:
    images = root / "images"
    return [r for r in rows if not (images / r.image).is_file()]


def missing(root: Path) -> str | None:
    root = Path(root)
    csv_path = root / "metadata.csv"
    if not csv_path.is_file():
        return f"no metadata.csv in {root}"
    try:
        rows = _read_rows(csv_path)
    except DataError as e:
        return str(e)
    absent = _absent(root, rows)
    if absent:
        return (f"{len(absent)} of {len(rows)} images listed in metadata.csv are absent from {root / 'images'}; "
                "rerun the download to fetch them, or run with --skip-bad-images to leave them out")
    return None


def load(root: Path, *, skip_bad_images: bool = False, test_size: float | None = None, n_folds: int | None = None,
         **_: object) -> Task:
    """The task from ``<root>/metadata.csv`` and ``<root>/images/`` with BioBench's temporal split."""
    root = Path(root)
    fix = f"run: lifebench download ecdysis --dir {root.parent}"
    if test_size is not None or n_folds:
        raise ConfigError("ecdysis has a fixed temporal split (earliest 80% of each species train); drop "
                          "--test-size/--folds")
    csv_path = root / "metadata.csv"
    if not csv_path.is_file():
        raise DataError(f"ecdysis: no metadata.csv in {root}; {fix}")
    rows = _read_rows(csv_path)
    absent = _absent(root, rows)
    if absent and not skip_bad_images:
        raise DataError(f"ecdysis: {len(absent)} of {len(rows)} images listed in metadata.csv are absent from "
                        f"{root / 'images'}: {_few([r.image for r in absent])}; {fix} (it fetches only what is "
                        "absent), or pass --skip-bad-images to leave them out")
    if absent:
        log.warning("ecdysis: leaving out %d row(s) whose image is absent: %s", len(absent),
                    _few([r.image for r in absent]))
        images = root / "images"
        rows = [r for r in rows if (images / r.image).is_file()]
    rows.sort(key=lambda r: _id_key(r.id))
    labels = [r.label for r in rows]
    counts = Counter(labels)
    if len(counts) < 2:
        raise DataError(f"ecdysis: {csv_path} has {len(counts)} label(s) with images; a classifier needs at least "
                        f"2; {fix}")
    images = root / "images"
    examples = Examples(ids=np.asarray([r.id for r in rows], dtype=str),
                        paths=np.asarray([str(images / r.image) for r in rows], dtype=str),
                        labels=np.asarray(labels, dtype=str))
    train_idx, test_idx = temporal_split(labels, [r.date for r in rows], [r.id for r in rows])
    single = sorted(c for c, n in counts.items() if n == 1)
    if single:
        log.info("ecdysis: %d label(s) have one image, which is tested only (as in BioBench; it scores 0): %s",
                 len(single), _few(single))
    return Task(name="ecdysis", examples=examples, train_idx=train_idx, test_idx=test_idx,
                classes=tuple(sorted(counts)), metric="macro_f1", protocol="logreg", source=str(root.resolve()),
                description="Ecdysis Foundation insect specimens; label class|order|family|genus|species",
                split_source="temporal per label: rows sorted by visit_date (ties by id), earliest int(80%) "
                             "train, the rest test; 1-row labels test only (BioBench)",
                open_set=True)  # BioBench's split puts 1-row labels in test only: kept, scored as misses


# ---------------------------------------------------------------- download


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def _get(url: str, *, timeout: float, retries: int) -> bytes:
    """GET ``url`` whole, retrying connection errors, short bodies, HTTP 5xx/408/429 with backoff."""
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) URLs from the export
                data = resp.read()
                expected = resp.headers.get("Content-Length")
                if expected is not None and len(data) != int(expected):
                    raise ConnectionError(f"got {len(data)} of {expected} bytes")
                return data
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, OSError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code < 500 and e.code not in (408, 429):
                raise
            if attempt == retries:
                raise
            time.sleep(_BACKOFF_S * 2.0**attempt)
    raise AssertionError("unreachable")


def _export_link(hrefs: list[str]) -> str | None:
    """The reviewed export among the page's links: by its name (today's page), else the first ``.csv.zip``."""
    for href in hrefs:
        name = PurePosixPath(urlsplit(href).path).name
        if name.startswith(REVIEWED_EXPORT) and name.endswith(".zip"):
            return href
    return next((h for h in hrefs if ".csv.zip" in h), None)


def _csv_zip_url(page_url: str) -> str:
    try:
        html = _get(page_url, timeout=_TIMEOUT_S, retries=_RETRIES).decode("utf-8", errors="replace")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise DataError(f"cannot fetch the ecdysis download page {page_url} ({e}); check the network and "
                        "rerun") from None
    parser = _LinkParser()
    parser.feed(html)
    href = _export_link(parser.hrefs)
    if href is not None:
        return urljoin(page_url, href)
    raise DataError(f"no link to the reviewed export ({REVIEWED_EXPORT}__<n>__<time>.zip, or a .csv.zip) on "
                    f"{page_url}; the page changed: report it, or save the export's CSV yourself as metadata.csv "
                    "in the data folder and rerun")


def _fetch_metadata(root: Path, page_url: str, show_progress: bool) -> None:
    url = _csv_zip_url(page_url)
    name = PurePosixPath(urlsplit(url).path).name or "metadata.csv.zip"
    archive = fetch_file(url, root / ".downloads" / name, show_progress=show_progress)
    with zipfile.ZipFile(archive) as z:
        files = [i for i in z.infolist() if not i.is_dir()]
        named = [i for i in files if PurePosixPath(i.filename).name == "metadata.csv"]
        csvs = [i for i in files if i.filename.lower().endswith(".csv")]
        # metadata.csv by name; else the one CSV; else the one file (BioBench met a member named "zip").
        choice = next((c for c in (named, csvs, files) if len(c) == 1), None)
        if choice is None:
            raise DataError(f"{archive.name} holds no single metadata.csv (members: "
                            f"{_few([i.filename for i in files]) or 'none'}); the export changed: report it")
        _write_atomic(root / "metadata.csv", z.read(choice[0]))
    log.info("ecdysis: metadata.csv from %s (%s)", url, choice[0].filename)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_manifest(path: Path) -> dict[str, dict]:
    try:
        return dict(json.loads(path.read_text())["files"])
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s is unreadable; every image on disk will be re-hashed and recorded again", path)
        return {}


def _write_manifest(path: Path, files: dict[str, dict]) -> None:
    _write_atomic(path, json.dumps({"version": 1, "files": files}, sort_keys=True, separators=(",", ":")).encode())


@dataclass(frozen=True)
class _Result:
    name: str
    status: str  # verified | adopted | fetched | refetched | failed
    record: dict | None = None
    error: str = ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _one_image(images: Path, name: str, url: str, recorded: dict | None) -> _Result:
    """Verify ``images/name`` against its record, or adopt it, or (re)fetch it from ``url``."""
    path = images / name
    status = "fetched"
    if path.is_file():
        size = path.stat().st_size
        if recorded is None:
            return _Result(name, "adopted", {"size": size, "sha256": _sha256(path)})
        if size == recorded["size"] and _sha256(path) == recorded["sha256"]:
            return _Result(name, "verified", recorded)
        log.warning("ecdysis: %s differs from its recorded size/SHA-256 (corrupted on disk); fetching it again",
                    name)
        path.unlink()
        status = "refetched"
    try:
        data = _get(url, timeout=_TIMEOUT_S, retries=_RETRIES)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        return _Result(name, "failed", error=f"{url}: {e}")
    record = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if recorded is not None and record != recorded:
        log.warning("ecdysis: %s from %s differs from the bytes recorded at first download; the portal replaced "
                    "it: recording the new version", name, url)
    part = path.with_name(path.name + ".part")
    try:
        part.write_bytes(data)
        os.replace(part, path)
    except OSError as e:
        part.unlink(missing_ok=True)
        return _Result(name, "failed", error=f"{path}: {e}")
    return _Result(name, status, record)


def download(root: Path, *, page_url: str | None = None, show_progress: bool = True, workers: int = 8) -> Path:
    """Fetch the metadata export (once) and every image it lists into ``root``; verify the ones already there.

    Resumable: finished images are checked against the manifest, not fetched again. Raises DataError at the
    end naming how many images failed (the others are kept and recorded; rerun to retry the failed ones).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers {workers!r} is not a positive whole number; give e.g. 8")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    if not (root / "metadata.csv").is_file():
        _fetch_metadata(root, page_url or PAGE_URL, show_progress)
    rows = _read_rows(root / "metadata.csv")
    jobs: dict[str, str] = {}  # file name -> URL
    for r in rows:
        if jobs.setdefault(r.image, r.url) != r.url:
            log.warning("ecdysis: rows name the image %s with two URLs (%s, %s); using the first", r.image,
                        jobs[r.image], r.url)
    manifest_path = root / MANIFEST
    manifest = _read_manifest(manifest_path)
    stats: Counter[str] = Counter()
    failures: list[str] = []
    t0 = time.perf_counter()
    pending = 0
    last_flush = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ecdysis-dl")
    try:
        with progress(len(jobs), "ecdysis images", "img", show_progress) as bar:
            todo = iter(jobs.items())
            running: set[Future[_Result]] = set()
            while True:  # at most 4 x workers jobs queued, so an interrupt stops quickly
                for name, url in todo:
                    running.add(pool.submit(_one_image, root / "images", name, url, manifest.get(name)))
                    if len(running) >= 4 * workers:
                        break
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    res = fut.result()
                    stats[res.status] += 1
                    bar.update(1)
                    if res.status == "failed":
                        failures.append(res.error)
                    elif res.record != manifest.get(res.name):
                        manifest[res.name] = res.record
                        pending += 1
                if pending >= _FLUSH_EVERY or (pending and time.monotonic() - last_flush > _FLUSH_SECONDS):
                    _write_manifest(manifest_path, manifest)
                    pending, last_flush = 0, time.monotonic()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if pending:
            _write_manifest(manifest_path, manifest)
    log.info("ecdysis: %d images in %.0f s: %d fetched, %d verified, %d adopted, %d refetched, %d failed",
             len(jobs), time.perf_counter() - t0, stats["fetched"], stats["verified"], stats["adopted"],
             stats["refetched"], stats["failed"])
    if failures:
        raise DataError(f"ecdysis: {len(failures)} of {len(jobs)} images failed to download ({_few(failures)}); "
                        "the others are kept and verified: rerun lifebench download ecdysis to retry the failed "
                        "ones, or run with --skip-bad-images to leave them out")
    return root


# ---------------------------------------------------------------- test fixture

_SPECIES = (  # (class, order, family, genus, species), colour
    (("Insecta", "Coleoptera", "Carabidae", "Harpalus", "Harpalus pensylvanicus"), (150, 40, 30)),
    (("Insecta", "Coleoptera", "Coccinellidae", "Coccinella", "Coccinella septempunctata"), (220, 40, 40)),
    (("Insecta", "Hymenoptera", "Apidae", "Bombus", "Bombus impatiens"), (220, 200, 40)),
    (("Insecta", "Lepidoptera", "Noctuidae", "Helicoverpa", "Helicoverpa zea"), (120, 110, 70)),
    (("Arachnida", "Araneae", "Lycosidae", "Pardosa", "Pardosa milvina"), (60, 60, 60)),
)
_PLACES = (("Ohio", "Franklin", "39049"), ("South Dakota", "Brookings", "46011"), ("Iowa", "Story", "19169"))
EXPORT_PATH = "/media/exports/public-reviewed-img-exp__1__2026-01-07_120000.zip"
EXPORT_QUERY = "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=0f1e"
"""The fixture page links the export as a presigned S3 address (path + this query), as the portal does."""
EXPORT_MEMBER = "public-reviewed-img-exp__1__2026-01-07_120000.csv"
IMAGE_PATH = "/media/specimen_images"


def make_fixture(*, base_url: str, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """The files a local HTTP server must serve, by URL path (with query): each at ``base_url + key``.

    Unlike other tasks' fixtures this one needs ``base_url``, because the export's ``public_url`` column holds
    absolute image URLs. In the portal's current form (bugbox_open exports.py): the download page
    (:data:`PAGE_PATH`) linking the reviewed export, the all-specimens export and a model zip, in that order;
    the reviewed ``.zip`` (:data:`EXPORT_PATH` + :data:`EXPORT_QUERY`) holding one CSV (:data:`EXPORT_MEMBER`,
    with a UTF-8 byte-order mark, all :data:`COLUMNS`); and the images. Only the reviewed export is served, so
    fetching another link fails. Species ``i`` of :data:`_SPECIES` has ``per_class + i`` rows, except the last,
    which has 1 (a label with one row); visit dates repeat (ties), and the CSV rows are shuffled. Images are
    small class-coloured JPEGs.
    """
    base_url = base_url.rstrip("/")
    rng = np.random.default_rng(seed)
    counts = [per_class + i for i in range(len(_SPECIES) - 1)] + [1]
    ids = rng.permutation(np.arange(100_001, 100_001 + sum(counts)))
    out: dict[str, bytes] = {}
    records = []
    k = 0
    for (taxa, colour), n in zip(_SPECIES, counts, strict=True):
        days = rng.choice(np.arange(0, 700, 7), size=n, replace=True)  # weekly trap visits: ties happen
        for day in days:
            row_id = int(ids[k])
            k += 1
            name = f"ECDYS_{row_id:08d}_thumbnail_large.jpg"
            arr = np.clip(rng.normal(colour, 25, (36, 48, 3)), 0, 255).astype(np.uint8)
            img = io.BytesIO()
            Image.fromarray(arr).save(img, format="JPEG", quality=90)
            out[f"{IMAGE_PATH}/{name}"] = img.getvalue()
            state, county, fips = _PLACES[int(rng.integers(len(_PLACES)))]
            visit = np.datetime64("2022-04-04") + np.timedelta64(int(day), "D")
            records.append({
                "id": str(row_id), "specimen_id": str(row_id - 90_000),
                "image_thumbnail_large": f"specimen_images/{name}",
                "archival_identifier": f"ECDYS{row_id - 90_000:07d}", "archival_stored": "True",
                "visit_date": str(visit), "country": "United States", "state_region": state,
                "county_region": county, "us_state_county_fips": fips, "gbif_class": taxa[0],
                "gbif_order": taxa[1], "gbif_family": taxa[2], "gbif_genus": taxa[3], "gbif_species": taxa[4],
                "immature_stage": "False", "reviewed": "TRUE",
                "public_url": f"{base_url}{IMAGE_PATH}/{name}",
            })
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([records[i] for i in rng.permutation(len(records))])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(EXPORT_MEMBER, text.getvalue().encode("utf-8-sig"))
    out[EXPORT_PATH + EXPORT_QUERY] = buf.getvalue()
    everything = EXPORT_PATH.replace(REVIEWED_EXPORT, "public-all-img-exp")
    out[PAGE_PATH] = (
        "<!doctype html><html><head><title>Collection Download | BugBox</title></head><body>"
        '<nav><a href="/">Home</a> <a href="/samples/">Samples</a></nav>'
        "<h2>Collection Download</h2><p>Images are provided as publically accessible links.</p>"
        f'<p><a href="{base_url}{EXPORT_PATH}{EXPORT_QUERY}" class="btn btn-success">Reviewed Specimens</a></p>'
        f'<p><a href="{base_url}{everything}{EXPORT_QUERY}" class="btn btn-warning">All Specimens</a></p>'
        f'<p><a href="{base_url}/media/private_site_content/metaformer-version-3.zip{EXPORT_QUERY}" '
        'class="btn btn-danger">MetaFormer Model</a></p></body></html>'
    ).encode()
    return out


def _fixture(spec: TaskSpec, **kw) -> dict[str, bytes]:
    """The fixture files by path under ``spec.base_url`` (the export's image URLs point there too)."""
    base = spec.base_url or PAGE_URL[: -len(PAGE_PATH)]
    return {path.lstrip("/"): data for path, data in make_fixture(base_url=base, **kw).items()}


def _fetch(spec: TaskSpec, root: Path, *, show_progress: bool = True) -> Path:
    return download(root, page_url=f"{spec.base_url}{PAGE_PATH}" if spec.base_url else None,
                    show_progress=show_progress)


SPEC = register(TaskSpec(
    name="ecdysis", display="Ecdysis", suite="ecology", modality="specimen photos", kingdom="Animalia",
    protocol="logreg", metric="macro_f1", kind="open-set", method="logistic probe, per-label temporal 80/20 split",
    n_train=None, n_test=None, source="Ecdysis portal metadata CSV + per-image URLs", license="see source",
    size="not recorded", load=load, missing=missing, fetch=_fetch, fixture=_fixture,
    
    upstream=("samuelstevens/biobench@6376d97 src/biobench/ecdysis/__init__.py, download.py",
              "EcdysisFoundation/bugbox_open@d66a8a4 bugbox3/samples/exports.py, views_public.py"),
))
