"""Fine-tune a random-init tiny CLIP on the demo's photos, then measure gain, forgetting and the WiSE-FT alphas.

The photos are the demo's Tux Paint cut-outs where a test run fetched them before (``$LIFEBENCH_DATA/tuxpaint``);
elsewhere (no apt, offline) a generated stand-in with the same layout: five class folders of PNGs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lifebench.cli import main

BASE = "open_clip:lbtest-tiny-clip@random:1"
TUX_CLASSES = ("bird", "fish", "flower", "insect", "mammal")


pytestmark = pytest.mark.usefixtures("fresh_logging")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A data root whose ``tuxpaint`` folder holds the demo's photos (or the stand-in); LIFEBENCH_DATA points at it."""
    from conftest import write_image

    real = Path(os.environ["LIFEBENCH_DATA"]) / "tuxpaint"
    root = tmp_path_factory.mktemp("photos")
    if (real / ".complete").exists():
        shutil.copytree(real, root / "tuxpaint")
    else:
        rng = np.random.default_rng(0)
        for k, cls in enumerate(TUX_CLASSES):
            for i in range(12):
                colour = [(60 * k + 40) % 256, (90 * k) % 256, 255 - 40 * k]
                write_image(root / "tuxpaint" / cls / f"{cls}{i}.png", rng, size=(48, 40), colour=colour)
        (root / "tuxpaint" / ".complete").write_text("ok\n")
    old = os.environ["LIFEBENCH_DATA"]
    os.environ["LIFEBENCH_DATA"] = str(root)
    yield root
    os.environ["LIFEBENCH_DATA"] = old


def _tux_task():
    from lifebench.tasks.tuxpaint import load_default

    return load_default(n_folds=None, test_size=0.25, seed=0)


