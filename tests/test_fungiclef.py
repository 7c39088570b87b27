"""FungiCLEF: the open-set Mahalanobis protocol, the user-focused loss rows, and the task on a fixture in the real
Danish Fungi layout served from a local HTTP server."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis
from sklearn.base import clone
from sklearn.covariance import ledoit_wolf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.preprocessing import StandardScaler

from lifebench.cli import main
from lifebench.download import CHECKSUMS_FILE, extract
from lifebench.errors import ConfigError, DataError, UnknownNameError
from lifebench.metrics import get_metric
from lifebench.protocols import PROTOCOLS, MahalanobisOpenSet, SimpleShot, fit_info, make_protocol
from lifebench.store import Store
from lifebench.tasks import resolve_task
from lifebench.tasks.base import UNKNOWN
from lifebench.tasks.catalog import CATALOG, data_status
from lifebench.tasks.ecology import fungiclef

# ------------------------------------------------------------------------------------------- open-set protocol


@pytest.fixture(scope="module")
def blobs():
    """4 classes in 6-D with unequal spreads; one class of a single example, one feature constant in class 1."""
    rng = np.random.default_rng(0)
    sizes = [30, 12, 1, 20]
    X = np.concatenate([rng.normal(2.0 * k, 0.5 + 0.4 * k, (n, 6)) for k, n in enumerate(sizes)])
    y = np.repeat(np.arange(4), sizes)
    X[y == 1, 2] = 5.0
    return X, y


@pytest.mark.parametrize("shrinkage", ["auto", 0.3])
def test_means_and_covariance_match_sklearn_lda(blobs, shrinkage):
    X, y = blobs
    est = MahalanobisOpenSet(shrinkage=shrinkage, dtype="float64", device="cpu").fit(X, y)
    with pytest.warns(UserWarning, match="Only one sample"):  # the single-example class
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage, store_covariance=True).fit(X, y)
    np.testing.assert_allclose(est.means_, lda.means_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(est.priors_, lda.priors_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.covariance_, lda.covariance_, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(est.classes_, lda.classes_)


def test_covariance_is_the_prior_weighted_ledoit_wolf_of_standardised_classes():
    """Spelled out with sklearn.covariance.ledoit_wolf, one class at a time (no single-example class here)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(45, 5)) @ rng.normal(size=(5, 5))
    y = np.repeat([0, 1, 2], [20, 15, 10])
    want = np.zeros((5, 5))
    for k in range(3):
        sc = StandardScaler().fit(X[y == k])
        cov_k = ledoit_wolf(sc.transform(X[y == k]))[0]
        want += np.mean(y == k) * sc.scale_[:, None] * cov_k * sc.scale_[None, :]
    est = MahalanobisOpenSet(dtype="float64", device="cpu").fit(X, y)
    np.testing.assert_allclose(est.covariance_, want, rtol=0, atol=1e-12)


def test_squared_distances_match_scipy_and_set_the_threshold(blobs):
    X, y = blobs
    est = MahalanobisOpenSet(dtype="float64", device="cpu").fit(X, y)
    VI = np.linalg.inv(est.covariance_)
    d2 = est.squared_mahalanobis(X)
    want = np.array([[mahalanobis(x, m, VI) ** 2 for m in est.means_] for x in X])
    np.testing.assert_allclose(d2, want, rtol=1e-9, atol=1e-9)
    assert est.threshold_ == pytest.approx(np.percentile(want.min(axis=1), 95), rel=1e-9)
    np.testing.assert_allclose(-est.score_samples(X), want.min(axis=1), rtol=1e-9, atol=1e-9)
    assert est.train_unknown_fraction_ == pytest.approx(np.mean(want.min(axis=1) > est.threshold_))
    # the 95th percentile of 63 values interpolates between the 59th and 60th smallest: the 4 largest are beyond
    assert est.train_unknown_fraction_ == pytest.approx(4 / 63)
    est32 = MahalanobisOpenSet(device="cpu").fit(X, y)  # float32 distances, float64 covariance
    np.testing.assert_allclose(est32.squared_mahalanobis(X), want, rtol=1e-4, atol=1e-3)


