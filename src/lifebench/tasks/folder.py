"""Turn a user's own images into a :class:`~lifebench.tasks.base.Task`: a folder of class folders or a manifest.

Folder layouts (class = the folder name):

* ``<root>/<class>/**/<image>``: no split given; lifebench makes a stratified one (:mod:`.split`).
* ``<root>/train/<class>/**`` and ``<root>/test/<class>/**``: split given. ``val/`` or ``validation/``
  serve as the test split when there is no ``test/``.

Images are files ending in one of :data:`IMAGE_EXTENSIONS` (any case). Hidden files and folders, OS junk
(``Thumbs.db``, ``desktop.ini``, ``__MACOSX``) and text sidecars (:data:`SIDECAR_EXTENSIONS`, e.g. notes or
per-image JSON) inside class folders are ignored, and the ignored count is logged; any other file inside a
class folder is an error, so a stray ``.heic`` or ``.npy`` is never silently dropped. Files lying directly in
the root that are not images (a README, a licence) are ignored.

Manifests (``.csv``, ``.tsv``, ``.parquet``) have one row per image with columns ``path`` and ``label``
(required), and ``split`` (``train``/``test``, ``val``/``validation`` counting as test), ``group`` and ``id``
(optional). Column names are matched case-insensitively and common aliases are accepted
(:data:`COLUMN_ALIASES`). Relative paths resolve against the manifest's folder.

Ids are paths relative to the root with forward slashes (folders) or the manifest's ``id`` (default: the
path as written); examples are sorted by id, so reordering files or rows gives the same task.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifebench.errors import BadImageError, ConfigError, DataError, one_line
from lifebench.fsutil import read_text
from lifebench.tasks.base import Examples, Task
from lifebench.tasks.split import CROSS_FIT_BELOW, DEFAULT_TEST_SIZE, default_folds, make_split
from lifebench.tasks.taxonomy import RANKS

__all__ = ["COLUMN_ALIASES", "IMAGE_EXTENSIONS", "MANIFEST_SUFFIXES", "SIDECAR_EXTENSIONS", "TEST_ONLY_POLICIES",
           "load_split_folders", "load_task", "read_csv"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SIDECAR_EXTENSIONS = frozenset({".txt", ".json", ".csv", ".tsv", ".md", ".xml", ".yaml", ".yml"})
MANIFEST_SUFFIXES = frozenset({".csv", ".tsv", ".parquet"})
TEST_SPLIT_DIRS = ("test", "val", "validation")
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "path": ("path", "filepath", "file_path", "file", "filename", "image", "image_path", "img_path"),
    "label": ("label", "class", "species", "category", "y", "target"),
    "split": ("split",),
    "group": ("group",),
    "id": ("id",),
}
TAXON_COMMON_ALIASES = ("common", "common_name", "vernacular_name", "vernacularname")
_SPLIT_VALUES = {"train": "train", "test": "test", "val": "test", "validation": "test"}
_LAYOUT_HELP = "give a folder of class folders or a CSV/Parquet manifest"
_SHOW = 3  # how many offending items an error message names


def _few(items: Sequence[str]) -> str:
    """``'a, b, c (and 4 more)'``: the first few items of a list and how many were left out."""
    shown = ", ".join(items[:_SHOW])
    more = len(items) - _SHOW
    return shown + (f" (and {more} more)" if more > 0 else "")


def _csv_error(what: str, path: str | os.PathLike[str], line: int, err: csv.Error, fix: str) -> DataError:
    """One line for a CSV the csv module refuses: a field over its size limit (in practice an unclosed quote
    that swallows the rest of the file) or a malformed quote."""
    if "field larger than field limit" in str(err):
        return DataError(f"{what} {path} line {line}: a field is longer than {csv.field_size_limit()} characters "
                         "(an unclosed quote?); close the quote or shorten the field")
    return DataError(f"{what} {path} line {line}: {err}; {fix}")


def read_csv(
    path: str | os.PathLike[str], required: Sequence[str] = (), *, fix: str,
    header: Callable[[str], str] | None = None,
) -> list[dict[str, str]]:
    """Rows of a benchmark's CSV file (UTF-8, a byte-order mark allowed) as dicts keyed by the header.

    ``header`` rewrites each column name first (``str.strip`` for files with padded headers). Raises DataError
    naming the file and ``fix`` when it is not UTF-8 or not CSV the csv module can read, or when ``required``
    columns are missing (naming them and the columns found)."""
    reader = csv.DictReader(io.StringIO(read_text(path, what="CSV file", fix=fix), newline=""))
    start = 1  # the line the record being read starts on (a quoted field may span lines)
    try:
        columns = [header(c) for c in reader.fieldnames or []] if header else list(reader.fieldnames or [])
        reader.fieldnames = columns
        if absent := [c for c in required if c not in columns]:
            raise DataError(f"{path} has no {' or '.join(absent)} column (columns: {', '.join(columns) or 'none'}); "
                            f"{fix}")
        rows = []
        while True:
            start = reader.line_num + 1
            if (row := next(reader, None)) is None:
                return rows
            rows.append(row)
    except csv.Error as e:
        raise _csv_error("CSV file", path, start, e, fix) from None


def load_task(
    path: str | os.PathLike[str],
    *,
    test_size: float | None = None,
    seed: int = 0,
    name: str | None = None,
    skip_bad_images: bool = False,
    n_folds: int | None = None,
) -> Task:
    """Load a folder of class folders or a CSV/TSV/Parquet manifest as a task.

    Parameters
    ----------
    path:
        A folder (see the module docstring for layouts) or a manifest file.
    test_size, seed:
        Used only when the data names no split: the stratified split's test fraction (default 0.25) and seed.
        Data without a given split or groups and with fewer than :data:`~lifebench.tasks.split.CROSS_FIT_BELOW`
        images is cross-fitted in 5 folds unless ``test_size`` or ``n_folds`` is given: a 25% split would leave
        too few test images to rank models on.
    name:
        Task name; defaults to the folder name or the manifest's file stem.
    skip_bad_images:
        Leave out empty (0-byte) image files with a warning instead of raising.
    n_folds:
        Cross-fitting instead of one split (data without a given split only): every image is predicted
        once, by a probe fit on the other folds.

    Raises
    ------
    DataError
        For anything that makes the data unusable, naming the offending file or value and the fix.
    """
    p = Path(os.path.expanduser(path))  # Path.expanduser raises for ~unknown-user
    if not p.exists():
        raise DataError(f"task path {str(path)!r} does not exist; {_LAYOUT_HELP}")
    p = p.resolve()
    _check_utf8(p, "folder" if p.is_dir() else "file")
    if p.is_dir():
        rows, remove_hint = _scan_folder(p), "add images or remove the class folder"
    elif p.suffix.lower() in MANIFEST_SUFFIXES:
        rows, remove_hint = _read_manifest(p), "add rows for it or remove its rows"
    else:
        raise DataError(f"task path {str(p)!r} is a {p.suffix or 'suffix-less'} file, not a folder or manifest; "
                        f"{_LAYOUT_HELP} (.csv, .tsv or .parquet)")
    rows = _drop_empty_files(rows, skip_bad_images)
    task_name = name or (p.name if p.is_dir() else p.stem)
    return _build_task(rows, task_name, p, test_size, seed, remove_hint, n_folds)


TEST_ONLY_POLICIES = ("error", "drop", "open-set")
"""What :func:`load_split_folders` does with test images of a class that has no training images."""


def load_split_folders(root: str | os.PathLike[str], train: str, test: str, *, name: str,
                       test_only_classes: str = "error", skip_bad_images: bool = False) -> Task:
    """A task from two named split folders of class folders under ``root`` (a benchmark's published layout).

    Unlike :func:`load_task`, which guesses the split folders of a user's data, the folders are given: a
    benchmark's extra folders (an unlabelled ``test/``, a third split) are never read. Ids are paths relative to
    ``root``. ``test_only_classes`` says what happens to test images of a class without training images:
    ``"error"`` (a :class:`DataError` naming the class), ``"drop"`` (left out, counted in the log and in the
    task's ``split_source``) or ``"open-set"`` (kept under their own class names and the task marked
    ``open_set``, as iWildCam's test-only species: a closed-set probe gets each of them wrong, and macro-F1 counts
    their classes).
    """
    if test_only_classes not in TEST_ONLY_POLICIES:
        raise ConfigError(f"test_only_classes={test_only_classes!r}; use one of {', '.join(TEST_ONLY_POLICIES)}")
    root = Path(root).resolve()
    _check_utf8(root, "folder")
    rows = _Rows([], [], [], splits=[])
    for split, rel in (("train", train), ("test", test)):
        folder = root / rel
        _no_loose_images(root, folder)
        ids, paths, labels = _scan_classes(root, folder)
        if not ids:
            raise DataError(f"{folder} holds no images in class folders; the download is incomplete: delete "
                            f"{root} and download it again")
        rows.ids += ids
        rows.paths += paths
        rows.labels += labels
        rows.splits += [split] * len(ids)
    rows = _drop_empty_files(rows, skip_bad_images)
    trained = {lab for lab, s in zip(rows.labels, rows.splits, strict=True) if s == "train"}
    extra = Counter(lab for lab, s in zip(rows.labels, rows.splits, strict=True) if s == "test" and lab not in trained)
    note = ""
    if extra and test_only_classes == "drop":
        keep = [i for i, lab in enumerate(rows.labels) if lab not in extra]
        rows = _Rows(*([v[i] for i in keep] for v in (rows.ids, rows.paths, rows.labels)),
                     splits=[rows.splits[i] for i in keep])
        note = (f"; {sum(extra.values())} test images of {len(extra)} class(es) without training images left out "
                f"({_few([f'{c} {n}' for c, n in extra.most_common()])})")
        log.warning("%s: %s", name, note[2:])
    elif extra and test_only_classes == "open-set":
        note = (f"; {sum(extra.values())} test images of {len(extra)} class(es) without training images kept, "
                f"scored as open set ({_few([f'{c} {n}' for c, n in extra.most_common()])})")
        log.info("%s: %s", name, note[2:])
    open_set = test_only_classes == "open-set"
    task = _build_task(rows, name, root, 0.25, 0, "add images or remove the class folder", open_set=open_set)
    return dataclasses.replace(task, split_source=f"given ({train}/ -> {test}/){note}", open_set=open_set)


@dataclass
class _Rows:
    """Parallel lists, one entry per image, before validation and splitting."""

    ids: list[str]
    paths: list[str]
    labels: list[str]
    groups: list[str] | None = None
    splits: list[str] | None = None  # "train" / "test" when the data names its split
    test_name: str = "test"  # what the data called its test split
    taxa: dict[str, list[str]] | None = None  # taxonomy column (rank or "common") -> value per image


# ---------------------------------------------------------------- folders


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def _check_utf8(path: str | Path, what: str) -> None:
    """Refuse a file or folder name that is not UTF-8 (bytes that Python carries as surrogate escapes).

    Such a name cannot become a class name or an id in the store, a report or an export, all of which are UTF-8;
    renaming it is the only fix that keeps every output readable. The error names the first such component."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            kind = what if i == len(parts) - 1 else "folder"
            raise DataError(f"the {kind} {os.fsencode(part)!r} in {Path(*parts[:i])} has a name that is not "
                            "UTF-8; rename it to UTF-8 text and rerun") from None


def _unreadable(folder: str | Path, err: OSError) -> DataError:
    """An unreadable folder is an error, never skipped: leaving out a class would change the task silently."""
    return DataError(f"cannot read the folder {err.filename or folder}: {err.strerror or err}; make it readable "
                     "(chmod -R u+rX) or move it out of the data folder")


def _listdir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as e:
        raise _unreadable(folder, e) from None


def _subdirs(folder: Path) -> list[Path]:
    dirs = sorted(Path(e.path) for e in _listdir(folder) if e.is_dir() and not _hidden(e.name))
    for d in dirs:
        _check_utf8(d, "folder")
    return dirs


def _loose_images(folder: Path) -> list[str]:
    return sorted(e.name for e in _listdir(folder)
                  if e.is_file() and not _hidden(e.name) and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)


def _holds_classes(folder: Path) -> bool:
    return bool(_subdirs(folder))


def _test_folder(root: Path, tops: dict[str, Path]) -> str | None:
    """The key in ``tops`` of the test split: the first of test/, val/, validation/ that holds class folders.

    A split folder of loose images is no labelled test split (BioBench's Herbarium 2019 download keeps the
    competition's unlabelled ``test/`` beside ``validation/``), so it is passed over, with a warning.
    """
    present = [k for k in TEST_SPLIT_DIRS if k in tops]
    labelled = [k for k in present if _holds_classes(tops[k])]
    if labelled and labelled[0] != present[0]:
        log.warning("%s: %s/ holds no class folders (unlabelled images?); using %s/ as the test split",
                    root, tops[present[0]].name, tops[labelled[0]].name)
    return labelled[0] if labelled else (present[0] if present else None)


def _scan_folder(root: Path) -> _Rows:
    tops = {d.name.lower(): d for d in _subdirs(root)}
    test_key = _test_folder(root, tops)
    if "train" not in tops and test_key is None:
        _no_loose_images(root, root)
        ids, paths, labels = _scan_classes(root, root)
        return _Rows(ids, paths, labels)
    if "train" not in tops or test_key is None:
        found = tops["train"].name if "train" in tops else tops[test_key].name
        raise DataError(
            f"{root} has a {found}/ folder but no {'test/, val/ or validation/' if test_key is None else 'train/'} "
            "folder beside it; give both train/ and test/ (each holding class folders), "
            "or put the class folders directly in the root to let lifebench split"
        )
    train_dir, test_dir = tops["train"], tops[test_key]
    others = sorted(d.name for k, d in tops.items() if k not in ("train", test_key))
    if others:
        log.warning("%s: using %s/ and %s/; ignoring the folders %s", root, train_dir.name, test_dir.name, others)
    rows = _Rows([], [], [], splits=[], test_name="test" if test_key == "test" else f"{test_dir.name}/")
    for split, d in (("train", train_dir), ("test", test_dir)):
        _no_loose_images(root, d)
        ids, paths, labels = _scan_classes(root, d)
        if not ids:
            raise DataError(f"{d} holds no images in class folders; put images in {d}/<class>/")
        rows.ids += ids
        rows.paths += paths
        rows.labels += labels
        rows.splits += [split] * len(ids)
    return rows


def _no_loose_images(root: Path, folder: Path) -> None:
    loose = _loose_images(folder)
    if loose:
        rel = [(folder / n).relative_to(root).as_posix() for n in loose]
        raise DataError(
            f"images lie directly in {folder} instead of in class folders: {_few(rel)}; "
            "move each image into a folder named after its class"
        )


def _raise_unreadable(err: OSError) -> None:
    raise _unreadable(err.filename, err) from None


def _scan_classes(root: Path, parent: Path) -> tuple[list[str], list[str], list[str]]:
    """Images under ``parent/<class>/**``: ids relative to ``root``, absolute paths, class names."""
    ids: list[str] = []
    paths: list[str] = []
    labels: list[str] = []
    not_images: list[str] = []
    n_sidecars = 0
    for class_dir in _subdirs(parent):
        n_before = len(ids)
        for dirpath, dirnames, filenames in os.walk(class_dir, onerror=_raise_unreadable):
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            for d in dirnames:
                _check_utf8(Path(dirpath) / d, "folder")
            for fname in sorted(filenames):
                if _hidden(fname):
                    continue
                full = Path(dirpath) / fname
                _check_utf8(full, "file")
                ext = full.suffix.lower()
                if ext in IMAGE_EXTENSIONS:
                    ids.append(full.relative_to(root).as_posix())
                    paths.append(str(full))
                    labels.append(class_dir.name)
                elif ext in SIDECAR_EXTENSIONS:
                    n_sidecars += 1
                else:
                    not_images.append(full.relative_to(root).as_posix())
        if len(ids) == n_before:
            log.warning("class folder %s holds no images; it is not a class of this task", class_dir)
    if not_images:
        raise DataError(
            f"not an image file: {_few(not_images)}; remove them or move them out of the class folders "
            f"(images end in {' '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    if n_sidecars:
        log.info("%s: ignored %d text sidecar file(s) (%s) in class folders",
                 parent, n_sidecars, " ".join(sorted(SIDECAR_EXTENSIONS)))
    return ids, paths, labels


# ---------------------------------------------------------------- manifests


def _read_table(path: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows of strings and a human row locator ("line 3" / "row 2") for each row."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for unreadable files
            raise DataError(f"cannot read Parquet manifest {path}: {one_line(e)}; check that it is a "
                            "Parquet file") from None
        cols = [["" if v is None else str(v) for v in table.column(i).to_pylist()]
                for i in range(table.num_columns)]
        rows = [list(r) for r in zip(*cols, strict=True)] if cols else []
        return list(table.column_names), rows, [f"row {i + 1}" for i in range(len(rows))]
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    fix = "save it as UTF-8 CSV"
    reader = csv.reader(io.StringIO(read_text(path, what="manifest", fix=fix), newline=""), delimiter=delimiter)
    start = 1  # the line the record being read starts on (a quoted field may span lines)
    try:
        header = next(reader, None)
        rows, where = [], []
        while True:
            start = reader.line_num + 1
            if (rec := next(reader, None)) is None:
                break
            if not any(v.strip() for v in rec):
                continue
            if len(rec) != len(header):
                raise DataError(
                    f"manifest {path} line {reader.line_num} has {len(rec)} fields but the header has "
                    f"{len(header)}; quote values that contain {delimiter!r}"
                )
            rows.append(rec)
            where.append(f"line {reader.line_num}")
    except csv.Error as e:
        raise _csv_error("manifest", path, start, e, fix) from None
    if header is None:
        raise DataError(f"manifest {path} is empty; give a header row such as 'path,label' and one row per image")
    return header, rows, where


def _find_columns(path: Path, header: list[str]) -> dict[str, int]:
    """Map each role (path, label, split, group, id) to a column index; the first two are required."""
    lowered = [h.strip().lower() for h in header]
    dupes = sorted(h for h, n in Counter(lowered).items() if n > 1)
    if dupes:
        raise DataError(f"manifest {path} has the column {dupes[0]!r} more than once; rename or drop one")
    found: dict[str, int] = {}
    for role, aliases in COLUMN_ALIASES.items():
        hits = [a for a in aliases if a in lowered]
        if role in hits:
            hits = [role]
        if len(hits) > 1:
            raise DataError(f"manifest {path}: columns {hits} could each be the {role} column; "
                            f"rename the one to use to {role!r}")
        if hits:
            found[role] = lowered.index(hits[0])
    for role in ("path", "label"):
        if role not in found:
            cols = ", ".join(repr(h) for h in header)
            hint = " (is the delimiter right? .csv files use commas, .tsv tabs)" if len(header) == 1 else ""
            raise DataError(f"manifest {path} has no {role} column (accepted names: "
                            f"{', '.join(COLUMN_ALIASES[role])}); found columns: {cols}{hint}")
    return found


def _taxonomy_columns(header: list[str], table: list[list[str]], cols: dict[str, int]) -> dict[str, list[str]] | None:
    """Taxonomy columns (the ranks kingdom ... species, and a common name) other than the label column."""
    lowered = [h.strip().lower() for h in header]
    used = set(cols.values())
    found = {}
    for key, names in [(r, (r,)) for r in RANKS] + [("common", TAXON_COMMON_ALIASES)]:
        for name in names:
            if name in lowered and lowered.index(name) not in used:
                found[key] = [r[lowered.index(name)].strip() for r in table]
                break
    return found or None


def _read_manifest(path: Path) -> _Rows:
    header, table, where = _read_table(path)
    if not table:
        raise DataError(f"manifest {path} has no rows; add one row per image")
    cols = _find_columns(path, header)

    def column(role: str) -> list[str] | None:
        return [r[cols[role]].strip() for r in table] if role in cols else None

    raw_paths, labels = column("path"), column("label")
    assert raw_paths is not None and labels is not None
    for role, values in (("path", raw_paths), ("label", labels), ("group", column("group")), ("id", column("id"))):
        blank = [where[i] for i, v in enumerate(values or []) if not v]
        if blank:
            raise DataError(f"manifest {path}: empty {header[cols[role]]!r} in {_few(blank)}; fill it in or drop "
                            "those rows")
    base = path.parent
    full = [os.path.normpath(base / os.path.expanduser(p)) for p in raw_paths]  # ~unknown stays as written
    missing = [raw for raw, f in zip(raw_paths, full, strict=True) if not os.path.isfile(f)]
    if missing:
        raise DataError(f"manifest {path}: {len(missing)} listed file(s) do not exist: {_few(missing)} "
                        f"(relative paths resolved against {base}); fix the paths or drop those rows")
    ids = column("id") or raw_paths
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dupes:
        raise DataError(f"manifest {path}: duplicate {'id' if 'id' in cols else 'path'} {_few(dupes)}; "
                        "give each image one row and a unique id")
    rows = _Rows(ids, full, labels, groups=column("group"), taxa=_taxonomy_columns(header, table, cols))
    split_raw = column("split")
    if split_raw is not None:
        bad: dict[str, str] = {}
        for v, w in zip(split_raw, where, strict=True):
            if v.lower() not in _SPLIT_VALUES:
                bad.setdefault(v, w)
        if bad:
            shown = _few([f"{v!r} (first in {w})" for v, w in bad.items()])
            raise DataError(f"manifest {path}: bad split value {shown}; use train or test (val and "
                            "validation count as test), or drop the split column to let lifebench split")
        rows.splits = [_SPLIT_VALUES[v.lower()] for v in split_raw]
        test_names = sorted({v.lower() for v in split_raw} - {"train", "test"})
        if test_names:
            rows.test_name = "split value " + " and ".join(repr(v) for v in test_names)
    return rows


# ---------------------------------------------------------------- validation and assembly


def _drop_empty_files(rows: _Rows, skip: bool) -> _Rows:
    empty = [i for i, p in enumerate(rows.paths) if os.path.getsize(p) == 0]
    if not empty:
        return rows
    if not skip:
        first = rows.paths[empty[0]]
        more = f"; {len(empty) - 1} more empty image file(s): {_few([rows.ids[i] for i in empty[1:]])}" \
            if len(empty) > 1 else ""
        raise BadImageError(first, f"the file is empty (0 bytes){more}")
    log.warning("leaving out %d empty (0-byte) image file(s): %s", len(empty), _few([rows.ids[i] for i in empty]))
    keep = np.setdiff1d(np.arange(len(rows.ids)), empty)

    def take(values: list[str] | None) -> list[str] | None:
        return None if values is None else [values[i] for i in keep]

    taxa = None if rows.taxa is None else {k: take(v) for k, v in rows.taxa.items()}
    return _Rows(take(rows.ids), take(rows.paths), take(rows.labels), take(rows.groups), take(rows.splits),
                 rows.test_name, taxa)


def _build_task(rows: _Rows, name: str, source: Path, test_size: float | None, seed: int, remove_hint: str,
                n_folds: int | None = None, open_set: bool = False) -> Task:
    if not rows.ids:
        raise DataError(f"no images found in {source}; expected <root>/<class>/<image>, or train/ and test/ "
                        "folders holding class folders, or a manifest with path and label columns")
    order = np.argsort(np.asarray(rows.ids), kind="stable")

    def arr(values: list[str] | None) -> np.ndarray | None:
        return None if values is None else np.asarray(values, dtype=str)[order]

    examples = Examples(ids=arr(rows.ids), paths=arr(rows.paths), labels=arr(rows.labels), groups=arr(rows.groups))
    labels = examples.labels
    counts = Counter(labels.tolist())
    classes = tuple(sorted(counts))
    if len(classes) < 2:
        raise DataError(f"{source} has only one class ({classes[0]!r}); a classifier needs at least 2 classes")
    single = [repr(c) for c in classes if counts[c] == 1]
    if single:
        which = f"class {single[0]} has" if len(single) == 1 else f"classes {_few(single)} have"
        raise DataError(f"{which} only 1 image; a probe needs at least 2 per class: {remove_hint}")
    folds = None
    by_default = ""
    if not n_folds and test_size is None and rows.splits is None and examples.groups is None:
        n_folds = default_folds(len(labels))
        if n_folds:
            by_default = f" (the default below {CROSS_FIT_BELOW} images; --test-size for one split)"
            log.info("%s: %d images and no given split, so %d-fold cross-fitting: every image is predicted once, by "
                     "a probe fit on the other folds (give a test size for one split instead)", source, len(labels),
                     n_folds)
    if n_folds and (rows.splits is not None or examples.groups is not None):
        what = "a given split" if rows.splits is not None else "a group column"
        raise ConfigError(f"--folds {n_folds}: {source} has {what}; cross-fitting works on data without one, "
                          "so drop --folds (or the column)")
    if n_folds:
        train_idx, test_idx, folds, split_source = make_split(labels, n_folds=n_folds, seed=seed)
        split_source += by_default
    elif rows.splits is not None:
        splits = arr(rows.splits)
        train_idx = np.flatnonzero(splits == "train").astype(np.int64)
        test_idx = np.flatnonzero(splits == "test").astype(np.int64)
        _check_given_split(source, labels, train_idx, test_idx, classes, open_set)
        split_source = "given" if rows.test_name == "test" else f"given ({rows.test_name} used as test)"
    else:
        test_size = DEFAULT_TEST_SIZE if test_size is None else test_size
        train_idx, test_idx, _, split_source = make_split(labels, test_size=test_size, seed=seed,
                                                          groups=examples.groups)
        if len(test_idx) == 0:
            raise DataError(f"{source}: no split of the groups leaves images for both train and test; add groups, "
                            "or give the split yourself in a split column")
        _log_untested(source, labels, test_idx, classes)
    return Task(name=name, examples=examples, train_idx=train_idx, test_idx=test_idx, classes=classes,
                metric="macro_f1", protocol="logreg", source=str(source), split_source=split_source, folds=folds,
                taxonomy=_per_class_taxonomy(source, rows, classes))


def _per_class_taxonomy(source: Path, rows: _Rows, classes: tuple[str, ...]) -> dict[str, dict[str, str]] | None:
    """One taxonomy per class from the per-image columns; two different non-empty values for a class is an error."""
    if not rows.taxa:
        return None
    out: dict[str, dict[str, str]] = {c: {} for c in classes}
    for key, values in rows.taxa.items():
        for label, value in zip(rows.labels, values, strict=True):
            if not value:
                continue
            have = out[label].setdefault(key, value)
            if have != value:
                raise DataError(f"{source}: class {label!r} has two {key} values, {have!r} and {value!r}; one class "
                                "needs one taxonomy: fix the rows or split the class")
    return out


def _check_given_split(source: Path, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                       classes: tuple[str, ...], open_set: bool = False) -> None:
    if len(test_idx) == 0:
        raise DataError(f"{source}: the given split has no test images; add test rows, or drop the split column "
                        "to let lifebench split")
    train_classes = set(labels[train_idx].tolist())
    unseen = sorted(set(labels[test_idx].tolist()) - train_classes)
    if unseen and not open_set:
        close = difflib.get_close_matches(unseen[0], sorted(train_classes), n=1)
        hint = f" (train has {close[0]!r})" if close else ""
        which, it = (f"class {unseen[0]!r} appears", "it") if len(unseen) == 1 else \
            (f"classes {_few([repr(c) for c in unseen])} appear", "them")
        raise DataError(f"{which} in test but not in train{hint}; add train images of {it} or remove {it} from test")
    _log_untested(source, labels, test_idx, classes)


def _log_untested(source: Path, labels: np.ndarray, test_idx: np.ndarray, classes: tuple[str, ...]) -> None:
    untested = sorted(set(classes) - set(labels[test_idx].tolist()))
    if untested:
        log.info("%s: %d class(es) have no test images and are only trained on: %s",
                 source, len(untested), _few(untested))
