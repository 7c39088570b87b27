"""Taxonomy-aware report of one task: accuracy at each rank and the distance of the errors, per model, with
paired bootstrap intervals; the tree correlation of each model's embedding space; t-SNE pictures.

The scores are defined in :mod:`lifebench.metrics.taxonomy` and docs/taxonomy.md. Every model of the task is
scored on the test examples all of them share and on ONE bootstrap index matrix, seeded by the task name as
the leaderboard's is, so the intervals of different models are paired.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifebench.errors import ConfigError, DataError, MissingDependencyError, UnknownNameError
from lifebench.fsutil import atomic_write
from lifebench.metrics import Estimate, get_metric, resample_indices, task_seed
from lifebench.metrics.taxonomy import Taxonomy, taxonomy_scores, tree_correlation_ci
from lifebench.report.leaderboard import _load_aligned, _newest_per_model
from lifebench.store.sqlite import Store, reads_store
from lifebench.tasks.taxonomy import RANKS

__all__ = ["TaxonomyReport", "TaxonomyRow", "plot_embedding",
           "taxonomy_report", "varying_ranks"]

log = logging.getLogger(__name__)

ERROR_DISTANCE = "mean_error_distance"
TREE_CORRELATION = "tree_correlation"


@dataclass(frozen=True)
class TaxonomyRow:
    """One model's taxonomy scores: ``scores[name] = (estimate, n)``, with names ``accuracy_<rank>``,
    ``mean_error_distance`` and, when its embeddings were given, ``tree_correlation`` (``n`` = examples
    averaged: those whose true class has the rank, the errors, or the classes of the tree correlation)."""

    backbone: str
    protocol: str
    n_test: int
    scores: dict[str, tuple[Estimate, int]] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return f"{self.backbone}/{self.protocol}"


@dataclass(frozen=True)
class TaxonomyReport:
    """The rows of one task plus the settings that produced them (``meta``)."""

    task: str
    rows: tuple[TaxonomyRow, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    taxonomy: Taxonomy = field(default_factory=dict, repr=False)
    """The class taxonomy the scores used (from the stored experiments)."""

    def statistics(self) -> list[str]:
        """Score names present in any row, in the order ranks (kingdom first), error distance, tree correlation."""
        order = [f"accuracy_{r}" for r in RANKS] + [ERROR_DISTANCE, TREE_CORRELATION]
        have = set().union(*(r.scores for r in self.rows)) if self.rows else set()
        return [s for s in order if s in have]

    def records(self) -> list[dict[str, Any]]:
        """One dict per (model, score), long format; non-finite numbers become None."""

        def num(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        return [{"task": self.task, "backbone": row.backbone, "protocol": row.protocol, "statistic": name,
                 "point": num(est.point), "low": num(est.low), "high": num(est.high), "n": n, "n_test": row.n_test}
                for row in self.rows for name, (est, n) in row.scores.items()]

    def to_text(self) -> str:
        """Aligned plain text: one line per model, one column per score, ``point [low, high]``."""
        if not self.rows:
            return "No results.\n"
        stats = self.statistics()
        header = ["model"] + [s.removeprefix("accuracy_") if s.startswith("accuracy_") else
                              {"mean_error_distance": "error distance", "tree_correlation": "tree corr."}[s]
                              for s in stats]

        def show(row: TaxonomyRow, name: str) -> str:
            if name not in row.scores:
                return "–"
            est, n = row.scores[name]
            if not math.isfinite(est.point):
                return "n/a" if name != ERROR_DISTANCE else "no errors"
            digits = 2 if name == ERROR_DISTANCE else 3
            return f"{est.point:.{digits}f} [{est.low:.{digits}f}, {est.high:.{digits}f}]"

        table = [header] + [[row.model] + [show(row, s) for s in stats] for row in self.rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines = ["  ".join(t.ljust(w) if i == 0 else t.rjust(w) for i, (t, w) in enumerate(zip(r, widths, strict=True)))
                 for r in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        conf = self.meta.get("confidence", 0.95)
        legend = (
            f"Task {self.task}, {self.rows[0].n_test} test examples. Point [{conf * 100:g}% CI], percentile bootstrap, "
            f"{self.meta.get('n_resamples', '?')} resamples of the test examples shared by all models. Rank columns: "
            "accuracy at that rank (prediction and truth share the taxon there and above; examples whose true class "
            "lacks the rank left out). Error distance: mean number of ranks from species up to the first shared "
            "taxon over the wrong predictions (1 = right genus ... 7 = other kingdom)."
        )
        if TREE_CORRELATION in stats:
            legend += (" Tree corr.: Spearman correlation of class-centroid cosine distances with taxonomic "
                       "distances (bootstrap over classes).")
        return "\n".join(lines) + "\n" + legend + "\n"

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`records` as CSV (empty cells for missing numbers)."""
        records = self.records()
        names = ["task", "backbone", "protocol", "statistic", "point", "low", "high", "n", "n_test"]
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
        return atomic_write(path, lambda fh: fh.write(buf.getvalue().encode("utf-8")))

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{"meta": ..., "records": [...]}``."""
        doc = json.dumps({"meta": self.meta, "records": self.records()}, indent=2, ensure_ascii=False) + "\n"
        return atomic_write(path, lambda fh: fh.write(doc.encode("utf-8")))

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``taxonomy-<task>.txt``, ``.csv`` and ``.json`` into ``out_dir``."""
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create report folder {out} ({exc.strerror}); pass a writable --out folder"
                              ) from exc
        stem = out / f"taxonomy-{safe_name(self.task)}"
        text = self.to_text()
        txt = atomic_write(stem.with_suffix(".txt"), lambda fh: fh.write(text.encode("utf-8")))
        return {"txt": txt, "csv": self.to_csv(stem.with_suffix(".csv")),
                "json": self.to_json(stem.with_suffix(".json"))}