def test_far_cluster_is_unknown_and_the_rest_keeps_the_simpleshot_prediction(blobs):
    X, y = blobs
    rng = np.random.default_rng(2)
    inside = X[::3] + rng.normal(0, 0.05, X[::3].shape)
    far = rng.normal(40.0, 0.5, (7, 6))
    est = make_protocol("openset", device="cpu").fit(X, y)
    ss = SimpleShot(device="cpu").fit(X, y)
    queries = np.concatenate([inside, far])
    pred = est.predict(queries)
    assert pred.dtype.kind == "i" and pred[len(inside):].tolist() == [-1] * 7
    known = ~est.is_unknown(inside)
    assert known.mean() > 0.8
    np.testing.assert_array_equal(pred[: len(inside)][known], ss.predict(inside)[known])
    np.testing.assert_allclose(est.decision_function(queries), ss.decision_function(queries), rtol=1e-6)
    assert est.decision_function(queries).shape == (len(queries), 4)
    # string labels: the unknown label is whatever unknown_label says
    est_s = MahalanobisOpenSet(unknown_label="none", device="cpu").fit(X, np.array(list("abcd"))[y])
    assert est_s.predict(far).tolist() == ["none"] * 7


def test_registered_checked_cloned_and_reported(blobs):
    X, y = blobs
    assert "openset" in PROTOCOLS and PROTOCOLS.get("openset") is MahalanobisOpenSet
    est = make_protocol("openset", quantile=0.9, base_params={}, random_state=3, device="cpu", dtype="float64")
    assert clone(est).get_params() == est.get_params()
    est.fit(X, y)
    assert est.base_.random_state == 3 and est.base_.dtype == "float64"  # shared parameters reach the base
    info = fit_info(est)
    assert info == {"base": "simpleshot", "threshold": est.threshold_, "quantile": 0.9,
                    "train_unknown_fraction": est.train_unknown_fraction_}
    json.dumps(info)
    knn = make_protocol("openset", base="knn", base_params={"n_neighbors": 3}, device="cpu").fit(X, y)
    assert knn.base_.n_neighbors == 3
    for bad, match in [({"quantile": 1.5}, "quantile=1.5 must be a number in \\(0, 1\\]"),
                       ({"shrinkage": "lw"}, "shrinkage='lw' is not supported"),
                       ({"shrinkage": 2.0}, "shrinkage=2.0 must be 'auto'"),
                       ({"base": "openset"}, "would nest the open-set protocol"),
                       ({"base_params": {"k": 3}}, "base protocol 'simpleshot' has no parameter 'k'"),
                       ({"quantil": 0.9}, "did you mean 'quantile'")]:
        with pytest.raises(ConfigError, match=match):
            make_protocol("openset", **bad)
    with pytest.raises(UnknownNameError):
        make_protocol("openset", base="nearest")
    with pytest.raises(DataError, match="training labels include unknown_label=-1"):
        MahalanobisOpenSet(device="cpu").fit(X, np.where(y == 3, -1, y))


def test_singular_covariance_uses_the_pseudo_inverse(caplog):
    """No shrinkage and fewer examples than features: Mahalanobis in the span the data covers."""
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(0, 1, (3, 8)), rng.normal(3, 1, (3, 8))])
    y = np.repeat([0, 1], 3)
    est = MahalanobisOpenSet(shrinkage=0.0, dtype="float64", device="cpu").fit(X, y)
    assert "singular" in caplog.text
    VI = np.linalg.pinv(est.covariance_)
    want = np.array([[mahalanobis(x, m, VI) ** 2 for m in est.means_] for x in X])
    np.testing.assert_allclose(est.squared_mahalanobis(X), want, rtol=1e-7, atol=1e-7)


# -------------------------------------------------------------------------------- user-focused loss, per row

def _ce_with_unknown(t, p):  # BioBench / FungiCLEF 2023, unknown encoded as -1
    other = np.sum((t != p) & (p != -1) & (t != -1))
    return (other + 10 * np.sum((t == -1) & (p != -1)) + 0.1 * np.sum((t != -1) & (p == -1))) / t.size


def _psc_esc(t, p, poisonous):
    tp, pp = np.isin(t, poisonous), np.isin(p, poisonous)
    return (100 * np.sum(tp & ~pp) + 1 * np.sum(~tp & pp)) / t.size


