"""Birds 525 (Kaggle ``gpiosenka/100-bird-species``): the 2,625 test photos, 5 of each of 525 bird species.

BioCLIP's first task. The Kaggle dataset holds 84,635 train, 2,625 validation and 2,625 test images (224x224
crops, one bird each); BioCLIP evaluates the test images. BioCLIP 2 replaced it with NABirds because the Kaggle
dataset was "no longer available"; lifebench keeps the recipe for anyone who has the zip.

Layout of the zip, unpacked into ``<root>``::

    train/<CLASS>/*.jpg   valid/<CLASS>/*.jpg   test/<CLASS>/*.jpg
    birds.csv             columns: class id, filepaths, labels, data set, scientific name
    EfficientNetB0-525-(224 X 224)- 98.97.h5    (the author's model; not used)

``<CLASS>`` is the common name in capitals ("ABBOTTS BABBLER"); ``filepaths`` is relative to the root
("test/ABBOTTS BABBLER/1.jpg"), ``data set`` is train, valid or test, ``scientific name`` is "Genus species"
(capitals in the file). Examples are the images under ``test/``, labelled by their folder (BioCLIP's ``asis``
text). Each class's taxonomy: ``common`` = the folder name, ``genus`` and ``species`` (epithet) split from
``scientific name``, looked up by file path and else by label.

Download: Kaggle's API, ``https://www.kaggle.com/api/v1/datasets/download/gpiosenka/100-bird-species``, which needs
an account: set ``KAGGLE_USERNAME`` and ``KAGGLE_KEY`` (sent as HTTP basic auth to Kaggle only, never to the
storage it redirects to). Without them, download the zip from the dataset's Kaggle page into ``<root>`` (as
``archive.zip`` or ``100-bird-species.zip``) and run ``lifebench download birds525`` again to unpack it. No
checksum is published: the first download records the zip's SHA-256 (trust on first use).

Every image is both train and test (see :mod:`lifebench.tasks.treeoflife`); protocol ``zero-shot``, metric
``accuracy``.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import os
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.download import download as fetch_file
from lifebench.download import extract
from lifebench.errors import DataError
from lifebench.tasks.base import Task
from lifebench.tasks.catalog import TaskSpec, register, via_base_url
from lifebench.tasks.folder import IMAGE_EXTENSIONS, read_csv
from lifebench.tasks.treeoflife import every_image_task

__all__ = ["ARCHIVE", "BASE_URL", "KAGGLE_REF", "PAGE", "download", "load", "make_fixture", "missing"]

log = logging.getLogger(__name__)

KAGGLE_REF = "gpiosenka/100-bird-species"
BASE_URL = "https://www.kaggle.com/api/v1"
PAGE = f"https://www.kaggle.com/datasets/{KAGGLE_REF}"
ARCHIVE = "100-bird-species.zip"
PLACED = ("archive.zip", ARCHIVE)  # names the Kaggle website and the kaggle CLI give the zip
CSV = "birds.csv"
SPLIT = "test"
_NOT_EPITHETS = {"sp", "sp.", "spp", "spp."}


def missing(root: Path) -> str | None:
    root = Path(root)
    if not (root / SPLIT).is_dir():
        return f"no {SPLIT}/ folder in {root}"
    if not (root / CSV).is_file():
        return f"no {CSV} in {root}"
    return None


def _credentials(root: Path) -> dict[str, str]:
    user, key = os.environ.get("KAGGLE_USERNAME", "").strip(), os.environ.get("KAGGLE_KEY", "").strip()
    if not (user and key):
        raise DataError(f"birds525: Kaggle needs an account: set KAGGLE_USERNAME and KAGGLE_KEY (kaggle.com > Settings "
                        f"> API > Create New Token), or download the zip from {PAGE} into {root} and rerun")
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode("ascii")}


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Unpack a zip placed in ``root``, else fetch it through Kaggle's API (credentials from the environment)."""
    root = Path(root)
    if missing(root) is None:
        return root
    placed = next((root / n for n in PLACED if (root / n).is_file()), None)
    if placed is not None:
        archive = placed
        log.info("birds525: unpacking %s placed by hand", placed)
    else:
        headers = _credentials(root)
        url = f"{(base_url or BASE_URL).rstrip('/')}/datasets/download/{KAGGLE_REF}"
        try:
            archive = fetch_file(url, root / ".downloads" / ARCHIVE, headers=headers, show_progress=show_progress)
        except DataError as e:
            if "HTTP 4" not in str(e):
                raise
            raise DataError(f"{e}; check KAGGLE_USERNAME and KAGGLE_KEY, or download the zip from {PAGE} into "
                            f"{root} and rerun") from None
    (root / f".lifebench-extracted-{archive.name}").unlink(missing_ok=True)  # test/ is gone: unpack again
    entries = extract(archive, root)
    why = missing(root)
    if why:
        found = ", ".join(sorted(e.name for e in entries)) or "nothing"
        raise DataError(f"{archive.name} unpacked to {found} but {why}; it is not the Birds 525 zip from {PAGE}: "
                        "delete it and download it again")
    return root


def _key(label: str) -> str:
    return " ".join(label.split()).upper()


def split_scientific(name: str) -> dict[str, str]:
    """``{"genus": "Malacocincla", "species": "abbotti"}`` from "MALACOCINCLA ABBOTTI"; words past two are dropped."""
    words = name.replace("_", " ").split()
    out = {"genus": words[0].capitalize()} if words else {}
    if len(words) > 1 and words[1].lower() not in _NOT_EPITHETS:
        out["species"] = words[1].lower()
    return out


