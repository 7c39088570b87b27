"""The ImageNet-rank analysis: statistics against scipy, imports, exports, the store path and bad input."""

from __future__ import annotations

import csv
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from lifebench.analysis import agreement, analyze, from_store, load_results
from lifebench.analysis.analyze import default_thresholds
from lifebench.analysis.stats import average_ranks, pair_counts, statistics
from lifebench.cli import main
from lifebench.errors import ConfigError, DataError
from lifebench.metrics import resample_indices, task_seed
from lifebench.report import build_leaderboard
from lifebench.store import Experiment, Predictions, Store

SAMPLE = Path(__file__).parent / "data" / "biobench_results_sample.json"
SUITE = ["beluga", "fishnet", "herbarium19", "iwildcam", "plantnet", "ecdysis"]


def brute_pairs(x, y) -> tuple[int, int]:
    conc = disc = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
        conc += s > 0
        disc += s < 0
    return int(conc), int(disc)


# ---------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n", [3, 4, 7, 25, 90])
@pytest.mark.parametrize("with_ties", [False, True])
def test_statistics_match_scipy(n: int, with_ties: bool) -> None:
    rng = np.random.default_rng(n + 100 * with_ties)
    for _ in range(5):
        x = rng.random(n)
        y = 0.5 * x + rng.normal(0, 0.3, n)
        if with_ties:  # scores rounded as a leaderboard prints them: many ties in both
            x, y = np.round(x, 1), np.round(y, 1)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        s = statistics(x, y)
        assert s["r2"][0] == pytest.approx(st.pearsonr(x, y)[0] ** 2, abs=1e-12)
        assert s["spearman"][0] == pytest.approx(st.spearmanr(x, y)[0], abs=1e-12)
        assert s["kendall_tau_b"][0] == pytest.approx(st.kendalltau(x, y, variant="b")[0], abs=1e-12)
        conc, disc = brute_pairs(x, y)
        assert (s["concordant"][0], s["discordant"][0]) == (conc, disc)
        assert s["misranked"][0] == pytest.approx(disc / (conc + disc))
        np.testing.assert_allclose(average_ranks(x), st.rankdata(x))


def test_known_concordance() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    same = statistics(x, x)
    assert (same["kendall_tau_b"][0], same["misranked"][0], same["spearman"][0]) == (1.0, 0.0, 1.0)
    rev = statistics(x, -x)
    assert (rev["kendall_tau_b"][0], rev["misranked"][0], rev["r2"][0]) == (-1.0, 1.0, pytest.approx(1.0))
    # one adjacent swap: 5 of the 6 pairs agree
    swap = statistics(x, np.array([2.0, 1.0, 3.0, 4.0]))
    assert (swap["concordant"][0], swap["discordant"][0]) == (5, 1)
    assert swap["misranked"][0] == pytest.approx(1 / 6)
    assert swap["kendall_tau_b"][0] == pytest.approx(4 / 6)
    # a pair tied in x is neither concordant nor discordant; tau-b's denominator drops it on the x side
    tied = statistics(np.array([1.0, 1.0, 2.0, 3.0]), x)
    assert (tied["concordant"][0], tied["discordant"][0]) == (5, 0)
    assert tied["misranked"][0] == 0.0
    assert tied["kendall_tau_b"][0] == pytest.approx(5 / np.sqrt(5 * 6))
    assert pair_counts(np.array([1.0, 1.0, 2.0, 3.0]), x) == (5, 0, 1, 0)
    # undefined when one side has no spread
    flat = statistics(np.ones(4), x)
    assert np.isnan(flat["kendall_tau_b"][0]) and np.isnan(flat["spearman"][0]) and np.isnan(flat["misranked"][0])


