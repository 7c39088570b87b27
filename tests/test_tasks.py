"""Task loading from a user's folder or manifest, splits and subsamples."""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import lifebench.tasks as tasks_pkg
from lifebench.errors import BadImageError, ConfigError, DataError, UnknownNameError
from lifebench.registry import Registry
from lifebench.tasks import (
    Task,
    load_task,
    resolve_task,
    stratified_split,
    subsample_per_class,
    subsample_total,
)

# ---------------------------------------------------------------- helpers


def write_image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower(), "PNG")
    Image.new("RGB", (4, 4), (value % 256, 0, 0)).save(path, format=fmt)
    return path


def make_classes(parent: Path, counts: dict[str, int], ext: str = ".png") -> None:
    for cls, n in counts.items():
        for i in range(n):
            write_image(parent / cls / f"img{i:02d}{ext}", i)


def expected_n_test(n: int, test_size: float) -> int:
    """The spec: round half up, at least 1, at most n - 1, and 0 for singleton classes."""
    if n < 2:
        return 0
    rounded = int((Decimal(str(test_size)) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return min(n - 1, max(1, rounded))


def split_counts(task: Task) -> tuple[Counter, Counter]:
    return Counter(task.train.labels.tolist()), Counter(task.test.labels.tolist())


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


# ---------------------------------------------------------------- folders


def test_class_folders_without_split(tmp_path: Path) -> None:
    root = tmp_path / "beetles"
    make_classes(root, {"b": 8, "a": 4, "c": 3})
    write_image(root / "a" / "deeper" / "more" / "x.png")  # nested images count for their class folder
    task = load_task(root, test_size=0.25)  # without it, so small a folder is cross-fitted (test_small_samples.py)
    assert task.name == "beetles"
    assert task.source == str(root.resolve())
    assert (task.metric, task.protocol) == ("macro_f1", "logreg")
    assert task.classes == ("a", "b", "c")
    ids = task.examples.ids.tolist()
    assert ids == sorted(ids)
    assert "a/deeper/more/x.png" in ids
    for i, p, lab in zip(ids, task.examples.paths.tolist(), task.examples.labels.tolist(), strict=True):
        assert Path(p) == root.resolve() / i
        assert i.split("/")[0] == lab
    train, test = split_counts(task)
    for cls, n in {"a": 5, "b": 8, "c": 3}.items():
        assert test[cls] == expected_n_test(n, 0.25)
        assert train[cls] == n - test[cls]
    assert task.split_source.startswith("stratified") and "seed 0" in task.split_source
    assert sorted(np.concatenate([task.train_idx, task.test_idx]).tolist()) == list(range(len(ids)))


def test_train_test_folders_share_one_sorted_label_map(tmp_path: Path, caplog) -> None:
    make_classes(tmp_path / "train", {"zebra": 3, "ant": 2, "moth": 2})
    make_classes(tmp_path / "test", {"moth": 1, "ant": 2})  # listed in another order; lacks zebra
    with caplog.at_level(logging.INFO, logger="lifebench.tasks.folder"):
        task = load_task(tmp_path, name="given")
    assert task.name == "given"
    assert task.classes == ("ant", "moth", "zebra")
    assert task.split_source == "given"
    assert all(i.startswith("train/") for i in task.train.ids.tolist())
    assert all(i.startswith("test/") for i in task.test.ids.tolist())
    assert split_counts(task) == (Counter(zebra=3, ant=2, moth=2), Counter(moth=1, ant=2))
    # integer codes mean the same class in both splits
    assert task.encode(np.array(["ant", "moth", "zebra"])).tolist() == [0, 1, 2]
    assert task.encode(task.test.labels).tolist() == [0, 0, 1]
    assert "zebra" in caplog.text


@pytest.mark.parametrize("test_dir", ["val", "validation", "Val"])
def test_val_folder_serves_as_test(tmp_path: Path, test_dir: str) -> None:
    make_classes(tmp_path / "train", {"a": 2, "b": 2})
    make_classes(tmp_path / test_dir, {"a": 1, "b": 1})
    task = load_task(tmp_path)
    assert len(task.test_idx) == 2
    assert all(i.startswith(f"{test_dir}/") for i in task.test.ids.tolist())
    assert task.split_source.startswith("given") and f"{test_dir}/" in task.split_source


def test_test_folder_wins_over_val(tmp_path: Path, caplog) -> None:
    make_classes(tmp_path / "train", {"a": 2, "b": 2})
    make_classes(tmp_path / "test", {"a": 1, "b": 1})
    make_classes(tmp_path / "val", {"a": 5, "b": 5})
    with caplog.at_level(logging.WARNING, logger="lifebench.tasks.folder"):
        task = load_task(tmp_path)
    assert task.split_source == "given"
    assert len(task.examples) == 6
    assert "val" in caplog.text


def test_extensions_hidden_files_and_sidecars(tmp_path: Path, caplog) -> None:
    write_image(tmp_path / "a" / "one.JPG")
    write_image(tmp_path / "a" / "two.Jpeg")
    write_image(tmp_path / "b" / "three.png")
    write_image(tmp_path / "b" / "four.PNG")
    write_image(tmp_path / "b" / ".hidden.png")
    write_image(tmp_path / "b" / ".cache" / "five.png")
    write_image(tmp_path / ".trash" / "six.png")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0junk")
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"\0junk")
    (tmp_path / "a" / "notes.txt").write_text("collected 2021")
    (tmp_path / "b" / "one.json").write_text("{}")
    (tmp_path / "README.md").write_text("root files that are not images are fine")
    with caplog.at_level(logging.INFO, logger="lifebench.tasks.folder"):
        task = load_task(tmp_path)
    assert task.examples.ids.tolist() == ["a/one.JPG", "a/two.Jpeg", "b/four.PNG", "b/three.png"]
    assert "ignored 2 text sidecar" in caplog.text


def test_loading_is_deterministic(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 6, "b": 7})
    t1, t2 = load_task(tmp_path, seed=3), load_task(tmp_path, seed=3)
    assert t1.examples.ids.tolist() == t2.examples.ids.tolist()
    assert t1.test_idx.tolist() == t2.test_idx.tolist()
    assert t1.manifest_hash() == t2.manifest_hash()
    t3 = load_task(tmp_path, seed=4, test_size=0.5)
    assert "50%" in t3.split_source and "seed 4" in t3.split_source
    assert split_counts(t3)[1] == Counter(a=3, b=expected_n_test(7, 0.5))