def _scientific_names(table: Path) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """From birds.csv: scientific name by file path, by (normalised) label, and the test rows' paths."""
    rows = [{k: (v or "").strip() for k, v in r.items() if k} for r in read_csv(
        table, ("filepaths", "labels"), header=lambda h: h.strip().lower(),
        fix="Birds 525's birds.csv has class id, filepaths, labels, data set, scientific name: delete it and download "
            "the zip again")]
    if rows and "scientific name" not in rows[0]:
        log.warning("%s has no 'scientific name' column: classes get common names only", table)
    by_path, votes = {}, defaultdict(Counter)
    for r in rows:
        sci = r.get("scientific name", "")
        path = r["filepaths"].replace("\\", "/")
        if sci:
            by_path[path] = sci
            votes[_key(r["labels"])][sci] += 1
    test_rows = [r["filepaths"].replace("\\", "/") for r in rows if r.get("data set", "").lower() == SPLIT]
    return by_path, {k: c.most_common(1)[0][0] for k, c in votes.items()}, test_rows


def load(root: Path, **_: object) -> Task:
    root = Path(root)
    why = missing(root)
    if why:
        raise DataError(f"birds525: {why}; run: lifebench download birds525 --dir {root.parent}")
    by_path, by_label, test_rows = _scientific_names(root / CSV)
    ids, paths, labels = [], [], []
    for class_dir in sorted(d for d in (root / SPLIT).iterdir() if d.is_dir() and not d.name.startswith(".")):
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                ids.append(f"{SPLIT}/{class_dir.name}/{f.name}")
                paths.append(str(f))
                labels.append(class_dir.name)
    loose = [f.name for f in (root / SPLIT).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        raise DataError(f"images lie directly in {root / SPLIT} ({', '.join(sorted(loose)[:3])}); each must be in "
                        "its class folder, test/<CLASS>/: download the zip again")
    absent = sorted(set(test_rows) - set(ids))
    if absent:
        log.warning("birds525: %d test images named in %s are not under %s/ (e.g. %s)", len(absent), CSV, SPLIT,
                    ", ".join(absent[:3]))
    taxonomy: dict[str, dict[str, str]] = {}
    for i, label in zip(ids, labels, strict=True):
        if label not in taxonomy or "genus" not in taxonomy[label]:
            sci = by_path.get(i) or by_label.get(_key(label), "")
            taxonomy[label] = {"common": label, **split_scientific(sci)}
    no_sci = sorted(c for c, t in taxonomy.items() if "genus" not in t)
    if no_sci:
        log.warning("birds525: %d classes have no scientific name in %s (e.g. %s)", len(no_sci), CSV,
                    ", ".join(no_sci[:3]))
    return every_image_task("birds525", ids, paths, labels, taxonomy=taxonomy, source=str(root / SPLIT),
                            description=f"Birds 525 (Kaggle {KAGGLE_REF}) test split: {len(ids)} images, "
                                        f"{len(taxonomy)} species; class = common name in capitals")


# Three real classes with their scientific names as birds.csv spells them.
_CLASSES = (("ABBOTTS BABBLER", "MALACOCINCLA ABBOTTI"), ("BALD EAGLE", "HALIAEETUS LEUCOCEPHALUS"),
            ("D-ARNAUDS BARBET", "TRACHYPHONUS DARNAUDII"))
MODEL_FILE = "EfficientNetB0-525-(224 X 224)- 98.97.h5"


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """``{"100-bird-species.zip": bytes}`` in the Kaggle zip's layout: ``per_class`` test and train images per
    class, one validation image, birds.csv and a stand-in for the model file."""
    rng = np.random.default_rng(seed)
    buf, table = io.BytesIO(), io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["class id", "filepaths", "labels", "data set", "scientific name"])
    with zipfile.ZipFile(buf, "w") as z:
        for split, n, fmt in (("train", per_class, "{:03d}.jpg"), ("valid", 1, "{}.jpg"), ("test", per_class, "{}.jpg")):
            for c_i, (label, sci) in enumerate(_CLASSES):
                for k in range(1, n + 1):
                    arr = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                    arr[..., c_i % 3] = 230
                    img = io.BytesIO()
                    Image.fromarray(arr).save(img, format="JPEG", quality=90)
                    path = f"{split}/{label}/{fmt.format(k)}"
                    z.writestr(path, img.getvalue())
                    writer.writerow([f"{c_i}.0", path, label, split, sci])
        z.writestr(CSV, table.getvalue())
        z.writestr(MODEL_FILE, b"\x89HDF\r\n\x1a\n" + bytes(56))
    return {ARCHIVE: buf.getvalue()}


def _fixture(spec: TaskSpec, **kw) -> dict[str, bytes]:
    return {f"datasets/download/{KAGGLE_REF}": make_fixture(**kw)[ARCHIVE]}


SPEC = register(TaskSpec(
    name="birds525", display="Birds 525", suite="tree-of-life", modality="web photos", kingdom="Animalia",
    protocol="zero-shot", metric="accuracy", kind="plain", method="zero-shot (asis names); 1/5-shot",
    n_train=2625, n_test=2625, source="Kaggle gpiosenka/100-bird-species, test split (needs a Kaggle account)",
    license="as listed on the Kaggle page (not verified)", size="not recorded", load=load, missing=missing,
    fetch=via_base_url(download), fixture=_fixture,
    upstream=("Imageomics/bioclip@4ea3247 (evaluation data notes)",),
))
