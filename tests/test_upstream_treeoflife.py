"""The tree-of-life tasks read through lifebench's own readers from the upstream's real published text
(tests/data/upstream/{rare-species,meta-album,birds525}, each with its SOURCE.md): BioCLIP's annotation CSVs
(Imageomics/bioclip @ 4ea3247), Meta-Album's labels.csv format, a release of Birds' birds.csv.

The reference text types are BioCLIP's own construction, ``src/imageomics/naming_eval.py`` @ 4ea3247 (``Taxon``
and ``to_classes``), re-implemented below for the fields the files use (BioCLIP's training package cannot be
installed here).
"""

from __future__ import annotations

import csv
import logging
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lifebench.errors import ConfigError, DataError
from lifebench.protocols import fit_info, make_protocol
from lifebench.tasks.taxonomy import TEXT_TYPES, class_texts, rank_columns
from lifebench.tasks.treeoflife import birds525, metaalbum, rare_species

UPSTREAM = Path(__file__).parent / "data" / "upstream"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (90, 140, 60)).save(path)


def _bioclip_text(row: dict[str, str], text_type: str) -> str:
    """naming_eval.to_classes for one metadata.csv row (Taxon.scientific_name, taxonomic_name, get_common_name,
    sci_common_name, taxon_common_name; no subspecies in these files)."""
    if text_type == "asis":
        return row["class"]
    sci = row["genus"].capitalize() + " " + row["species"].lower()
    taxon = " ".join([row["kingdom"].capitalize(), row["phylum"].capitalize(), row["cls"].capitalize(),
                      row["order"].capitalize(), row["family"].capitalize(), row["genus"].capitalize(),
                      row["species"].lower()])
    com = row["common_name"]
    return {"sci": sci, "taxon": taxon, "com": com, "sci_com": sci + " with common name " + com if com else sci,
            "taxon_com": taxon + " with common name " + com if com else taxon}[text_type]


# ---------------------------------------------------------------- Rare Species


