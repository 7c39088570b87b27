"""The notebook API: docs/python.md's worked example runs as written, and the API gives the command line's numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import lifebench as lb
from lifebench.errors import ConfigError

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The namespace after running every python block of docs/python.md, in order, in a fresh folder."""
    pytest.importorskip("pandas")
    folder = tmp_path_factory.mktemp("notebook")
    blocks = _blocks()
    assert len(blocks) >= 5
    namespace: dict = {}
    cwd = Path.cwd()
    try:
        import os

        os.chdir(folder)
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the documented example itself
    finally:
        os.chdir(cwd)
    return namespace, folder


def test_the_documented_example_runs_and_gives_the_reports_numbers(example, capsys) -> None:
    ns, folder = example
    board = ns["board"]
    assert sorted(board.model) == ["pixels", "random-vit"] and set(board.task) == {"images"}
    assert set(board.metric) == {"macro_f1"} and board.is_best.sum() == 1
    assert ((board.low <= board.point) & (board.point <= board.high)).all()
    # the leaderboard equals what `lifebench report` computes from the same store
    from lifebench.report import build_leaderboard

    cells = {c.backbone: c for c in build_leaderboard(folder / "results.sqlite").cells}
    for row in board.itertuples():
        assert (row.point, row.low, row.high) == (cells[row.model].point, cells[row.model].low, cells[row.model].high)
    preds = ns["preds"]
    assert len(preds) == 2 * 24 and set(preds.example_id.str.split("/").str[0]) == {"ant", "bee", "cod"}
    from sklearn.metrics import f1_score

    for model, rows in preds.groupby("model"):  # the stored predictions give the leaderboard's macro F1
        assert f1_score(rows.y_true, rows.y_pred, average="macro") == pytest.approx(cells[model].point, abs=1e-12)
    assert ns["accuracy"]["pixels"] > 0.6  # colour-coded classes: raw pixels separate them well
    assert (folder / "predictions.parquet").is_file() and (folder / "leaderboard.csv").is_file()
    assert ns["again"].board().to_text() == build_leaderboard(folder / "results.sqlite").to_text()
    assert ns["vectors"].ndim == 2 and ns["vectors"].shape[0] == 24
    assert list(ns["ids"]) == sorted(preds.example_id.unique())


def test_evaluate_reuses_the_store_and_checks_options_like_the_cli(example) -> None:
    _, folder = example
    again = lb.evaluate("pixels", folder / "images", store=folder / "results.sqlite", workers=0)
    assert again.tasks == ["images"] and len(again.leaderboard) == 2  # both models of the task, nothing rerun
    with pytest.raises(ConfigError, match="not an option of lifebench run.*batch_size"):
        lb.evaluate("pixels", folder / "images", store=folder / "results.sqlite", batchsize=3)
    with pytest.raises(ConfigError, match="--workers"):
        lb.evaluate("pixels", folder / "images", store=folder / "results.sqlite", workers=-1)
    with pytest.raises(ConfigError, match="no results store"):
        lb.load_store(folder / "missing.sqlite")


def test_tables_are_lists_of_dicts_without_pandas(example, monkeypatch) -> None:
    _, folder = example
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    results = lb.load_store(folder / "results.sqlite")
    rows = results.predictions("images")
    assert isinstance(rows, list) and isinstance(rows[0], dict) and len(rows) == 48
    assert {"task", "model", "example_id", "y_true", "y_pred", "score", "topk"} <= rows[0].keys()
    assert isinstance(results.leaderboard, list) and len(results.leaderboard) == 2
    tasks = lb.tasks()
    assert isinstance(tasks, list) and any(t["name"] == "plankton" for t in tasks)
    assert any(m["name"] == "pixels" and m["offline"] for m in lb.models())


def test_import_lifebench_stays_light() -> None:
    code = ("import sys, lifebench as lb; assert callable(lb.evaluate); "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'lifebench.api') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['lifebench.api']"  # attribute access imports the API module, not torch or pandas
    out = subprocess.run([sys.executable, "-c", "import sys, lifebench; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    # lb.tasks() works before and after the lifebench.tasks package is imported
    code = "import lifebench as lb; a = lb.tasks(); import lifebench.tasks; b = lb.tasks(); print(len(a) == len(b))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