def test_manifest_hash_follows_file_changes(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 2, "b": 2})
    before = load_task(tmp_path)
    task_hash, examples_hash = before.manifest_hash(), before.examples.manifest_hash()
    assert load_task(tmp_path).manifest_hash() == task_hash
    assert load_task(tmp_path).examples.manifest_hash() == examples_hash
    target = tmp_path / "a" / "img00.png"
    st_ = target.stat()
    os.utime(target, ns=(st_.st_atime_ns, st_.st_mtime_ns + 5_000_000_000))
    after = load_task(tmp_path)
    assert after.test_idx.tolist() == before.test_idx.tolist()
    assert after.manifest_hash() != task_hash
    assert after.examples.manifest_hash() != examples_hash
    os.utime(target, ns=(st_.st_atime_ns, st_.st_mtime_ns))  # back to the old time: back to the old hash
    assert load_task(tmp_path).manifest_hash() == task_hash


def _message(excinfo) -> str:
    return str(excinfo.value)


def test_folder_errors_name_the_offender(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; give a folder of class folders or a CSV/Parquet manifest"):
        load_task(tmp_path / "nope")
    (tmp_path / "archive.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"archive\.zip"):
        load_task(tmp_path / "archive.zip")

    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_task(empty)

    one = tmp_path / "one"
    make_classes(one, {"only": 3})
    with pytest.raises(DataError, match="only one class \\('only'\\)"):
        load_task(one)

    single = tmp_path / "single"
    make_classes(single, {"a": 3, "lonely": 1})
    with pytest.raises(DataError) as e:
        load_task(single)
    assert _message(e) == ("class 'lonely' has only 1 image; a probe needs at least 2 per class: "
                           "add images or remove the class folder")

    loose = tmp_path / "loose"
    make_classes(loose, {"a": 2, "b": 2})
    write_image(loose / "stray.png")
    with pytest.raises(DataError, match="stray.png"):
        load_task(loose)


def test_non_image_files_are_listed(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 2, "b": 2})
    for i in range(5):
        (tmp_path / "a" / f"feat{i}.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(DataError) as e:
        load_task(tmp_path)
    msg = _message(e)
    assert msg.startswith("not an image file: a/feat0.npy, a/feat1.npy, a/feat2.npy (and 2 more); remove them")
    assert "out of the class folders" in msg


def test_zero_byte_images(tmp_path: Path, caplog) -> None:
    make_classes(tmp_path, {"a": 3, "b": 2})
    (tmp_path / "a" / "broken.png").write_bytes(b"")
    with pytest.raises(BadImageError) as e:
        load_task(tmp_path)
    assert "broken.png" in _message(e) and "--skip-bad-images" in _message(e)
    assert isinstance(e.value, DataError)
    with caplog.at_level(logging.WARNING, logger="lifebench.tasks.folder"):
        task = load_task(tmp_path, skip_bad_images=True)
    assert "a/broken.png" not in task.examples.ids.tolist()
    assert len(task.examples) == 5
    assert "broken.png" in caplog.text


def test_split_folder_errors(tmp_path: Path) -> None:
    mismatch = tmp_path / "mismatch"
    make_classes(mismatch / "train", {"Cat": 2, "dog": 2})
    make_classes(mismatch / "test", {"cat": 2, "dog": 1})
    with pytest.raises(DataError) as e:
        load_task(mismatch)
    assert _message(e).startswith("class 'cat' appears in test but not in train (train has 'Cat')")

    only_train = tmp_path / "only_train"
    make_classes(only_train / "train", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="train/ folder but no test/, val/ or validation/"):
        load_task(only_train)

    empty_test = tmp_path / "empty_test"
    make_classes(empty_test / "train", {"a": 2, "b": 2})
    (empty_test / "test").mkdir()
    with pytest.raises(DataError, match="test holds no images"):
        load_task(empty_test)


# ---------------------------------------------------------------- manifests


def _images_for_manifest(base: Path, counts: dict[str, int]) -> list[tuple[str, str]]:
    """(relative path as written, label) rows for images created under base/imgs."""
    rows = []
    for cls, n in counts.items():
        for i in range(n):
            write_image(base / "imgs" / f"{cls}_{i}.png", i)
            rows.append((f"imgs/{cls}_{i}.png", cls))
    return rows


def test_csv_manifest_with_aliases_and_relative_paths(tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "project"
    rows = _images_for_manifest(base, {"wren": 4, "finch": 4})
    manifest = write_csv(base / "birds.csv", ["FilePath", " Species "], [list(r) for r in reversed(rows)])
    monkeypatch.chdir(tmp_path)  # relative paths must resolve against the manifest's folder, not the cwd
    task = load_task("project/birds.csv", test_size=0.25)
    assert task.name == "birds"
    assert task.source == str(manifest.resolve())
    assert task.classes == ("finch", "wren")
    assert task.examples.ids.tolist() == sorted(r[0] for r in rows)  # id defaults to the path as written
    for i, p in zip(task.examples.ids.tolist(), task.examples.paths.tolist(), strict=True):
        assert Path(p) == base.resolve() / i
    assert split_counts(task)[1] == Counter(wren=1, finch=1)
    # row order does not change the task
    write_csv(base / "birds2.csv", ["path", "label"], [list(r) for r in rows])
    again = load_task(base / "birds2.csv", test_size=0.25)
    assert again.examples.ids.tolist() == task.examples.ids.tolist()
    assert again.test_idx.tolist() == task.test_idx.tolist()


def test_tsv_manifest_with_split_ids_and_absolute_paths(tmp_path: Path) -> None:
    rows = _images_for_manifest(tmp_path, {"a": 3, "b": 3})
    table = [[f"id{k}", str((tmp_path / p).resolve()), lab, "val" if k % 3 == 0 else "train"]
             for k, (p, lab) in enumerate(rows)]
    task = load_task(write_csv(tmp_path / "m.tsv", ["id", "image", "class", "Split"], table, delimiter="\t"))
    assert set(task.examples.ids.tolist()) == {f"id{k}" for k in range(6)}
    assert task.test.ids.tolist() == ["id0", "id3"]
    assert task.split_source == "given (split value 'val' used as test)"


def test_parquet_manifest_with_groups(tmp_path: Path) -> None:
    rows = _images_for_manifest(tmp_path, {"x": 8, "y": 8})
    groups = [f"site{k // 2}" for k in range(len(rows))]  # 8 groups of 2, each one class
    pq.write_table(pa.table({"image_path": [r[0] for r in rows], "category": [r[1] for r in rows],
                             "Group": groups}), tmp_path / "sites.parquet")
    task = load_task(tmp_path / "sites.parquet", seed=1)
    assert task.name == "sites"
    assert "by group" in task.split_source
    train_groups = set(task.train.groups.tolist())
    test_groups = set(task.test.groups.tolist())
    assert not train_groups & test_groups
    assert split_counts(task)[1] == Counter(x=2, y=2)  # 25% of 8 per class, in whole groups of 2


def test_parquet_integer_labels_and_given_split(tmp_path: Path) -> None:
    rows = _images_for_manifest(tmp_path, {"0": 2, "1": 2})
    pq.write_table(pa.table({"path": [r[0] for r in rows], "y": [int(r[1]) for r in rows],
                             "split": ["train", "test"] * 2}), tmp_path / "m.parquet")
    task = load_task(tmp_path / "m.parquet")
    assert task.classes == ("0", "1")
    assert task.split_source == "given"
    assert split_counts(task) == (Counter({"0": 1, "1": 1}), Counter({"0": 1, "1": 1}))


def test_manifest_errors_name_the_offender(tmp_path: Path) -> None:
    rows = _images_for_manifest(tmp_path, {"a": 3, "b": 3})
    table = [list(r) for r in rows]

    m = write_csv(tmp_path / "nolabel.csv", ["path", "taxon"], table)
    with pytest.raises(DataError, match="no label column .*found columns: 'path', 'taxon'"):
        load_task(m)

    blanks = [r[:] for r in table]
    blanks[1][1] = "  "
    blanks[4][1] = ""
    with pytest.raises(DataError, match="empty 'label' in line 3, line 6"):
        load_task(write_csv(tmp_path / "blank.csv", ["path", "label"], blanks))

    missing = table + [[f"gone/{k}.png", "a"] for k in range(5)]
    with pytest.raises(DataError) as e:
        load_task(write_csv(tmp_path / "missing.csv", ["path", "label"], missing))
    msg = _message(e)
    assert "5 listed file(s) do not exist: gone/0.png, gone/1.png, gone/2.png (and 2 more)" in msg
    assert f"resolved against {tmp_path.resolve()})" in msg

    with pytest.raises(DataError, match=r"duplicate path imgs/a_0\.png"):
        load_task(write_csv(tmp_path / "dup.csv", ["path", "label"], table + [table[0]]))
    with pytest.raises(DataError, match="duplicate id 'same'|duplicate id same"):
        load_task(write_csv(tmp_path / "dupid.csv", ["id", "path", "label"],
                            [["same" if k < 2 else f"u{k}", *r] for k, r in enumerate(table)]))

    bad_split = [[*r, "holdout" if k == 2 else "train"] for k, r in enumerate(table)]
    with pytest.raises(DataError, match="bad split value 'holdout' \\(first in line 4\\)"):
        load_task(write_csv(tmp_path / "split.csv", ["path", "label", "split"], bad_split))

    all_train = [[*r, "train"] for r in table]
    with pytest.raises(DataError, match="no test images"):
        load_task(write_csv(tmp_path / "alltrain.csv", ["path", "label", "split"], all_train))

    unseen = [[*r, "test" if r[1] == "b" else "train"] for r in table]
    with pytest.raises(DataError, match="class 'b' appears in test but not in train"):
        load_task(write_csv(tmp_path / "unseen.csv", ["path", "label", "split"], unseen))

    with pytest.raises(DataError, match="'species', 'class'|columns \\['class', 'species'\\]"):
        load_task(write_csv(tmp_path / "ambiguous.csv", ["path", "class", "species"], [[*r, r[1]] for r in table]))

    with pytest.raises(DataError, match="delimiter"):
        load_task(write_csv(tmp_path / "semi.csv", ["path;label"], [[f"{p};{lab}"] for p, lab in rows]))

    with pytest.raises(DataError, match="no rows"):
        load_task(write_csv(tmp_path / "norows.csv", ["path", "label"], []))

    single = table + [["imgs/a_0.png", "c"]]
    single[-1][0] = str(tmp_path / "imgs" / "a_0.png")  # same file, different id, its own class
    with pytest.raises(DataError, match="class 'c' has only 1 image.*remove its rows"):
        load_task(write_csv(tmp_path / "single.csv", ["path", "label"], single))


def test_manifest_zero_byte_file(tmp_path: Path) -> None:
    rows = _images_for_manifest(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "imgs" / "b_1.png").write_bytes(b"")
    with pytest.raises(BadImageError, match=r"b_1\.png"):
        load_task(write_csv(tmp_path / "m.csv", ["path", "label"], [list(r) for r in rows]))


# ---------------------------------------------------------------- resolve_task


def test_resolve_task_path_name_and_unknown(tmp_path: Path, monkeypatch) -> None:
    make_classes(tmp_path / "data", {"a": 2, "b": 2})
    assert resolve_task(tmp_path / "data", seed=2).examples.ids.tolist() == load_task(
        tmp_path / "data").examples.ids.tolist()

    registry: Registry = Registry("task")
    calls = []

    def factory(**kw):
        calls.append(kw)
        return load_task(tmp_path / "data", name="builtin", **kw)

    registry.register("toy-suite", factory)
    monkeypatch.setattr(tasks_pkg, "TASKS", registry)
    assert resolve_task("toy-suite", seed=5).name == "builtin"
    assert calls == [{"seed": 5}]
    with pytest.raises(UnknownNameError) as e:
        resolve_task("toy-suit")
    assert "neither a registered task nor an existing path" in _message(e)
    assert "toy-suite" in _message(e)


def test_registry_holds_the_generated_tasks_and_resolve_finds_the_benchmarks() -> None:
    from lifebench.tasks.catalog import CATALOG

    assert tasks_pkg.TASKS.names() == ["synthetic-shapes", "tuxpaint-organisms"]
    with pytest.raises(DataError, match="no train/ folder in .*lifebench download herbarium19"):
        resolve_task("herbarium19", data_root="/nonexistent-data-root")
    assert "herbarium19" in CATALOG and len(CATALOG) == 30


# ---------------------------------------------------------------- splits


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    test_size=st.sampled_from([0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_stratified_split_counts(sizes: list[int], test_size: float, seed: int) -> None:
    labels = np.array([f"c{k}" for k, n in enumerate(sizes) for _ in range(n)])
    labels = labels[np.random.default_rng(seed).permutation(len(labels))]
    train, test = stratified_split(labels, test_size=test_size, seed=seed)
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    for k, n in enumerate(sizes):
        assert int((labels[test] == f"c{k}").sum()) == expected_n_test(n, test_size)
        assert int((labels[train] == f"c{k}").sum()) >= 1


def test_stratified_split_seeds() -> None:
    labels = np.repeat(["a", "b", "c"], 20)
    a = stratified_split(labels, 0.25, seed=0)
    b = stratified_split(labels.tolist(), 0.25, seed=0)
    c = stratified_split(labels, 0.25, seed=1)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.2"])
def test_bad_test_size(bad) -> None:
    with pytest.raises(ConfigError, match="test_size"):
        stratified_split(["a", "a", "b", "b"], test_size=bad)


@settings(max_examples=60, deadline=None)
@given(
    group_sizes=st.lists(st.integers(1, 6), min_size=2, max_size=15),
    n_classes=st.integers(2, 4),
    seed=st.integers(0, 2**16),
)
def test_group_split_keeps_groups_whole(group_sizes: list[int], n_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = np.array([f"g{k}" for k, n in enumerate(group_sizes) for _ in range(n)])
    labels = rng.integers(0, n_classes, size=len(groups)).astype(str)
    train, test = stratified_split(labels, 0.25, seed=seed, groups=groups)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert not set(groups[train].tolist()) & set(groups[test].tolist())
    assert set(labels[train].tolist()) == set(labels.tolist())  # every class keeps a train image
    assert np.array_equal((train, test)[1], stratified_split(labels, 0.25, seed=seed, groups=groups)[1])


def test_group_split_with_singleton_groups_matches_plain_counts() -> None:
    labels = np.repeat(["a", "b", "c"], [4, 9, 13])
    groups = np.arange(len(labels)).astype(str)
    _, test = stratified_split(labels, 0.3, seed=2, groups=groups)
    got = Counter(labels[test].tolist())
    assert got == {c: expected_n_test(n, 0.3) for c, n in zip("abc", [4, 9, 13], strict=True)}


def test_group_split_seeds_differ() -> None:
    labels = np.repeat(["a", "b"], 40)
    groups = np.array([f"g{k // 5}" for k in range(80)])  # 8 groups of 5 per class: 10 = 2 groups
    s0 = stratified_split(labels, 0.25, seed=0, groups=groups)[1]
    s1 = stratified_split(labels, 0.25, seed=1, groups=groups)[1]
    assert Counter(labels[s0].tolist()) == Counter(a=10, b=10)
    assert not np.array_equal(s0, s1)


def test_grouped_task_with_no_possible_test(tmp_path: Path) -> None:
    rows = _images_for_manifest(tmp_path, {"a": 2, "b": 2})
    table = [[p, lab, f"grp-{lab}"] for p, lab in rows]  # each class is one group: nothing can go to test
    with pytest.raises(DataError, match="no split of the groups"):
        load_task(write_csv(tmp_path / "m.csv", ["path", "label", "group"], table))


# ---------------------------------------------------------------- subsamples


LABELS = np.array(list("aaaaaaaaaabbbbbcc" + "d" * 7))


def test_subsample_per_class() -> None:
    counts = Counter(LABELS.tolist())
    for n in (1, 3, 6, 20):
        idx = subsample_per_class(LABELS, n, seed=4)
        assert np.all(np.diff(idx) > 0)
        assert Counter(LABELS[idx].tolist()) == {c: min(n, k) for c, k in counts.items()}
    small, big = subsample_per_class(LABELS, 3, seed=4), subsample_per_class(LABELS, 6, seed=4)
    assert set(small.tolist()) <= set(big.tolist())
    assert np.array_equal(small, subsample_per_class(LABELS.tolist(), 3, seed=4))
    assert not np.array_equal(small, subsample_per_class(LABELS, 3, seed=5))
    with pytest.raises(ConfigError, match="n_per_class 0"):
        subsample_per_class(LABELS, 0)


@pytest.mark.parametrize("n", [1, 3, 4, 9, 13, 20, 23, 24, 100])
def test_subsample_total_is_even(n: int) -> None:
    avail = Counter(LABELS.tolist())
    idx = subsample_total(LABELS, n, seed=7)
    got = Counter(LABELS[idx].tolist())
    assert len(idx) == min(n, len(LABELS)) == len(set(idx.tolist()))
    top = max(got.values())
    for c in avail:
        assert got[c] <= avail[c]
        if got[c] < avail[c]:  # a class not used up is within one of the largest share
            assert got[c] >= top - 1
    assert np.array_equal(idx, subsample_total(LABELS, n, seed=7))


def test_subsample_total_nested_and_seeded() -> None:
    prev: set[int] = set()
    for n in range(1, len(LABELS) + 1):
        cur = set(subsample_total(LABELS, n, seed=1).tolist())
        assert prev <= cur
        prev = cur
    # the remainder of 5 over 4 classes goes to a seed-dependent class
    extras = {max(Counter(LABELS[subsample_total(LABELS, 5, seed=s)].tolist()).items(), key=lambda kv: kv[1])[0]
              for s in range(12)}
    assert len(extras) > 1


def test_read_csv_checks_columns_after_rewriting_the_header_and_refuses_non_utf8(tmp_path: Path) -> None:
    from lifebench.tasks.folder import read_csv

    path = tmp_path / "labels.csv"
    path.write_bytes("\ufeff FILE_NAME , CATEGORY\n1.jpg,Ailurus fulgens\n".encode())
    assert read_csv(path, ("FILE_NAME", "CATEGORY"), fix="fix it", header=str.strip) == [
        {"FILE_NAME": "1.jpg", "CATEGORY": "Ailurus fulgens"}]
    with pytest.raises(DataError, match=r"labels.csv has no FILE_NAME or CATEGORY column \(columns:  FILE_NAME ,  "
                                        r"CATEGORY\); fix it"):
        read_csv(path, ("FILE_NAME", "CATEGORY"), fix="fix it")
    path.write_bytes("file,label\n1.jpg,Tr\xe4ume\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"labels.csv is not UTF-8 text \(byte 0xe4 at offset 19, line 2\); fix it"):
        read_csv(path, ("file",), fix="fix it")


# ---------------------------------------------------------------- training-set sizes and shots


def _imgtask(tmp_path: Path) -> Task:
    """A folder task 'imgtask' of 11 images: ant 5 train + 1 test, bee 4 train + 1 test."""
    make_classes(tmp_path / "imgtask", {"ant": 6, "bee": 5})
    task = load_task(tmp_path / "imgtask", test_size=0.2)
    train, test = split_counts(task)
    assert (train, test) == ({"ant": 5, "bee": 4}, {"ant": 1, "bee": 1})
    return task


def test_n_train_larger_than_the_training_set_is_refused(tmp_path: Path) -> None:
    import dataclasses

    from lifebench.tasks.base import Examples

    task = _imgtask(tmp_path)
    for n in (10, 100):
        with pytest.raises(ConfigError) as e:
            task.with_n_train(n, seed=0)
        assert str(e.value) == (f"--n-train {n} is too large: task 'imgtask' has 9 training images; give --n-train "
                                "of at most 9")
    everything = task.with_n_train(9, seed=0)  # all of them: the name tells the truth
    assert everything.name == "imgtask@n9" and everything.train_idx.tolist() == task.train_idx.tolist()
    three = task.with_n_train(3, seed=1)
    assert three.name == "imgtask@n3" and len(three.train_idx) == 3 and set(three.train_idx) <= set(task.train_idx)
    assert three.test_idx.tolist() == task.test_idx.tolist()

    # a pooled training side counts clips: 4 training clips of 3 frames each, 2 test clips
    n = 18
    clips = np.array([f"clip{i // 3}" for i in range(n)])
    labels = np.array(["run" if (i // 3) % 2 else "walk" for i in range(n)])
    ex = Examples(ids=np.array([f"f{i}" for i in range(n)]), paths=np.array([f"/x/f{i}.png" for i in range(n)]),
                  labels=labels, groups=clips)
    pooled = Task(name="clips", examples=ex, train_idx=np.arange(12), test_idx=np.arange(12, 18), pool_train="max",
                  pool_test="max")
    with pytest.raises(ConfigError) as e:
        pooled.with_n_train(5)
    assert str(e.value) == "--n-train 5 is too large: task 'clips' has 4 training clips; give --n-train of at most 4"
    assert pooled.with_n_train(4).train_idx.tolist() == list(range(12))
    two = pooled.with_n_train(2)
    assert len(two.train_idx) == 6 and sorted(set(labels[two.train_idx])) == ["run", "walk"]
    one_clip = dataclasses.replace(pooled, train_idx=np.arange(3))
    with pytest.raises(ConfigError, match=r"^--n-train 2 is too large: task 'clips' has 1 training clip; give "):
        one_clip.with_n_train(2)


def test_shots_beyond_the_smallest_class_are_refused(tmp_path: Path) -> None:
    import dataclasses

    task = _imgtask(tmp_path)  # separate train and test: k support images come from train, queries are all test
    with pytest.raises(ConfigError) as e:
        task.with_shots(5, fold=0)
    assert str(e.value) == ("--shots 5 is too large: class 'bee' of task 'imgtask' has only 4 training images; "
                            "give --shots of at most 4")
    four = task.with_shots(4, fold=0)
    assert four.name == "imgtask@4shot"
    assert Counter(four.train.labels.tolist()) == {"ant": 4, "bee": 4}
    assert four.test_idx.tolist() == task.test_idx.tolist()

    # every image in both train and test (BioCLIP's protocol): k support images plus at least one query per class
    everyone = dataclasses.replace(task, train_idx=np.arange(11), test_idx=np.arange(11))
    for k in (5, 50):
        with pytest.raises(ConfigError) as e:
            everyone.with_shots(k, fold=1)
        assert str(e.value) == (f"--shots {k} is too large: class 'bee' of task 'imgtask' has only 5 images, and "
                                "k-shot needs k support images plus at least one query; give --shots of at most 4")
    most = everyone.with_shots(4, fold=1)
    assert most.name == "imgtask@4shot" and Counter(most.train.labels.tolist()) == {"ant": 4, "bee": 4}
    assert Counter(most.test.labels.tolist()) == {"ant": 2, "bee": 1}
    assert set(most.train_idx).isdisjoint(most.test_idx)

    # test images that are all training images too, with more training images besides
    ant = np.flatnonzero(task.examples.labels == "ant")
    bee = np.flatnonzero(task.examples.labels == "bee")
    overlap = dataclasses.replace(task, train_idx=np.arange(11), test_idx=np.concatenate([ant[:4], bee[:2]]))
    with pytest.raises(ConfigError) as e:
        overlap.with_shots(2)
    assert str(e.value) == ("--shots 2 is too large: class 'bee' of task 'imgtask' has only 2 test images, all of "
                            "them training images too, and k-shot needs at least one left as a query; give --shots "
                            "of at most 1")
    assert Counter(overlap.with_shots(1).test.labels.tolist())["bee"] >= 1

    # a class of one image leaves no k that works
    single = dataclasses.replace(everyone, train_idx=np.concatenate([ant, bee[:1]]),
                                 test_idx=np.concatenate([ant, bee[:1]]))
    with pytest.raises(ConfigError) as e:
        single.with_shots(1)
    assert str(e.value) == ("--shots 1 is too large: class 'bee' of task 'imgtask' has only 1 image, and k-shot "
                            "needs k support images plus at least one query; add images to it or remove the class")


def test_cli_refuses_oversized_n_train_and_shots_in_one_line(tmp_path: Path, capsys) -> None:
    from lifebench.cli import main

    _imgtask(tmp_path)
    common = ["run", "--task", str(tmp_path / "imgtask"), "--test-size", "0.2", "--model", "pixels", "--store",
              str(tmp_path / "s.sqlite"), "--workers", "0", "--device", "cpu"]
    assert main([*common, "--n-train", "100"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lifebench: error: --n-train 100 is too large: task 'imgtask' has 9 training images; give --n-train of at "
        "most 9"]
    assert main([*common, "--protocol", "few-shot", "--shots", "1,50"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lifebench: error: --shots 50 is too large: class 'bee' of task 'imgtask' has only 4 training images; give "
        "--shots of at most 4"]
