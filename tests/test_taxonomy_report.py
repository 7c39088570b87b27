"""Taxonomy-aware scores on a hand-made 6-class tree: every number worked out by hand, Spearman against scipy,
the report on a small store, pictures and the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import write_image
from lifebench.cli import main
from lifebench.errors import ConfigError, DataError, UnknownNameError
from lifebench.metrics import resample_indices, task_seed
from lifebench.metrics.taxonomy import (
    class_distances,
    estimate,
    mean_error_distance,
    mean_error_distance_resampled,
    rank_accuracy,
    rank_accuracy_resampled,
    taxonomic_distance,
    taxonomy_scores,
    tree_correlation,
    tree_correlation_ci,
    tree_correlation_resampled,
)
from lifebench.report.taxonomy import plot_embedding, taxonomy_report, varying_ranks
from lifebench.store import Experiment, Predictions, Store
from lifebench.tasks.base import UNKNOWN
from lifebench.tasks.taxonomy import RANKS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def taxon(*values: str) -> dict[str, str]:
    return {r: v for r, v in zip(RANKS, values, strict=True) if v}


# Gaps on purpose: beech has no order, wolf no species epithet.
TREE = {
    "lion": taxon("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "leo"),
    "tiger": taxon("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "tigris"),
    "wolf": taxon("Animalia", "Chordata", "Mammalia", "Carnivora", "Canidae", "Canis", ""),
    "robin": taxon("Animalia", "Chordata", "Aves", "Passeriformes", "Turdidae", "Turdus", "migratorius"),
    "oak": taxon("Plantae", "Tracheophyta", "Magnoliopsida", "Fagales", "Fagaceae", "Quercus", "robur"),
    "beech": taxon("Plantae", "Tracheophyta", "Magnoliopsida", "", "Fagaceae", "Fagus", "sylvatica"),
}
CLASSES = sorted(TREE)  # beech, lion, oak, robin, tiger, wolf
# By hand: same genus 1; lion-wolf shares the order (Carnivora) 3; mammal-bird share the phylum 5; plant-animal 7;
# oak-beech agree down to the family (beech's missing order is skipped) 2.
DIST = np.array([
    [0, 7, 2, 7, 7, 7],
    [7, 0, 7, 5, 1, 3],
    [2, 7, 0, 7, 7, 7],
    [7, 5, 7, 0, 5, 5],
    [7, 1, 7, 5, 0, 3],
    [7, 3, 7, 5, 3, 0],
])

Y_TRUE = np.array("lion lion tiger tiger wolf wolf robin robin oak oak beech beech".split())
PRED = {
    "model-a": np.array("lion tiger tiger wolf wolf lion robin lion oak beech beech robin".split()),
    "model-b": np.array("tiger lion tiger lion wolf wolf lion robin beech oak oak robin".split()),
}
# Per example, right (1) / wrong (0) at each rank, "-" where the true class lacks the rank; worked out by hand.
RIGHT = {
    "model-a": {"kingdom": "111111111110", "phylum": "111111111110", "class": "111111101110",
                "order": "1111111010--", "family": "111010101110", "genus": "111010101010",
                "species": "1010--101010"},
    "model-b": {"kingdom": "111111111110", "phylum": "111111111110", "class": "111111011110",
                "order": "1111110101--", "family": "111111011110", "genus": "111111010100",
                "species": "0110--010100"},
}
ERR_DIST = {"model-a": [0, 1, 0, 3, 0, 3, 0, 5, 0, 2, 0, 7], "model-b": [1, 0, 0, 1, 0, 0, 5, 0, 2, 0, 2, 7]}
ACCURACY = {  # the fractions of the strings above
    "model-a": {"kingdom": 11 / 12, "phylum": 11 / 12, "class": 10 / 12, "order": 8 / 10, "family": 8 / 12,
                "genus": 7 / 12, "species": 5 / 10},
    "model-b": {"kingdom": 11 / 12, "phylum": 11 / 12, "class": 10 / 12, "order": 8 / 10, "family": 10 / 12,
                "genus": 8 / 12, "species": 4 / 10},
}
MEAN_ERR = {"model-a": 21 / 6, "model-b": 18 / 6}


def hand_arrays(model: str, rank: str) -> tuple[np.ndarray, np.ndarray]:
    text = RIGHT[model][rank]
    return np.array([c == "1" for c in text]), np.array([c != "-" for c in text])


def percentile_interval(point: float, values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Reference: percentile interval over the defined resamples (nothing widens it to contain the point)."""
    values = values[np.isfinite(values)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return low, high


# ---------------------------------------------------------------------------------------------- metrics


def test_distances_of_the_hand_made_tree() -> None:
    np.testing.assert_array_equal(class_distances(CLASSES, TREE), DIST)
    assert taxonomic_distance("lion", "tiger", TREE) == 1
    assert taxonomic_distance("oak", "beech", TREE) == 2
    assert taxonomic_distance("robin", "robin", TREE) == 0
    # homonyms: the same genus name in two kingdoms shares nothing; identical ranks of two classes: 1 apart
    homonyms = {"mulberry": taxon("Plantae", "", "", "", "Moraceae", "Morus", "alba"),
                "gannet": taxon("Animalia", "", "", "", "Sulidae", "Morus", "bassanus"),
                "gannet2": taxon("Animalia", "", "", "", "Sulidae", "Morus", "bassanus")}
    assert taxonomic_distance("mulberry", "gannet", homonyms) == 7
    assert taxonomic_distance("gannet", "gannet2", homonyms) == 1
    assert rank_accuracy(["mulberry"], ["gannet"], homonyms, "genus") == 0.0
    assert rank_accuracy(["gannet"], ["gannet2"], homonyms, "species") == 1.0
    # values compare without case and surrounding spaces; a class missing from the taxonomy shares nothing
    assert taxonomic_distance("lion", "LION", {**TREE, "LION": taxon(" animalia", "CHORDATA", "mammalia",
                                                                     "carnivora", "felidae", "panthera", "Leo")}) == 1
    assert taxonomic_distance("lion", UNKNOWN, TREE) == 7


@pytest.mark.parametrize("model", sorted(PRED))
def test_rank_accuracy_and_error_distance_by_hand(model: str) -> None:
    for rank in RANKS:
        assert rank_accuracy(Y_TRUE, PRED[model], TREE, rank) == pytest.approx(ACCURACY[model][rank], abs=1e-15)
    assert mean_error_distance(Y_TRUE, PRED[model], TREE) == pytest.approx(MEAN_ERR[model], abs=1e-15)
    assert np.isnan(mean_error_distance(Y_TRUE, Y_TRUE, TREE))  # no errors: undefined
    # the per-example distances of the errors are the hand-made matrix's entries
    dist = [DIST[CLASSES.index(t), CLASSES.index(p)] for t, p in zip(Y_TRUE, PRED[model], strict=True)]
    assert dist == ERR_DIST[model]


def test_unknown_prediction_and_bad_input() -> None:
    y_true, y_pred = np.array(["lion", "oak"]), np.array([UNKNOWN, "oak"])
    for rank in RANKS:
        assert rank_accuracy(y_true, y_pred, TREE, rank) == 0.5
    assert mean_error_distance(y_true, y_pred, TREE) == 7.0
    with pytest.raises(ConfigError, match="rank 'tribe' is not one of kingdom"):
        rank_accuracy(y_true, y_pred, TREE, "tribe")
    with pytest.raises(DataError, match="y_true has 2 examples but y_pred has 1"):
        rank_accuracy(y_true, y_pred[:1], TREE, "genus")
    assert np.isnan(rank_accuracy(["wolf"], ["wolf"], TREE, "species"))  # no true class has the rank


def test_resampled_forms_equal_the_metric_of_every_resample() -> None:
    idx = resample_indices(Y_TRUE.size, 200, seed=3)
    for model, y_pred in PRED.items():
        for rank in RANKS:
            got = rank_accuracy_resampled(Y_TRUE, y_pred, idx, TREE, rank)
            right, valid = hand_arrays(model, rank)
            want = np.array([right[r].sum() / valid[r].sum() if valid[r].any() else np.nan for r in idx])
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
            np.testing.assert_allclose(got[:5], [rank_accuracy(Y_TRUE[r], y_pred[r], TREE, rank) for r in idx[:5]])
        got = mean_error_distance_resampled(Y_TRUE, y_pred, idx, TREE)
        dist = np.array(ERR_DIST[model])
        want = np.array([dist[r].sum() / (dist[r] > 0).sum() if (dist[r] > 0).any() else np.nan for r in idx])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)


