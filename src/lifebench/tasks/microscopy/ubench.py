"""μ-Bench perception: closed multiple-choice questions about 17,315 microscopy images (Hugging Face jnirschl/uBench).

**Source.** The Hub dataset ``jnirschl/uBench`` (license CC-BY-SA-4.0), pinned to revision :data:`REVISION`. Its
only published config, ``perception``, is stored as a saved ``datasets`` build: seven Arrow IPC *stream* shards
``perception/0.1.0/ubench-test-0000{0..6}-of-00007.arrow`` (3.57 GB in all; the only split is ``test``). They are
fetched with :func:`lifebench.download.download` from
``https://huggingface.co/datasets/jnirschl/uBench/resolve/<revision>/perception/0.1.0/<shard>`` (``HF_ENDPOINT``
replaces the host; ``HF_TOKEN``, else the token file of ``hf auth login``, is sent as a bearer header, to the hub
only) and checked against the SHA-256 of each shard (:data:`SHARDS`). A shard may also be a Parquet file (the
hub's ``refs/convert/parquet`` export of the same rows): the reader tells them apart by their first bytes.

Facts used (from public code that reads this revision; the hub itself was not reachable when this was written):
the shard names, revision and SHA-256 digests (torch_em's Micro-Bench loader); the row keys ``image_id, image,
label, label_name, dataset, domain, institution, license, microns_per_pixel, modality, ncbitaxon_id,
ncbitaxon_name, pmid, split, stain, subdomain, submodality, synthetic, captions, questions, bbox, polygon``, the
``image`` struct of ``bytes`` and ``path``, and the ``questions`` entries ``{id, question, options, answer,
answer_idx}`` keyed ``domain, subdomain, modality, submodality, stain, classification``, some of them null
(several independent readers); Held et al. 2010 rows with a null ``dataset``, named by their stain (an
OLMo-style reimplementation). Not verified: the exact field types of the unread columns, and that each
``captions`` entry lists its captions in the order of the question's options (eVLLM reads ``captions[q]``
like ``questions[q]``). The loader checks what it relies on and names the row when it does not hold.

**Unpack.** Once downloaded, the image bytes of every row are written unchanged to
``<data root>/ubench/perception/images/<dataset>/<image_id>.<png|jpg|tif>`` and the other columns it reads (one
JSON object per row, questions and captions included) to ``perception/rows.jsonl``, through the staging folder
``.unpack-perception/`` (a marker per finished shard, so an interrupted unpack resumes), renamed into place when
every shard is in. The six tasks share this one folder, ``<data root>/ubench``: ``lifebench download
ubench-modality`` fetches it for all of them. The shards in ``.downloads/`` can be deleted afterwards.

**Tasks.** One task per question type (:data:`TASKS`): ``ubench-domain``, ``ubench-subdomain``,
``ubench-modality``, ``ubench-submodality``, ``ubench-stain`` (coarse perception) and ``ubench-fine`` (the
dataset-specific ``classification`` question). Every task holds every image (so a backbone embeds them once for all
six); the test split is the images asked that question (a null question is skipped, as in eVLLM). The label is
the correct option's text, the classes the union of the options, and each example carries its
:class:`~lifebench.tasks.base.Question` (text, options in order, one caption per option). There is no training
split: protocol ``zero-shot`` (contrastive: the option whose caption is most similar to the image), or a
generative model answering the lettered question; metric ``accuracy``. Example ids are the ``image_id``, or
``<dataset>/<image_id>`` for an ``image_id`` that more than one row carries: ``image_id`` is unique only within a
source dataset (193 ids of the first shard appear in both ``burgess_et_al_2024_contour`` and
``burgess_et_al_2024_texture``, each row asking its own dataset's question; as eVLLM evaluates each dataset on its
own, both rows are kept). ``examples.groups`` holds the source dataset. As in the official tables, the two sets outside them (``opencell``,
``sirinukunwattana_et_al_2016``: :data:`EXCLUDED_DATASETS`) are left out.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from lifebench.download import hf_download, hf_resolve_url
from lifebench.errors import DataError
from lifebench.progress import progress
from lifebench.tasks.base import UNKNOWN, Examples, Question, Task
from lifebench.tasks.catalog import Source, TaskSpec, register

__all__ = ["DATA_FOLDER", "EXCLUDED_DATASETS", "PATHOLOGY_DATASETS", "QUESTION_TYPES", "REPO", "REVISION", "SHARDS",
           "TASKS", "TAXONOMY_GROUPS", "data_folder", "download", "hub_url", "load", "make_fixture", "missing",
           "read_rows"]

log = logging.getLogger(__name__)

REPO = "jnirschl/uBench"
REVISION = "3f2c5b590bc7a208d5b60f3527ce4c76a331aa2b"
CONFIG_DIR = "perception/0.1.0"
SHARDS = {
    "ubench-test-00000-of-00007.arrow": "3d346134e6dffed41f74da64c1c173f5efd3a10200805796a030357297b630f1",
    "ubench-test-00001-of-00007.arrow": "790591636ae679afa1161664d207c2bb2e3d583690d03967e38364ba0f31ccac",
    "ubench-test-00002-of-00007.arrow": "c370cd84e6ed9b00483ef3d20f5c06d5ff2264733ea87f2df98cf9a22820bf74",
    "ubench-test-00003-of-00007.arrow": "832cdd6f73a132028584b4e47ec1afe643e0490dd8ec9686eabbb9de3eb7f814",
    "ubench-test-00004-of-00007.arrow": "e2741415cef1327ba243f21000ac43aab2d36b61a9c2c862a1d0e21f200f4a69",
    "ubench-test-00005-of-00007.arrow": "89deae84ed2dab1bb1fc40be0aefe81b8d94590cec548d1950ff5ff853143d34",
    "ubench-test-00006-of-00007.arrow": "534beca2084a250d4436340c78accc9fe7cc2d6063d4884302e7e7f141edad6c",
}
"""Shard file name -> SHA-256 at :data:`REVISION`."""
DATA_FOLDER = "ubench"
"""The folder under the data root that all six tasks read."""
QUESTION_TYPES = ("domain", "subdomain", "modality", "submodality", "stain", "classification")
TASKS = {"ubench-domain": "domain", "ubench-subdomain": "subdomain", "ubench-modality": "modality",
         "ubench-submodality": "submodality", "ubench-stain": "stain", "ubench-fine": "classification"}
"""Task name -> the ``questions`` key it asks."""
EXCLUDED_DATASETS = ("opencell", "sirinukunwattana_et_al_2016")
_HELD_BY_STAIN = {"H2B-mCherry": "held_et_al_2010_h2b", "GalT–EGFP": "held_et_al_2010_galt"}
TAXONOMY_GROUPS = {
    "acevedo_et_al_2020": "Cell/organism/structure type identification",
    "jung_et_al_2022": "Cell/organism/structure type identification",
    "nirschl_unpub_fluorescence": "Cell/organism/structure type identification",
    "burgess_et_al_2024_contour": "Cell texture and morphology profiling",
    "burgess_et_al_2024_eccentricity": "Cell texture and morphology profiling",
    "burgess_et_al_2024_texture": "Cell texture and morphology profiling",
    "eulenberg_et_al_2017_brightfield": "Cell cycle and stage identification",
    "eulenberg_et_al_2017_darkfield": "Cell cycle and stage identification",
    "eulenberg_et_al_2017_epifluorescence": "Cell cycle and stage identification",
    "held_et_al_2010_galt": "Cell cycle and stage identification",
    "held_et_al_2010_h2b": "Cell cycle and stage identification",
    "held_et_al_2010_mt": "Cell cycle and stage identification",
    "hussain_et_al_2019": "Neoplastic histopathology",
    "kather_et_al_2016": "Neoplastic histopathology",
    "kather_et_al_2018": "Neoplastic histopathology",
    "kather_et_al_2018_val7k": "Neoplastic histopathology",
    "nirschl_et_al_2018": "Non-neoplastic histopathology",
    "tang_et_al_2019": "Non-neoplastic histopathology",
    "wong_et_al_2022": "Non-neoplastic histopathology",
    "colocalization_benchmark": "Single-molecule imaging",
    "empiar_sbfsem": "Normal vs abnormal",
    "icpr2020_pollen": "Normal vs abnormal",
    "wu_et_al_2023": "Normal vs abnormal",
}
"""Source dataset -> its μ-Bench taxonomy group (eVLLM ``eval_utils.tasks_metadata``; 7 groups)."""
PATHOLOGY_DATASETS = ("hussain_et_al_2019", "acevedo_et_al_2020", "jung_et_al_2022", "kather_et_al_2016",
                      "kather_et_al_2018", "kather_et_al_2018_val7k", "nirschl_et_al_2018")
"""The official pathology-only slice."""
_READ = ("image_id", "image", "label", "label_name", "dataset", "domain", "subdomain", "modality", "submodality",
         "stain", "questions")
_META = ("label", "label_name", "dataset", "domain", "subdomain", "modality", "submodality", "stain")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHOW = 3


# ---------------------------------------------------------------------------------------------- where

def data_folder(root: Path) -> Path:
    """The shared data folder: ``root`` itself if it is (or holds) the unpacked data, else ``root.parent/ubench``."""
    root = Path(root)
    if root.name == DATA_FOLDER or (root / "perception").is_dir():
        return root
    return root.parent / DATA_FOLDER


def question_type(root: Path, question: str | None = None) -> str:
    """The ``questions`` key a task folder stands for: the ``question`` argument, else the task name of ``root``."""
    if question is not None:
        q = TASKS.get(question, question)
        if q not in QUESTION_TYPES:
            raise DataError(f"unknown μ-Bench question type {question!r}; use one of {', '.join(QUESTION_TYPES)} "
                            f"or a task name ({', '.join(TASKS)})")
        return q
    name = Path(root).name
    if name not in TASKS:
        raise DataError(f"cannot tell which μ-Bench question {root} stands for; use a task name "
                        f"({', '.join(TASKS)}) or pass question=")
    return TASKS[name]


def hub_url() -> str:
    """``<endpoint>/datasets/jnirschl/uBench/resolve/<revision>``; the endpoint is ``$HF_ENDPOINT`` if set."""
    return hf_resolve_url(REPO, REVISION)


def _rows_file(folder: Path) -> Path:
    return folder / "perception" / "rows.jsonl"


def missing(root: Path) -> str | None:
    folder = data_folder(root)
    if not _rows_file(folder).is_file() or not (folder / "perception" / "images").is_dir():
        return f"no perception/rows.jsonl and perception/images/ in {folder}"
    return None


# ---------------------------------------------------------------------------------------------- download

def download(root: Path, *, base_url: str | None = None, show_progress: bool = True,
             checksums: dict[str, str] | None = None) -> Path:
    """Fetch the seven shards (3.57 GB), check them, and unpack images and rows into the shared folder.

    ``checksums`` (shard -> SHA-256) defaults to :data:`SHARDS` for the hub and to none for another ``base_url``
    (a mirror or a test server), whose digests are then recorded on first download and checked later.
    """
    folder = data_folder(root)
    if missing(folder) is None:
        return folder
    if checksums is None:
        checksums = SHARDS if base_url is None else {}
    base = (base_url or hub_url()).rstrip("/")
    shards = [hf_download(f"{base}/{CONFIG_DIR}/{name}", folder / ".downloads" / name, task="ubench", repo=REPO,
                          expected=f"{CONFIG_DIR}/{name} at revision {REVISION[:7]}",
                          sha256=checksums.get(name), show_progress=show_progress) for name in SHARDS]
    _unpack(folder, shards, show_progress)
    return folder


def _table_batches(shard: Path) -> Iterator:
    """Record batches of a shard: an Arrow IPC stream (the hub's files), an Arrow IPC file, or Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(shard, "rb") as f:
        head = f.read(8)
    try:
        if head[:4] == b"PAR1":
            pf = pq.ParquetFile(shard)
            _check_columns(shard, pf.schema_arrow)
            cols = [c for c in (*_READ, "captions") if c in pf.schema_arrow.names]
            yield from pf.iter_batches(batch_size=256, columns=cols)
            return
        source = pa.memory_map(str(shard))
        reader = pa.ipc.open_file(source) if head[:6] == b"ARROW1" else pa.ipc.open_stream(source)
        _check_columns(shard, reader.schema)
        if head[:6] == b"ARROW1":
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
        else:
            yield from reader
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"ubench: cannot read {shard} ({e}); delete it and rerun lifebench download to fetch it "
                        "again") from None


