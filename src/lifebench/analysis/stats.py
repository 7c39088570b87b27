"""Rank agreement between two score vectors over models, with bootstrap intervals.

Every statistic compares ``x`` (the reference task's scores, e.g. ImageNet-1K top-1) with ``y`` (the suite
mean or one task's scores) over the same models. All of them are computed from the pairwise sign matrices
``S_x[i, j] = sign(x_i - x_j)`` and ``S_y``, so a bootstrap batch of ``B`` resamples is a handful of array
operations (definitions in docs/analysis.md):

* Pearson ``R²``: the squared correlation of the raw scores, i.e. the variance of ``y`` explained by a least
  squares line in ``x``.
* Spearman ``ρ``: Pearson correlation of the average ranks (ties share the mean of their ranks). The rank of
  model ``i`` among ``n`` is ``(n + 1 + Σ_j S[i, j]) / 2``.
* Kendall ``τ-b``: ``(C - D) / sqrt((n0 - n1)(n0 - n2))`` with ``C``/``D`` the concordant/discordant pairs,
  ``n0 = n(n-1)/2`` and ``n1``/``n2`` the pairs tied in ``x``/``y``; equal to
  ``Σ S_x S_y / sqrt(Σ S_x² Σ S_y²)``.
* Mis-ranked pair fraction: ``D / (C + D)``, the share of the model pairs that both scores order whose order
  the reference gets wrong. Pairs tied in either score are left out.

A statistic that is undefined on a resample (all scores equal, no untied pair, a model whose resampled score
is NaN) is NaN there; intervals are taken over the defined resamples and their count is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifebench.errors import ConfigError
from lifebench.metrics import estimate

__all__ = ["STATISTICS", "Agreement", "Interval", "agreement", "average_ranks", "pair_counts", "statistics"]

STATISTICS = ("r2", "spearman", "kendall_tau_b", "misranked")
"""Names of the statistics, in display order."""

_CHUNK = 128  # resamples per batch of sign matrices: bounds memory at about 128 * n² bytes


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval (``low``/``high`` None when not computed)."""

    point: float
    low: float | None = None
    high: float | None = None
    n_valid: int = 0
    """Resamples on which the statistic was defined."""

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {"point": _finite(self.point), "low": _finite(self.low), "high": _finite(self.high),
                "n_valid": self.n_valid}


@dataclass(frozen=True)
class Agreement:
    """How well the reference orders the models of a target (suite mean or one task)."""

    n_models: int
    r2: Interval
    spearman: Interval
    kendall_tau_b: Interval
    misranked: Interval
    concordant: int
    discordant: int

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"n_models": self.n_models, "concordant": self.concordant,
                                  "discordant": self.discordant}
        out |= {name: getattr(self, name).as_dict() for name in STATISTICS}
        return out


