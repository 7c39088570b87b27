"""Beluga ID re-identification: the ReID protocol against scikit-learn, and the task on a fixture in LILA's layout."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import average_precision_score, f1_score
from sklearn.neighbors import KNeighborsClassifier

from lifebench.backbones import load_backbone
from lifebench.cli import main
from lifebench.download import CHECKSUMS_FILE
from lifebench.errors import ConfigError, DataError
from lifebench.features import embed
from lifebench.metrics import get_metric
from lifebench.protocols import PROTOCOLS, ReID, fit_info, make_protocol
from lifebench.store import Store
from lifebench.tasks import resolve_task
from lifebench.tasks.catalog import CATALOG, data_status
from lifebench.tasks.ecology import beluga

# ---------------------------------------------------------------- the protocol


@pytest.fixture(scope="module")
def gallery():
    """300 examples of 60 individuals (1 to 9 images each, singletons included), clustered, no distance ties."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 10, 60)
    y = np.repeat(np.arange(60), sizes)
    X = rng.normal(size=(60, 12))[y] * 1.2 + rng.normal(size=(len(y), 12))
    perm = rng.permutation(len(y))
    return X[perm], np.array([f"ind{c:02d}" for c in y[perm]])


def _vote_reference(neighbour_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: whether the vote is tied, and the majority label with ties to the nearest tied label."""
    tied, winner = [], []
    for row in neighbour_labels:
        values, counts = np.unique(row, return_counts=True)
        top = set(values[counts == counts.max()].tolist())
        tied.append(len(top) > 1)
        winner.append(next(v for v in row if v in top))
    return np.array(tied), np.array(winner)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_leave_one_out_matches_sklearn(gallery, metric):
    X, y = gallery
    n = len(y)
    est = ReID(metric=metric, dtype="float64", batch_size=64, device="cpu")
    assert est.fit(X, y) is est
    y_pred, ranked, extras = est.leave_one_out()

    ref = KNeighborsClassifier(n_neighbors=5, metric=metric, algorithm="brute").fit(X, y)
    dist, idx = ref.kneighbors(None, n_neighbors=n - 1)  # leave-one-out: each point's neighbours exclude itself
    assert np.diff(dist, axis=1).min() > 1e-9  # no distance ties, so the ranking is unambiguous
    tied, nearest_rule = _vote_reference(y[idx[:, :5]])
    assert 20 < tied.sum() < n - 100  # both kinds of rows are exercised
    np.testing.assert_array_equal(y_pred[~tied], ref.predict(None)[~tied])  # sklearn breaks ties by label order
    np.testing.assert_array_equal(y_pred, nearest_rule)
    np.testing.assert_array_equal(ranked, y[idx[:, :5]])
    assert ranked.shape == (n, 5)

    ap = extras["ap"]
    assert ap.dtype == np.float64 and ap.shape == (n,)
    for i in range(n):
        relevant = y[idx[i]] == y[i]
        if relevant.any():
            assert ap[i] == pytest.approx(average_precision_score(relevant, -dist[i]), abs=1e-12)
        else:
            assert np.isnan(ap[i])
    singletons = np.array([(y == v).sum() == 1 for v in y])
    assert singletons.sum() >= 3 and np.array_equal(np.isnan(ap), singletons)
    assert est.n_singletons_ == singletons.sum()
    assert fit_info(est) == {"n_gallery": n, "n_singletons": int(singletons.sum())}

    # float32 (the default) ranks the same here: its nearest five are at least 1e-5 apart
    assert np.diff(dist[:, :6], axis=1).min() > 1e-5
    y32, ranked32, extras32 = ReID(metric=metric, device="cpu").fit(X.astype(np.float32), y).leave_one_out()
    np.testing.assert_array_equal(y32, y_pred)
    np.testing.assert_array_equal(ranked32, ranked)
    np.testing.assert_allclose(extras32["ap"], ap, atol=1e-9)


def test_cosine_is_euclidean_on_normalised_features(gallery):
    X, y = gallery
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    a = ReID(metric="cosine", dtype="float64", device="cpu").fit(X * 7.5, y).leave_one_out()
    b = ReID(metric="euclidean", dtype="float64", device="cpu").fit(Z, y).leave_one_out()
    for u, v in zip(a[:2], b[:2], strict=True):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(a[2]["ap"], b[2]["ap"], atol=1e-12)


def test_chunking_does_not_change_results(gallery):
    X, y = gallery
    whole = ReID(batch_size=10_000, device="cpu").fit(X, y).leave_one_out()
    rows = ReID(batch_size=7, device="cpu").fit(X, y).leave_one_out()
    for u, v in zip(whole[:2], rows[:2], strict=True):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(whole[2]["ap"], rows[2]["ap"])


def test_ties_are_broken_by_index_and_votes_by_the_nearest():
    # 1-D points: from 0.0, indices 1 and 2 are both at distance 1 (ranked 1 before 2); 3 and 4 both at 2
    X = np.array([[0.0], [1.0], [-1.0], [2.0], [-2.0], [12.0]])  # mean 2: centring is exact
    y = np.array(["a", "b", "c", "c", "b", "d"])
    est = ReID(k=4, metric="euclidean", device="cpu").fit(X, y)
    y_pred, ranked, extras = est.leave_one_out()
    assert ranked[0].tolist() == ["b", "c", "c", "b", "d"]
    assert y_pred[0] == "b"  # 2 votes each for b and c: b owns the nearest neighbour (index 1, tied with 2 on distance)
    # query 1 (x=1): indices 0 and 3 at distance 1, then 2 (distance 2), 4 (3), 5 (11)
    assert ranked[1].tolist() == ["a", "c", "c", "b", "d"]
    assert np.isnan(extras["ap"][0]) and np.isnan(extras["ap"][5])  # "a" and "d" have no other image
    # query 2 (x=-1, "c"): ranked 0 (a), 4 (b), 1 (b), 3 (c) -> its one relevant item at rank 4
    assert extras["ap"][2] == pytest.approx(1 / 4)
    # k = 1 is plain nearest-neighbour re-identification
    y1, r1, _ = ReID(k=1, metric="euclidean", device="cpu").fit(X, y).leave_one_out()
    np.testing.assert_array_equal(y1, r1[:, 0])


def test_small_galleries_and_bad_input():
    X = np.arange(8, dtype=float).reshape(4, 2)
    y_pred, ranked, extras = ReID(k=3, device="cpu").fit(X, [0, 0, 1, 1]).leave_one_out()
    assert ranked.shape == (4, 3) and y_pred.dtype.kind == "i"  # labels keep their type
    with pytest.raises(ConfigError, match="k=5 is more than the 3 other examples"):
        ReID(device="cpu").fit(X, [0, 0, 1, 1]).leave_one_out()
    with pytest.raises(DataError, match="at least 2 examples"):
        ReID(k=1, device="cpu").fit(X[:1], [0]).leave_one_out()
    with pytest.raises(NotFittedError):
        ReID().leave_one_out()
    with pytest.raises(DataError, match="NaN"):
        ReID(device="cpu").fit(np.array([[np.nan, 1.0]] * 3), [0, 1, 2])
    with pytest.raises(DataError, match="3 labels for 4 examples"):
        ReID(device="cpu").fit(X, [0, 1, 2])


def test_registered_and_built_by_make_protocol():
    assert "reid" in PROTOCOLS.names() and PROTOCOLS.help("reid")
    est = make_protocol("reid", k=3, metric="euclidean", random_state=0, device="cpu")
    assert isinstance(est, ReID) and (est.k, est.metric) == (3, "euclidean")
    assert ReID().get_params() == {"k": 5, "metric": "cosine", "batch_size": 1024, "dtype": "float32",
                                   "device": "auto", "random_state": None}
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    with pytest.raises(ConfigError, match=r"no parameter 'n_neighbors'"):
        make_protocol("reid", n_neighbors=3)
    for bad, match in (({"k": 0}, "k=0"), ({"k": True}, "k=True"), ({"k": 2.0}, "k=2.0"),
                       ({"metric": "manhattan"}, "metric='manhattan'"), ({"batch_size": -1}, "batch_size=-1"),
                       ({"dtype": "float16"}, "dtype")):
        with pytest.raises(ConfigError, match=match):
            make_protocol("reid", **bad)


def test_predict_on_new_queries_matches_sklearn(gallery):
    X, y = gallery
    rng = np.random.default_rng(5)
    Q = X[:80] + rng.normal(scale=0.3, size=(80, X.shape[1]))
    est = ReID(metric="euclidean", dtype="float64", device="cpu").fit(X, y)
    ref = KNeighborsClassifier(n_neighbors=5, algorithm="brute").fit(X, y)
    _, idx = ref.kneighbors(Q)
    np.testing.assert_array_equal(est.kneighbors(Q), idx)
    tied, nearest_rule = _vote_reference(y[idx])
    np.testing.assert_array_equal(est.predict(Q), nearest_rule)
    np.testing.assert_array_equal(est.predict(Q)[~tied], ref.predict(Q)[~tied])
    np.testing.assert_allclose(est.predict_proba(Q), ref.predict_proba(Q), atol=1e-12)
    with pytest.raises(DataError, match="columns"):
        est.predict(Q[:, :3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(gallery):
    X, y = gallery
    cpu = ReID(dtype="float64", device="cpu").fit(X, y).leave_one_out()
    gpu = ReID(dtype="float64", device="cuda").fit(X, y).leave_one_out()
    for u, v in zip(cpu[:2], gpu[:2], strict=True):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(cpu[2]["ap"], gpu[2]["ap"], atol=1e-12)


# ---------------------------------------------------------------- the task

PATH = f"/lila/{beluga.ARCHIVE}"


@pytest.fixture(scope="module")
def archive() -> bytes:
    return beluga.make_fixture()[beluga.ARCHIVE]


def _coco(archive: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return json.loads(tar.extractfile(beluga.ANNOTATIONS).read())


@pytest.fixture
def served(http_server, archive, monkeypatch):
    url, handler = http_server
    handler.files[PATH] = archive
    monkeypatch.setattr(beluga, "SPEC", beluga.SPEC.mirrored(url + PATH.rsplit("/", 1)[0]))
    return handler


def _placed(root: Path, data: bytes) -> Path:
    """``root`` after ``download`` found the archive already in ``root/.downloads`` (no HTTP)."""
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / beluga.ARCHIVE).write_bytes(data)
    beluga.download(root, base_url="http://127.0.0.1:9/unused", show_progress=False)
    return root


def test_fixture_has_the_lila_layout(archive):
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        files = {m.name for m in tar.getmembers() if m.isfile()}
    coco = _coco(archive)
    assert {"images", "annotations", "categories"} <= set(coco)
    assert files == {beluga.ANNOTATIONS} | {f"{beluga.IMAGES}/{im['file_name']}" for im in coco["images"]}
    assert all(f.startswith("beluga.coco/") for f in files)
    per_individual = {}
    for ann in coco["annotations"]:
        per_individual[ann["name"]] = per_individual.get(ann["name"], 0) + 1
    assert sorted(per_individual.values()) == [1, 2, 2, 3, 3, 4]  # one singleton
    assert {a["image_id"] for a in coco["annotations"]} == {im["id"] for im in coco["images"]}


def test_download_resumes_records_checksum_and_loads(served, archive, tmp_path):
    cut = len(archive) // 2
    served.cut_after[PATH] = cut
    root = tmp_path / "data" / "beluga"
    assert data_status("beluga", tmp_path / "data")[1].startswith(f"no {beluga.ANNOTATIONS}")
    beluga.download(root, show_progress=False)
    assert (PATH, f"bytes={cut}-") in served.requests
    recorded = json.loads((root / ".downloads" / CHECKSUMS_FILE).read_text())
    assert recorded == {beluga.ARCHIVE: hashlib.sha256(archive).hexdigest()}
    assert data_status("beluga", tmp_path / "data") == (root, None)

    task = resolve_task("beluga", data_root=tmp_path / "data")
    coco = _coco(archive)
    file_of = {im["id"]: im["file_name"] for im in coco["images"]}
    want = sorted((file_of[a["image_id"]], a["name"]) for a in coco["annotations"])
    assert list(zip(task.examples.ids.tolist(), task.examples.labels.tolist(), strict=True)) == want  # id order
    assert task.classes == tuple(sorted({a["name"] for a in coco["annotations"]})) and len(task.classes) == 6
    assert len(task.examples) == 15
    np.testing.assert_array_equal(task.train_idx, np.arange(15))
    np.testing.assert_array_equal(task.test_idx, np.arange(15))
    assert task.leave_one_out and task.protocol == "reid" and task.metric == "macro_f1"
    assert task.split_source == "leave-one-out over all train2022 images"
    assert all(Path(p).is_file() and Path(p).parent == root / beluga.IMAGES for p in task.examples.paths.tolist())
    n = len(served.requests)
    beluga.download(root, show_progress=False)  # idempotent: the verified archive is kept, nothing refetched
    assert len(served.requests) == n


def test_corrupted_archive_is_rejected_and_nothing_extracted(served, archive, tmp_path, monkeypatch):
    (source,) = beluga.SPEC.sources
    assert source.sha256 is None and source.md5 is None  # LILA publishes none: the first download's SHA-256 counts
    bad = bytearray(archive)
    bad[200] ^= 0xFF
    served.files[PATH] = bytes(bad)
    known = dataclasses.replace(source, sha256=hashlib.sha256(archive).hexdigest())  # as if it were published
    monkeypatch.setattr(beluga, "SPEC", dataclasses.replace(beluga.SPEC, sources=(known,)))
    root = tmp_path / "b"
    with pytest.raises(DataError, match="checksum mismatch for beluga.coco.tar.gz"):
        beluga.download(root, show_progress=False)
    assert not (root / "beluga.coco").exists() and not (root / ".downloads" / beluga.ARCHIVE).exists()

    monkeypatch.setattr(beluga, "SPEC", dataclasses.replace(beluga.SPEC, sources=(source,)))  # trust on first use
    served.files[PATH] = archive
    beluga.download(root, show_progress=False)
    path = root / ".downloads" / beluga.ARCHIVE
    path.write_bytes(bytes(bad))
    with pytest.raises(DataError, match="checksum mismatch for beluga.coco.tar.gz.*recorded sha256"):
        beluga.download(root, show_progress=False)
    assert not path.exists()


def _rewrite(root: Path, edit) -> None:
    path = root / beluga.ANNOTATIONS
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))


def test_bad_layouts_raise_data_errors_naming_the_file(archive, tmp_path):
    root = _placed(tmp_path / "beluga", archive)
    coco = _coco(archive)
    lost = coco["images"][3]["file_name"]
    (root / beluga.IMAGES / lost).unlink()
    with pytest.raises(DataError, match=f"1 image\\(s\\) named in .*instances_train2022.json are missing from "
                                        f".*train2022: {lost}; download the dataset again"):
        beluga.load(root)

    root = _placed(tmp_path / "b2", archive)
    _rewrite(root, lambda c: c["annotations"][0].pop("name"))
    with pytest.raises(DataError, match=f"annotation {coco['annotations'][0]['id']} in .* has no individual 'name'"):
        beluga.load(root)
    _rewrite(root, lambda c: c["annotations"][0].update(name="w", image_id=999))
    with pytest.raises(DataError, match="names image_id 999, which is not in its 'images' list"):
        beluga.load(root)
    (root / beluga.ANNOTATIONS).write_text('{"images": [')
    with pytest.raises(DataError, match="cannot read .*instances_train2022.json as JSON"):
        beluga.load(root)
    (root / beluga.ANNOTATIONS).write_text('{"images": []}')
    with pytest.raises(DataError, match="is not a COCO file"):
        beluga.load(root)

    (root / beluga.ANNOTATIONS).unlink()
    assert beluga.missing(root) == f"no {beluga.ANNOTATIONS} in {root}"
    with pytest.raises(DataError, match="no beluga.coco/annotations/instances_train2022.json in .*"
                                        "run: lifebench download beluga --dir"):
        beluga.load(root)


def test_unannotated_images_are_left_out_and_the_first_annotation_labels(archive, tmp_path, caplog):
    root = _placed(tmp_path / "beluga", archive)
    coco = _coco(archive)
    first, second = coco["annotations"][0], coco["annotations"][1]
    other = next(a["name"] for a in coco["annotations"] if a["name"] != first["name"])

    def edit(c):
        c["annotations"] = [a for a in c["annotations"] if a["id"] != second["id"]]  # image of `second` unlabelled
        c["annotations"].append({**first, "id": 99999, "name": other})  # a later, disagreeing annotation
    _rewrite(root, edit)
    with caplog.at_level(logging.WARNING, logger="lifebench.tasks.ecology.beluga"):
        task = beluga.load(root)
    assert "1 of 15 images have no annotation" in caplog.text and "1 annotations name a different" in caplog.text
    file_of = {im["id"]: im["file_name"] for im in coco["images"]}
    assert len(task.examples) == 14 and file_of[second["image_id"]] not in task.examples.ids.tolist()
    assert task.examples.labels[task.examples.ids == file_of[first["image_id"]]].tolist() == [first["name"]]


def test_catalog_entry():
    info = CATALOG["beluga"]
    assert info.module == "lifebench.tasks.ecology.beluga"
    assert (info.n_train, info.n_test, info.metric) == (5902, 5902, "macro_f1")


def test_run_end_to_end_with_pixels_then_report_mean_ap(archive, tmp_path, capsys):
    data_root = tmp_path / "data"
    _placed(data_root / "beluga", archive)
    store = tmp_path / "s.sqlite"
    assert main(["-q", "run", "--task", "beluga", "--data-root", str(data_root), "--model", "pixels",
                 "--store", str(store), "--workers", "0"]) == 0
    assert "beluga (macro_f1, n=15)" in capsys.readouterr().out
    with Store(store) as s:
        (exp,) = s.experiments(task="beluga")
        preds = s.predictions(exp.id)
    assert (exp.protocol, exp.metric) == ("reid", "macro_f1")

    # The stored predictions are the leave-one-out of ReID on the pixel embeddings (from the embedding cache).
    task = beluga.load(data_root / "beluga")
    emb = embed(load_backbone("pixels"), task.examples, device="cpu", num_workers=0, show_progress=False)
    y_pred, ranked, extras = ReID(device="cpu").fit(emb.vectors, task.examples.labels).leave_one_out()
    at = {i: k for k, i in enumerate(task.examples.ids.tolist())}
    rows = np.array([at[i] for i in preds.ids.tolist()])
    assert len(rows) == 15
    np.testing.assert_array_equal(preds.y_true, task.examples.labels[rows].astype(str))
    np.testing.assert_array_equal(preds.y_pred, y_pred[rows].astype(str))
    np.testing.assert_array_equal(preds.topk, ranked[rows].astype(str))
    np.testing.assert_allclose(preds.extra["ap"], extras["ap"][rows])

    # Images of one individual look alike: every non-singleton's nearest neighbour is itself (rank-1 = 14/15),
    # all its images rank first (AP 1), and the 5-vote beats chance (about 1/6 for 6 individuals).
    singleton = preds.y_true == next(c for c in task.classes if (task.examples.labels == c).sum() == 1)
    assert np.array_equal(preds.topk[:, 0] == preds.y_true, ~singleton)
    assert np.isnan(preds.extra["ap"][singleton]).all() and (preds.extra["ap"][~singleton] == 1.0).all()
    macro_f1 = f1_score(preds.y_true, preds.y_pred, average="macro", zero_division=0)
    assert macro_f1 > 0.3
    # the registered re-ID metrics read the stored columns: rank-1 = 14/15, mAP = 1 over the 14 non-singletons
    codes, topk_codes = task.encode(preds.y_true), task.encode(preds.topk.ravel()).reshape(preds.topk.shape)
    assert get_metric("top1_accuracy").fn(codes, topk_codes) == pytest.approx(14 / 15)
    assert get_metric("mean_ap").fn(codes, preds.extra["ap"][:, None]) == 1.0

    assert main(["-q", "report", "--store", str(store), "--metric", "mean_ap", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "mean_ap" in out and "1.000" in out


def test_n_train_is_refused_in_one_line(archive, tmp_path, capsys):
    """Leave-one-out re-ID has no training side to shrink (BioBench's Beluga ignores n_train): one line, no run."""
    data_root = tmp_path / "data"
    _placed(data_root / "beluga", archive)
    code = main(["-q", "run", "--task", "beluga", "--data-root", str(data_root), "--model", "pixels",
                 "--store", str(tmp_path / "s.sqlite"), "--workers", "0", "--n-train", "4"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert ("task 'beluga' is scored leave-one-out (each image is a query against all the others), so it has no "
            "training set to shrink: run it without --n-train") in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
