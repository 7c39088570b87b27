"""The suite's dry-run plan on a data root holding three fixture tasks: what runs, and why the rest does not."""

from __future__ import annotations

from lifebench.cli import main
from lifebench.runner import expand
from lifebench.store import Store
from lifebench.tasks import resolve_task


def test_dry_run_lists_runs_done_elsewhere_and_missing(serve_task, tmp_path, capsys):
    for task in ("herbarium19", "newt", "fishnet"):
        serve_task(task)
    data = tmp_path / "data"
    for task in ("herbarium19", "newt", "fishnet"):
        assert main(["-q", "download", task, "--dir", str(data)]) == 0
    store = tmp_path / "s.sqlite"
    args = ["-q", "run", "--suite", "ecology", "--suite", "reference", "--data-root", str(data), "--model", "pixels",
            "--store", str(store), "--workers", "0"]

    assert main([*args, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    print(plan)
    assert "plan: 3 jobs, 10 tasks skipped" in plan
    for task, protocol in (("herbarium19", "logreg"), ("fishnet", "logreg"), ("newt", "logreg")):
        assert f"run{' ' * 37} {task} | pixels | {protocol} | seed 0" in plan
    assert "skip: plankton" in plan and "no train/ folder" in plan and "lifebench download plankton" in plan

    # another worker holds newt; fishnet gets done here first
    newt_job = expand([resolve_task("newt", data_root=data)], ["pixels"])[0]
    with Store(store) as s:
        assert s.claim(newt_job.config_hash, "other-host:4242:abc", newt_job.label())
    assert main(["-q", "run", "--task", "fishnet", *args[6:]]) == 0
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    print(plan)
    assert "skip: running elsewhere (other-host:4242:abc, alive" in plan
    assert "skip: done (experiment 1)" in plan and "fishnet | pixels" in plan
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 experiments run, 1 already in the store, 1 running elsewhere" in out


def test_n_train_a_suite_task_cannot_serve_is_one_skip_line_and_the_rest_runs(serve_task, tmp_path, capsys):
    for task in ("herbarium19", "beluga"):
        serve_task(task)
        assert main(["-q", "download", task, "--dir", str(tmp_path / "data")]) == 0
    args = ["-q", "run", "--suite", "ecology", "--data-root", str(tmp_path / "data"), "--model", "pixels",
            "--store", str(tmp_path / "s.sqlite"), "--workers", "0", "--n-train", "6"]
    assert main([*args, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "plan: 1 jobs, 9 tasks skipped" in plan and "herbarium19@n6 | pixels | logreg" in plan
    assert "skip: beluga@n6" in plan and "leave-one-out" in plan
    assert main(args) == 0
    assert "1 experiments run" in capsys.readouterr().out
    # named with --task, the same refusal stops the run at once: the user asked for exactly that
    assert main(["-q", "run", "--task", "beluga", *args[4:], "--dry-run"]) == 2
