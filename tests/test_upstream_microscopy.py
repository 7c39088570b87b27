"""μ-Bench conformance: lifebench against the real uBench schema and rows and eVLLM's own construction.

Data: tests/data/upstream/ubench/ (SOURCE.md names the repositories and commits): the Arrow columns of
``jnirschl/uBench`` at revision 3f2c5b5, ten real ``classification`` questions, and facts of the first shard.
eVLLM (Ale9806/eVLLM @ c6108d4) is not an installable package, so the few lines the tests compare against are
re-implemented here, each naming the upstream lines it mirrors.
"""

from __future__ import annotations

import io
import json
import string
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from lifebench.tasks.microscopy import ubench
from lifebench.vlm.choice import INSTRUCTION, build_prompt

DATA = Path(__file__).parent / "data" / "upstream" / "ubench"
SCHEMA = json.loads((DATA / "schema.json").read_text(encoding="utf-8"))
REAL = json.loads((DATA / "classification_rows.json").read_text(encoding="utf-8"))

_QUESTION = pa.struct([("id", pa.string()), ("name", pa.string()), ("question", pa.string()),
                       ("options", pa.list_(pa.string())), ("answer", pa.string()), ("answer_idx", pa.int64())])
_PER_TYPE = pa.struct([(t, _QUESTION) for t in SCHEMA["question_types"]])
_TYPES = {
    "image_id": pa.string(), "image": pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    "label": pa.int64(), "label_name": pa.string(), "dataset": pa.string(), "domain": pa.string(),
    "institution": pa.string(), "license": pa.string(), "microns_per_pixel": pa.float64(), "modality": pa.string(),
    "ncbitaxon_id": pa.string(), "ncbitaxon_name": pa.string(), "pmid": pa.string(), "split": pa.string(),
    "stain": pa.string(), "subdomain": pa.string(), "submodality": pa.string(), "synthetic": pa.bool_(),
    "captions": _PER_TYPE, "questions": _PER_TYPE, "bbox": pa.list_(pa.float64()),
    "polygon": pa.list_(pa.struct([("className", pa.string()), ("points", pa.list_(pa.float64()))])),
}
UBENCH_SCHEMA = pa.schema([(c["name"], _TYPES[c["name"]]) for c in SCHEMA["columns"]])
"""The hub's column names in the hub's order (schema.json); types as documented there."""


# ------------------------------------------------------------------ eVLLM's lines, re-implemented (c6108d4)

def evllm_add_alphabet(options: list[str], answer: str) -> tuple[list[str], str]:
    """``src/evlm/inference/utils.py`` L87-92 (``add_alphabet``)."""
    idx_to_option = {0: "A) ", 1: "B) ", 2: "C) ", 3: "D) ", 4: "E) ", 5: "F) ", 6: "G) ", 7: "H) "}
    index = options.index(answer)
    for i in range(len(options)):  # upstream: range(0, len(options))
        options[i] = idx_to_option[i] + options[i]
    answer = idx_to_option[index] + answer
    assert answer in options
    return options, answer


def evllm_template(question: dict, prompt: str = "Answer with a single letter, no extra details.") -> tuple[str, int]:
    """``src/evlm/inference/generative_inference.py`` L20 (the prompt) and L61-68: the text sent to a generative
    model for one question, and ``correct_idx``."""
    question_str = question["question"]
    answer = question["answer"]
    options = list(question["options"])
    position = options.index(answer)
    options, answer = evllm_add_alphabet(options, answer)
    joined_options = "\n".join(options)
    return prompt + "\n" + "Question:" + question_str + "\n" + joined_options, position


# ------------------------------------------------------------------------------------- the fixture shard

def _png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _q(qid: str, text: str, options: list[str], answer_idx: int) -> dict:
    return {"id": qid, "name": qid.split("-")[0], "question": text, "options": options,
            "answer": options[answer_idx], "answer_idx": answer_idx}


def _coarse(value: str, others: list[str], qtype: str, k: int) -> dict:
    # Coarse question texts here are illustrative (no real one is published in text); their structure is real.
    options = sorted({value, *others}) + ["none of the above"]
    return _q(f"{qtype}-{k}", f"Which {qtype} best describes this image?", options, options.index(value))


def _row(k: int, image_id: str, dataset: str | None, stain: str, classification: dict, label_name: str) -> dict:
    meta = {"domain": "pathology" if dataset == "acevedo_et_al_2020" else "biology",
            "subdomain": "hematology" if dataset == "acevedo_et_al_2020" else "cell biology",
            "modality": "light microscopy" if dataset == "acevedo_et_al_2020" else "fluorescence microscopy",
            "submodality": "brightfield microscopy" if dataset == "acevedo_et_al_2020" else "synthetic"}
    questions = {t: _coarse(v, ["electron microscopy", "biology", "pathology"], t, k) for t, v in meta.items()}
    questions["stain"] = _coarse(stain, ["H&E"], "stain", k) if dataset != "burgess_et_al_2024_texture" else None
    questions["classification"] = classification
    return {"image_id": image_id, "image": {"bytes": _png(k), "path": None}, "label": k, "label_name": label_name,
            "dataset": dataset, **meta, "institution": "Stanford University", "license": "CC BY-SA 4.0",
            "microns_per_pixel": None, "ncbitaxon_id": None, "ncbitaxon_name": None, "pmid": None, "split": "test",
            "stain": stain, "synthetic": dataset != "acevedo_et_al_2020", "captions": None, "questions": questions,
            "bbox": None, "polygon": None}


