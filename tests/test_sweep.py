"""Sweeps: the file, local workers sharing one store, kill -9 at random points, failures, and real Slurm."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_folder
from lifebench.backbones import load_backbone
from lifebench.cli import main
from lifebench.features import embed
from lifebench.tasks import load_task

LEASE = "3"  # seconds: claims of killed workers expire quickly in these tests


def _sweep(tmp_path: Path, extra: str = "", executor: str = "", models=("pixels",), seeds=(0, 1, 2, 3)) -> Path:
    for name, seed in (("a", 1), ("b", 2)):
        if not (tmp_path / "data" / name).exists():
            make_folder(tmp_path / "data" / name, per_class=6, seed=seed)
    text = f'''store = "out/results.sqlite"
cache_dir = "out/cache"
models = {list(models)!r}
tasks = ["data/a", "data/b"]
protocols = ["logreg", "simpleshot", "knn"]
seeds = {list(seeds)!r}
loader_workers = 0
device = "cpu"
{extra}
{executor}
'''.replace("'", '"')
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "LIFEBENCH_LEASE_S": LEASE, "OMP_NUM_THREADS": "1"}


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "lifebench.cli", *args], capture_output=True, text=True, env=_env())
    if check:
        assert out.returncode == 0, out.stderr
    return out


def _counts(store: Path) -> tuple[int, int, str]:
    with sqlite3.connect(store) as conn:
        n, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT config_hash) FROM experiments").fetchone()
        return n, distinct, conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_bad_sweep_files_fail_before_anything_runs(tmp_path, capsys):
    path = _sweep(tmp_path)
    path.write_text(path.read_text().replace("models =", "model ="))
    assert main(["sweep", str(path)]) == 2
    assert "unknown key 'model'; did you mean 'models'?" in capsys.readouterr().err
    path = _sweep(tmp_path, models=("efficientnet-lite9",))
    assert main(["sweep", str(path)]) == 2
    assert "unknown backbone 'efficientnet-lite9'" in capsys.readouterr().err
    path = _sweep(tmp_path, executor='[executor]\nkind = "cloud"')
    assert main(["sweep", str(path)]) == 2
    assert "kind = 'cloud'; use inprocess, local or slurm" in capsys.readouterr().err
    path = _sweep(tmp_path)
    path.write_text(path.read_text() + 'force = "yes"\n')  # a string is not a switch, even a truthy one
    assert main(["sweep", str(path)]) == 2
    assert "force = 'yes'; write force = true or force = false" in capsys.readouterr().err
    path = _sweep(tmp_path)
    assert main(["status", str(path)]) == 0  # nothing has run: status reads, and creates no store
    assert "24 remaining (no store yet" in capsys.readouterr().out and not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "results.sqlite").mkdir()  # a folder where the store file should be
    path = _sweep(tmp_path)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("cache*"))


def test_eight_local_workers_share_one_sweep(tmp_path):
    path = _sweep(tmp_path, executor='[executor]\nkind = "local"\nprocesses = 8')
    out = _cli("sweep", str(path))
    assert "sweep: 24 planned, 24 done, 0 running, 0 failed, 0 remaining" in out.stdout
    assert _counts(tmp_path / "out" / "results.sqlite") == (24, 24, "ok")
    again = _cli("sweep", str(path))  # a rerun finds everything done and adds nothing
    assert "24 done" in again.stdout and _counts(tmp_path / "out" / "results.sqlite")[0] == 24


def test_workers_killed_at_random_points_lose_nothing(tmp_path):
    path = _sweep(tmp_path, models=("pixels", "timm:resnet18@random"))
    rng = np.random.default_rng(7)
    argv = [sys.executable, "-m", "lifebench.cli", "-q", "sweep", str(path)]
    kills = 0
    for _ in range(3):  # rounds of three workers, each killed -9 at a random moment
        workers = [subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(3)]
        for w in workers:
            time.sleep(float(rng.uniform(0.5, 4.0)))
            if w.poll() is None:
                w.send_signal(signal.SIGKILL)
                kills += 1
        for w in workers:
            w.wait()
    # no wait: the killed workers' claims are on this host, so the rerun takes them over at once
    out = _cli("sweep", str(path))
    assert "sweep: 48 planned, 48 done, 0 running, 0 failed, 0 remaining" in out.stdout, out.stdout
    assert kills >= 3
    assert _counts(tmp_path / "out" / "results.sqlite") == (48, 48, "ok")
    # every cache entry loads, and equals a fresh computation
    for name in ("a", "b"):
        task = load_task(tmp_path / "data" / name)
        for model in ("pixels", "timm:resnet18@random"):
            backbone = load_backbone(model)
            cached = embed(backbone, task.examples, cache_dir=tmp_path / "out" / "cache", device="cpu",
                           num_workers=0, show_progress=False)
            fresh = embed(backbone, task.examples, cache_dir=None, device="cpu", num_workers=0, show_progress=False)
            assert cached.from_cache and cached.n_encoded == 0
            np.testing.assert_allclose(cached.vectors, fresh.vectors, rtol=1e-5, atol=1e-5)


def test_a_failing_job_is_recorded_and_the_rest_run(tmp_path):
    path = _sweep(tmp_path, seeds=(0,))
    bad = next((tmp_path / "data" / "b").rglob("*.png"))
    bad.write_bytes(b"not a png at all")
    out = _cli("sweep", str(path), check=False)
    assert out.returncode == 1
    assert "sweep: 6 planned, 3 done, 0 running, 3 failed, 0 remaining" in out.stdout
    assert "failed: b | pixels | logreg | seed 0: BadImageError: cannot read image" in out.stdout
    status = _cli("status", str(path))
    assert "3 failed" in status.stdout and "cannot read image" in status.stdout
    path.write_text(path.read_text() + "skip_bad_images = true\n")
    assert "6 planned, 6 done, 0 running, 0 failed" in _cli("sweep", str(path)).stdout


# --------------------------------------------------------------------------------------------- Slurm


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, check=False)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


slurm = pytest.mark.skipif(not _slurm_up(), reason="no running Slurm cluster (CI starts one with .ci/slurm-up.sh)")

SLURM = '''[executor]
kind = "slurm"
[executor.slurm]
partition = "debug"
cpus_per_task = 1
mem_gb = 2
timeout_min = 10
folder = "out/slurm/%j"'''


@slurm
@pytest.mark.slurm
def test_slurm_sweep_runs_and_survives_a_cancel(tmp_path):
    path = _sweep(tmp_path, executor=SLURM, models=("pixels", "timm:resnet18@random"), seeds=(0, 1))
    bad = tmp_path / "bad.toml"
    bad.write_text(path.read_text().replace('partition = "debug"', 'partition = "gpu-a100"'))
    out = _cli("sweep", str(bad), check=False)
    assert out.returncode == 2 and "Slurm partition 'gpu-a100' does not exist (partitions here: debug)" in out.stderr

    out = _cli("sweep", str(path), "--no-wait")
    assert "submitted 2 Slurm array tasks" in out.stdout
    time.sleep(4)
    subprocess.run(["scancel", "--name", "lifebench-sweep"], check=True)  # cancel both tasks mid-run
    time.sleep(float(LEASE) + 1)
    t0 = time.perf_counter()
    out = _cli("sweep", str(path))
    assert "sweep: 24 planned, 24 done, 0 running, 0 failed, 0 remaining" in out.stdout, out.stdout + out.stderr
    assert _counts(tmp_path / "out" / "results.sqlite") == (24, 24, "ok")
    print(f"Slurm rerun after a cancel: {time.perf_counter() - t0:.1f} s")


def test_run_config_file_takes_the_sweep_keys_and_the_command_line_wins(tmp_path, capsys, monkeypatch):
    """``run --config`` reads a sweep file's keys through the same table: defaults < file < command line, and a
    list given on the command line replaces the file's rather than extending it."""
    from lifebench.cli import build_parser

    monkeypatch.setenv("LIFEBENCH_CACHE", str(tmp_path / "cache"))
    make_folder(tmp_path / "data" / "a", per_class=4)
    config = tmp_path / "run.toml"
    config.write_text('models = ["pixels", "random-vit"]\ntasks = ["data/a"]\nseeds = [0, 1]\nloader_workers = 0\n'
                      'store = "out/results.sqlite"\n[executor]\nkind = "local"\n')  # a sweep file is a config file
    args = build_parser().parse_args(["run", "--config", str(config)])
    assert (args.model, args.seed, args.workers) == (["pixels", "random-vit"], [0, 1], 0)
    assert args.task == [str(tmp_path / "data" / "a")] and args.store == tmp_path / "out" / "results.sqlite"
    assert args.batch_size is None and args.protocol is None  # what neither gives keeps its default
    args = build_parser().parse_args(["run", "--config", str(config), "--model", "pixels", "--workers", "1"])
    assert (args.model, args.seed, args.workers) == (["pixels"], [0, 1], 1)

    assert main(["run", "--config", str(config), "--dry-run"]) == 0
    assert "plan: 4 jobs" in capsys.readouterr().out
    assert main(["run", "--config", str(config), "--seed", "5"]) == 0  # one key overridden: 2 models x 1 seed
    assert "2 experiments run" in capsys.readouterr().out
    with sqlite3.connect(tmp_path / "out" / "results.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 2

    config.write_text('models = ["pixels"]\ntasks = ["data/a"]\nworkers = 0\nloader_workers = 0\n')
    assert main(["run", "--config", str(config)]) == 2
    assert "loader_workers and workers are the same setting; keep workers" in capsys.readouterr().err
    config.write_text('models = ["pixels"]\ntask = ["data/a"]\n')
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"config file {config}: unknown key 'task'; did you mean 'tasks'?" in err and len(err.splitlines()) == 1
