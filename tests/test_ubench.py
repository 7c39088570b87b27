"""μ-Bench perception (the microscopy suite): Arrow shards in the hub's layout and schema, served from a local server.

The local server stands in for ``https://huggingface.co``: the shards live under the hub's resolve path of the pinned
revision, as ``lifebench download`` fetches them. pyarrow reads the fixture shards independently as the reference for
what download and load must give; the contrastive protocol is checked against a direct computation with the model.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import accuracy_score

from lifebench.cli import main
from lifebench.download import CHECKSUMS_FILE
from lifebench.errors import DataError
from lifebench.protocols.zeroshot import zero_shot_choices
from lifebench.store import Store
from lifebench.tasks import catalog, resolve_task
from lifebench.tasks.base import UNKNOWN, Question
from lifebench.tasks.catalog import SUITES, data_status, get_info
from lifebench.tasks.microscopy import ubench

RESOLVE = f"/datasets/jnirschl/uBench/resolve/{ubench.REVISION}"
TOKEN = "hf_test_token"
MODEL = "open_clip:lbtest-tiny-clip@random"


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return ubench.make_fixture()


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {Path(k).name: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def _rows(files: dict[str, bytes]) -> list[dict]:
    """Every row of the fixture shards, read with pyarrow's stream reader: the reference."""
    out = []
    for name in ubench.SHARDS:
        out += pa.ipc.open_stream(io.BytesIO(files[f"{ubench.CONFIG_DIR}/{name}"])).read_all().to_pylist()
    return out


@pytest.fixture
def hub(http_server, files, monkeypatch):
    """The shards at the hub's resolve paths; HF_ENDPOINT points at the local server, HF_TOKEN is set, and the
    pinned digests are the fixture's (the real ones belong to the real 3.57 GB shards)."""
    url, handler = http_server
    for key, data in files.items():
        handler.files[f"{RESOLVE}/{key}"] = data
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(ubench, "SHARDS", _digests(files))
    for name in ubench.TASKS:  # `lifebench download` verifies against the spec's sources: the fixture's digests
        monkeypatch.setitem(catalog._SPECS, name, catalog.get_info(name).mirrored("", files))
    seen: list[str | None] = []
    serve = handler.do_GET

    def logged(self):
        seen.append(self.headers.get("Authorization"))
        serve(self)

    monkeypatch.setattr(handler, "do_GET", logged)
    monkeypatch.setattr(handler, "auth", seen, raising=False)
    return url, handler


def test_catalog_registers_six_tasks_in_the_microscopy_suite():
    assert SUITES["microscopy"] == ["ubench-domain", "ubench-subdomain", "ubench-modality", "ubench-submodality",
                                    "ubench-stain", "ubench-fine"]
    info = get_info("ubench-fine")
    assert (info.metric, info.license, info.n_test, info.module) == (
        "accuracy", "CC-BY-SA-4.0", 16130, "lifebench.tasks.microscopy.ubench")
    assert set(ubench.TASKS.values()) == set(ubench.QUESTION_TYPES)
    assert len(ubench.SHARDS) == 7 and len(ubench.REVISION) == 40
    assert set(ubench.TAXONOMY_GROUPS.values()) == {
        "Cell/organism/structure type identification", "Cell texture and morphology profiling",
        "Cell cycle and stage identification", "Neoplastic histopathology", "Non-neoplastic histopathology",
        "Single-molecule imaging", "Normal vs abnormal"}


