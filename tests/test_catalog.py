"""Every task in the catalog, from fixture to leaderboard: one test parametrized over `lifebench ls tasks`.

Each spec makes tiny files in its real layout (:meth:`TaskSpec.fixture`); they are served by a local HTTP server
under the spec's own paths, the spec is pointed there (:meth:`TaskSpec.mirrored`: a pinned checksum of a source is
then checked against the served file, and files without one are recorded and checked on reuse), and the task goes
through `lifebench download`, load, embed, its default protocol, scoring and the leaderboard. A task added later is
covered without a line here.
"""

from __future__ import annotations

import json
import math

import pytest

from lifebench.cli import main
from lifebench.metrics import METRICS
from lifebench.protocols import PROTOCOLS
from lifebench.tasks import CATALOG, SUITES, TASKS, catalog, resolve_task
from lifebench.tasks.base import KINDS
from lifebench.tasks.catalog import SUITE_ORDER, data_status, get_info

TEXT_MODEL = "open_clip:lbtest-tiny-clip@random:1"  # for protocols that need a text tower (zero-shot, multiple choice)


def test_catalog_suites_and_values_the_code_reads():
    assert {suite: len(names) for suite, names in SUITES.items()} == {"ecology": 10, "reference": 3,
                                                                      "tree-of-life": 10, "microscopy": 6}
    assert list(SUITES) == list(SUITE_ORDER)
    in_suites = [n for names in SUITES.values() for n in names]
    assert len(in_suites) == len(set(in_suites))  # every task in at most one suite
    assert set(CATALOG) - set(in_suites) == {"plankton-openset"}  # the one registered variant outside the suites
    assert not set(CATALOG) & set(TASKS.names())  # generated tasks and benchmarks never share a name
    for spec in CATALOG.values():
        assert spec.protocol in PROTOCOLS, spec.name
        assert spec.metric in METRICS, spec.name
        assert spec.kind in KINDS, spec.name
        assert spec.upstream, f"{spec.name}: name the upstream code and files it was checked against"
        assert spec.module.startswith("lifebench.tasks."), spec.name


def test_a_second_spec_under_a_taken_name_is_refused():
    from lifebench.tasks.catalog import register

    spec = get_info("herbarium19")
    with pytest.raises(ValueError, match="registered twice"):
        register(spec.__class__(**{**spec.__dict__, "module": "somebody.else"}))


@pytest.mark.parametrize("name", list(CATALOG))
def test_task_from_fixture_to_leaderboard(name, serve_task, tmp_path, monkeypatch, capsys, tiny_open_clip):
    spec, _, handler = serve_task(name)
    monkeypatch.setenv("KAGGLE_USERNAME", "lifebench-test")  # Birds 525 comes through Kaggle's API
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    data = tmp_path / "data"
    root, why = data_status(name, data)
    assert why is not None and f"lifebench download {name}" in why

    assert main(["-q", "download", name, "--dir", str(data)]) == 0
    assert data_status(name, data) == (root, None)
    assert {p for p, _ in handler.requests} >= {f"/{name}/{s.path}" for s in spec.sources}  # every source fetched
    task = resolve_task(name, data_root=data)
    assert (task.kind, task.metric, task.protocol) == (spec.kind, spec.metric, spec.protocol)
    assert len(task.test_idx) > 0

    n = len(handler.requests)
    assert main(["-q", "download", name, "--dir", str(data)]) == 0  # idempotent: verified files are kept
    assert len(handler.requests) == n

    model = TEXT_MODEL if spec.protocol == "zero-shot" else "pixels"
    store = tmp_path / "s.sqlite"
    capsys.readouterr()
    assert main(["-q", "run", "--task", name, "--data-root", str(data), "--model", model, "--store", str(store),
                 "--workers", "0", "--report-dir", str(tmp_path / "board")]) == 0
    out = capsys.readouterr().out
    assert f"{name} ({spec.metric}" in out
    board = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    cells = [c for c in board["cells"] if c["task"] == name]
    assert len(cells) == 1 and cells[0]["metric"] == spec.metric and cells[0]["backbone"] == model
    assert math.isfinite(cells[0]["point"]) and cells[0]["low"] <= cells[0]["point"] <= cells[0]["high"]


NEW_TASK = '''
from lifebench.tasks.catalog import Source, register
from lifebench.tasks.classfolders import ClassFolders, spec

SPEC = register(spec(
    name="mytask", display="My task", suite="ecology", modality="in-situ photos", kingdom="Plantae",
    protocol="logreg", metric="macro_f1", method="logistic probe, train/ -> val/", n_train=12, n_test=6,
    source="a test", license="CC0", size="tiny", base_url="https://example.org/mytask",
    sources=(Source("train.tar.gz", md5="0" * 32, top="train"), Source("val.tar.gz", md5="0" * 32, top="val")),
    layout=ClassFolders(train=("train",), test=("val",), fixture_classes={"train": ("a", "b"), "test": ("a", "b")}),
    upstream=("owner/repo@commit path/to/loader.py",),
))
'''


def test_a_new_task_is_one_file(serve_task, tmp_path, monkeypatch, capsys):
    """The docs' example of a new task (docs/tasks.md, "A task is one spec"): one module, nothing else."""
    import importlib
    import sys

    monkeypatch.setattr(catalog, "_SPECS", dict(catalog._SPECS))  # the registration ends with the test
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "mytask.py").write_text(NEW_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("mypkg.mytask")
    monkeypatch.delitem(sys.modules, "mypkg.mytask")
    assert "mytask" in CATALOG and "mytask" in SUITES["ecology"]
    serve_task("mytask")
    data = tmp_path / "data"
    assert main(["-q", "download", "mytask", "--dir", str(data)]) == 0
    assert main(["-q", "run", "--suite", "ecology", "--data-root", str(data), "--model", "pixels", "--store",
                 str(tmp_path / "s.sqlite"), "--workers", "0"]) == 0
    assert "mytask (macro_f1, n=4)" in capsys.readouterr().out