def test_agreement_bootstrap_matches_a_scipy_bootstrap() -> None:
    rng = np.random.default_rng(5)
    x = rng.random(15)
    y = x + rng.normal(0, 0.2, 15)
    a = agreement(x, y, n_boot=300, seed=11, confidence=0.9)
    pick = np.random.default_rng(11).integers(0, 15, size=(300, 15))
    taus = np.array([st.kendalltau(x[p], y[p], variant="b")[0] for p in pick])
    rhos = np.array([st.spearmanr(x[p], y[p])[0] for p in pick])
    ok = np.isfinite(taus)
    assert a.kendall_tau_b.n_valid == ok.sum()
    assert (a.kendall_tau_b.low, a.kendall_tau_b.high) == pytest.approx(tuple(np.quantile(taus[ok], [0.05, 0.95])))
    assert (a.spearman.low, a.spearman.high) == pytest.approx(tuple(np.quantile(rhos[ok], [0.05, 0.95])))
    assert a.kendall_tau_b.point == pytest.approx(st.kendalltau(x, y, variant="b")[0])
    assert a.r2.low <= a.r2.point <= a.r2.high
    # resamples equal to the point scores give the models-only bootstrap exactly
    same = agreement(x, y, n_boot=300, seed=11, confidence=0.9, x_resamples=np.tile(x, (300, 1)),
                     y_resamples=np.tile(y, (300, 1)))
    assert same == a