FT_ARGS = ["--task", "tuxpaint-organisms", "--steps", "6", "--batch-size", "16", "--lr", "2e-3", "--device", "cpu",
           "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def finetuned(photos, tiny_open_clip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "tux.safetensors"
    assert main(["-q", "finetune", BASE, *FT_ARGS, "--out", str(out)]) == 0
    return out


def test_finetune_trains_on_the_train_split_and_writes_a_loadable_recipe(finetuned, capsys):
    from safetensors import safe_open

    from lifebench.backbones import load_backbone
    from lifebench.finetune import MIXED_TYPES, _text_type, read_recipe

    task = _tux_task()
    record = read_recipe(finetuned)
    trained = record["trained_on"]
    assert trained["ids"] == task.train.ids.tolist() and trained["n_test"] == len(task.test_idx)
    assert not set(trained["ids"]) & set(task.test.ids.tolist())  # the test split was held out
    assert len(trained["images"]) <= len(trained["ids"]) and trained["split_options"] == {"test_size": 0.25,
                                                                                          "split_seed": 0}
    assert record["recipe"]["steps"] == 6 and record["recipe"]["precision"] == "fp32" and len(record["losses"]) == 6
    assert record["recipe"]["objective"] == "contrastive" and record["recipe"]["opt"] == "adamw"
    # no taxonomy in the demo task: every text type falls back to the label, in BioCLIP's caption
    assert trained["captions"]["taxon_com"] == [f"a photo of {c}." for c in task.classes]
    with safe_open(str(finetuned), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["lifebench_recipe"])["model"] == BASE
    assert json.loads(meta["lifebench_trained_on"])["n_train"] == len(task.train_idx)

    ft, base = load_backbone(f"open_clip:lbtest-tiny-clip@{finetuned}"), load_backbone(BASE)
    sa, sb = base.module.state_dict(), ft.module.state_dict()
    assert sa.keys() == sb.keys() and not torch.equal(sa["visual.conv1.weight"], sb["visual.conv1.weight"])
    assert float(sb["logit_scale"]) <= np.log(100) + 1e-6

    # one text type per step, drawn as BioCLIP's train.py draws it: random.seed(step); random.choice([...])
    recipe = type("R", (), {"text_type": "mixed"})
    for step in range(20):
        random.seed(step)
        assert _text_type(recipe, step) == random.choice(["sci", "com", "taxon", "sci_com", "taxon_com"])
    assert {_text_type(recipe, s) for s in range(50)} == set(MIXED_TYPES)

    # a rerun finds the weights done and trains nothing
    assert main(["finetune", BASE, *FT_ARGS, "--out", str(finetuned)]) == 0
    out = capsys.readouterr().out
    assert "holds this recipe's weights already" in out and "wrote" not in out


def test_logit_scale_is_clamped_to_ln_100_after_each_step(photos, tiny_open_clip, tmp_path):
    """BioCLIP's train.py (Imageomics/bioclip @ 4ea3247) clamps after every step:
    ``unwrap_model(model).logit_scale.clamp_(0, math.log(100))``; a base whose scale is above it comes out at ln 100."""
    from safetensors.torch import load_file

    from lifebench.backbones import load_backbone

    state = load_backbone(BASE).module.state_dict()
    state["logit_scale"] = torch.tensor(6.0)
    torch.save(state, tmp_path / "hot.pt")
    out = tmp_path / "hot-ft.safetensors"
    assert main(["-q", "finetune", f"open_clip:lbtest-tiny-clip@{tmp_path / 'hot.pt'}", "--task",
                 "tuxpaint-organisms", "--steps", "1", "--batch-size", "8", "--device", "cpu", "--out", str(out)]) == 0
    assert float(load_file(str(out))["logit_scale"]) == pytest.approx(np.log(100), abs=1e-6)


def test_captions_use_the_taxonomy_text_types():
    import dataclasses

    from lifebench.finetune import MIXED_TYPES, _captions
    from lifebench.tasks.base import Examples, Task

    ex = Examples(ids=np.array(["a", "b", "c"]), paths=np.array(["a", "b", "c"]), labels=np.array(["x", "y", "z"]))
    task = Task("t", ex, np.array([0, 2]), np.array([1]))
    task = dataclasses.replace(task, taxonomy={"x": {"kingdom": "Animalia", "genus": "Apis", "species": "mellifera",
                                                     "common": "honey bee"},
                                               "z": {"kingdom": "Plantae", "genus": "Bellis", "species": "perennis"}})
    caps = _captions(task, MIXED_TYPES)
    assert caps["sci"] == ["a photo of Apis mellifera.", "a photo of y.", "a photo of Bellis perennis."]
    assert caps["com"][0] == "a photo of honey bee."
    assert caps["taxon"][0] == "a photo of Animalia Apis mellifera."
    assert caps["sci_com"][0] == "a photo of Apis mellifera with common name honey bee."
    assert caps["taxon_com"][0] == "a photo of Animalia Apis mellifera with common name honey bee."
    # no common name: BioCLIP's make_wds.make_txt (Imageomics/bioclip @ 4ea3247, scripts/evobio10m/make_wds.py)
    # sets common = taxon.scientific before writing com, sci_com and taxon_com
    assert [caps[t][2] for t in ("com", "sci_com", "taxon_com")] == [
        "a photo of Bellis perennis.", "a photo of Bellis perennis with common name Bellis perennis.",
        "a photo of Plantae Bellis perennis with common name Bellis perennis."]


def test_learning_rate_follows_bioclips_cosine_after_the_warmup():
    """timm's scheduler, set up so that after the warmup it equals BioCLIP's and wise-ft's ``cosine_lr``
    (Imageomics/bioclip @ 4ea3247, src/training/scheduler.py: ``e = step - warmup_length; es = steps -
    warmup_length; lr = 0.5 * (1 + cos(pi * e / es)) * base_lr``); the warmup is timm's linear ramp from 0."""
    import math

    from lifebench.finetune import Recipe, _optimizer

    recipe = Recipe(model="m", family="timm", arch="a", objective="classification", task="t", epochs=1, steps=20,
                    steps_per_epoch=20, batch_size=2, lr=1e-3, weight_decay=0.1, warmup_steps=4, seed=0,
                    precision="fp32")
    optimizer, scheduler = _optimizer(recipe, torch.nn.Linear(3, 2))
    lrs = []
    for step in range(recipe.steps):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:4] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4])
    assert lrs[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * (s - 4) / 16)) * 1e-3 for s in range(4, 20)])
    assert max(lrs) == pytest.approx(1e-3)  # the peak is reached
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.1]  # none on the bias


