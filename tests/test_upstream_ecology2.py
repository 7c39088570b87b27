"""Upstream conformance of ecdysis, iwildcam, kabr, mammalnet and imagenet1k.

Each test builds a tiny data folder in the upstream's published layout (headers and facts under
tests/data/upstream/<task>/, see each SOURCE.md), loads it through lifebench and compares with what the upstream
reader computes: the ``wilds`` package itself where installed, else the few upstream lines mirrored here, each
naming the file it mirrors.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lifebench.metrics.classification import macro_f1
from lifebench.tasks.ecology import ecdysis, imagenet1k, iwildcam, kabr, mammalnet

UPSTREAM = Path(__file__).parent / "data" / "upstream"


def _jpeg(path: Path, colour=(120, 80, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path, format="JPEG")


# ----------------------------------------------------------------------------------------------------- ecdysis


def _export_rows(files: dict[str, bytes]) -> tuple[bytes, list[dict[str, str]]]:
    with zipfile.ZipFile(io.BytesIO(files[ecdysis.EXPORT_PATH + ecdysis.EXPORT_QUERY])) as z:
        data = z.read(ecdysis.EXPORT_MEMBER)
    return data, list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def _biobench_ecdysis(rows: list[dict[str, str]]) -> tuple[dict[str, int], list[str], list[str]]:
    """(label id by label, train ids, validation ids) as biobench@6376d97 src/biobench/ecdysis/__init__.py
    ``Dataset.__init__`` computes them: skip empty image_thumbnail_large, number labels in order of first
    appearance, per label stable-sort by visit_date and cut at int(0.8 * n)."""
    label_to_id: dict[str, int] = {}
    by_label: dict[int, list[tuple[str, str]]] = {}
    for row in rows:
        if not row["image_thumbnail_large"]:
            continue
        label = "|".join([row["gbif_class"], row["gbif_order"], row["gbif_family"], row["gbif_genus"],
                          row["gbif_species"]])
        label_to_id.setdefault(label, len(label_to_id))
        by_label.setdefault(label_to_id[label], []).append((row["id"], row["visit_date"]))
    train, val = [], []
    for samples in by_label.values():
        samples.sort(key=lambda x: x[1])
        k = int(0.8 * len(samples))
        train += [i for i, _ in samples[:k]]
        val += [i for i, _ in samples[k:]]
    return label_to_id, train, val


def _biobench_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """biobench@6376d97 src/biobench/reporting.py ``macro_f1``: every label id 0..max(y_true, y_pred)."""
    from sklearn.metrics import f1_score

    labels = np.arange(np.unique(np.stack([y_true, y_pred])).max() + 1)
    return float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0.0))


@pytest.fixture
def ecdysis_served(http_server, monkeypatch):
    url, handler = http_server
    files = ecdysis.make_fixture(base_url=url)
    handler.files.update(files)
    monkeypatch.setattr(ecdysis, "_BACKOFF_S", 0.0)
    return url, handler, files


def test_ecdysis_columns_are_the_portal_exporter_s_and_biobench_s_17_are_among_them():
    header = (UPSTREAM / "ecdysis" / "export_header.csv").read_text().strip().split(",")
    biobench = (UPSTREAM / "ecdysis" / "biobench_columns.txt").read_text().split()
    assert tuple(header) == ecdysis.COLUMNS
    assert [c for c in header if c != "immature_stage"] == biobench and len(biobench) == 17


def test_ecdysis_download_takes_the_reviewed_export_from_today_s_page(ecdysis_served, tmp_path):
    """The page links reviewed, all-specimens and model zips, none named .csv.zip since December 2025; the
    reviewed one (BioBench's choice, its first link) is taken, through its presigned query string."""
    url, handler, files = ecdysis_served
    data, rows = _export_rows(files)
    root = tmp_path / "ecdysis"
    ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False)
    fetched = [p for p, _ in handler.requests if not p.startswith(ecdysis.IMAGE_PATH)]
    assert fetched == [ecdysis.PAGE_PATH, ecdysis.EXPORT_PATH + ecdysis.EXPORT_QUERY]
    assert (root / "metadata.csv").read_bytes() == data and data[:3] == b"\xef\xbb\xbf"
    # BioBench opened the CSV without utf-8-sig: the byte-order mark sticks to the first column's name.
    with open(root / "metadata.csv", newline="") as f:
        assert csv.DictReader(f).fieldnames[0] == "\ufeffid"
    task = ecdysis.load(root)
    assert sorted(task.examples.ids.tolist()) == sorted(r["id"] for r in rows)


