"""The runner stores exactly what each protocol predicts, for single splits and cross-fitting folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lifebench
from conftest import make_folder
from lifebench.backbones import load_backbone
from lifebench.features import embed
from lifebench.protocols import make_protocol
from lifebench.runner import RunOptions, expand, run_jobs
from lifebench.store import Store
from lifebench.tasks import load_task


@pytest.mark.parametrize("protocol, params", [("logreg", {}), ("simpleshot", {}), ("knn", {"n_neighbors": 4})])
@pytest.mark.parametrize("folds", [None, 3])
def test_stored_predictions_are_the_estimators_predictions(tmp_path, protocol, params, folds):
    task = load_task(make_folder(tmp_path / "data", per_class=9, seed=3), n_folds=folds, test_size=0.34)
    cache = tmp_path / "cache"
    with Store(tmp_path / "s.sqlite") as store:
        (result,) = run_jobs(expand([task], ["pixels"], [protocol], params), store,
                             RunOptions(cache_dir=cache, device="cpu", num_workers=0, show_progress=False))
        preds = store.predictions(result.experiment_id)
        exp = store.get(result.job.config_hash)
    emb = embed(load_backbone("pixels"), task.examples, cache_dir=cache, device="cpu", show_progress=False)
    y = task.encode(task.examples.labels)
    expected = {}
    for train, test in task.evaluation_splits():
        est = make_protocol(protocol, **params, random_state=0).fit(emb.vectors[train], y[train])
        for i, code in zip(test, est.predict(emb.vectors[test]), strict=True):
            expected[task.examples.ids[i]] = task.classes[code]
    assert dict(zip(preds.ids, preds.y_pred, strict=True)) == expected
    assert (preds.topk[:, 0] == preds.y_pred).all()
    assert len(preds.ids) == (len(task.examples) if folds else len(task.test_idx))
    sizes = [len(tr) for tr, _ in task.evaluation_splits()]
    assert exp.n_train == round(float(np.mean(sizes)))
    assert exp.fit_info["weights_fingerprint"] and exp.provenance["device"].startswith("cpu")


def _frames_task(tmp_path, pool=True, open_set=False, row_extras=None):
    """Three classes of clips with 3 frames each; the frames of a clip share its class colour."""
    from conftest import write_image
    from lifebench.tasks import Examples, Task

    rng = np.random.default_rng(0)
    ids, paths, labels, groups, split = [], [], [], [], []
    colours = {"graze": (200, 30, 30), "run": (30, 200, 30), "walk": (30, 30, 200)}
    for label, colour in colours.items():
        for clip in range(4):
            for f in range(3):
                rel = f"{label}_{clip}/frame_{f:02d}.png"
                write_image(tmp_path / "frames" / rel, rng, colour=colour)
                ids.append(rel), paths.append(str(tmp_path / "frames" / rel)), labels.append(label)
                groups.append(f"{label}_{clip}"), split.append("test" if clip == 3 else "train")
    split = np.array(split)
    if open_set:  # "walk" clips only in test
        split[np.array(labels) == "walk"] = "test"
    ex = Examples(np.array(ids), np.array(paths), np.array(labels), np.array(groups))
    how = "max" if pool else None
    return Task("clips", ex, np.flatnonzero(split == "train"), np.flatnonzero(split == "test"), pool_train=how,
                pool_test=how, open_set=open_set, row_extras=row_extras, protocol="simpleshot")


def test_pooled_task_stores_one_prediction_per_clip(tmp_path):
    task = _frames_task(tmp_path)
    cache = tmp_path / "cache"
    with Store(tmp_path / "s.sqlite") as store:
        (result,) = run_jobs(expand([task], ["pixels"]), store,
                             RunOptions(cache_dir=cache, device="cpu", num_workers=0, show_progress=False))
        preds = store.predictions(result.experiment_id)
    assert result.job.protocol == "simpleshot"  # the task's own protocol when none is given
    assert preds.ids.tolist() == ["graze_3", "run_3", "walk_3"] and result.fit_info["n_train"] == 9
    emb = embed(load_backbone("pixels"), task.examples, cache_dir=cache, device="cpu", show_progress=False)
    groups = task.examples.groups
    clips = sorted(set(groups[task.train_idx]))
    X = np.stack([emb.vectors[groups == c].max(axis=0) for c in clips])
    y = np.array([c.split("_")[0] for c in clips])
    est = make_protocol("simpleshot").fit(X, y)
    X_test = np.stack([emb.vectors[groups == c].max(axis=0) for c in preds.ids])
    assert preds.y_pred.tolist() == est.predict(X_test).tolist() == ["graze", "run", "walk"]


def test_closed_set_task_refuses_test_classes_absent_from_training(tmp_path):
    from lifebench.errors import DataError

    task = _frames_task(tmp_path, open_set=False)
    task = type(task)(**{**task.__dict__, "train_idx": task.train_idx[task.examples.labels[task.train_idx] != "walk"]})
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(DataError, match="test classes absent from training: 'walk'"):
            run_jobs(expand([task], ["pixels"]), store, RunOptions(cache_dir=tmp_path / "c", device="cpu",
                                                                    num_workers=0, show_progress=False))
        assert store.experiments() == []


def test_open_set_task_stores_row_extras(tmp_path):
    seen = {}

    def extras(y_true, y_pred, train_labels):
        seen["train"] = sorted(set(train_labels))
        unknown = ~np.isin(y_true, train_labels)
        return {"cost": np.where(unknown, 10.0, (y_true != y_pred).astype(float)), "worst": np.full(len(y_true), 11.0)}

    task = _frames_task(tmp_path, open_set=True, row_extras=extras)
    with Store(tmp_path / "s.sqlite") as store:
        (result,) = run_jobs(expand([task], ["pixels"]), store, RunOptions(cache_dir=tmp_path / "c", device="cpu",
                                                                           num_workers=0, show_progress=False))
        preds = store.predictions(result.experiment_id)
    assert seen["train"] == ["graze", "run"]
    assert preds.ids.tolist() == ["graze_3", "run_3", "walk_0", "walk_1", "walk_2", "walk_3"]
    np.testing.assert_array_equal(preds.extra["cost"], [0, 0, 10, 10, 10, 10])
    assert set(preds.extra) == {"cost", "worst"}


def test_open_set_unknown_prediction_is_ranked_first():
    from lifebench.runner.run import _ranked
    from lifebench.tasks.base import UNKNOWN

    class Stub:
        classes_ = np.array([0, 1, 2])

        def decision_function(self, X):
            return np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])

        def predict(self, X):
            return np.array([1, -1])

    pred, ranked, conf = _ranked(Stub(), np.zeros((2, 4)), np.array(["a", "b", "c"], dtype=object))
    assert pred.tolist() == ["b", UNKNOWN]
    assert ranked.tolist() == [["b", "a", "c"], [UNKNOWN, "a", "c"]]
    assert conf[0] == 0.9 and np.isnan(conf[1])


def test_n_train_subsamples_class_balanced_and_reuses_the_embedding(tmp_path):
    task = load_task(make_folder(tmp_path / "data", per_class=9, seed=3), test_size=0.34)
    jobs = expand([task], ["pixels"], ["logreg"], n_train=[6, 3], seeds=[0, 1])
    assert [j.task.name for j in jobs] == [f"{task.name}@n6", f"{task.name}@n3"] * 2
    small = jobs[1].task
    counts = np.unique(small.examples.labels[small.train_idx], return_counts=True)[1]
    assert len(small.train_idx) == 3 and counts.max() - counts.min() <= 1
    assert set(small.train_idx) <= set(jobs[0].task.train_idx)  # nested for one seed
    assert not np.array_equal(jobs[2].task.train_idx, jobs[0].task.train_idx)  # another seed, another draw
    assert np.array_equal(small.test_idx, task.test_idx)
    with Store(tmp_path / "s.sqlite") as store:
        results = run_jobs(jobs, store, RunOptions(cache_dir=tmp_path / "c", device="cpu", num_workers=0,
                                                   show_progress=False))
        assert sorted(e.n_train for e in store.experiments()) == [3, 3, 6, 6]
    assert [r.n_encoded for r in results] == [len(task.examples), 0, 0, 0]


def test_a_probe_is_never_scored_on_its_own_training_images(tmp_path):
    from lifebench.errors import ConfigError

    task = load_task(make_folder(tmp_path / "data", per_class=6, seed=3), test_size=0.34)
    everyone = task.__class__(**{**task.__dict__, "train_idx": np.arange(len(task.examples)),
                                 "test_idx": np.arange(len(task.examples))})
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(ConfigError, match="same images in train and test"):
            run_jobs(expand([everyone], ["pixels"], ["logreg"]), store,
                     RunOptions(cache_dir=tmp_path / "c", device="cpu", num_workers=0, show_progress=False))
        (few,) = run_jobs(expand([everyone], ["pixels"], ["few-shot"], shots=[2]), store,
                          RunOptions(cache_dir=tmp_path / "c", device="cpu", num_workers=0, show_progress=False))
        assert few.status == "done" and len(store.predictions(few.experiment_id)) == len(task.examples) - 2 * 3


def _kind_task(**fields):
    """Six examples of two classes (no image files: the kind reads only the task's fields)."""
    from lifebench.tasks import Examples, Task

    labels = np.array(["a", "b"] * 3)
    ex = Examples(np.array([f"x{i}" for i in range(6)]), np.array([f"/nowhere/x{i}.png" for i in range(6)]), labels,
                  np.array(["g0", "g0", "g1", "g1", "g2", "g2"]))
    return Task("kinds", ex, np.arange(4), np.arange(4, 6), **fields)


def test_task_kind_is_chosen_once_from_the_fields_with_a_documented_precedence(tmp_path):
    from lifebench.tasks.base import KINDS, Part, Question

    labels = np.array(["a", "b"] * 3)
    part = Part("p", labels, np.arange(4), np.arange(4, 6))
    questions = np.array([Question("which?", ("a", "b"))] * 6, dtype=object)
    folds = np.array([0, 1, 2] * 2)
    kinds = {
        "plain": _kind_task(),
        "pooled plain": _kind_task(pool_train="max", pool_test="mean"),  # pooling is a side option, not a kind
        "folds": _kind_task(folds=folds),
        "parts": _kind_task(parts=(part,)),
        "leave-one-out": _kind_task(leave_one_out=True),
        "open-set": _kind_task(open_set=True, pool_test="mean"),
        "multiple-choice": _kind_task(questions=questions),
        # several fields set: multiple-choice > parts > leave-one-out > open-set > folds > plain
        "mc over parts": _kind_task(questions=questions, parts=(part,)),
        "parts over leave-one-out": _kind_task(parts=(part,), leave_one_out=True),
        "leave-one-out over open set": _kind_task(leave_one_out=True, open_set=True),
        "open set over folds": _kind_task(open_set=True, folds=folds),
    }
    assert {name: t.kind for name, t in kinds.items()} == {
        "plain": "plain", "pooled plain": "plain", "folds": "folds", "parts": "parts",
        "leave-one-out": "leave-one-out", "open-set": "open-set", "multiple-choice": "multiple-choice",
        "mc over parts": "multiple-choice", "parts over leave-one-out": "parts",
        "leave-one-out over open set": "leave-one-out", "open set over folds": "open-set",
    }
    assert set(KINDS) == {t.kind for t in kinds.values()}
    # the loaders' own tasks: a folder is plain, or folds when cross-fitted; the clips fixture is open set
    folder = make_folder(tmp_path / "data", per_class=6, seed=3)
    assert load_task(folder, test_size=0.34).kind == "plain"
    assert load_task(folder, n_folds=3).kind == "folds"
    assert _frames_task(tmp_path, open_set=True).kind == "open-set"


def test_the_strategy_is_chosen_once_from_kind_protocol_and_backbone():
    from lifebench.errors import ConfigError
    from lifebench.runner import run
    from lifebench.runner.plan import Job
    from lifebench.tasks.base import KINDS, Part, Question

    class Encoder:
        id, generative = "enc", False

    class Generative:
        id, generative = "vlm", True

    def chosen(task, protocol, backbone=None):
        backbone = backbone or Encoder()
        strategy = run._strategy(Job(task=task, backbone=backbone.id, protocol=protocol), backbone)
        return strategy if strategy is run._generative else strategy.args[0]

    labels = np.array(["a", "b"] * 3)
    parts = _kind_task(parts=(Part("p", labels, np.arange(4), np.arange(4, 6)),))
    loo = _kind_task(leave_one_out=True)
    mc = _kind_task(questions=np.array([Question("which?", ("a", "b"))] * 6, dtype=object))
    assert chosen(_kind_task(), "logreg") is chosen(_kind_task(folds=np.arange(6) % 3), "knn") is run._probe
    assert chosen(parts, "logreg") is chosen(mc, "simpleshot") is run._probe  # a probe fits an MC task's labels
    assert chosen(_kind_task(open_set=True), "openset") is run._open_set
    assert chosen(loo, "reid") is run._leave_one_out
    assert chosen(_kind_task(), "zero-shot") is chosen(_kind_task(open_set=True), "zero-shot") is run._zero_shot
    assert chosen(mc, "zero-shot") is run._choices
    assert chosen(mc, "zero-shot", Generative()) is run._generative
    assert all((kind, False) in run._STRATEGIES for kind in KINDS)  # every kind runs under a probe
    for task in (parts, loo):  # zero-shot needs one class name per label: refused before anything is embedded
        with pytest.raises(ConfigError, match=f"is a '{task.kind}' task .* zero-shot needs one class name per label"):
            chosen(task, "zero-shot")
    with pytest.raises(ConfigError, match="has no multiple-choice questions"):
        chosen(_kind_task(), "zero-shot", Generative())
    with pytest.raises(ConfigError, match="a generative model answers without training images"):
        chosen(mc, "logreg", Generative())


def test_zero_shot_on_a_parts_task_stops_before_embedding(tmp_path, monkeypatch):
    from lifebench.errors import ConfigError
    from lifebench.runner import run
    from lifebench.tasks.base import Part

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded the images of a job that cannot run")

    monkeypatch.setattr(run, "embed", no_embedding)
    task = load_task(make_folder(tmp_path / "data", per_class=3, seed=3), test_size=0.34)
    parted = type(task)(**{**task.__dict__, "parts": (Part("p", task.examples.labels, task.train_idx, task.test_idx),)})
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(ConfigError, match="zero-shot needs one class name per label"):
            run_jobs(expand([parted], ["pixels"], ["zero-shot"]), store,
                     RunOptions(cache_dir=tmp_path / "c", device="cpu", num_workers=0, show_progress=False))
        assert store.experiments() == []


def test_no_lower_layer_imports_the_runner():
    """vlm, tasks and protocols sit below the runner (runner -> vlm, never back): importing them leaves it out."""
    import subprocess
    import sys

    code = ("import sys, lifebench.vlm.run, lifebench.tasks, lifebench.protocols, lifebench.tasks.base; "
            "list(lifebench.tasks.CATALOG); "  # discovery imports every task module
            "print(sorted(m for m in sys.modules if m.startswith(('lifebench.runner', 'lifebench.store'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_no_lower_layer_imports_the_runner_even_inside_a_function():
    """The layer order `cli -> runner -> {features, protocols, metrics, store, report} -> {backbones, tasks}` read
    from the source, so an import hidden inside a function (which the check above cannot see) counts too."""
    import ast

    root = Path(lifebench.__file__).parent
    above = {"lifebench.runner", "lifebench.cli", "lifebench.api", "lifebench.interpolate", "lifebench.finetune"}
    offenders = []
    for package in ("features", "protocols", "metrics", "store", "report", "backbones", "tasks", "vlm"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(root)}: {n}" for n in names
                              if any(n == m or n.startswith(m + ".") for m in above)]
    # the one exception: `lifebench.tasks()` (the package made callable for notebooks) answers with the API's listing
    assert offenders == ["tasks/__init__.py: lifebench.api"]