def test_download_resumes_sends_the_token_unpacks_once_and_loads(hub, files, tmp_path):
    url, handler = hub
    first = f"{RESOLVE}/{ubench.CONFIG_DIR}/{next(iter(ubench.SHARDS))}"
    handler.cut_after[first] = 1000  # the first response stops early: the next request must resume with Range
    folder = ubench.download(tmp_path / "ubench-modality", show_progress=False)
    assert folder == tmp_path / "ubench"
    assert (first, "bytes=1000-") in handler.requests
    assert handler.auth and set(handler.auth) == {f"Bearer {TOKEN}"}
    assert not (folder / ".unpack-perception").exists()
    assert not (folder / ".downloads" / CHECKSUMS_FILE).exists()  # pinned digests: nothing recorded on trust
    for name in ubench.TASKS:  # one download serves all six tasks
        assert data_status(name, tmp_path)[1] is None
    n_requests = len(handler.requests)
    ubench.download(tmp_path / "ubench-fine", show_progress=False)
    assert len(handler.requests) == n_requests  # nothing fetched again

    rows = _rows(files)
    kept = sorted((r for r in rows if r["dataset"] != "opencell"), key=lambda r: r["image_id"])
    images = folder / "perception" / "images"
    for r in rows:  # every image's bytes are written unchanged, named by source dataset and image_id
        assert (images / ubench.dataset_name(r) / f"{r['image_id']}.png").read_bytes() == r["image"]["bytes"]

    modality = resolve_task("ubench-modality", data_root=tmp_path)
    assert modality.examples.ids.tolist() == [r["image_id"] for r in kept]  # opencell left out, sorted by id
    assert modality.train_idx.size == 0 and modality.test_idx.tolist() == list(range(len(kept)))
    assert modality.examples.labels.tolist() == [r["questions"]["modality"]["answer"] for r in kept]
    assert modality.classes == ("electron microscopy", "fluorescence microscopy", "light microscopy",
                                "none of the above")
    assert (modality.metric, modality.protocol) == ("accuracy", "zero-shot")
    for i, r in enumerate(kept):
        q, c = r["questions"]["modality"], r["captions"]["modality"]
        assert modality.questions[i] == Question(q["question"], tuple(q["options"]), tuple(c["options"]))
    groups = modality.examples.groups.tolist()
    assert groups.count("held_et_al_2010_h2b") == 3  # a null dataset named by its stain
    assert set(groups) == {"acevedo_et_al_2020", "held_et_al_2010_h2b", "empiar_sbfsem", "nirschl_unpub_fluorescence"}

    stain = resolve_task("ubench-stain", data_root=tmp_path)
    assert stain.examples.ids.tolist() == modality.examples.ids.tolist()  # same images: embedded once for all
    assert stain.examples.manifest_hash() == modality.examples.manifest_hash()
    unasked = [i for i, r in enumerate(kept) if r["questions"]["stain"] is None]
    assert len(unasked) == 3 and not set(unasked) & set(stain.test_idx.tolist())
    assert stain.examples.labels[unasked].tolist() == [UNKNOWN] * 3

    fine = resolve_task("ubench-fine", data_root=tmp_path)
    assert fine.examples.labels.tolist() == [r["label_name"] for r in kept]
    assert all(fine.examples.labels[i] in fine.questions[i].options for i in fine.test_idx)
    assert fine.questions[0].options[-1] == "none of the above"


def test_a_changed_shard_is_rejected_and_nothing_unpacked(hub, files, tmp_path):
    wrong = dict(_digests(files))
    wrong["ubench-test-00003-of-00007.arrow"] = "0" * 64
    with pytest.raises(DataError, match=r"checksum mismatch for ubench-test-00003-of-00007\.arrow"):
        ubench.download(tmp_path / "ubench-fine", show_progress=False, checksums=wrong)
    assert not (tmp_path / "ubench" / "perception").exists()
    assert not (tmp_path / "ubench" / ".downloads" / "ubench-test-00003-of-00007.arrow").exists()


def test_refusal_by_the_hub_says_how_to_get_access(http_server, tmp_path, monkeypatch):
    url, handler = http_server
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-hf-home"))
    monkeypatch.setattr(handler, "do_GET", lambda self: self.send_error(401))
    with pytest.raises(DataError, match=r"Hugging Face refused perception/0\.1\.0/ubench-test-00000.*HF_TOKEN"):
        ubench.download(tmp_path / "ubench-fine", show_progress=False)


