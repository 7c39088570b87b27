"""The SQLite results store and provenance: round trips, dedup, atomic writes, kill-safety, concurrency."""

from __future__ import annotations

import importlib.metadata
import io
import json
import multiprocessing as mp
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lifebench.errors import ConfigError
from lifebench.store import SCHEMA_VERSION, Experiment, Predictions, Store, collect
from lifebench.store import provenance as provenance_mod
from lifebench.store import sqlite as sqlite_mod

CLASSES = ("ant", "bee", "cod", "dace")


def make_preds(n: int, seed: int = 0, topk: bool = True) -> Predictions:
    """Random predictions over CLASSES with ids given in shuffled order."""
    rng = np.random.default_rng(seed)
    classes = np.array(CLASSES)
    ids = np.array([f"img/{i:06d}.jpg" for i in rng.permutation(n)])
    ranked = np.array([rng.permutation(classes) for _ in range(n)]) if topk else None
    return Predictions(
        ids=ids,
        y_true=classes[rng.integers(0, len(classes), n)],
        y_pred=classes[rng.integers(0, len(classes), n)] if ranked is None else ranked[:, 0],
        score=rng.random(n),
        topk=ranked,
    )


def make_exp(config_hash: str, **kw: object) -> Experiment:
    fields: dict = dict(task="toy", backbone="resnet", protocol="logreg", metric="macro_f1", classes=CLASSES)
    fields.update(kw)
    return Experiment(config_hash=config_hash, **fields)


def count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchone()[0]


def assert_same(got: Predictions, want: Predictions) -> None:
    """``got`` (read back, id order) holds exactly the rows of ``want`` (any order)."""
    order = np.argsort(want.ids)
    np.testing.assert_array_equal(got.ids, want.ids[order])
    np.testing.assert_array_equal(got.y_true, want.y_true[order])
    np.testing.assert_array_equal(got.y_pred, want.y_pred[order])
    np.testing.assert_array_equal(got.score, want.score[order])  # NaN == NaN here
    if want.topk is None:
        assert got.topk is None
    else:
        np.testing.assert_array_equal(got.topk, want.topk[order])


# ------------------------------------------------------------------------------------------------ basics


def test_round_trip(tmp_path: Path) -> None:
    preds = make_preds(300)
    preds.score[5] = np.nan  # unknown score -> NULL -> NaN
    exp = make_exp(
        "abc123",
        n_train=16,
        seed=3,
        config={"backbone": {"id": "resnet", "pool": "avg"}, "batch": 32},
        fit_info={"C": np.float64(0.5), "n_iter": np.int64(40), "grid": np.array([0.1, 1.0])},
        provenance={"host": "x", "weird": 'quote " and é'},
        timings={"embed": 1.5, "fit": 0.25},
    )
    with Store(tmp_path / "sub" / "results.sqlite") as store:
        before = time.time()
        exp_id = store.write(exp, preds)
        got = store.get("abc123")
        assert got is not None and got.id == exp_id
        assert before <= got.created_at <= time.time()
        assert got.classes == CLASSES
        assert got.config == exp.config
        assert got.fit_info == {"C": 0.5, "n_iter": 40, "grid": [0.1, 1.0]}
        assert got.provenance == exp.provenance and got.timings == exp.timings
        assert (got.task, got.backbone, got.protocol, got.metric, got.n_train, got.seed) == (
            "toy", "resnet", "logreg", "macro_f1", 16, 3,
        )  # fmt: skip
        read = store.predictions(exp_id)
        assert_same(read, preds)
        assert np.isnan(read.score[list(read.ids).index(preds.ids[5])])
        assert store.has("abc123") and not store.has("nope") and store.get("nope") is None

        conn = store.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_predictions_without_topk_and_filters(tmp_path: Path) -> None:
    with Store(tmp_path / "r.sqlite") as store:
        store.write(make_exp("a", backbone="vit"), make_preds(20, seed=1, topk=False))
        store.write(make_exp("b", backbone="vit", protocol="knn"), make_preds(20, seed=2))
        store.write(make_exp("c", task="other"), make_preds(20, seed=3))
        read = store.predictions(store.get("a").id)
        assert read.topk is None
        assert_same(read, make_preds(20, seed=1, topk=False))
        assert [e.config_hash for e in store.experiments()] == ["a", "b", "c"]
        assert [e.config_hash for e in store.experiments(backbone="vit")] == ["a", "b"]
        assert [e.config_hash for e in store.experiments(backbone="vit", protocol="knn")] == ["b"]
        assert [e.config_hash for e in store.experiments(task="other")] == ["c"]
        with pytest.raises(ConfigError, match="no experiment with id 999"):
            store.predictions(999)
    with pytest.raises(ConfigError, match="closed"):
        store.has("a")


