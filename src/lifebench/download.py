"""Resumable, verified downloads and safe archive extraction for dataset recipes.

* ``download``: streams to ``<file>.part`` with a progress bar; an interrupted download resumes with an HTTP
  Range request; the result is checked against a published MD5 or SHA-256 when the recipe has one, and
  otherwise its SHA-256 is recorded in ``lifebench-checksums.json`` beside it on first download and checked
  on every later use (trust on first use). Only a verified file gets its final name.
* ``extract``: tar (gz, bz2, xz) and zip archives into a staging folder, refusing any member that would land
  outside the target (absolute paths, ``..``, links that escape); the staging folder is renamed into place
  only when extraction finished, so a full disk or a kill never leaves a folder that looks complete.

pooch (the usual choice) cannot resume an interrupted download, which matters for 40 GB archives, so the
HTTP part uses the standard library; Hugging Face datasets go through huggingface_hub, which resumes itself.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import time
import unicodedata
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

from lifebench.errors import DataError
from lifebench.fsutil import atomic_write
from lifebench.progress import progress

__all__ = ["CHECKSUMS_FILE", "HTTPStatusError", "download", "extract", "extract_renamed", "file_digest", "hf_download",
           "hf_headers", "hf_resolve_url"]

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "lifebench-checksums.json"
_CHUNK = 1 << 20


class HTTPStatusError(DataError):
    """A download refused by the server; ``status`` is the HTTP code (401 and 403: a token or access is needed)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def hf_headers() -> dict[str, str]:
    """``Authorization`` for Hugging Face Hub downloads: ``$HF_TOKEN``, else the token file that ``hf auth login``
    writes (``$HF_TOKEN_PATH``, else ``$HF_HOME/token``); empty when there is none (public datasets)."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
        try:
            token = Path(os.environ.get("HF_TOKEN_PATH") or Path(home) / "token").read_text().strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def hf_resolve_url(repo: str, revision: str = "main") -> str:
    """``<endpoint>/datasets/<repo>/resolve/<revision>``, the base URL of a Hub dataset's files; the endpoint is
    ``$HF_ENDPOINT`` if set (a mirror), as in huggingface_hub."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return f"{endpoint.rstrip('/')}/datasets/{repo}/resolve/{revision}"


def hf_download(url: str, dest: Path, *, task: str, repo: str, expected: str, gated: bool = False,
                sha256: str | None = None, show_progress: bool = True) -> Path:
    """:func:`download` of a file of the Hub dataset ``repo`` with the user's token (:func:`hf_headers`); a refusal
    (HTTP 401/403) or a missing file (404) becomes one DataError saying what to do. ``expected`` names the file as
    the task expects it on the hub; ``gated``: the dataset's terms must be accepted on its page first."""
    try:
        return download(url, dest, sha256=sha256, show_progress=show_progress, headers=hf_headers())
    except HTTPStatusError as e:
        if e.status in (401, 403):
            raise DataError(f"{task}: Hugging Face refused {expected} (HTTP {e.status}): {repo} "
                            f"{'is' if gated else 'may be'} gated; accept its terms at https://huggingface.co/datasets/"
                            f"{repo} while logged in, set HF_TOKEN to a read token of that account "
                            "(https://huggingface.co/settings/tokens) and rerun") from None
        if e.status == 404:
            raise DataError(f"{e}; the dataset's files changed on the hub (lifebench expects {expected}): "
                            "report it") from None
        raise


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _recorded(dest: Path) -> dict[str, str]:
    """The checksums recorded beside ``dest``; a damaged table is an error rather than an empty one, which would
    silently stop checking every file recorded in it (and be overwritten by the next record)."""
    p = dest.parent / CHECKSUMS_FILE
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}; make it readable and rerun") from None
    try:
        table = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        table = e
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise DataError(f"{p} is not a JSON object of file name -> sha256; restore it, or delete it to record "
                        "the checksums of the next downloads afresh")
    return table


def _record(dest: Path, sha256: str) -> None:
    table = _recorded(dest)
    table[dest.name] = sha256
    _write_table(dest.parent / CHECKSUMS_FILE, table)