def _reference_folder(root: Path, photos: Path, finetuned: Path) -> Path:
    """A second task: colour classes, plus a 'bird' class holding two of the fine-tuning images (leakage)."""
    from conftest import make_folder

    folder = make_folder(root / "bugs", per_class=6)
    trained = json.loads(finetuned.with_suffix(".json").read_text())["trained_on"]["ids"]
    birds = [i for i in trained if i.startswith("bird/")][:2]
    for k, rel in enumerate(birds):
        (folder / "bird").mkdir(exist_ok=True)
        shutil.copyfile(photos / "tuxpaint" / rel, folder / "bird" / f"copy{k}.png")
    for k in range(4):  # enough birds to fit a probe
        shutil.copyfile(folder / "ant" / f"ant{k}.png", folder / "bird" / f"b{k}.png")
    return folder


def test_forgetting_reports_gain_forgetting_best_alpha_and_leakage(finetuned, photos, tmp_path, capsys):
    folder = _reference_folder(tmp_path, photos, finetuned)
    out, store = tmp_path / "report", tmp_path / "r.sqlite"
    ft_id = f"open_clip:lbtest-tiny-clip@{finetuned}"
    args = ["forgetting", BASE, ft_id, "--target", "tuxpaint-organisms", "--task", str(folder), "--alphas",
            "0,0.5,1", "--budget", "0.05", "--out", str(out), "--store", str(store), "--cache-dir",
            str(tmp_path / "cache"), "--device", "cpu", "--workers", "0"]
    assert main(["-q", *args]) == 0
    text = capsys.readouterr().out
    assert "gain vs base" in text and "forgetting tasks" in text
    assert "alpha 0 = base: reproduced exactly on every task" in text
    assert "alpha 1 = fine-tuned: reproduced exactly on every task" in text
    report = json.loads((out / "forgetting.json").read_text())
    assert [s["model"] for s in report["summary"]] == ["base", "fine-tuned", "alpha=0", "alpha=0.5", "alpha=1"]
    by = {s["model"]: s for s in report["summary"]}
    for s in report["summary"]:
        assert s["target_low"] <= s["target"] <= s["target_high"]
        lo_f, hi_f = s["forgetting"]["tasks"][1:]
        assert lo_f <= s["forgetting"]["tasks"][0] <= hi_f
    assert by["base"]["gain"] == 0 and by["base"]["forgetting"]["tasks"][0] == 0
    for alpha, end in (("alpha=0", "base"), ("alpha=1", "fine-tuned")):  # exact, not approximately
        assert by[alpha]["target"] == by[end]["target"] and by[alpha]["general"] == by[end]["general"]
        assert by[alpha]["gain"] == by[end]["gain"]
    rows = {(r["model"], r["task"]): r for r in report["rows"]}
    for task in ("tuxpaint-organisms", "bugs"):
        ft, base = rows[("fine-tuned", task)], rows[("base", task)]
        assert ft["diff"] == pytest.approx(ft["point"] - base["point"], abs=1e-12)
        assert ft["diff_low"] <= ft["diff"] <= ft["diff_high"]
    # the paired interval of the gain is narrower than the marginal intervals put together
    ft = by["fine-tuned"]
    assert ft["gain_high"] - ft["gain_low"] < (ft["target_high"] - ft["target_low"]) + (
        by["base"]["target_high"] - by["base"]["target_low"])
    ok = [s for s in report["summary"] if s["alpha"] is not None and s["forgetting"]["tasks"][0] <= 0.05]
    assert report["best_alpha"] == max(ok, key=lambda s: (s["target"], -s["alpha"]))["alpha"]
    assert "alphas whose forgetting point estimate is at most 0.05 on every group" in text

    # the intervals: the leaderboard's cell for the target score; for the gain and the forgetting, the percentile
    # interval of the per-resample differences from the base on the leaderboard's shared bootstrap resamples
    from lifebench.report import build_leaderboard
    from lifebench.store import Store

    with Store(store) as st:
        board = build_leaderboard(st, tasks=["tuxpaint-organisms", "bugs"], n_resamples=1000, seed=0)
    cell = {(c.backbone, c.task): c for c in board.cells}
    res = {(c.backbone, c.task): board.resamples[(c.task, c.metric, c.backbone, c.protocol)] for c in board.cells}
    for name in ("fine-tuned", "alpha=0.5"):
        s, model = by[name], by[name]["backbone"]
        assert (s["target_low"], s["target_high"]) == (cell[(model, "tuxpaint-organisms")].low,
                                                      cell[(model, "tuxpaint-organisms")].high)
        gain = res[(model, "tuxpaint-organisms")] - res[(BASE, "tuxpaint-organisms")]
        assert [s["gain_low"], s["gain_high"]] == pytest.approx(np.quantile(gain, [0.025, 0.975]), abs=1e-12)
        lost = res[(BASE, "bugs")] - res[(model, "bugs")]
        assert s["forgetting"]["tasks"][1:] == pytest.approx(np.quantile(lost, [0.025, 0.975]), abs=1e-12)
    assert by["fine-tuned"]["gain_high"] > by["fine-tuned"]["gain_low"]
    leak = "\n".join(report["leakage"])
    assert "bugs: 2 of its" in leak and "were fine-tuning images of tuxpaint-organisms" in leak
    assert "bugs: shares 1 of its 4 classes with the fine-tuning task tuxpaint-organisms: bird" in leak
    assert ("tuxpaint-organisms: shares 5 of its 5 classes with the fine-tuning task tuxpaint-organisms (the target "
            "itself: expected)") in leak
    assert not any(line.startswith("tuxpaint-organisms: ") and "test images" in line for line in report["leakage"])
    assert (out / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"csv", "txt"} <= {p.suffix[1:] for p in out.iterdir()}


