"""Zero-shot and few-shot: BioCLIP's text types, parity with open_clip's classifier, k-shot folds, the CLI."""

from __future__ import annotations

import csv
import logging
import random

import numpy as np
import pytest
import torch

from conftest import write_image
from lifebench.backbones import load_backbone
from lifebench.cli import main
from lifebench.errors import ConfigError, DataError
from lifebench.features import embed_texts, zero_shot_weights
from lifebench.protocols import fit_info, make_protocol
from lifebench.report import build_leaderboard
from lifebench.store import Store
from lifebench.tasks import load_task
from lifebench.tasks.taxonomy import class_text, class_texts, default_templates, load_templates

RAVEN = {"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes",
         "family": "Corvidae", "genus": "Corvus", "species": "corax", "common": "Common Raven"}


@pytest.mark.parametrize("text_type, expected", [
    ("asis", "raven"),
    ("sci", "Corvus corax"),
    ("com", "Common Raven"),
    ("taxon", "Animalia Chordata Aves Passeriformes Corvidae Corvus corax"),
    ("sci_com", "Corvus corax with common name Common Raven"),
    ("taxon_com", "Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name Common Raven"),
])
def test_text_types_give_bioclips_strings(text_type, expected):
    assert class_text("raven", RAVEN, text_type) == (expected, text_type)


def test_text_types_fall_back_and_say_so(caplog):
    no_common = {k: v for k, v in RAVEN.items() if k != "common"}
    assert class_text("raven", no_common, "com") == ("Corvus corax", "sci")
    assert class_text("raven", no_common, "taxon_com")[1] == "taxon"
    assert class_text("raven", {"family": "Corvidae"}, "sci") == ("Corvidae", "taxon")
    assert class_text("raven", {}, "com") == ("raven", "asis")
    with caplog.at_level(logging.WARNING):
        assert class_texts(["raven", "crow"], {"raven": RAVEN, "crow": {"genus": "Corvus"}}, "com") == [
            "Common Raven", "Corvus"]
    assert "1 of 2 classes lack parts of the com text and fell back: crow (sci)" in caplog.text
    with pytest.raises(DataError, match="needs taxonomy columns"):
        class_texts(["a", "b"], None, "taxon")
    with pytest.raises(DataError, match="class '' has no name"):
        class_text("", None, "asis")


def test_templates_default_and_file(tmp_path):
    templates = default_templates()
    assert len(templates) == 81 and templates[0] == "a photo of {}." and templates[1] == "a bad photo of a {}."
    f = tmp_path / "t.txt"
    f.write_text("# mine\na micrograph of {c}.\n\nan image of {}\n")
    assert load_templates(str(f)) == ["a micrograph of {}.", "an image of {}"]
    f.write_text("no placeholder\n")
    with pytest.raises(ConfigError, match="every line needs exactly one"):
        load_templates(str(f))