def test_predictions_validation() -> None:
    ids = np.array(["a", "a"])
    with pytest.raises(ValueError, match="unique"):
        Predictions(ids, np.array(["x", "y"]), np.array(["x", "y"]))
    with pytest.raises(ValueError, match="y_pred"):
        Predictions(np.array(["a", "b"]), np.array(["x", "y"]), np.array([0, 1]))


def test_dedup_returns_existing_id_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        first = store.write(make_exp("h"), make_preds(50, seed=0))
        again = store.write(make_exp("h", backbone="other"), make_preds(80, seed=1))
        assert again == first
        assert store.get("h").backbone == "resnet"
        assert_same(store.predictions(first), make_preds(50, seed=0))
    assert count(path, "SELECT COUNT(*) FROM experiments") == 1
    assert count(path, "SELECT TOTAL(n) FROM predictions") == 50


def test_replace_swaps_experiment_and_predictions(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        old = store.write(make_exp("h"), make_preds(50, seed=0))
        new = store.write(make_exp("h", backbone="other"), make_preds(80, seed=1), replace=True)
        assert new != old
        assert store.get("h").backbone == "other" and store.get("h").id == new
        assert_same(store.predictions(new), make_preds(80, seed=1))
    assert count(path, "SELECT COUNT(*) FROM experiments") == 1
    assert count(path, f"SELECT COUNT(*) FROM predictions WHERE experiment_id = {old}") == 0
    assert count(path, "SELECT TOTAL(n) FROM predictions") == 80


def test_failure_half_way_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.sqlite"
    real_bytes = Predictions.to_bytes

    def failing_bytes(preds: Predictions) -> bytes:  # runs after the experiment row is inserted
        raise RuntimeError("disk on fire")

    with Store(path) as store:
        kept = store.write(make_exp("kept"), make_preds(40, seed=5))
        monkeypatch.setattr(Predictions, "to_bytes", failing_bytes)
        with pytest.raises(RuntimeError, match="disk on fire"):
            store.write(make_exp("new"), make_preds(100))
        # A failed replace keeps the old experiment and its predictions.
        with pytest.raises(RuntimeError, match="disk on fire"):
            store.write(make_exp("kept", backbone="other"), make_preds(100), replace=True)
        assert not store.has("new")
        assert store.get("kept").backbone == "resnet" and store.get("kept").id == kept
        assert_same(store.predictions(kept), make_preds(40, seed=5))
        monkeypatch.setattr(Predictions, "to_bytes", real_bytes)
        assert store.write(make_exp("new"), make_preds(100)) > kept  # the store is still usable
    assert count(path, "SELECT TOTAL(n) FROM predictions") == 140


def test_150k_predictions_write_fast(tmp_path: Path) -> None:
    n = 150_000
    rng = np.random.default_rng(0)
    classes = np.array([f"species_{i:04d}" for i in range(1000)])
    preds = Predictions(
        ids=np.array([f"img/{i:07d}.jpg" for i in rng.permutation(n)]),
        y_true=classes[rng.integers(0, 1000, n)],
        y_pred=classes[rng.integers(0, 1000, n)],
        score=rng.random(n),
        topk=classes[rng.integers(0, 1000, (n, 5))],
    )
    with Store(tmp_path / "r.sqlite") as store:
        start = time.perf_counter()
        exp_id = store.write(make_exp("big", classes=classes), preds)
        elapsed = time.perf_counter() - start
        assert len(store.predictions(exp_id)) == n
    assert elapsed < 4.0, f"writing {n} predictions took {elapsed:.2f} s"


# ------------------------------------------------------------------------------------------------ bad paths


def test_path_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path}.*is a folder"):
        Store(tmp_path)


def test_path_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="file.txt"):
        Store(blocker / "results.sqlite")
    assert blocker.read_text() == "x"


def test_not_a_database_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="notes.sqlite"):
        Store(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="upgrade lifebench"):
        Store(path)


