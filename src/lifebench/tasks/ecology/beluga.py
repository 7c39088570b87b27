"""Beluga ID 2022 (LILA, Wild Me): cropped top-view aerial photos of beluga whales, one label per individual.

* Source: :data:`BASE_URL`, the LILA tarball ``beluga.coco.tar.gz`` on source.coop, the file BioBench fetches. No
  checksum is published, so the download is trusted on first use (its SHA-256 is recorded beside it and checked
  on every later use).
* Layout after download (the tarball unpacked into ``<root>``): ``beluga.coco/annotations/instances_train2022.json``
  and ``beluga.coco/images/train2022/<file_name>``. Published counts: 5,902 images of 788 individuals.
* The JSON is Wild Me's COCO export: ``images`` (``id``, ``file_name``, ``width``, ``height``, ``date_captured``,
  ...), ``annotations`` (``id``, ``image_id``, ``bbox``, ``segmentation``, ``viewpoint``, ``name``, ...) and
  ``categories``. Only ``images[].id``, ``images[].file_name``, ``annotations[].image_id`` and
  ``annotations[].name`` (the individual) are read.
* Examples: every image with an annotation, in COCO image-id order; id = ``file_name`` (relative to
  ``images/train2022``); label = the ``name`` of the image's first annotation in file order (BioBench:
  ``meta[0]["name"]``). An image without annotations has no label and is left out, with a warning.
* Split: none. Leave-one-out over all images: each image is a query against all the others
  (``train_idx = test_idx = every image``, ``Task.leave_one_out``). ``--n-train`` is refused: there is no
  training side to shrink, and a smaller gallery would change the task itself (BioBench ignores its
  ``n_train`` for Beluga and always uses every image).
* Protocol ``reid`` (:class:`lifebench.protocols.ReID`): majority vote of the 5 nearest other images, cosine
  distance by default (BioBench: raw Euclidean); metric macro-F1 over individuals, as BioBench reports. A
  singleton individual (one image) can never be predicted right and still counts in macro-F1, as in BioBench.
  The runner also stores the 5 nearest labels (rank-1/rank-5 accuracy) and each query's average precision
  (``mean_ap``; NaN, and ignored, for singletons).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.errors import DataError
from lifebench.tasks.base import Examples, Task
from lifebench.tasks.catalog import Source, TaskSpec, fetch_sources, register

__all__ = ["ANNOTATIONS", "ARCHIVE", "BASE_URL", "IMAGES", "SPEC", "download", "load", "make_fixture", "missing"]

log = logging.getLogger(__name__)

BASE_URL = "http://us-west-2.opendata.source.coop.s3.amazonaws.com/agentmorris/lila-wildlife/wild-me"
ARCHIVE = "beluga.coco.tar.gz"
ANNOTATIONS = "beluga.coco/annotations/instances_train2022.json"
IMAGES = "beluga.coco/images/train2022"


def missing(root: Path) -> str | None:
    root = Path(root)
    if not (root / ANNOTATIONS).is_file():
        return f"no {ANNOTATIONS} in {root}"
    if not (root / IMAGES).is_dir():
        return f"no {IMAGES}/ folder in {root}"
    return None


def download(root: Path, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """Fetch ``beluga.coco.tar.gz`` (:data:`SPEC`'s source; LILA publishes no checksum, so its SHA-256 is recorded
    on first use) and unpack it into ``root``. ``base_url``: a mirror folder serving the same file name."""
    return (SPEC if base_url is None else SPEC.mirrored(base_url)).download(root, show_progress=show_progress)


def _read_coco(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"beluga: cannot read {path} as JSON ({e}); download the dataset again") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations"), list):
        raise DataError(f"beluga: {path} is not a COCO file (no 'images' and 'annotations' lists); "
                        "download the dataset again")
    return data


def load(root: Path, **_: object) -> Task:
    """Every annotated ``train2022`` image, labelled with its individual, for leave-one-out re-identification.

    Raises :class:`DataError` naming what is wrong: a missing file or folder, a malformed COCO record, an
    annotation pointing at an unknown image, or images listed in the JSON but absent from ``images/train2022``.
    """
    root = Path(root)
    why = missing(root)
    if why:
        raise DataError(f"beluga: {why}; run: lifebench download beluga --dir {root.parent}")
    path = root / ANNOTATIONS
    data = _read_coco(path)
    file_of: dict[object, str] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise DataError(f"beluga: images[{i}] in {path} has no 'id' and 'file_name'; download the dataset again")
        if im["id"] in file_of:
            raise DataError(f"beluga: image id {im['id']!r} appears twice in {path}; download the dataset again")
        file_of[im["id"]] = im["file_name"]
    name_of: dict[object, str] = {}
    disagree = 0
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise DataError(f"beluga: annotations[{i}] in {path} has no 'image_id'; download the dataset again")
        name = ann.get("name")
        if not isinstance(name, str | int) or isinstance(name, bool) or str(name).strip() == "":
            raise DataError(f"beluga: annotation {ann.get('id', i)!r} in {path} has no individual 'name'; "
                            "download the dataset again")
        if ann["image_id"] not in file_of:
            raise DataError(f"beluga: annotation {ann.get('id', i)!r} in {path} names image_id {ann['image_id']!r}, "
                            "which is not in its 'images' list; download the dataset again")
        if ann["image_id"] in name_of:
            disagree += name_of[ann["image_id"]] != str(name)
        else:
            name_of[ann["image_id"]] = str(name)
    if disagree:
        log.warning("beluga: %d annotations name a different individual than their image's first annotation; "
                    "the first one labels the image", disagree)
    unlabelled = [i for i in file_of if i not in name_of]
    if unlabelled:
        log.warning("beluga: %d of %d images have no annotation (e.g. %s) and are left out", len(unlabelled),
                    len(file_of), file_of[unlabelled[0]])
    image_ids = sorted(name_of, key=lambda i: (0, i, "") if isinstance(i, int) else (1, 0, str(i)))  # COCO ids: ints
    if not image_ids:
        raise DataError(f"beluga: {path} has no annotated images; download the dataset again")
    files = [file_of[i] for i in image_ids]
    dups = [f for f, c in Counter(files).items() if c > 1]
    if dups:
        raise DataError(f"beluga: file_name {dups[0]!r} belongs to two images in {path}; download the dataset again")
    _check_images(root / IMAGES, files)
    examples = Examples(
        ids=np.array(files, dtype=object),
        paths=np.array([str(root / IMAGES / f) for f in files], dtype=object),
        labels=np.array([name_of[i] for i in image_ids], dtype=object),
    )
    everything = np.arange(len(examples))
    return Task(
        name="beluga",
        examples=examples,
        train_idx=everything,
        test_idx=everything,
        metric="macro_f1",
        protocol="reid",
        source=str(root.resolve()),
        description="Beluga ID 2022 (LILA, Wild Me); labels are individual whales",
        split_source="leave-one-out over all train2022 images",
        leave_one_out=True,
    )


def _check_images(folder: Path, files: list[str]) -> None:
    present = {e.name for e in os.scandir(folder)}
    lost = [f for f in files if f not in present and not (folder / f).is_file()]
    if lost:
        shown = ", ".join(lost[:3]) + (", ..." if len(lost) > 3 else "")
        raise DataError(f"beluga: {len(lost)} image(s) named in {ANNOTATIONS} are missing from {folder}: {shown}; "
                        "download the dataset again")


def make_fixture(*, per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """A tiny ``beluga.coco.tar.gz`` in the real layout: the COCO JSON and ``images/train2022/*.jpg``.

    Six individuals with ``per_class + 1``, ``per_class``, ``per_class``, ``per_class - 1``, ``per_class - 1``
    and 1 image(s) (the last one a singleton). Images of one individual are noisy copies of one light/dark block
    pattern; the patterns are distinct rows of a Hadamard matrix, so individuals are equally far apart and the
    images of an individual are each other's nearest neighbours. The JSON lists images and annotations in
    shuffled order.
    """
    rng = np.random.default_rng(seed)
    sizes = [per_class + 1, per_class, per_class, per_class - 1, per_class - 1, 1]
    names = [f"whale{n:03d}" for n in rng.choice(900, size=len(sizes), replace=False)]
    records = [(name, j) for name, size in zip(names, sizes, strict=True) for j in range(max(size, 1))]
    order = rng.permutation(len(records))
    images, annotations, files = [], [], {}
    hadamard = np.ones((1, 1))
    while len(hadamard) < 32:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    rows = rng.permutation(np.arange(1, 32))  # row 0 is flat
    patterns = {name: np.where(hadamard[row].reshape(4, 8, 1) > 0, 215.0, 40.0) * rng.uniform(0.6, 1.0, 3)
                for name, row in zip(names, rows, strict=False)}
    for image_id, r in enumerate(order, start=1):
        name, _ = records[r]
        h, w = 40 + int(rng.integers(0, 9)), 60 + int(rng.integers(0, 9))
        base = np.kron(patterns[name], np.ones((h // 4 + 1, w // 8 + 1, 1)))[:h, :w]
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=92)
        file_name = f"{image_id:012d}.jpg"
        files[f"{IMAGES}/{file_name}"] = buf.getvalue()
        uuid = f"{int(rng.integers(0, 2**62)):032x}"
        images.append({"license": 1, "file_name": file_name, "photographer": "", "coco_url": None, "height": h,
                       "width": w, "date_captured": f"2017-06-{10 + image_id % 20:02d} 1{image_id % 10}:20:00",
                       "gps_lat_captured": -1.0, "gps_lon_captured": -1.0, "flickr_url": None, "id": image_id,
                       "uuid": uuid})
        annotations.append({"bbox": [0, 0, w, h], "theta": 0.0, "viewpoint": "up",
                            "segmentation": [[0, 0, w, 0, w, h, 0, h]], "segmentation_bbox": [0, 0, w, h],
                            "area": w * h, "iscrowd": 0, "id": 1000 + image_id, "image_id": image_id,
                            "category_id": 0, "uuid": uuid[::-1], "individual_ids": [], "isinterest": False,
                            "name": name})
    perm = rng.permutation(len(annotations))
    coco = {"info": {"description": "lifebench test fixture in the Beluga ID 2022 layout", "year": 2022},
            "licenses": [{"id": 1, "name": "fixture", "url": ""}],
            "categories": [{"id": 0, "name": "beluga_whale", "supercategory": "animal"}],
            "images": [images[i] for i in rng.permutation(len(images))],
            "annotations": [annotations[i] for i in perm]}
    files = {ANNOTATIONS: json.dumps(coco, indent=1).encode(), **files}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for folder in ("beluga.coco", "beluga.coco/annotations", "beluga.coco/images", IMAGES):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return {ARCHIVE: out.getvalue()}


SPEC = register(TaskSpec(
    name="beluga", display="Beluga ID", suite="ecology", modality="aerial photos (cropped)", kingdom="Animalia",
    protocol="reid", metric="macro_f1", kind="leave-one-out", method="leave-one-out kNN re-ID (k=5, cosine)",
    n_train=5902, n_test=5902, source="LILA Beluga ID 2022 (Wild Me COCO)", license="CDLA-Permissive-1.0 (LILA)",
    size="about 590 MB", load=load, missing=missing, fetch=fetch_sources,
    fixture=lambda spec, **kw: make_fixture(**kw), base_url=BASE_URL, sources=(Source(ARCHIVE),),
    upstream=("samuelstevens/biobench@6376d97 src/biobench/beluga/__init__.py, download.py",
              "WildlifeDatasets/wildlife-datasets datasets_wildme.py (BelugaID)"),
))