def _finite(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (ascending), ties given the mean of the ranks they span (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=np.float64)
    s = np.sign(x[:, None] - x[None, :])
    return (x.size + 1 + s.sum(axis=1)) / 2.0


def pair_counts(x: np.ndarray, y: np.ndarray) -> tuple[int, int, int, int]:
    """Concordant, discordant, tied-in-x-only-or-both and tied-in-y-only pair counts over unordered pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    upper = np.triu(np.ones_like(sx, dtype=bool), k=1)
    prod = (sx * sy)[upper]
    return (int((prod > 0).sum()), int((prod < 0).sum()), int((sx[upper] == 0).sum()),
            int(((sy[upper] == 0) & (sx[upper] != 0)).sum()))


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of (B, n) arrays; NaN where a row has no spread."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / den
    r[~(den > 1e-300)] = np.nan  # no spread (also catches round-off on constant rows)
    return np.clip(r, -1.0, 1.0)


def statistics(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The four statistics for each row of ``x`` and ``y`` (shape ``(B, n)`` or ``(n,)``), as (B,) arrays.

    Also returns ``concordant`` and ``discordant`` pair counts per row.
    """
    x, y = np.atleast_2d(np.asarray(x, dtype=np.float64)), np.atleast_2d(np.asarray(y, dtype=np.float64))
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    n_rows, n = x.shape
    out = {k: np.full(n_rows, np.nan) for k in (*STATISTICS, "concordant", "discordant")}
    undefined = ~(np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1))  # a model without a score there
    out["r2"] = _pearson(x, y) ** 2
    for lo in range(0, n_rows, _CHUNK):
        xs, ys = x[lo:lo + _CHUNK], y[lo:lo + _CHUNK]
        sx = np.sign(xs[:, :, None] - xs[:, None, :]).astype(np.int8)
        sy = np.sign(ys[:, :, None] - ys[:, None, :]).astype(np.int8)
        prod = sx * sy  # +1 concordant, -1 discordant, 0 tied in x or y (each pair counted twice)
        conc = (prod > 0).sum(axis=(1, 2), dtype=np.int64) // 2
        disc = (prod < 0).sum(axis=(1, 2), dtype=np.int64) // 2
        untied_x = np.abs(sx).sum(axis=(1, 2), dtype=np.int64)
        untied_y = np.abs(sy).sum(axis=(1, 2), dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = (2 * (conc - disc)) / np.sqrt(untied_x.astype(np.float64) * untied_y)
            mis = disc / (conc + disc)
        rx = (n + 1 + sx.sum(axis=2, dtype=np.int64)) / 2.0
        ry = (n + 1 + sy.sum(axis=2, dtype=np.int64)) / 2.0
        sl = slice(lo, lo + xs.shape[0])
        out["kendall_tau_b"][sl] = np.where((untied_x > 0) & (untied_y > 0), tau, np.nan)
        out["misranked"][sl] = np.where(conc + disc > 0, mis, np.nan)
        out["spearman"][sl] = _pearson(rx, ry)
        out["concordant"][sl], out["discordant"][sl] = conc, disc
    for values in out.values():
        values[undefined] = np.nan
    return out


def _interval(point: float, draws: np.ndarray, confidence: float) -> Interval:
    """The percentile interval of the defined ``draws`` (it may exclude ``point``; see :func:`agreement`)."""
    n_valid = int(np.isfinite(draws).sum())
    if n_valid == 0:
        return Interval(point, None, None, 0)
    est = estimate(point, draws, confidence)
    return Interval(point, _finite(est.low), _finite(est.high), n_valid)


def agreement(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    x_resamples: np.ndarray | None = None,
    y_resamples: np.ndarray | None = None,
) -> Agreement:
    """Agreement of ``x`` with ``y`` over models, with percentile intervals from a bootstrap over models.

    Resample ``b`` draws ``n`` models with replacement (``numpy.random.default_rng(seed)``). When per-model
    score resamples ``x_resamples``/``y_resamples`` of shape ``(n_boot, n)`` are given (the models' scores on
    the ``b``-th bootstrap resample of each task's test examples), resample ``b`` uses row ``b`` of them
    instead of the point scores, so the interval covers both which models were evaluated and test-set noise.
    That noise also pulls the resampled R², ρ and τ towards 0 (two noisy score vectors agree less than the
    full-test-set ones), so with few models or close scores the interval can lie below the point estimate:
    it is reported as it is, not widened to contain the point.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    if not np.isfinite(x).all() or not np.isfinite(y).all():
        raise ValueError("x and y must be finite")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be strictly between 0 and 1, got {confidence!r}; e.g. 0.95")
    n = x.size
    if n < 3:
        raise ValueError(f"agreement needs at least 3 models, got {n}")
    point = statistics(x, y)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, n, size=(n_boot, n))
    xb = np.take_along_axis(x_resamples, pick, axis=1) if x_resamples is not None else x[pick]
    yb = np.take_along_axis(y_resamples, pick, axis=1) if y_resamples is not None else y[pick]
    draws = statistics(xb, yb)
    return Agreement(
        n_models=n,
        **{k: _interval(float(point[k][0]), draws[k], confidence) for k in STATISTICS},
        concordant=int(point["concordant"][0]),
        discordant=int(point["discordant"][0]),
    )