def test_estimate_leaves_out_undefined_resamples() -> None:
    y_true = np.array(["lion"] * 9 + ["oak"])
    y_pred = np.array(["lion"] * 9 + ["beech"])  # one error, at distance 2
    idx = resample_indices(10, 1000, seed=0)
    res = mean_error_distance_resampled(y_true, y_pred, idx, TREE)
    has_error = (idx == 9).any(axis=1)
    assert np.array_equal(np.isnan(res), ~has_error) and (res[has_error] == 2.0).all()
    est = estimate(2.0, res, 0.9)
    assert (est.point, est.low, est.high) == (2.0, 2.0, 2.0)
    scores = taxonomy_scores(y_true, y_pred, TREE, idx)
    assert scores["mean_error_distance"][1] == 1 and scores["mean_error_distance"][0].point == 2.0
    assert set(scores) == {f"accuracy_{r}" for r in RANKS} | {"mean_error_distance"}
    with pytest.raises(ConfigError, match="confidence"):
        estimate(0.5, res, 1.5)


def centroid_distances(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Reference: cosine distances between the means of the L2-normalised vectors of each class in CLASSES."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cent = np.stack([unit[labels == c].mean(axis=0) for c in CLASSES])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    return 1 - cent @ cent.T


def test_tree_correlation_matches_scipy_spearmanr() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(CLASSES, 4)
    vectors = rng.normal(size=(labels.size, 8))
    cos = centroid_distances(vectors, labels)
    a, b = np.triu_indices(len(CLASSES), k=1)
    assert tree_correlation(vectors, labels, TREE) == pytest.approx(spearmanr(cos[a, b], DIST[a, b]).statistic,
                                                                    abs=1e-12)
    # class resamples: the pairs of distinct classes among the drawn positions, duplicates and all
    idx = resample_indices(len(CLASSES), 50, seed=1)
    got = tree_correlation_resampled(vectors, labels, TREE, idx)
    for value, row in zip(got, idx, strict=True):
        i, j = np.triu_indices(row.size, k=1)
        ci, cj = row[i], row[j]
        keep = ci != cj
        want = spearmanr(cos[ci[keep], cj[keep]], DIST[ci[keep], cj[keep]]).statistic
        assert value == pytest.approx(want, abs=1e-12) or (np.isnan(value) and np.isnan(want))
    # an embedding built from the tree (one block per rank, one-hot taxon) orders pairs as the tree does
    tree_vectors = np.repeat([np.concatenate([np.eye(8)[sorted({TREE[k].get(r, '') for k in CLASSES}).index(
        TREE[c].get(r, ''))] * (j + 1) for j, r in enumerate(RANKS)]) for c in CLASSES], 3, axis=0)
    cos_tree = centroid_distances(tree_vectors, np.repeat(CLASSES, 3))
    rho = tree_correlation(tree_vectors, np.repeat(CLASSES, 3), TREE)
    assert rho == pytest.approx(spearmanr(cos_tree[a, b], DIST[a, b]).statistic, abs=1e-12) and rho > 0.8


def test_tree_correlation_ci_and_its_errors() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(CLASSES, 3)
    vectors = rng.normal(size=(labels.size, 5))
    est, n = tree_correlation_ci(vectors, labels, TREE, n_resamples=300, seed=4, confidence=0.9)
    assert n == 6 and est.point == pytest.approx(tree_correlation(vectors, labels, TREE), abs=1e-12)
    idx = resample_indices(6, 300, 4)
    res = tree_correlation_resampled(vectors, labels, TREE, idx)
    np.testing.assert_allclose(est.resamples, res, atol=1e-12)
    assert (est.low, est.high) == pytest.approx(percentile_interval(est.point, res, 0.9))
    # more classes than max_classes: a seeded subset of that many
    assert tree_correlation_ci(vectors, labels, TREE, n_resamples=10, max_classes=4)[1] == 4
    with pytest.raises(DataError, match="at least 3 classes with taxonomy"):
        tree_correlation(vectors[:6], labels[:6], TREE)
    with pytest.raises(DataError, match="one per label"):
        tree_correlation(vectors[:5], labels, TREE)


# ---------------------------------------------------------------------------------------------- report

TASK = "zoo"
B = 400


def write_model(store: Store, backbone: str, y_pred: np.ndarray, taxonomy=TREE, task=TASK) -> int:
    exp = Experiment(config_hash=f"{task}/{backbone}", task=task, backbone=backbone, protocol="logreg",
                     metric="accuracy", classes=tuple(CLASSES),
                     config={"task_manifest": "m1"} | ({"taxonomy": taxonomy} if taxonomy else {}),
                     fit_info={"embedding_key": "none"})
    ids = np.array([f"x{i:02d}" for i in range(Y_TRUE.size)])
    order = np.random.default_rng(len(backbone)).permutation(ids.size)  # stored shuffled; read back by id
    return store.write(exp, Predictions(ids[order], Y_TRUE[order], y_pred[order]))


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "results.sqlite") as s:
        for name, y_pred in PRED.items():
            write_model(s, name, y_pred)
        yield s


