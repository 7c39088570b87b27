"""iWildCam (WILDS v2.0) end to end on a fixture in the real WILDS layout, served from a local HTTP server."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from lifebench.cli import main
from lifebench.download import CHECKSUMS_FILE
from lifebench.errors import ConfigError, DataError
from lifebench.metrics import get_metric
from lifebench.store import Store
from lifebench.tasks import resolve_task
from lifebench.tasks.catalog import data_status
from lifebench.tasks.ecology import iwildcam

PATH = f"/iwildcam/{iwildcam.BLOB}"


@pytest.fixture(scope="module")
def archive() -> bytes:
    return iwildcam.make_fixture()[iwildcam.ARCHIVE]


@pytest.fixture
def served(http_server, archive, monkeypatch):
    """The archive on the local server; ``URL`` points there (WILDS publishes no checksum: trust on first use)."""
    url, handler = http_server
    handler.files[PATH] = archive
    monkeypatch.setattr(iwildcam, "SPEC", iwildcam.SPEC.mirrored(f"{url}/iwildcam"))
    return handler


def _placed(root: Path, data: bytes) -> Path:
    """``root`` after ``download`` found the archive already in ``root/.downloads`` (no HTTP)."""
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / iwildcam.ARCHIVE).write_bytes(data)
    iwildcam.download(root, base_url="http://127.0.0.1:9/unused", show_progress=False)
    return root


def _metadata(archive: bytes) -> list[dict[str, str]]:
    """The fixture's metadata.csv rows, read straight from the archive (the reference for counts)."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        text = tar.extractfile("metadata.csv").read().decode()
    return list(csv.DictReader(io.StringIO(text)))