def test_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root may write anyway: make the permission check see what a user would
        real_access = os.access
        monkeypatch.setattr(
            sqlite_mod.os, "access", lambda p, mode: Path(p) != folder and real_access(p, mode)
        )
    try:
        with pytest.raises(ConfigError, match=f"{folder} .*not writable"):
            Store(folder / "r.sqlite")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------------------------------------ processes


def _write_then_hang(path: str, n: int, ready) -> None:  # child process
    store = Store(path)
    store.write(make_exp("kept"), make_preds(10))
    preds = make_preds(n, topk=True)
    ready.set()
    store.write(make_exp("big"), preds)
    ready.clear()  # reached only if the write finished before the kill


def test_killed_writer_leaves_no_partial_experiment(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    wal = Path(f"{path}-wal")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_write_then_hang, args=(str(path), 400_000, ready))
    child.start()
    try:
        assert ready.wait(60), "child never started writing"
        base = wal.stat().st_size
        deadline = time.monotonic() + 20
        while wal.stat().st_size < base + 2_000_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert wal.stat().st_size >= base + 2_000_000, "the big write never reached the WAL"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert ready.is_set()  # the write did not finish before the kill

    with Store(path) as store:
        assert store.has("kept") and not store.has("big")
        conn = store.conn
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 1
        assert conn.execute("SELECT TOTAL(n) FROM predictions").fetchone()[0] == 10
        assert store.write(make_exp("big"), make_preds(30)) > 0  # the hash is free again


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_its_own_connection(tmp_path: Path) -> None:
    with Store(tmp_path / "r.sqlite") as store:
        store.write(make_exp("parent"), make_preds(10))
        pid = os.fork()
        if pid == 0:  # child: write through the inherited Store, then leave without running pytest's exit
            code = 1
            try:
                store.write(make_exp("child"), make_preds(20))
                code = 0 if store.conn is not store._inherited and store.has("parent") else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.has("child")  # the parent's connection still works and sees the child's commit
        assert_same(store.predictions(store.get("child").id), make_preds(20))


def _concurrent_writer(path: str, k: int, barrier, results) -> None:  # child process
    barrier.wait()
    with Store(path) as store:  # all four open (and create) the same new file at once
        own = [store.write(make_exp(f"own-{k}-{j}"), make_preds(2000, seed=10 * k + j)) for j in range(3)]
        shared = store.write(make_exp("shared"), make_preds(1500, seed=100 + k))
    results.put((k, own, shared))


def test_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_writer, args=(str(path), k, barrier, results)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)  # the results are a few small tuples: the queue cannot block a child's exit
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    got = [results.get(timeout=10) for _ in procs]
    assert len({shared for _, _, shared in got}) == 1  # every writer got the one stored id

    with Store(path) as store:
        hashes = [e.config_hash for e in store.experiments()]
        assert sorted(hashes) == sorted([f"own-{k}-{j}" for k in range(4) for j in range(3)] + ["shared"])
        for k, own, _ in got:
            for j, exp_id in enumerate(own):
                assert_same(store.predictions(exp_id), make_preds(2000, seed=10 * k + j))
        stored = store.predictions(store.get("shared").id)
        matches = []
        for k in range(4):
            try:
                assert_same(stored, make_preds(1500, seed=100 + k))
                matches.append(k)
            except AssertionError:
                pass
        assert len(matches) == 1  # exactly one writer's predictions, never a mixture
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert count(path, "SELECT TOTAL(n) FROM predictions") == 12 * 2000 + 1500


# ------------------------------------------------------------------------------------------------ provenance


def test_collect_records_versions_and_machine() -> None:
    import numpy

    prov = collect(device="cuda:0 (NVIDIA H100)")
    json.dumps(prov)  # serialisable
    assert prov["device"] == "cuda:0 (NVIDIA H100)"
    assert prov["python"] == platform.python_version()
    assert prov["packages"]["numpy"] == numpy.__version__
    assert prov["lifebench"] == importlib.metadata.version("lifebench")
    assert prov["argv"] == sys.argv
    for name in provenance_mod.PACKAGES:
        try:
            assert prov["packages"][name] == importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            assert name not in prov["packages"]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def test_git_outside_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance_mod, "_package_dir", lambda: tmp_path)
    prov = collect()
    assert prov["git_commit"] is None and prov["git_dirty"] is None
    monkeypatch.setattr(provenance_mod, "_package_dir", lambda: tmp_path / "missing")
    assert collect()["git_commit"] is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    monkeypatch.setattr(provenance_mod, "_package_dir", lambda: tmp_path)
    assert collect()["git_commit"] is None