def test_default_thresholds() -> None:
    assert default_thresholds(np.array([0.58, 0.9])) == [0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
    assert default_thresholds(np.array([0.02, 0.07])) == [0.0, 0.05]


# ---------------------------------------------------------------------------------------------- imports


def test_biobench_import() -> None:
    rs = load_results([SAMPLE])
    assert len(rs.models) == 22 and len(rs.scores) == 169 and not rs.per_example
    assert rs.suite == SUITE
    assert list(rs.tasks) == [*SUITE, "imagenet1k", "newt"] and rs.tasks["plantnet"] == "Pl@ntNet"
    r18 = rs.models["resnet18.a1_in1k"]
    assert (r18.display, r18.family, r18.params, r18.resolution, r18.release) == (
        "ResNet-18", "cnn", 11.7e6, 224, "2015-12-10")
    assert rs.models["aimv2_large_patch14_224"].release is None
    doc = json.loads(SAMPLE.read_text())
    row = doc["results"][0]
    score = next(s for s in rs.scores if (s.task, s.model) == (row["task"], row["model"]))
    assert (score.point, score.low, score.high) == (row["mean"], row["ci_low"], row["ci_high"])
    ecdysis = {s.model: s for s in rs.scores if s.task == "ecdysis"}
    assert ecdysis["hf-hub:imageomics/bioclip-2"].is_best and not ecdysis["hf-hub:imageomics/bioclip-2"].tied
    assert ecdysis["ViT-SO400M-16-SigLIP2-384/webli"].tied
    assert ecdysis["resnet18.a1_in1k"].tied is False


def test_analysis_of_the_sample_matches_scipy() -> None:
    rs = load_results([SAMPLE])
    a = analyze(rs, n_boot=200)
    assert a.suite == SUITE and len(a.suite_models) == 20
    assert "vit_pe_spatial_small_patch16_512" not in a.suite_models
    assert "aimv2_large_patch14_224" not in a.suite_models
    text = "\n".join(a.excluded)
    assert "without a score on imagenet1k" in text and "PE Spatial S/16" in text
    assert "AIMv2 ViT-L/14: no score on ecdysis" in text
    pts = {(s.task, s.model): s.point for s in rs.scores}
    x = np.array([pts[("imagenet1k", m)] for m in a.suite_models])
    y = np.array([np.mean([pts[(t, m)] for t in SUITE]) for m in a.suite_models])
    assert a.vs_suite.r2.point == pytest.approx(st.pearsonr(x, y)[0] ** 2)
    assert a.vs_suite.spearman.point == pytest.approx(st.spearmanr(x, y)[0])
    assert a.vs_suite.kendall_tau_b.point == pytest.approx(st.kendalltau(x, y, variant="b")[0])
    assert a.vs_suite.r2.low < a.vs_suite.r2.point < a.vs_suite.r2.high
    # per task: every model with both scores (the AIMv2 model counts where it has the task)
    assert a.vs_task["beluga"].n_models == 21 and a.vs_task["ecdysis"].n_models == 20
    # threshold sweep: T = 0.75 keeps the 12 suite models at or above 0.75
    by_t = {r.threshold: r for r in a.sweep}
    keep = x >= 0.75
    assert by_t[0.75].vs_suite.n_models == keep.sum() == 12
    assert by_t[0.75].vs_suite.misranked.point == pytest.approx(
        brute_pairs(x[keep], y[keep])[1] / sum(brute_pairs(x[keep], y[keep])))
    assert all(r.vs_suite.n_models >= 10 for r in a.sweep) and 0.8 not in by_t  # 8 models left at 0.8
    assert [r.vs_suite.n_models for r in a.sweep] == sorted((r.vs_suite.n_models for r in a.sweep), reverse=True)
    # leave one task out
    table = np.array([[pts[(t, m)] for t in SUITE] for m in a.suite_models])
    for j, row in enumerate(a.loto):
        assert row.task == SUITE[j]
        without = np.delete(table, j, axis=1).mean(axis=1)
        assert row.kendall_tau_b == pytest.approx(st.kendalltau(y, without, variant="b")[0])
    # leaderboard: no intervals for imported point estimates; ranks from the suite mean
    assert a.leaderboard[0].model == "hf-hub:imageomics/bioclip-2" and a.leaderboard[0].rank == 1
    assert all(r.low is None and r.rank_low is None for r in a.leaderboard)
    assert [r.mean for r in a.leaderboard] == sorted(y, reverse=True)
    bests = {b["task"]: b for b in a.bests()}
    assert bests["ecdysis"]["ties"] == ["ViT-SO400M-16-SigLIP2-384/webli"]
    assert "bootstrap over models only" in a.interval and "point estimates" in a.to_text()


def test_export_round_trip(tmp_path: Path) -> None:
    rs = load_results([SAMPLE])
    written = rs.write(tmp_path)
    assert {p.name for p in written.values()} == {"results.parquet", "results.csv", "results.json"}
    with (tmp_path / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 169 and rows[0]["kind"].startswith("point estimates")
    base = analyze(rs, n_boot=100)
    for name in ("results.json", "results.csv", "results.parquet"):
        back = load_results([tmp_path / name])
        assert {(s.task, s.model): s.point for s in back.scores} == {(s.task, s.model): s.point for s in rs.scores}
        assert back.suite == SUITE
        assert back.models["resnet18.a1_in1k"].params == 11.7e6
        assert back.models["resnet18.a1_in1k"].release == "2015-12-10"
        again = analyze(back, n_boot=100)
        assert again.vs_suite == base.vs_suite
        assert {b["task"]: b["ties"] for b in again.bests()} == {b["task"]: b["ties"] for b in base.bests()}


def clip_run(dataset: str, model: str, pretrained: str, acc1: float, task="zeroshot_classification", language="en"):
    metrics = {"acc1": acc1, "acc5": min(1.0, acc1 + 0.2), "mean_per_class_recall": acc1 - 0.01}
    if task == "zeroshot_retrieval":
        metrics = {"image_retrieval_recall@5": 0.5, "text_retrieval_recall@5": 0.6}
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics,
            "language": language}


def test_clip_benchmark_import(tmp_path: Path) -> None:
    runs = tmp_path / "clip"
    runs.mkdir()
    acc = {"ViT-B-32": 0.6, "ViT-B-16": 0.68, "ViT-L-14": 0.75, "RN50": 0.55}
    for k, (model, a) in enumerate(acc.items()):
        for ds, shift in (("imagenet1k", 0.0), ("wds/vtab/eurosat", -0.1 + 0.02 * k), ("cars", 0.05 - 0.01 * k)):
            doc = clip_run(ds, model, "openai", a + shift)
            (runs / f"{model}_{ds.replace('/', '_')}.json").write_text(json.dumps(doc))
    (runs / "retrieval.json").write_text(json.dumps(clip_run("flickr30k", "ViT-B-32", "openai", 0, "zeroshot_retrieval")))
    (runs / "jp.json").write_text(json.dumps(clip_run("imagenet1k", "ViT-B-32", "openai", 0.4, language="jp")))
    rs = load_results([runs])
    assert set(rs.tasks) == {"imagenet1k", "vtab/eurosat", "cars", "imagenet1k (jp)"}
    assert set(rs.models) == {f"{m}/openai" for m in acc}
    pts = {(s.task, s.model): s.point for s in rs.scores}
    assert pts[("vtab/eurosat", "ViT-L-14/openai")] == pytest.approx(0.75 - 0.1 + 0.04)
    assert any("retrieval.json" in n and "not classification" in n for n in rs.notes)
    a = analyze(rs, suite=["vtab/eurosat", "cars"], min_models=3, n_boot=100)
    assert a.vs_suite.n_models == 4 and a.suite == ["vtab/eurosat", "cars"]
    assert any("retrieval.json" in e for e in a.excluded)
    assert all(s.tied is None for s in rs.scores) and a.bests()[0]["ties"] is None
    per_class = load_results([runs], clip_metric="mean_per_class_recall")
    assert per_class.point("imagenet1k", "RN50/openai") == pytest.approx(0.54)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input(tmp_path: Path, capsys) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": [1, 2]}))
    with pytest.raises(DataError, match="no known results schema.*rows"):
        load_results([other])
    assert main(["-q", "analyze", "--results", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lifebench: error:") and "\n" not in err

    doc = json.loads(SAMPLE.read_text())
    doc["results"][3]["model"] = "no-such-model"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"results\[3\] names model 'no-such-model'"):
        load_results([broken])
    with pytest.raises(ConfigError, match="does not exist"):
        load_results([tmp_path / "missing.json"])
    with pytest.raises(DataError, match="two scores"):
        load_results([SAMPLE, SAMPLE])

    rs = load_results([SAMPLE])
    with pytest.raises(DataError, match="reference task 'inat21'.*--reference"):
        analyze(rs, reference="inat21")
    # a task with fewer than 3 models is left out of the suite and listed
    few = load_results([SAMPLE])
    few.scores = [s for s in few.scores if s.task != "beluga" or s.model in ("resnet18.a1_in1k", "dinov2_vitb14")]
    a = analyze(few, n_boot=50)
    assert "beluga" not in a.suite and any(e.startswith("task beluga: 2 model(s)") for e in a.excluded)
    # too few models with every suite task
    tiny = load_results([SAMPLE])
    keep = {"resnet18.a1_in1k", "dinov2_vitb14"}
    tiny.scores = [s for s in tiny.scores if s.model in keep or s.task != "imagenet1k"]
    with pytest.raises(DataError, match="no suite task has 3 models with a score on imagenet1k"):
        analyze(tiny)
    # every model misses a different suite task: each task has enough models, the suite mean has none
    staggered = load_results([SAMPLE])
    models = sorted({s.model for s in staggered.scores if s.task == "imagenet1k"})[:6]
    staggered.scores = [s for s in staggered.scores if s.model in models
                        and not (s.task in SUITE and SUITE.index(s.task) == models.index(s.model))]
    with pytest.raises(DataError, match="only 0 model.*needs 3; pass --task"):
        analyze(staggered)
    with pytest.raises(ConfigError, match="suite task 'nope'"):
        analyze(rs, suite=["nope"])


# ---------------------------------------------------------------------------------------------- the store

CLASSES = np.array(["ant", "bee", "cod", "dace", "eel"])
ACC = {"imagenet1k": [0.5, 0.6, 0.7, 0.8, 0.9], "beluga": [0.4, 0.7, 0.5, 0.8, 0.8], "plantnet": [0.3, 0.4, 0.6, 0.5, 0.9]}


def fill_store(path: Path) -> None:
    rng = np.random.default_rng(3)
    with Store(path) as s:
        for task, accs in ACC.items():
            n = 240
            ids = np.array([f"{task}-{i:04d}" for i in range(n)])
            y = CLASSES[rng.integers(0, 5, n)]
            for k, acc in enumerate(accs):
                ok = rng.random(n) < acc
                pred = np.where(ok, y, CLASSES[(np.searchsorted(CLASSES, y) + 1) % 5])
                exp = Experiment(config_hash=f"{task}/m{k}", task=task, backbone=f"m{k}", protocol="logreg",
                                 metric="accuracy", classes=tuple(CLASSES),
                                 provenance={"lifebench": "0.1.0", "git_commit": "abc123", "hostname": "box"})
                s.write(exp, Predictions(ids, y, pred))


def test_store_analysis_uses_the_paired_example_bootstrap(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    fill_store(path)
    board = build_leaderboard(path, n_resamples=1000, seed=0)
    for c in board.cells:  # the kept resamples are the ones behind each cell's interval
        r = board.resamples[(c.task, c.metric, c.backbone, c.protocol)]
        assert r.shape == (1000,)
        # BCa limits are quantiles of the kept resamples (at bias-corrected levels), stretched by at most a few %
        lo, hi = np.quantile(r, [0.001, 0.999])
        assert lo - 0.01 <= c.low <= c.high <= hi + 0.01

    rs = from_store(path, n_resamples=1000)
    assert rs.per_example and rs.suite == ["beluga", "plantnet"]
    assert len(rs.provenance) == 15 and rs.provenance[0]["git_commit"] == "abc123"
    a = analyze(rs, min_models=3)
    assert a.n_boot == 1000 and "test examples" in a.interval
    # the suite mean's interval: each resample averages the tasks' paired resamples (own index matrix per task)
    with Store(path) as s:
        per_task = {}
        for task in ("beluga", "plantnet"):
            for e in s.experiments(task=task):
                p = s.predictions(e.id)
                idx = resample_indices(240, 1000, task_seed(task, 0), strata=p.y_true)  # within true classes
                per_task[(task, e.backbone)] = (p.y_true == p.y_pred)[idx].mean(axis=1)
    for row in a.leaderboard:
        draws = (per_task[("beluga", row.model)] + per_task[("plantnet", row.model)]) / 2
        low, high = np.quantile(draws, [0.025, 0.975])
        assert (row.low, row.high) == pytest.approx((low, high))
        assert row.rank_low <= row.rank <= row.rank_high
    assert a.leaderboard[0].model == "m4" and a.leaderboard[0].rank_high <= 2
    assert a.vs_suite.kendall_tau_b.low < a.vs_suite.kendall_tau_b.high
    assert a.task_ranks[("imagenet1k", "m4")][0] == 1
    bests = {b["task"]: b for b in a.bests()}
    assert bests["beluga"]["ties"] is not None  # a paired tie test ran


def test_cli_analyze(tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["-q", "analyze", "--results", str(SAMPLE), "--out", str(out), "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "Does imagenet1k rank predict the suite?" in text and "Threshold sweep" in text
    for name in ("index.html", "results.parquet", "results.csv", "results.json", "analysis.txt", "analysis.json"):
        assert (out / name).stat().st_size > 0
    doc = json.loads((out / "analysis.json").read_text())
    assert doc["reference"] == "imagenet1k" and doc["vs_suite"]["n_models"] == 20
    assert {r["threshold"] for r in doc["threshold_sweep"]} == {0.55, 0.6, 0.65, 0.7, 0.75}

    store = tmp_path / "s.sqlite"
    fill_store(store)
    assert main(["-q", "analyze", "--store", str(store), "--min-models", "3", "--no-plots"]) == 0
    assert (tmp_path / "analysis" / "index.html").is_file()
    assert main(["-q", "analyze", "--store", str(tmp_path / "none.sqlite")]) == 2


def test_an_interval_that_excludes_its_point_is_reported_as_it_is() -> None:
    """Test-set noise pulls resampled R² below the full-test-set value: with perfect agreement (R² = 1) the
    percentile interval lies below 1, and it is reported so (no widening rule, no flag)."""
    x = np.linspace(0.5, 0.9, 15)
    rng = np.random.default_rng(0)
    noise = lambda: x + rng.normal(0, 0.02, (1000, x.size))  # noqa: E731
    a = agreement(x, x.copy(), x_resamples=noise(), y_resamples=noise())
    assert a.r2.point == pytest.approx(1.0) and a.r2.high < 1.0 and "widened" not in a.r2.as_dict()
    plain = agreement(x, x + rng.normal(0, 0.05, x.size))  # models resampled, no test noise
    assert plain.r2.low <= plain.r2.point <= plain.r2.high


def test_a_non_utf8_export_is_one_error_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_bytes("task,model,point\nnewt,Mod\xe8le,0.5\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"results.csv is not UTF-8 .*; save the export as UTF-8") as err:
        load_results([path])
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- model labels

# Display names shared by several checkpoints, as in BioBench's published results
# (samuelstevens/biobench@6376d97 docs/data/results.json, models[]: ckpt, display, resolution); scores invented.
SHARED_DISPLAY = [
    ("ViT-L-14/openai", "CLIP ViT-L/14", 224),
    ("ViT-L-14-336/openai", "CLIP ViT-L/14", 336),
    ("resnet18.a1_in1k", "ResNet-18", 288),
    ("resnet18d.ra2_in1k", "ResNet-18", 288),
    ("ViT-B-16-SigLIP/webli", "SigLIP ViT-B/16", 224),
    ("ViT-B-16-SigLIP-256/webli", "SigLIP ViT-B/16", 256),
]
EXPECTED_LABELS = {
    "ViT-L-14/openai": "CLIP ViT-L/14 (224 px)", "ViT-L-14-336/openai": "CLIP ViT-L/14 (336 px)",
    "resnet18.a1_in1k": "ResNet-18 (resnet18.a1_in1k)", "resnet18d.ra2_in1k": "ResNet-18 (resnet18d.ra2_in1k)",
    "ViT-B-16-SigLIP/webli": "SigLIP ViT-B/16 (224 px)", "ViT-B-16-SigLIP-256/webli": "SigLIP ViT-B/16 (256 px)",
}


def shared_display_results(path: Path) -> Path:
    tasks = ["beluga", "plantnet", "fishnet"]
    results = []
    for k, (ckpt, _, _) in enumerate(SHARED_DISPLAY):
        for j, task in enumerate(["imagenet1k", *tasks]):
            results.append({"task": task, "model": ckpt, "mean": 0.5 + 0.05 * k - 0.01 * j * (k % 3),
                            "ci_low": None, "ci_high": None})
    doc = {
        "meta": {"schema": 1, "seed": 17, "alpha": 0.05, "n_bootstraps": 500},
        "models": [{"ckpt": c, "display": d, "family": d.split()[0], "resolution": r, "params": None,
                    "release_ms": None} for c, d, r in SHARED_DISPLAY],
        "benchmark_tasks": [{"name": t, "display": t} for t in tasks],
        "prior_work_tasks": [{"name": "imagenet1k", "display": "ImageNet-1K"}],
        "results": results,
        "bests": [{"task": t, "best": "ViT-B-16-SigLIP-256/webli", "ties": [c for c, _, _ in SHARED_DISPLAY]}
                  for t in tasks],
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def test_unique_labels_tell_shared_display_names_apart() -> None:
    from lifebench.analysis.results import Model, unique_labels

    models = [Model(c, d, resolution=r) for c, d, r in SHARED_DISPLAY]
    assert unique_labels(models) == EXPECTED_LABELS
    # resolution where it separates, resolution and checkpoint where it does not; a unique name stays as it is
    mixed = [Model("a", "X", resolution=224), Model("b", "X", resolution=288), Model("c", "X", resolution=288),
             Model("d", "X"), Model("e", "Y", resolution=224), Model("f")]
    assert unique_labels(mixed) == {"a": "X (224 px)", "b": "X (288 px, b)", "c": "X (288 px, c)", "d": "X (d)",
                                    "e": "Y", "f": "f"}
    # a made-up label that equals another model's own display name falls back to the checkpoint
    clash = [Model("p", "Z", resolution=224), Model("q", "Z", resolution=336), Model("r", "Z (224 px)")]
    labels = unique_labels(clash)
    assert labels == {"p": "Z (p)", "q": "Z (336 px)", "r": "Z (224 px)"}
    assert len(set(labels.values())) == len(labels)


def test_analysis_shows_unique_labels_everywhere(tmp_path: Path) -> None:
    """Text, HTML, the CSV/JSON/Parquet exports, analysis.json and the plots all name the six checkpoints apart."""
    import matplotlib
    import pyarrow.parquet as pq

    from lifebench.analysis.html import write_report

    rs = load_results([shared_display_results(tmp_path / "results.json")])
    assert rs.labels() == EXPECTED_LABELS
    a = analyze(rs, min_models=3, n_boot=50)
    text = a.to_text()
    for label in EXPECTED_LABELS.values():
        assert f"  {label}\n" in text  # the suite-mean table names every model
    assert ("beluga: SigLIP ViT-B/16 (256 px) (6 models; tied: SigLIP ViT-B/16 (224 px), CLIP ViT-L/14 (336 px), "
            "CLIP ViT-L/14 (224 px), ResNet-18 (resnet18.a1_in1k), ResNet-18 (resnet18d.ra2_in1k))") in text
    out = tmp_path / "report"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep SVG text as text, to read it back
        write_report(a, out, plots=True)
    page = (out / "index.html").read_text(encoding="utf-8")
    for label in EXPECTED_LABELS.values():
        assert f">{label}</th>" in page
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"]: r["label"] for r in rows} == EXPECTED_LABELS
    assert {r["model"]: r["display"] for r in rows}["ViT-L-14-336/openai"] == "CLIP ViT-L/14"  # the source's name
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert {r["model"]: r["label"] for r in table} == EXPECTED_LABELS
    doc = json.loads((out / "results.json").read_text())
    assert {r["model"]: r["label"] for r in doc["results"]} == EXPECTED_LABELS
    assert json.loads((out / "analysis.json").read_text())["labels"] == EXPECTED_LABELS
    svgs = {p.name: p.read_text(encoding="utf-8") for p in (out / "plots").glob("*.svg")}
    assert svgs, "no plots written"
    labelled = [name for name, svg in svgs.items() if "ResNet-18 (resnet18d.ra2_in1k)" in svg]
    assert labelled, f"no plot names the models apart: {sorted(svgs)}"
    for svg in svgs.values():
        assert ">ResNet-18<" not in svg and ">CLIP ViT-L/14<" not in svg
    # re-imported, the export keeps the source's display names and labels them the same way
    assert load_results([out / "results.csv"]).labels() == EXPECTED_LABELS


# ---------------------------------------------------------------------------------------------- what was resampled


def test_the_header_says_what_was_resampled(tmp_path: Path) -> None:
    a = analyze(load_results([SAMPLE]), n_boot=50)
    header = a.to_text().splitlines()[1]
    assert header.startswith("Resampled: imported BioBench results (per-task intervals and ties as published: "
                             "500 bootstrap resamples of each task's test images, Holm at alpha 0.05;")
    assert "intervals here resample the models, not the test images" in header
    assert "models are not paired" in header
    assert json.loads(json.dumps(a.to_dict()))["resampled"] == a.results.resampled
    from lifebench.analysis.html import render_html

    assert "Resampled: imported BioBench results" in render_html(a)

    runs = tmp_path / "clip"
    runs.mkdir()
    for k, model in enumerate(["RN50", "ViT-B-32", "ViT-B-16"]):
        for ds in ("imagenet1k", "cars"):
            (runs / f"{model}_{ds}.json").write_text(json.dumps(clip_run(ds, model, "openai", 0.5 + 0.1 * k)))
    clip = load_results([runs])
    assert clip.resampled.startswith("imported CLIP_benchmark results (point scores only: no intervals or ties)")
    load_results([SAMPLE]).write(tmp_path / "export")
    export = load_results([tmp_path / "export" / "results.csv"])
    assert export.resampled.startswith("imported a lifebench export (per-task intervals and ties from the analysis")

    store = tmp_path / "s.sqlite"
    fill_store(store)
    own = analyze(from_store(store, n_resamples=100), min_models=3)
    assert own.to_text().splitlines()[1].startswith("Resampled: lifebench store, per-example predictions: intervals "
                                                    "resample each task's test images (the same resamples for every "
                                                    "model, so models are paired)")


# ---------------------------------------------------------------------------------------------- plots for a paper


def _svgs(a, out: Path) -> tuple[dict, dict[str, str]]:
    import matplotlib

    from lifebench.analysis.plots import write_plots

    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep SVG text as text, to read it back
        made = write_plots(a, out)
    return made, {name: Path(m["svg"]).read_text(encoding="utf-8") for name, m in made.items()}


def _axes_chunks(svg: str) -> list[str]:
    """The text in each axes of the figure: matplotlib writes one ``<g id="axes_N">`` per axes under the figure's
    group, with a secondary axis (the models left) nested inside its axes."""
    import xml.etree.ElementTree as ET

    ns = "{http://www.w3.org/2000/svg}"
    figure = next(g for g in ET.fromstring(svg).iter(f"{ns}g") if g.get("id", "").startswith("figure"))
    return [" ".join(t.text or "" for t in g.iter(f"{ns}text"))
            for g in figure.findall(f"{ns}g") if g.get("id", "").startswith("axes_")]


def test_plots_have_plain_log_ticks_metric_axes_one_statistic_per_axis_and_their_settings(tmp_path: Path) -> None:
    made, svgs = _svgs(analyze(load_results([SAMPLE]), n_boot=50), tmp_path / "sample")
    assert {"reference_vs_suite", "threshold_sweep", "task_scores", "params"} <= set(svgs)
    for name, svg in svgs.items():
        assert "mathdefault" not in svg and "$" not in svg, name  # no unrendered TeX in the picture
        words = " ".join(re.findall(r">([^<>]*)</text>", svg))  # the footnote is wrapped over lines
        assert "50 resamples, seed 0" in words and "95% percentile" in words, name  # method and settings
        assert "50 resamples" in made[name]["caption"]
    assert ">10⁷<" in svgs["params"] and ">10⁸<" in svgs["params"]

    store = tmp_path / "results.sqlite"
    fill_store(store)
    made, svgs = _svgs(analyze(from_store(store, n_resamples=200), min_models=3), tmp_path / "store")
    assert ">imagenet1k accuracy<" in svgs["reference_vs_suite"]
    assert ">suite mean accuracy (2 tasks)<" in svgs["reference_vs_suite"]
    assert svgs["task_scores"].count(">accuracy<") == 3  # every task's axis names the metric
    stats = ("Spearman ρ", "Kendall τ-b", "mis-ranked pair fraction")
    chunks = _axes_chunks(svgs["threshold_sweep"])
    per_axis = [{s for s in stats if s in chunk} for chunk in chunks]
    assert [len(found) for found in per_axis] == [1] * len(chunks) and len(chunks) == 4, per_axis
    assert {s for found in per_axis for s in found} == set(stats)  # each statistic has an axis of its own
    for chunk, found in zip(chunks, per_axis, strict=True):
        assert f" {found.pop()} " in f" {chunk} "  # ... labelled with its name
    assert "200 resamples" in made["threshold_sweep"]["caption"]


def test_point_labels_never_overlap() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lifebench.analysis.plots import _declutter, _label_points

    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 0.05, 25), rng.normal(0, 0.05, 25)  # 25 points in a clump
    ax.scatter(x, y)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    _label_points(ax, x, y, [f"model number {i}" for i in range(25)])
    _declutter(fig)
    renderer = FigureCanvasAgg(fig).get_renderer()
    shown = [t for t in ax.texts if t.get_visible()]
    assert 4 <= len(shown) < 25  # some are placed, the rest left out
    boxes = [t.get_window_extent(renderer) for t in shown]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert shown[0].get_text() == f"model number {int(np.argmax(y))}"  # the highest point keeps its label
