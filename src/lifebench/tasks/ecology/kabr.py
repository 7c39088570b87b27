"""KABR (Kenyan Animal Behavior Recognition): drone "mini-scenes" of giraffes and zebras, one behaviour per frame.

Source: the Hugging Face dataset ``imageomics/KABR``, files under :data:`BASE_URL` (Kholiavchenko et al., WACV
2024 workshops). Facts from BioBench's KABR task and download script and the kabr-tools ``cvat2slowfast.py``
that wrote the release.

* Annotation files (:data:`ANNOTATION_FILES`): ``annotation/classes.json`` maps behaviour name to id
  (``{"Walk": 0, ..., "Occluded": 7}``); ``annotation/train.csv`` and ``annotation/val.csv`` are Charades-style
  frame lists, space-delimited with the header ``original_vido_id video_id frame_id path labels`` (sic): one row
  per frame, ``path`` relative to ``dataset/image/`` (``G0001/1.jpg``), ``labels`` the frame's behaviour id.
* Frames: one zip per animal (:data:`ANIMALS`: giraffes, Grevy's zebras, plains zebras), published split into
  parts ``dataset/image/<animal>_part_aa``, ``..._ab``, ... that are concatenated in order into ``<animal>.zip``
  and checked against the MD5 in ``dataset/image/<animal>_md5.txt`` (its first word). Each zip holds the clip
  folders (``G0001/``, ``Z0123/``, ...), unpacked into ``<root>/dataset/image/``.
* Local layout: ``<root>/annotation/{classes.json,train.csv,val.csv}`` and ``<root>/dataset/image/<clip>/<n>.jpg``;
  downloads are kept in ``<root>/.downloads/`` (the verified ``<animal>.zip``; the parts are deleted once the zip
  they make is verified).

Task: every clip (``video_id`` within a split) with at least ``n_frames`` (16) frames contributes ``n_frames``
frames, taken every ``stride`` (5) frames (the stride shrinks until 16 fit) from a start offset drawn uniformly
from the slack. The offset is seeded by ``seed`` and the clip id only, so it is reproducible and independent of
loader workers (BioBench's depended on the DataLoader worker count). Shorter clips are dropped, as in BioBench.
Examples are the sampled frames (id = path relative to ``root``), grouped by clip; the runner max-pools the frame
embeddings of a clip into one vector (``pool_train = pool_test = "max"``) whose label is the most common frame
label (BioBench: the mode of the 16 frame labels). Protocol: logistic probe, ``train.csv`` -> ``val.csv``;
metric: macro-F1 over clips.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.download import HTTPStatusError, extract, file_digest, hf_headers
from lifebench.download import download as fetch_file
from lifebench.errors import DataError
from lifebench.tasks.base import Task
from lifebench.tasks.catalog import TaskSpec, register, via_base_url
from lifebench.tasks.ecology import clip_task

__all__ = ["ANIMALS", "ANNOTATION_FILES", "BASE_URL", "CSV_COLUMNS", "download", "load", "make_fixture", "missing",
           "part_files", "sample_frames"]

log = logging.getLogger(__name__)

BASE_URL = "https://huggingface.co/datasets/imageomics/KABR/resolve/main/KABR"
DATASET_PAGE = "https://huggingface.co/datasets/imageomics/KABR"
ANNOTATION_FILES = ("annotation/classes.json", "annotation/train.csv", "annotation/val.csv")
ANIMALS = {"giraffes": "ad", "zebras_grevys": "am", "zebras_plains": "al"}  # animal -> suffix of its last part
CSV_COLUMNS = ("original_vido_id", "video_id", "frame_id", "path", "labels")
SPLITS = ("train", "val")
IMAGE_DIR = "dataset/image"
_MD5 = re.compile(r"[0-9a-fA-F]{32}")


def part_files(animal: str) -> list[str]:
    """``dataset/image/<animal>_part_aa`` ... up to the animal's last part, in concatenation order."""
    last = ANIMALS[animal]
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = []
    for a in letters[: letters.index(last[0]) + 1]:
        for b in letters:
            names.append(f"{IMAGE_DIR}/{animal}_part_{a}{b}")
            if a + b == last:
                return names
    raise AssertionError(last)


def missing(root: Path) -> str | None:
    root = Path(root)
    for name in ANNOTATION_FILES:
        if not (root / name).is_file():
            return f"no {name} in {root}"
    if not (root / IMAGE_DIR).is_dir():
        return f"no {IMAGE_DIR}/ folder in {root}"
    return None


# ---------------------------------------------------------------------------------------------------- download