@pytest.mark.skipif(subprocess.run(["which", "git"], capture_output=True).returncode != 0, reason="no git")
def test_git_inside_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    pkg = repo / "src" / "lifebench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    monkeypatch.setattr(provenance_mod, "_package_dir", lambda: pkg)
    # Not tracked yet: a copy of lifebench that merely sits inside some repository reports no commit.
    (repo / "other.txt").write_text("o")
    _git(repo, "add", "other.txt")
    _git(repo, "commit", "-q", "-m", "other")
    assert collect()["git_commit"] is None

    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "pkg")
    prov = collect()
    assert prov["git_commit"] == _git(repo, "rev-parse", "HEAD") and len(prov["git_commit"]) == 40
    assert prov["git_dirty"] is False
    (pkg / "__init__.py").write_text("x = 2\n")
    assert collect()["git_dirty"] is True


def test_collect_imports_no_heavy_package_and_import_runs_no_git() -> None:
    script = """
import subprocess, sys
calls = []
real = subprocess.Popen
class Spy(real):
    def __init__(self, *a, **k):
        calls.append(a[0] if a else k.get("args"))
        super().__init__(*a, **k)
subprocess.Popen = Spy
import lifebench.store, lifebench.store.provenance
assert calls == [], calls
from lifebench.store import collect
prov = collect("cpu")
assert calls and calls[0][0] == "git", calls
heavy = [m for m in ("torch", "torchvision", "timm", "transformers", "open_clip", "sklearn", "PIL") if m in sys.modules]
assert not heavy, heavy
assert prov["packages"]["torch"]
# torch is not imported here, so its settings are not read; the subprocesses are git and platform.platform()'s
# uname, none for the CPU, threads or BLAS
assert prov["torch"] is None and prov["threads"]["torch"] is None, prov["threads"]
assert [c for c in calls if c[0] not in ("git", "uname")] == [], calls
assert prov["cpu"] and prov["threads"]["cpus"] == __import__("os").cpu_count()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_collect_records_threads_cpu_blas_and_torch_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """What changes floating-point sums between machines is recorded, read from the libraries themselves."""
    import numpy
    import threadpoolctl
    import torch

    for name in provenance_mod.THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prov = collect(device="cpu")
    finally:
        torch.set_num_threads(before)
    json.dumps(prov)
    threads = prov["threads"]
    assert threads["torch"] == 1 and threads["torch_interop"] == torch.get_num_interop_threads()
    assert threads["cpus"] == os.cpu_count() and threads["env"] == {"OMP_NUM_THREADS": "3"}
    if hasattr(os, "sched_getaffinity"):
        assert threads["cpus_usable"] == len(os.sched_getaffinity(0))
    names = [ln.partition(":")[2].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
             if ln.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    assert prov["cpu"] == (names[0] if names else platform.machine())
    t = prov["torch"]
    assert t["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert t["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    config = torch.__config__.show()
    assert f"BLAS_INFO={t['blas']}," in config and f"LAPACK_INFO={t['lapack']}," in config
    blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    assert prov["blas"]["numpy"] == f"{blas['name']} {blas['version']}"
    pools = threadpoolctl.threadpool_info()
    assert sorted((b["api"], b["version"], b["file"]) for b in prov["blas"]["libraries"]) == sorted(
        (p["internal_api"], p["version"], Path(p["filepath"]).name) for p in pools)
    line = provenance_mod.machine_summary(prov)
    assert line.startswith(f"{prov['cpu']} ({threads['cpus_usable'] or threads['cpus']} CPUs); torch 1 threads")
    assert f"torch kernels {t['cpu_capability']}" in line and f"torch {t['blas']}" in line
    assert "OMP_NUM_THREADS=3" in line and line.endswith("device cpu")


def test_cpu_model_from_cpuinfo_else_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert provenance_mod._cpu_model(info) == "AMD EPYC 9654 96-Core Processor"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n")  # ARM: no model name
    assert provenance_mod._cpu_model(info) == "aarch64"
    assert provenance_mod._cpu_model(tmp_path / "missing") == "aarch64"


def test_machine_summary_of_an_old_record_says_what_was_not_recorded() -> None:
    old = {"device": "cuda:0 NVIDIA H100 80GB HBM3 (CUDA 12.4)", "hostname": "gpu7"}
    assert provenance_mod.machine_summary(old) == (
        "CPU not recorded (? CPUs); torch threads not recorded; BLAS not recorded; "
        "device cuda:0 NVIDIA H100 80GB HBM3 (CUDA 12.4)")


def test_a_run_stores_provenance_and_the_report_shows_where_it_ran(tmp_path: Path) -> None:
    import torch

    from conftest import make_folder
    from lifebench.report import build_leaderboard
    from lifebench.runner import RunOptions, expand, run_jobs
    from lifebench.tasks import load_task

    task = load_task(str(make_folder(tmp_path / "data")))
    with Store(tmp_path / "s.sqlite") as store:
        (result,) = run_jobs(expand([task], ["pixels"], ["simpleshot"]), store,
                             RunOptions(cache_dir=tmp_path / "c", device="cpu", num_workers=0, show_progress=False))
        prov = store.get(result.job.config_hash).provenance
        board = build_leaderboard(store, n_resamples=50)
    assert prov["threads"]["torch"] == torch.get_num_threads() and prov["cpu"]
    assert prov["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert prov["device"].startswith("cpu") and prov["blas"]["numpy"]
    assert board.meta["machines"] == [provenance_mod.machine_summary(prov)]


def test_optional_columns_round_trip(tmp_path: Path) -> None:
    base = make_preds(30, seed=3)
    rng = np.random.default_rng(0)
    preds = Predictions(base.ids, base.y_true, base.y_pred, base.score, base.topk,
                        part=np.array(["a", "b", "c"] * 10), group=np.array([f"g{i % 7}" for i in range(30)]),
                        extra={"ap": rng.random(30), "cost": np.where(rng.random(30) < 0.3, np.nan, 1.0)})
    with Store(tmp_path / "r.sqlite") as store:
        read = store.predictions(store.write(make_exp("x"), preds))
    order = np.argsort(preds.ids)
    assert_same(read, base)
    np.testing.assert_array_equal(read.part, preds.part[order])
    np.testing.assert_array_equal(read.group, preds.group[order])
    assert sorted(read.extra) == ["ap", "cost"]
    np.testing.assert_array_equal(read.extra["cost"], preds.extra["cost"][order])  # NaN kept
    with pytest.raises(ValueError, match="extra"):
        Predictions(base.ids, base.y_true, base.y_pred, extra={"ap": np.zeros(3)})


def test_schema_1_store_is_converted_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE experiments (id INTEGER PRIMARY KEY AUTOINCREMENT, config_hash TEXT UNIQUE NOT NULL,
            task TEXT NOT NULL, backbone TEXT NOT NULL, protocol TEXT NOT NULL, metric TEXT NOT NULL,
            n_train INTEGER, seed INTEGER NOT NULL, config TEXT NOT NULL, classes TEXT NOT NULL,
            fit_info TEXT NOT NULL, provenance TEXT NOT NULL, timings TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE predictions (experiment_id INTEGER NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
            example_id TEXT NOT NULL, y_true TEXT NOT NULL, y_pred TEXT NOT NULL, score REAL, topk TEXT,
            PRIMARY KEY (experiment_id, example_id)) WITHOUT ROWID;
        INSERT INTO experiments VALUES (1, 'h', 't', 'b', 'logreg', 'macro_f1', 4, 0, '{}', '["x","y"]', '{}',
            '{}', '{}', 0.0);
        INSERT INTO predictions VALUES (1, 'i2', 'y', 'x', NULL, '["x","y"]'), (1, 'i1', 'x', 'x', 0.9, '["x","y"]');
        PRAGMA user_version = 1;
    """)
    conn.close()
    with Store(path) as store:
        preds = store.predictions(1)
        assert store.get("h").classes == ("x", "y")
    np.testing.assert_array_equal(preds.ids, ["i1", "i2"])
    np.testing.assert_array_equal(preds.y_pred, ["x", "x"])
    np.testing.assert_array_equal(preds.topk, [["x", "y"], ["x", "y"]])
    assert preds.score[0] == 0.9 and np.isnan(preds.score[1])
    assert count(path, "PRAGMA user_version") == SCHEMA_VERSION