def _write_table(path: Path, table: dict[str, str]) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(table, indent=1, sort_keys=True).encode()))


def _verify(path: Path, url: str, sha256: str | None, md5: str | None, recorded: str | None) -> str:
    digest = file_digest(path, "sha256")
    for name, expected, got in (("sha256", sha256, digest), ("md5", md5, file_digest(path, "md5") if md5 else None),
                                ("recorded sha256", recorded, digest)):
        if expected and got != expected.lower():
            fix = (f"if the source really changed, remove its line from {CHECKSUMS_FILE} and rerun"
                   if name == "recorded sha256" else "rerun; if it keeps failing the source changed")
            raise DataError(f"checksum mismatch for {path.name} from {url}: {name} {got}, expected {expected}; "
                            f"the file was removed; {fix}")
    return digest


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None,
             show_progress: bool = True, timeout: float = 60.0, retries: int = 3,
             headers: Mapping[str, str] | None = None) -> Path:
    """Download ``url`` to ``dest`` (resuming a partial ``dest.part``), verify it, and return ``dest``.

    Idempotent: an existing ``dest`` is re-verified (published hash, else the recorded SHA-256) and kept.
    ``headers`` (for example ``Authorization``) go to ``url`` only, never with a request that follows a
    redirect, so a token does not leak to a CDN.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            _verify(dest, url, sha256, md5, _recorded(dest).get(dest.name))
            return dest
        except DataError:
            dest.unlink()
            raise
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _stream(url, part, timeout, show_progress, headers)
            break
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, OSError) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise DataError(f"disk full while downloading {dest.name} to {dest.parent}; free space and rerun "
                                "(the partial file is kept and will resume)") from None
            if isinstance(e, urllib.error.HTTPError) and e.code < 500 and e.code != 429:
                raise HTTPStatusError(f"cannot download {url}: HTTP {e.code} {e.reason}", e.code) from None
            if attempt == retries:
                raise DataError(f"cannot download {url} after {retries + 1} attempts ({e}); check the network and "
                                "rerun: the partial file is kept and will resume") from None
            wait = 2.0**attempt
            log.warning("download of %s interrupted (%s); resuming in %.0f s", dest.name, e, wait)
            time.sleep(wait)
    recorded = _recorded(dest).get(dest.name)
    try:
        digest = _verify(part, url, sha256, md5, recorded)
    except DataError:
        part.unlink(missing_ok=True)
        raise
    if not sha256 and not md5 and recorded is None:
        _record(dest, digest)
        log.info("recorded sha256 %s for %s (no published checksum); later uses are checked against it",
                 digest, dest.name)
    os.replace(part, dest)
    return dest


def _stream(url: str, part: Path, timeout: float, show_progress: bool,
            headers: Mapping[str, str] | None = None) -> None:
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    for key, value in (headers or {}).items():
        req.add_unredirected_header(key, value)  # urllib does not copy these to a redirect's request
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - recipe URLs are http(s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part file is already complete
            return
        raise
    with resp:
        if have and resp.status != 206:
            log.info("server ignored the resume request for %s; starting over", part.name)
            have = 0
        total = resp.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        mode = "ab" if have else "wb"
        with open(part, mode) as f, progress(total or 0, f"download {part.name[:-5]}", "B", show_progress) as bar:
            bar.update(have)
            while block := resp.read(_CHUNK):
                f.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size < total:
        raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


class _Refused(DataError):
    """An archive that will not be extracted: a hostile member, or not a readable archive at all."""


_SPECIAL = (("ischr", "character device"), ("isblk", "block device"), ("isfifo", "named pipe (fifo)"))


def _safe_members_tar(tar: tarfile.TarFile, archive: Path):
    for m in tar.getmembers():
        name = Path(m.name)
        if name.is_absolute() or ".." in name.parts:
            raise _Refused(f"{archive.name}: member {m.name!r} would be written outside the target")
        if (m.issym() or m.islnk()) and (Path(m.linkname).is_absolute() or ".." in Path(m.linkname).parts):
            raise _Refused(f"{archive.name}: link {m.name!r} -> {m.linkname!r} escapes the target")
        for test, kind in _SPECIAL:
            if getattr(m, test)():
                raise _Refused(f"{archive.name}: member {m.name!r} is a {kind}, which no data archive holds")
        yield m


def _discard(archive: Path) -> None:
    """Delete a refused archive and its recorded checksum: a rerun downloads it again instead of trusting it."""
    archive.unlink(missing_ok=True)
    table_path = archive.parent / CHECKSUMS_FILE
    try:
        table = _recorded(archive)
    except DataError:
        return
    if table.pop(archive.name, None) is not None:
        _write_table(table_path, table)


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract ``archive`` into the folder ``dest``; returns the top-level entries it created there.

    Members are unpacked into a staging folder inside ``dest`` first; only when that finished are its top-level
    entries moved into ``dest`` (replacing older copies) and a marker ``.lifebench-extracted-<archive>`` written.
    Idempotent: with the marker present nothing is done again. An archive that is refused (a member that would
    land outside ``dest``, an escaping link, a device file or fifo) or cannot be read is deleted with its recorded
    checksum: it is a download, and a rerun should fetch it again rather than trust it.
    """
    archive, dest = Path(archive), Path(dest)
    marker = dest / f".lifebench-extracted-{archive.name}"
    if marker.exists():
        return [dest / line for line in marker.read_text().split("\n") if line]
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob(f".extracting-{archive.name}-*"):  # left by a killed extraction: never trusted
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=f".extracting-{archive.name}-"))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    p = Path(name)
                    if p.is_absolute() or ".." in p.parts:
                        raise _Refused(f"{archive.name}: member {name!r} would be written outside the target")
                z.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                tar.extractall(staging, members=list(_safe_members_tar(tar, archive)), filter="data")
        else:
            raise _Refused(f"{archive.name} is neither a zip nor a tar archive")
        entries = sorted(staging.iterdir())
        for entry in entries:
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
        marker.write_text("".join(f"{e.name}\n" for e in entries))
        return [dest / e.name for e in entries]
    except (_Refused, zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
        _discard(archive)
        what = str(e) if isinstance(e, _Refused) else f"{archive.name} is corrupt or truncated ({e or type(e).__name__})"
        raise DataError(f"{what}; not extracting: the archive was deleted, so a rerun downloads it again") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DataError(f"disk full while extracting {archive.name} into {dest}; free space and rerun "
                            "(nothing partial is kept)") from None
        raise DataError(f"cannot extract {archive.name}: {e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def extract_renamed(archive: str | os.PathLike, dest: str | os.PathLike, top: str, rename_to: str) -> Path:
    """Extract ``archive`` into a staging folder of ``dest``, then rename its top folder ``top`` to
    ``dest/rename_to``: the target appears only complete (SYKE's plankton zips unpack to dated folders that become
    ``train/`` and ``val/``). Idempotent: an existing target is kept."""
    archive, dest = Path(archive), Path(dest)
    target, staging = dest / rename_to, dest / f".unpack-{rename_to}"
    if target.is_dir():
        shutil.rmtree(staging, ignore_errors=True)  # left over if a run died after the rename
        return target
    entries = extract(archive, staging)
    os.replace(_top_folder(entries, top, archive.name, rename_to), target)
    shutil.rmtree(staging)
    return target


def _top_folder(entries: list[Path], folder: str, archive: str, rename_to: str) -> Path:
    """The archive's top folder ``folder``, compared in Unicode NFC (a zip may store ``ö`` decomposed, or in a
    legacy code page when its UTF-8 flag is missing); else its only top folder, with a warning."""
    dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".") and e.name != "__MACOSX"]
    for d in dirs:
        if unicodedata.normalize("NFC", d.name) == unicodedata.normalize("NFC", folder):
            return d
    if len(dirs) == 1:
        log.warning("%s unpacked to %s/, not %s/; using it", archive, dirs[0].name, folder)
        return dirs[0]
    found = ", ".join(sorted(e.name for e in entries)) or "nothing"
    raise DataError(f"{archive} did not unpack to one {folder}/ folder (found: {found}); the archive changed "
                    f"upstream: report it, or unpack it yourself into {rename_to}/")