def test_zero_shot_logits_equal_open_clips_classifier(tiny_open_clip, tmp_path):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    backbone = load_backbone("open_clip:lbtest-tiny-clip@random:5")
    names = ["Corvus corax", "Bellis perennis", "Amanita muscaria"]
    templates = default_templates()
    W = zero_shot_weights(backbone, names, templates, cache_dir=tmp_path, device="cpu")
    ref = build_zero_shot_classifier(backbone.module, backbone.tokenizer, names, templates, device="cpu")
    images = torch.randn(6, 3, 32, 32)
    feats = backbone.encode_images(images)
    est = make_protocol("zero-shot").fit(W)
    ours = est.decision_function(feats.numpy())
    theirs = 100.0 * torch.nn.functional.normalize(feats, dim=-1) @ ref
    # float32 logits of magnitude ~50: equal to 1e-5 up to float32 rounding (relative 1e-6); cosines to 1e-6
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(ours / 100, theirs.numpy() / 100, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(ours.argsort(axis=1), theirs.numpy().argsort(axis=1))
    # the text embeddings were cached: a second call reads them from disk
    (cached,) = (tmp_path / "texts").iterdir()
    np.testing.assert_array_equal(np.load(cached), embed_texts(backbone, [t.format(n) for n in names for t in templates],
                                                                  cache_dir=tmp_path))


def test_backbone_without_text_tower_is_refused():
    with pytest.raises(ConfigError, match="has no text tower, so it cannot classify zero-shot"):
        embed_texts(load_backbone("pixels"), ["a photo of a bird."])


def _taxonomy_manifest(tmp_path, n_per_class=6):
    """A manifest with taxonomy columns: three species, coloured images."""
    species = {
        "raven": (RAVEN, (20, 20, 20)),
        "daisy": ({"kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Magnoliopsida", "order": "Asterales",
                   "family": "Asteraceae", "genus": "Bellis", "species": "perennis", "common": "Daisy"}, (240, 240, 80)),
        "fly agaric": ({"kingdom": "Fungi", "phylum": "Basidiomycota", "class": "Agaricomycetes",
                        "order": "Agaricales", "family": "Amanitaceae", "genus": "Amanita", "species": "muscaria",
                        "common": ""}, (220, 30, 30)),
    }
    rng = np.random.default_rng(0)
    rows = []
    for label, (taxon, colour) in species.items():
        for i in range(n_per_class):
            path = write_image(tmp_path / "img" / f"{label.replace(' ', '_')}_{i}.png", rng, colour=colour)
            rows.append({"path": str(path.relative_to(tmp_path)), "label": label,
                         **{k if k != "common" else "common_name": v for k, v in taxon.items()}})
    manifest = tmp_path / "species.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def test_manifest_taxonomy_columns_become_the_tasks_taxonomy(tmp_path):
    task = load_task(_taxonomy_manifest(tmp_path))
    assert task.taxonomy["raven"] == RAVEN
    assert task.taxonomy["fly agaric"].get("common") is None and task.taxonomy["fly agaric"]["genus"] == "Amanita"
    rows = (tmp_path / "species.csv").read_text().splitlines()
    rows[2] = rows[2].replace("Corvidae", "Paridae")
    (tmp_path / "species.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="class 'raven' has two family values, 'Corvidae' and 'Paridae'"):
        load_task(tmp_path / "species.csv")


def test_few_shot_folds_are_reproducible_and_disjoint(tmp_path):
    task = load_task(_taxonomy_manifest(tmp_path), test_size=0.5)
    everyone = task.__class__(**{**task.__dict__, "train_idx": np.arange(18), "test_idx": np.arange(18)})
    a, b, c = everyone.with_shots(1, 0), everyone.with_shots(1, 0), everyone.with_shots(1, 1)
    np.testing.assert_array_equal(a.train_idx, b.train_idx)
    assert not np.array_equal(a.train_idx, c.train_idx)
    assert a.name == f"{task.name}@1shot" and len(a.train_idx) == 3 and len(a.test_idx) == 15
    assert set(a.train_idx).isdisjoint(a.test_idx)
    five = everyone.with_shots(5, 0)
    assert sorted(np.unique(five.examples.labels[five.train_idx], return_counts=True)[1]) == [5, 5, 5]
    # BioCLIP's draw (few_shot.py split): per class in data order, random.seed(fold) then random.shuffle in place,
    # the first k; the lists carry over, so 5-shot fold 0 follows the five 1-shot folds of BioCLIP's run
    rows = {c: [i for i in range(18) if everyone.examples.labels[i] == c] for c in dict.fromkeys(
        everyone.examples.labels.tolist())}
    for seed in [0, 1, 2, 3, 4, 0]:
        random.seed(seed)
        for c in rows:
            random.shuffle(rows[c])
    assert five.train_idx.tolist() == sorted(i for r in rows.values() for i in r[:5])
    assert "BioCLIP's draw of fold 0" in five.split_source


def test_zero_shot_uses_the_models_learned_logit_scale(tiny_open_clip, tmp_path):
    """BioCLIP scores ``model.logit_scale.exp() * image @ W`` (zero_shot_iid.py); the open_clip backbone exposes
    that scale, zero-shot uses it unless --param logit_scale says otherwise, and the fit info records it."""
    backbone = load_backbone("open_clip:lbtest-tiny-clip@random:5")  # open_clip.create_model(pretrained=None)
    assert backbone.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)  # CLIP's initial value, log(1/0.07)
    with torch.no_grad():
        backbone.module.logit_scale.fill_(np.log(37.5))
    assert backbone.logit_scale == pytest.approx(37.5, rel=1e-6)
    names = ["Corvus corax", "Bellis perennis", "Amanita muscaria"]
    W = zero_shot_weights(backbone, names, default_templates(), cache_dir=tmp_path, device="cpu")
    feats = backbone.encode_images(torch.randn(6, 3, 32, 32))
    cos = torch.nn.functional.normalize(feats, dim=-1).numpy() @ W.T
    est = make_protocol("zero-shot").fit(W, names, model_logit_scale=backbone.logit_scale)
    np.testing.assert_allclose(est.decision_function(feats.numpy()), 37.5 * cos, rtol=1e-5, atol=1e-5)
    assert fit_info(est) == {"logit_scale": pytest.approx(37.5), "logit_scale_source": "model"}
    fixed = make_protocol("zero-shot", logit_scale=100).fit(W, names, model_logit_scale=backbone.logit_scale)
    np.testing.assert_allclose(fixed.decision_function(feats.numpy()), 100 * cos, rtol=1e-5, atol=1e-5)
    assert fit_info(fixed)["logit_scale_source"] == "param"
    plain = make_protocol("zero-shot").fit(W, names)  # a backbone without a learned scale: CLIP's 100
    assert fit_info(plain) == {"logit_scale": 100.0, "logit_scale_source": "default: the backbone has no learned scale"}
    assert getattr(load_backbone("pixels"), "logit_scale", None) is None  # no text tower, no scale
    with pytest.raises(ConfigError, match="logit_scale -1 must be a positive number"):
        make_protocol("zero-shot", logit_scale=-1)


def test_zero_shot_groups_classes_that_share_a_text_as_bioclip_does(caplog):
    """Rare Species' common names: "Yunnan Newt" names Tylototriton shanjing and T. verrucosus. BioCLIP makes one
    class per distinct text (data.py: ``data['class'].unique()``), so predicting the text is right for either."""
    names = ["Acropora acuminata", "Acropora millepora", "Tylototriton shanjing", "Tylototriton verrucosus"]
    texts = ["staghorn coral", "staghorn coral", "Yunnan Newt", "Yunnan Newt"]
    W = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    X = np.array([[0.9, 0.1], [0.8, 0.3], [0.1, 0.9], [0.2, 0.9], [0.3, 0.9]])
    y_true = np.array(["Acropora acuminata", "Acropora millepora", "Tylototriton verrucosus",
                       "Tylototriton shanjing", "Acropora millepora"])
    with caplog.at_level(logging.WARNING, logger="lifebench.protocols.zeroshot"):
        est = make_protocol("zero-shot").fit(W, names, texts=texts)
    assert "2 texts name several classes each" in caplog.text and "'Yunnan Newt': Tylototriton shanjing, " in caplog.text
    scores = est.decision_function(X)
    assert np.isneginf(scores[:, [1, 3]]).all() and np.isfinite(scores[:, [0, 2]]).all()  # one row per text
    pred = np.array(names, dtype=object)[est.predict(X)]
    ranked = np.array([[p, "", ""] for p in pred], dtype=object)
    y_pred, ranked = est.credit_shared_texts(y_true, pred.astype(str), ranked)
    assert y_pred.tolist() == ["Acropora acuminata", "Acropora millepora", "Tylototriton verrucosus",
                               "Tylototriton shanjing", "Tylototriton shanjing"]  # the last: a wrong text
    assert ranked[:, 0].tolist() == y_pred.tolist()
    assert np.mean(y_pred == y_true) == 0.8  # BioCLIP's accuracy over 2 texts: 4 of 5
    assert fit_info(est)["shared_texts"] == {"staghorn coral": names[:2], "Yunnan Newt": names[2:]}
    alone = make_protocol("zero-shot").fit(W[[0, 2]], names[::2], texts=texts[::2])
    assert "shared_texts" not in fit_info(alone)


def test_cli_zero_shot_and_few_shot_on_a_taxonomy_manifest(tiny_open_clip, tmp_path, capsys):
    manifest = _taxonomy_manifest(tmp_path)
    store = tmp_path / "s.sqlite"
    common = ["-q", "run", "--task", str(manifest), "--model", "open_clip:lbtest-tiny-clip@random:1", "--store",
              str(store), "--workers", "0", "--folds", "3"]
    assert main([*common, "--protocol", "zero-shot", "--text-type", "taxon_com"]) == 0
    out = capsys.readouterr().out
    assert "1 experiments run" in out and "species (macro_f1, n=18)" in out
    with Store(store) as s:
        (exp,) = s.experiments()
        preds = s.predictions(exp.id)
    assert exp.protocol == "zero-shot" and exp.config["params"] == {"text_type": "taxon_com"} and exp.fit_info["folds"][0]["text_type"] == "taxon_com"
    # the random tiny CLIP's own scale, exp(log(1/0.07)), as BioCLIP's zero_shot_iid.py, not a fixed 100
    assert exp.fit_info["folds"][0]["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6)
    assert exp.fit_info["folds"][0]["logit_scale_source"] == "model"
    assert set(preds.y_pred) <= {"daisy", "fly agaric", "raven"} and len(preds) == 18

    assert main(["-q", "run", "--task", str(manifest), "--model", "open_clip:lbtest-tiny-clip@random:1",
                 "--store", str(store), "--workers", "0", "--protocol", "few-shot", "--shots", "1,5",
                 "--test-size", "0.1"]) == 0  # 5 training images per class: 5-shot takes them all
    out = capsys.readouterr().out
    assert "10 experiments run" in out  # 2 shot counts x 5 folds
    board = build_leaderboard(store, tasks=["species@1shot", "species@5shot"])
    for cell in board.cells:
        assert cell.n_seeds == 5 and cell.seed_std is not None and cell.low <= cell.point <= cell.high
    assert "sd " in board.to_text()

    assert main([*common, "--text-type", "sci"]) == 2
    assert "add --protocol zero-shot" in capsys.readouterr().err
    assert main([*common[:5], "pixels", *common[6:], "--protocol", "zero-shot"]) == 2
    assert "has no text tower" in capsys.readouterr().err
