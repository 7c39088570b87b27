"""How many test images would tell two models apart? An estimate from their stored paired predictions.

Why: when the best model and the runner-up are tied, a scientist must decide whether labelling more test images
is worth it. The leaderboard already holds what the answer needs: each model's score on every shared bootstrap
resample. Their paired difference ``d_b = a_b - b_b`` has a bootstrap standard deviation ``sd`` at the current
test-set size ``n``; for a statistic that averages over examples (accuracy exactly, macro-F1 and balanced accuracy
to first order) the standard error shrinks as ``1/sqrt(n)``, so ``sigma = sd * sqrt(n)`` is the per-example standard
deviation of the paired difference (for accuracy it equals ``sqrt(p10 + p01 - (p10 - p01)**2)`` from the discordant
rates, to bootstrap error). If the gap stays ``d`` (the same effect size and class mix), a test set of

    n_needed = (z_{1 - alpha/2} + z_{power})**2 * sigma**2 / d**2

images makes the two-sided ``1 - alpha`` paired interval exclude 0 in a fraction ``power`` of such test sets.
``power = 0.5`` gives the size at which the expected interval just touches 0.

The gap ``d`` is itself uncertain, and ``n_needed`` moves as ``1/d**2``: the reported range is ``n_needed`` at the
quartiles of the bootstrap distribution of the difference (a 50% range; unbounded when more than a quarter of the
resamples reverse the order). The best and the runner-up are chosen on the same data, which exaggerates small gaps,
so for near ties ``n_needed`` leans low. Validated by simulation with known truth in ``tests/test_perclass.py`` and
``bench/labels_needed.py`` (docs/statistics.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

from lifebench.errors import ConfigError

if TYPE_CHECKING:
    from lifebench.report.leaderboard import Cell

__all__ = ["LabelsNeeded", "check_options", "labels_needed", "labels_needed_text", "n_for_power"]

_Z = NormalDist().inv_cdf


def n_for_power(sigma: float, gap: float, confidence: float = 0.95, power: float = 0.8) -> float:
    """Test images at which a paired difference ``gap`` with per-example sd ``sigma`` is resolved (two-sided
    ``confidence`` interval excludes 0) with probability ``power``; inf for no gap."""
    if gap == 0 or not math.isfinite(gap) or not math.isfinite(sigma):
        return math.inf
    return ((_Z((1.0 + confidence) / 2.0) + _Z(power)) * sigma / abs(gap)) ** 2


@dataclass(frozen=True)
class LabelsNeeded:
    """Two models of one task column, their paired difference now, and the test-set size that would resolve it.

    ``difference = point_a - point_b`` with its paired percentile interval ``[low, high]`` at ``n`` test images
    (``resolved`` when it excludes 0). ``n_needed`` (None when the models do not differ) is the size for
    ``power`` at ``confidence``; ``n_needed_low``/``n_needed_high`` its 50% range (``n_needed_high`` None:
    unbounded). ``sigma`` is the per-example sd of the paired difference, ``bootstrap sd * sqrt(n)``.
    """

    task: str
    metric: str
    backbone_a: str
    protocol_a: str
    backbone_b: str
    protocol_b: str
    chosen: str
    """"best vs runner-up" or "named" (the models given with --compare)."""
    point_a: float
    point_b: float
    difference: float
    low: float
    high: float
    n: int
    resolved: bool
    sigma: float
    n_needed: int | None
    n_needed_low: int | None
    n_needed_high: int | None
    confidence: float
    power: float

    def text(self, label: Mapping[tuple[str, str], str] | None = None) -> str:
        """One line, e.g. ``t01 (macro_f1): a vs b (best vs runner-up): difference 0.021 [-0.004, 0.046] at
        n=400; about 1,500 test images (50% range 900-3,800) for 80% power at 95%``."""
        name = (label or {}).get
        a = name((self.backbone_a, self.protocol_a)) or self.backbone_a
        b = name((self.backbone_b, self.protocol_b)) or self.backbone_b
        head = (f"{self.task} ({self.metric}): {a} vs {b} ({self.chosen}): difference {self.difference:+.3f} "
                f"[{self.low:+.3f}, {self.high:+.3f}] at n={self.n:,}")
        level = f"{self.power * 100:g}% power at {self.confidence * 100:g}%"
        if self.n_needed is None:
            return f"{head}; the two make the same predictions: no test set separates them"
        high = "unbounded" if self.n_needed_high is None else f"{self.n_needed_high:,}"
        size = f"about {self.n_needed:,} test images (50% range {self.n_needed_low:,} to {high}) for {level}"
        return f"{head}; {'resolved now; ' if self.resolved else ''}{size}"


def _size(value: float) -> int | None:
    return None if not math.isfinite(value) else max(1, math.ceil(value))


def compare_pair(
    task: str, metric: str, a: Cell, b: Cell, res_a: np.ndarray, res_b: np.ndarray, *, chosen: str,
    confidence: float, power: float,
) -> LabelsNeeded:
    """:class:`LabelsNeeded` of cells ``a`` and ``b`` from their scores on the same bootstrap resamples."""
    diff = np.asarray(res_a, dtype=np.float64) - np.asarray(res_b, dtype=np.float64)
    diff = diff[np.isfinite(diff)]
    gap = a.point - b.point
    tail = (1.0 - confidence) / 2.0
    low, high = (float(q) for q in np.quantile(diff, [tail, 1.0 - tail])) if diff.size else (math.nan, math.nan)
    sigma = float(diff.std(ddof=1) * math.sqrt(a.n_test)) if diff.size > 1 else math.nan
    n_for = functools.partial(n_for_power, sigma, confidence=confidence, power=power)
    if gap == 0 or sigma == 0:
        needed = lo_n = hi_n = math.inf
    else:
        # quartiles of the difference, signed so that positive means "the observed order holds"
        q25, q75 = np.quantile(np.sign(gap) * diff, [0.25, 0.75])
        needed, lo_n = n_for(gap), n_for(float(q75)) if q75 > 0 else math.inf
        hi_n = n_for(float(q25)) if q25 > 0 else math.inf
    return LabelsNeeded(
        task=task, metric=metric, backbone_a=a.backbone, protocol_a=a.protocol, backbone_b=b.backbone,
        protocol_b=b.protocol, chosen=chosen, point_a=a.point, point_b=b.point, difference=gap, low=low, high=high,
        n=a.n_test, resolved=bool(low > 0 or high < 0), sigma=sigma, n_needed=_size(needed),
        n_needed_low=_size(lo_n) if math.isfinite(needed) else None, n_needed_high=_size(hi_n),
        confidence=confidence, power=power,
    )  # fmt: skip


def check_options(power: float, compare: Sequence[str] | None) -> None:
    """Fail early, before any scoring, on a power outside (0, 1) or a --compare without two models."""
    if not 0.0 < power < 1.0:
        raise ConfigError(f"--power {power!r} must lie strictly between 0 and 1; 0.8 is usual")
    if compare is not None and len(compare) != 2:
        raise ConfigError(f"--compare takes two models, got {len(compare)}: {' '.join(compare)}")


def _match(name: str, cells: Sequence[Cell]) -> Cell | None:
    """The cell of the model ``name`` (``backbone/protocol``, or a backbone with one protocol in the column)."""
    exact = [c for c in cells if f"{c.backbone}/{c.protocol}" == name]
    by_backbone = [c for c in cells if c.backbone == name]
    return exact[0] if exact else by_backbone[0] if len(by_backbone) == 1 else None


def labels_needed(
    cells: Sequence[Cell],
    resamples: Mapping[tuple[str, str, str, str], np.ndarray],
    *,
    confidence: float = 0.95,
    power: float = 0.8,
    compare: Sequence[str] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
) -> list[LabelsNeeded]:
    """For each task column, the best model against the runner-up (or the two models named in ``compare``).

    ``resamples`` maps (task, metric, backbone, protocol) to the cell's scores on the task's shared resamples, as
    :attr:`Leaderboard.resamples` holds them; ``higher_is_better`` maps a metric name to its direction (default
    higher is better).
    """
    check_options(power, compare)
    columns: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        if math.isfinite(c.point):
            columns.setdefault((c.task, c.metric), []).append(c)
    out = []
    for (task, metric), group in sorted(columns.items()):
        if compare is not None:
            pair = [_match(name, group) for name in compare]
            if None in pair or pair[0] is pair[1]:
                continue
            chosen = "named"
        else:
            sign = 1.0 if (higher_is_better or {}).get(metric, True) else -1.0
            ranked = sorted(group, key=lambda c: (not c.is_best, -sign * c.point, c.backbone, c.protocol))
            if len(ranked) < 2:
                continue
            pair, chosen = ranked[:2], "best vs runner-up"
        a, b = pair
        assert a is not None and b is not None
        key_a, key_b = ((task, metric, c.backbone, c.protocol) for c in (a, b))
        if key_a not in resamples or key_b not in resamples:
            continue
        out.append(compare_pair(task, metric, a, b, resamples[key_a], resamples[key_b], chosen=chosen,
                                confidence=confidence, power=power))
    if compare is not None and not out:
        known = sorted({f"{c.backbone}/{c.protocol}" for c in cells})
        raise ConfigError(
            f"--compare {' '.join(compare)}: no task has results for both; name models as backbone/protocol "
            f"(or a backbone alone), e.g. {', '.join(known[:6])}"
        )
    return out


def labels_needed_text(rows: Sequence[LabelsNeeded], label: Mapping[tuple[str, str], str] | None = None) -> str:
    """The report's "how many more labels?" block: a header and one line per task column."""
    if not rows:
        return ""
    r = rows[0]
    head = (f"How many test images would resolve the difference? Paired bootstrap interval of the difference now; "
            f"test-set size at which it would be resolved (two-sided {r.confidence * 100:g}% interval excludes 0) "
            f"with {r.power * 100:g}% power, if the gap and the class mix stay the same:")
    return head + "\n" + "\n".join("  " + row.text(label) for row in rows) + "\n"
