"""Class-folder benchmarks (Herbarium 2019, iNat21, Pl@ntNet-300K, SYKE plankton): specs that are data, not code.

Each is served from a local HTTP server in its real layout (the spec's own fixture) and checked against what the
benchmark's upstream code reads: torchvision's ImageFolder and INaturalist (what BioBench uses), the published
MD5s, and the folders BioBench's downloads leave beside the splits.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder, INaturalist
from torchvision.datasets.inaturalist import DATASET_MD5, DATASET_URLS

from lifebench import download
from lifebench.cli import main
from lifebench.download import CHECKSUMS_FILE
from lifebench.errors import DataError
from lifebench.images import load_rgb
from lifebench.tasks import load_task, resolve_task
from lifebench.tasks.catalog import data_status, get_info

TRAIN_ZIP, VAL_ZIP = "phytoplankton_labeled.zip", "phytoplankton_Utö_2021_labeled.zip"


def _placed(name: str, root: Path, **fixture) -> Path:
    """``root`` after a download that found the archives already in ``root/.downloads`` (no HTTP: faster tests)."""
    spec = get_info(name)
    files = spec.fixture(spec, **fixture)
    spec = spec.mirrored("http://127.0.0.1:9/unused", files)
    (root / ".downloads").mkdir(parents=True)
    for s in spec.sources:
        (root / ".downloads" / s.name).write_bytes(files[s.path])
    spec.download(root, show_progress=False)
    return root


def _flip_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- plankton


def test_plankton_download_resumes_renames_and_leaves_out_test_only_classes(serve_task, tmp_path):
    spec, files, handler = serve_task("plankton")
    val = spec.sources[1]
    cut = len(files[val.path]) // 2
    handler.cut_after[f"/plankton/{val.path}"] = cut
    root = tmp_path / "data" / "plankton"
    assert data_status("plankton", tmp_path / "data")[1].startswith("no train/ folder")
    assert main(["-q", "download", "plankton", "--dir", str(tmp_path / "data")]) == 0
    assert (f"/plankton/{val.path}", f"bytes={cut}-") in handler.requests
    assert sorted(p.name for p in root.iterdir()) == [".downloads", ".lifebench-download.lock", "train", "val"]  # no staging
    recorded = json.loads((root / ".downloads" / CHECKSUMS_FILE).read_text())
    assert recorded == {s.name: hashlib.sha256(files[s.path]).hexdigest() for s in spec.sources}

    task = resolve_task("plankton", data_root=tmp_path / "data")
    assert task.classes == ("Aphanizomenon_flosaquae", "Chaetoceros_sp_single", "Dolichospermum_Anabaenopsis",
                            "Snowella_Woronichinia") and task.metric == "macro_f1" and not task.open_set
    assert (len(task.train_idx), len(task.test_idx)) == (4 * 3, 3 * 2)  # the 2 unclassifiable images left out
    assert task.split_source == ("given (train/ -> val/); 2 test images of 1 class(es) without training images "
                                 "left out (unclassifiable 2)")
    with Image.open(task.examples.paths[0]) as im:
        assert im.mode == "L"  # single-channel PNGs, as in the real data
    rgb = np.asarray(load_rgb(task.examples.paths[0]))
    assert rgb.shape[2] == 3 and (rgb[..., 0] == rgb[..., 2]).all()
    n = len(handler.requests)
    assert main(["-q", "download", "plankton", "--dir", str(tmp_path / "data")]) == 0  # idempotent
    assert len(handler.requests) == n


def test_plankton_openset_keeps_the_unclassifiable_images_and_scores_them_as_misses(tmp_path, capsys):
    root = _placed("plankton", tmp_path / "data" / "plankton")
    task = resolve_task("plankton-openset", data_root=tmp_path / "data")
    assert task.open_set and task.kind == "open-set" and len(task.test_idx) == 3 * 2 + 2
    assert "unclassifiable" in task.test.labels.tolist() and "unclassifiable" not in task.train.labels.tolist()
    assert main(["-q", "run", "--task", "plankton-openset", "--data-root", str(root.parent), "--model", "pixels",
                 "--store", str(tmp_path / "s.sqlite"), "--workers", "0"]) == 0
    from lifebench.store import Store

    with Store(tmp_path / "s.sqlite") as store:
        (exp,) = store.experiments()
        preds = store.predictions(exp.id)
    unknown = preds.y_true == "unclassifiable"
    assert unknown.sum() == 2 and (preds.y_pred[unknown] != "unclassifiable").all()  # a closed-set probe misses


def test_plankton_label_codes_agree_across_splits_with_different_class_sets(tmp_path):
    root = _placed("plankton", tmp_path / "plankton")
    task = resolve_task("plankton", data_root=tmp_path)
    # Reference: torchvision's ImageFolder, which is what BioBench used, one per split.
    train_ref, val_ref = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
    assert task.classes == tuple(train_ref.classes)
    test_labels = task.test.labels
    assert task.encode(test_labels).tolist() == [train_ref.class_to_idx[c] for c in test_labels.tolist()]
    assert task.encode(task.train.labels).tolist() == [train_ref.class_to_idx[c] for c in task.train.labels]
    # BioBench's per-split map disagrees on this fixture (the defect is real here, so the check above matters).
    assert [val_ref.class_to_idx[c] for c in test_labels.tolist()] != task.encode(test_labels).tolist()


def test_plankton_first_download_is_recorded_and_a_corrupted_zip_is_rejected_on_reuse(serve_task, tmp_path):
    spec, files, _ = serve_task("plankton")
    root = tmp_path / "plankton"
    spec.download(root, show_progress=False)
    archive = root / ".downloads" / TRAIN_ZIP
    _flip_byte(archive)
    with pytest.raises(DataError, match="checksum mismatch for phytoplankton_labeled.zip.*recorded sha256"):
        spec.download(root, show_progress=False)
    assert not archive.exists()
    spec.download(root, show_progress=False)  # the rejected file was removed, so it is fetched again
    assert archive.read_bytes() == files[spec.sources[0].path]


def test_plankton_train_appears_only_after_extraction_and_a_killed_unpack_recovers(tmp_path, monkeypatch):
    root = tmp_path / "plankton"
    top_folder = download._top_folder

    def killed(*a, **k):
        raise KeyboardInterrupt  # the process dies after extraction, before the rename

    monkeypatch.setattr(download, "_top_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        _placed("plankton", root)
    assert (root / ".unpack-train" / "labeled_20201020").is_dir() and not (root / "train").exists()
    spec = get_info("plankton")
    assert spec.missing(root) == f"no train/ folder in {root}"
    monkeypatch.setattr(download, "_top_folder", top_folder)
    spec.mirrored("http://127.0.0.1:9/unused").download(root, show_progress=False)  # zips are on disk
    assert spec.missing(root) is None and not (root / ".unpack-train").exists()
    assert len(resolve_task("plankton", data_root=tmp_path).train_idx) == 12


def test_plankton_zip_folder_with_a_mangled_name_still_becomes_val(tmp_path, caplog):
    spec = get_info("plankton")
    files = spec.fixture(spec)
    val = spec.sources[1]
    src = zipfile.ZipFile(io.BytesIO(files[val.path]))
    buf = io.BytesIO()
    mangled = "phytoplankton_Ut├╢_2021_labeled"  # UTF-8 'ö' read as code page 437
    with zipfile.ZipFile(buf, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename.replace("phytoplankton_Utö_2021_labeled", mangled), src.read(info))
    root = tmp_path / "plankton"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / TRAIN_ZIP).write_bytes(files[spec.sources[0].path])
    (root / ".downloads" / VAL_ZIP).write_bytes(buf.getvalue())
    with caplog.at_level(logging.WARNING, logger="lifebench.download"):
        spec.mirrored("http://127.0.0.1:9/unused").download(root, show_progress=False)
    assert f"unpacked to {mangled}/" in caplog.text
    assert len(resolve_task("plankton", data_root=tmp_path).test_idx) == 6


# ---------------------------------------------------------------- Pl@ntNet-300K


def test_plantnet_download_resumes_and_loads_val_not_test(serve_task, tmp_path):
    spec, files, handler = serve_task("plantnet")
    cut = len(files["plantnet_300K.zip"]) // 3
    handler.cut_after["/plantnet/plantnet_300K.zip"] = cut
    root = tmp_path / "data" / "plantnet"
    assert "no plantnet_300K/images/train/ or images/train/" in data_status("plantnet", tmp_path / "data")[1]
    spec.download(root, show_progress=False)
    assert ("/plantnet/plantnet_300K.zip", f"bytes={cut}-") in handler.requests
    assert (root / "plantnet_300K" / "images" / "test").is_dir()  # present in the zip, never used
    task = resolve_task("plantnet", data_root=tmp_path / "data")
    assert task.classes == ("1355868", "1355920", "1363227") and task.metric == "macro_f1"
    assert (len(task.train_idx), len(task.test_idx)) == (9, 6)
    assert all(i.startswith("plantnet_300K/images/val/") for i in task.test.ids.tolist())
    assert task.source == str(root.resolve())


def test_plantnet_reads_images_directly_under_root_as_biobench_documents(tmp_path):
    first_root = _placed("plantnet", tmp_path / "a" / "plantnet")
    second_root = tmp_path / "b" / "plantnet"
    second_root.mkdir(parents=True)
    shutil.copytree(first_root / "plantnet_300K" / "images", second_root / "images")
    first = resolve_task("plantnet", data_root=tmp_path / "a")
    second = resolve_task("plantnet", data_root=tmp_path / "b")
    assert [i.removeprefix("plantnet_300K/") for i in first.examples.ids.tolist()] == second.examples.ids.tolist()
    assert second.classes == first.classes and second.train_idx.tolist() == first.train_idx.tolist()


def test_plantnet_corrupted_zip_on_disk_is_rejected_on_reuse(serve_task, tmp_path):
    spec, _, _ = serve_task("plantnet")
    spec.download(tmp_path / "p", show_progress=False)
    _flip_byte(tmp_path / "p" / ".downloads" / "plantnet_300K.zip", 500)
    with pytest.raises(DataError, match="checksum mismatch for plantnet_300K.zip.*recorded sha256"):
        spec.download(tmp_path / "p", show_progress=False)


# ---------------------------------------------------------------- iNat21


def test_inat21_pins_the_published_urls_and_md5s():
    spec = get_info("inat21")
    assert [(spec.url(s), s.md5) for s in spec.sources] == [
        (DATASET_URLS[v], DATASET_MD5[v]) for v in ("2021_train_mini", "2021_valid")]


def test_inat21_matches_torchvision_inaturalist(tmp_path):
    root = _placed("inat21", tmp_path / "inat21")
    task = resolve_task("inat21", data_root=tmp_path)
    assert task.metric == "accuracy" and (len(task.train_idx), len(task.test_idx), len(task.classes)) == (9, 6, 3)
    # torchvision reads <root>/<version>/ and checks the 8-piece, sequentially numbered class folder names.
    (tmp_path / "tv").mkdir()
    (tmp_path / "tv" / "2021_train_mini").symlink_to(root / "train_mini")
    ref = INaturalist(str(tmp_path / "tv"), version="2021_train_mini", target_type="full")
    assert tuple(ref.all_categories) == task.classes
    codes = task.encode(task.train.labels)
    ours = sorted((task.classes[c], Path(i).name) for c, i in zip(codes, task.train.ids.tolist(), strict=True))
    assert ours == sorted((ref.all_categories[c], f) for c, f in ref.index)


def test_inat21_corrupted_archive_is_rejected_and_nothing_is_unpacked(serve_task, tmp_path):
    spec, files, handler = serve_task("inat21")
    data = bytearray(files["val.tar.gz"])
    data[200] ^= 0xFF
    handler.files["/inat21/val.tar.gz"] = bytes(data)
    with pytest.raises(DataError, match="checksum mismatch for val.tar.gz.*md5"):
        spec.download(tmp_path / "i", show_progress=False)
    assert not (tmp_path / "i" / "val").exists()


# ---------------------------------------------------------------- Herbarium 2019


def test_herbarium19_pins_the_published_md5s_and_rejects_a_changed_archive(serve_task, tmp_path):
    assert [(s.path, s.md5) for s in get_info("herbarium19").sources] == [
        ("train.tar.gz", "53c6b9ee2f831f5101dbe00958091dc8"), ("validation.tar.gz", "2f854d580949e54f114993a74adc3d4b")]
    spec, files, handler = serve_task("herbarium19")
    data = bytearray(files["validation.tar.gz"])
    data[100] ^= 0xFF
    handler.files["/herbarium19/validation.tar.gz"] = bytes(data)
    with pytest.raises(DataError, match="checksum mismatch for validation.tar.gz"):
        spec.download(tmp_path / "h", show_progress=False)
    assert not (tmp_path / "h" / "validation").exists()


def test_herbarium19_from_a_biobench_made_folder_ignores_its_unlabelled_test_images(tmp_path, caplog):
    root = _placed("herbarium19", tmp_path / "herbarium19")
    loose = root / "test"  # BioBench's download also fetches the competition's test split: loose, unlabelled images
    loose.mkdir()
    for i, src in enumerate(sorted((root / "validation" / "0").iterdir())):
        shutil.copy(src, loose / f"{i}.jpg")
    task = resolve_task("herbarium19", data_root=tmp_path)
    assert task.split_source == "given (train/ -> validation/)" and len(task.test_idx) == 6
    assert not any(i.startswith("test/") for i in task.examples.ids.tolist())
    # The same folder read as a user's folder: test/ has no class folders, so validation/ is the test split.
    with caplog.at_level(logging.WARNING, logger="lifebench.tasks.folder"):
        user = load_task(root)
    assert "test/ holds no class folders" in caplog.text and "using validation/ as the test split" in caplog.text
    assert user.split_source == "given (validation/ used as test)" and len(user.test_idx) == 6


# ---------------------------------------------------------------- the CLI over all four tasks


def test_suites_dry_run_then_run_on_all_fixtures(tmp_path, capsys):
    data_root = tmp_path / "data"
    for name in ("herbarium19", "plankton", "plantnet", "inat21"):
        _placed(name, data_root / name)
    args = ["-q", "run", "--suite", "ecology", "--suite", "reference", "--data-root", str(data_root),
            "--model", "pixels", "--store", str(tmp_path / "s.sqlite"), "--workers", "0"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan: 4 jobs, 9 tasks skipped" in out
    for name in ("herbarium19", "plankton", "plantnet", "inat21"):
        assert f"{name} | pixels | logreg" in out
    assert "skip: newt" in out and "skip: beluga" in out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 experiments run" in out
    for line in ("herbarium19 (macro_f1, n=6)", "plankton (macro_f1, n=6)", "plantnet (macro_f1, n=6)",
                 "inat21 (accuracy, n=6)"):
        assert line in out


def test_a_second_download_into_the_same_folder_waits_for_the_first(serve_task, tmp_path, caplog):
    import fcntl
    import threading

    spec, _, _ = serve_task("plankton")
    root = tmp_path / "plankton"
    root.mkdir()
    done = threading.Event()
    with open(root / ".lifebench-download.lock", "a") as held:  # another process (plankton-openset, say) is unpacking
        fcntl.flock(held, fcntl.LOCK_EX)
        with caplog.at_level(logging.WARNING, logger="lifebench.tasks.catalog"):
            worker = threading.Thread(target=lambda: (spec.download(root, show_progress=False), done.set()))
            worker.start()
            assert not done.wait(1.0) and not (root / "train").exists()  # it waits instead of unpacking over it
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(30)
    assert done.is_set() and spec.missing(root) is None
    assert "another lifebench process is downloading into" in caplog.text