def _fetch(url: str, dest: Path, show_progress: bool) -> Path:
    """``download.download`` with the Hugging Face token (``HF_TOKEN``) if set, and a clear error when refused."""
    headers = hf_headers()
    try:
        return fetch_file(url, dest, show_progress=show_progress, headers=headers)
    except DataError as e:
        if isinstance(e, HTTPStatusError) and e.status in (401, 403):
            how = ("the token in HF_TOKEN was refused; check that it is valid and that its account may read the "
                   "dataset" if headers else "set HF_TOKEN to a Hugging Face access token whose account may read it")
            raise DataError(f"kabr: Hugging Face refused {url} ({str(e).rsplit(': ', 1)[-1]}); the dataset may be "
                            f"gated or private: open {DATASET_PAGE} and accept its terms, then {how}") from None
        raise


def _expected_md5(path: Path) -> str:
    words = path.read_text(errors="replace").split()
    if not words or not _MD5.fullmatch(words[0]):
        raise DataError(f"kabr: {path} does not start with an MD5 (got {path.read_text(errors='replace')[:60]!r}); "
                        "delete it and download again")
    return words[0].lower()


class _Mismatch(DataError):
    """The concatenated parts do not have the published MD5."""


def _concatenate(parts: list[Path], dest: Path, md5: str) -> None:
    """Concatenate ``parts`` into ``dest`` via a temporary file, renamed into place only if its MD5 is ``md5``."""
    h = hashlib.md5()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != md5:
            raise _Mismatch(f"kabr: checksum mismatch for {dest.name} (concatenated from {len(parts)} parts): md5 "
                            f"{h.hexdigest()}, expected {md5}; the parts were removed, rerun to download them again")
        os.replace(tmp, dest)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DataError(f"kabr: disk full while assembling {dest.name} in {dest.parent}; free space and rerun "
                            "(the downloaded parts are kept)") from None
        raise


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Fetch the annotation files and the three animals' zip parts, verify each zip's MD5, unpack into ``root``.

    Parts resume after an interruption (each is a separate resumable download). A zip is assembled from its
    parts only into a temporary file and gets its name once its MD5 matches ``<animal>_md5.txt``; on a mismatch
    the parts are deleted (so a rerun fetches them again) and nothing is unpacked. Idempotent: a verified zip is
    kept, so a rerun fetches no parts, and an unpacked zip is not unpacked again.
    """
    root, base_url = Path(root), (base_url or BASE_URL).rstrip("/")
    dl = root / ".downloads"
    for name in ANNOTATION_FILES:
        src = _fetch(f"{base_url}/{name}", dl / name, show_progress)
        dest = root / name
        if not dest.is_file() or dest.read_bytes() != src.read_bytes():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(src.read_bytes())
            os.replace(tmp, dest)
    for animal in ANIMALS:
        md5 = _expected_md5(_fetch(f"{base_url}/{IMAGE_DIR}/{animal}_md5.txt", dl / f"{animal}_md5.txt",
                                   show_progress))
        archive = dl / f"{animal}.zip"
        if archive.exists() and file_digest(archive, "md5") != md5:
            log.warning("kabr: %s does not match %s_md5.txt; assembling it again", archive.name, animal)
            archive.unlink()
        if not archive.exists():
            part_dir = dl / animal  # its own folder, with its own recorded checksums: removable as a whole
            parts = [_fetch(f"{base_url}/{name}", part_dir / Path(name).name, show_progress)
                     for name in part_files(animal)]
            try:
                _concatenate(parts, archive, md5)
            except _Mismatch:
                shutil.rmtree(part_dir, ignore_errors=True)  # corrupt parts (and their recorded checksums) go
                raise
            shutil.rmtree(part_dir, ignore_errors=True)  # the verified zip replaces them
        extract(archive, root / IMAGE_DIR)
    return root


# -------------------------------------------------------------------------------------------------------- load


def sample_frames(n: int, *, n_frames: int = 16, stride: int = 5, key: str = "", seed: int = 0) -> list[int]:
    """Indices of the ``n_frames`` frames taken from a clip of ``n`` frames (``n >= n_frames``).

    Every ``stride``-th frame, the stride shrinking until ``n_frames`` fit, from a start drawn uniformly from the
    slack ``0 .. n - ((n_frames - 1) * stride + 1)`` by a generator seeded with ``seed`` and the clip ``key`` only.
    """
    if n < n_frames:
        raise ValueError(f"a clip of {n} frames has fewer than {n_frames}")
    while stride > 1 and n < (n_frames - 1) * stride + 1:
        stride -= 1
    slack = n - ((n_frames - 1) * stride + 1)
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    start = int(np.random.default_rng(int.from_bytes(digest[:8], "little")).integers(0, slack + 1))
    return list(range(start, start + (n_frames - 1) * stride + 1, stride))


def _classes(path: Path) -> dict[int, str]:
    try:
        table = json.loads(path.read_text())
        if not isinstance(table, dict) or not table:
            raise ValueError("not a JSON object")
        names = {int(v): str(k) for k, v in table.items()}
    except (ValueError, TypeError) as e:
        raise DataError(f"kabr: {path} is not a JSON object of behaviour name -> id ({e}); download it again") from None
    if len(names) != len(table):
        raise DataError(f"kabr: {path} gives one id to two behaviours; download it again")
    return names


def _read_split(path: Path, names: dict[int, str]) -> list[tuple[str, int, list[tuple[int, str, str]]]]:
    """``[(clip name, video_id, [(frame_id, frame path, label), ...]), ...]`` in file order, frames sorted."""
    with open(path, newline="") as f:  # no field is ever empty: drop those that doubled or trailing spaces make
        rows = [[v for v in row if v] for row in csv.reader(f, delimiter=" ")]
    if not rows or tuple(v.lower() for v in rows[0]) != CSV_COLUMNS:
        got = " ".join(rows[0]) if rows else "an empty file"
        raise DataError(f"kabr: {path} starts with {got!r}, expected the header {' '.join(CSV_COLUMNS)!r} "
                        "(space-delimited); download the annotation files again")
    clips: dict[int, tuple[str, list[tuple[int, str, str]]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            if len(row) != len(CSV_COLUMNS):
                raise ValueError(f"{len(row)} fields, expected {len(CSV_COLUMNS)}")
            clip, video_id, frame_id, rel, label = row[0], int(row[1]), int(row[2]), row[3], int(row[4])
            if label not in names:
                raise ValueError(f"label {label} is not in classes.json")
        except ValueError as e:
            raise DataError(f"kabr: line {line} of {path}: {e}; download the annotation files again") from None
        clips.setdefault(video_id, (clip, []))[1].append((frame_id, rel, names[label]))
    out = []
    for video_id, (clip, frames) in clips.items():
        frames.sort(key=lambda r: r[0])
        out.append((clip, video_id, frames))
    return out


def load(root: Path, *, n_frames: int = 16, stride: int = 5, seed: int = 0, **_: object) -> Task:
    """``annotation/train.csv`` -> ``annotation/val.csv`` as a frame-level :class:`Task` pooled per clip.

    ``n_frames`` frames are sampled per clip every ``stride`` frames (see :func:`sample_frames`; ``seed`` moves
    the start offsets); clips with fewer frames are dropped and counted in the log. Raises :class:`DataError`
    naming a missing file, a malformed row, or sampled frames absent from ``dataset/image/``.
    """
    root = Path(root)
    why = missing(root)
    if why:
        raise DataError(f"kabr: {why}; run: lifebench download kabr --dir {root.parent}")
    if n_frames < 1 or stride < 1:
        raise DataError(f"kabr: n_frames={n_frames} and stride={stride} must both be at least 1")
    names = _classes(root / "annotation" / "classes.json")
    ids, labels, groups, split_of = [], [], [], []
    used_names: Counter[str] = Counter()
    for split in SPLITS:
        clips = _read_split(root / "annotation" / f"{split}.csv", names)
        short = [c for c in clips if len(c[2]) < n_frames]
        if short:
            log.info("kabr: dropped %d of %d %s clips with fewer than %d frames (BioBench drops them too)",
                     len(short), len(clips), split, n_frames)
        for clip, video_id, frames in clips:
            if len(frames) < n_frames:
                continue
            group = clip if used_names[clip] == 0 else f"{clip}#{video_id}"  # one clip folder per video_id
            used_names[clip] += 1
            for i in sample_frames(len(frames), n_frames=n_frames, stride=stride, key=f"{split}/{group}", seed=seed):
                ids.append(f"{IMAGE_DIR}/{frames[i][1]}")
                labels.append(frames[i][2])
                groups.append(group)
                split_of.append(split)
    _check_frames(root, ids)
    split_arr = np.array(split_of)
    train_idx, test_idx = np.flatnonzero(split_arr == "train"), np.flatnonzero(split_arr == "val")
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"kabr: {len(train_idx)} train and {len(test_idx)} val frames with clips of at least "
                        f"{n_frames} frames in {root / 'annotation'}; download the annotation files again")
    return clip_task("kabr", root, ids, labels, groups, train_idx, test_idx,
                     description=f"KABR drone mini-scenes: {n_frames} frames per clip (stride {stride}, seed {seed}), "
                                 "max-pooled per clip",
                     split_source="given (annotation/train.csv -> annotation/val.csv)")


def _check_frames(root: Path, ids: list[str]) -> None:
    by_dir: dict[str, list[str]] = {}
    for i in ids:
        d, _, name = i.rpartition("/")
        by_dir.setdefault(d, []).append(name)
    lost = []
    for d, files in by_dir.items():
        try:
            present = {e.name for e in os.scandir(root / d)}
        except OSError:
            present = set()
        lost += [f"{d}/{f}" for f in files if f not in present]
    if lost:
        shown = ", ".join(lost[:3]) + (", ..." if len(lost) > 3 else "")
        raise DataError(f"kabr: {len(lost)} sampled frame(s) listed in annotation/*.csv are missing under {root}: "
                        f"{shown}; run: lifebench download kabr --dir {root.parent}")


# ----------------------------------------------------------------------------------------------------- fixture

# (behaviour, RGB colour) of the fixture's classes: every frame is tinted by its own label.
_FIXTURE_COLOURS = {"Walk": (210, 40, 40), "Graze": (40, 200, 40), "Browse": (40, 40, 210)}
_ALL_CLASSES = ("Walk", "Graze", "Browse", "Head Up", "Auto-Groom", "Trot", "Run", "Occluded")


def _jpeg(rng: np.random.Generator, colour: tuple[int, int, int]) -> bytes:
    arr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    arr = (arr * 0.25 + np.asarray(colour) * 0.75).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """Tiny KABR in the real layout, by path under :data:`BASE_URL`: annotation files, md5 files, zip parts.

    ``per_class`` train clips and 2 val clips per behaviour (Walk, Graze, Browse; ``classes.json`` lists all
    8), spread over the three animals' zips. Clip lengths cycle through 90, 40, 16 and 57 frames (stride 5, 2,
    1, 3); one train clip per behaviour has its last third labelled with the next behaviour (its clip label is
    the majority). Two clips are too short (10 and 15 frames) and are dropped by :func:`load`.
    """
    rng = np.random.default_rng(seed)
    ids = {name: i for i, name in enumerate(_ALL_CLASSES)}
    behaviours = list(_FIXTURE_COLOURS)
    lengths = (90, 40, 16, 57)
    buffers = {animal: io.BytesIO() for animal in ANIMALS}
    zips = {animal: zipfile.ZipFile(buf, "w") for animal, buf in buffers.items()}
    csvs = {split: [" ".join(CSV_COLUMNS)] for split in SPLITS}
    video_id = 0
    plan = []
    for split, n in (("train", per_class), ("val", 2)):
        for k, b in enumerate(behaviours):
            for i in range(n):
                plan.append((split, b, lengths[(k + i) % len(lengths)], split == "train" and i == 0))
    plan += [("train", behaviours[0], 10, False), ("val", behaviours[1], 15, False)]
    for j, (split, behaviour, length, mixed) in enumerate(plan):
        animal = list(ANIMALS)[j % 3]
        video_id += 1
        clip = f"{'G' if animal == 'giraffes' else 'Z'}{video_id:04d}"
        other = behaviours[(behaviours.index(behaviour) + 1) % len(behaviours)]
        for f in range(1, length + 1):
            label = other if mixed and f > 2 * length // 3 else behaviour
            zips[animal].writestr(f"{clip}/{f}.jpg", _jpeg(rng, _FIXTURE_COLOURS[label]))
            csvs[split].append(f"{clip} {video_id} {f} {clip}/{f}.jpg {ids[label]}")
    out = {
        "annotation/classes.json": json.dumps(ids).encode(),
        **{f"annotation/{split}.csv": ("\n".join(lines) + "\n").encode() for split, lines in csvs.items()},
    }
    for animal, z in zips.items():
        z.close()
        data = buffers[animal].getvalue()
        out[f"{IMAGE_DIR}/{animal}_md5.txt"] = f"{hashlib.md5(data).hexdigest()}  {animal}.zip\n".encode()
        names = part_files(animal)
        cuts = np.linspace(0, len(data), len(names) + 1).astype(int)
        for name, a, b in zip(names, cuts[:-1], cuts[1:], strict=True):
            out[name] = data[a:b]
    return out


SPEC = register(TaskSpec(
    name="kabr", display="KABR", suite="ecology", modality="drone video", kingdom="Animalia", protocol="logreg",
    metric="macro_f1", kind="plain", method="logistic probe on max-pooled frame embeddings", n_train=None,
    n_test=None, source="Hugging Face imageomics/KABR", license="see source", size="not recorded", load=load,
    missing=missing, fetch=via_base_url(download), fixture=lambda spec, **kw: make_fixture(**kw),
    upstream=("samuelstevens/biobench@6376d97 src/biobench/kabr/__init__.py, download.py",
                                 "Imageomics/kabr-tools@9477f98 src/kabr_tools/cvat2slowfast.py"),
))