def test_report_matches_hand_computation_on_shared_resamples(store: Store, tmp_path: Path) -> None:
    report = taxonomy_report(store, TASK, n_resamples=B, seed=5, confidence=0.9)
    idx = resample_indices(Y_TRUE.size, B, task_seed(TASK, 5))  # one matrix for both models: paired
    assert [r.backbone for r in report.rows] == ["model-a", "model-b"]
    for row in report.rows:
        assert row.n_test == 12 and row.protocol == "logreg"
        for rank in RANKS:
            est, n = row.scores[f"accuracy_{rank}"]
            right, valid = hand_arrays(row.backbone, rank)
            assert est.point == pytest.approx(ACCURACY[row.backbone][rank], abs=1e-15)
            assert n == valid.sum()
            values = np.array([right[r].sum() / valid[r].sum() if valid[r].any() else np.nan for r in idx])
            np.testing.assert_allclose(est.resamples, values, atol=1e-15)
            assert (est.low, est.high) == pytest.approx(percentile_interval(est.point, values, 0.9), abs=1e-12)
        est, n = row.scores["mean_error_distance"]
        dist = np.array(ERR_DIST[row.backbone])
        values = np.array([dist[r].sum() / (dist[r] > 0).sum() if (dist[r] > 0).any() else np.nan for r in idx])
        assert est.point == pytest.approx(MEAN_ERR[row.backbone]) and n == 6
        assert (est.low, est.high) == pytest.approx(percentile_interval(est.point, values, 0.9), abs=1e-12)
        assert "tree_correlation" not in row.scores

    text = report.to_text()
    assert text.splitlines()[0].split()[:9] == ["model", *RANKS, "error"]
    assert "model-a/logreg" in text and "0.917 [" in text and "3.50 [" in text and "12 test examples" in text
    written = report.write(tmp_path / "out")
    assert sorted(p.name for p in written.values()) == ["taxonomy-zoo.csv", "taxonomy-zoo.json", "taxonomy-zoo.txt"]
    rows = list(csv.DictReader(written["csv"].open()))
    assert len(rows) == 2 * (len(RANKS) + 1)
    got = {(r["backbone"], r["statistic"]): float(r["point"]) for r in rows}
    assert got[("model-b", "accuracy_family")] == pytest.approx(10 / 12)
    assert got[("model-b", "mean_error_distance")] == pytest.approx(3.0)
    data = json.loads(written["json"].read_text())
    assert data["meta"]["n_resamples"] == B and len(data["records"]) == len(rows)


