"""FishNet, NeWT, Beluga and FungiCLEF loaded from their real published text (tests/data/upstream/<task>/).

Each test lays out tiny image files named as the real rows name them and loads them through lifebench's loader;
the expected values come from the upstream files themselves or from BioBench's code run on them (SOURCE.md in
each folder says which repository, commit and file, and what was kept).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lifebench.errors import ConfigError
from lifebench.tasks.ecology import beluga, fishnet, fungiclef, newt

UPSTREAM = Path(__file__).parent / "data" / "upstream"


def _jpeg(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (value, 255 - value, 60)).save(path, format="JPEG")


def _csv_rows(path: Path) -> tuple[str, list[str]]:
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    return header, rows


# ------------------------------------------------------------------------------------------------------ FishNet

# BioBench's reading of test_rows.csv (samuelstevens/biobench @ 6376d97, fishnet/__init__.py, ImageDataset: polars
# read_csv, drop rows with a null trait, path Image_Library/<Folder>/<image.split("/")[-1]>, FeedingPath
# pelagic -> 1, benthic -> 0), computed by running those lines with polars 2.1.0. Traits in TRAITS order.
FISHNET_BIOBENCH = [
    ("Image_Library/Sparidae/ce230657-448a-491b-ad57-4522e753d738.jpg", "011100111"),
    ("Image_Library/Sciaenidae/03bbd564-5501-471b-85d4-ddd84fa2d66b.jpg", "011100010"),
    ("Image_Library/Sciaenidae/a1550003-2c81-4028-af80-89b8c5dffff9.jpg", "011100010"),
    ("Image_Library/Sciaenidae/c0edc04f-7879-4db1-8bc8-a43698734d81.jpg", "011100010"),
    ("Image_Library/Acanthuridae/Zefla_u2.jpg", "011100010"),
    ("Image_Library/Acanthuridae/Nahex_u2.jpg", "111100010"),
    ("Image_Library/Acanthuridae/Actho_u4.jpg", "111100010"),
    ("Image_Library/Acanthuridae/Acmon_f0.jpg", "110100011"),
    ("Image_Library/Sciaenidae/8e96195b-1e24-4c37-95fa-71fda4ca534d.jpg", "111100010"),
]


def _fishnet_root(tmp_path: Path, train_rows: list[str], test_rows: list[str], header: str) -> Path:
    root = tmp_path / "fishnet"
    root.mkdir()
    (root / "train.csv").write_text("\n".join([header, *train_rows]) + "\n", encoding="utf-8")
    (root / "test.csv").write_text("\n".join([header, *test_rows]) + "\n", encoding="utf-8")
    for r in csv.DictReader(io.StringIO("\n".join([header, *train_rows, *test_rows]))):
        _jpeg(root / "Image_Library" / r["Folder"] / r["image"].rsplit("/", 1)[-1])
    return root


def test_fishnet_real_rows_load_as_biobench_reads_them(tmp_path):
    header, rows = _csv_rows(UPSTREAM / "fishnet" / "test_rows.csv")
    assert len(rows) == 12 and header.startswith(",Unnamed: 0,species,image,")
    assert rows[4].split(",")[3] == "https://www.fishbase.se/images/species/Zefla_u2.jpg"
    task = fishnet.load(_fishnet_root(tmp_path, rows[:6], rows[6:], header))

    # the URL row loads from Image_Library/<Folder>/Zefla_u2.jpg; the 3 rows without traits are dropped
    ids = task.examples.ids.tolist()
    assert ids == [p for p, _ in FISHNET_BIOBENCH]
    assert task.examples.paths[4] == str(tmp_path / "fishnet" / "Image_Library" / "Acanthuridae" / "Zefla_u2.jpg")
    assert (task.train_idx.tolist(), task.test_idx.tolist()) == (list(range(6)), [6, 7, 8])
    labels = ["".join(p.labels[i] for p in task.parts) for i in range(len(ids))]
    assert labels == [t for _, t in FISHNET_BIOBENCH]
    assert [p.name for p in task.parts] == list(fishnet.TRAITS)


def test_fishnet_rows_naming_one_file_twice_are_kept_with_distinct_ids(tmp_path, caplog):
    header, rows = _csv_rows(UPSTREAM / "fishnet" / "test_rows.csv")
    # the real Zefla row in both splits, and a bare-name copy of it in train: three rows, one file
    bare = rows[4].replace("https://www.fishbase.se/images/species/Zefla_u2.jpg", "Zefla_u2.jpg")
    with caplog.at_level(logging.WARNING, logger="lifebench.tasks.ecology.fishnet"):
        task = fishnet.load(_fishnet_root(tmp_path, [rows[0], rows[4], bare], [rows[4], rows[5]], header))
    zefla = "Image_Library/Acanthuridae/Zefla_u2.jpg"
    assert task.examples.ids.tolist() == [FISHNET_BIOBENCH[0][0], zefla, f"{zefla}#1", f"{zefla}#2",
                                          FISHNET_BIOBENCH[5][0]]
    assert len(set(task.examples.paths[1:4].tolist())) == 1
    assert "2 rows name an image already listed" in caplog.text and "1 of those images are in both" in caplog.text


def test_fishnet_n_train_on_the_real_rows(tmp_path):
    header, rows = _csv_rows(UPSTREAM / "fishnet" / "test_rows.csv")
    task = fishnet.load(_fishnet_root(tmp_path, rows[:6], rows[6:], header))
    everything = task.with_n_train(6)
    assert everything.name == "fishnet@n6" and all(p.train_idx.tolist() == list(range(6)) for p in everything.parts)
    # Tropical is 1 on all six real training rows (and Boreal, Polar 0), so a smaller draw leaves a trait with one
    # label, which a probe per trait cannot fit: refused before the run, naming the trait
    with pytest.raises(ConfigError, match=r"^--n-train 3 \(seed 0\) leaves part '(FeedingPath|Tropical)' of task "
                                          r"'fishnet' with training images of one label only"):
        task.with_n_train(3)
    with pytest.raises(ConfigError, match=r"^--n-train 7 is too large: the largest part of task 'fishnet' has 6 "
                                          r"training images; give --n-train of at most 6$"):
        task.with_n_train(7)


# --------------------------------------------------------------------------------------------------------- NeWT

def _newt_root(tmp_path: Path) -> tuple[Path, list[str]]:
    """The README's 4 real rows, plus made-up rows so that each of the 164 real tasks has both labels on both
    sides: per task 3 training images of label 0, 4 of label 1 and 2 test images of each."""
    header, real = _csv_rows(UPSTREAM / "newt" / "labels_readme_rows.csv")
    tasks = list(csv.DictReader(io.StringIO((UPSTREAM / "newt" / "newt_task_clusters.csv").read_text())))
    made = []
    for t in tasks:
        for label, split, n in ((0, "train", 3), (1, "train", 4), (0, "test", 2), (1, "test", 2)):
            for k in range(n):
                uid = uuid.uuid5(uuid.NAMESPACE_URL, f"{t['name']}/{label}/{split}/{k}")
                made.append(f"{uid},{t['cluster']},{t['sub_cluster']},{t['name']},{label},l{label},{split},6,8")
    root = tmp_path / "newt"
    (root / "newt2021_images").mkdir(parents=True)
    (root / "newt2021_labels.csv").write_text("\n".join([header, *real, *made]) + "\n", encoding="utf-8")
    for line in [*real, *made]:
        _jpeg(root / "newt2021_images" / f"{line.split(',')[0]}.jpg")
    return root, [t["name"] for t in tasks]


def test_newt_real_header_rows_and_task_list_load(tmp_path):
    header, real = _csv_rows(UPSTREAM / "newt" / "labels_readme_rows.csv")
    assert tuple(header.split(",")) == newt.COLUMNS
    root, names = _newt_root(tmp_path)
    task = newt.load(root)
    assert len(names) == 164 and [p.name for p in task.parts] == sorted(names)
    assert len(task.examples) == 4 + 164 * 11
    part = {p.name: p for p in task.parts}
    for line in real:
        uid, name = line.split(",")[0], line.split(",")[3]
        k = task.examples.ids.tolist().index(uid)
        assert task.examples.paths[k] == str(root / "newt2021_images" / f"{uid}.jpg")
        assert k in part[name].train_idx and part[name].labels[k] == "0"
    hawk = part["ml_age_coopers_hawk"]
    assert np.unique(hawk.labels[hawk.train_idx], return_counts=True)[1].tolist() == [5, 4]  # 2 real + 3 made
    assert len(hawk.test_idx) == 4


def _biobench_newt_counts(n0: int, n1: int, n_train: int) -> list[int]:
    """Training images per label that BioBench's ``newt.sample`` keeps for one task (samuelstevens/biobench @
    6376d97, src/biobench/newt/__init__.py: ``n0 = n_train // 2; n1 = n_train - n0``; a label with no more than
    its share is kept whole)."""
    share0 = n_train // 2
    return [min(share0, n0), min(n_train - share0, n1)]


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_newt_n_train_is_biobench_half_of_each_label_per_task(tmp_path, n):
    root, _ = _newt_root(tmp_path)
    task = newt.load(root)
    sub = task.with_n_train(n, seed=3)
    assert sub.name == f"newt@n{n}"
    for full, part in zip(task.parts, sub.parts, strict=True):
        have = np.unique(full.labels[full.train_idx], return_counts=True)[1].tolist()
        got = [int(np.sum(part.labels[part.train_idx] == c)) for c in ("0", "1")]
        assert got == _biobench_newt_counts(*have, n), full.name
        assert set(part.train_idx) <= set(full.train_idx) and part.test_idx.tolist() == full.test_idx.tolist()
    smaller = task.with_n_train(n - 1, seed=3) if n > 2 else sub
    assert all(set(a.train_idx) <= set(b.train_idx) for a, b in zip(smaller.parts, sub.parts, strict=True))
    assert sub.train_idx.tolist() == np.unique(np.concatenate([p.train_idx for p in sub.parts])).tolist()


def test_newt_n_train_bounds(tmp_path):
    root, _ = _newt_root(tmp_path)
    task = newt.load(root)
    with pytest.raises(ConfigError, match=r"^--n-train 1 is too small for task 'newt': each part draws n // 2 "
                                          r"training images of each of its 2 labels; give --n-train of at least 2$"):
        task.with_n_train(1)
    with pytest.raises(ConfigError, match=r"^--n-train 10 is too large: the largest part of task 'newt' has 9 "):
        task.with_n_train(10)
    # different seeds draw differently; one seed draws the same again, also from a task loaded afresh
    assert task.with_n_train(4, seed=0).train_idx.tolist() == newt.load(root).with_n_train(4, seed=0).train_idx.tolist()
    assert task.with_n_train(4, seed=0).train_idx.tolist() != task.with_n_train(4, seed=1).train_idx.tolist()


# ------------------------------------------------------------------------------------------------------- Beluga

def test_beluga_coco_field_names_load_and_n_train_is_refused(tmp_path):
    fields = json.loads((UPSTREAM / "beluga" / "fields.json").read_text())
    made_up = {"id": None, "file_name": None, "date_captured": "2017-06-05", "image_id": None, "name": None,
               "category_id": 0, "segmentation": [[0, 0, 8, 0, 8, 6, 0, 6]], "viewpoint": "up",
               "supercategory": "animal"}
    whales = ["beluga0", "beluga0", "beluga1", "beluga1", "beluga2"]
    images = [{f: made_up[f] for f in fields["images"]} | {"id": i + 1, "file_name": f"{i + 1:012d}.jpg"}
              for i in range(len(whales))]
    anns = [{f: made_up[f] for f in fields["annotations"]} | {"image_id": i + 1, "name": w, "id": 100 + i}
            for i, w in enumerate(whales)]
    cats = [{f: made_up[f] for f in fields["categories"]} | {"id": 0, "name": "beluga_whale"}]
    root = tmp_path / "beluga"
    (root / beluga.ANNOTATIONS).parent.mkdir(parents=True)
    (root / beluga.ANNOTATIONS).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    for im in images:
        _jpeg(root / beluga.IMAGES / im["file_name"])
    task = beluga.load(root)
    assert task.examples.ids.tolist() == [im["file_name"] for im in images]
    assert task.examples.labels.tolist() == whales and task.leave_one_out
    with pytest.raises(ConfigError) as e:
        task.with_n_train(3)
    assert str(e.value) == ("task 'beluga' is scored leave-one-out (each image is a query against all the others), "
                            "so it has no training set to shrink: run it without --n-train")


# ---------------------------------------------------------------------------------------------------- FungiCLEF

def test_fungiclef_reference_columns_load_and_unknown_is_the_full_training_set(tmp_path):
    cols = json.loads((UPSTREAM / "fungiclef" / "columns.json").read_text())
    header = cols["metadata"] + cols["metadata_extra_third_party"]
    extra = ["5", "17", "DK", "soil", "Mixed woodland", "Amanita muscaria"]

    def write(name: str, rows: list[tuple[str, str, int]]) -> None:
        lines = [",".join(header)] + [",".join([obs, img, str(c), *extra]) for obs, img, c in rows]
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    root = tmp_path / "fungiclef"
    root.mkdir()
    train = [(f"22378{c}{i}", f"22378{c}{i}-7526{c}{i}.JPG", c) for c in range(3) for i in range(3)]
    val = [("3051", "0-3051.JPG", 0), ("3051", "1-3051.JPG", 0), ("3052", "0-3052.JPG", 2), ("3053", "0-3053.JPG", -1)]
    write(fungiclef.TRAIN_CSV, train)
    write(fungiclef.VAL_CSV, val)
    (root / fungiclef.POISON_CSV).write_text(",".join(cols["poison_status_list"]) + "\n0,0\n1,0\n2,1\n")
    for _, img, c in train:
        _jpeg(root / "DF20_300" / img.lower(), 40 * c)  # DF20 stores *.jpg where the CSV says *.JPG
    for _, img, c in val:
        _jpeg(root / "DF21_300" / img, 40 * c)
    task = fungiclef.load(root)
    assert task.examples.ids[task.train_idx].tolist() == [f"DF20_300/{img.lower()}" for _, img, _ in train]
    assert task.examples.groups[task.test_idx].tolist() == ["3051", "3051", "3052", "3053"]

    # --n-train 2 shows the probe two of the three species; the poisonous species 2 left out stays a known species
    seed = next(s for s in range(50) if "2" not in task.with_n_train(2, seed=s).examples.labels[
        task.with_n_train(2, seed=s).train_idx])
    sub = task.with_n_train(2, seed=seed)
    seen = sub.examples.labels[sub.train_idx].astype(str)
    assert sorted(set(seen.tolist())) == ["0", "1"]
    rows = sub.row_extras(np.array(["0", "2", "-1"]), np.array(["1", "0", "0"]), seen)
    # FungiCLEF 2023 costs with the truth coded by its class_id (-1 unknown): a wrong known species 1; the
    # poisonous species 2 taken for the edible 0, 1 + 100 (it was 10 + 100 when "never seen" meant unknown); an
    # unknown taken for a known species 10
    assert rows["cost"].tolist() == [1.0, 101.0, 10.0]
    assert rows["worst"].tolist() == [2.0, 101.0, 11.0]
