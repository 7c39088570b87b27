"""NeWT and FishNet: several binary parts on the same images, end to end from a local HTTP server."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from sklearn.metrics import f1_score

from lifebench.cli import main
from lifebench.errors import DataError
from lifebench.metrics import get_metric, resample_indices
from lifebench.report import build_leaderboard
from lifebench.store import Store
from lifebench.tasks import resolve_task
from lifebench.tasks.catalog import data_status
from lifebench.tasks.ecology import fishnet, newt


@pytest.fixture
def served(http_server, monkeypatch):
    url, handler = http_server
    archives = {"newt": newt.make_fixture(), "fishnet": fishnet.make_fixture()}
    for name, data in archives["newt"].items():
        handler.files[f"/newt/{name}"] = data
    for name, data in archives["fishnet"].items():
        handler.files[f"/fishnet/{name}"] = data
    monkeypatch.setattr(newt, "SPEC", newt.SPEC.mirrored(f"{url}/newt"))
    monkeypatch.setattr(fishnet, "ANNOTATIONS_URL", f"{url}/fishnet")
    monkeypatch.setattr(fishnet, "IMAGES_URL", f"{url}/fishnet/{fishnet.IMAGES_ZIP}")
    return url, handler, archives


def test_newt_download_resumes_loads_and_rejects_corruption(served, tmp_path):
    url, handler, archives = served
    images = archives["newt"]["newt2021_images.tar.gz"]
    handler.cut_after["/newt/newt2021_images.tar.gz"] = len(images) // 2
    root = tmp_path / "data" / "newt"
    assert data_status("newt", tmp_path / "data")[1].startswith("no newt2021_labels.csv")
    newt.download(root, show_progress=False)
    assert ("/newt/newt2021_images.tar.gz", f"bytes={len(images) // 2}-") in handler.requests
    n = len(handler.requests)
    newt.download(root, show_progress=False)  # verified and unpacked: nothing fetched again
    assert len(handler.requests) == n
    task = resolve_task("newt", data_root=tmp_path / "data")
    assert len(task.parts) == 3 and len(task.examples) == 3 * 2 * (4 + 2)
    part = task.parts[0]
    assert len(part.train_idx) == 8 and len(part.test_idx) == 4 and part.classes == ("0", "1")
    assert set(part.labels[part.train_idx]) == {"0", "1"}
    # the parts cover disjoint images here and every image exactly once
    covered = np.concatenate([np.concatenate([p.train_idx, p.test_idx]) for p in task.parts])
    assert sorted(covered.tolist()) == list(range(len(task.examples)))

    # a stored archive that changed since its SHA-256 was recorded is refused, and removed
    stored = root / ".downloads" / "newt2021_labels.csv.tar.gz"
    data = bytearray(stored.read_bytes())
    data[60] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum mismatch for newt2021_labels.csv.tar.gz"):
        newt.download(root, show_progress=False)
    assert not stored.exists()
    # a damaged first download (nothing recorded yet) is not an archive: refused, nothing unpacked
    handler.files["/newt/newt2021_labels.csv.tar.gz"] = bytes(data)
    with pytest.raises(DataError, match="neither a zip nor a tar archive"):
        newt.download(tmp_path / "again", show_progress=False)
    assert not (tmp_path / "again" / "newt2021_labels.csv").exists()


def test_newt_bad_layouts(tmp_path, served):
    root = tmp_path / "newt"
    newt.download(root, show_progress=False)
    text = (root / "newt2021_labels.csv").read_text()
    (root / "newt2021_labels.csv").write_text(text.replace("task,label", "task,lbl"))
    with pytest.raises(DataError, match=r"newt2021_labels.csv has no label column \(columns: id, task_cluster"):
        newt.load(root)
    (root / "newt2021_labels.csv").write_text(text)
    victim = next((root / "newt2021_images").iterdir())
    victim.unlink()
    with pytest.raises(DataError, match=rf"1 images listed in newt2021_labels.csv are missing, e.g. .*{victim.name}"):
        newt.load(root)


def test_fishnet_download_and_load(served, tmp_path):
    url, handler, archives = served
    handler.cut_after[f"/fishnet/{fishnet.IMAGES_ZIP}"] = 1000
    root = tmp_path / "fishnet"
    fishnet.download(root, show_progress=False)
    assert (f"/fishnet/{fishnet.IMAGES_ZIP}", "bytes=1000-") in handler.requests
    task = fishnet.load(root)
    assert [p.name for p in task.parts] == list(fishnet.TRAITS)
    assert len(task.train_idx) == 15 and len(task.test_idx) == 8  # the row with a missing trait is dropped
    rows = list(csv.DictReader(io.StringIO(archives["fishnet"]["test.csv"].decode())))
    feeding = next(p for p in task.parts if p.name == "FeedingPath")
    expected = ["1" if r["FeedingPath"] == "pelagic" else "0" for r in rows]
    assert feeding.labels[task.test_idx].tolist() == expected
    assert task.examples.ids[task.test_idx[0]] == f"Image_Library/{rows[0]['Folder']}/{rows[0]['image']}"
    # the second row names its image by a FishBase URL, as 8,495 rows of the real test.csv do: the file name counts
    assert rows[1]["image"].startswith("https://www.fishbase.se/images/species/")
    assert task.examples.ids[task.test_idx[1]] == f"Image_Library/{rows[1]['Folder']}/{rows[1]['image'].split('/')[-1]}"

    bad = bytearray(archives["fishnet"][fishnet.IMAGES_ZIP])
    bad[-30] ^= 0xFF
    handler.files[f"/fishnet/{fishnet.IMAGES_ZIP}"] = bytes(bad)
    with pytest.raises(DataError, match=f"checksum mismatch for {fishnet.IMAGES_ZIP}"):
        # the first download recorded the SHA-256; a changed file under the same name is refused
        (root / ".downloads" / fishnet.IMAGES_ZIP).unlink()
        fishnet.download(root, show_progress=False)


def test_trait_macro_f1_is_the_mean_of_sklearn_f1_and_resamples_images_together():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (9, 60))
    p = np.where(rng.random((9, 60)) < 0.7, y, 1 - y)
    metric = get_metric("trait_macro_f1")
    expected = np.mean([f1_score(y[k], p[k], average="macro", labels=np.unique(y[k])) for k in range(9)])
    assert metric.fn(y, p) == pytest.approx(expected, abs=1e-12)
    idx = resample_indices(60, 50, seed=1)
    res = metric.resampled_fn(y, p, idx)
    b = 7
    by_hand = np.mean([f1_score(y[k, idx[b]], p[k, idx[b]], average="macro", labels=np.unique(y[k, idx[b]]))
                       for k in range(9)])
    assert res[b] == pytest.approx(by_hand, abs=1e-12)


def test_newt_and_fishnet_end_to_end(served, tmp_path, capsys):
    data = tmp_path / "data"
    newt.download(data / "newt", show_progress=False)
    fishnet.download(data / "fishnet", show_progress=False)
    store = tmp_path / "s.sqlite"
    args = ["-q", "run", "--data-root", str(data), "--model", "pixels", "--store", str(store), "--workers", "0"]
    assert main([*args, "--task", "newt", "--task", "fishnet"]) == 0
    out = capsys.readouterr().out
    assert "2 experiments run" in out
    assert "newt (accuracy, n=12)" in out and "fishnet (trait_macro_f1, n=8)" in out
    with Store(store) as s:
        exps = {e.task: e for e in s.experiments()}
        nw, fn = s.predictions(exps["newt"].id), s.predictions(exps["fishnet"].id)
    assert exps["newt"].metric == "accuracy" and sorted(exps["newt"].fit_info["parts"]) == [
        p.name for p in newt.load(data / "newt").parts]
    assert len(nw) == 12 and all("/" in i for i in nw.ids)
    assert len(fn) == 9 * 8 and sorted(set(fn.part)) == sorted(fishnet.TRAITS) and len(set(fn.group)) == 8
    # the leaderboard's score is the mean of per-trait macro-F1 computed by scikit-learn
    board = build_leaderboard(store, tasks=["fishnet"])
    cell = board.cells[0]
    expected = np.mean([f1_score(fn.y_true[fn.part == t], fn.y_pred[fn.part == t], average="macro",
                                 labels=np.unique(fn.y_true[fn.part == t])) for t in fishnet.TRAITS])
    assert cell.point == pytest.approx(expected, abs=1e-12) and cell.n_test == 8
    assert cell.low <= cell.point <= cell.high
    acc = build_leaderboard(store, tasks=["newt"]).cells[0]
    assert acc.point == pytest.approx(float(np.mean(nw.y_true == nw.y_pred)))
    assert acc.point > 0.75  # the fixture's label-1 images are brighter in one channel


def test_newt_and_fishnet_run_with_n_train(served, tmp_path, capsys):
    """--n-train on tasks with parts: BioBench's meanings (NeWT: half of each label per task; FishNet: N images
    shared by every trait). It used to be refused."""
    data = tmp_path / "data"
    newt.download(data / "newt", show_progress=False)
    fishnet.download(data / "fishnet", show_progress=False)
    store = tmp_path / "s.sqlite"
    args = ["-q", "run", "--data-root", str(data), "--model", "pixels", "--store", str(store), "--workers", "0"]
    assert main([*args, "--task", "newt", "--task", "fishnet", "--n-train", "4", "--seed", "1"]) == 0
    assert "newt@n4 (accuracy, n=12)" in capsys.readouterr().out
    with Store(store) as s:
        exps = {e.task: e for e in s.experiments()}
    assert sorted(exps) == ["fishnet@n4", "newt@n4"]
    assert all(info["n_train"] == 4 for info in exps["newt@n4"].fit_info["parts"].values())
    assert all(info["n_train"] == 4 for info in exps["fishnet@n4"].fit_info["parts"].values())
    task = newt.load(data / "newt").with_n_train(4, seed=1)
    for part in task.parts:  # 2 images of each label (the fixture has 4 of each per task)
        assert np.unique(part.labels[part.train_idx], return_counts=True)[1].tolist() == [2, 2]


def test_fishnet_n_train_is_one_uniform_draw_shared_by_every_trait(served, tmp_path):
    fishnet.download(tmp_path / "fishnet", show_progress=False)
    task = fishnet.load(tmp_path / "fishnet")
    eight, twelve = task.with_n_train(8, seed=1), task.with_n_train(12, seed=1)
    assert eight.name == "fishnet@n8" and len(eight.train_idx) == 8
    assert all(p.train_idx.tolist() == eight.train_idx.tolist() for p in eight.parts)  # one draw, as BioBench's
    assert set(eight.train_idx) < set(twelve.train_idx) <= set(task.train_idx)  # nested, from train only
    assert all(p.test_idx.tolist() == task.test_idx.tolist() for p in eight.parts)
    assert eight.train_idx.tolist() != task.with_n_train(8, seed=2).train_idx.tolist()
