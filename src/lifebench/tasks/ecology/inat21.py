"""iNat21 (mini): 10,000 species from the iNaturalist 2021 competition, a BioBench reference task.

Archives from the ml-inat-competition-datasets S3 bucket, checked against the MD5s the competition publishes
(the same values are in ``torchvision.datasets.inaturalist.DATASET_MD5``):

* ``train_mini.tar.gz`` (42 GB, 500,000 images, 50 per species) unpacks to ``<root>/train_mini/<class>/``;
* ``val.tar.gz`` (8.4 GB, 100,000 images, 10 per species) unpacks to ``<root>/val/<class>/``.

Class folders are named ``<5-digit id>_<kingdom>_<phylum>_<class>_<order>_<family>_<genus>_<epithet>``.
Protocol: logistic probe on frozen features, train_mini -> val; metric: top-1 accuracy. Example ids are paths
under the data folder (``train_mini/<class>/<file>``).
"""

from lifebench.tasks.catalog import Source, register
from lifebench.tasks.classfolders import ClassFolders, spec

SPEC = register(spec(
    name="inat21", display="iNat21 (mini)", suite="reference", modality="in-situ photos", kingdom="all",
    protocol="logreg", metric="accuracy", method="logistic probe, train_mini/ -> val/", n_train=500000,
    n_test=100000, source="iNat 2021 competition (train_mini, val)", license="see source", size="50 GB",
    base_url="https://ml-inat-competition-datasets.s3.amazonaws.com/2021",
    sources=(Source("train_mini.tar.gz", md5="db6ed8330e634445efc8fec83ae81442", top="train_mini"),
             Source("val.tar.gz", md5="f6f6e0e242e3d4c9569ba56400938afc", top="val")),
    layout=ClassFolders(train=("train_mini",), test=("val",), fixture_classes={
        split: ("00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris",
                "00001_Animalia_Arthropoda_Insecta_Lepidoptera_Nymphalidae_Danaus_plexippus",
                "00002_Plantae_Tracheophyta_Magnoliopsida_Asterales_Asteraceae_Bellis_perennis")
        for split in ("train", "test")}),
    upstream=("samuelstevens/biobench@6376d97 src/biobench/inat21/__init__.py, download.py",
              "pytorch/vision torchvision/datasets/inaturalist.py DATASET_MD5"),
))
