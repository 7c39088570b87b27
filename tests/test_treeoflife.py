"""BioCLIP's tree-of-life suite (Birds 525, eight Meta-Album Mini sets, Rare Species) on fixtures in their real
layouts, downloaded from a local HTTP server."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import shutil
import zipfile
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from sklearn.metrics import accuracy_score
from sklearn.preprocessing import LabelEncoder

from lifebench.cli import main
from lifebench.download import CHECKSUMS_FILE
from lifebench.errors import DataError
from lifebench.store import Store
from lifebench.tasks import resolve_task
from lifebench.tasks.catalog import CATALOG, SUITES, data_status
from lifebench.tasks.taxonomy import class_texts
from lifebench.tasks.treeoflife import birds525, metaalbum, rare_species

HF_PATH = "/datasets/imageomics/rare-species/resolve/main"
KAGGLE_PATH = "/api/v1/datasets/download/gpiosenka/100-bird-species"


def _ma_path(dataset: str) -> str:
    s = metaalbum.SETS[dataset]
    return f"/datasets/0004/{s.openml_id}/{s.code}.zip"


@pytest.fixture
def served(http_server, monkeypatch):
    """Every module's fixture files on the local server, each module's BASE_URL pointing there, and the
    Authorization header of every request recorded in ``auth`` as (path, header)."""
    url, handler = http_server
    files = {"ma": {d: metaalbum.make_fixture(dataset=d) for d in ("ma-plankton", "ma-insects")},
             "rare": rare_species.make_fixture(), "birds": birds525.make_fixture()}
    for d, archive in files["ma"].items():
        handler.files[_ma_path(d)] = archive[f"{metaalbum.SETS[d].code}.zip"]
    for name, data in files["rare"].items():
        handler.files[f"{HF_PATH}/{quote(name)}"] = data
    handler.files[KAGGLE_PATH] = files["birds"][birds525.ARCHIVE]
    monkeypatch.setattr(metaalbum, "BASE_URL", f"{url}/datasets")
    monkeypatch.setattr(rare_species, "BASE_URL", f"{url}{HF_PATH}")
    monkeypatch.setattr(birds525, "BASE_URL", f"{url}/api/v1")
    auth: list[tuple[str, str | None]] = []
    get = handler.do_GET

    def do_get(self):
        auth.append((self.path, self.headers.get("Authorization")))
        get(self)

    monkeypatch.setattr(handler, "do_GET", do_get)
    for var in ("HF_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    return handler, files, auth


def _run(task: str, data_root: Path, store: Path) -> int:
    # The task's own protocol, zero-shot, with a random-init tiny CLIP (the tiny_open_clip fixture registers it).
    return main(["-q", "run", "--task", task, "--data-root", str(data_root), "--model",
                 "open_clip:lbtest-tiny-clip@random", "--store", str(store), "--workers", "0"])


def _check_stored_run(store: Path, task) -> None:
    with Store(store) as s:
        (exp,) = s.experiments(task=task.name)
        preds = s.predictions(exp.id)
    assert exp.metric == "accuracy" and exp.protocol == "zero-shot" and tuple(exp.classes) == task.classes
    assert exp.fit_info["text_type"] == task.text_type
    assert sorted(preds.ids.tolist()) == sorted(task.examples.ids.tolist())  # every image predicted once
    truth = dict(zip(task.examples.ids.tolist(), task.examples.labels.tolist(), strict=True))
    assert preds.y_true.tolist() == [truth[i] for i in preds.ids.tolist()]
    assert 0.0 <= accuracy_score(preds.y_true, preds.y_pred) <= 1.0


def _every_image_both_sides(task) -> None:
    n = len(task.examples)
    assert task.train_idx.tolist() == task.test_idx.tolist() == list(range(n))
    assert (task.metric, task.protocol) == ("accuracy", "zero-shot")
    assert task.split_source.startswith("none: every image is both a support candidate and a query")
    # One label map: sklearn's LabelEncoder (sorted unique labels) gives the same codes.
    enc = LabelEncoder().fit(task.examples.labels)
    assert task.classes == tuple(enc.classes_)
    assert task.encode(task.examples.labels).tolist() == enc.transform(task.examples.labels).tolist()


# ---------------------------------------------------------------- catalog


def test_catalog_has_the_ten_bioclip_tasks_with_their_facts():
    assert SUITES["tree-of-life"] == ["birds525", "ma-plankton", "ma-insects", "ma-insects2", "ma-plantnet",
                                      "ma-fungi", "ma-plantvillage", "ma-medleaf", "ma-plantdoc", "rare-species"]
    for name in SUITES["tree-of-life"]:
        info = CATALOG[name]
        assert info.metric == "accuracy" and info.protocol.startswith("zero-shot") and info.n_train == info.n_test
    assert (CATALOG["birds525"].n_test, CATALOG["rare-species"].n_test) == (2625, 400 * 30)
    for name, s in metaalbum.SETS.items():  # Mini = 40 images per class
        assert CATALOG[name].n_test == 40 * s.n_classes
        assert CATALOG[name].module == "lifebench.tasks.treeoflife.metaalbum"
        assert s.code in CATALOG[name].source and str(s.openml_id) in CATALOG[name].source
    assert metaalbum.archive_url(metaalbum.SETS["ma-plankton"]).replace(metaalbum.BASE_URL, "") == \
        "/0004/44282/PLK_Mini.zip"
    assert metaalbum.BASE_URL == "https://data.openml.org/datasets"
    assert rare_species.BASE_URL == "https://huggingface.co/datasets/imageomics/rare-species/resolve/main"


def test_ls_tasks_lists_the_suite(capsys):
    assert main(["ls", "tasks"]) == 0
    out = capsys.readouterr().out
    for name in SUITES["tree-of-life"]:
        assert f"\n{name} " in out
    assert "tree-of-life" in out


# ---------------------------------------------------------------- Meta-Album


def test_metaalbum_download_resumes_records_the_checksum_and_loads(served, tmp_path):
    handler, files, _ = served
    data = files["ma"]["ma-insects"]["INS_Mini.zip"]
    handler.cut_after[_ma_path("ma-insects")] = len(data) // 2
    data_root = tmp_path / "data"
    root = data_root / "ma-insects"
    assert data_status("ma-insects", data_root)[1] == (f"no INS_Mini/labels.csv in {root} "
                                                       f"(get it: lifebench download ma-insects --dir {data_root})")
    metaalbum.download(root, show_progress=False)
    assert (_ma_path("ma-insects"), f"bytes={len(data) // 2}-") in handler.requests
    recorded = json.loads((root / ".downloads" / CHECKSUMS_FILE).read_text())
    assert recorded == {"INS_Mini.zip": hashlib.sha256(data).hexdigest()}
    assert sorted(p.name for p in (root / "INS_Mini").iterdir()) == ["images", "info.json", "labels.csv"]
    assert data_status("ma-insects", data_root) == (root, None)

    task = resolve_task("ma-insects", data_root=data_root)
    assert task.name == "ma-insects" and len(task.examples) == 9 and task.taxonomy is None
    assert task.classes == ("Le Syrphe ceinturé (Episyrphus balteatus)", "Les Hélophiles (Helophilus, Parhelophilus)",
                            "Les Syrphes à l'aspect de bourdon (Merodon et autres)")
    _every_image_both_sides(task)
    with open(root / "INS_Mini" / "labels.csv", encoding="utf-8", newline="") as f:
        truth = {r["FILE_NAME"]: r["CATEGORY"] for r in csv.DictReader(f)}
    assert dict(zip(task.examples.ids.tolist(), task.examples.labels.tolist(), strict=True)) == truth
    assert all(Path(p) == root / "INS_Mini" / "images" / i
               for i, p in zip(task.examples.ids.tolist(), task.examples.paths.tolist(), strict=True))
    assert class_texts(list(task.classes), task.taxonomy, "asis") == list(task.classes)  # BioCLIP's text type
    n = len(handler.requests)
    metaalbum.download(root, show_progress=False)  # idempotent: data present, nothing requested
    assert len(handler.requests) == n


def test_metaalbum_changed_archive_is_rejected_and_nothing_unpacked(served, tmp_path):
    handler, files, _ = served
    root = tmp_path / "ma-plankton"
    metaalbum.download(root, show_progress=False)
    shutil.rmtree(root / "PLK_Mini")
    (root / ".downloads" / "PLK_Mini.zip").unlink()  # the recorded SHA-256 stays
    changed = bytearray(files["ma"]["ma-plankton"]["PLK_Mini.zip"])
    changed[200] ^= 0xFF
    handler.files[_ma_path("ma-plankton")] = bytes(changed)
    with pytest.raises(DataError, match=r"checksum mismatch for PLK_Mini.zip(.part)? from .*recorded sha256"):
        metaalbum.download(root, show_progress=False)
    assert not (root / "PLK_Mini").exists() and not (root / ".downloads" / "PLK_Mini.zip").exists()
    assert metaalbum.missing(root) == f"no PLK_Mini/labels.csv in {root}"


def test_metaalbum_hand_placed_zip_and_a_wrong_zip(tmp_path):
    root = tmp_path / "whatever"  # not a task name: the set is told by the zip found inside
    root.mkdir()
    (root / "FNG_Mini.zip").write_bytes(metaalbum.make_fixture(dataset="ma-fungi")["FNG_Mini.zip"])
    assert metaalbum.which_set(root).task == "ma-fungi"
    metaalbum.download(root, base_url="http://127.0.0.1:9/unused", show_progress=False)
    task = metaalbum.load(root)
    assert task.name == "ma-fungi" and task.examples.ids[0] == "2238577590-1.JPG"
    assert task.classes[0] == "Amanita fulva (Schaeff.) Fr."  # authorities kept: BioCLIP's asis names

    other = tmp_path / "ma-plantdoc"
    other.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("PlantDoc/train/x.jpg", b"")
    (other / "PLT_DOC_Mini.zip").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"PLT_DOC_Mini.zip unpacked to PlantDoc, not PLT_DOC_Mini/labels.csv"):
        metaalbum.download(other, show_progress=False)


def _unpacked(tmp_path: Path, dataset: str) -> Path:
    root = tmp_path / dataset
    root.mkdir()
    for data in metaalbum.make_fixture(dataset=dataset).values():
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            z.extractall(root)
    return root


def test_metaalbum_bad_layouts_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"cannot tell which Meta-Album set .*none found.*name the folder after"):
        metaalbum.missing(tmp_path)
    with pytest.raises(DataError, match="unknown Meta-Album set 'plankton'; use one of ma-plankton"):
        metaalbum.load(tmp_path, dataset="plankton")
    with pytest.raises(DataError, match=r"ma-medleaf: no MED_LF_Mini/labels.csv in .*run: lifebench download "
                                        r"ma-medleaf --dir"):
        metaalbum.load(tmp_path / "ma-medleaf")

    root = _unpacked(tmp_path, "ma-medleaf")
    labels = root / "MED_LF_Mini" / "labels.csv"
    text = labels.read_text(encoding="utf-8")
    labels.write_text(text.replace("CATEGORY,", "CLASS,", 1), encoding="utf-8")
    with pytest.raises(DataError, match=r"labels.csv has no CATEGORY column \(columns: FILE_NAME, CLASS, "
                                        r"SUPER_CATEGORY\)"):
        metaalbum.load(root)
    labels.write_text(text + "5.jpg,Jasminum (Jasmine),Medicinal Leaf\n", encoding="utf-8")
    with pytest.raises(DataError, match="lists 5.jpg more than once"):
        metaalbum.load(root, dataset="MED_LF_Mini")  # the Meta-Album code works as a name too
    labels.write_text(text, encoding="utf-8")
    (root / "MED_LF_Mini" / "images" / "4.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images listed in .*labels.csv are not in .*images \(e.g. 4.jpg\); "
                                        r"delete .*MED_LF_Mini and run: lifebench download ma-medleaf"):
        metaalbum.load(root)


def test_metaalbum_honours_info_json_columns_and_images_beside_labels(tmp_path, caplog):
    root = _unpacked(tmp_path, "ma-plantvillage")
    folder = root / "PLT_VIL_Mini"
    for f in (folder / "images").iterdir():
        f.rename(folder / f.name)
    (folder / "images").rmdir()
    text = (folder / "labels.csv").read_text(encoding="utf-8")
    (folder / "labels.csv").write_text(text.replace("FILE_NAME,CATEGORY", "image,label", 1), encoding="utf-8")
    info = json.loads((folder / "info.json").read_text())
    (folder / "info.json").write_text(json.dumps({**info, "image_column_name": "image",
                                                  "category_column_name": "label"}))
    (folder / "stray.jpg").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="lifebench.tasks.treeoflife.metaalbum"):
        task = metaalbum.load(root)
    assert len(task.examples) == 9 and task.classes == ("Apple___Apple_scab", "Grape___healthy",
                                                        "Tomato___Late_blight")
    assert "1 files in" in caplog.text  # stray.jpg, not in labels.csv


def test_metaalbum_end_to_end_run(served, tmp_path, capsys, tiny_open_clip):
    data_root = tmp_path / "data"
    assert main(["-q", "download", "ma-plankton", "--dir", str(data_root)]) == 0
    store = tmp_path / "s.sqlite"
    assert _run("ma-plankton", data_root, store) == 0
    assert "ma-plankton (accuracy, n=9)" in capsys.readouterr().out
    _check_stored_run(store, metaalbum.load(data_root / "ma-plankton"))


# ---------------------------------------------------------------- Rare Species


def test_rare_species_download_resumes_sends_the_token_and_loads(served, tmp_path, monkeypatch):
    handler, files, auth = served
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    image = next(n for n in files["rare"] if n.startswith("dataset/Animalia-Chordata-Aves"))
    handler.cut_after[f"{HF_PATH}/{quote(image)}"] = len(files["rare"][image]) // 2
    data_root = tmp_path / "data"
    root = data_root / "rare-species"
    assert data_status("rare-species", data_root)[1].startswith(f"no metadata.csv in {root} (get it:")
    rare_species.download(root, show_progress=False, workers=2)
    assert (f"{HF_PATH}/{quote(image)}", f"bytes={len(files['rare'][image]) // 2}-") in handler.requests
    assert len(auth) == 1 + 12 + 1 and {a for _, a in auth} == {"Bearer hf_test"}
    for name, data in files["rare"].items():
        assert (root / name).read_bytes() == data
    recorded = json.loads((root / Path(image).parent / CHECKSUMS_FILE).read_text())
    assert recorded[Path(image).name] == hashlib.sha256(files["rare"][image]).hexdigest() and len(recorded) == 3
    assert data_status("rare-species", data_root) == (root, None)

    task = resolve_task("rare-species", data_root=data_root)
    assert task.classes == ("Andrias japonicus", "Cyclonaias tuberculata", "Myadestes obscurus",
                            "Pangshura sylhetensis")
    assert len(task.examples) == 12 and task.examples.ids[0].startswith("dataset/Animalia-Chordata-Amphibia-")
    _every_image_both_sides(task)
    assert task.taxonomy["Myadestes obscurus"] == {
        "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes", "family": "Turdidae",
        "genus": "Myadestes", "species": "obscurus", "common": "'Oma'o"}
    assert class_texts(["Myadestes obscurus"], task.taxonomy, "taxon_com") == [
        "Animalia Chordata Aves Passeriformes Turdidae Myadestes obscurus with common name 'Oma'o"]
    with open(root / "metadata.csv", encoding="utf-8", newline="") as f:
        truth = {r["file_name"]: r["sciName"] for r in csv.DictReader(f)}
    assert dict(zip(task.examples.ids.tolist(), task.examples.labels.tolist(), strict=True)) == truth
    n = len(handler.requests)
    rare_species.download(root, show_progress=False)  # idempotent: every file verified, nothing requested
    assert len(handler.requests) == n


def test_rare_species_without_token_sends_no_header_and_a_changed_file_is_rejected(served, tmp_path, caplog):
    handler, files, auth = served
    root = tmp_path / "rare-species"
    with caplog.at_level(logging.INFO, logger="lifebench"):
        rare_species.download(root, show_progress=False)
    assert {a for _, a in auth} == {None}
    # One progress line for all images, not one per file; the per-file checksum notes are muted too.
    assert "rare-species images: 12/12 img" in caplog.text and "_eol-full-size-copy.jpg" not in caplog.text
    assert caplog.text.count("recorded sha256") == 1  # metadata.csv's
    image = sorted(n for n in files["rare"] if n.endswith(".jpg"))[0]
    (root / image).unlink()
    assert rare_species.missing(root) == f"1 of 12 images listed in metadata.csv are missing under {root}"
    with pytest.raises(DataError, match=r"rare-species: 1 of 12 images .*missing .*fetches only the missing ones"):
        rare_species.load(root)
    handler.files[f"{HF_PATH}/{quote(image)}"] = files["rare"][image][:-10] + b"0123456789"
    with pytest.raises(DataError, match=rf"checksum mismatch for {Path(image).name}(.part)? from .*recorded sha256"):
        rare_species.download(root, show_progress=False)
    assert not (root / image).exists()


def test_rare_species_bad_metadata_names_the_file_and_the_fix(tmp_path):
    root = tmp_path / "rare-species"
    for name, data in rare_species.make_fixture(per_class=1).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    meta = root / "metadata.csv"
    text = meta.read_text(encoding="utf-8")
    meta.write_text(text.replace(",file_name\n", ",path\n", 1), encoding="utf-8")
    with pytest.raises(DataError, match=r"metadata.csv has no file_name column \(columns: rarespecies_id, .*path\); "
                                        "delete it and run: lifebench download rare-species"):
        rare_species.load(root)
    assert rare_species.missing(root).startswith(f"{meta} has no file_name column")  # a reason, not a crash
    lines = text.splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",../../etc/passwd"
    meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"1 unusable rows \(line 3: file_name '../../etc/passwd'\)"):
        rare_species.download(root, base_url="http://127.0.0.1:9/unused", show_progress=False)


def test_rare_species_end_to_end_run(served, tmp_path, capsys, tiny_open_clip):
    data_root = tmp_path / "data"
    rare_species.download(data_root / "rare-species", show_progress=False)
    store = tmp_path / "s.sqlite"
    assert _run("rare-species", data_root, store) == 0
    assert "rare-species (accuracy, n=12)" in capsys.readouterr().out
    _check_stored_run(store, rare_species.load(data_root / "rare-species"))


# ---------------------------------------------------------------- Birds 525


def test_birds525_without_credentials_says_how_to_get_the_zip(served, tmp_path):
    handler, _, _ = served
    with pytest.raises(DataError, match=r"birds525: Kaggle needs an account: set KAGGLE_USERNAME and KAGGLE_KEY .*"
                                        r"or download the zip from https://www.kaggle.com/datasets/gpiosenka/"
                                        r"100-bird-species into .*birds525 and rerun"):
        birds525.download(tmp_path / "birds525", show_progress=False)
    assert handler.requests == []
    assert main(["-q", "download", "birds525", "--dir", str(tmp_path)]) == 2  # the CLI's exit code for data errors


def test_birds525_download_resumes_authenticates_and_loads(served, tmp_path, monkeypatch):
    handler, files, auth = served
    monkeypatch.setenv("KAGGLE_USERNAME", "ada")
    monkeypatch.setenv("KAGGLE_KEY", "k3y")
    data = files["birds"][birds525.ARCHIVE]
    handler.cut_after[KAGGLE_PATH] = len(data) // 3
    data_root = tmp_path / "data"
    root = data_root / "birds525"
    assert data_status("birds525", data_root)[1].startswith(f"no test/ folder in {root}")
    birds525.download(root, show_progress=False)
    assert (KAGGLE_PATH, f"bytes={len(data) // 3}-") in handler.requests
    assert {a for _, a in auth} == {"Basic " + base64.b64encode(b"ada:k3y").decode()}
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        birds525.MODEL_FILE, "birds.csv", "test", "train", "valid"]
    assert data_status("birds525", data_root) == (root, None)

    task = resolve_task("birds525", data_root=data_root)
    assert task.classes == ("ABBOTTS BABBLER", "BALD EAGLE", "D-ARNAUDS BARBET") and len(task.examples) == 9
    assert all(i.startswith("test/") for i in task.examples.ids.tolist())  # the test split only
    _every_image_both_sides(task)
    assert task.taxonomy["ABBOTTS BABBLER"] == {"common": "ABBOTTS BABBLER", "genus": "Malacocincla",
                                                "species": "abbotti"}
    assert class_texts(["BALD EAGLE"], task.taxonomy, "sci") == ["Haliaeetus leucocephalus"]
    with open(root / "birds.csv", newline="") as f:
        test_rows = {r["filepaths"]: r["labels"] for r in csv.DictReader(f) if r["data set"] == "test"}
    assert dict(zip(task.examples.ids.tolist(), task.examples.labels.tolist(), strict=True)) == test_rows
    n = len(handler.requests)
    birds525.download(root, show_progress=False)
    assert len(handler.requests) == n


def test_birds525_kaggle_refusal_and_a_changed_zip(served, tmp_path, monkeypatch):
    handler, files, _ = served
    monkeypatch.setenv("KAGGLE_USERNAME", "ada")
    monkeypatch.setenv("KAGGLE_KEY", "wrong")
    url = birds525.BASE_URL
    with pytest.raises(DataError, match=r"HTTP 404 .*; check KAGGLE_USERNAME and KAGGLE_KEY, or download the zip"):
        birds525.download(tmp_path / "b", base_url=f"{url}/elsewhere", show_progress=False)
    root = tmp_path / "birds525"
    birds525.download(root, show_progress=False)
    shutil.rmtree(root / "test")
    (root / ".downloads" / birds525.ARCHIVE).unlink()
    changed = bytearray(files["birds"][birds525.ARCHIVE])
    changed[300] ^= 0xFF
    handler.files[KAGGLE_PATH] = bytes(changed)
    with pytest.raises(DataError, match=r"checksum mismatch for 100-bird-species.zip(.part)? from .*recorded sha256"):
        birds525.download(root, show_progress=False)
    assert not (root / "test").exists()


def test_birds525_hand_placed_zip_and_scientific_names_by_label(tmp_path, caplog):
    root = tmp_path / "birds525"
    root.mkdir()
    (root / "archive.zip").write_bytes(birds525.make_fixture(per_class=2)[birds525.ARCHIVE])
    birds525.download(root, base_url="http://127.0.0.1:9/unused", show_progress=False)  # no credentials needed
    table = root / "birds.csv"
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    for r in rows[1:]:
        if r[2] == "BALD EAGLE":  # the CSV's test paths and label spelling differ from the folders
            r[1], r[2] = r[1].replace("test/", "tst/"), "BALD  EAGLE"
        if r[2] == "D-ARNAUDS BARBET":
            r[4] = ""
    with open(table, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    with caplog.at_level(logging.WARNING, logger="lifebench.tasks.treeoflife.birds525"):
        task = birds525.load(root)
    assert task.taxonomy["BALD EAGLE"] == {"common": "BALD EAGLE", "genus": "Haliaeetus", "species": "leucocephalus"}
    assert task.taxonomy["D-ARNAUDS BARBET"] == {"common": "D-ARNAUDS BARBET"}
    assert "1 classes have no scientific name in birds.csv (e.g. D-ARNAUDS BARBET)" in caplog.text
    assert class_texts(["D-ARNAUDS BARBET"], task.taxonomy, "sci") == ["D-ARNAUDS BARBET"]  # falls back to asis


def test_birds525_scientific_name_parsing_and_bad_layouts(tmp_path):
    assert birds525.split_scientific("MALACOCINCLA ABBOTTI") == {"genus": "Malacocincla", "species": "abbotti"}
    assert birds525.split_scientific("Lophura leucomelanos hamiltoni") == {"genus": "Lophura",
                                                                           "species": "leucomelanos"}
    assert birds525.split_scientific("PSITTACULA sp.") == {"genus": "Psittacula"}
    assert birds525.split_scientific("") == {}
    root = tmp_path / "birds525"
    (root / "test" / "BALD EAGLE").mkdir(parents=True)
    assert birds525.missing(root) == f"no birds.csv in {root}"
    with pytest.raises(DataError, match=r"birds525: no birds.csv in .*run: lifebench download birds525 --dir"):
        birds525.load(root)
    (root / "birds.csv").write_text("path,label\n")
    with pytest.raises(DataError, match=r"birds.csv has no filepaths or labels column \(columns: path, label\)"):
        birds525.load(root)
    (root / "birds.csv").write_text("class id,filepaths,labels,data set,scientific name\n")
    (root / "test" / "stray.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"images lie directly in .*test \(stray.jpg\)"):
        birds525.load(root)


def test_birds525_end_to_end_run(tmp_path, capsys, tiny_open_clip):
    data_root = tmp_path / "data"
    (data_root / "birds525").mkdir(parents=True)
    (data_root / "birds525" / birds525.ARCHIVE).write_bytes(birds525.make_fixture()[birds525.ARCHIVE])
    assert main(["-q", "download", "birds525", "--dir", str(data_root)]) == 0
    store = tmp_path / "s.sqlite"
    assert _run("birds525", data_root, store) == 0
    assert "birds525 (accuracy, n=9)" in capsys.readouterr().out
    _check_stored_run(store, birds525.load(data_root / "birds525"))


def test_fixture_images_are_class_coloured_so_a_probe_can_learn(tmp_path):
    root = _unpacked(tmp_path, "ma-plankton")
    task = metaalbum.load(root)
    from lifebench.images import load_rgb

    means = np.array([np.asarray(load_rgb(p), dtype=float).mean(axis=(0, 1)) for p in task.examples.paths])
    assert [int(np.argmax(m)) for m in means] == task.encode(task.examples.labels).tolist()


# ---------------------------------------------------------------- few-shot over the suite


def test_suite_few_shot_skips_birds525_five_shot_and_runs_the_rest(tmp_path, capsys):
    """The documented command, ``--suite tree-of-life --protocol few-shot --shots 1,5``: Birds 525's test split has
    5 images per class, so 5-shot leaves no query (BioCLIP's few_shot.py cannot run it either). That (task, k) is one
    skip line with its reason; birds525@1shot and both shot counts of the other tasks run, in the dry run and for
    real. A task named with --task is still refused at once."""
    data_root = tmp_path / "data"
    (data_root / "birds525").mkdir(parents=True)
    (data_root / "birds525" / birds525.ARCHIVE).write_bytes(birds525.make_fixture(per_class=5)[birds525.ARCHIVE])
    (data_root / "ma-plankton").mkdir()
    (data_root / "ma-plankton" / "PLK_Mini.zip").write_bytes(
        metaalbum.make_fixture(dataset="ma-plankton", per_class=7)["PLK_Mini.zip"])
    for name in ("birds525", "ma-plankton"):
        assert main(["-q", "download", name, "--dir", str(data_root)]) == 0
    store = tmp_path / "s.sqlite"
    run = ["-q", "run", "--suite", "tree-of-life", "--data-root", str(data_root), "--model", "pixels", "--store",
           str(store), "--workers", "0", "--protocol", "few-shot", "--shots", "1,5"]
    capsys.readouterr()
    assert main([*run, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: 15 jobs, 9 tasks skipped")  # birds525@1shot, ma-plankton@1shot, @5shot x 5 folds
    skip = [line.strip() for line in out.splitlines() if "skip: birds525" in line]
    assert skip == ["skip: birds525@5shot                     --shots 5 is too large: class 'ABBOTTS BABBLER' of "
                    "task 'birds525' has only 5 images, and k-shot needs k support images plus at least one query; "
                    "give --shots of at most 4"]
    assert "birds525@1shot | pixels | few-shot | seed 4" in out and "ma-plankton@5shot | pixels | few-shot" in out
    assert "skip: ma-insects" in out  # no data: the suite's usual skip line
    assert main(run) == 0
    with Store(store) as s:
        runs = sorted((e.task, e.seed) for e in s.experiments())
    assert runs == sorted((t, f) for t in ("birds525@1shot", "ma-plankton@1shot", "ma-plankton@5shot")
                          for f in range(5))
    capsys.readouterr()
    assert main(["-q", "run", "--task", "birds525", "--data-root", str(data_root), "--model", "pixels", "--store",
                 str(store), "--protocol", "few-shot", "--shots", "1,5", "--dry-run"]) == 2
    assert "--shots 5 is too large: class 'ABBOTTS BABBLER' of task 'birds525'" in capsys.readouterr().err
