"""The runner stores exactly what each protocol predicts, for single splits and cross-fitting folds."""

from __future__ import annotations

import numpy as np
import pytest

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