def test_labels_are_stored_as_codes_and_schema_2_blobs_still_read() -> None:
    preds = Predictions(np.array(["b", "a", "c"]), np.array(["cat", "dog", "cat"]), np.array(["dog", "dog", "cat"]),
                        np.array([0.5, 0.25, 1.0]), np.array([["dog", "cat"], ["dog", "cat"], ["cat", "dog"]]),
                        extra={"ap": np.array([1.0, 0.5, 0.0])})
    blob = preds.to_bytes()
    with np.load(io.BytesIO(blob)) as z:
        assert sorted(z.files) == ["extra.ap", "ids", "score", "topk.codes", "topk.vocab", "y_pred.codes",
                                   "y_pred.vocab", "y_true.codes", "y_true.vocab"]
        np.testing.assert_array_equal(z["y_true.vocab"], ["cat", "dog"])
        np.testing.assert_array_equal(z["y_true.codes"], [1, 0, 0])  # in id order: a, b, c
        assert z["topk.codes"].dtype == np.int32 and z["topk.codes"].shape == (3, 2)
    back = Predictions.from_bytes(blob)
    order = [1, 0, 2]
    np.testing.assert_array_equal(back.ids, preds.ids[order])
    for name in ("y_true", "y_pred", "topk"):
        np.testing.assert_array_equal(getattr(back, name), getattr(preds, name)[order])
    np.testing.assert_array_equal(back.score, preds.score[order])
    np.testing.assert_array_equal(back.extra["ap"], preds.extra["ap"][order])
    vocab, codes = back.categorical("y_pred")  # kept from the stored form, as np.unique would give it
    np.testing.assert_array_equal(vocab, ["cat", "dog"])
    np.testing.assert_array_equal(codes, [1, 1, 0])
    for got, want in zip(preds.categorical("topk"), np.unique(preds.topk, return_inverse=True), strict=True):
        np.testing.assert_array_equal(got, want.reshape(got.shape))
    assert Predictions.from_bytes(blob, topk=False).topk is None

    buf = io.BytesIO()  # schema 2: every column as it is, labels as fixed-width strings
    np.savez(buf, ids=back.ids, y_true=back.y_true, y_pred=back.y_pred, score=back.score, topk=back.topk,
             **{"extra.ap": back.extra["ap"]})
    old = Predictions.from_bytes(buf.getvalue())
    for name in ("ids", "y_true", "y_pred", "topk", "score"):
        np.testing.assert_array_equal(getattr(old, name), getattr(back, name))


