"""Weight-space interpolation of two checkpoints of one architecture (WiSE-FT), scored per suite.

``lifebench interpolate A B --alphas 0,0.1,...,1 --suite S`` loads two backbones of the same architecture (ids such
as ``open_clip:ViT-B-16@/ckpt/pretrained.pt`` and ``open_clip:ViT-B-16@/ckpt/finetuned.pt``, or ``timm:<name>@...``,
``@random:<seed>``), and for each alpha writes the state dict ``(1 - alpha) * A + alpha * B`` (floating-point
tensors; integer buffers are taken from the nearer endpoint) once to
``<cache>/interpolated/<key>/alpha-<alpha>.pt``. Each interpolated checkpoint is then an ordinary local-checkpoint
backbone, ``<family>:<arch>@<that file>``, evaluated by the normal run path and stored like any model. alpha = 0
and 1 copy A and B exactly. The result is each suite's mean score (and each task's score with its bootstrap
interval) against alpha: a table (``interpolation.csv``, ``.json``) and a plot (``interpolation.png``).

A timm model fine-tuned with a new classification head (``lifebench finetune``) has a head of the task's width, its
base one of ImageNet's. The probes score pooled features, which the head never touches, so when the two heads
differ only the shared backbone is interpolated and both heads are dropped (the checkpoints load head-less, with
the same features; WiSE-FT mixes heads too, but there both start from one zero-shot head of the same classes, while
an ImageNet head and a task's head have nothing to mix). Any other difference (another family or architecture name,
other parameter names or shapes) is refused with one line naming the first.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lifebench.backbones import load_backbone, parse_backbone_id
from lifebench.errors import ConfigError
from lifebench.fsutil import atomic_write

__all__ = ["Interpolation", "checkpoints", "drop_differing_heads", "evaluate", "evaluate_forgetting",
           "interpolate_state_dicts",
           "parse_alphas", "resolve_groups", "suite_groups"]

log = logging.getLogger(__name__)

FAMILIES = ("open_clip", "timm")
"""Families whose ids name a local checkpoint (``<family>:<arch>@<file>``)."""


MAX_ALPHAS = 1000  # each alpha is a checkpoint written and a full evaluation


def parse_alphas(text: str) -> list[float]:
    """``"0,0.1,...,1"`` (or ``"0:1:0.1"``, start:stop:step inclusive) as a sorted list of distinct floats.

    At most :data:`MAX_ALPHAS` finite values: ``0:1:1e-12`` would otherwise build a list of a trillion alphas."""
    fix = f"give at most {MAX_ALPHAS} finite numbers separated by commas (0,0.5,1) or start:stop:step (0:1:0.1)"
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not step > 0 or not all(math.isfinite(v) for v in (start, stop, step)):
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            if count > MAX_ALPHAS:
                raise ConfigError(f"--alphas {text!r} makes {count:g} alphas; {fix}")
            values = [round(start + k * step, 10) for k in range(count)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except (ValueError, OverflowError):
        values = []
    if not values or len(values) > MAX_ALPHAS or any(not math.isfinite(v) for v in values):
        raise ConfigError(f"--alphas {text[:60]!r}: {fix}")
    return sorted(set(values))


def interpolate_state_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float,
                            names: tuple[str, str] = ("A", "B")) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * a + alpha * b`` for floating-point tensors; others from ``a`` (alpha < 0.5) or ``b``.

    alpha = 0 returns copies of ``a``'s tensors and alpha = 1 of ``b``'s, bit for bit. Different keys, shapes or
    dtypes raise :class:`ConfigError` naming the first difference.
    """
    if a.keys() != b.keys():
        only = sorted(set(a) - set(b))
        which, key = (names[0], only[0]) if only else (names[1], sorted(set(b) - set(a))[0])
        raise ConfigError(f"{names[0]} and {names[1]} are different architectures: parameter {key!r} is only in "
                          f"{which}; interpolation needs two checkpoints of one architecture")
    out = {}
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape or ta.dtype != tb.dtype:
            raise ConfigError(f"{names[0]} and {names[1]} are different architectures: {key!r} is {tuple(ta.shape)} "
                              f"{ta.dtype} in {names[0]} but {tuple(tb.shape)} {tb.dtype} in {names[1]}; "
                              "interpolation needs two checkpoints of one architecture")
        if alpha == 0 or not torch.is_floating_point(ta) and alpha < 0.5:
            out[key] = ta.detach().clone()
        elif alpha == 1 or not torch.is_floating_point(ta):
            out[key] = tb.detach().clone()
        else:
            out[key] = ((1 - alpha) * ta.detach().double() + alpha * tb.detach().double()).to(ta.dtype)
    return out


