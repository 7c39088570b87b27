"""Faults (issue 15): kill -9 and SIGTERM at random moments of a real run, each followed at once by a rerun, and a
file-size limit that fills the "disk" while the store is written.

What these hold lifebench to: every result stored exactly once, no rerun waiting on the claim of a process of
this host that is gone, the store intact (``PRAGMA integrity_check``) and the leaderboard equal to a clean run's;
a full disk is one line (exit 2) that loses nothing stored before. ``pytest -s`` prints the counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_folder
from lifebench.cli import main
from lifebench.report import build_leaderboard
from lifebench.store import Store

SWEEP = """store = "out/results.sqlite"
cache_dir = "out/cache"
models = ["pixels", "timm:resnet18@random"]
tasks = ["data/a", "data/b"]
protocols = ["knn", "simpleshot"]
seeds = [0, 1]
workers = 0
device = "cpu"
"""
N_JOBS = 16  # 2 models x 2 tasks x 2 protocols x 2 seeds
SIGNALS = [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGKILL, signal.SIGINT,
           signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGKILL]  # sent in this order, at random moments
N_KILLS = len(SIGNALS)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "LIFEBENCH_LEASE_S": "600"}  # a dead claim waited on would show


def _sweep(tmp_path: Path) -> Path:
    make_folder(tmp_path / "data" / "a", per_class=6, seed=1)
    make_folder(tmp_path / "data" / "b", per_class=6, seed=2)
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    return path


def _start(sweep: Path, *extra: str, **kw) -> subprocess.Popen:
    """``lifebench run`` of the sweep file's plan in a process of its own."""
    return subprocess.Popen([sys.executable, "-m", "lifebench.cli", "-q", "run", "--config", str(sweep), "--no-report",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kw)


def _query(store: Path, sql: str) -> int | str | None:
    """One value from the store, read-only (never creates the file); None while it cannot be read yet."""
    if not store.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.Error:  # created a moment ago: no schema yet
        return None


def _kill_moment(proc: subprocess.Popen, store: Path, rng: np.random.Generator) -> bool:
    """Wait for a random moment of the first job the run claims (loading, embedding, fitting, writing), or the
    moment that job ends if it ends first; so each kill costs at most that job. False when the run ended first."""
    mine = f"SELECT group_concat(config_hash) FROM claims WHERE owner LIKE '%:{proc.pid}:%'"
    first = None
    while first is None and proc.poll() is None:
        first = _query(store, mine)
        time.sleep(0.01)
    deadline = time.monotonic() + float(rng.uniform(0.0, 1.0))
    while time.monotonic() < deadline and proc.poll() is None and _query(store, mine) == first:
        time.sleep(0.01)
    return proc.poll() is None


def _running(sweep: Path, capsys: pytest.CaptureFixture) -> str:
    """What ``lifebench status`` says of the sweep (in this process, so as not to start one more)."""
    capsys.readouterr()
    assert main(["status", str(sweep)]) == 0
    return capsys.readouterr().out


def test_kill_9_and_sigterm_then_immediate_reruns_lose_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = _sweep(tmp_path)
    store = tmp_path / "out" / "results.sqlite"
    rng = np.random.default_rng(15)
    kills = {"SIGKILL": 0, "SIGTERM": 0, "SIGINT": 0}
    runs = blocked = dead_claims_left = status_shows_dead = 0
    while True:
        runs += 1
        assert runs <= N_KILLS + 5, "the reruns are not finishing the plan"
        proc = _start(sweep)
        sent = None
        if sum(kills.values()) < N_KILLS and _kill_moment(proc, store, rng):
            sent = SIGNALS[sum(kills.values())]
            if proc.poll() is None:
                proc.send_signal(sent)
                kills[sent.name] += 1
            else:
                sent = None
        out, err = proc.communicate(timeout=300)
        blocked += "running elsewhere" in out
        if sent in (signal.SIGTERM, signal.SIGINT):  # unwound (or it had just finished its jobs): claims released
            assert _query(store, "SELECT COUNT(*) FROM claims") == 0
            if proc.returncode != 0:  # 128 + the signal's number, as a shell reports it
                assert proc.returncode == 128 + sent, (sent, proc.returncode, err)
                assert err.strip().splitlines() == ["lifebench: interrupted; finished experiments and cache entries "
                                                    "are kept"], err
        elif sent == signal.SIGKILL:
            dead_claims_left += bool(_query(store, "SELECT COUNT(*) FROM claims"))
            status_shows_dead += " 0 running" not in _running(sweep, capsys)
        elif sent is None:
            assert proc.returncode == 0, err
            break
    rows, distinct = _query(store, "SELECT COUNT(*) FROM experiments"), _query(
        store, "SELECT COUNT(DISTINCT config_hash) FROM experiments")
    integrity = _query(store, "PRAGMA integrity_check")
    lost, duplicated = N_JOBS - distinct, rows - distinct
    with capsys.disabled():
        print(f"\nfault test: {kills['SIGKILL']} kill -9, {kills['SIGTERM']} SIGTERM, {kills['SIGINT']} SIGINT, "
              f"{runs} runs in all; "
              f"{dead_claims_left} kill -9 left a dead claim; reruns blocked {blocked}, status showing a dead claim "
              f"running {status_shows_dead}; lost {lost}, duplicated {duplicated}; integrity_check {integrity}")
    assert kills == {"SIGKILL": 7, "SIGTERM": 2, "SIGINT": 1}
    assert dead_claims_left > 0  # the case of the issue was met: a rerun found a dead claim of this host
    assert (blocked, status_shows_dead, lost, duplicated, integrity) == (0, 0, 0, 0, "ok")
    assert "16 done, 0 running, 0 failed, 0 remaining" in _running(sweep, capsys)
    # a clean run (in this process, its own store and cache) stores the same predictions and leaderboard
    clean = tmp_path / "clean" / "results.sqlite"
    assert main(["-q", "run", "--config", str(sweep), "--no-report", "--store", str(clean), "--cache-dir",
                 str(tmp_path / "clean" / "cache")]) == 0
    with Store(store, create=False) as got, Store(clean, create=False) as want:
        for exp in want.experiments():
            a, b = got.predictions(got.get(exp.config_hash).id), want.predictions(exp.id)
            for col in ("ids", "y_true", "y_pred", "topk"):
                np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
            np.testing.assert_allclose(a.score, b.score, rtol=1e-6)
        boards = [json.loads(build_leaderboard(s, n_resamples=200).json_text()) for s in (got, want)]
    for board in boards:  # where, when and on how many threads it was made, not what it says
        del board["meta"]["store"], board["meta"]["generated_at"], board["meta"]["machines"]
    assert boards[0] == boards[1] and len(boards[0]["cells"]) == 8  # 2 models x 2 tasks x 2 protocols


def test_a_file_size_limit_during_the_store_write_is_one_line_and_loses_nothing(tmp_path: Path) -> None:
    """``ulimit -f`` stands in for a full disk: the run stops with one line naming the store and the space it
    needs, exit 2, the experiment in flight rolled back, the ones stored before intact and no claim left."""
    resource = pytest.importorskip("resource")
    sweep = _sweep(tmp_path)
    store = tmp_path / "out" / "results.sqlite"
    first = _start(sweep, "--model", "pixels", "--seed", "0")  # half the plan; its embeddings are cached, so
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    before = {}
    with Store(store, create=False) as s:
        for exp in s.experiments():
            before[exp.config_hash] = s.predictions(exp.id).y_pred
    assert len(before) == 4  # only the store grows in the run below

    def limit() -> None:  # room for SQLite's 32 kB shared-memory index and a claim, not for the experiment after it
        resource.setrlimit(resource.RLIMIT_FSIZE, (36_000, resource.RLIM_INFINITY))

    proc = _start(sweep, "--model", "pixels", preexec_fn=limit)
    out, err = proc.communicate(timeout=300)
    print(f"\nfile-size limit: exit {proc.returncode}; {err.strip()}")
    assert proc.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"lifebench: error: results store {store}: could not write experiment ")
    assert "(disk I/O error)" in lines[0] and "every result stored before is kept" in lines[0]
    need = float(lines[0].split("needs about ")[1].split(" MB free in ")[0])  # 1 MiB margin + twice a few kB
    assert 1.05 < need < 1.2 and "ulimit -f, now 36.0 kB" in lines[0], lines[0]
    assert _query(store, "PRAGMA integrity_check") == "ok"
    assert _query(store, "SELECT COUNT(*) FROM claims") == 0
    with Store(store, create=False) as s:
        assert {e.config_hash for e in s.experiments()} == set(before)
        for exp in s.experiments():
            np.testing.assert_array_equal(s.predictions(exp.id).y_pred, before[exp.config_hash])


def test_sigterm_unwinds_the_runner_and_the_previous_handlers_come_back() -> None:
    from lifebench.runner.run import _interruptible

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), _interruptible():
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)  # else the kill ends pytest
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # interrupted at once
    assert {sig: signal.getsignal(sig) for sig in before} == before

    def mine(signum: int, frame: object) -> None:  # a handler the caller set is the caller's: left in place
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        with _interruptible():
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)