def test_ecdysis_older_page_with_a_csv_zip_link_and_biobench_s_17_columns_still_loads(http_server, tmp_path):
    """The export BioBench met: a ``.csv.zip`` link, a member named ``zip``, no byte-order mark, 17 columns."""
    url, handler = http_server
    files = ecdysis.make_fixture(base_url=url)
    _, rows = _export_rows(files)
    biobench = (UPSTREAM / "ecdysis" / "biobench_columns.txt").read_text().split()
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=biobench, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("zip", text.getvalue())
    old = "/media/exports/public-all-img-exp__1__2025-06-01_000000.csv.zip"  # the name test does not apply
    handler.files.update({k: v for k, v in files.items() if k.startswith(ecdysis.IMAGE_PATH)})
    handler.files[old] = buf.getvalue()
    handler.files[ecdysis.PAGE_PATH] = f'<a href="/about/">About</a> <a href="{old}">Download CSV</a>'.encode()
    root = tmp_path / "old"
    ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False)
    assert (root / "metadata.csv").read_text().splitlines()[0].split(",") == biobench
    assert len(ecdysis.load(root).examples) == len(rows)


def test_ecdysis_split_and_macro_f1_equal_biobench_s_on_the_same_rows(ecdysis_served, tmp_path):
    """Rows in id order (no visit_date ties across the id order matter then): train/test membership equals
    BioBench's, the 1-row label included (test only), and macro-F1 equals BioBench's reporting.macro_f1."""
    url, _, files = ecdysis_served
    _, rows = _export_rows(files)
    rows.sort(key=lambda r: int(r["id"]))
    root = tmp_path / "e"
    ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False)
    with open(root / "metadata.csv", "w", newline="") as f:  # the same rows, in id order
        w = csv.DictWriter(f, fieldnames=ecdysis.COLUMNS)
        w.writeheader()
        w.writerows(rows)
    task = ecdysis.load(root)
    label_to_id, train, val = _biobench_ecdysis(rows)
    assert sorted(task.train.ids.tolist()) == sorted(train)
    assert sorted(task.test.ids.tolist()) == sorted(val)
    single = [lab for lab, n in Counter(task.examples.labels.tolist()).items() if n == 1]
    assert len(single) == 1 and single[0] in task.test.labels.tolist() and single[0] not in task.train.labels
    assert task.open_set and set(task.test.labels.tolist()) == set(label_to_id)  # every label is tested

    rng = np.random.default_rng(0)
    y_true = task.test.labels
    train_labels = sorted(set(task.train.labels.tolist()))
    for _ in range(5):  # a probe predicts training labels only
        y_pred = np.array([train_labels[i] for i in rng.integers(0, len(train_labels), len(y_true))], dtype=object)
        hit = (rng.random(len(y_true)) < 0.5) & np.isin(y_true, train_labels)
        y_pred[hit] = y_true[hit]
        codes = {c: k for k, c in enumerate(task.classes)}  # lifebench's label map
        ours = macro_f1(np.array([codes[v] for v in y_true]), np.array([codes[v] for v in y_pred]))
        theirs = _biobench_macro_f1(np.array([label_to_id[v] for v in y_true]),
                                    np.array([label_to_id[v] for v in y_pred]))
        assert ours == pytest.approx(theirs, abs=1e-12)


# ---------------------------------------------------------------------------------------------------- iwildcam


