"""Pl@ntNet-300K: 1,081 plant species photographed by Pl@ntNet users, long-tailed and label-ambiguous.

One zip from Zenodo record 5645731, ``plantnet_300K.zip`` (29.5 GB). Images lie in
``images/{train,val,test}/<species id>/<image id>.jpg``; BioBench trains on ``train`` (243,916 images) and tests
on ``val`` (31,118), never on ``test``, and so does lifebench. Protocol: logistic probe on frozen features;
metric: macro-F1 over the species present in val.

Where ``images/`` lies: BioBench documents ``<root>/images/...``, but it unzips into the data folder, and public
code that reads the zip puts everything under a top folder ``plantnet_300K/`` (beside
``plantnet300K_metadata.json`` and ``plantnet300K_species_id_2_name.json``); our references do not record the
zip's listing. So both ``<root>/images/`` and ``<root>/plantnet_300K/images/`` are accepted, and the fixture
uses the latter. Zenodo publishes an MD5 that our references do not record, so none is pinned: the first download
records the zip's SHA-256 (trust on first use). Zenodo's latest version of the record is now v2 (1,000 species).
"""

from lifebench.tasks.catalog import Source, register
from lifebench.tasks.classfolders import ClassFolders, spec

SPEC = register(spec(
    name="plantnet", display="Pl@ntNet-300K", suite="ecology", modality="in-situ photos", kingdom="Plantae",
    protocol="logreg", metric="macro_f1", method="logistic probe, images/train -> images/val", n_train=243916,
    n_test=31118, source="Zenodo record 5645731", license="see source", size="29.5 GB",
    base_url="https://zenodo.org/records/5645731/files",
    sources=(Source("plantnet_300K.zip", top="plantnet_300K"),),
    layout=ClassFolders(train=("plantnet_300K/images/train", "images/train"),
                        test=("plantnet_300K/images/val", "images/val"), ignored=("plantnet_300K/images/test",),
                        fixture_classes={s: ("1355868", "1355920", "1363227") for s in ("train", "test")}),
    upstream=("samuelstevens/biobench@6376d97 src/biobench/plantnet/__init__.py, download.py",
              "Zenodo record 5645731"),
))
