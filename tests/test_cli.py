"""The command line end to end on generated images, and one clear line for every bad input."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_folder, write_image
from lifebench.cli import main


def run_cli(args, capsys):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def n_experiments(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as con:
        return con.execute("select count(*) from experiments").fetchone()[0]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LIFEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LIFEBENCH_STORE", str(tmp_path / "results" / "results.sqlite"))
    return tmp_path


def test_help_on_every_subcommand():
    for cmd in ([], ["run"], ["demo"], ["embed"], ["ls"], ["report"]):
        res = subprocess.run([sys.executable, "-m", "lifebench", *cmd, "--help"], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert "usage: lifebench" in res.stdout


def test_run_twice_second_run_does_no_forward_pass_and_no_duplicate(env, capsys):
    data = make_folder(env / "data", per_class=8)
    store = env / "results" / "results.sqlite"
    args = ["run", "--task", data, "--model", "pixels", "--model", "random-vit", "--workers", "0"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "2 experiments run, 0 already in the store; 48 images through a model" in out
    assert n_experiments(store) == 2
    assert "pixels" in out and "random-vit" in out and "[" in out  # leaderboard with intervals
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "0 experiments run, 2 already in the store; 0 images through a model" in out
    assert n_experiments(store) == 2
    # --force recomputes the probes from cached embeddings and replaces, never duplicates
    code, out, err = run_cli([*args, "--force"], capsys)
    assert code == 0, err
    assert "2 experiments run, 0 already in the store; 0 images through a model" in out
    assert n_experiments(store) == 2
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json"):
        assert (store.parent / name).exists()
    board = json.loads((store.parent / "leaderboard.json").read_text())
    assert board["cells"], board


def test_dry_run_lists_the_plan(env, capsys):
    data = make_folder(env / "data", per_class=4)
    code, out, _ = run_cli(["run", "--task", data, "--model", "pixels", "--workers", "0"], capsys)
    assert code == 0
    code, out, _ = run_cli(["run", "--task", data, "--model", "pixels", "--model", "random-vit", "--dry-run"], capsys)
    assert code == 0
    assert "plan: 2 jobs" in out and "skip: done" in out and "  run " in out


def test_split_layout_and_embed_export(env, capsys):
    data = make_folder(env / "data", per_class=9, layout="split")
    out_npy = env / "emb.npy"
    code, out, err = run_cli(["embed", "--task", data, "--model", "pixels", "--out", out_npy, "--workers", "0"], capsys)
    assert code == 0, err
    vec = np.load(out_npy)
    ids = (env / "emb.ids.csv").read_text().splitlines()
    assert vec.shape[0] == 27 and len(ids) == 28 and ids[0] == "row,id,label,split"
    out_pq = env / "emb.parquet"
    code, out, err = run_cli(["embed", "--task", data, "--model", "pixels", "--out", out_pq], capsys)
    assert code == 0 and "(from cache)" in out
    import pyarrow.parquet as pq

    table = pq.read_table(out_pq)
    assert table.num_rows == 27 and set(table.column("split").to_pylist()) == {"train", "test"}
    np.testing.assert_allclose(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), vec)


def _bad_input_cases(root: Path):
    rng = np.random.default_rng(0)
    cases = {}
    cases["missing path"] = (["--task", root / "nope"], "does not exist")
    (root / "empty").mkdir()
    cases["empty folder"] = (["--task", root / "empty"], "no images")
    one = root / "one"
    for i in range(3):
        write_image(one / "ant" / f"{i}.png", rng)
    cases["one class"] = (["--task", one], "only one class")
    single = make_folder(root / "single", per_class=3)
    for p in (single / "cod").iterdir():
        if p.name != "cod0.png":
            p.unlink()
    cases["single image class"] = (["--task", single], "only 1 image")
    zero = make_folder(root / "zero", per_class=3)
    (zero / "ant" / "ant1.png").write_bytes(b"")
    cases["zero-byte image"] = (["--task", zero], "ant1.png")
    nonimg = make_folder(root / "nonimg", per_class=3)
    (nonimg / "bee" / "notes.bin").write_bytes(b"\x00\x01")
    cases["non-image file"] = (["--task", nonimg], "notes.bin")
    corrupt = make_folder(root / "corrupt", per_class=3)
    (corrupt / "bee" / "bee2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    cases["corrupt image"] = (["--task", corrupt], "bee2.png")
    trunc = make_folder(root / "trunc", per_class=3)
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(trunc / "cod" / "cod1.jpg", quality=95)
    data = (trunc / "cod" / "cod1.jpg").read_bytes()
    (trunc / "cod" / "cod1.jpg").write_bytes(data[: len(data) // 2])
    cases["truncated image"] = (["--task", trunc], "cod1.jpg")
    good = make_folder(root / "good", per_class=3)
    cases["unknown backbone"] = (["--task", good, "--model", "efficientnet-lite3"], "efficientnet-lite0")
    cases["unknown task name"] = (["--task", "tuxpaint-organism"], "tuxpaint-organisms")
    man = root / "manifest.csv"
    man.write_text("path,label\ngood/ant/ant0.png,ant\ngood/ant/missing.png,ant\ngood/bee/bee0.png,bee\n")
    cases["manifest missing files"] = (["--task", man], "missing.png")
    man2 = root / "manifest2.csv"
    man2.write_text("path,label\ngood/ant/ant0.png,ant\ngood/ant/ant1.png,\ngood/bee/bee0.png,bee\n")
    cases["manifest empty labels"] = (["--task", man2], "label")
    cases["negative workers"] = (["--task", good, "--workers", "-1"], "argument --workers: -1 is below 0")
    cases["zero batch"] = (["--task", good, "--batch-size", "0"], "argument --batch-size: 0 is below 1")
    cases["negative split seed"] = (["--task", good, "--split-seed", "-5"], "argument --split-seed: -5 is below 0")
    cases["negative seed"] = (["--task", good, "--seed", "-1"], "argument --seed: -1 is below 0")
    cases["unknown device"] = (["--task", good, "--device", "tpu"], "tpu")
    return cases


def test_every_bad_input_gives_one_line_and_exit_2(env, capsys):
    root = env / "bad"
    root.mkdir()
    for name, (args, expected) in _bad_input_cases(root).items():
        if "--model" not in args:
            args = [*args, "--model", "pixels"]
        store = env / f"new-{name.replace(' ', '-')}" / "store.sqlite"
        workers = [] if "--workers" in args else ["--workers", "0"]
        code, out, err = run_cli(["-q", "run", *args, "--store", store, *workers], capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, (name, out, err)
        assert len(lines) == 1 and lines[0].startswith(("lifebench: error:", "lifebench run: error:")), (name, err)
        assert expected in lines[0], (name, lines[0])
        assert "Traceback" not in err
        assert not store.parent.exists(), name  # nothing half-written: not even the store or its folder


def test_reading_commands_write_nothing_and_refuse_what_is_not_a_store(env, capsys):
    task = make_folder(env / "good", per_class=4)
    store = env / "results" / "results.sqlite"
    assert run_cli(["-q", "run", "--task", task, "--model", "pixels", "--workers", "0", "--dry-run"], capsys)[0] == 0
    assert not store.parent.exists()  # a dry run plans without creating the store
    assert run_cli(["-q", "run", "--task", task, "--model", "pixels", "--workers", "0"], capsys)[0] == 0
    out = env / "out"
    assert run_cli(["-q", "report", "--store", store, "--out", out], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(["-q", "report", "--store", store, "--out", out, "--metric", "mean_ap"], capsys)
    assert code == 2 and "nothing in" in err and "with --metric mean_ap" in err and "macro_f1" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the good report is left as it was
    code, out_text, _ = run_cli(["report", "--store", store, "--out", out, "--confidence", "0.9999"], capsys)
    assert code == 0 and "[99.99% CI]" in out_text
    code, _, err = run_cli(["-q", "report", "--store", store, "--out", store / "sub"], capsys)
    assert code == 2 and f"--out {store / 'sub'}: {store} is a file, not a folder" in err

    other = env / "other.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE notes (text TEXT)")
    empty = env / "empty.sqlite"
    empty.write_bytes(b"")
    snapshot = {p: p.read_bytes() for p in (other, empty)}
    for args, expected in ((["report", "--store", other], "an SQLite database of another program (tables: notes)"),
                           (["report", "--store", empty], "is empty, not a lifebench results store"),
                           (["run", "--task", task, "--model", "pixels", "--store", other], "another program"),
                           (["merge", env / "into.sqlite", store, other], "another program")):
        code, _, err = run_cli(["-q", *args], capsys)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (args, err)
    assert {p: p.read_bytes() for p in (other, empty)} == snapshot
    assert not (env / "into.sqlite").exists()  # every source is checked before the merge writes anything


def test_skip_bad_images_counts_and_continues(env, capsys):
    data = make_folder(env / "data", per_class=6)
    (data / "bee" / "bee2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    code, out, err = run_cli(["run", "--task", data, "--model", "pixels", "--skip-bad-images", "--workers", "0"],
                             capsys)
    assert code == 0, err
    assert "1 of 18 images could not be read" in err


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--task", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model" in err[0]
    code, _, err = run_cli(["run", "--model", "pixels"], capsys)
    assert code == 2 and err.strip() == "lifebench: error: give at least one --task (a folder, manifest or task name) or --suite"


def test_ls_lists_registries(capsys):
    for what, expected in [("backbones", "efficientnet-lite0"), ("protocols", "logreg"), ("metrics", "macro_f1"),
                           ("tasks", "tuxpaint-organisms")]:
        code, out, _ = run_cli(["ls", what], capsys)
        assert code == 0 and expected in out


_SLOW_RUN = """
import sys, time
import lifebench.runner.run as run
original = run._run_one
def slow(*a, **k):
    result = original(*a, **k)
    print("stored", flush=True)
    time.sleep(30)
    return result
