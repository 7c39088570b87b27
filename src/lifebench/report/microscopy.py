"""μ-Bench results by question type, source dataset, domain and taxonomy group; specialists minus generalists.

From the stored per-question predictions of the six ``ubench-*`` tasks (any mix of contrastive and generative
models), :func:`build` computes accuracy with paired bootstrap intervals for these slices:

* ``question type``: each of the six tasks, and ``coarse (pooled)``: the five coarse questions together;
* ``dataset``, ``domain`` and ``taxonomy group`` (the seven μ-Bench groups, :data:`~.ubench.TAXONOMY_GROUPS`), each
  for the fine question (``fine``) and for the pooled coarse questions (``coarse``).

The resampled unit is the image (its up to five coarse questions stay together); every model of a slice is scored
on the same questions and the same resamples (seeded by the slice's name), so differences between models are
paired. A pooled slice's accuracy is correct answers over questions asked. For generative models the share of
unparsed replies (scored wrong) is reported next to the accuracy.

Models are tagged ``specialist`` (trained on biomedical or biological images) or ``generalist`` by
:func:`model_kind`: a backbone id containing one of :data:`SPECIALIST_MARKERS` (case-insensitive) is a specialist,
anything else a generalist, unless the caller's mapping says otherwise. For each specialist-generalist pair the
report gives specialist minus generalist per slice with its paired bootstrap interval (the table), and a bar plot
per pair by taxonomy group and question type.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from lifebench.errors import ConfigError
from lifebench.fsutil import atomic_write
from lifebench.metrics import estimate, resample_indices, task_seed
from lifebench.store import Store
from lifebench.tasks.microscopy.ubench import TASKS, TAXONOMY_GROUPS, dataset_name, read_rows

__all__ = ["SPECIALIST_MARKERS", "Diff", "MicroscopyReport", "Score", "build", "model_kind"]

log = logging.getLogger(__name__)

SPECIALIST_MARKERS = ("biomedclip", "pubmedclip", "pmc-clip", "pmc_clip", "plip", "quilt", "conch", "pathclip",
                      "medclip", "llava-med", "quilt-llava", "bioclip", "medgemma")
"""Backbone-id fragments of biomedical/biological specialists (μ-Bench's: BiomedCLIP, PLIP, QuiltNet, CONCH)."""
COARSE = tuple(t for t, q in TASKS.items() if q != "classification")
FINE = "ubench-fine"


def model_kind(backbone: str, kinds: Mapping[str, str] | None = None) -> str:
    """``"specialist"`` or ``"generalist"``: ``kinds[backbone]`` if given, else by :data:`SPECIALIST_MARKERS`."""
    if kinds and backbone in kinds:
        return kinds[backbone]
    low = backbone.lower()
    return "specialist" if any(m in low for m in SPECIALIST_MARKERS) else "generalist"


@dataclass(frozen=True)
class Score:
    """One model's accuracy on one slice."""

    view: str
    """``question type``, ``fine`` or ``coarse``."""
    by: str
    group: str
    model: str
    kind: str
    n_images: int
    n_questions: int
    point: float
    low: float
    high: float
    unparsed: float | None = None
    """Share of the slice's replies that named no option (generative models); None for contrastive ones."""


@dataclass(frozen=True)
class Diff:
    """Specialist minus generalist on one slice, with the paired bootstrap interval of the difference."""

    view: str
    by: str
    group: str
    specialist: str
    generalist: str
    point: float
    low: float
    high: float


@dataclass
class MicroscopyReport:
    scores: list[Score] = field(default_factory=list)
    diffs: list[Diff] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def models(self) -> list[str]:
        return list(dict.fromkeys(s.model for s in self.scores))

    def _table(self, rows: list[tuple[str, str, str]], cell) -> list[list[str]]:
        models = self.models()
        out = [["slice", *models]]
        for key in rows:
            out.append([_label(*key), *(cell(key, m) for m in models)])
        return out

    def score_table(self) -> list[list[str]]:
        index = {(s.view, s.by, s.group, s.model): s for s in self.scores}
        keys = list(dict.fromkeys((s.view, s.by, s.group) for s in self.scores))

        def cell(key, model):
            s = index.get((*key, model))
            if s is None:
                return "–"
            text = f"{s.point:.3f} [{s.low:.3f}, {s.high:.3f}]"
            return text + (f" ({s.unparsed:.0%} unparsed)" if s.unparsed else "")

        return self._table(keys, cell)

    def diff_table(self) -> list[list[str]]:
        out = [["slice", "specialist", "generalist", "specialist - generalist [95% CI]"]]
        for d in self.diffs:
            mark = " *" if d.low > 0 or d.high < 0 else ""
            out.append([_label(d.view, d.by, d.group), d.specialist, d.generalist,
                        f"{d.point:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{mark}"])
        return out

    def to_text(self) -> str:
        def render(table):
            widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
            return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)

        text = "μ-Bench accuracy [95% CI] by slice (paired bootstrap over images)\n" + render(self.score_table())
        if self.diffs:
            text += ("\n\nspecialist minus generalist (* : the interval excludes 0)\n" + render(self.diff_table()))
        else:
            text += "\n\n(no specialist-generalist pair among the models: no comparison table)"
        return text + "\n"

    def to_markdown(self) -> str:
        def md(table):
            head = "| " + " | ".join(table[0]) + " |\n|" + "---|" * len(table[0]) + "\n"
            return head + "".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |\n" for r in table[1:])

        text = "# μ-Bench by slice\n\nAccuracy [95% CI], paired bootstrap over images.\n\n" + md(self.score_table())
        if self.diffs:
            text += "\n## Specialist minus generalist\n\n* : the interval excludes 0.\n\n" + md(self.diff_table())
        return text

    def write(self, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"md": out / "microscopy.md", "csv": out / "microscopy-scores.csv", "json": out / "microscopy.json"}
        def text(value: str) -> Callable[[IO[bytes]], object]:
            return lambda f: f.write(value.encode("utf-8"))

        def table(rows: list[dict], fields: Sequence[str]) -> str:
            buf = io.StringIO(newline="")
            w = csv.DictWriter(buf, fieldnames=list(fields))
            w.writeheader()
            w.writerows(rows)
            return buf.getvalue()

        atomic_write(paths["md"], text(self.to_markdown()))  # each file whole, or not replaced
        atomic_write(paths["csv"], text(table([asdict(s) for s in self.scores], Score.__dataclass_fields__)))
        if self.diffs:
            paths["diff_csv"] = out / "microscopy-specialist-minus-generalist.csv"
            atomic_write(paths["diff_csv"], text(table([asdict(d) for d in self.diffs], Diff.__dataclass_fields__)))
        atomic_write(paths["json"], text(json.dumps({"meta": self.meta, "scores": [asdict(s) for s in self.scores],
                                                     "diffs": [asdict(d) for d in self.diffs]}, indent=1,
                                                    ensure_ascii=False) + "\n"))
        if plots:
            paths.update(self.plot(out))
        return paths

    def plot(self, out: Path) -> dict[str, Path]:
        """``microscopy-accuracy.png`` (every model by taxonomy group and question type) and one
        ``specialist-minus-generalist-<S>-vs-<G>.png`` bar plot per pair."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [("question type", "question type"), ("fine", "taxonomy group")]
        written = {}
        models = self.models()
        fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 + 0.35 * max(8, len(self.scores) // max(1, len(models)))))
        for ax, (view, by) in zip(axes, panels, strict=True):
            rows = [s for s in self.scores if s.view == view and s.by == by]
            groups = list(dict.fromkeys(s.group for s in rows))
            height = 0.8 / max(1, len(models))
            for k, m in enumerate(models):
                got = {s.group: s for s in rows if s.model == m}
                ys = [g for g in groups if g in got]
                pos = [groups.index(g) + k * height for g in ys]
                pts = np.array([got[g].point for g in ys])
                err = np.array([[got[g].point - got[g].low for g in ys], [got[g].high - got[g].point for g in ys]])
                ax.barh(pos, pts, height=height, xerr=err if len(ys) else None, label=m, capsize=2)
            ax.set_yticks([i + 0.4 - height / 2 for i in range(len(groups))], groups, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.set_xlabel("accuracy [95% CI]")
            ax.set_title(f"{by} ({view})" if view != by else by, fontsize=9)
        axes[0].legend(fontsize=6, loc="lower right")
        fig.tight_layout()
        written["png"] = out / "microscopy-accuracy.png"
        atomic_write(written["png"], lambda f: fig.savefig(f, format="png", dpi=120))
        plt.close(fig)
        pairs = list(dict.fromkeys((d.specialist, d.generalist) for d in self.diffs))
        for s_model, g_model in pairs:
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            for ax, (view, by) in zip(axes, panels, strict=True):
                rows = [d for d in self.diffs if (d.specialist, d.generalist) == (s_model, g_model)
                        and d.view == view and d.by == by]
                pts = np.array([d.point for d in rows])
                err = np.array([[d.point - d.low for d in rows], [d.high - d.point for d in rows]])
                ax.barh(range(len(rows)), pts, xerr=err if rows else None, capsize=2,
                        color=["tab:green" if p >= 0 else "tab:red" for p in pts])
                ax.axvline(0, color="black", lw=0.8)
                ax.set_yticks(range(len(rows)), [d.group for d in rows], fontsize=7)
                ax.invert_yaxis()
                ax.set_xlabel("specialist - generalist accuracy [95% CI]")
                ax.set_title(f"{by} ({view})" if view != by else by, fontsize=9)
            fig.suptitle(f"{s_model}  minus  {g_model}", fontsize=9)
            fig.tight_layout()
            path = out / f"specialist-minus-generalist-{_safe(s_model)}-vs-{_safe(g_model)}.png"
            atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=120))
            plt.close(fig)
            written[f"diff:{s_model}:{g_model}"] = path
        return written


def _label(view: str, by: str, group: str) -> str:
    return f"{by} / {group}" if view == by else f"{view} / {by} / {group}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60]


def _newest(store: Store, task: str) -> dict[str, object]:
    """Per model label (backbone, plus the protocol when not zero-shot): its newest experiment on ``task``."""
    out: dict[str, object] = {}
    for e in store.experiments(task=task):
        label = e.backbone if e.protocol == "zero-shot" else f"{e.backbone} ({e.protocol})"
        if label not in out or (e.created_at or 0, e.id or 0) > (out[label].created_at or 0, out[label].id or 0):
            out[label] = e
    return out


def build(store: Store | str | Path, data_root: str | Path, *, kinds: Mapping[str, str] | None = None,
          n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
          models: Sequence[str] | None = None) -> MicroscopyReport:
    """Scores by slice and specialist-minus-generalist differences from the μ-Bench experiments in ``store``.

    ``data_root`` holds the unpacked μ-Bench data (``<data_root>/ubench``): it maps each image to its source
    dataset, domain and taxonomy group. ``kinds`` overrides :func:`model_kind` per backbone id.
    """
    if not isinstance(store, Store):
        with Store(store, create=False) as opened:
            return build(opened, data_root, kinds=kinds, n_resamples=n_resamples, seed=seed,
                         confidence=confidence, models=models)
    meta_rows = read_rows(Path(data_root) / "ubench")
    info = {r["image_id"]: {"dataset": dataset_name(r), "domain": str(r.get("domain") or "unknown"),
                            "taxonomy group": TAXONOMY_GROUPS.get(dataset_name(r), "other")} for r in meta_rows}
    # correct[model][task] = {image id: (correct 0/1, unparsed 0/1 or nan)}
    correct: dict[str, dict[str, dict[str, tuple[float, float]]]] = defaultdict(dict)
    for task in TASKS:
        for label, e in _newest(store, task).items():
            if models and e.backbone not in models and label not in models:
                continue
            p = store.predictions(e.id)
            unparsed = p.extra.get("unparsed")
            un = unparsed if unparsed is not None else np.full(len(p), np.nan)
            correct[label][task] = {i: (float(t == y), float(u)) for i, t, y, u in
                                    zip(p.ids.tolist(), p.y_true.tolist(), p.y_pred.tolist(), un.tolist(),
                                        strict=True)}
    if not correct:
        raise ConfigError(f"the store {store.path} holds no μ-Bench (ubench-*) results; run lifebench run --suite "
                          "microscopy first")
    report = MicroscopyReport(meta={"store": str(store.path), "n_resamples": n_resamples, "seed": seed,
                                    "confidence": confidence})
    views = [("question type", t, (t,)) for t in TASKS] + [("question type", "coarse (pooled)", COARSE)]
    for view, tasks in (("fine", (FINE,)), ("coarse", COARSE)):
        for by in ("dataset", "domain", "taxonomy group"):
            views += [(view, by, tasks)]
    resampled: dict[tuple[str, str, str, str], np.ndarray] = {}
    for view, by_or_group, tasks in views:
        members = [m for m in correct if all(t in correct[m] for t in tasks)]
        if not members:
            continue
        # the (task, image) questions every model of the slice answered
        common = {t: set.intersection(*(set(correct[m][t]) for m in members)) for t in tasks}
        images = sorted(set().union(*common.values()))
        if view == "question type":
            slices = {by_or_group: images}
            by = "question type"
        else:
            by = by_or_group
            slices = defaultdict(list)
            for i in images:
                slices[info.get(i, {}).get(by, "unknown")].append(i)
        for group, ids in sorted(slices.items()):
            n = len(ids)
            idx = resample_indices(n, n_resamples, task_seed(f"ubench|{view}|{by}|{group}", seed))
            asked = np.array([[i in common[t] for t in tasks] for i in ids], dtype=np.float64)
            den = asked.sum(axis=1)
            for m in members:
                hits = np.array([[correct[m][t].get(i, (0.0, np.nan))[0] if i in common[t] else 0.0 for t in tasks]
                                 for i in ids])
                num = hits.sum(axis=1)
                point = float(num.sum() / den.sum())
                est = estimate(point, num[idx].sum(axis=1) / den[idx].sum(axis=1), confidence)
                un = [correct[m][t][i][1] for t in tasks for i in ids if i in common[t]]
                unparsed = None if np.all(np.isnan(un)) else float(np.nanmean(un))
                report.scores.append(Score(view, by, group, m, model_kind(m.split(" (")[0], kinds), n,
                                           int(den.sum()), point, est.low, est.high, unparsed))
                resampled[(view, by, group, m)] = est.resamples
    specialists = [m for m in correct if model_kind(m.split(" (")[0], kinds) == "specialist"]
    generalists = [m for m in correct if model_kind(m.split(" (")[0], kinds) == "generalist"]
    index = {(s.view, s.by, s.group, s.model): s for s in report.scores}
    for s_model in specialists:
        for g_model in generalists:
            for (view, by, group, m), res in resampled.items():
                if m != s_model or (view, by, group, g_model) not in resampled:
                    continue
                point = index[(view, by, group, s_model)].point - index[(view, by, group, g_model)].point
                est = estimate(point, res - resampled[(view, by, group, g_model)], confidence)
                report.diffs.append(Diff(view, by, group, s_model, g_model, point, est.low, est.high))
    return report