def _user_loss_score_normalized(t, p, poisonous):
    n = t.size
    n_unknown, n_poisonous = np.sum(t == -1), np.sum(np.isin(t, poisonous))
    worst_ce = 9 * n_unknown / n + 1
    worst_psc = (100 * n_poisonous + (n - n_poisonous)) / n
    return 1 - (_ce_with_unknown(t, p) + _psc_esc(t, p, poisonous)) / (worst_ce + worst_psc)


def _as_labels(codes):
    return np.array([UNKNOWN if c == -1 else str(c) for c in codes], dtype=object)


@pytest.mark.parametrize("seed", range(6))
def test_row_costs_reproduce_biobench_user_loss_score_normalized(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    train = np.arange(7)
    poisonous = rng.choice(train, size=int(rng.integers(0, 4)), replace=False)
    t = rng.choice(np.arange(-1, 7), n)
    p = np.where(rng.random(n) < 0.4, t, rng.choice(np.arange(-1, 7), n))
    truth = np.array([str(c) for c in t], dtype=object)  # the unknown species' label is its class id "-1"
    rows = fungiclef.user_loss_rows(truth, _as_labels(p), train.astype(str), poisonous=poisonous.astype(str))
    ours = 1 - rows["cost"].sum() / rows["worst"].sum()
    assert ours == pytest.approx(_user_loss_score_normalized(t, p, poisonous), abs=1e-12)
    assert get_metric("fungiclef_score").fn(truth, np.stack([rows["cost"], rows["worst"]], 1)) == pytest.approx(
        ours, abs=1e-12)


def test_row_costs_case_by_case():
    truth = ["0", "-1", "-1", "2", "2", "1", "1", "0"]
    pred = ["0", "1", UNKNOWN, UNKNOWN, "0", "2", UNKNOWN, "1"]
    rows = fungiclef.user_loss_rows(np.array(truth), np.array(pred), ["0", "1", "2"], poisonous={"2"})
    # right; unknown as known; unknown right; poisonous as unknown (edible); poisonous as edible;
    # edible as poisonous; known as unknown; wrong known class
    assert rows["cost"].tolist() == [0, 10, 0, 100.1, 101, 2, 0.1, 1]
    assert rows["worst"].tolist() == [2, 11, 11, 101, 101, 2, 2, 2]
    # a class never trained on counts as unknown truth even with a non-negative id
    assert fungiclef.user_loss_rows(np.array(["9"]), np.array(["0"]), ["0"], poisonous=())["cost"].tolist() == [10]


# ------------------------------------------------------------------------------------- task on the fixture

@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return fungiclef.make_fixture()


@pytest.fixture
def served(http_server, files):
    url, handler = http_server
    for name, data in files.items():
        handler.files[f"/fungi/{name}"] = data
    return f"{url}/fungi", handler


def _rows(files, name):
    return list(csv.DictReader(io.StringIO(files[name].decode())))


def _placed(root: Path, files) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
        if name.endswith(".tar.gz"):
            extract(root / name, root)
    return root


def test_fixture_has_the_real_names_and_columns(files):
    assert set(files) == {"DF20-300px.tar.gz", "DF21_300px.tar.gz", "FungiCLEF2023_train_metadata_PRODUCTION.csv",
                          "FungiCLEF2023_val_metadata_PRODUCTION.csv", "poison_status_list.csv"}
    for archive, folder in fungiclef.ARCHIVES.items():
        with tarfile.open(fileobj=io.BytesIO(files[archive])) as tar:
            assert {n.split("/")[0] for n in tar.getnames()} == {folder}
    val = _rows(files, fungiclef.VAL_CSV)
    assert {"image_path", "class_id", "observationID"} <= set(val[0])
    photos = {}
    for r in val:
        photos.setdefault(r["observationID"], set()).add(r["class_id"])
    assert len(photos) == 6 and all(len(v) == 1 for v in photos.values())  # one species per observation
    assert {"-1"} in photos.values()
    assert _rows(files, fungiclef.POISON_CSV)[0].keys() == {"class_id", "poisonous"}


def test_download_resumes_records_checksums_and_loads(served, files, tmp_path):
    url, handler = served
    cut = len(files["DF20-300px.tar.gz"]) // 2
    handler.cut_after["/fungi/DF20-300px.tar.gz"] = cut
    data_root = tmp_path / "data"
    root = data_root / "fungiclef"
    assert data_status("fungiclef", data_root)[1].startswith("no DF20_300/ folder")
    fungiclef.download(root, base_url=url, show_progress=False)
    assert ("/fungi/DF20-300px.tar.gz", f"bytes={cut}-") in handler.requests
    recorded = json.loads((root / ".downloads" / CHECKSUMS_FILE).read_text())
    assert recorded == {n: hashlib.sha256(files[n]).hexdigest() for n in fungiclef.ARCHIVES}
    recorded = json.loads((root / CHECKSUMS_FILE).read_text())
    assert recorded == {n: hashlib.sha256(files[n]).hexdigest() for n in (fungiclef.TRAIN_CSV, fungiclef.VAL_CSV,
                                                                          fungiclef.POISON_CSV)}
    assert data_status("fungiclef", data_root) == (root, None)

    task = resolve_task("fungiclef", data_root=data_root)
    assert (len(task.train_idx), len(task.test_idx)) == (9, 15)
    assert task.classes == ("-1", "0", "1", "2")
    assert sorted(set(task.train.labels.tolist())) == ["0", "1", "2"]  # -1 is never trained on
    assert (task.protocol, task.metric, task.pool_train, task.pool_test, task.open_set) == (
        "openset", "fungiclef_score", None, "mean", True)
    assert task.split_source == "given (DF20 train images -> DF21 val, pooled per observationID)"
    val = _rows(files, fungiclef.VAL_CSV)
    assert sorted(zip(task.test.ids.tolist(), task.test.labels.tolist(), task.test.groups.tolist(), strict=True)) \
        == sorted((f"DF21_300/{r['image_path']}", r["class_id"], r["observationID"]) for r in val)
    train = _rows(files, fungiclef.TRAIN_CSV)
    assert all(r["image_path"].endswith(".JPG") for r in train)  # found as *.jpg on disk (lower-case retry)
    assert sorted(task.train.ids.tolist()) == sorted(f"DF20_300/{r['image_path'].lower()}" for r in train)
    assert all(Path(p).is_file() for p in task.examples.paths.tolist())
    rows = task.row_extras(np.array(["2", "-1"]), np.array([UNKNOWN, "2"]), np.array(["0", "1", "2"]))
    assert rows["cost"].tolist() == [100.1, 11] and rows["worst"].tolist() == [101, 11]  # class 2 is poisonous

    n = len(handler.requests)
    fungiclef.download(root, base_url=url, show_progress=False)  # idempotent: verified files kept, nothing fetched
    assert len(handler.requests) == n


def test_changed_archive_is_rejected_and_nothing_extracted(served, files, tmp_path):
    url, handler = served
    root = tmp_path / "fungiclef"
    fungiclef.download(root, base_url=url, show_progress=False)
    # the server now sends different bytes for DF21: the SHA-256 recorded on first download rejects them
    (root / ".downloads" / "DF21_300px.tar.gz").unlink()
    (root / ".lifebench-extracted-DF21_300px.tar.gz").unlink()
    shutil.rmtree(root / "DF21_300")
    data = bytearray(files["DF21_300px.tar.gz"])
    data[100] ^= 0xFF
    handler.files["/fungi/DF21_300px.tar.gz"] = bytes(data)
    with pytest.raises(DataError, match="checksum mismatch for DF21_300px.tar.gz.*recorded sha256"):
        fungiclef.download(root, base_url=url, show_progress=False)
    assert not (root / "DF21_300").exists() and not (root / ".downloads" / "DF21_300px.tar.gz").exists()
    assert fungiclef.missing(root) == f"no DF21_300/ folder in {root}"


def test_bad_input_names_the_file_and_the_fix(files, tmp_path):
    root = _placed(tmp_path / "fungiclef", files)
    fungiclef.load(root)
    gone = _rows(files, fungiclef.VAL_CSV)[4]["image_path"]
    (root / "DF21_300" / gone).unlink()
    with pytest.raises(DataError, match=f"1 image\\(s\\) listed in {fungiclef.VAL_CSV} are missing from "
                                        f".*DF21_300: {gone}; download the dataset again"):
        fungiclef.load(root)
    (root / "DF21_300" / gone).write_bytes(b"")

    text = (root / fungiclef.TRAIN_CSV).read_text().replace("class_id", "label", 1)
    (root / fungiclef.TRAIN_CSV).write_text(text)
    with pytest.raises(DataError, match=f"{fungiclef.TRAIN_CSV} has no class_id column"):
        fungiclef.load(root)
    (root / fungiclef.TRAIN_CSV).write_bytes(files[fungiclef.TRAIN_CSV])

    (root / fungiclef.POISON_CSV).unlink()
    assert fungiclef.missing(root) == f"no poison_status_list.csv in {root}"
    with pytest.raises(DataError, match="no poison_status_list.csv in .*; run: lifebench download fungiclef --dir"):
        fungiclef.load(root)
    (root / fungiclef.POISON_CSV).write_text("class_id,poisonous\n2,maybe\n")
    with pytest.raises(DataError, match="row 2 of .*poison_status_list.csv has poisonous='maybe'"):
        fungiclef.load(root)


def test_import_makes_no_network_call_and_catalog_points_here():
    info = CATALOG["fungiclef"]
    assert info.module == "lifebench.tasks.ecology.fungiclef" and info.metric == "fungiclef_score"
    assert (info.n_train, info.n_test) == (295938, 60832)


def test_end_to_end_run_scores_observations(files, tmp_path, capsys):
    data_root = tmp_path / "data"
    _placed(data_root / "fungiclef", files)
    store = tmp_path / "s.sqlite"
    assert main(["-q", "run", "--task", "fungiclef", "--data-root", str(data_root), "--model", "pixels",
                 "--store", str(store), "--workers", "0"]) == 0
    assert "fungiclef (fungiclef_score, n=6)" in capsys.readouterr().out
    with Store(store) as s:
        (exp,) = s.experiments(task="fungiclef")
        preds = s.predictions(exp.id)
    assert exp.protocol == "openset" and exp.metric == "fungiclef_score"
    val = _rows(files, fungiclef.VAL_CSV)
    label_of = {r["observationID"]: r["class_id"] for r in val}
    assert sorted(preds.ids.tolist()) == sorted(label_of)  # one prediction per observation
    assert [label_of[i] for i in preds.ids.tolist()] == preds.y_true.tolist()
    assert set(preds.y_pred.tolist()) <= {"0", "1", "2", UNKNOWN}
    want = fungiclef.user_loss_rows(preds.y_true, preds.y_pred, ["0", "1", "2"], poisonous={"2"})
    np.testing.assert_allclose(preds.extra["cost"], want["cost"])
    np.testing.assert_allclose(preds.extra["worst"], want["worst"])
    codes = np.array([-1 if c == UNKNOWN else int(c) for c in preds.y_pred])
    t = preds.y_true.astype(int)
    score = get_metric("fungiclef_score").fn(preds.y_true, np.stack([preds.extra["cost"], preds.extra["worst"]], 1))
    assert score == pytest.approx(_user_loss_score_normalized(t, codes, np.array([2])), abs=1e-12)


def test_n_train_scores_unseen_species_as_known_like_biobench(files, tmp_path, capsys):
    """With --n-train the probe sees fewer species; "unknown" truth stays the metadata's class_id -1 (the whole
    training class set), so the stored costs give BioBench's user_loss_score_normalized on the same predictions."""
    data_root = tmp_path / "data"
    _placed(data_root / "fungiclef", files)
    store = tmp_path / "s.sqlite"
    assert main(["-q", "run", "--task", "fungiclef", "--data-root", str(data_root), "--model", "pixels",
                 "--store", str(store), "--workers", "0", "--n-train", "2"]) == 0
    assert "fungiclef@n2" in capsys.readouterr().out
    with Store(store) as s:
        (exp,) = s.experiments(task="fungiclef@n2")
        preds = s.predictions(exp.id)
    sub = fungiclef.load(data_root / "fungiclef").with_n_train(2, seed=0)  # what the run trained on
    seen = set(sub.examples.labels[sub.train_idx].tolist())
    assert len(seen) == 2 and exp.n_train == 2
    unseen = ({"0", "1", "2"} - seen).pop()
    assert unseen in preds.y_true.tolist()  # an observation of the species the probe never saw is scored
    codes = np.array([-1 if c == UNKNOWN else int(c) for c in preds.y_pred])
    score = get_metric("fungiclef_score").fn(preds.y_true, np.stack([preds.extra["cost"], preds.extra["worst"]], 1))
    assert score == pytest.approx(_user_loss_score_normalized(preds.y_true.astype(int), codes, np.array([2])),
                                  abs=1e-12)