run._run_one = slow
from lifebench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_resumes_without_losing_or_duplicating(env):
    import signal
    import time

    data = make_folder(env / "data", per_class=6)
    store = env / "store.sqlite"
    args = ["run", "--task", str(data), "--model", "pixels", "--model", "random-vit", "--store", str(store),
            "--workers", "0"]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, *args], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.stdout.readline().strip() != "stored":
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert n_experiments(store) == 1
    with sqlite3.connect(store) as con:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    res = subprocess.run([sys.executable, "-m", "lifebench", *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "1 experiments run, 1 already in the store" in res.stdout
    assert n_experiments(store) == 2


def test_bootstrap_seed_means_the_same_in_every_command(env, capsys):
    """``--bootstrap-seed`` seeds the intervals in run's leaderboard and in report; ``run --seed`` stays the probe
    seed, and ``report --seed`` still works as a hidden alias of ``--bootstrap-seed`` for existing scripts."""
    from lifebench.cli import build_parser

    parser = build_parser()
    for command in (["report"], ["analyze"], ["taxonomy", "--task", "t"], ["microscopy-report"], ["export", "--out",
                                                                                                   "x.csv"]):
        assert parser.parse_args([*command, "--bootstrap-seed", "7"]).bootstrap_seed == 7
        assert parser.parse_args([*command, "--seed", "7"]).bootstrap_seed == 7  # the old spelling
    run = parser.parse_args(["run", "--model", "pixels", "--seed", "3", "--bootstrap-seed", "5"])
    assert (run.seed, run.bootstrap_seed) == ([3], 5)
    help_text = subprocess.run([sys.executable, "-m", "lifebench", "report", "--help"], capture_output=True,
                               text=True).stdout
    assert "--bootstrap-seed" in help_text and "--seed" not in help_text.replace("--bootstrap-seed", "")

    data = make_folder(env / "data", per_class=8)
    for i in range(0, 8, 2):  # mislabelled images, so that scores are below 1 and intervals depend on the seed
        (data / "ant" / f"ant{i}.png").rename(data / "bee" / f"ant{i}.png")
    store = env / "results" / "results.sqlite"
    code, run_out, err = run_cli(["run", "--task", data, "--model", "pixels", "--model", "random-vit", "--workers",
                                  "0", "--bootstrap-seed", "3", "--out", env / "run"], capsys)
    assert code == 0, err
    boards = {}
    for name, option in (("new", ["--bootstrap-seed", "3"]), ("alias", ["--seed", "3"]), ("default", [])):
        code, out, err = run_cli(["report", "--store", store, "--out", env / name, *option], capsys)
        assert code == 0, err
        boards[name] = json.loads((env / name / "leaderboard.json").read_text())["cells"]
    run_board = json.loads((env / "run" / "leaderboard.json").read_text())["cells"]
    assert boards["new"] == boards["alias"] == run_board
    assert [(c["low"], c["high"]) for c in boards["new"]] != [(c["low"], c["high"]) for c in boards["default"]]


def test_report_prints_json_csv_md_and_a_limited_quick_look(env, capsys):
    """``report --format json|csv|md`` prints only the leaderboard on standard output, parseable and equal to the
    files it writes; ``--limit 1`` shows only the best model and leaves the files whole."""
    import csv
    import io

    data = make_folder(env / "data", per_class=8)
    for i in range(0, 8, 2):  # mislabelled images, so that the two models differ
        (data / "ant" / f"ant{i}.png").rename(data / "bee" / f"ant{i}.png")
    store = env / "results" / "results.sqlite"
    code, _, err = run_cli(["-q", "run", "--task", data, "--model", "pixels", "--model", "random-vit", "--workers",
                            "0", "--no-report"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["report", "--store", store, "--out", env / "all", "--format", "json"], capsys)
    assert code == 0 and "report: " in err and "leaderboard.json" in err
    printed = json.loads(out)  # nothing but the JSON document on standard output
    assert printed["cells"] == json.loads((env / "all" / "leaderboard.json").read_text())["cells"]
    assert {c["backbone"] for c in printed["cells"]} == {"pixels", "random-vit"}
    (best,) = [c for c in printed["cells"] if c["is_best"]]
    other = ({"pixels", "random-vit"} - {best["backbone"]}).pop()

    code, out, err = run_cli(["report", "--store", store, "--out", env / "one", "--format", "csv", "--limit", "1"],
                             capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["backbone"], float(r["point"]), r["is_best"]) for r in rows] == [(best["backbone"], best["point"],
                                                                                 "True")]
    assert len(json.loads((env / "one" / "leaderboard.json").read_text())["cells"]) == 2  # files keep every model

    code, out, _ = run_cli(["report", "--store", store, "--out", env / "md", "--format", "md"], capsys)
    assert code == 0 and out.startswith("| model |") and "report:" not in out
    code, out, _ = run_cli(["report", "--store", store, "--out", env / "t", "--limit", "1"], capsys)
    table = out.split("Point estimate")[0]
    assert code == 0 and best["backbone"] in table and other not in table


_COMPLETE = """
source /dev/stdin <<< "$SCRIPT"
complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=(); _lifebench; }
"""


@pytest.mark.skipif(not __import__("shutil").which("bash"), reason="needs bash")
def test_bash_completion_is_made_from_the_parser(capsys):
    """The script completes commands, each command's visible options (not the hidden --seed alias) and the
    choices of an option or positional, as bash itself runs it."""
    code, script, _ = run_cli(["completion", "bash"], capsys)
    assert code == 0 and "complete -o filenames -F _lifebench lifebench" in script
    cases = {"lifebench rep": "report", "lifebench report --bootstrap": "--bootstrap-seed",
             "lifebench report --format ": "table json csv md", "lifebench -q run --con": "--config",
             "lifebench ls ta": "tasks", "lifebench run --decode re": "reference"}
    empty = ' ""'  # the word being completed is empty after a trailing space
    lines = [f'complete_words {w}{empty if w.endswith(" ") else ""}; echo "${{COMPREPLY[*]}}"' for w in cases]
    res = subprocess.run(["bash", "-c", _COMPLETE + "\n".join(lines)], capture_output=True, text=True,
                         env={"SCRIPT": script, "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == list(cases.values())
    report_words = script.split("        report)")[1].split(";;\n        ")[1]
    assert "--bootstrap-seed" in report_words and "--seed" not in report_words.replace("--bootstrap-seed", "")