def test_report_with_embeddings_and_model_filter(store: Store) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(CLASSES, 4)
    vectors = rng.normal(size=(labels.size, 6))
    report = taxonomy_report(store, TASK, models=["model-b"], embeddings={"model-b": (vectors, labels)},
                             n_resamples=200)
    (row,) = report.rows
    est, n = row.scores["tree_correlation"]
    assert n == 6 and est.point == pytest.approx(tree_correlation(vectors, labels, TREE), abs=1e-12)
    assert "tree corr." in report.to_text()
    assert report.taxonomy == TREE and varying_ranks(TREE) == list(RANKS)


def test_report_errors(store: Store, tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="unknown task 'zo'; did you mean 'zoo'"):
        taxonomy_report(store, "zo")
    with pytest.raises(UnknownNameError, match="unknown model"):
        taxonomy_report(store, TASK, models=["nope"])
    write_model(store, "plain", PRED["model-a"], taxonomy=None, task="flat")
    with pytest.raises(DataError, match="task flat: its stored experiments carry no taxonomy"):
        taxonomy_report(store, "flat")
    with pytest.raises(ConfigError, match="no results store"):
        taxonomy_report(tmp_path / "missing.sqlite", TASK)


def test_plot_embedding_writes_a_png_with_one_panel_per_rank(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(CLASSES, 5)
    vectors = rng.normal(size=(labels.size, 60)) + np.repeat(np.eye(6, 60) * 5, 5, axis=0)
    out = plot_embedding(vectors, labels, TREE, ["kingdom", "family"], tmp_path / "pics" / "zoo.png")
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    width = int.from_bytes(data[16:20], "big")
    single = plot_embedding(vectors, labels, TREE, "genus", tmp_path / "one.png", max_points=20).read_bytes()
    assert single[:8] == PNG_MAGIC and int.from_bytes(single[16:20], "big") < width  # one panel is narrower
    with pytest.raises(ConfigError, match="rank 'tribe'"):
        plot_embedding(vectors, labels, TREE, "tribe", tmp_path / "x.png")
    with pytest.raises(ConfigError, match="projection method 'pca'"):
        plot_embedding(vectors, labels, TREE, "genus", tmp_path / "x.png", method="pca")


# ---------------------------------------------------------------------------------------------- command line


def make_manifest(root: Path, per_class: int = 5) -> Path:
    """A CSV manifest with taxonomy columns: the 6 classes, ``per_class`` images each (the last 2 are test)."""
    rng = np.random.default_rng(0)
    lines = ["path,label,split," + ",".join(RANKS)]
    for k, c in enumerate(CLASSES):
        for i in range(per_class):
            write_image(root / c / f"{i}.png", rng, colour=(40 * k, 255 - 40 * k, 120))
            split = "test" if i >= per_class - 2 else "train"
            lines.append(f"{c}/{i}.png,{c},{split}," + ",".join(TREE[c].get(r, "") for r in RANKS))
    path = root / "zoo.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_prints_the_table_and_writes_pictures(tmp_path: Path, capsys) -> None:
    manifest = make_manifest(tmp_path / "data")
    store = tmp_path / "results.sqlite"
    assert main(["-q", "run", "--task", str(manifest), "--model", "pixels", "--store", str(store),
                 "--workers", "0", "--no-report"]) == 0
    capsys.readouterr()

    # the store's task name alone: no data needed
    code = main(["-q", "taxonomy", "--store", str(store), "--task", "zoo", "--out", str(tmp_path / "rep")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "pixels/logreg" in out and "error distance" in out and "tree corr." not in out
    assert (tmp_path / "rep" / "taxonomy-zoo.csv").is_file()

    # pictures from the run's cached embeddings, then from a fresh embedding (empty cache)
    for cache in ([], ["--cache-dir", str(tmp_path / "empty-cache")]):
        plots = tmp_path / ("plots2" if cache else "plots")
        code = main(["taxonomy", "--store", str(store), "--task", str(manifest), "--plot-dir", str(plots),
                     "--rank", "family", "--rank", "genus", "--workers", "0", "--out", str(tmp_path / "rep"),
                     *cache])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert ("embeddings of zoo by pixels from the cache entry" in err) == (not cache)
        png = plots / "taxonomy-zoo-pixels.png"
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
        assert "tree corr." in out and f"picture: {png}" in out
        rows = list(csv.DictReader((tmp_path / "rep" / "taxonomy-zoo.csv").open()))
        (tree,) = [r for r in rows if r["statistic"] == "tree_correlation"]
        assert -1 <= float(tree["point"]) <= 1 and tree["n"] == "6"
        assert {r["statistic"] for r in rows} >= {f"accuracy_{r}" for r in RANKS}
    assert (tmp_path / "empty-cache" / "embeddings").is_dir()  # the second run embedded again, into that cache


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    code = main(["taxonomy", "--store", str(tmp_path / "none.sqlite"), "--task", "zoo"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "no results store" in err
    with Store(tmp_path / "s.sqlite") as s:
        write_model(s, "plain", PRED["model-a"], taxonomy=None, task="flat")
    code = main(["-q", "taxonomy", "--store", str(tmp_path / "s.sqlite"), "--task", "flat"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "carry no taxonomy" in err