def test_claims_keep_two_workers_apart_and_expire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.sqlite"
    with Store(path) as a, Store(path) as b:
        assert a.claim("h", "worker-a", "task | model")
        assert not b.claim("h", "worker-b")  # held by a live worker
        assert a.claim("h", "worker-a")  # the holder may renew
        owner, age = b.claimed("h")
        assert owner == "worker-a" and 0 <= age < 5
        now = time.time()
        monkeypatch.setattr(time, "time", lambda: now + sqlite_mod.LEASE_S + 1)  # a's heartbeat stopped
        assert b.claimed("h") is None and b.claim("h", "worker-b")
        monkeypatch.undo()
        b.write(make_exp("h"), make_preds(5))  # writing releases the writer's claim
        assert a.claimed("h") is None
        assert not a.claim("h", "worker-a") and a.claim("h", "worker-a", replace=True)  # stored: only to replace
        a.release("h", "worker-a")
        assert a.claim("g", "worker-a") and not b.claim("g", "worker-b")
        a.release("g", "worker-a")
        assert b.claim("g", "worker-b")


def test_merge_copies_each_experiment_once(tmp_path: Path) -> None:
    with Store(tmp_path / "a.sqlite") as a, Store(tmp_path / "b.sqlite") as b:
        a.write(make_exp("x"), make_preds(20, seed=1))
        b.write(make_exp("x", backbone="other"), make_preds(30, seed=2))  # same hash: a's copy wins
        b.write(make_exp("y"), make_preds(25, seed=3))
    with Store(tmp_path / "all.sqlite") as into:
        assert into.merge(tmp_path / "a.sqlite") == (1, 0)
        assert into.merge(tmp_path / "b.sqlite") == (1, 1)
        assert into.merge(tmp_path / "b.sqlite") == (0, 2)
        assert into.get("x").backbone == "resnet"
        assert_same(into.predictions(into.get("y").id), make_preds(25, seed=3))
        assert len(into.experiments()) == 2


