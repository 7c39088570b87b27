"""Small samples: a 60-image folder is cross-fitted by default, small test sets and zero-width intervals carry a
warning into the text, Markdown, CSV and JSON reports, and ``run`` prints accuracy and the majority baseline.

Before these changes a 60-image folder got a 25% split (15 test images), printed ``1.000 [1.000, 1.000]*`` with
no warning, and ``run`` showed no baseline to compare against.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import COLOURS, write_image
from lifebench.cli import main
from lifebench.report.caveats import FEW_PER_CLASS, SMALL_TEST_SET, sample_warnings
from lifebench.tasks import load_task
from lifebench.tasks.split import CROSS_FIT_BELOW, DEFAULT_FOLDS, default_folds

SIZES = {"ant": 24, "bee": 24, "cod": 12}  # 60 images; cod has 3 test images in a 25% split


def make_small_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in SIZES.items():
        for i in range(n):
            write_image(root / cls / f"{cls}{i:02d}.png", rng, colour=COLOURS[cls])
    return root


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    return make_small_folder(tmp_path_factory.mktemp("small") / "insects")


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- the cross-fitting default


def test_default_folds_threshold():
    assert CROSS_FIT_BELOW == 400 and DEFAULT_FOLDS == 5
    assert default_folds(399) == 5 and default_folds(400) is None and default_folds(60) == 5


def test_small_folder_is_cross_fitted_by_default(small_folder):
    task = load_task(small_folder)
    assert task.kind == "folds" and task.folds is not None
    assert np.bincount(task.folds).tolist() == [12] * 5  # every image predicted once, by a probe fit on 48
    assert len(task.test_idx) == 60
    assert task.split_source == "5-fold stratified cross-fitting, seed 0 (the default below 400 images; " \
        "--test-size for one split)"
    # an explicit test size or number of folds wins
    split = load_task(small_folder, test_size=0.25)
    assert split.folds is None and len(split.test_idx) == 15 and split.split_source == "stratified 25% test, seed 0"
    three = load_task(small_folder, n_folds=3)
    assert np.unique(three.folds).tolist() == [0, 1, 2] and "default" not in three.split_source


def test_given_split_or_groups_are_not_cross_fitted(small_folder, tmp_path):
    rows = sorted(small_folder.rglob("*.png"))
    given = tmp_path / "given.csv"
    given.write_text("path,label,split\n" + "".join(
        f"{p},{p.parent.name},{'test' if i % 4 == 0 else 'train'}\n" for i, p in enumerate(rows)))
    assert load_task(given).folds is None and load_task(given).split_source == "given"
    grouped = tmp_path / "grouped.csv"
    grouped.write_text("path,label,group\n" + "".join(f"{p},{p.parent.name},site{i % 10}\n" for i, p in enumerate(rows)))
    task = load_task(grouped)
    assert task.folds is None and task.split_source.startswith("stratified by group")


# ---------------------------------------------------------------- the warnings


def test_sample_warnings_thresholds():
    assert SMALL_TEST_SET == 100 and FEW_PER_CLASS == 5
    assert sample_warnings(100, np.array([50, 50]), (0.7, 0.9)) == []
    (small,) = sample_warnings(99, None, (0.7, 0.9))
    assert small.startswith("small test set: 99 images (fewer than 100)") and "1.0 points" in small
    (few,) = sample_warnings(200, np.array([4, 5, 0, 191]), (0.7, 0.9))  # a class absent from test is not counted
    assert few.startswith("1 of 3 test classes have fewer than 5 test images (the smallest 4)")
    (zero,) = sample_warnings(300, None, (1.0, 1.0))
    assert zero.startswith("zero-width interval") and "0.010 away" in zero
    assert sample_warnings(300, None, (float("nan"), float("nan"))) == []  # undefined, not zero width


def test_run_on_a_60_image_folder(small_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIFEBENCH_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "results" / "results.sqlite"
    base = ["run", "--task", small_folder, "--model", "pixels", "--workers", "0", "--store", store]
    code, out, err = run_cli(base, capsys)
    assert code == 0, err
    # the one-line summary says the folder is cross-fitted, and why
    assert "task insects: 60 images (ant 24, bee 24, cod 12); 5-fold stratified cross-fitting, seed 0 (the default " \
        "below 400 images; --test-size for one split)" in out
    assert "insects (macro_f1, n=60)" in out
    # the colour-coded classes are easy: every image right, an interval of zero width, and both warnings
    board = json.loads((store.parent / "leaderboard.json").read_text())
    (cell,) = board["cells"]
    assert (cell["point"], cell["low"], cell["high"], cell["n_test"]) == (1.0, 1.0, 1.0, 60)
    assert [w.split(":")[0] for w in cell["warnings"]] == ["small test set", "zero-width interval"]
    assert "warning: insects (macro_f1): small test set: 60 images (fewer than 100)" in out
    assert "warning: insects (macro_f1): zero-width interval" in out
    assert "WARNING insects (macro_f1): small test set: 60 images" in err  # logged by the library too
    md = (store.parent / "leaderboard.md").read_text()
    assert "> Warning: insects (macro_f1): small test set" in md
    with (store.parent / "leaderboard.csv").open() as fh:
        (row,) = csv.DictReader(fh)
    assert row["warnings"].startswith("small test set: 60 images") and "; zero-width interval" in row["warnings"]
    # accuracy and the majority-class baseline under the leaderboard, as the demo prints them
    tail = out[out.index("\naccuracy:"):]
    assert "  pixels               1.000 [1.000, 1.000]" in tail
    assert "  (majority class)     0.400" in tail  # ant: 24 of 60

    # an explicit 25% split: 15 test images, cod with 3 of them
    split_store = tmp_path / "split" / "results.sqlite"
    code, out, err = run_cli([*base[:-1], split_store, "--test-size", "0.25"], capsys)
    assert code == 0, err
    assert "task insects: 60 images (ant 24, bee 24, cod 12); 45 train / 15 test, stratified 25% test, seed 0" in out
    (cell,) = json.loads((split_store.parent / "leaderboard.json").read_text())["cells"]
    assert cell["n_test"] == 15
    assert any(w.startswith("1 of 3 test classes have fewer than 5 test images (the smallest 3)")
               for w in cell["warnings"])
    assert "  (majority class)     0.400" in out  # 6 of the 15 test images are ants
