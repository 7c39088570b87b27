"""SYKE plankton (IFCB): phytoplankton images from an Imaging FlowCytobot in the Baltic Sea.

Two zips from b2share.eudat.eu:

* train: SYKE-plankton_IFCB_2022 (record ``xvnrp-7ga56``), ``phytoplankton_labeled.zip``, which unpacks to
  ``labeled_20201020/<class>/*.png``; it becomes ``<root>/train/`` (63,074 images);
* test: SYKE-plankton_IFCB_Utö_2021 (record ``w7y96-6jd66``), ``phytoplankton_Utö_2021_labeled.zip``, which
  unpacks to ``phytoplankton_Utö_2021_labeled/<class>/*.png``; it becomes ``<root>/val/`` (151,236 images).

Each zip is unpacked into a hidden staging folder and renamed to ``train``/``val`` only when extraction finished.
Images are single-channel PNGs, decoded to RGB by :mod:`lifebench.images`.

**Test classes without training images.** The Utö 2021 set holds about 57,000 images of the 50 training classes
plus about 94,000 "unclassifiable" ones (EurOBIS record of the set; BioBench's test count of 151,236 is their sum),
in a class folder that training lacks. A probe cannot predict a class it never saw, and BioBench, which builds its
label map per split, scored them against shifted labels. ``plankton`` leaves them out by default and says how many
(log line and the task's split note); ``plankton-openset`` keeps them under their own class and scores them as
open set (each a miss for a closed-set probe; macro-F1 counts their class), the number closest to BioBench's.

Protocol: logistic probe on frozen features, train -> val; metric: macro-F1 over the classes present in val. One
sorted class list over both splits is THE label map. No checksum is recorded in our references, so the first
download records each zip's SHA-256 (trust on first use).
"""

import dataclasses

from lifebench.tasks.catalog import Source, register
from lifebench.tasks.classfolders import ClassFolders, spec

_FIXTURE = {"train": ("Aphanizomenon_flosaquae", "Chaetoceros_sp_single", "Dolichospermum_Anabaenopsis",
                      "Snowella_Woronichinia"),
            "test": ("Aphanizomenon_flosaquae", "Dolichospermum_Anabaenopsis", "Snowella_Woronichinia",
                     "unclassifiable")}
_LAYOUT = ClassFolders(train=("train",), test=("val",), test_only_classes="drop", fixture_classes=_FIXTURE,
                       fixture_mode="L")

SPEC = register(spec(
    name="plankton", display="Plankton (SYKE IFCB)", suite="ecology", modality="micrographs",
    kingdom="phytoplankton", protocol="logreg", metric="macro_f1",
    method="logistic probe, train -> val; test-only classes (unclassifiable, about 94,000 images) left out",
    n_train=63074, n_test=None, source="SYKE-plankton IFCB 2022 (train) and Utö 2021 (test)", license="see source",
    size="not recorded", base_url="https://b2share.eudat.eu/records",
    sources=(Source("xvnrp-7ga56/files/phytoplankton_labeled.zip", top="labeled_20201020", rename_to="train"),
             Source("w7y96-6jd66/files/phytoplankton_Ut%C3%B6_2021_labeled.zip",
                    top="phytoplankton_Utö_2021_labeled", rename_to="val")),
    layout=_LAYOUT,
    upstream=("samuelstevens/biobench@6376d97 src/biobench/plankton/__init__.py, download.py",
              "EurOBIS record of SYKE-plankton_IFCB_Utö_2021 (image counts)"),
))

register(spec(
    name="plankton-openset", display="Plankton (SYKE IFCB), open set", suite=None, modality="micrographs",
    kingdom="phytoplankton", protocol="logreg", metric="macro_f1",
    method="as plankton, with test-only classes kept and scored as misses (open set)", n_train=63074,
    n_test=151236, source=SPEC.source, license=SPEC.license, size=SPEC.size, base_url=SPEC.base_url,
    sources=SPEC.sources, layout=dataclasses.replace(_LAYOUT, test_only_classes="open-set"), upstream=SPEC.upstream,
    folder="plankton",
))