def _live_worker() -> tuple[subprocess.Popen, str]:
    """A process of this host that holds on, and the claim owner it names itself with."""
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom lifebench.store.sqlite import "
                              "worker_owner\nprint(worker_owner(), flush=True)\nsys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return child, child.stdout.readline().strip()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to tell a process's start time")
def test_a_claim_of_a_process_gone_from_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    """kill -9 leaves the claim behind; on this host it ends with its process (zombie or reaped), not its lease."""
    child, owner = _live_worker()
    host, pid, start, _ = owner.split(":")
    assert host == socket.gethostname() and int(pid) == child.pid
    with Store(tmp_path / "r.sqlite") as store:
        assert store.claim("h", owner, "a | pixels")
        assert not store.claim("h", "another")  # its process runs: the claim holds
        assert store.claimed("h")[0] == owner and "h" in store.claims()
        # the same pid with another start time is a later process that reused the pid: the claim's owner is gone
        stale = f"{host}:{pid}:{int(start.split('.')[0]) - 1}.{start.split('.')[1]}:x"
        assert store.claim("s", stale) and store.claimed("s") is None and "s" not in store.claims()
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped yet: a zombie
        assert store.claimed("h") is None and store.claims() == {}
        child.wait()
        assert store.claimed("h") is None and store.claims() == {}
        assert store.claim("h", "another")  # at once: no lease to wait out
        # the older owner form host:pid:token is judged by its pid alone
        assert store.claim("g", f"{host}:{pid}:abc123") and store.claimed("g") is None


def test_a_claim_of_another_host_keeps_its_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pid of another host (or of another container with this host's name) says nothing here: only the lease
    ends such a claim."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that runs nothing on this host
    here = socket.gethostname()
    space = sqlite_mod._pid_space()
    owners = {"other": f"node-17.cluster:{child.pid}:123.{space}:ab12cd",
              "container": f"{here}:{child.pid}:123.ffffffff-1:ab12cd",
              "old-form": f"node-17.cluster:{child.pid}:ab12cd",
              "no-form": "worker-a"}
    with Store(tmp_path / "r.sqlite") as store:
        for h, owner in owners.items():
            assert store.claim(h, owner)
        assert not any(store.claim(h, "rerun") for h in owners)
        assert set(store.claims()) == set(owners) and store.claimed("other")[0] == owners["other"]
        now = time.time()
        monkeypatch.setattr(time, "time", lambda: now + sqlite_mod.LEASE_S + 1)
        assert store.claims() == {} and all(store.claim(h, "rerun") for h in owners)


_FULL_SCRIPT = """
import resource, signal, sys
sys.path.insert(0, sys.argv[2])
from test_store import make_exp, make_preds
from lifebench.store import Store
from lifebench.errors import StoreFullError
assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN  # Python's own: the limit fails a write (EFBIG)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
with Store(sys.argv[1]) as store:
    assert store.claim("big", "me")
    try:
        store.write(make_exp("big"), make_preds(20_000))
    except StoreFullError as err:
        store.release("big", "me")
        print(err)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_a_full_disk_during_write_is_one_line_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        store.write(make_exp("small"), make_preds(50, seed=4))
    out = subprocess.run([sys.executable, "-c", _FULL_SCRIPT, str(path), str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    msg = out.stdout.strip()
    assert "\n" not in msg and msg.startswith(f"results store {path}: could not write experiment big (disk I/O")
    assert "rolled back and every result stored before is kept" in msg
    need = float(msg.split("needs about ")[1].split(" MB")[0])  # twice the ~1.5 MB written, plus 1 MB
    assert 3.0 < need < 6.0 and "ulimit -f, now 200.0 kB" in msg
    assert count(path, "PRAGMA integrity_check") == "ok"
    assert count(path, "SELECT COUNT(*) FROM claims") == 0
    with Store(path) as store:
        assert [e.config_hash for e in store.experiments()] == ["small"]
        assert_same(store.predictions(store.get("small").id), make_preds(50, seed=4))
