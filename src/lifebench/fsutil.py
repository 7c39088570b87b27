"""File helpers: atomic writes (a file has its old content or its complete new content, never half of it) and
reading a UTF-8 text file with an error that says where it is not UTF-8."""

from __future__ import annotations

import codecs
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from lifebench.errors import DataError

__all__ = ["atomic_write", "nearest_existing", "read_text"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make every report private to its writer
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a full disk: say which file could not be written
            e.filename = str(path)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it, so put it straight back
    os.umask(mask)
    return mask


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else its closest existing parent folder (or file): what a write under
    ``path`` would first have to get through."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def read_text(path: str | os.PathLike[str], *, what: str, fix: str) -> str:
    """The text of a UTF-8 file (a byte-order mark allowed), read whole.

    Decoding the bytes at once (not through a text stream, which decodes in chunks) lets the error name the
    offending byte's offset in the file and its line, which is what a user needs to find it in an editor.
    Raises DataError naming ``what`` and ``path``, and ``fix``, when the file cannot be read or is not UTF-8.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}; {fix}") from None
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        line = raw[:at].count(b"\n") + 1
        raise DataError(f"{what} {path} is not UTF-8 text (byte {raw[at]:#04x} at offset {at}, line {line}); "
                        f"{fix}") from None