@pytest.fixture
def rare_root(tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    """BioCLIP's rare_species/metadata.csv rows as a task folder: the file itself and an image at each filepath."""
    rows = _rows(UPSTREAM / "rare-species" / "bioclip_metadata.csv")
    root = tmp_path / "rare-species"
    root.mkdir()
    (root / "metadata.csv").write_bytes((UPSTREAM / "rare-species" / "bioclip_metadata.csv").read_bytes())
    for r in rows:
        _image(root / r["filepath"])
    return root, rows


def test_bioclips_cls_column_is_the_rank_and_class_the_label(rare_root):
    root, rows = rare_root
    header = list(rows[0])
    assert header == ["", "kingdom", "phylum", "cls", "order", "family", "genus", "species", "common_name",
                      "filepath", "class"]
    assert rank_columns(header)["class"] == "cls"  # not "class", which holds "Cyclonaias tuberculata"
    assert rank_columns(["kingdom", "class", "order"])["class"] == "class"  # the Hub's file: class is the rank
    task = rare_species.load(root)
    assert task.classes == tuple(sorted({r["class"] for r in rows}))  # the label is BioCLIP's `class` (asis)
    assert dict(task.taxonomy["Cyclonaias tuberculata"]) == {
        "kingdom": "Animalia", "phylum": "Mollusca", "class": "Bivalvia", "order": "Unionida", "family": "Unionidae",
        "genus": "Cyclonaias", "species": "tuberculata", "common": "purple wartyback"}
    assert task.text_type == "taxon_com"


@pytest.mark.parametrize("text_type", TEXT_TYPES)
def test_rare_species_text_types_equal_bioclips_on_real_rows(rare_root, text_type):
    root, rows = rare_root
    task = rare_species.load(root)
    ours = dict(zip(task.classes, class_texts(list(task.classes), task.taxonomy, text_type), strict=True))
    theirs = {r["class"]: _bioclip_text(r, text_type) for r in rows}
    assert ours == theirs
    if text_type == "taxon_com":
        assert ours["Cyclonaias tuberculata"] == ("Animalia Mollusca Bivalvia Unionida Unionidae Cyclonaias tuberculata "
                                                  "with common name purple wartyback")
        assert ours["Myadestes obscurus"].endswith("Myadestes obscurus with common name 'Oma'o")


def test_rare_species_shared_common_names_are_one_class_as_in_bioclip(rare_root, caplog):
    """With common names, "Yunnan Newt" and "staghorn coral" each name two species. BioCLIP's DatasetFromFile makes
    one class per distinct string; zero-shot here keeps one weight row per text, logs the collision, records it,
    and counts a prediction of the shared text as right for either species."""
    root, _ = rare_root
    task = rare_species.load(root)
    texts = class_texts(list(task.classes), task.taxonomy, "com")
    assert len(set(texts)) == len(texts) - 2
    rng = np.random.default_rng(0)
    distinct = {t: rng.normal(size=16) for t in dict.fromkeys(texts)}
    W = np.stack([distinct[t] for t in texts])  # as the text tower gives: equal text, equal row
    with caplog.at_level(logging.WARNING, logger="lifebench.protocols.zeroshot"):
        est = make_protocol("zero-shot").fit(W, task.classes, texts=texts)
    assert "2 texts name several classes each" in caplog.text
    assert fit_info(est)["shared_texts"] == {"Yunnan Newt": ["Tylototriton shanjing", "Tylototriton verrucosus"],
                                             "staghorn coral": ["Acropora acuminata", "Acropora millepora"]}
    X = np.stack([distinct["Yunnan Newt"], distinct["staghorn coral"]])
    pred = np.array(task.classes, dtype=object)[est.predict(X)]
    assert pred.tolist() == ["Tylototriton shanjing", "Acropora acuminata"]  # the first class carries each text
    y_true = np.array(["Tylototriton verrucosus", "Acropora millepora"])
    y_pred, _ = est.credit_shared_texts(y_true, pred.astype(str), pred[:, None].astype(str))
    assert y_pred.tolist() == y_true.tolist()  # BioCLIP: the text is the class, so both are right
    assert len(set(class_texts(list(task.classes), task.taxonomy, "taxon_com"))) == len(task.classes)


# ---------------------------------------------------------------- Meta-Album


def test_metaalbum_set_facts_match_bioclips_annotation_files():
    classes = _rows(UPSTREAM / "meta-album" / "bioclip_classes.csv")
    per_set: dict[str, list[str]] = {}
    for r in classes:
        per_set.setdefault(r["set"], []).append(r["class"])
    assert {s.code: s.n_classes for s in metaalbum.SETS.values()} == {k: len(v) for k, v in per_set.items()}
    assert {s.code: s.n_classes for s in metaalbum.SETS.values()} == {
        "PLK_Mini": 86, "INS_Mini": 104, "INS_2_Mini": 102, "PLT_NET_Mini": 25, "FNG_Mini": 25, "PLT_VIL_Mini": 38,
        "MED_LF_Mini": 25, "PLT_DOC_Mini": 27}
    for task, (fixture_classes, *_) in metaalbum._FIXTURE.items():  # the fixtures use real class names
        real = {unicodedata.normalize("NFC", c) for c in per_set[metaalbum.SETS[task].code]}
        assert set(fixture_classes) <= real, task


def test_metaalbum_reader_keeps_bioclips_class_text_as_written(tmp_path):
    """BioCLIP's `class` (its asis text) is the Meta-Album CATEGORY; lifebench's class is CATEGORY as written, so
    the two agree character for character on real names (authorities, parentheses, triple underscores, NFD accents
    and the mis-decoded "CharanÃ§ons" included)."""
    rows = _rows(UPSTREAM / "meta-album" / "bioclip_metadata_rows.csv")
    for s in metaalbum.SETS.values():
        mine = [r for r in rows if r["set"] == s.code]
        folder = tmp_path / s.task / s.code
        folder.mkdir(parents=True)
        with open(folder / "labels.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["FILE_NAME", "CATEGORY", "SUPER_CATEGORY"])
            for r in mine:
                w.writerow([r["filepath"].rsplit("/", 1)[1], r["class"], s.display])
                _image(folder / "images" / r["filepath"].rsplit("/", 1)[1])
        task = metaalbum.load(tmp_path / s.task)
        assert task.classes == tuple(sorted(r["class"] for r in mine)), s.code
        assert class_texts(list(task.classes), task.taxonomy, "asis") == list(task.classes)
        assert task.text_type == "asis"
    ins = metaalbum.load(tmp_path / "ma-insects")
    assert "Les CharanA\u0303\u00a7ons verts (Phyllobius, Polydrusus)" in ins.classes
    with pytest.raises(DataError, match="needs taxonomy columns"):
        class_texts(list(ins.classes), ins.taxonomy, "sci")  # Meta-Album has no ranks: asis only, as BioCLIP


def test_metaalbum_format_sample_labels_csv_loads(tmp_path):
    folder = tmp_path / "ma-insects" / "INS_Mini"
    folder.mkdir(parents=True)
    (folder / "labels.csv").write_bytes((UPSTREAM / "meta-album" / "metaalbum_format_labels.csv").read_bytes())
    for r in _rows(folder / "labels.csv"):
        _image(folder / "images" / r["FILE_NAME"])
    task = metaalbum.load(tmp_path / "ma-insects")
    assert task.classes == ("bee", "butterfly", "insect", "wasp") and len(task.examples) == 12
    assert "insect1.JPG" in task.examples.ids.tolist()


# ---------------------------------------------------------------- Birds


def test_birds_csv_release_reads_and_its_five_test_images_refuse_five_shot(tmp_path, caplog):
    """A real birds.csv (the 400-species release: no scientific names) over test/<CLASS>/n.jpg: the classes are the
    folder names (BioCLIP's asis text), five test images each, so 5-shot has no query left; 4-shot runs."""
    rows = _rows(UPSTREAM / "birds525" / "birds_400_release.csv")
    root = tmp_path / "birds525"
    root.mkdir()
    (root / "birds.csv").write_bytes((UPSTREAM / "birds525" / "birds_400_release.csv").read_bytes())
    for r in rows:
        if r["data set"] == "test":
            _image(root / r["filepaths"])
    with caplog.at_level(logging.WARNING, logger="lifebench.tasks.treeoflife.birds525"):
        task = birds525.load(root)
    assert "has no 'scientific name' column" in caplog.text
    assert task.classes == ("ABBOTTS BABBLER", "ABBOTTS BOOBY", "ABYSSINIAN GROUND HORNBILL")
    assert len(task.examples) == 15 and task.examples.ids[0] == "test/ABBOTTS BABBLER/1.jpg"
    assert class_texts(list(task.classes), task.taxonomy, "com") == list(task.classes)
    with pytest.raises(ConfigError, match="--shots 5 is too large: class 'ABBOTTS BABBLER' of task 'birds525' has "
                                          "only 5 images, and k-shot needs k support images plus at least one query"):
        task.with_shots(5, 0)
    four = task.with_shots(4, 0)
    assert len(four.train_idx) == 12 and len(four.test_idx) == 3