def _names(archive: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        text = tar.extractfile("categories.csv").read().decode()
    return {r["y"]: r["name"] for r in csv.DictReader(io.StringIO(text))}


def test_fixture_has_the_wilds_layout_and_columns(archive):
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
    assert {"RELEASE_v2.0.txt", "metadata.csv", "categories.csv"} <= set(names)
    rows = _metadata(archive)
    assert tuple(rows[0]) == iwildcam.METADATA_COLUMNS  # unnamed index column first, as pandas wrote it
    assert {f"train/{r['filename']}" for r in rows} == {n for n in names if n.startswith("train/")}
    assert {r["split"] for r in rows} == set(iwildcam.SPLITS)
    by_split = {s: {r["location_remapped"] for r in rows if r["split"] == s} for s in iwildcam.SPLITS}
    assert not by_split["test"] & by_split["train"] and not by_split["val"] & by_split["train"]  # OOD by location
    assert by_split["id_test"] <= by_split["train"]


def test_download_resumes_records_checksum_and_loads(served, archive, tmp_path):
    cut = len(archive) // 2
    served.cut_after[PATH] = cut
    root = tmp_path / "data" / "iwildcam"
    assert data_status("iwildcam", tmp_path / "data")[1].startswith("no iwildcam_v2.0/metadata.csv")
    iwildcam.download(root, show_progress=False)
    assert (PATH, f"bytes={cut}-") in served.requests
    recorded = json.loads((root / ".downloads" / CHECKSUMS_FILE).read_text())
    assert recorded == {iwildcam.ARCHIVE: hashlib.sha256(archive).hexdigest()}
    assert data_status("iwildcam", tmp_path / "data") == (root, None)

    task = resolve_task("iwildcam", data_root=tmp_path / "data")
    rows = _metadata(archive)
    names = _names(archive)
    for split, idx in (("train", task.train_idx), ("test", task.test_idx)):
        want = sorted((r["filename"], names[r["y"]], r["location_remapped"]) for r in rows if r["split"] == split)
        got = sorted(zip(task.examples.ids[idx].tolist(), task.examples.labels[idx].tolist(),
                         task.examples.groups[idx].tolist(), strict=True))
        assert got == want
    assert (len(task.train_idx), len(task.test_idx)) == (9, 6)  # val, id_val, id_test rows are not read
    assert task.classes == ("dasyprocta punctata", "empty", "tayassu pecari")  # the unused category is absent
    assert task.metric == "macro_f1" and task.protocol == "logreg"
    assert task.split_source == "given (WILDS split 'test', OOD, used as test)"
    assert all(Path(p).is_file() and Path(p).parent == root / "iwildcam_v2.0" / "train"
               for p in task.examples.paths.tolist())
    n = len(served.requests)
    iwildcam.download(root, show_progress=False)  # idempotent: the verified archive is kept, nothing refetched
    assert len(served.requests) == n


def test_corrupted_archive_is_rejected_on_reuse_then_fetched_again(served, archive, tmp_path):
    (source,) = iwildcam.SPEC.sources
    assert source.md5 is None and source.sha256 is None  # WILDS publishes none: the first download's SHA-256 counts
    root = tmp_path / "w"
    iwildcam.download(root, show_progress=False)
    path = root / ".downloads" / iwildcam.ARCHIVE
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum mismatch for archive.tar.gz.*recorded sha256"):
        iwildcam.download(root, show_progress=False)
    assert not path.exists()
    iwildcam.download(root, show_progress=False)
    assert path.read_bytes() == archive


def test_download_from_a_mirror_uses_the_archive_name(http_server, archive, tmp_path):
    url, handler = http_server
    handler.files[f"/mirror/{iwildcam.BLOB}"] = archive
    iwildcam.download(tmp_path / "w", base_url=f"{url}/mirror/", show_progress=False)
    assert [p for p, _ in handler.requests] == [f"/mirror/{iwildcam.BLOB}"]  # the same path on the mirror
    assert (tmp_path / "w" / ".downloads" / iwildcam.ARCHIVE).is_file()  # saved under the name WILDS gives it


def test_load_names_missing_images_files_and_bad_splits(archive, tmp_path):
    root = _placed(tmp_path / "w", archive)
    d = root / "iwildcam_v2.0"
    test_file = next(r["filename"] for r in _metadata(archive) if r["split"] == "test")
    (d / "train" / test_file).unlink()
    with pytest.raises(DataError, match=f"1 image\\(s\\) listed in metadata.csv are missing from .*{test_file}"):
        iwildcam.load(root)
    with pytest.raises(ConfigError, match="unknown test split 'ood'; choose from val, test, id_val, id_test"):
        iwildcam.load(root, test_split="ood")
    (d / "categories.csv").unlink()
    assert iwildcam.missing(root) == f"no iwildcam_v2.0/categories.csv in {root}"
    with pytest.raises(DataError, match="no iwildcam_v2.0/categories.csv in .*lifebench download iwildcam"):
        iwildcam.load(root)


def test_id_test_split_and_a_wilds_folder_given_directly(archive, tmp_path):
    root = _placed(tmp_path / "w", archive)
    task = iwildcam.load(root / "iwildcam_v2.0", test_split="id_test")  # the WILDS data dir itself
    rows = _metadata(archive)
    assert sorted(task.test.ids.tolist()) == sorted(r["filename"] for r in rows if r["split"] == "id_test")
    assert task.split_source == "given (WILDS split 'id_test', ID, used as test)"


def _add_test_only_class(root: Path) -> str:
    """Relabel one test image with a category that no train image has (WILDS' y numbering stays contiguous)."""
    d = root / "iwildcam_v2.0"
    with open(d / "metadata.csv", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    y, cat, split = header.index("y"), header.index("category_id"), header.index("split")
    row = next(r for r in rows[1:] if r[split] == "test")
    row[y], row[cat] = "3", "7"
    with open(d / "metadata.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    text = (d / "categories.csv").read_text().replace("99999,7,", "3,7,")
    (d / "categories.csv").write_text(text)
    return row[header.index("filename")]


def test_test_only_class_is_kept_and_counts_as_a_miss_in_macro_f1(archive, tmp_path, capsys, caplog):
    data_root = tmp_path / "data"
    root = _placed(data_root / "iwildcam", archive)
    relabelled = _add_test_only_class(root)
    with caplog.at_level(logging.WARNING, logger="lifebench.tasks.ecology.iwildcam"):
        task = iwildcam.load(root)
    assert "1 test classes (1 images) never occur in train" in caplog.text
    assert "meleagris ocellata" in task.classes and "meleagris ocellata" not in task.train.labels.tolist()
    assert task.encode(task.test.labels).max() < len(task.classes)

    store = tmp_path / "s.sqlite"
    assert main(["-q", "run", "--task", "iwildcam", "--data-root", str(data_root), "--model", "pixels",
                 "--store", str(store), "--workers", "0"]) == 0
    assert "iwildcam (macro_f1, n=6)" in capsys.readouterr().out
    with Store(store) as s:
        (exp,) = s.experiments(task="iwildcam")
        preds = s.predictions(exp.id)
    assert tuple(exp.classes) == task.classes
    assert preds.y_true[preds.ids == relabelled].tolist() == ["meleagris ocellata"]
    assert "meleagris ocellata" not in preds.y_pred.tolist()  # a closed-set probe cannot predict it
    # WILDS' official macro-F1: sklearn's over the labels present in y_true (the unseen class scores 0 there).
    wilds = f1_score(preds.y_true, preds.y_pred, labels=np.unique(preds.y_true), average="macro", zero_division=0)
    ours = get_metric("macro_f1").fn(task.encode(preds.y_true), task.encode(preds.y_pred))  # what reports use
    assert ours == pytest.approx(wilds, abs=1e-12)
    seen = [c for c in np.unique(preds.y_true) if c != "meleagris ocellata"]
    assert wilds == pytest.approx(f1_score(preds.y_true, preds.y_pred, labels=seen, average="macro",
                                           zero_division=0) * len(seen) / (len(seen) + 1))


def test_pins_the_wilds_url_and_size():
    wilds = pytest.importorskip("wilds.datasets.iwildcam_dataset", reason="the wilds package is optional")
    version = wilds.IWildCamDataset._versions_dict["2.0"]
    source = iwildcam.SPEC.sources[0]
    assert (iwildcam.SPEC.url(source), iwildcam.COMPRESSED_SIZE) == (version["download_url"], version["compressed_size"])


def test_matches_the_wilds_loader_on_the_fixture(archive, tmp_path):
    wilds = pytest.importorskip("wilds.datasets.iwildcam_dataset", reason="the wilds package is optional")
    root = _placed(tmp_path / "w", archive)
    ref = wilds.IWildCamDataset(root_dir=str(root), download=False)
    task = iwildcam.load(root)
    names = _names(archive)
    for split, idx in (("train", task.train_idx), ("test", task.test_idx)):
        sub = ref.get_subset(split).indices
        want = sorted(zip(ref._input_array[sub].tolist(), [names[str(int(y))] for y in ref.y_array[sub]],
                          [str(int(g)) for g in ref.metadata_array[sub, 0]], strict=True))
        got = sorted(zip(task.examples.ids[idx].tolist(), task.examples.labels[idx].tolist(),
                         task.examples.groups[idx].tolist(), strict=True))
        assert got == want
