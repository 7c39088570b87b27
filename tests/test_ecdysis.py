"""Ecdysis: download from a local copy of the portal, the temporal split, and the CLI end to end."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import numpy as np
import pytest

from lifebench.cli import main
from lifebench.errors import ConfigError, DataError
from lifebench.tasks import resolve_task
from lifebench.tasks.catalog import data_status
from lifebench.tasks.ecology import ecdysis


def _csv_bytes(files: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(io.BytesIO(files[ecdysis.EXPORT_PATH + ecdysis.EXPORT_QUERY])) as z:
        return z.read(ecdysis.EXPORT_MEMBER)


def _csv_rows(files: dict[str, bytes]) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_csv_bytes(files).decode("utf-8-sig"))))


def _image_paths(files: dict[str, bytes]) -> list[str]:
    return [urlsplit(r["public_url"]).path for r in _csv_rows(files)]


def _label(r: dict[str, str]) -> str:
    return "|".join(r[c] for c in ("gbif_class", "gbif_order", "gbif_family", "gbif_genus", "gbif_species"))


def _biobench_split(rows: list[dict[str, str]]) -> tuple[set[str], set[str]]:
    """Reference: BioBench's split (stable sort by visit_date, earliest int(0.8 n) train), rows in id order.

    Mirrors biobench@6376d97 src/biobench/ecdysis/__init__.py Dataset.__init__ (a 1-row label: int(0.8) = 0 train).
    """
    by_label: dict[str, list[dict[str, str]]] = {}
    for r in sorted(rows, key=lambda r: int(r["id"])):
        by_label.setdefault(_label(r), []).append(r)
    train, test = set(), set()
    for members in by_label.values():
        members.sort(key=lambda r: r["visit_date"])
        k = int(0.8 * len(members))
        train |= {r["id"] for r in members[:k]}
        test |= {r["id"] for r in members[k:]}
    return train, test


@pytest.fixture
def served(http_server, monkeypatch):
    url, handler = http_server
    files = ecdysis.make_fixture(base_url=url)
    handler.files.update(files)
    monkeypatch.setattr(ecdysis, "_BACKOFF_S", 0.0)
    return url, handler, files


def _placed(root: Path, files: dict[str, bytes], rows: list[dict[str, str]] | None = None) -> Path:
    """``root`` as a finished download leaves it, written directly (no HTTP; faster tests)."""
    (root / "images").mkdir(parents=True)
    if rows is None:
        (root / "metadata.csv").write_bytes(_csv_bytes(files))
    else:
        with open(root / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=ecdysis.COLUMNS)
            w.writeheader()
            w.writerows(rows)
    for path in _image_paths(files):
        (root / "images" / PurePosixPath(path).name).write_bytes(files[path])
    return root


def _image_requests(handler) -> Counter:
    return Counter(p for p, _ in handler.requests if p.startswith(ecdysis.IMAGE_PATH))


def test_fixture_has_the_real_columns_and_absolute_image_urls(served):
    url, _, files = served
    data = _csv_bytes(files)
    assert data.startswith(b"\xef\xbb\xbf")  # pandas to_csv(encoding="utf-8-sig"), as the portal writes it
    header = data.decode("utf-8-sig").split("\n", 1)[0]
    assert tuple(header.split(",")) == ecdysis.COLUMNS
    rows = _csv_rows(files)
    assert all(r["public_url"].startswith(f"{url}{ecdysis.IMAGE_PATH}/") for r in rows)
    assert all(PurePosixPath(r["image_thumbnail_large"]).name == PurePosixPath(r["public_url"]).name for r in rows)
    assert sorted(Counter(_label(r) for r in rows).values()) == [1, 3, 4, 5, 6]
    assert ecdysis.make_fixture(base_url=url) == files  # deterministic for a seed


def test_download_retries_a_failed_image_records_checksums_and_is_idempotent(served, tmp_path):
    url, handler, files = served
    paths = _image_paths(files)
    handler.cut_after[paths[0]] = 20  # the first response for this image stops after 20 bytes
    root = tmp_path / "ecdysis"
    ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False, workers=3)
    assert _image_requests(handler) == Counter({p: 2 if p == paths[0] else 1 for p in paths})
    assert (root / "metadata.csv").read_bytes() == _csv_bytes(files)
    for p in paths:
        assert (root / "images" / PurePosixPath(p).name).read_bytes() == files[p]
    manifest = json.loads((root / ecdysis.MANIFEST).read_text())["files"]
    assert manifest == {PurePosixPath(p).name: {"size": len(files[p]), "sha256": hashlib.sha256(files[p]).hexdigest()}
                        for p in paths}
    assert not list((root / "images").glob("*.part")) and ecdysis.missing(root) is None

    n = len(handler.requests)
    ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False)
    assert len(handler.requests) == n  # nothing fetched again, not even the page
    (root / ecdysis.MANIFEST).unlink()  # as if killed before the manifest was written: files are adopted
    ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False)
    assert len(handler.requests) == n
    assert json.loads((root / ecdysis.MANIFEST).read_text())["files"] == manifest


def test_interrupted_download_resumes_without_refetching_finished_images(served, tmp_path, monkeypatch):
    url, handler, files = served
    real_get, calls = ecdysis._get, []

    def dies_on_the_fifth_image(u, **kw):
        if ecdysis.IMAGE_PATH in u:
            calls.append(u)
            if len(calls) == 5:
                raise KeyboardInterrupt
        return real_get(u, **kw)

    monkeypatch.setattr(ecdysis, "_get", dies_on_the_fifth_image)
    root = tmp_path / "ecdysis"
    with pytest.raises(KeyboardInterrupt):
        ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False, workers=1)
    present = {p.name for p in (root / "images").iterdir()}
    # 4 fetched before the interrupt, plus the one the worker had already started when it came (it finishes).
    assert present == {PurePosixPath(p).name for p in _image_requests(handler)} and 4 <= len(present) <= 5
    recorded = set(json.loads((root / ecdysis.MANIFEST).read_text())["files"])
    assert recorded and recorded <= present  # written when the run stopped
    n = len(_csv_rows(files))
    assert ecdysis.missing(root) == (f"{n - len(present)} of {n} images listed in metadata.csv are absent from {root / 'images'}; "
                                     "rerun the download to fetch them, or run with --skip-bad-images to leave "
                                     "them out")

    monkeypatch.setattr(ecdysis, "_get", real_get)
    ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False, workers=2)
    assert set(_image_requests(handler).values()) == {1}  # every image fetched exactly once over both runs
    assert len(_image_requests(handler)) == n
    assert ecdysis.missing(root) is None


def test_corrupted_or_truncated_image_is_detected_and_fetched_again(served, tmp_path, caplog):
    url, handler, files = served
    root = tmp_path / "ecdysis"
    ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False)
    paths = _image_paths(files)
    flipped, cut = (root / "images" / PurePosixPath(p).name for p in paths[:2])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    flipped.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:50])
    with caplog.at_level(logging.WARNING, logger="lifebench.tasks.ecology.ecdysis"):
        ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False)
    assert f"{flipped.name} differs from its recorded size/SHA-256" in caplog.text
    assert f"{cut.name} differs from its recorded size/SHA-256" in caplog.text
    assert _image_requests(handler) == Counter({p: 2 if p in paths[:2] else 1 for p in paths})
    assert flipped.read_bytes() == files[paths[0]] and cut.read_bytes() == files[paths[1]]


def test_failed_image_is_reported_and_load_needs_it_or_skips_it(served, tmp_path):
    url, handler, files = served
    rows = _csv_rows(files)
    gone = urlsplit(rows[0]["public_url"]).path
    del handler.files[gone]  # 404 upstream: not retried
    root = tmp_path / "data" / "ecdysis"
    with pytest.raises(DataError, match=rf"1 of {len(rows)} images failed to download \(.*{gone}: HTTP Error 404"):
        ecdysis.download(root, page_url=url + ecdysis.PAGE_PATH, show_progress=False)
    assert _image_requests(handler)[gone] == 1
    assert len(list((root / "images").iterdir())) == len(rows) - 1
    why = data_status("ecdysis", tmp_path / "data")[1]
    assert why.startswith(f"1 of {len(rows)} images listed in metadata.csv are absent") and "--skip-bad-images" in why
    name = PurePosixPath(gone).name
    with pytest.raises(DataError, match=rf"1 of {len(rows)} images .* absent .*: {name}; run: lifebench download "
                                        "ecdysis"):
        ecdysis.load(root)
    task = ecdysis.load(root, skip_bad_images=True)
    assert len(task.examples) == len(rows) - 1 and rows[0]["id"] not in task.examples.ids.tolist()


def test_missing_metadata_and_a_page_without_an_export_link(served, tmp_path):
    url, handler, _ = served
    assert ecdysis.missing(tmp_path) == f"no metadata.csv in {tmp_path}"
    with pytest.raises(DataError, match="no metadata.csv in .*run: lifebench download ecdysis"):
        ecdysis.load(tmp_path)
    handler.files[ecdysis.PAGE_PATH] = b'<html><a href="/other.zip">x</a></html>'
    with pytest.raises(DataError, match="no link to the reviewed export"):
        ecdysis.download(tmp_path / "e", page_url=url + ecdysis.PAGE_PATH, show_progress=False)
    # A relative link is resolved against the page.
    handler.files[ecdysis.PAGE_PATH] = f'<a href="{ecdysis.EXPORT_PATH}{ecdysis.EXPORT_QUERY}">CSV</a>'.encode()
    ecdysis.download(tmp_path / "e", page_url=url + ecdysis.PAGE_PATH, show_progress=False)
    assert ecdysis.missing(tmp_path / "e") is None


def test_temporal_split_is_biobench_s_with_test_rows_never_earlier(served, tmp_path):
    _, _, files = served
    rows = _csv_rows(files)
    task = ecdysis.load(_placed(tmp_path / "a", files))
    by_id = {r["id"]: r for r in rows}
    assert sorted(task.examples.ids.tolist()) == sorted(by_id)
    assert task.classes == tuple(sorted({_label(r) for r in rows}))
    assert [by_id[i] and _label(by_id[i]) for i in task.examples.ids.tolist()] == task.examples.labels.tolist()
    assert all(Path(p).is_file() for p in task.examples.paths.tolist())
    train, test = set(task.train.ids.tolist()), set(task.test.ids.tolist())
    assert (train, test) == _biobench_split(rows)
    counts = Counter(_label(r) for r in rows)
    for label, n in counts.items():
        tr = [by_id[i]["visit_date"] for i in train if _label(by_id[i]) == label]
        te = [by_id[i]["visit_date"] for i in test if _label(by_id[i]) == label]
        assert (len(tr), len(te)) == (4 * n // 5, n - 4 * n // 5)
        assert not tr or max(tr) <= min(te)
    assert task.metric == "macro_f1" and task.protocol == "logreg" and task.split_source.startswith("temporal")
    assert task.open_set  # the 1-row label is a test class without training images, as in BioBench

    # The CSV's row order does not matter; ties in visit_date go by id (the smaller id trains).
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    again = ecdysis.load(_placed(tmp_path / "b", files, shuffled))
    assert set(again.train.ids.tolist()) == train
    label = max(counts, key=counts.get)
    tied = [dict(r, visit_date="2023-07-01") for r in rows if _label(r) == label]
    others = [r for r in rows if _label(r) != label]
    task = ecdysis.load(_placed(tmp_path / "c", files, tied[::-1] + others))
    ids = sorted((r["id"] for r in tied), key=int)
    k = 4 * len(ids) // 5
    assert sorted(i for i in task.train.ids.tolist() if i in ids) == ids[:k]
    assert sorted(i for i in task.test.ids.tolist() if i in ids) == ids[k:]
    with pytest.raises(ConfigError, match="fixed temporal split"):
        ecdysis.load(tmp_path / "a", test_size=0.3)


def test_temporal_split_keeps_both_sides_for_every_label_of_two_or_more():
    for n in range(1, 40):
        labels, dates, ids = ["a"] * n + ["b"] * 2, [f"2022-01-{d % 28 + 1:02d}" for d in range(n + 2)], \
            [str(i) for i in range(n + 2)]
        train, test = ecdysis.temporal_split(labels, dates, ids)
        assert sorted(train.tolist() + test.tolist()) == list(range(n + 2))
        n_test_a = sum(1 for i in test.tolist() if labels[i] == "a")
        assert n_test_a == n - int(0.8 * n) and (n == 1 or 1 <= n_test_a < n)


def test_cli_downloads_then_runs_ecdysis_end_to_end(served, tmp_path, capsys, monkeypatch):
    url, _, files = served
    monkeypatch.setattr(ecdysis, "PAGE_URL", url + ecdysis.PAGE_PATH)
    data_root = tmp_path / "data"
    assert main(["-q", "download", "ecdysis", "--dir", str(data_root)]) == 0
    assert "ecdysis: data ready" in capsys.readouterr().out
    task = resolve_task("ecdysis", data_root=data_root)
    n_test = len(_biobench_split(_csv_rows(files))[1])
    assert len(task.test_idx) == n_test
    assert main(["-q", "run", "--task", "ecdysis", "--data-root", str(data_root), "--model", "pixels", "--store",
                 str(tmp_path / "s.sqlite"), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "1 experiments run" in out and f"ecdysis (macro_f1, n={n_test})" in out