def safe_name(text: str) -> str:
    """``text`` with every character other than letters, digits, ``.``, ``-`` and ``_`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def _matches(model: str, backbone: str, protocol: str) -> bool:
    return model in (backbone, f"{backbone}/{protocol}")


@reads_store
def taxonomy_report(
    store: Store | str | os.PathLike[str],
    task: str,
    *,
    models: Sequence[str] | None = None,
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    max_classes: int = 500,
) -> TaxonomyReport:
    """Score every stored model of ``task`` with the taxonomy stored in its experiments.

    Parameters
    ----------
    store:
        A :class:`Store` or the path of an existing store file.
    task:
        The task's name in the store (a Task's ``name``).
    models:
        Keep only these backbones (or ``backbone/protocol`` labels); None keeps all.
    embeddings:
        ``backbone -> (vectors (n, D), labels (n,))``: adds each model's tree correlation (class bootstrap, see
        :func:`lifebench.metrics.taxonomy.tree_correlation_ci`, at most ``max_classes`` classes).
    n_resamples, seed, confidence:
        Bootstrap resamples, base seed (combined with the task name, as in the leaderboard) and coverage.
    """
    exps = store.experiments(task=task)
    if not exps:
        raise UnknownNameError("task", task, {e.task for e in store.experiments()},
                               hint=f"tasks with results in {store.path}")
    first_seed = min(e.seed for e in exps)
    if len({e.seed for e in exps}) > 1:
        log.info("task %s: scoring the experiments of seed %d (other seeds are left out)", task, first_seed)
    kept = _newest_per_model(task, [e for e in exps if e.seed == first_seed])
    if models:
        for m in models:
            if not any(_matches(m, e.backbone, e.protocol) for e in kept):
                raise UnknownNameError("model", m, sorted({e.backbone for e in kept}),
                                       hint=f"models with results for task {task}")
        kept = [e for e in kept if any(_matches(m, e.backbone, e.protocol) for m in models)]
    taxonomy: Taxonomy | None = max(kept, key=lambda e: (e.created_at or 0.0, e.id or 0)).config.get("taxonomy")
    if not taxonomy:
        raise DataError(f"task {task}: its stored experiments carry no taxonomy; add kingdom ... species columns to "
                        "the task's manifest (or use a task that has them) and run it again")
    aligned = _load_aligned(store, task, get_metric("accuracy"), kept)
    if not aligned:
        raise DataError(f"task {task}: no stored predictions to score; rerun it with lifebench run --force")
    if any(p.part is not None for _, p in aligned):
        raise DataError(f"task {task} has several parts (one label per part); taxonomy scores need one species "
                        "label per image")
    y_true = aligned[0][1].y_true
    idx = resample_indices(int(y_true.size), n_resamples, task_seed(task, seed))
    rows = []
    for e, p in aligned:
        scores = taxonomy_scores(p.y_true, p.y_pred, taxonomy, idx, confidence)
        if embeddings and e.backbone in embeddings:
            vectors, labels = embeddings[e.backbone]
            scores["tree_correlation"] = tree_correlation_ci(
                vectors, labels, taxonomy, n_resamples=n_resamples, seed=task_seed(task, seed),
                confidence=confidence, max_classes=max_classes)
        rows.append(TaxonomyRow(backbone=e.backbone, protocol=e.protocol, n_test=int(y_true.size), scores=scores))
    meta = {"store": str(store.path), "task": task, "seed_of_experiments": first_seed, "n_resamples": n_resamples,
            "seed": seed, "confidence": confidence, "max_classes": max_classes,
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    return TaxonomyReport(task=task, rows=tuple(rows), meta=meta, taxonomy=taxonomy)


# ---------------------------------------------------------------------------------------------- embeddings


# ---------------------------------------------------------------------------------------------- pictures


def varying_ranks(taxonomy: Taxonomy) -> list[str]:
    """The ranks at which the classes of ``taxonomy`` fall into at least two taxa (``["species"]`` if none do)."""
    ranks = [r for r in RANKS
             if len({str((t or {}).get(r) or "").strip().lower() for t in taxonomy.values()} - {""}) > 1]
    return ranks or ["species"]


def _taxon_name(t: Mapping[str, str], rank: str) -> str:
    """The taxon at ``rank`` for a legend: "Genus epithet" at the species rank, "(no <rank>)" where missing."""
    value = str(t.get(rank) or "").strip()
    if rank == "species" and value and str(t.get("genus") or "").strip():
        value = f"{str(t['genus']).strip().capitalize()} {value.lower()}"
    return value or f"(no {rank})"


def _project(vectors: np.ndarray, method: str, seed: int) -> np.ndarray:
    """2-D coordinates of ``vectors`` by t-SNE (after PCA to 50 dimensions) or UMAP."""
    x = np.asarray(vectors, dtype=np.float64)
    n = x.shape[0]
    if n < 4:
        raise DataError(f"a {method} picture needs at least 4 images, got {n}")
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise MissingDependencyError("umap-learn", "plots", "--method umap") from None
        return umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed).fit_transform(x)
    if method != "tsne":
        raise ConfigError(f"projection method {method!r} is not one of tsne, umap")
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if x.shape[1] > 50 and n > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    return TSNE(n_components=2, perplexity=min(30.0, max(1.0, (n - 1) / 3)), init="pca", random_state=seed
                ).fit_transform(x)


def plot_embedding(
    vectors: np.ndarray,
    labels: np.ndarray,
    taxonomy: Taxonomy,
    rank: str | Sequence[str],
    out_path: str | os.PathLike[str],
    method: str = "tsne",
    *,
    title: str = "",
    max_points: int = 3000,
    max_taxa: int = 12,
    seed: int = 0,
) -> Path:
    """Write a PNG of a 2-D projection of ``vectors`` (one point per image), coloured by each image's taxon at
    ``rank``; a list of ranks gives one panel per rank over the same projection.

    ``method`` is "tsne" (scikit-learn, after PCA to 50 dimensions) or "umap" (needs umap-learn). At most
    ``max_points`` images (a seeded random subset) are projected; the ``max_taxa`` most frequent taxa get their
    own colour, the others are grey. Needs matplotlib (``pip install 'lifebench[plots]'``).
    """
    try:
        import matplotlib
        from matplotlib.figure import Figure  # no pyplot: the process's backend is left alone
    except ImportError:
        raise MissingDependencyError("matplotlib", "plots", "taxonomy pictures") from None
    ranks = [rank] if isinstance(rank, str) else list(rank)
    bad = [r for r in ranks if r not in RANKS]
    if bad or not ranks:
        raise ConfigError(f"rank {bad[0] if bad else ''!r} is not one of {', '.join(RANKS)}")
    vectors, labels = np.asarray(vectors), np.asarray(labels).astype(str)
    if vectors.ndim != 2 or vectors.shape[0] != labels.size:
        raise DataError(f"vectors must have shape (n, D) = ({labels.size}, D), one per label, got {vectors.shape}")
    if labels.size > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(labels.size, size=max_points, replace=False))
        vectors, labels = vectors[pick], labels[pick]
    xy = _project(vectors, method, seed)

    ncols = min(4, len(ranks))
    nrows = -(-len(ranks) // ncols)
    fig = Figure(figsize=(5.5 * ncols, 5.0 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(ranks):]:
        ax.set_axis_off()
    for ax, r in zip(axes.ravel(), ranks, strict=False):
        taxa = np.array([_taxon_name(taxonomy.get(c) or {}, r) for c in labels.tolist()])
        names, counts = np.unique(taxa, return_counts=True)
        top = names[np.argsort(-counts, kind="stable")][:max_taxa]
        palette = matplotlib.colormaps["tab10" if top.size <= 10 else "tab20"].colors
        rest = ~np.isin(taxa, top)
        if rest.any():
            ax.scatter(xy[rest, 0], xy[rest, 1], s=6, c="lightgrey",
                       label=f"other ({names.size - top.size} taxa)")
        for i, name in enumerate(top):
            sel = taxa == name
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=palette[i % len(palette)], label=name)
        ax.set_title(f"{r} ({names.size} taxa)")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=1.5, loc="best", frameon=False)
    fig.suptitle(title or f"{method} of {labels.size} images")
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write(out, lambda fh: fh.write(buf.getvalue()))