def _unpacked(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "ubench"
    shards = []
    for key, data in files.items():
        p = folder / ".downloads" / Path(key).name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        shards.append(p)
    ubench._unpack(folder, shards, show_progress=False)
    return folder


def _rewrite(folder: Path, change) -> Path:
    path = folder / "perception" / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_rows_and_layouts_name_the_file_and_the_fix(files, tmp_path):
    folder = _unpacked(tmp_path, files)
    held = next(r for r in _rows(files) if r["dataset"] == "empiar_sbfsem")["image_id"]

    def no_options(rows):
        next(r for r in rows if r["image_id"] == held)["questions"]["modality"]["options"] = []

    path = _rewrite(folder, no_options)
    with pytest.raises(DataError, match=rf"modality question of image {held} in {path} has no options"):
        ubench.load(tmp_path / "ubench-modality")
    ubench.load(tmp_path / "ubench-domain")  # other questions of that image are fine

    def wrong_answer(rows):
        next(r for r in rows if r["image_id"] == held)["questions"]["domain"]["answer"] = "zoology"

    _rewrite(folder, wrong_answer)
    with pytest.raises(DataError, match=r"domain answer 'zoology' of image .* is not one of its options"):
        ubench.load(tmp_path / "ubench-domain")

    with pytest.raises(DataError, match="unknown μ-Bench question type 'colour'"):
        ubench.load(folder, question="colour")
    with pytest.raises(DataError, match="run: lifebench download ubench-stain"):
        ubench.load(tmp_path / "elsewhere" / "ubench-stain")

    bad = tmp_path / "bad.arrow"
    table = pa.table({"image_id": ["x"], "label": [1]})
    with pa.OSFile(str(bad), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    with pytest.raises(DataError, match=r"bad\.arrow has columns image_id, label; expected image_id, image"):
        list(ubench._table_batches(bad))
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(b"not an arrow file at all")
    with pytest.raises(DataError, match=r"cannot read .*junk\.arrow .*delete it and rerun"):
        list(ubench._table_batches(junk))


def test_a_parquet_shard_reads_like_the_arrow_stream(files, tmp_path):
    key = f"{ubench.CONFIG_DIR}/ubench-test-00000-of-00007.arrow"
    table = pa.ipc.open_stream(io.BytesIO(files[key])).read_all()
    pq.write_table(table, tmp_path / "0000.parquet")
    got = [row for b in ubench._table_batches(tmp_path / "0000.parquet") for row in b.to_pylist()]
    assert [r["image_id"] for r in got] == table.column("image_id").to_pylist()
    assert got[0]["questions"] == table.to_pylist()[0]["questions"]


def test_captions_that_do_not_line_up_fall_back_to_the_option_texts(files, tmp_path):
    folder = _unpacked(tmp_path, files)

    def shift(rows):
        for r in rows:
            c = r["captions"]["modality"]
            c["answer_idx"] = (c["answer_idx"] + 1) % len(c["options"])

    _rewrite(folder, shift)
    task = ubench.load(tmp_path / "ubench-modality")
    assert all(task.questions[i].captions is None for i in task.test_idx)


def test_zero_shot_choices_pick_the_most_similar_caption_among_the_questions_own_options():
    qs = [Question("q?", ("a", "b", "c"), ("cap a", "cap b", "cap c")), Question("q?", ("c", "a"), None)]
    vectors = {"cap a": [1.0, 0.0], "cap b": [0.0, 1.0], "cap c": [0.6, 0.8], "c": [0.0, 1.0], "a": [1.0, 0.1]}
    asked: list[list[str]] = []

    def embed(texts):
        asked.append(texts)
        return np.array([vectors[t] for t in texts])

    X = np.array([[0.1, 1.0], [1.0, 0.0]])
    pred, ranked, conf = zero_shot_choices(qs, np.array([0, 1]), X, embed, logit_scale=10.0, width=3)
    assert asked == [["cap a", "cap b", "cap c", "c", "a"]]  # each distinct text once
    assert pred.tolist() == ["b", "a"]
    assert ranked.tolist() == [["b", "c", "a"], ["a", "c", ""]]
    sims = np.array([0.1, 1.0, 0.06 + 0.8]) / np.linalg.norm([0.1, 1.0])  # cosine with cap a, cap b, cap c
    expected = np.exp(10 * sims) / np.exp(10 * sims).sum()
    assert conf[0] == pytest.approx(expected[1])


def test_contrastive_run_on_the_suite_matches_a_direct_computation(hub, tmp_path, capsys, tiny_open_clip):
    data_root, store_path = tmp_path / "data", tmp_path / "results.sqlite"
    assert main(["-q", "download", "ubench-modality", "--dir", str(data_root)]) == 0
    argv = ["run", "--suite", "microscopy", "--data-root", str(data_root), "--model", MODEL, "--store",
            str(store_path), "--workers", "0", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name in ubench.TASKS:
        assert f"{name} (accuracy, n=" in out
    assert "ubench-stain (accuracy, n=9)" in out and "6 experiments run" in out

    from lifebench.backbones import load_backbone
    from lifebench.features import embed

    backbone = load_backbone(MODEL)
    task = resolve_task("ubench-submodality", data_root=data_root)
    X = embed(backbone, task.examples, device="cpu", num_workers=0, show_progress=False).vectors
    with Store(store_path) as store:
        (exp,) = store.experiments(task="ubench-submodality")
        preds = store.predictions(exp.id)
    assert (exp.metric, exp.protocol, exp.n_train) == ("accuracy", "zero-shot", 0)
    order = np.argsort(task.examples.ids[task.test_idx])
    for k in order:  # the option whose caption has the largest cosine similarity with the image, computed here
        i = task.test_idx[k]
        q = task.questions[i]
        with torch.inference_mode():
            T = torch.nn.functional.normalize(backbone.encode_text(list(q.captions)), dim=1)
        sims = T @ torch.nn.functional.normalize(torch.from_numpy(X[i]), dim=0)
        j = np.flatnonzero(preds.ids == task.examples.ids[i])[0]
        assert preds.y_pred[j] == q.options[int(torch.argmax(sims))]
        assert preds.y_true[j] == task.examples.labels[i]
    from lifebench.report import build_leaderboard

    board = build_leaderboard(store_path, tasks=["ubench-submodality"])
    (cell,) = board.cells
    assert cell.point == pytest.approx(accuracy_score(preds.y_true, preds.y_pred))
    assert cell.low <= cell.point <= cell.high and cell.n_test == 12


def test_model_kinds_follow_the_documented_mapping():
    from lifebench.report.microscopy import model_kind

    assert model_kind("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224") == "specialist"
    assert model_kind("hf-vlm:wisdomik/Quilt-Llava-v1.5-7b") == "specialist"
    assert model_kind("open_clip:hf-hub:imageomics/bioclip") == "specialist"
    assert model_kind("open_clip:ViT-B-32/openai") == "generalist"
    assert model_kind("openai-compatible:gpt-4o") == "generalist"
    assert model_kind("open_clip:ViT-B-32/openai", {"open_clip:ViT-B-32/openai": "specialist"}) == "specialist"


def test_microscopy_report_scores_slices_and_specialist_minus_generalist(hub, tmp_path, capsys, tiny_open_clip):
    data_root, store_path, out = tmp_path / "data", tmp_path / "results.sqlite", tmp_path / "report"
    general, special = MODEL, "open_clip:lbtest-tiny-clip@random:5"
    assert main(["-q", "download", "ubench-fine", "--dir", str(data_root)]) == 0
    assert main(["-q", "run", "--suite", "microscopy", "--data-root", str(data_root), "--model", general, "--model",
                 special, "--store", str(store_path), "--workers", "0", "--device", "cpu", "--no-report"]) == 0
    capsys.readouterr()
    assert main(["microscopy-report", "--store", str(store_path), "--data-root", str(data_root), "--out", str(out),
                 "--specialist", special]) == 0
    text = capsys.readouterr().out
    assert "specialist minus generalist" in text and "fine / taxonomy group / Normal vs abnormal" in text
    for name in ("microscopy.md", "microscopy-scores.csv", "microscopy.json", "microscopy-accuracy.png",
                 "microscopy-specialist-minus-generalist.csv"):
        assert (out / name).is_file()
    assert len(list(out.glob("specialist-minus-generalist-*.png"))) == 1

    from lifebench.report.microscopy import build

    report = build(store_path, data_root, kinds={special: "specialist"})
    with Store(store_path) as store:
        preds = {(e.backbone, e.task): store.predictions(e.id) for e in store.experiments()}
    fine = resolve_task("ubench-fine", data_root=data_root)
    dataset_of = dict(zip(fine.examples.ids.tolist(), fine.examples.groups.tolist(), strict=True))
    scores = {(s.view, s.by, s.group, s.model): s for s in report.scores}
    for model in (general, special):  # per-dataset accuracy on the fine question, recomputed from the predictions
        p = preds[(model, "ubench-fine")]
        for dataset in set(dataset_of.values()):
            rows = [k for k, i in enumerate(p.ids) if dataset_of[i] == dataset]
            s = scores[("fine", "dataset", dataset, model)]
            assert s.point == pytest.approx(accuracy_score(p.y_true[rows], p.y_pred[rows]))
            assert s.low <= s.point <= s.high and s.n_images == len(rows) and s.unparsed is None
        # pooled coarse: correct answers over questions asked, over the five coarse tasks
        hits = sum(int((preds[(model, t)].y_true == preds[(model, t)].y_pred).sum()) for t in ubench.TASKS
                   if t != "ubench-fine")
        s = scores[("question type", "question type", "coarse (pooled)", model)]
        assert (s.n_images, s.n_questions) == (12, 12 * 4 + 9) and s.point == pytest.approx(hits / 57)
    for d in report.diffs:
        assert (d.specialist, d.generalist) == (special, general)
        want = scores[(d.view, d.by, d.group, special)].point - scores[(d.view, d.by, d.group, general)].point
        assert d.point == pytest.approx(want) and d.low <= d.point <= d.high
    # the interval of a slice is the percentile interval of its resamples, recomputed here from the same indices
    from lifebench.metrics import resample_indices, task_seed

    p = preds[(general, "ubench-modality")]
    order = np.argsort(p.ids)
    hit = (p.y_true == p.y_pred).astype(float)[order]
    idx = resample_indices(12, 1000, task_seed("ubench|question type|question type|ubench-modality", 0))
    low, high = np.quantile(hit[idx].mean(axis=1), [0.025, 0.975])
    s = scores[("question type", "question type", "ubench-modality", general)]
    assert (s.low, s.high) == (pytest.approx(min(low, s.point)), pytest.approx(max(high, s.point)))
