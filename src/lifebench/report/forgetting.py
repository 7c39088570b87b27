"""Should I fine-tune? The gain on the target, the forgetting on every suite, and the WiSE-FT alpha between them.

``lifebench forgetting BASE FINETUNED --target T --suite S ...`` evaluates the base model, the fine-tuned model and
their weight-space interpolations ``(1 - alpha) * BASE + alpha * FINETUNED`` (written by
:func:`lifebench.interpolate.checkpoints`, the same mixing as ``lifebench interpolate``; a timm model fine-tuned
with a new classification head is mixed without the heads, which the probes never use) on the target task and on
the reference tasks, through the normal runner and store. Every model is scored on each task's shared bootstrap
resamples (:func:`lifebench.report.build_leaderboard`), so each model's difference from the base is a paired
difference: its interval comes from the per-resample differences (:func:`lifebench.metrics.estimate`, percentile),
which is much narrower than two marginal intervals would suggest when the models err on the same images.

What the numbers mean (every score is the task's own metric, e.g. macro-F1):

* **gain** on the target: model minus base; positive is better.
* **forgetting** on a reference group (a suite, or the ``--task`` tasks as ``tasks``): base minus model, averaged
  over the group's tasks; positive means the model lost that much. Its interval is the paired one, resampling each
  task's test set independently (the per-resample mean of the per-task differences).
* **general score**: the mean over the reference groups of each group's mean score (each suite weighs the same).
* **best alpha**: the alpha with the highest target score (point estimate) among those whose forgetting point
  estimate is at most the budget on every group, ties to the smaller alpha; the intervals play no part in the
  choice, they say how sure it is. The target score's interval is the leaderboard's own (``lifebench report``).

The ends are checked, not assumed: alpha 0 and 1 are the endpoints' weights bit for bit, so their scores must equal
the base's and the fine-tuned model's exactly, and the report says whether they do.

Leakage guard: a fine-tuned checkpoint written by ``lifebench finetune`` carries what it was trained on
(:func:`lifebench.finetune.read_recipe`): the SHA-256 and size of every training image and the class names. Any
evaluated task whose test images include one of those files (by content, under any name) or whose classes share a
name with the fine-tuning classes is named in the report; a shared image makes that task's score optimistic.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lifebench.errors import ConfigError
from lifebench.fsutil import atomic_write
from lifebench.metrics import estimate

__all__ = ["TARGET", "Forgetting", "leakage", "summarize"]

log = logging.getLogger(__name__)

TARGET = "target"


def _norm(name: str) -> str:
    return " ".join(str(name).replace("_", " ").split()).casefold()


def leakage(recipe: dict | None, tasks: list, target: str) -> list[str]:
    """One line per evaluated task that shares test images (by file content) or classes with the fine-tuning data.

    Files are hashed only where a training image has the same size, so a large suite costs one ``stat`` per image.
    The target sharing its classes with its own fine-tuning task is expected and said so; a shared image never is.
    """
    if recipe is None:
        return ["no record of the fine-tuning data beside the fine-tuned checkpoint (written by lifebench finetune), "
                "so shared images and classes cannot be checked"]
    from lifebench.download import file_digest

    trained = recipe["trained_on"]
    digests: dict[str, int] = trained.get("images", {})
    sizes = set(digests.values())
    classes = {_norm(c): c for c in trained.get("classes", [])}
    for texts in trained.get("captions", {}).values():
        classes.update({_norm(t.removeprefix("a photo of ").removesuffix(".")): t for t in texts})
    lines = []
    for task in tasks:
        paths = [str(p) for p in task.test.paths.tolist()]
        candidates = [p for p in paths if os.path.getsize(p) in sizes] if sizes else []
        shared = [p for p in candidates if file_digest(Path(p)) in digests]
        if shared:
            lines.append(f"{task.name}: {len(shared)} of its {len(paths)} test images were fine-tuning images of "
                         f"{trained['task']} (same file content, e.g. {shared[0]}); its scores are optimistic")
        common = sorted({c for c in task.classes if _norm(c) in classes})
        if common:
            note = " (the target itself: expected)" if task.name == target else ""
            lines.append(f"{task.name}: shares {len(common)} of its {len(task.classes)} classes with the fine-tuning "
                         f"task {trained['task']}{note}: {', '.join(common[:5])}{' ...' if len(common) > 5 else ''}")
    return lines


@dataclass
class Forgetting:
    """Scores of the base, the fine-tuned model and each interpolation; see the module notes for the numbers.

    ``rows``: one per (model, group, task) with the score and its paired difference from the base.
    ``summary``: one per model with the target score and gain, each group's forgetting and the general score.
    """

    base: str
    finetuned: str
    target: str
    groups: dict[str, list[str]]
    budget: float
    confidence: float
    rows: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    best_alpha: float | None = None
    exact: dict[str, bool] = field(default_factory=dict)
    leakage: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        refs = [g for g in self.groups if g != TARGET]
        metric = next((r["metric"] for r in self.rows if r["group"] == TARGET), "")
        lines = [f"forgetting: base = {self.base}", f"            fine-tuned = {self.finetuned}",
                 f"target {self.target} ({metric}); reference: "
                 + "; ".join(f"{g} ({len(self.groups[g])} tasks)" for g in refs),
                 "", f"{'model':<12} {'target':>22} {'gain vs base':>24} "
                 + " ".join(f"{'forgetting ' + g:>26}" for g in refs) + f" {'general':>8}"]
        for s in self.summary:
            cells = [f"{_ci(s['target'], s['target_low'], s['target_high']):>22}",
                     f"{_ci(s['gain'], s['gain_low'], s['gain_high'], sign=True):>24}"]
            cells += [f"{_ci(*s['forgetting'][g], sign=True):>26}" for g in refs]
            lines.append(f"{s['model']:<12} " + " ".join(cells) + f" {s['general']:>8.3f}")
        lines.append(f"(gain: model - base on {self.target}; forgetting: base - model, mean over the group's tasks, "
                     f"positive = lost; [{self.confidence:.0%} bootstrap interval], paired with the base for gain "
                     "and forgetting)")
        lines.append(f"(best alpha: the highest target score among the alphas whose forgetting point estimate is at "
                     f"most {self.budget:g} on every group, ties to the smaller alpha; the intervals are not used)")
        if self.best_alpha is None:
            lines.append(f"best alpha: none of the alphas keeps forgetting within {self.budget:g} on every group")
        else:
            best = next(s for s in self.summary if s["alpha"] == self.best_alpha)
            lines.append(f"best alpha: {self.best_alpha:g} (target {best['target']:.3f}, gain "
                         f"{_ci(best['gain'], best['gain_low'], best['gain_high'], sign=True)})")
        for end, ok in self.exact.items():
            lines.append(f"{end}: {'reproduced exactly on every task' if ok else 'DIFFERS from the endpoint'}")
        if self.leakage:
            lines.append("leakage check:")
            lines += [f"  {line}" for line in self.leakage]
        else:
            lines.append("leakage check: no evaluated task shares images or classes with the fine-tuning data")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | os.PathLike, plot: bool = True) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "forgetting.csv", "json": out / "forgetting.json", "txt": out / "forgetting.txt"}
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=["model", "alpha", "group", "task", "metric", "backbone", "point", "low",
                                            "high", "diff", "diff_low", "diff_high"])
        w.writeheader()
        w.writerows(self.rows)
        doc = json.dumps({
            "base": self.base, "finetuned": self.finetuned, "target": self.target, "groups": self.groups,
            "budget": self.budget, "confidence": self.confidence, "best_alpha": self.best_alpha, "exact": self.exact,
            "leakage": self.leakage, "summary": self.summary, "rows": self.rows}, indent=1) + "\n"
        for key, text in (("csv", buf.getvalue()), ("json", doc), ("txt", self.to_text())):
            atomic_write(paths[key], lambda f, text=text: f.write(text.encode("utf-8")))
        if plot:
            from lifebench import extras

            if extras.check([(extras.MATPLOTLIB, "the forgetting plot")]):
                log.warning("no forgetting plot: matplotlib is missing; pip install 'lifebench[plots]'")
            else:
                paths["png"] = self.plot(out / "forgetting.png")
        return paths

    def plot(self, path: str | os.PathLike) -> Path:
        """Target score against general score, one point per model, the alphas joined in order."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.5))
        curve = [s for s in self.summary if s["alpha"] is not None]
        ax.plot([s["general"] for s in curve], [s["target"] for s in curve], marker="o", color="tab:blue",
                label="WiSE-FT interpolation")
        for s in curve:
            ax.annotate(f"α={s['alpha']:g}", (s["general"], s["target"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        for s, marker, colour in ((self.summary[0], "s", "tab:gray"), (self.summary[1], "*", "tab:red")):
            ax.scatter([s["general"]], [s["target"]], marker=marker, s=90, color=colour, label=s["model"], zorder=3)
        if self.best_alpha is not None:
            best = next(s for s in curve if s["alpha"] == self.best_alpha)
            ax.scatter([best["general"]], [best["target"]], s=200, facecolors="none", edgecolors="tab:green",
                       label=f"best within budget {self.budget:g}", zorder=4)
        ax.set_xlabel("general score (mean over the reference groups)")
        ax.set_ylabel(f"target score ({self.target})")
        ax.set_title("fine-tuning: target gain against general score", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
        plt.close(fig)
        return Path(path)


def _ci(point: float, low: float, high: float, sign: bool = False) -> str:
    f = "{:+.3f}" if sign else "{:.3f}"
    return f"{f.format(point)} [{f.format(low)}, {f.format(high)}]"


def summarize(board, models: list[tuple[str, float | None, str]], base_id: str, ft_id: str, target: str,
              groups: dict[str, list[str]], tasks: list, *, budget: float, confidence: float,
              recipe: dict | None, where: str) -> Forgetting:
    """Compare each of ``models`` (label, alpha or None, backbone id) with the base on a leaderboard that scored
    them all on ``tasks`` (``groups``: the target first, then the reference groups; task names).

    Intervals of differences come from the leaderboard's shared per-resample scores, so they are paired; the target
    keeps the leaderboard's own interval. ``recipe`` is the fine-tuned checkpoint's record for the leakage guard;
    ``where`` names the store in the error for a missing score.
    """
    by_name = {t.name: t for t in tasks}
    cells = {(c.backbone, c.task): c for c in board.cells if c.protocol == by_name[c.task].protocol}
    result = Forgetting(base=base_id, finetuned=ft_id, target=target, groups=groups, budget=budget,
                        confidence=confidence, leakage=leakage(recipe, tasks, target))

    def scored(model: str, task: str):
        c = cells.get((model, task))
        if c is None:
            raise ConfigError(f"no score of {model} on {task} in {where}; rerun with --force to recompute it")
        return c, np.asarray(board.resamples[(task, c.metric, c.backbone, c.protocol)], dtype=np.float64)

    for label, alpha, model in models:
        entry: dict = {"model": label, "alpha": alpha, "backbone": model, "forgetting": {}}
        means: dict[str, tuple[float, float, np.ndarray]] = {}  # group: mean score, mean diff, its resamples
        for group, names in groups.items():
            points, diffs, res_diffs = [], [], []
            for name in names:
                (c, res), (b, res_b) = scored(model, name), scored(base_id, name)
                d = estimate(c.point - b.point, res - res_b, confidence)
                result.rows.append({"model": label, "alpha": alpha, "group": group, "task": name, "metric": c.metric,
                                    "backbone": model, "point": c.point, "low": c.low, "high": c.high,
                                    "diff": d.point, "diff_low": d.low, "diff_high": d.high})
                points.append(c.point)
                diffs.append(c.point - b.point)
                res_diffs.append(res - res_b)
            means[group] = (float(np.mean(points)), float(np.mean(diffs)), np.mean(res_diffs, axis=0))
        point, diff, res_d = means[TARGET]
        target_cell = scored(model, target)[0]  # the leaderboard's own interval, as `lifebench report` shows it
        g_est = estimate(diff, res_d, confidence)
        entry.update(target=point, target_low=target_cell.low, target_high=target_cell.high, gain=diff,
                     gain_low=g_est.low, gain_high=g_est.high)
        for group in groups:
            if group != TARGET:
                d = estimate(means[group][1], means[group][2], confidence)
                entry["forgetting"][group] = (0.0 - d.point, 0.0 - d.high, 0.0 - d.low)  # no "-0.000"
        entry["general"] = float(np.mean([means[g][0] for g in groups if g != TARGET]))
        result.summary.append(entry)
    result.exact = _ends(result, [a for _, a, _ in models if a is not None])
    ok = [s for s in result.summary if s["alpha"] is not None
          and all(f[0] <= budget + 1e-12 for f in s["forgetting"].values())]
    if ok:
        result.best_alpha = max(ok, key=lambda s: (s["target"], -s["alpha"]))["alpha"]
    return result


def _ends(result: Forgetting, alphas: list[float]) -> dict[str, bool]:
    """Whether alpha 0 scores exactly as the base and alpha 1 as the fine-tuned model, on every task."""
    by = {(r["model"], r["task"]): r["point"] for r in result.rows}
    tasks = {r["task"] for r in result.rows}
    out = {}
    for alpha, end in ((0.0, "base"), (1.0, "fine-tuned")):
        if alpha in alphas:
            label = f"alpha={alpha:g}"
            out[f"alpha {alpha:g} = {end}"] = all(by[(label, t)] == by[(end, t)] for t in tasks)
    return out