def _iwildcam_root(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "iwildcam"
    with tarfile.open(fileobj=io.BytesIO(iwildcam.make_fixture()[iwildcam.ARCHIVE])) as tar:
        tar.extractall(root / iwildcam.VERSION_DIR, filter="data")
    with open(root / iwildcam.VERSION_DIR / "categories.csv", newline="") as f:
        names = {r["y"]: r["name"] for r in csv.DictReader(f)}
    return root, names


def test_iwildcam_files_have_the_headers_wilds_preprocessing_writes(tmp_path):
    root, _ = _iwildcam_root(tmp_path)
    d = root / iwildcam.VERSION_DIR
    for name, ref in (("metadata.csv", "metadata_header.csv"), ("categories.csv", "categories_header.csv")):
        assert (d / name).read_text().splitlines()[0] == (UPSTREAM / "iwildcam" / ref).read_text().strip()
    assert (d / "RELEASE_v2.0.txt").is_file()


@pytest.mark.parametrize("test_split", ["test", "id_test", "val"])
def test_iwildcam_split_labels_and_groups_equal_the_wilds_package_s(tmp_path, test_split):
    """WILDS' own IWildCamDataset (download=False) reads the same folder: per split, the same files, the same
    labels (y through categories.csv) and the same location groups."""
    wilds = pytest.importorskip("wilds.datasets.iwildcam_dataset", reason="pip install wilds (test extra)")
    root, names = _iwildcam_root(tmp_path)
    ref = wilds.IWildCamDataset(root_dir=str(root), download=False)
    task = iwildcam.load(root, test_split=test_split)
    for split, idx in (("train", task.train_idx), (test_split, task.test_idx)):
        sub = ref.get_subset(split).indices
        want = sorted(zip(ref._input_array[sub].tolist(), [names[str(int(y))] for y in ref.y_array[sub]],
                          [str(int(g)) for g in ref.metadata_array[sub, 0]], strict=True))
        got = sorted(zip(task.examples.ids[idx].tolist(), task.examples.labels[idx].tolist(),
                         task.examples.groups[idx].tolist(), strict=True))
        assert got == want and len(got) == len(sub) > 0
    assert ref.n_classes == len(task.classes)  # contiguous y: one class per used category


def test_iwildcam_macro_f1_equals_the_wilds_metric():
    wilds_metrics = pytest.importorskip("wilds.common.metrics.all_metrics", reason="pip install wilds (test extra)")
    import torch

    rng = np.random.default_rng(1)
    f1 = wilds_metrics.F1(average="macro")
    for _ in range(5):
        y_true = rng.integers(0, 6, 40)
        y_pred = np.where(rng.random(40) < 0.5, y_true, rng.integers(0, 8, 40))  # some never-true classes
        want = float(f1.compute(torch.tensor(y_pred), torch.tensor(y_true))[f1.agg_metric_field])
        assert macro_f1(y_true, y_pred) == pytest.approx(want, abs=1e-6)


# -------------------------------------------------------------------------------------------------------- kabr


def _write_kabr(root: Path, clips: list[tuple[str, str, list[str]]]) -> dict[int, str]:
    """KABR as cvat2slowfast.py writes it: ``clips`` = [(split, track label, per-frame behaviour names)].

    Mirrors Imageomics/kabr-tools@9477f98 src/kabr_tools/cvat2slowfast.py: folder code = the track label's first
    letter + a running 4-digit number, video_id from 1, frames from 1, rows written by pandas with sep=" ".
    """
    pd = pytest.importorskip("pandas", reason="pandas writes the annotation files as upstream does")
    classes = json.loads((UPSTREAM / "kabr" / "classes.json").read_text())
    headers = (UPSTREAM / "kabr" / "annotation_header.txt").read_text().split()
    (root / "annotation").mkdir(parents=True)
    (root / "annotation" / "classes.json").write_text(json.dumps(classes))
    rows: dict[str, list] = {"train": [], "val": []}
    codes = {}
    for video_id, (split, track, behaviours) in enumerate(clips, start=1):
        code = f"{track[0].capitalize()}{video_id:04d}"
        codes[video_id] = code
        for frame, name in enumerate(behaviours, start=1):
            _jpeg(root / "dataset" / "image" / code / f"{frame}.jpg")
            rows[split].append([code, video_id, frame, f"{code}/{frame}.jpg", str(classes[name])])
    for split, data in rows.items():
        pd.DataFrame(data, columns=headers).to_csv(root / "annotation" / f"{split}.csv", sep=" ", index=False)
    return codes


def _biobench_kabr_videos(root: Path, split: str) -> dict[int, tuple[list[str], list[int]]]:
    """biobench@6376d97 src/biobench/kabr/__init__.py ``Dataset.__init__``: frames and labels per video_id in
    file order, clips of fewer than 16 frames dropped."""
    frames: dict[int, list[str]] = {}
    labels: dict[int, list[int]] = {}
    with open(root / "annotation" / f"{split}.csv") as fd:
        reader = csv.reader(fd, delimiter=" ")
        next(reader)
        for _, video_id, _frame_id, path, label in reader:
            frames.setdefault(int(video_id), []).append(f"dataset/image/{path}")
            labels.setdefault(int(video_id), []).append(int(label))
    return {v: (frames[v], labels[v]) for v in frames if len(frames[v]) >= 16}


def _biobench_kabr_stride(n: int, n_frames: int = 16, n_every: int = 5) -> tuple[int, int]:
    """(stride, margin) of ``Dataset.__getitem__`` in the same file."""
    while n < (n_frames - 1) * n_every + 1:
        n_every -= 1
    return n_every, n - ((n_frames - 1) * n_every + 1)


def test_kabr_reads_cvat2slowfast_files_and_samples_frames_as_biobench(tmp_path):
    walk, graze, browse, trot = "Walk", "Graze", "Browse", "Trot"
    clips = [
        ("train", "Zebra", [walk] * 120),
        ("train", "Giraffe", [browse] * 60 + [walk] * 40),
        ("train", "Zebra", [graze] * 90),
        ("train", "Zebra", [trot] * 45),  # 45 frames: the stride shrinks to 2
        ("val", "Giraffe", [walk] * 30 + [graze] * 70),
        ("val", "Zebra", [graze] * 16),  # exactly 16: stride 1, no slack
        ("val", "Zebra", [browse] * 12),  # too short: dropped by both
    ]
    root = tmp_path / "kabr"
    codes = _write_kabr(root, clips)
    header = (root / "annotation" / "train.csv").read_text().splitlines()[0]
    assert header == "original_vido_id video_id frame_id path labels"
    task = kabr.load(root)
    names = {v: k for k, v in json.loads((UPSTREAM / "kabr" / "classes.json").read_text()).items()}
    for split, idx in (("train", task.train_idx), ("val", task.test_idx)):
        ref = _biobench_kabr_videos(root, split)
        groups = task.examples.groups[idx]
        assert sorted(set(groups.tolist())) == sorted(codes[v] for v in ref)  # the same clips kept
        for video_id, (frames, labels) in ref.items():
            mine = idx[groups == codes[video_id]]
            got = task.examples.ids[mine].tolist()
            stride, margin = _biobench_kabr_stride(len(frames))
            start = frames.index(got[0])
            assert 0 <= start <= margin
            assert got == frames[start::stride][:16]  # BioBench's selection for this start
            assert task.examples.labels[mine].tolist() == [names[v] for v in labels[start::stride][:16]]
    assert task.pool_train == task.pool_test == "max"


# --------------------------------------------------------------------------------------------------- mammalnet


def _mammalnet_reference(root: Path, split: str) -> list[tuple[str, int]]:
    """(clip, behaviour) per usable row, read twice and required to agree: as MammalNet's own loader splits a row
    (Vision-CAIR/MammalNet@d4b2d59 animalnet_behavior_composition.py: ``path, label1, label``; ``label1`` is the
    behaviour) and as biobench@6376d97 src/biobench/mammalnet/__init__.py ``find_videos`` does
    (``rel_path, behavior_id, species_id``; frames/<clip>/frame_01..32.jpg must all exist)."""
    out = []
    for line in (root / "annotation" / "composition" / f"{split}.csv").read_text().splitlines():
        path, label1, _label = line.split(" ")
        rel_path, behavior_id, _species_id = line.split(" ")
        _, fname = rel_path.split("/")
        clip = fname.rsplit(".", 1)[0]
        assert int(label1) == int(behavior_id)
        folder = root / "frames" / clip
        if folder.is_dir() and all((folder / f"frame_{f + 1:02}.jpg").is_file() for f in range(32)):
            out.append((clip, int(behavior_id)))
    return out


def test_mammalnet_label_is_the_second_column_the_behaviour_as_in_mammalnet_s_own_loader(tmp_path):
    assert "path label1 label" in (UPSTREAM / "mammalnet" / "composition_columns.txt").read_text()
    rng = np.random.default_rng(3)
    root = tmp_path / "mammalnet"
    rows = {"train": [], "test": []}
    for split, n in (("train", 9), ("test", 5)):
        for i in range(n):
            clip = f"{split[:2]}{i:02d}_{int(rng.integers(1, 4))}"
            behaviour, animal = i % 3 + 4, 100 + int(rng.integers(0, 73))  # animal ids > 12: a swap would show
            rows[split].append(f"trimmed_videos/{clip}.mp4 {behaviour} {animal}")
            n_frames = 31 if (split, i) == ("train", 7) else 32  # one clip short of frames: skipped by both
            if (split, i) != ("test", 4):  # one clip without a frames folder: skipped by both
                for k in range(1, n_frames + 1):
                    _jpeg(root / "frames" / clip / f"frame_{k:02d}.jpg", (40 * (i % 3), 90, 90))
    (root / "annotation" / "composition").mkdir(parents=True)
    for split, lines in rows.items():
        (root / "annotation" / "composition" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    task = mammalnet.load(root)
    for split, idx in (("train", task.train_idx), ("test", task.test_idx)):
        ref = _mammalnet_reference(root, split)
        groups, labels = task.examples.groups[idx], task.examples.labels[idx]
        got = sorted({(g, int(lab)) for g, lab in zip(groups.tolist(), labels.tolist(), strict=True)})
        assert got == sorted(ref) and len(idx) == 32 * len(ref)
    assert set(task.classes) == {"4", "5", "6"}  # behaviours, never the animal ids


# -------------------------------------------------------------------------------------------------- imagenet1k


def test_imagenet1k_real_class_order_is_the_sorted_wnids():
    with open(UPSTREAM / "imagenet1k" / "classes_head.tsv", newline="") as f:
        head = list(csv.DictReader(f, delimiter="\t"))
    wnids = [r["wnid"] for r in head]
    assert [int(r["index"]) for r in head] == list(range(len(head))) and wnids == sorted(wnids)
    assert wnids.index("n01751748") == 65  # ILSVRC2012_val_00000001's class
    assert dict(imagenet1k._FIXTURE_CLASSES) == {w: wnids.index(w) for w, _ in imagenet1k._FIXTURE_CLASSES}


def _hf_synset(path: str) -> str:
    """The Hugging Face loading script's label rule (imagenet-1k.py ``_generate_examples``)."""
    import os

    root, _ = os.path.splitext(path)
    _, synset_id = os.path.basename(root).rsplit("_", 1)
    return synset_id


def test_imagenet1k_labels_and_counts_equal_the_hub_rows_biobench_reads(tmp_path):
    """Every row of the train and validation shards (BioBench iterates all of them with ``datasets``) becomes one
    example whose wnid is the script's synset of ``image.path`` and whose class rank is the row's ``label``."""
    files = imagenet1k.make_fixture()
    downloads = tmp_path / "in1k" / ".downloads"
    downloads.mkdir(parents=True)
    rows = {}
    for split in ("train", "val"):
        rows[split] = []
        for name in imagenet1k.shard_names(split):
            (downloads / name).write_bytes(files[f"data/{name}"])
            rows[split] += pq.read_table(io.BytesIO(files[f"data/{name}"])).to_pylist()
    imagenet1k.download(tmp_path / "in1k", base_url="http://127.0.0.1:9/unused", show_progress=False)
    task = imagenet1k.load(tmp_path / "in1k")
    with open(UPSTREAM / "imagenet1k" / "classes_head.tsv", newline="") as f:
        rank = {r["wnid"]: int(r["index"]) for r in csv.DictReader(f, delimiter="\t")}
    for split, idx in (("train", task.train_idx), ("val", task.test_idx)):
        want = sorted((f"{split}/{PurePosixPath(r['image']['path']).name}", _hf_synset(r["image"]["path"]))
                      for r in rows[split])
        got = sorted(zip(task.examples.ids[idx].tolist(), task.examples.labels[idx].tolist(), strict=True))
        assert got == want and len(got) == len(rows[split])
        assert all(rank[_hf_synset(r["image"]["path"])] == r["label"] for r in rows[split])
    assert [rank[w] for w in task.classes] == sorted(rank[w] for w in task.classes)  # class codes = hub labels
    assert urlsplit(imagenet1k.hub_url()).path == "/datasets/ILSVRC/imagenet-1k/resolve/main"
