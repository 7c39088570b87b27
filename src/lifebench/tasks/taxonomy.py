"""Class names for zero-shot classification, built from a task's taxonomy as BioCLIP builds them.

A task may carry, per class, the Linnaean ranks :data:`RANKS` (``species`` is the epithet alone, as in the
Tree-of-Life metadata) and a ``common`` name. :func:`class_text` turns them into one of BioCLIP's text
types:

========== =====================================================================
asis       the class label as it is
sci        "Genus species"
com        the common name
taxon      "Kingdom Phylum Class Order Family Genus species" (epithet in lower case)
sci_com    "<sci> with common name <com>"
taxon_com  "<taxon> with common name <com>"
========== =====================================================================

When a part is missing the text falls back as BioCLIP's Tree-of-Life captions do: common name -> scientific
name -> taxonomic string -> the label itself; :func:`class_texts` reports which classes fell back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from lifebench.errors import ConfigError, DataError

__all__ = ["RANKS", "TEXT_TYPES", "class_text", "class_texts", "default_templates", "load_templates", "rank_columns"]

log = logging.getLogger(__name__)

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
TEXT_TYPES = ("asis", "sci", "com", "taxon", "sci_com", "taxon_com")
Taxon = Mapping[str, str]


def rank_columns(header: Sequence[str]) -> dict[str, str]:
    """The column of ``header`` that holds each rank of :data:`RANKS` present (names as written, matched without
    regard to case or padding).

    Why not simply the rank's name: BioCLIP's own annotation CSVs (Imageomics/bioclip @ 4ea3247,
    ``data/annotation/rare_species/metadata.csv``: ``,kingdom,phylum,cls,order,family,genus,species,common_name,
    filepath,class``) call the taxonomic class ``cls`` (the field of its ``Taxon`` dataclass, since ``class`` is a
    Python keyword) and use ``class`` for the label ("Cyclonaias tuberculata", the ``asis`` text). Where ``cls``
    is present it is the rank and ``class`` is not; elsewhere (the Hub's Rare Species ``metadata.csv``) ``class``
    is the rank. Reading ``class`` as the rank there would put the species into the taxonomic string.
    """
    by_lower = {h.strip().lower(): h for h in header}
    out = {r: by_lower[r] for r in RANKS if r in by_lower}
    if "cls" in by_lower:
        out["class"] = by_lower["cls"]
    return out


def _sci(t: Taxon) -> str:
    genus, epithet = t.get("genus", "").strip(), t.get("species", "").strip()
    return f"{genus.capitalize()} {epithet.lower()}".strip() if genus else ""


def _taxon(t: Taxon) -> str:
    parts = [t.get(r, "").strip() for r in RANKS]
    words = [p.lower() if r == "species" else p.capitalize() for r, p in zip(RANKS, parts, strict=True) if p]
    return " ".join(words)


def class_text(label: str, taxon: Taxon | None, text_type: str) -> tuple[str, str]:
    """``(text, kind)``: the name of one class in ``text_type``, and the text type actually used after
    falling back (common -> sci -> taxon -> asis) for missing parts."""
    if text_type not in TEXT_TYPES:
        raise ConfigError(f"text type {text_type!r} is not one of {', '.join(TEXT_TYPES)}")
    t = taxon or {}
    com = t.get("common", "").strip()
    order = {"asis": ["asis"], "sci": ["sci", "taxon", "asis"], "taxon": ["taxon", "asis"],
             "com": ["com", "sci", "taxon", "asis"], "sci_com": ["sci_com", "sci", "taxon", "asis"],
             "taxon_com": ["taxon_com", "taxon", "asis"]}[text_type]
    for kind in order:
        text = {"asis": label, "sci": _sci(t), "taxon": _taxon(t), "com": com,
                "sci_com": f"{_sci(t)} with common name {com}" if _sci(t) and com else "",
                "taxon_com": f"{_taxon(t)} with common name {com}" if _taxon(t) and com else ""}[kind]
        if text:
            return text, kind
    raise DataError(f"class {label!r} has no name: give it a label or taxonomy columns")


def class_texts(classes: Sequence[str], taxonomy: Mapping[str, Taxon] | None, text_type: str) -> list[str]:
    """The name of every class in ``text_type``; logs the classes whose text fell back to another type."""
    if text_type != "asis" and not taxonomy:
        raise DataError(f"text type {text_type!r} needs taxonomy columns (kingdom ... species, common) in the task; "
                        "add them to the manifest, or use --text-type asis (the class labels)")
    out, fell_back = [], []
    for c in classes:
        text, kind = class_text(c, (taxonomy or {}).get(c), text_type)
        out.append(text)
        if kind != text_type:
            fell_back.append(f"{c} ({kind})")
    if fell_back:
        log.warning("%d of %d classes lack parts of the %s text and fell back: %s%s", len(fell_back), len(classes),
                    text_type, ", ".join(fell_back[:5]), " ..." if len(fell_back) > 5 else "")
    return out


def default_templates() -> list[str]:
    """BioCLIP's 81 prompt templates: "a photo of {}." and the 80 OpenAI ImageNet templates (from open_clip)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return ["a photo of {}."] + [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def load_templates(path: str) -> list[str]:
    """Templates from a text file, one per line, each with one ``{}`` (or ``{c}``) where the class name goes."""
    try:
        lines = [line.strip() for line in open(path, encoding="utf-8")]
    except OSError as e:
        raise ConfigError(f"cannot read templates file {path}: {e.strerror}") from None
    templates = [line.replace("{c}", "{}") for line in lines if line and not line.startswith("#")]
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ConfigError(f"templates file {path}: every line needs exactly one {{}} for the class name"
                          + (f" (bad: {bad[0]!r})" if bad else " (it has none)"))
    return templates


def fill(templates: Sequence[str | Callable[[str], str]], name: str) -> list[str]:
    return [t(name) if callable(t) else t.format(name) for t in templates]