def drop_differing_heads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], heads: tuple[str, ...]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``a`` and ``b`` without the parameters under the module names ``heads`` when those differ in names or shapes.

    Matching heads are kept (and interpolated like any weight); other differences are left for
    :func:`interpolate_state_dicts` to refuse.
    """
    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    keys = [k for k in a.keys() | b.keys() if is_head(k)]
    if all(k in a and k in b and a[k].shape == b[k].shape for k in keys):
        return a, b
    log.info("the classifier heads differ (%s); interpolating the backbone without them", ", ".join(sorted(keys)))
    return ({k: v for k, v in a.items() if not is_head(k)}, {k: v for k, v in b.items() if not is_head(k)})


def _heads(family: str, module: torch.nn.Module) -> tuple[str, ...]:
    """The classifier module names of a timm model (its ``pretrained_cfg``, as the timm loader reads them)."""
    classifier = (getattr(module, "pretrained_cfg", None) or {}).get("classifier") if family == "timm" else None
    return (classifier,) if isinstance(classifier, str) else tuple(classifier or ())


def _arch(spec: str) -> tuple[str, str]:
    parsed = parse_backbone_id(spec)
    if parsed.family not in FAMILIES or parsed.name.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(f"cannot interpolate {spec!r}: give both checkpoints as <family>:<architecture>@<file> (or "
                          "@random:<seed>) with family open_clip or timm, e.g. open_clip:ViT-B-16@/path/finetuned.pt")
    return parsed.family, parsed.name


def checkpoints(a: str, b: str, alphas: list[float], cache_dir: str | Path) -> list[tuple[float, str]]:
    """Write the interpolated checkpoints (once) and return ``(alpha, backbone id)`` for each alpha.

    Classifier heads of different widths are left out of every checkpoint (:func:`drop_differing_heads`)."""
    (fa, arch_a), (fb, arch_b) = _arch(a), _arch(b)
    if (fa, arch_a) != (fb, arch_b):
        raise ConfigError(f"A ({fa}:{arch_a}) and B ({fb}:{arch_b}) are different architectures; interpolation "
                          "needs two checkpoints of one architecture")
    ma, mb = load_backbone(a), load_backbone(b)
    sa, sb = drop_differing_heads(ma.module.state_dict(), mb.module.state_dict(), _heads(fa, ma.module))
    interpolate_state_dicts(sa, sb, 0.5, (a, b))  # different architectures fail here, before anything is written
    key = hashlib.sha256(json.dumps([ma.id, ma.fingerprint, mb.id, mb.fingerprint]).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "interpolated" / key
    folder.mkdir(parents=True, exist_ok=True)
    ends = json.dumps({"A": ma.id, "B": mb.id}, indent=1) + "\n"
    atomic_write(folder / "endpoints.json", lambda f: f.write(ends.encode("utf-8")))
    out = []
    for alpha in alphas:
        path = folder / f"alpha-{alpha:.4f}.pt"
        if not path.is_file():  # kept: its size and time are part of the experiments' configuration
            state = interpolate_state_dicts(sa, sb, alpha, (a, b))
            atomic_write(path, lambda f, state=state: torch.save(state, f))
            log.info("wrote the alpha=%g interpolation of %s and %s to %s", alpha, ma.id, mb.id, path)
        out.append((alpha, f"{fa}:{arch_a}@{path.resolve()}"))
    return out


def suite_groups(suites: list[str], tasks: list[str], data_root: str | Path) -> dict[str, list[str]]:
    """Task names per group: each suite's tasks whose data is present, and the ``--task`` arguments as ``"tasks"``.

    A ``--task`` argument may be a folder or manifest path rather than a task name; :func:`evaluate` replaces each
    by the name of the task it resolved to (see :func:`resolve_groups`).
    """
    from lifebench.errors import UnknownNameError
    from lifebench.tasks.catalog import SUITES, data_status

    groups: dict[str, list[str]] = {}
    for suite in suites:
        if suite not in SUITES:
            raise UnknownNameError("suite", suite, SUITES)
        present = [n for n in SUITES[suite] if data_status(n, data_root)[1] is None]
        if not present:
            raise ConfigError(f"no task of suite {suite!r} has its data under {data_root}; run lifebench download "
                              "<task> first or pass --data-root")
        groups[suite] = present
    if tasks:
        groups["tasks"] = list(tasks)
    return groups


@dataclass
class Interpolation:
    """Scores against alpha: ``rows`` hold alpha, group, task, backbone id, point, low, high."""

    a: str
    b: str
    groups: dict[str, list[str]]
    rows: list[dict] = field(default_factory=list)

    def curves(self) -> dict[str, list[tuple[float, float]]]:
        """Per group: (alpha, mean point estimate over the group's tasks), by alpha."""
        acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in self.rows:
            acc[r["group"]][r["alpha"]].append(r["point"])
        return {g: sorted((al, float(np.mean(v))) for al, v in by.items()) for g, by in acc.items()}

    def to_text(self) -> str:
        curves = self.curves()
        alphas = sorted({r["alpha"] for r in self.rows})
        lines = [f"interpolation (1 - alpha) * A + alpha * B; A = {self.a}, B = {self.b}",
                 "alpha    " + "  ".join(f"{g:>14}" for g in curves)]
        for al in alphas:
            vals = [dict(c).get(al) for c in curves.values()]
            lines.append(f"{al:<8.3f} " + "  ".join(f"{v:>14.3f}" if v is not None else f"{'–':>14}" for v in vals))
        lines.append("(each column: the mean over the group's tasks of each task's own metric)")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "interpolation.csv", "json": out / "interpolation.json"}
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=["alpha", "group", "task", "metric", "backbone", "point", "low", "high"])
        w.writeheader()
        w.writerows(self.rows)
        doc = json.dumps({"A": self.a, "B": self.b, "groups": self.groups, "rows": self.rows,
                          "curves": self.curves()}, indent=1) + "\n"
        atomic_write(paths["csv"], lambda f: f.write(buf.getvalue().encode("utf-8")))  # each whole, or not replaced
        atomic_write(paths["json"], lambda f: f.write(doc.encode("utf-8")))
        if plot:
            paths["png"] = self.plot(out / "interpolation.png")
        return paths

    def plot(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for group, curve in self.curves().items():
            xs, ys = zip(*curve, strict=True)
            ax.plot(xs, ys, marker="o", label=group)
        ax.set_xlabel("alpha  (0 = A, 1 = B)")
        ax.set_ylabel("mean score over the group's tasks")
        ax.set_title("weight-space interpolation", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
        plt.close(fig)
        return Path(path)


def resolve_groups(groups: dict[str, list[str]], tasks: list) -> dict[str, list[str]]:
    """``groups`` with each entry (a task name, or a folder or manifest path) replaced by its resolved task's name.

    An existing path matches the task loaded from it (``Task.source``), else a name matches the task of that name;
    anything left matches by position, ``tasks`` being the groups' distinct entries resolved in order (as the CLI
    does). An entry that matches no task raises :class:`ConfigError`.
    """
    asked = list(dict.fromkeys(n for names in groups.values() for n in names))
    by_name = {t.name: t.name for t in tasks}
    by_source = {str(t.source): t.name for t in tasks if getattr(t, "source", "")}
    by_position = dict(zip(asked, [t.name for t in tasks], strict=True)) if len(asked) == len(tasks) else {}

    def name_of(text: str) -> str:
        path = Path(text).expanduser()
        if path.exists() and str(path.resolve()) in by_source:
            return by_source[str(path.resolve())]
        if text in by_name:
            return by_name[text]
        if text in by_position:
            return by_position[text]
        raise ConfigError(f"task {text!r} is not among the evaluated tasks ({', '.join(sorted(by_name)) or 'none'}); "
                          "pass the resolved task of each --task and suite entry to evaluate()")

    return {group: list(dict.fromkeys(name_of(n) for n in names)) for group, names in groups.items()}


def evaluate(a: str, b: str, alphas: list[float], tasks: list, groups: dict[str, list[str]], store, options,
             *, n_resamples: int = 1000, seed: int = 0) -> Interpolation:
    """Write the checkpoints, run every task on each (skipping what the store holds), and collect the scores.

    ``groups`` may name a task by the path it was loaded from (``--task /data/folder``); the result's groups and rows
    use the task's own name. No score at all for any task raises :class:`ConfigError` naming the tasks asked for.
    """
    from lifebench.report import build_leaderboard
    from lifebench.runner import expand, run_jobs

    if options.cache_dir is None:
        raise ConfigError("interpolation writes its checkpoints into the cache folder; drop --no-cache")
    asked = list(dict.fromkeys(n for names in groups.values() for n in names))
    groups = resolve_groups(groups, tasks)
    models = checkpoints(a, b, alphas, options.cache_dir)
    run_jobs(expand(tasks, [m for _, m in models]), store, options)
    board = build_leaderboard(store, tasks=[t.name for t in tasks], n_resamples=n_resamples, seed=seed)
    cells = {(c.backbone, c.task): c for c in board.cells}
    result = Interpolation(a=a, b=b, groups=groups)
    for alpha, model in models:
        for group, names in groups.items():
            for name in names:
                c = cells.get((model, name))
                if c is not None:
                    result.rows.append({"alpha": alpha, "group": group, "task": name, "metric": c.metric,
                                        "backbone": model, "point": c.point, "low": c.low, "high": c.high})
    if not result.rows:
        raise ConfigError(f"interpolation got no score for the tasks asked for ({', '.join(asked)}) from the "
                          f"{len(models)} interpolated checkpoints; rerun with --force to recompute their experiments")
    scored = {r["task"] for r in result.rows}
    missing = [n for n in dict.fromkeys(n for names in groups.values() for n in names) if n not in scored]
    if missing:
        log.warning("interpolation got no score for %s; those tasks are left out of the curves", ", ".join(missing))
    return result


def evaluate_forgetting(base: str, finetuned: str, alphas: list[float], target, groups: dict[str, list[str]],
                        tasks: list, store, options, *, budget: float = 0.01, n_resamples: int = 1000, seed: int = 0,
                        confidence: float = 0.95, recipe: dict | None = None):
    """Run the base, the fine-tuned model and their mixes at ``alphas`` on ``tasks`` (skipping what the store holds)
    and compare each with the base (:func:`lifebench.report.forgetting.summarize`).

    ``target`` is the target task; ``groups`` the reference groups (names of tasks among ``tasks``); the target is
    left out of them. ``recipe`` is the fine-tuned checkpoint's record for the leakage guard.
    """
    from lifebench.backbones import canonical_id
    from lifebench.report import build_leaderboard
    from lifebench.report.forgetting import TARGET, summarize
    from lifebench.runner import expand, run_jobs

    if options.cache_dir is None:
        raise ConfigError("forgetting writes the interpolated checkpoints into the cache folder; drop --no-cache")
    if not np.isfinite(budget) or budget < 0:
        raise ConfigError(f"--budget {budget} must be a score difference >= 0, e.g. 0.01")
    groups = resolve_groups(groups, tasks)
    groups = {g: [n for n in names if n != target.name] for g, names in groups.items()}
    if dropped := [g for g, names in groups.items() if not names]:
        log.warning("reference group %s holds only the target task; it is left out", ", ".join(dropped))
    groups = {TARGET: [target.name], **{g: names for g, names in groups.items() if names}}
    if len(groups) < 2:
        raise ConfigError("give at least one reference --suite or --task besides the target, to measure forgetting on")
    base_id, ft_id = canonical_id(base), canonical_id(finetuned)
    models = [("base", None, base_id), ("fine-tuned", None, ft_id)]
    models += [(f"alpha={a:g}", a, m) for a, m in checkpoints(base, finetuned, alphas, options.cache_dir)]
    run_jobs(expand(tasks, list(dict.fromkeys(m for _, _, m in models))), store, options)
    board = build_leaderboard(store, tasks=[t.name for t in tasks], n_resamples=n_resamples, seed=seed,
                              confidence=confidence)
    return summarize(board, models, base_id, ft_id, target.name, groups, tasks, budget=budget,
                     confidence=confidence, recipe=recipe, where=str(store.path))