def test_killed_finetune_resumes_to_the_weights_of_an_uninterrupted_run(finetuned, photos, tmp_path, tiny_open_clip):
    from safetensors.torch import load_file

    from lifebench.finetune import state_path

    out = tmp_path / "killed.safetensors"  # the child registers the tiny architecture itself, from TINY_CLIP
    script = f"""
import json, sys, time, tempfile, pathlib
sys.path.insert(0, {str(Path(__file__).parent)!r})
import torch
torch.set_num_threads(1)
import open_clip
from conftest import TINY_CLIP
cfg = pathlib.Path(tempfile.mkdtemp()) / "lbtest-tiny-clip.json"
cfg.write_text(json.dumps(TINY_CLIP))
open_clip.add_model_config(cfg)
import lifebench.finetune as ft
save = ft._save_state
def save_then_wait(*a, **k):
    save(*a, **k)
    time.sleep(300)  # killed here, after its first checkpoint
ft._save_state = save_then_wait
from lifebench.cli import main
sys.exit(main(["-q", "finetune", {BASE!r}, *{FT_ARGS!r}, "--out", {str(out)!r}]))
"""
    env = {**os.environ, "LIFEBENCH_DATA": str(photos), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = state_path(out)
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.exists(), proc.communicate(timeout=5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert torch.load(state, weights_only=False)["step"] == 2

    assert main(["finetune", BASE, *FT_ARGS, "--out", str(out)]) == 0
    assert not state.exists()
    resumed, whole = load_file(str(out)), load_file(str(finetuned))
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["losses"] == json.loads(finetuned.with_suffix(".json").read_text())["losses"]


TIMM_BASE = "timm:test_efficientnet@random"


def test_timm_finetune_with_a_classification_head_loads_for_run_and_forgetting_drops_the_head(photos, tmp_path,
                                                                                             capsys):
    """A 5-class head on a 1000-class base: the backbones are interpolated, the heads (unused by probes) dropped."""
    from safetensors.torch import load_file

    from lifebench.backbones import load_backbone

    out = tmp_path / "eff.safetensors"
    assert main(["-q", "finetune", TIMM_BASE, "--task", "tuxpaint-organisms", "--steps", "2",
                 "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["recipe"]["objective"] == "classification" and record["backbone_id"] == f"timm:test_efficientnet@{out}"
    model = load_backbone(record["backbone_id"])
    assert model.module.num_classes == 5 and model.embed_dim > 0
    assert load_backbone(TIMM_BASE).module.num_classes == 1000

    from conftest import make_folder

    folder = make_folder(tmp_path / "bugs", per_class=6)
    report, cache = tmp_path / "report", tmp_path / "cache"
    assert main(["-q", "forgetting", TIMM_BASE, f"timm:test_efficientnet@{out}", "--target", "tuxpaint-organisms",
                 "--task", str(folder), "--alphas", "0,0.5,1", "--out", str(report), "--store",
                 str(tmp_path / "r.sqlite"), "--cache-dir", str(cache), "--device", "cpu", "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "alpha 0 = base: reproduced exactly on every task" in text
    assert "alpha 1 = fine-tuned: reproduced exactly on every task" in text
    doc = json.loads((report / "forgetting.json").read_text())
    by = {s["model"]: s for s in doc["summary"]}
    for alpha, end in (("alpha=0", "base"), ("alpha=1", "fine-tuned")):  # the scores of the ends, bit for bit
        assert (by[alpha]["target"], by[alpha]["general"]) == (by[end]["target"], by[end]["general"])

    # the interpolated checkpoints hold the backbone only: alpha 0 is the base's, alpha 1 the fine-tuned one's
    (written,) = list((cache / "interpolated").iterdir())
    base_sd = load_backbone(TIMM_BASE).module.state_dict()
    ft_sd = load_file(str(out))
    ends = {al: torch.load(written / f"alpha-{al:.4f}.pt", weights_only=True) for al in (0.0, 0.5, 1.0)}
    assert set(ends[0.5]) == set(base_sd) - {"classifier.weight", "classifier.bias"}
    for key in ends[0.5]:
        assert torch.equal(ends[0.0][key], base_sd[key]) and torch.equal(ends[1.0][key], ft_sd[key])
    w = "conv_stem.weight"
    assert not torch.equal(base_sd[w], ft_sd[w])  # fine-tuning trained the backbone, not only the head
    torch.testing.assert_close(ends[0.5][w], 0.5 * base_sd[w] + 0.5 * ft_sd[w])
    assert load_backbone(f"timm:test_efficientnet@{written / 'alpha-0.5000.pt'}").module.num_classes == 0

    # another architecture is still refused, in one line, before anything is written
    assert main(["-q", "forgetting", TIMM_BASE, "timm:test_vit@random", "--target", "tuxpaint-organisms", "--task",
                 str(folder), "--cache-dir", str(tmp_path / "other"), "--store", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are different architectures; interpolation needs two checkpoints" in err[0], err
    assert not (tmp_path / "other" / "interpolated").exists()


@pytest.mark.parametrize("argv, message", [
    (["finetune", BASE, "--task", "tuxpaint-organisms", "--out", "x.pt"], "is a .safetensors file"),
    (["finetune", "efficientnet-lite0", "--task", "tuxpaint-organisms", "--out", "x.safetensors"],
     "cannot fine-tune 'efficientnet-lite0'"),
    (["finetune", BASE, "--task", "tuxpaint-organisms", "--out", "x.safetensors", "--folds", "5"],
     "--folds 5: fine-tuning trains on a train split"),
    (["finetune", BASE, "--task", "tuxpaint-organisms", "--out", "x.safetensors", "--lr", "-1"], "--lr -1.0"),
    (["forgetting", BASE, BASE, "--target", "tuxpaint-organisms"], "give at least one reference --suite or --task"),
    (["forgetting", BASE, BASE, "--target", "tuxpaint-organisms", "--task", "tuxpaint-organisms", "--alphas", "x"],
     "--alphas 'x'"),
])
def test_bad_inputs_are_one_line_and_exit_2(photos, tiny_open_clip, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
