"""Herbarium 2019 (FGVC6, New York Botanical Garden): herbarium sheets of flowering plants.

Layout after download: ``<root>/train/<class>/...`` (34,225 images) and ``<root>/validation/<class>/...``
(2,679 images), one folder per species id. The competition's ``test/`` split has no public labels (its images lie
loose, without class folders) and is never read, even when BioBench's download put it beside the others.
Protocol: logistic probe on frozen features, train -> validation; metric: macro-F1 over the classes present in
validation. Classes come from one sorted list over both splits (BioBench built one per split). Both archives are
checked against the MD5s that visipedia/herbarium_comp publishes (BioBench's download pins the same values).
"""

from lifebench.tasks.catalog import Source, register
from lifebench.tasks.classfolders import ClassFolders, spec

SPEC = register(spec(
    name="herbarium19", display="Herbarium 2019", suite="ecology", modality="specimen photos", kingdom="Plantae",
    protocol="logreg", metric="macro_f1", method="logistic probe, train/ -> validation/", n_train=34225,
    n_test=2679, source="NYBG Herbarium 2019 (FGVC6)", license="see source", size="41 GB",
    base_url="https://storage.googleapis.com/nybg/herbarium-2019-fgvc6",
    sources=(Source("train.tar.gz", md5="53c6b9ee2f831f5101dbe00958091dc8", top="train"),
             Source("validation.tar.gz", md5="2f854d580949e54f114993a74adc3d4b", top="validation")),
    layout=ClassFolders(train=("train",), test=("validation",), ignored=("test",),
                        fixture_classes={"train": ("0", "1", "17"), "test": ("0", "1", "17")}),
    upstream=("samuelstevens/biobench@6376d97 src/biobench/herbarium19/__init__.py, download.py",
              "visipedia/herbarium_comp README (archive MD5s)"),
))
