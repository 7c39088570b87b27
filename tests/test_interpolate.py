"""Weight-space interpolation (WiSE-FT) of two random-init tiny CLIPs, evaluated on the μ-Bench fixture."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lifebench.cli import main
from lifebench.errors import ConfigError
from lifebench.interpolate import interpolate_state_dicts, parse_alphas
from lifebench.store import Store
from lifebench.tasks.microscopy import ubench

A = "open_clip:lbtest-tiny-clip@random:1"
B = "open_clip:lbtest-tiny-clip@random:2"


pytestmark = pytest.mark.usefixtures("fresh_logging")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interp-data")
    folder = root / "ubench"
    shards = []
    for key, data in ubench.make_fixture().items():
        p = folder / ".downloads" / Path(key).name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        shards.append(p)
    ubench._unpack(folder, shards, show_progress=False)
    return root


def test_interpolation_is_exact_at_the_ends_and_linear_between():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(4, 3, generator=g), "h": torch.randn(5, generator=g, dtype=torch.float64).half(),
         "ids": torch.arange(5), "n": torch.tensor(3)}
    b = {"w": torch.randn(4, 3, generator=g), "h": torch.randn(5, generator=g, dtype=torch.float64).half(),
         "ids": torch.arange(5) + 1, "n": torch.tensor(7)}
    zero, one, mid = (interpolate_state_dicts(a, b, al) for al in (0.0, 1.0, 0.3))
    for k in a:
        assert torch.equal(zero[k], a[k]) and zero[k].dtype == a[k].dtype
        assert torch.equal(one[k], b[k]) and one[k].dtype == b[k].dtype
    np.testing.assert_allclose(mid["w"].numpy(), 0.7 * a["w"].numpy() + 0.3 * b["w"].numpy(), rtol=1e-6)
    assert mid["h"].dtype == torch.float16
    np.testing.assert_allclose(mid["h"].float().numpy(), (0.7 * a["h"].double() + 0.3 * b["h"].double()).numpy(),
                               rtol=1e-3)
    assert torch.equal(mid["ids"], a["ids"]) and torch.equal(interpolate_state_dicts(a, b, 0.6)["n"], b["n"])
    zero["w"] += 1  # copies, not views of the endpoints
    assert not torch.equal(zero["w"], a["w"])
    with pytest.raises(ConfigError, match=r"A and B are different architectures: parameter 'n' is only in A"):
        interpolate_state_dicts(a, {k: v for k, v in b.items() if k != "n"}, 0.5)
    with pytest.raises(ConfigError, match=r"'w' is \(4, 3\) torch.float32 in A but \(3, 4\) torch.float32 in B"):
        interpolate_state_dicts(a, {**b, "w": torch.zeros(3, 4)}, 0.5)


def test_parse_alphas():
    assert parse_alphas("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas("1, 0,0.5,0.5") == [0.0, 0.5, 1.0]
    assert len(parse_alphas("0:1:0.1")) == 11 and parse_alphas("0:1:0.1")[3] == 0.3
    for bad in ("", "a,b", "0:1:0", "nan"):
        with pytest.raises(ConfigError, match="--alphas"):
            parse_alphas(bad)


def test_interpolate_command_plots_scores_and_the_ends_reproduce_the_endpoints(tiny_open_clip, data_root, tmp_path,
                                                                              capsys):
    store, cache, out = tmp_path / "r.sqlite", tmp_path / "cache", tmp_path / "report"
    common = ["--data-root", str(data_root), "--store", str(store), "--workers", "0", "--device", "cpu",
              "--cache-dir", str(cache)]
    assert main(["interpolate", A, B, "--alphas", "0,0.5,1", "--suite", "microscopy", "--out", str(out),
                 *common]) == 0
    text = capsys.readouterr().out
    assert "interpolation (1 - alpha) * A + alpha * B" in text and "microscopy" in text
    assert (out / "interpolation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "interpolation.csv", encoding="utf-8")))
    assert len(rows) == 3 * 6 and {r["group"] for r in rows} == {"microscopy"}
    assert {float(r["alpha"]) for r in rows} == {0.0, 0.5, 1.0}
    curves = json.loads((out / "interpolation.json").read_text())["curves"]["microscopy"]
    for alpha, mean in curves:
        assert mean == pytest.approx(np.mean([float(r["point"]) for r in rows if float(r["alpha"]) == alpha]))

    from lifebench.backbones import load_backbone

    (folder,) = (cache / "interpolated").iterdir()
    for alpha, end in ((0.0, A), (1.0, B)):  # the end checkpoints are the endpoints, bit for bit
        saved = torch.load(folder / f"alpha-{alpha:.4f}.pt", weights_only=True)
        want = load_backbone(end).module.state_dict()
        assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)

    assert main(["-q", "run", "--suite", "microscopy", "--model", A, "--model", B, *common]) == 0
    with Store(store) as s:
        by = {(e.backbone, e.task): s.predictions(e.id) for e in s.experiments()}
    for alpha, end in ((0.0, A), (1.0, B)):
        model = f"open_clip:lbtest-tiny-clip@{(folder / f'alpha-{alpha:.4f}.pt').resolve()}"
        for task in ubench.TASKS:
            got, want = by[(model, task)], by[(end, task)]
            assert got.ids.tolist() == want.ids.tolist() and got.y_pred.tolist() == want.y_pred.tolist()
            np.testing.assert_array_equal(got.score, want.score)

    n_exp = len(by)
    assert main(["-q", "interpolate", A, B, "--alphas", "0,0.5,1", "--suite", "microscopy", "--out", str(out),
                 *common]) == 0  # a rerun reuses the checkpoints and the stored results
    with Store(store) as s:
        assert len(s.experiments()) == n_exp


def test_different_architectures_are_refused_with_one_line(tiny_open_clip, data_root, tmp_path, capsys):
    cfg = tmp_path / "lbtest-tiny-clip-wide.json"
    cfg.write_text(json.dumps({
        "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    tiny_open_clip.add_model_config(cfg)
    common = ["--suite", "microscopy", "--data-root", str(data_root), "--store", str(tmp_path / "r.sqlite"),
              "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--workers", "0"]
    assert main(["interpolate", A, "open_clip:lbtest-tiny-clip-wide@random:2", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are different architectures; interpolation needs two checkpoints of one" in err[0]
    assert not (tmp_path / "c" / "interpolated").exists()

    # same architecture name, other parameter shapes (a checkpoint saved from another model)
    wide = tiny_open_clip.create_model("lbtest-tiny-clip-wide", pretrained=None).state_dict()
    torch.save(wide, tmp_path / "wide.pt")
    with pytest.raises(ConfigError):
        from lifebench.interpolate import checkpoints

        checkpoints(A, f"open_clip:lbtest-tiny-clip@{tmp_path / 'wide.pt'}", [0.5], tmp_path / "c")
    assert main(["interpolate", "open_clip:hf-hub:imageomics/bioclip", A, *common]) == 2
    assert "give both checkpoints as <family>:<architecture>@<file>" in capsys.readouterr().err


def test_interpolate_on_a_folder_task_scores_it_under_the_folder_name(tiny_open_clip, tmp_path, capsys, monkeypatch):
    from conftest import make_folder

    folder = make_folder(tmp_path / "bugs", per_class=6)
    out = tmp_path / "report"
    args = ["interpolate", A, B, "--alphas", "0,1", "--task", str(folder), "--out", str(out), "--store",
            str(tmp_path / "r.sqlite"), "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--workers", "0"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "tasks" in text.splitlines()[1] and text.splitlines()[2].startswith("0.000")
    rows = list(csv.DictReader(open(out / "interpolation.csv", encoding="utf-8")))
    assert [(float(r["alpha"]), r["group"], r["task"], r["metric"]) for r in rows] == [
        (0.0, "tasks", "bugs", "macro_f1"), (1.0, "tasks", "bugs", "macro_f1")]
    assert all(0 <= float(r["low"]) <= float(r["point"]) <= float(r["high"]) <= 1 for r in rows)
    saved = json.loads((out / "interpolation.json").read_text())
    assert saved["groups"] == {"tasks": ["bugs"]}
    assert saved["curves"] == {"tasks": [[0.0, pytest.approx(float(rows[0]["point"]))],
                                         [1.0, pytest.approx(float(rows[1]["point"]))]]}
    assert (out / "interpolation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # no score at all (here: a leaderboard without cells) fails with one line naming the tasks asked for
    import lifebench.report

    class Empty:
        cells = ()

    monkeypatch.setattr(lifebench.report, "build_leaderboard", lambda *a, **k: Empty())
    assert main(["-q", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lifebench: error: interpolation got no score for the tasks asked for ({folder}) from the 2 interpolated "
                   "checkpoints; rerun with --force to recompute their experiments"]


def test_groups_name_tasks_by_their_resolved_names(tmp_path):
    from types import SimpleNamespace

    from lifebench.interpolate import resolve_groups

    folder = tmp_path / "bugs"
    folder.mkdir()
    bugs = SimpleNamespace(name="bugs", source=str(folder.resolve()))
    ubench_task = SimpleNamespace(name="ubench-a", source="")
    groups = {"microscopy": ["ubench-a"], "tasks": [str(folder), "ubench-a"]}
    assert resolve_groups(groups, [ubench_task, bugs]) == {"microscopy": ["ubench-a"], "tasks": ["bugs", "ubench-a"]}
    assert resolve_groups({"tasks": ["alias"]}, [bugs]) == {"tasks": ["bugs"]}  # by position, as the CLI resolves
    with pytest.raises(ConfigError, match=r"^task 'other' is not among the evaluated tasks \(bugs\)"):
        resolve_groups({"tasks": ["bugs", "other"]}, [bugs])


def test_differing_classifier_heads_are_dropped_and_other_differences_still_refused():
    from lifebench.interpolate import drop_differing_heads

    g = torch.Generator().manual_seed(0)
    body = {"conv.weight": torch.randn(4, 3, generator=g), "bn.num_batches_tracked": torch.tensor(2)}
    a = {**body, "classifier.weight": torch.randn(10, 4, generator=g), "classifier.bias": torch.zeros(10)}
    b = {**{k: v + 1 for k, v in body.items()}, "classifier.weight": torch.randn(5, 4, generator=g),
         "classifier.bias": torch.zeros(5)}
    sa, sb = drop_differing_heads(a, b, ("classifier",))
    assert set(sa) == set(sb) == set(body)  # both heads go, weight and bias
    mid = interpolate_state_dicts(sa, sb, 0.25)
    torch.testing.assert_close(mid["conv.weight"], 0.75 * a["conv.weight"] + 0.25 * b["conv.weight"])
    head_less = {k: v for k, v in b.items() if not k.startswith("classifier")}  # a checkpoint without a head
    assert set(drop_differing_heads(a, head_less, ("classifier",))[0]) == set(body)
    same = {**b, "classifier.weight": torch.randn(10, 4, generator=g), "classifier.bias": torch.ones(10)}
    assert drop_differing_heads(a, same, ("classifier",)) == (a, same)  # heads of one width are interpolated
    assert drop_differing_heads(a, b, ()) == (a, b)  # no head named (open_clip): nothing dropped
    # a backbone that differs is another architecture, whatever the heads
    wide = {**b, "conv.weight": torch.zeros(4, 6)}
    with pytest.raises(ConfigError, match=r"different architectures: 'conv.weight' is \(4, 3\) torch.float32 in A "
                                          r"but \(4, 6\) torch.float32 in B"):
        interpolate_state_dicts(*drop_differing_heads(a, wide, ("classifier",)), 0.5)
    with pytest.raises(ConfigError, match=r"'classifier.weight' is \(10, 4\) torch.float32 in A but \(5, 4\)"):
        interpolate_state_dicts(a, b, 0.5)  # without dropping, the heads alone make them differ