def _rows() -> list[dict]:
    rows = []
    for k, r in enumerate(REAL["rows"]):
        idx = string.ascii_uppercase.index(r["answer_letter"])
        q = _q(f"classification-{k}", r["question"], r["options"], idx)
        rows.append(_row(k, r["image_id"], "acevedo_et_al_2020", "Giemsa", q, r["options"][idx]))
    # The first shard's fact: one image_id in two synthetic datasets, each row asking its own dataset's question.
    shared = "0b6c1f0e-burgess-shared"
    for k, (dataset, options) in enumerate((("burgess_et_al_2024_contour", ["smooth", "intermediate", "irregular"]),
                                            ("burgess_et_al_2024_texture", ["uniform", "intermediate", "textured"]))):
        q = _q(f"classification-b{k}", "Describe the cell.", [*options, "none of the above"], 1)
        rows.append(_row(20 + k, shared, dataset, "synthetic stain", q, "intermediate"))
    return rows


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One shard in the hub's schema (the others empty), unpacked by lifebench's own unpack."""
    root = tmp_path_factory.mktemp("ubench-upstream")
    folder = root / "ubench"
    shards = []
    for s, name in enumerate(ubench.SHARDS):
        table = pa.Table.from_pylist(_rows() if s == 0 else [], schema=UBENCH_SCHEMA)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, UBENCH_SCHEMA) as writer:
            writer.write_table(table)
        p = folder / ".downloads" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(sink.getvalue())
        shards.append(p)
    ubench._unpack(folder, shards, show_progress=False)
    return root


# ------------------------------------------------------------------------------------------------ tests

def test_the_fixture_schema_is_the_hubs_and_lifebench_reads_only_columns_it_has():
    assert UBENCH_SCHEMA.names == ["image_id", "image", "label", "label_name", "dataset", "domain", "institution",
                                   "license", "microns_per_pixel", "modality", "ncbitaxon_id", "ncbitaxon_name",
                                   "pmid", "split", "stain", "subdomain", "submodality", "synthetic", "captions",
                                   "questions", "bbox", "polygon"]
    assert set(ubench._READ) <= set(UBENCH_SCHEMA.names) and "captions" in UBENCH_SCHEMA.names
    assert tuple(SCHEMA["question_types"]) == ubench.QUESTION_TYPES
    assert SCHEMA["revision"] == ubench.REVISION


def test_a_shard_in_the_hub_schema_loads_every_task(data_root):
    fine = ubench.load(data_root / "ubench-fine")
    real = {r["image_id"]: r for r in REAL["rows"]}
    got = dict(zip(fine.examples.ids[fine.test_idx].tolist(), fine.test_idx.tolist(), strict=True))
    assert set(real) <= set(got)
    for image_id, r in real.items():
        i = got[image_id]
        q = fine.questions[i]
        assert q.text == r["question"] and list(q.options) == r["options"]
        assert fine.examples.labels[i] == r["options"][string.ascii_uppercase.index(r["answer_letter"])]
        assert fine.examples.groups[i] == "acevedo_et_al_2020"
    for name in ubench.TASKS:
        task = ubench.load(data_root / name)
        assert len(task.test_idx) == (12 if name != "ubench-stain" else 11)  # the texture row has no stain question


def test_an_image_id_shared_by_two_source_datasets_keeps_both_rows(data_root):
    """As in the first shard (193 ids in both burgess contour and texture): two examples, two image files."""
    fine = ubench.load(data_root / "ubench-fine")
    ids = fine.examples.ids.tolist()
    assert len(ids) == len(set(ids)) == 12
    both = {i: k for k, i in enumerate(ids) if "burgess-shared" in i}
    assert set(both) == {"burgess_et_al_2024_contour/0b6c1f0e-burgess-shared",
                         "burgess_et_al_2024_texture/0b6c1f0e-burgess-shared"}
    paths = {fine.examples.paths[k] for k in both.values()}
    assert len(paths) == 2 and all(Path(p).is_file() for p in paths)
    options = {fine.examples.groups[k]: fine.questions[k].options[0] for k in both.values()}
    assert options == {"burgess_et_al_2024_contour": "smooth", "burgess_et_al_2024_texture": "uniform"}


def test_the_lettered_prompt_of_a_real_question_is_evllms(data_root):
    fine = ubench.load(data_root / "ubench-fine")
    for k in fine.test_idx:
        q = fine.questions[k]
        upstream = {"question": q.text, "options": list(q.options), "answer": fine.examples.labels[k]}
        template, _ = evllm_template(upstream)
        assert build_prompt(q.text, q.options) == template
    r = REAL["rows"][0]
    assert build_prompt(r["question"], r["options"]) == (
        f"{INSTRUCTION}\nQuestion:A Giemsa-stained light micrograph displaying human peripheral blood cells. As a "
        "blood cell recognition system, identify the correct cell type:\nA) platelet\nB) eosinophil\nC) neutrophil\n"
        "D) immature granulocyte\nE) basophil\nF) none of the above")


def test_the_contrastive_answer_index_is_options_index_of_the_answer(data_root):
    """eVLLM clip_inference.py L58-60: ``position = options.index(answer)`` is the correct caption's index; lifebench
    keeps the options in the hub's order, so the label's index in them is that position, and the hub's
    ``answer_idx``."""
    fine = ubench.load(data_root / "ubench-fine")
    real = {r["image_id"]: string.ascii_uppercase.index(r["answer_letter"]) for r in REAL["rows"]}
    for k in fine.test_idx:
        q, label = fine.questions[k], fine.examples.labels[k]
        _, position = evllm_template({"question": q.text, "options": list(q.options), "answer": label})
        assert list(q.options).index(label) == position
        if fine.examples.ids[k] in real:
            assert position == real[fine.examples.ids[k]]