def _check_columns(shard: Path, schema) -> None:
    import pyarrow as pa

    absent = [c for c in _READ if c not in schema.names]
    image = schema.field("image").type if "image" in schema.names else None
    if absent or not isinstance(image, pa.StructType) or image.get_field_index("bytes") < 0:
        raise DataError(f"ubench: {shard.name} has columns {', '.join(schema.names)}; expected {', '.join(_READ)} "
                        "with image as a struct of bytes and path, as on the hub: the dataset's layout changed, "
                        "report it")


def _suffix(data: bytes, path: str | None) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    suffix = Path(path or "").suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{2,5}", suffix) else ".png"


def _unpack(folder: Path, shards: list[Path], show_progress: bool) -> None:
    staging = folder / ".unpack-perception"
    (staging / "images").mkdir(parents=True, exist_ok=True)
    with progress(len(shards), "unpack ubench", "shard", show_progress) as bar:
        for shard in shards:
            done = staging / f".rows-{shard.name}.jsonl"
            if not done.exists():
                lines = _unpack_shard(shard, staging / "images")
                tmp = done.with_suffix(".tmp")
                tmp.write_text("".join(lines), encoding="utf-8")
                os.replace(tmp, done)
            bar.update(1)
    lines = []
    for shard in shards:
        lines += (staging / f".rows-{shard.name}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    seen: dict[str, int] = {}
    for line in lines:
        file = json.loads(line)["file"]  # <dataset>/<image_id>.<ext>: one per (dataset, image_id)
        seen[file] = seen.get(file, 0) + 1
    if dup := sorted(i for i, n in seen.items() if n > 1):
        raise DataError(f"ubench: {', '.join(dup[:_SHOW])} is given by more than one row ({len(dup)} such images; "
                        f"image_id repeats within a source dataset); the shards are inconsistent: delete {folder} "
                        "and rerun, or report it")
    (staging / "rows.jsonl").write_text("".join(lines), encoding="utf-8")
    for shard in shards:
        (staging / f".rows-{shard.name}.jsonl").unlink()
    target = folder / "perception"
    try:
        os.replace(staging, target)
    except OSError as e:
        raise DataError(f"ubench: cannot rename {staging} to {target} ({e}); remove {target} and rerun") from None
    log.info("unpacked %d μ-Bench images into %s", len(lines), target / "images")


def _unpack_shard(shard: Path, images: Path) -> list[str]:
    """Write each row's image into ``images`` and return one JSON line per row (the columns lifebench reads)."""
    out = []
    for batch in _table_batches(shard):
        for row in batch.to_pylist():
            image_id = str(row.get("image_id") or "")
            if not _SAFE_ID.fullmatch(image_id):
                raise DataError(f"ubench: {shard.name} has a row with image_id {image_id!r}, which cannot name a "
                                "file; the dataset's layout changed, report it")
            image = row.get("image") or {}
            data = image.get("bytes")
            if not data:
                raise DataError(f"ubench: {shard.name}: image {image_id} has no image bytes; report it upstream")
            dataset = dataset_name(row)
            if not _SAFE_ID.fullmatch(dataset):
                raise DataError(f"ubench: {shard.name}: image {image_id} has dataset {dataset!r}, which cannot name "
                                "a folder; the dataset's layout changed, report it")
            name = f"{dataset}/{image_id}{_suffix(data, image.get('path'))}"
            try:
                (images / dataset).mkdir(exist_ok=True)
                (images / name).write_bytes(data)
            except OSError as e:
                raise DataError(f"ubench: cannot write {images / name} ({e.strerror}); fix that (free space, "
                                "permissions) and rerun: finished shards are kept") from None
            record = {"image_id": image_id, "file": name, **{k: row.get(k) for k in _META},
                      "questions": row.get("questions") or {}, "captions": row.get("captions") or {}}
            out.append(json.dumps(record, ensure_ascii=False) + "\n")
    return out


# ---------------------------------------------------------------------------------------------- load

@functools.lru_cache(maxsize=2)
def _read_rows_cached(path: str, stamp: tuple[int, int]) -> tuple[dict, ...]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise DataError(f"ubench: {path} line {n} is not valid JSON ({e}); delete the perception folder "
                                "and rerun lifebench download") from None
    return tuple(rows)


def read_rows(root: Path) -> tuple[dict, ...]:
    """The unpacked rows (one dict per image: image_id, file, label, label_name, dataset, domain, subdomain,
    modality, submodality, stain, questions, captions); read once per process while the file is unchanged."""
    path = _rows_file(data_folder(root))
    st = path.stat()
    return _read_rows_cached(str(path), (st.st_size, st.st_mtime_ns))


def dataset_name(row: dict) -> str:
    """The row's source dataset; Held et al. 2010 rows (a null ``dataset`` on the hub) are named by their stain."""
    if row.get("dataset"):
        return str(row["dataset"])
    return _HELD_BY_STAIN.get(str(row.get("stain") or ""), "unnamed")


def _question(row: dict, qtype: str, where: str) -> tuple[Question, str] | None:
    """The row's question of type ``qtype`` and its answer, or None when the row is not asked it."""
    q = (row.get("questions") or {}).get(qtype)
    if not q or q.get("question") is None:
        return None
    options = tuple(str(o) for o in (q.get("options") or []))
    if not options:
        raise DataError(f"ubench: the {qtype} question of image {row['image_id']} in {where} has no options; "
                        "report it upstream, or delete that line to leave the image out")
    answer = q.get("answer")
    if answer is None and isinstance(q.get("answer_idx"), int) and 0 <= q["answer_idx"] < len(options):
        answer = options[q["answer_idx"]]
    if answer is None or str(answer) not in options:
        raise DataError(f"ubench: the {qtype} answer {answer!r} of image {row['image_id']} in {where} is not one of "
                        f"its options {list(options)}; report it upstream, or delete that line")
    answer = str(answer)
    captions = _captions(row, qtype, options, answer)
    return Question(text=str(q["question"]), options=options, captions=captions), answer


def _captions(row: dict, qtype: str, options: tuple[str, ...], answer: str) -> tuple[str, ...] | None:
    """The question's captions, one per option, when they line up with the options (same count, and the caption
    marked as the answer sits where the answer does); None otherwise (the option texts are matched instead)."""
    cap = (row.get("captions") or {}).get(qtype) or {}
    texts = cap.get("options")
    if not texts or len(texts) != len(options):
        return None
    texts = tuple(str(t) for t in texts)
    at = cap.get("answer_idx")
    if not isinstance(at, int) and cap.get("answer") in texts:
        at = texts.index(cap["answer"])
    if isinstance(at, int) and at != options.index(answer):
        return None
    return texts


def load(root: Path, *, question: str | None = None, **_: object) -> Task:
    """The μ-Bench task of one question type (the task name of ``root``, or ``question=``)."""
    root = Path(root)
    qtype = question_type(root, question)
    name = next(n for n, q in TASKS.items() if q == qtype)
    folder = data_folder(root)
    why = missing(folder)
    if why:
        raise DataError(f"{name}: {why}; run: lifebench download {name} --dir {folder.parent}")
    where = str(_rows_file(folder))
    rows = sorted((r for r in read_rows(folder) if dataset_name(r) not in EXCLUDED_DATASETS),
                  key=lambda r: (r["image_id"], dataset_name(r)))
    shared = {i for i, n in collections.Counter(r["image_id"] for r in rows).items() if n > 1}
    if not rows:
        raise DataError(f"{name}: {where} lists no images; delete {folder / 'perception'} and rerun lifebench download")
    images = folder / "perception" / "images"
    ids, paths, labels, groups, questions, test = [], [], [], [], [], []
    for k, row in enumerate(rows):
        asked = _question(row, qtype, where)
        ids.append(f"{dataset_name(row)}/{row['image_id']}" if row["image_id"] in shared else row["image_id"])
        paths.append(str(images / row["file"]))
        groups.append(dataset_name(row))
        questions.append(asked[0] if asked else None)
        labels.append(asked[1] if asked else UNKNOWN)
        if asked:
            test.append(k)
    lost = [p for p in paths[:50] if not os.path.exists(p)]
    if lost:
        raise DataError(f"{name}: {lost[0]} is listed in {where} but missing ({len(lost)} of the first 50 images); "
                        f"delete {folder / 'perception'} and rerun lifebench download")
    if not test:
        raise DataError(f"{name}: no image in {where} is asked the {qtype} question; the rows are incomplete: "
                        "delete the perception folder and rerun lifebench download")
    no_caption = sum(questions[k].captions is None for k in test)
    if no_caption:
        log.info("%s: %d of %d questions have no captions lined up with their options; contrastive models match "
                 "their option texts", name, no_caption, len(test))
    classes = tuple(sorted({o for k in test for o in questions[k].options}))
    examples = Examples(ids=np.array(ids, dtype=object), paths=np.array(paths, dtype=object),
                        labels=np.array(labels, dtype=object), groups=np.array(groups, dtype=object))
    n_sets = len({groups[k] for k in test})
    asked_of = np.empty(len(questions), dtype=object)
    asked_of[:] = questions
    return Task(name=name, examples=examples, train_idx=np.zeros(0, dtype=np.int64),
                test_idx=np.array(test, dtype=np.int64), classes=classes, metric="accuracy", protocol="zero-shot",
                source=str(folder / "perception"),
                description=f"μ-Bench perception, {qtype} question: {len(test)} images from {n_sets} source datasets, "
                            f"{len(classes)} distinct options ({REPO}@{REVISION[:7]})",
                split_source="given: the test split (μ-Bench has no training images; zero-shot or generative only)",
                questions=asked_of)


# ---------------------------------------------------------------------------------------------- fixture

# (dataset, domain, subdomain, modality, submodality, stain, classes); the wording of the values is illustrative.
_FIXTURE = (
    ("acevedo_et_al_2020", "pathology", "hematopathology", "light microscopy", "brightfield microscopy",
     "May-Grünwald-Giemsa", ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil", "platelet")),
    (None, "biology", "cell biology", "fluorescence microscopy", "epifluorescence microscopy", "H2B-mCherry",
     ("interphase", "prometaphase", "metaphase", "anaphase")),
    ("empiar_sbfsem", "biology", "cell biology", "electron microscopy", "serial block-face scanning electron "
     "microscopy", "heavy metal", ("mitochondrion", "nucleus", "cell membrane")),
    ("nirschl_unpub_fluorescence", "biology", "cell biology", "fluorescence microscopy", "total internal reflection "
     "fluorescence microscopy", None, ("actin", "microtubules", "mitochondria")),
    ("opencell", "biology", "cell biology", "fluorescence microscopy", "confocal microscopy", "mNeonGreen",
     ("nucleoplasm", "cytoplasm")),
)
_COLOUR = {"light microscopy": (200, 120, 170), "fluorescence microscopy": (20, 200, 60),
           "electron microscopy": (140, 140, 140)}
NONE_OPTION = "none of the above"


def _fixture_question(rng: np.random.Generator, qtype: str, answer: str, pool: list[str], k: int) -> tuple[dict, dict]:
    others = [p for p in pool if p != answer]
    picked = [answer, *rng.permutation(others)[: k - 1].tolist()] if others else [answer]
    options = [*(str(p) for p in rng.permutation(picked)), NONE_OPTION]
    idx = options.index(answer)
    what = "cell or structure" if qtype == "classification" else qtype
    q = {"id": f"{qtype}-{rng.integers(1 << 30)}", "question": f"Which {what} best describes this image?",
         "options": options, "answer": answer, "answer_idx": idx}
    caps = [f"A microscopy image of {o}." if o != NONE_OPTION else "None of the above." for o in options]
    c = {"id": q["id"], "question": None, "options": caps, "answer": caps[idx], "answer_idx": idx}
    return q, c


def make_fixture(*, per_dataset: int = 3, seed: int = 0) -> dict[str, bytes]:
    """The seven shards in the hub's layout and schema, by path under the revision (``perception/0.1.0/<shard>``).

    Arrow IPC streams (as ``datasets`` saves them) holding ``per_dataset`` rows of five source datasets: a Held et
    al. row with a null ``dataset``, a null ``stain`` question (``nirschl_unpub_fluorescence``, as on the hub) and an
    excluded set (``opencell``). Every question has shuffled options ending in "none of the above", and captions in
    the same order. Images are small PNGs coloured by modality.
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    qstruct = pa.struct([("id", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())),
                         ("answer", pa.string()), ("answer_idx", pa.int64())])
    per_type = pa.struct([(t, qstruct) for t in QUESTION_TYPES])
    schema = pa.schema([
        ("image_id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("label", pa.int64()), ("label_name", pa.string()), ("dataset", pa.string()), ("domain", pa.string()),
        ("institution", pa.string()), ("license", pa.string()), ("microns_per_pixel", pa.float64()),
        ("modality", pa.string()), ("ncbitaxon_id", pa.string()), ("ncbitaxon_name", pa.string()),
        ("pmid", pa.string()), ("split", pa.string()), ("stain", pa.string()), ("subdomain", pa.string()),
        ("submodality", pa.string()), ("synthetic", pa.bool_()), ("captions", per_type), ("questions", per_type),
        ("bbox", pa.list_(pa.float64())),
        ("polygon", pa.list_(pa.struct([("className", pa.string()), ("points", pa.list_(pa.float64()))]))),
    ])
    pools = {t: sorted({str(d[i]) for d in _FIXTURE if d[i] is not None}) for t, i in
             (("domain", 1), ("subdomain", 2), ("modality", 3), ("submodality", 4), ("stain", 5))}
    vocabulary = sorted({c for d in _FIXTURE for c in d[6]})
    rows = []
    for dataset, domain, subdomain, modality, submodality, stain, classes in _FIXTURE:
        for j in range(per_dataset):
            label_name = classes[j % len(classes)]
            arr = (rng.integers(0, 256, (24, 28, 3)) * 0.3 + np.asarray(_COLOUR[modality]) * 0.7).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            values = {"domain": domain, "subdomain": subdomain, "modality": modality, "submodality": submodality,
                      "stain": stain}
            questions, captions = {}, {}
            for t in QUESTION_TYPES:
                if t == "classification":
                    questions[t], captions[t] = _fixture_question(rng, t, label_name, list(classes), 4)
                elif values[t] is None:
                    questions[t] = captions[t] = None
                else:
                    questions[t], captions[t] = _fixture_question(rng, t, values[t], pools[t], 3)
            image_id = "-".join(f"{int(rng.integers(1 << (4 * w))):0{w}x}" for w in (8, 4, 4, 4, 12))
            rows.append({"image_id": image_id, "image": {"bytes": buf.getvalue(), "path": None},
                         "label": vocabulary.index(label_name), "label_name": label_name, "dataset": dataset,
                         "domain": domain, "institution": "Stanford University", "license": "CC BY 4.0",
                         "microns_per_pixel": 0.25, "modality": modality, "ncbitaxon_id": "9606",
                         "ncbitaxon_name": "Homo sapiens", "pmid": "12345678", "split": "test", "stain": stain,
                         "subdomain": subdomain, "submodality": submodality, "synthetic": False,
                         "captions": captions, "questions": questions, "bbox": None, "polygon": None})
    order = rng.permutation(len(rows))
    out = {}
    names = list(SHARDS)
    for s, name in enumerate(names):
        part = [rows[i] for i in order[s::len(names)]]
        table = pa.Table.from_pylist(part, schema=schema)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, schema) as writer:
            if len(part):
                writer.write_table(table, max_chunksize=2)
        out[f"{CONFIG_DIR}/{name}"] = sink.getvalue()
    return out


def _fetch(spec: TaskSpec, root: Path, *, show_progress: bool = True) -> Path:
    return download(root, base_url=spec.base_url or None, show_progress=show_progress,
                    checksums={source.name: source.sha256 for source in spec.sources if source.sha256})


def _specs() -> list[TaskSpec]:
    counts = {"classification": 16130}
    names = {"classification": "fine-grained classification"}
    return [TaskSpec(
        name=task, display=f"μ-Bench {names.get(q, q)}", suite="microscopy",
        modality="micrographs (light, fluorescence, electron)", kingdom="cells and tissues", protocol="zero-shot",
        metric="accuracy", kind="multiple-choice",
        method="multiple choice: zero-shot (option captions) or a generative VLM", n_train=0,
        n_test=counts.get(q), source=f"Hugging Face {REPO}, perception test split, revision {REVISION[:7]} "
        f"({len(SHARDS)} Arrow shards)", license="CC-BY-SA-4.0",
        size="3.57 GB, one download shared by the six ubench tasks", load=load, missing=missing, fetch=_fetch,
        fixture=lambda spec, **kw: make_fixture(**kw),
        sources=tuple(Source(f"{CONFIG_DIR}/{name}", sha256=digest) for name, digest in SHARDS.items()),
        options={"question": q}, folder=DATA_FOLDER,
        upstream=("Ale9806/eVLLM@c6108d4", f"Hugging Face {REPO}@{REVISION[:7]} {CONFIG_DIR}"))
        for task, q in TASKS.items()]


register(*_specs())
