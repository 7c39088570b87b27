"""Readers of user files (class folders, manifests, results files) against hostile input: each bad input is one
DataError line naming the file and the value, exit 2 from the CLI, and nothing written; arbitrary bytes and rows
either parse or raise a LifebenchError, never anything else (hypothesis)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_folder
from lifebench.analysis import load_results
from lifebench.cli import main
from lifebench.errors import DataError, LifebenchError
from lifebench.tasks.folder import load_task, read_csv

SAMPLE = Path(__file__).parent / "data" / "biobench_results_sample.json"


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def _cli_refuses(argv: list[str], capsys: pytest.CaptureFixture, folder: Path) -> str:
    """Run the CLI; assert exit 2, one stderr line, no traceback and ``folder`` unchanged; return the line."""
    before = _snapshot(folder)
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(folder) == before
    return err.strip()


# ---------------------------------------------------------------- class folders


def test_class_folder_not_utf8_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_folder(tmp_path / "data", per_class=2)
    os.rename(data / "ant", os.fsencode(data) + b"/\xff\xfeant")
    with pytest.raises(DataError) as err:
        load_task(data)
    assert str(err.value) == (f"the folder b'\\xff\\xfeant' in {data} has a name that is not UTF-8; rename it to "
                              "UTF-8 text and rerun")
    line = _cli_refuses(["run", "--model", "pixels", "--task", str(data), "--store", str(tmp_path / "r.sqlite")],
                        capsys, tmp_path)
    assert line == f"lifebench: error: {err.value}"


def test_image_file_name_not_utf8_is_refused(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", per_class=2)
    os.rename(data / "bee" / "bee0.png", os.fsencode(data / "bee") + b"/\xe9t\xe9.png")
    with pytest.raises(DataError, match=r"the file b'\\xe9t\\xe9.png' in .*bee has a name that is not UTF-8"):
        load_task(data)


@pytest.mark.parametrize("unreadable", ["data/bee", "data/bee/deep", "data"])
def test_unreadable_folder_is_an_error_not_a_missing_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture, unreadable: str) -> None:
    """Before, an unreadable class folder was skipped with a warning and the task silently lost the class. The
    tests may run as root, whom chmod does not stop, so os.scandir (what os.walk and the folder scan use) fails
    for that folder as it would for another user."""
    data = make_folder(tmp_path / "data", per_class=2)
    (data / "bee" / "deep").mkdir()
    make_folder(tmp_path / "x", per_class=2)  # an image in bee/deep, so the class is not empty otherwise
    os.replace(tmp_path / "x" / "bee" / "bee0.png", data / "bee" / "deep" / "b.png")
    blocked = tmp_path / unreadable
    real = os.scandir

    def scandir(path="."):
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    msg = (f"cannot read the folder {blocked}: Permission denied; make it readable (chmod -R u+rX) or move it out "
           "of the data folder")
    with pytest.raises(DataError) as err:
        load_task(data)
    assert str(err.value) == msg
    store = tmp_path / "r.sqlite"
    assert _cli_refuses(["run", "--model", "pixels", "--task", str(data), "--store", str(store)], capsys,
                        tmp_path) == f"lifebench: error: {msg}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_chmod_000_class_folder_is_an_error(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", per_class=2)
    (data / "bee").chmod(0)
    try:
        with pytest.raises(DataError, match=f"cannot read the folder {data / 'bee'}: Permission denied"):
            load_task(data)
    finally:
        (data / "bee").chmod(0o755)


# ---------------------------------------------------------------- manifests


def test_manifest_field_over_the_csv_limit_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    m = tmp_path / "m.csv"
    m.write_text("path,label\nb.png,y\n" + "a" * 200_000 + ",x\n")
    msg = (f"manifest {m} line 3: a field is longer than 131072 characters (an unclosed quote?); close the quote or "
           "shorten the field")
    with pytest.raises(DataError) as err:
        load_task(m)
    assert str(err.value) == msg
    assert _cli_refuses(["run", "--model", "pixels", "--task", str(m), "--store", str(tmp_path / "r.sqlite")],
                        capsys, tmp_path) == f"lifebench: error: {msg}"


def test_manifest_not_utf8_names_the_byte_offset_in_the_file(tmp_path: Path) -> None:
    """The offset is the byte's place in the file, not in one of the 8 kB chunks a text stream decodes (which is
    what the message said before for a bad byte past the first chunk)."""
    m = tmp_path / "m.csv"
    body = b"\xef\xbb\xbfpath,label\n" + b"a.png,x\n" * 2000 + b"b.png,\xff\n"
    m.write_bytes(body)
    at = body.index(b"\xff")
    with pytest.raises(DataError) as err:
        load_task(m)
    assert str(err.value) == (f"manifest {m} is not UTF-8 text (byte 0xff at offset {at}, line 2002); save it as "
                              "UTF-8 CSV")
    assert at == 3 + 11 + 2000 * 8 + 6  # the byte-order mark counts: offsets are bytes of the file


def test_benchmark_csv_with_a_huge_field_is_one_data_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text('file,label\n"1.jpg,x\n' + "y" * 140_000 + "\n")
    with pytest.raises(DataError, match=f"CSV file {path} line 2: a field is longer than 131072 characters"):
        read_csv(path, ("file",), fix="download it again")


# ---------------------------------------------------------------- results files


def _biobench(**model0) -> dict:
    doc = json.loads(SAMPLE.read_text())
    doc["models"][0].update(model0)
    return doc


@pytest.mark.parametrize("field, value, expect", [
    ("release_ms", 1e300, "has release_ms 1e+300, which is no date"),
    ("release_ms", 10**400, "has release_ms 1000000000000000000"),
    ("release_ms", "2015-12-10", "has release_ms '2015-12-10', expected a finite number"),
    ("resolution", 224.5, "has resolution 224.5, expected a whole number"),
    ("params", [1], "has params [1], expected a finite number"),
])
def test_biobench_bad_model_values_name_file_field_and_value(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             field: str, value, expect: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_biobench(**{field: value})))
    with pytest.raises(DataError, match=f"^{path}: models\\[0\\] {expect}".replace("+", r"\+").replace("[1]",
                                                                                                        r"\[1\]")):
        load_results([path])
    line = _cli_refuses(["analyze", "--results", str(path), "--out", str(tmp_path / "a")], capsys, tmp_path)
    assert line.startswith(f"lifebench: error: {path}: models[0] has {field} ")


@pytest.mark.parametrize("body, expect", [
    (b'{"models": [\xff]}', r"results file .*r.json is not UTF-8 text \(byte 0xff at offset 12, line 1\)"),
    (b"[" * 100_000, r"r.json is not valid JSON \(maximum recursion depth"),
    (b'{"a": ' + b"9" * 5000 + b"}", r"r.json is not valid JSON \(Exceeds the limit \(4300 digits\)"),
    (b'{"models": [], "benchmark_tasks": [], "results": [{"task": ["x"], "model": "m", "mean": 1}]}',
     r"results\[0\] names task \['x'\], which is in neither"),
    (b'{"models": [], "benchmark_tasks": [{"name": "t"}], "results": [], "bests": [{"task": "t", "best": "m", '
     b'"ties": [["m"]]}]}', r"bests\[0\] has ties that are not all model names"),
    (b'{"schema": "lifebench-results/1", "results": "abc"}', "results must be a list"),
    (b'{"schema": "lifebench-results/1", "results": [{"task": "t", "model": "m", "point": 0.5, "tied": "yes"}]}',
     r"results\[0\] has tied 'yes', expected true or false"),
])
def test_results_files_bad_bytes_json_and_types_are_one_line(tmp_path: Path, body: bytes, expect: str) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(body)
    with pytest.raises(DataError, match=expect) as err:
        load_results([path])
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_results_csv_export_bad_cells_are_named(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("task,model,point,low\nt,m,0.5,n/a\n")
    with pytest.raises(DataError, match=r"results.csv: row 1 has low 'n/a', expected a number"):
        load_results([path])
    path.write_text("task,model,point,low,is_best\nt,m,0.5,nan,maybe\n")
    with pytest.raises(DataError, match=r"row 1 has is_best 'maybe', expected true or false"):
        load_results([path])
    path.write_text("task,model,point,low,is_best\nt,m,0.5,nan,TRUE\n")
    (score,) = load_results([path]).scores
    assert (score.point, score.low, score.is_best) == (0.5, None, True)


# ---------------------------------------------------------------- properties

_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_cell = st.one_of(st.text(max_size=12), st.sampled_from(["a.png", "b.png", "c.png", "train", "test", "val", "", " ",
                                                        "~nosuchuser-lb/x.png", "../a.png", "a\x00.png", '"', "x,y"]))


@_FAST
@given(st.binary(max_size=400))
def test_manifest_reader_takes_any_bytes(tmp_path: Path, data: bytes) -> None:
    m = tmp_path / "m.csv"
    m.write_bytes(data)
    try:
        load_task(m)
    except LifebenchError:
        pass


@_FAST
@given(header=st.lists(st.sampled_from(["path", "label", "split", "group", "id", "file", "genus", "x", ""]),
                       min_size=1, max_size=5),
       rows=st.lists(st.lists(_cell, min_size=1, max_size=5), max_size=10),
       tsv=st.booleans())
def test_manifest_reader_takes_any_rows(tmp_path: Path, header: list[str], rows: list[list[str]], tsv: bool) -> None:
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    sep = "\t" if tsv else ","
    m = tmp_path / ("m.tsv" if tsv else "m.csv")
    m.write_text("\n".join(sep.join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    try:
        task = load_task(m)
    except LifebenchError:
        return
    assert len(task.classes) >= 2 and len(task.test_idx) > 0


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)
_model = st.fixed_dictionaries({"ckpt": st.sampled_from(["m1", "m2"])}, optional={
    "display": _json, "family": _json, "resolution": _json, "params": _json, "release_ms": _json})
_result = st.fixed_dictionaries({"task": st.sampled_from(["t1", "t2", 3]), "model": st.sampled_from(["m1", "m2"]),
                                 "mean": _json}, optional={"ci_low": _json, "ci_high": _json})
_biobench_doc = st.fixed_dictionaries({
    "models": st.lists(_model, max_size=3) | _json, "results": st.lists(_result, max_size=4) | _json,
    "benchmark_tasks": st.just([{"name": "t1"}]) | _json,
}, optional={"prior_work_tasks": _json, "bests": _json, "meta": _json})
_export_doc = st.fixed_dictionaries({"schema": st.just("lifebench-results/1"), "results": st.lists(
    st.dictionaries(st.sampled_from(["task", "model", "point", "low", "tied", "is_best", "pvalue"]), _json),
    max_size=3) | _json}, optional={"models": _json, "tasks": _json, "suite": _json, "meta": _json, "notes": _json})


@_FAST
@given(doc=st.one_of(_biobench_doc, _export_doc, _json))
def test_results_reader_takes_any_json(tmp_path: Path, doc) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    try:
        rs = load_results([path])
    except LifebenchError:
        return
    for s in rs.scores:
        assert isinstance(s.task, str) and isinstance(s.model, str) and isinstance(s.point, float)


@_FAST
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".json", ".csv"]))
def test_results_reader_takes_any_bytes(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"r{suffix}"
    path.write_bytes(data)
    try:
        load_results([path])
    except LifebenchError:
        pass
