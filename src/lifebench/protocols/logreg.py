"""L2-regularised logistic regression fit full-batch with L-BFGS in torch, many problems at once.

The objective is scikit-learn's ``LogisticRegression(penalty="l2")``::

    sum_i w_i * CE_i  +  1 / (2 C) * ||W||^2          (the intercept is not penalised)

with ``w_i`` the sample weight times the class weight. It is strictly convex in ``W``, so for the same ``C``
this and scikit-learn converge to the same solution. As in scikit-learn, two classes are fit as one
binary logistic model (``coef_`` has one row) and more classes as a softmax over all classes.

Why this design
---------------
* **One batched solver.** :func:`_lbfgs` minimises a grid of independent problems (tasks x regularisation
  strengths) at once: one matrix product per function evaluation serves every problem, and each problem keeps
  its own curvature pairs, step length and stopping test, so the answer equals solving the problems one by
  one. This is what makes a C grid and many small binary tasks (:func:`fit_many_binary`, e.g. NeWT's 164)
  cheap: small problems are bound by per-operation overhead (and, on a GPU, by kernel launches), which the
  batch pays once. The loop reads back one small tensor per function evaluation.
* **Batched grid or warm-started path.** When one ``C`` costs little arithmetic (at most ``_PATH_MACS``
  multiply-adds per evaluation), the whole grid is solved as one batched problem (iterations = the slowest
  ``C``). Otherwise the grid is walked from strong to weak regularisation, each fit warm-started from the
  previous one: on a CPU a large problem is bound by arithmetic, and warm starts need about half the
  iterations of cold ones. The walk only screens (every ``C`` to scikit-learn's default tolerance 1e-4); the
  best-screened ``C`` values are then polished to ``tol`` together and the choice is made among those: the
  last digits of a fit are its costly part, and only the contenders need them. A contender whose held-out
  score falls far behind the best one's during the polish (``_DROP_MARGIN``) stops there and is out. The
  path rule looks only at the problem's size, never the device.
* **Low-precision products where they are native.** On hardware that multiplies bfloat16 natively (AMX or
  AVX512-BF16 CPUs, CUDA GPUs with bfloat16), a large problem's screen uses bfloat16 copies of the rows
  and weights (float32 accumulation; loss and gradient assembled in the working precision): about 5x faster
  products on one AMX core, and the screen only ranks ``C`` values. Every large fit to ``tol`` (polish,
  refit, a given ``C``) first runs to the screen's tolerance that way, then finishes in the working
  precision, so it ends where a fit without the first phase ends (the objective has one minimum); only the
  polish's contenders can differ from a device without bfloat16, and the choice is made on full-precision
  fits.
* **Row-space coordinates when n < D.** With fewer training rows than features, the weights that matter
  lie in the span of the rows (the penalty zeroes the rest), so the problem is solved exactly in the
  ``rank``-dimensional coordinates of a thin SVD and mapped back: a 129 x 3072 problem costs as a
  129 x 129 one.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold
from sklearn.utils import check_random_state

from lifebench.errors import ConfigError, DataError
from lifebench.protocols.base import (
    InputError,
    TorchClassifier,
    as_features,
    encode_labels,
    iter_row_chunks,
    require_two_classes,
)

__all__ = ["DEFAULT_CS", "LogisticProbe", "fit_many_binary"]

logger = logging.getLogger(__name__)

#: Half-decade grid from 1e-4 to 100 (13 values), in round numbers so that results stores stay readable.
DEFAULT_CS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)

_METRICS = ("macro_f1", "accuracy")
#: elements of a (tasks x rows x problems x classes) block of logits processed at once in the objective
_BLOCK_ELEMS = 1 << 24
#: tensor elements (padded design plus L-BFGS state) of one batch of tasks
_CHUNK_ELEMS = 1 << 26
#: L-BFGS keeps about this many parameter-sized tensors per problem (10 curvature pairs and the iterates)
_STATE_COPIES = 26
#: multiply-adds of one function evaluation of ONE C above which a single task's grid is walked as a path
_PATH_MACS = 1 << 24
#: gradient tolerance of the screening fits of a warm-started path (scikit-learn's default ``tol``); the two
#: best-screened C values are then polished to ``tol`` (see ``LogisticProbe._solve_grid``)
_SELECT_TOL = 1e-4
#: ... and every C screened within this much of the best score is polished too: screened and exact scores differ
#: by up to a few thousandths, and a warm start already within 1e-4 screens with its predecessor's score, so
#: near-ties are ranked on exact fits
_SELECT_MARGIN = 0.005
#: a polished contender whose held-out score falls more than this behind the best contender's (checked every
#: ``_DROP_EVERY`` iterations) stops polishing and cannot be chosen: mid-polish scores move by up to about 0.012
#: before they settle (docs/performance.md), so twice ``_SELECT_MARGIN`` drops only C values out of reach
_DROP_MARGIN = 0.01
_DROP_EVERY = 10
#: Stop when an iteration lowers the objective by less than this relative amount. float64: scikit-learn's
#: value. float32: the loss terms are rounded to ~1e-7 relative, so smaller decreases (which float64
#: accumulation can still see) only chase rounding; iterating on costs many iterations and moves no prediction.
_FTOL = {torch.float64: 64 * float(np.finfo(np.float64).eps), torch.float32: 1e-8}


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over the classes present in ``y_true`` (codes in ``range(n_classes)``)."""
    tp = np.bincount(y_true[y_true == y_pred], minlength=n_classes)
    n_true = np.bincount(y_true, minlength=n_classes)
    n_pred = np.bincount(y_pred, minlength=n_classes)
    present = n_true > 0
    f1 = 2 * tp[present] / (n_true[present] + n_pred[present])
    return float(f1.mean())


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    return float(np.mean(y_true == y_pred))


def _low_precision(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the hardware multiplies it natively (a CUDA GPU with bfloat16, a CPU with AVX512-BF16 or
    AMX), else None: elsewhere bfloat16 products are emulated and slower than float32 ones."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.bfloat16 if any(check is not None and check() for check in checks) else None


def _stratified_holdout(
    codes: np.ndarray, n_classes: int, val_fraction: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into (fitting part, held-out part), stratified by class.

    A class with ``m >= 2`` examples puts ``round(val_fraction * m)`` of them, at least 1 and at most ``m - 1``,
    in the held-out part; a class with one example stays wholly in the fitting part. So every class is fitted
    and every class with two or more examples is validated.
    """
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    fit_parts, val_parts = [], []
    for c in range(n_classes):
        members = rng.permutation(order[starts[c] : starts[c] + counts[c]])
        m = counts[c]
        n_val = 0 if m < 2 else min(m - 1, max(1, int(val_fraction * m + 0.5)))
        val_parts.append(members[:n_val])
        fit_parts.append(members[n_val:])
    return np.sort(np.concatenate(fit_parts)), np.sort(np.concatenate(val_parts))


def _stratified_folds(
    codes: np.ndarray, n_classes: int, n_folds: int, rng: np.random.RandomState
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fitting part, validation part)`` of each fold of a stratified k-fold split; empty when nothing can be
    validated.

    The folds are scikit-learn's ``StratifiedKFold(k, shuffle=True, random_state=rng)`` over the classes with two
    or more examples, so that ``LogisticRegressionCV`` given the same splitter scores the same folds. A class with
    one example is in every fitting part and no validation part: a fold whose fitting part lacked a class would
    have no data for that class's unpenalised intercept, which then runs off to minus infinity.

    ``k = min(n_folds, largest class)``, not the smallest class: a class with fewer examples than folds sits in
    the validation part of only some folds (each fold still fits ``m - 1`` of its ``m`` examples), whereas lowering
    ``k`` for every class would fit each fold on half of the data and so choose ``C`` for a training set of the
    wrong size. scikit-learn does the same (it warns where this function stays quiet).
    """
    counts = np.bincount(codes, minlength=n_classes)
    several = np.flatnonzero(counts[codes] >= 2)
    if several.size == 0:
        return []
    single = np.flatnonzero(counts[codes] == 1)
    k = min(n_folds, int(counts.max()))
    splitter = StratifiedKFold(k, shuffle=True, random_state=rng)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = list(splitter.split(np.zeros((several.size, 1)), codes[several]))
    return [(np.sort(np.concatenate([several[f], single])), several[v]) for f, v in folds]


# ---------------------------------------------------------------------------------------------------------
# the batched objective


class _Objective:
    """Loss and gradient of a grid of independent L2 logistic problems that share design matrices.

    Problems are indexed by ``(task t, slot s)``: task ``t`` owns the design rows ``Z[t]`` (m, p), their class
    codes ``y[t]`` and normalised example weights ``w[t]`` (summing to 1; 0 marks padding), and slot ``s`` is
    one regularisation strength ``lam[t, s]`` on them. For every problem with parameters ``theta = [W | b]``
    (``rows`` x (p + 1)) the value is ``sum_i w_i CE_i + lam / 2 ||W||^2`` (scikit-learn's objective divided by
    the total sample weight). With ``Zlow`` (the same rows in bfloat16) set, both matrix products run in that
    precision (the weights rounded to it too); everything else stays in ``Z``'s.
    """

    def __init__(
        self,
        Z: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        lam: torch.Tensor,
        binary: bool,
        Zlow: torch.Tensor | None = None,
    ) -> None:
        self.Z, self.y, self.w, self.lam, self.binary = Z, y, w, lam, binary
        self.yf = y.to(Z.dtype) if binary else None
        self.Zlow = Zlow
        self._minus_one = torch.tensor(-1.0, dtype=Z.dtype, device=Z.device)

    def select(self, tasks: torch.Tensor | None, slots: torch.Tensor | None) -> _Objective:
        """The same problems restricted to some tasks and slots (indices into the current grid)."""
        sub = _Objective.__new__(_Objective)
        sub.__dict__.update(self.__dict__)
        if tasks is not None:
            for name in ("Z", "y", "w", "lam", "yf", "Zlow"):
                value = getattr(sub, name)
                if value is not None:
                    setattr(sub, name, value.index_select(0, tasks))
        if slots is not None:
            sub.lam = sub.lam.index_select(1, slots)
        return sub

    def __call__(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``theta`` (T, S, rows, p + 1) -> value (T, S) in float64 and gradient like ``theta``."""
        Z, w = self.Z, self.w
        n_tasks, m, p = Z.shape
        n_slots, rows = theta.shape[1], theta.shape[2]
        W = theta[..., :p]
        Wt = W.reshape(n_tasks, n_slots * rows, p).transpose(1, 2)
        b = theta[..., p].reshape(n_tasks, 1, n_slots * rows)
        chunk = max(1, _BLOCK_ELEMS // (n_tasks * n_slots * rows))
        loss = torch.zeros(n_tasks, n_slots, dtype=torch.float64, device=Z.device)
        gW = gb = None
        low = self.Zlow
        if low is not None:
            b, Wt = b.to(low.dtype), Wt.to(low.dtype)
        for sl in iter_row_chunks(m, chunk):
            Zc, wc = (Z if low is None else low)[:, sl], w[:, sl, None]
            logits = torch.baddbmm(b, Zc, Wt).to(Z.dtype)  # (T, mc, S * rows)
            if self.binary:
                yc = self.yf[:, sl, None]
                per = torch.nn.functional.softplus(logits).sub_(yc * logits)
                loss += torch.sum(per.mul_(wc), dim=1, dtype=torch.float64)
                G = torch.sigmoid(logits).sub_(yc).mul_(wc)
            else:
                logits = logits.view(n_tasks, -1, n_slots, rows)
                yc = self.y[:, sl, None, None].expand(-1, -1, n_slots, 1)
                # one fused log-softmax pass, then exp gives the softmax (logsumexp + exp read the block twice)
                logp = torch.log_softmax(logits, dim=3)
                per = logp.gather(3, yc)[..., 0].neg_()
                loss += torch.sum(per.mul_(wc), dim=1, dtype=torch.float64)
                G = logp.exp_()
                G.scatter_add_(3, yc, self._minus_one.expand(yc.shape))
                G = G.mul_(wc[..., None]).view(n_tasks, -1, n_slots * rows)
            Gt = G.transpose(1, 2) if low is None else G.to(low.dtype).transpose(1, 2)
            if gW is None:
                gW, gb = torch.bmm(Gt, Zc).to(Z.dtype), G.sum(1)
            elif low is None:
                gW.baddbmm_(Gt, Zc)
                gb += G.sum(1)
            else:
                gW += torch.bmm(Gt, Zc)
                gb += G.sum(1)
        assert gW is not None and gb is not None
        lam = self.lam[..., None, None]
        gW = gW.view(n_tasks, n_slots, rows, p).add_(W * lam)
        loss += 0.5 * self.lam.double() * torch.sum(W * W, dim=(2, 3), dtype=torch.float64)
        return loss, torch.cat([gW, gb.view(n_tasks, n_slots, rows, 1)], dim=-1)


# ---------------------------------------------------------------------------------------------------------
# batched L-BFGS

_RUNNING, _GTOL, _FTOL_STOP, _LINESEARCH, _MAXITER, _DROPPED = 0, 1, 2, 3, 4, 5
_REASONS = ("running", "gtol", "ftol", "linesearch", "max_iter", "dropped")


def _dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-problem inner products of (T, S, P) tensors, accumulated in float64: (T, S)."""
    return torch.sum(a * b, dim=-1, dtype=torch.float64)


@dataclass
class _Result:
    theta: torch.Tensor  # (T, S, rows, p + 1)
    n_iter: np.ndarray  # (T, S) iterations of each problem
    reason: np.ndarray  # (T, S) why each problem stopped: codes into _REASONS


def _lbfgs(
    fun: _Objective,
    theta0: torch.Tensor,
    max_iter: int,
    gtol: float,
    history: int = 10,
    monitor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    every: int = _DROP_EVERY,
) -> _Result:
    """Minimise every problem of ``fun`` from ``theta0`` (T, S, rows, p + 1) with L-BFGS.

    Each problem is treated exactly as if it were solved alone: its own curvature pairs (kept only when
    ``s.y > 0``), two-loop recursion, backtracking (Armijo) line search and stopping test. A problem stops when
    its largest gradient entry is at most ``gtol`` ("gtol"), when an iteration lowers its value by less than
    ``_FTOL`` relatively ("ftol"), when no step lowers it ("linesearch": the arithmetic's limit) or after
    ``max_iter`` iterations. A stopped problem is frozen, and the tasks and slots in which every problem has
    stopped leave the computation. Every ``every`` iterations, ``monitor(theta, running)`` (the current (T, S)
    grid and which of its problems still run) may stop problems early ("dropped"): returns a (T, S) mask.

    Host syncs: one small read-back per function evaluation (the line-search verdict and the number of
    problems still running), so a GPU is never stalled by per-problem checks.
    """
    n_tasks, n_slots = theta0.shape[:2]
    shape = theta0.shape[2:]
    dev = theta0.device
    ftol = _FTOL[theta0.dtype]
    out = theta0.clone()
    out_iter = torch.zeros(n_tasks, n_slots, dtype=torch.int64, device=dev)
    out_why = torch.zeros_like(out_iter)
    task_ids = torch.arange(n_tasks, device=dev)
    slot_ids = torch.arange(n_slots, device=dev)

    x = theta0.reshape(n_tasks, n_slots, -1).clone()
    f, g = fun(theta0)
    g = g.reshape(x.shape)
    iters = torch.zeros_like(out_iter)
    first = g.abs().amax(-1) <= gtol
    why = torch.where(first, _GTOL, _RUNNING)
    active = ~first
    pairs: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=history)
    gamma = torch.ones(n_tasks, n_slots, dtype=torch.float64, device=dev)
    gamma_c = gamma.to(x.dtype)
    has_pairs = torch.zeros(n_tasks, n_slots, dtype=torch.bool, device=dev)
    n_active = int(active.sum())

    def store() -> None:
        grid = (task_ids[:, None], slot_ids[None, :])
        out[grid] = x.view(*x.shape[:2], *shape)
        out_iter[grid] = iters
        out_why[grid] = why

    for it in range(max_iter):
        if n_active == 0:
            break
        # two-loop recursion, d = -H g, every problem with its own pairs (rho = 0 marks a skipped pair)
        q = g.clone()
        alphas = []
        for s, yv, rho in reversed(pairs):
            a = torch.linalg.vecdot(s, q).mul_(rho)
            q.sub_(yv * a[..., None])
            alphas.append(a)
        q.mul_(gamma_c[..., None])
        for (s, yv, rho), a in zip(pairs, reversed(alphas), strict=True):
            q.add_(s * a.sub_(torch.linalg.vecdot(yv, q).mul_(rho))[..., None])
        direction = q.neg_()
        gtd = _dots(g, direction)
        uphill = active & (gtd >= 0)  # rounding made it no descent direction: restart from steepest descent
        direction = torch.where(uphill[..., None], -g, direction)
        gtd = torch.where(uphill, -_dots(g, g), gtd)
        fresh = ~has_pairs | uphill
        step = torch.where(fresh, (1.0 / g.abs().sum(-1, dtype=torch.float64)).clamp(max=1.0), 1.0)

        pending = active.clone()
        x_new, f_new, g_new = x, f, g
        for _trial in range(40):
            x_try = x + step.to(x.dtype)[..., None] * direction
            f_try, g_try = fun(x_try.view(*x.shape[:2], *shape))
            ok = pending & (f_try <= f + 1e-4 * step * gtd)
            x_new = torch.where(ok[..., None], x_try, x_new)
            f_new = torch.where(ok, f_try, f_new)
            g_new = torch.where(ok[..., None], g_try.view(x.shape), g_new)
            pending &= ~ok
            # what this iteration concludes if the line search ends here
            accepted = active & ~pending
            conv_g = accepted & (g_new.abs().amax(-1) <= gtol)
            scale = torch.maximum(torch.maximum(f.abs(), f_new.abs()), torch.ones_like(f))
            conv_f = accepted & ~conv_g & (f - f_new <= ftol * scale)
            still = accepted & ~conv_g & ~conv_f
            n_pending, n_still, n_uphill = torch.stack([pending.sum(), still.sum(), uphill.sum()]).tolist()
            if n_pending == 0:
                break
            # minimiser of the quadratic through f, the slope gtd and f_try, kept within [0.1, 0.5] * step
            denom = 2.0 * (f_try - f - gtd * step)
            trial = torch.where(denom > 0, -gtd * step * step / denom, 0.5 * step)
            trial = torch.where(torch.isfinite(trial), trial, 0.5 * step)
            step = torch.where(pending, torch.minimum(torch.maximum(trial, 0.1 * step), 0.5 * step), step)
        why = torch.where(
            pending, _LINESEARCH, torch.where(conv_g, _GTOL, torch.where(conv_f, _FTOL_STOP, why))
        )
        if n_uphill:
            pairs = deque(((s, yv, torch.where(uphill, 0.0, rho)) for s, yv, rho in pairs), maxlen=history)
            has_pairs &= ~uphill
            gamma = torch.where(uphill, 1.0, gamma)
            gamma_c = gamma.to(x.dtype)
        s_vec, y_vec = x_new - x, g_new - g
        sy, yy = _dots(s_vec, y_vec), _dots(y_vec, y_vec)
        valid = accepted & (sy > 1e-12 * yy) & (sy > 0)
        pairs.append((s_vec, y_vec, torch.where(valid, 1.0 / sy, 0.0).to(x.dtype)))
        gamma = torch.where(valid, sy / yy, gamma)
        gamma_c = gamma.to(x.dtype)
        has_pairs |= valid
        iters += accepted
        x, f, g, active = x_new, f_new, g_new, still
        if monitor is not None and n_still and (it + 1) % every == 0:
            store()
            stop = torch.as_tensor(monitor(out, out_why == _RUNNING), device=dev)
            stop = stop.index_select(0, task_ids).index_select(1, slot_ids) & active
            if stop.any():
                why = torch.where(stop, _DROPPED, why)
                active = active & ~stop
                n_still = int(active.sum())
        if 0 < n_still < n_active:
            store()
            keep_t = active.any(1).nonzero()[:, 0]
            keep_s = active[keep_t].any(0).nonzero()[:, 0]
            cut_t, cut_s = keep_t.numel() < active.shape[0], keep_s.numel() < active.shape[1]
            if cut_t or cut_s:
                # drop the tasks, and the slots, in which every problem has stopped

                def cut(
                    t: torch.Tensor, keep_t: torch.Tensor = keep_t, keep_s: torch.Tensor = keep_s
                ) -> torch.Tensor:
                    return t.index_select(0, keep_t).index_select(1, keep_s)

                x, f, g, active, iters, why, gamma, gamma_c, has_pairs = map(
                    cut, (x, f, g, active, iters, why, gamma, gamma_c, has_pairs)
                )
                pairs = deque(((cut(s), cut(yv), cut(rho)) for s, yv, rho in pairs), maxlen=history)
                task_ids, slot_ids = task_ids[keep_t], slot_ids[keep_s]
                fun = fun.select(keep_t if cut_t else None, keep_s if cut_s else None)
        n_active = n_still
    why = torch.where(active, _MAXITER, why)
    store()
    return _Result(out, out_iter.cpu().numpy(), out_why.cpu().numpy())


# ---------------------------------------------------------------------------------------------------------
# designs: the tasks of one batch, padded, in row-space coordinates when they have fewer rows than features


@dataclass
class _Design:
    """The rows of a batch of tasks as the solver sees them.

    ``Z`` (T, m, p) holds each task's rows padded to ``m`` (weight 0); when every task has fewer rows than
    features, the columns are the task's row-space coordinates (``Z_t = U_t S_t`` of the thin SVD
    ``Z_t = U_t S_t V_t^T``, padded to ``p`` columns) and ``V`` (T, d, p) maps them back: ``W = W' V^T``.
    """

    Z: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor
    totals: np.ndarray  # (T,) total example weight of each task
    V: torch.Tensor | None
    rows: int
    _low: torch.Tensor | bool | None = None

    @property
    def macs(self) -> int:
        """Multiply-adds of one function evaluation of one problem (logits and gradient)."""
        return 2 * self.Z.shape[1] * self.Z.shape[2] * self.rows

    def low(self) -> torch.Tensor | None:
        """``Z`` in the device's fast low precision (made once), or None where it has none: see ``_run``."""
        if self._low is None:
            dtype = _low_precision(self.Z.device) if self.macs > _PATH_MACS else None
            self._low = False if dtype is None else self.Z.to(dtype)
        return None if self._low is False else self._low

    def to_reduced(self, theta: torch.Tensor) -> torch.Tensor:
        """(T, S, rows, d + 1) parameters in feature space -> the design's coordinates."""
        if self.V is None:
            return theta
        n_tasks, n_slots, rows, d1 = theta.shape
        W = torch.bmm(theta[..., : d1 - 1].reshape(n_tasks, n_slots * rows, d1 - 1), self.V)
        return torch.cat([W.view(n_tasks, n_slots, rows, -1), theta[..., d1 - 1 :]], dim=-1)

    def to_features(self, theta: torch.Tensor) -> torch.Tensor:
        """(T, S, rows, p + 1) parameters in the design's coordinates -> feature space."""
        if self.V is None:
            return theta
        n_tasks, n_slots, rows, p1 = theta.shape
        W = torch.bmm(theta[..., : p1 - 1].reshape(n_tasks, n_slots * rows, p1 - 1), self.V.transpose(1, 2))
        return torch.cat([W.view(n_tasks, n_slots, rows, -1), theta[..., p1 - 1 :]], dim=-1)


def _row_space(Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-space coordinates ``U S`` (m, r) and basis ``V`` (d, r) of ``Z`` (m, d), from a float64 thin SVD.

    ``r`` is the numerical rank (singular values above ``s_max * max(m, d) * eps``, as numpy's
    ``matrix_rank``); directions below it carry no data, so their optimal weights are zero.
    """
    U, s, Vh = torch.linalg.svd(Z.double(), full_matrices=False)
    keep = s > s[0] * max(Z.shape) * np.finfo(np.float64).eps if s.numel() else s > 0
    r = int(keep.sum())
    return (U[:, :r] * s[:r]).to(Z.dtype), Vh[:r].T.to(Z.dtype)


def _design(
    Zs: Sequence[torch.Tensor], codes: Sequence[np.ndarray], weights: Sequence[np.ndarray], k: int
) -> _Design:
    """Pad a batch of tasks (standardised rows, class codes, example weights) into one :class:`_Design`."""
    n_tasks = len(Zs)
    m = max(Z.shape[0] for Z in Zs)
    d = Zs[0].shape[1]
    dev, dtype = Zs[0].device, Zs[0].dtype
    V = None
    if m < d:
        reduced = [_row_space(Z) for Z in Zs]
        p = max(1, max(r.shape[1] for r, _ in reduced))
        Z = torch.zeros(n_tasks, m, p, dtype=dtype, device=dev)
        V = torch.zeros(n_tasks, d, p, dtype=dtype, device=dev)
        for t, (coords, basis) in enumerate(reduced):
            Z[t, : coords.shape[0], : coords.shape[1]] = coords
            V[t, :, : basis.shape[1]] = basis
    elif n_tasks == 1:
        Z = Zs[0][None]
    else:
        Z = torch.zeros(n_tasks, m, d, dtype=dtype, device=dev)
        for t, Zt in enumerate(Zs):
            Z[t, : Zt.shape[0]] = Zt
    y = np.zeros((n_tasks, m), dtype=np.int64)
    w = np.zeros((n_tasks, m))
    totals = np.array([wt.sum() for wt in weights], dtype=np.float64)
    for t, (c, wt) in enumerate(zip(codes, weights, strict=True)):
        y[t, : c.size], w[t, : c.size] = c, wt / totals[t]
    return _Design(
        Z,
        torch.as_tensor(y, device=dev),
        torch.as_tensor(w, dtype=dtype, device=dev),
        totals,
        V,
        rows=1 if k == 2 else k,
    )


@dataclass
class _Fitted:
    """What fitting one task chose: its ``C``, validation scores (mean over ``val_folds`` folds; one fold is a
    hold-out), parameters (rows, d + 1) and iterations."""

    C: float
    val_scores: dict[float, float]
    theta: torch.Tensor
    n_iter: int
    val_folds: int = 0


class LogisticProbe(TorchClassifier):
    """Multinomial logistic-regression probe, optionally choosing ``C`` by validation on train.

    Parameters
    ----------
    C : float or None
        Inverse L2 strength, as in scikit-learn. ``None`` chooses it from ``Cs`` and refits on all of train with
        it. A training set of fewer than ``cv_below`` examples is split into ``cv`` seeded stratified folds (as
        ``StratifiedKFold(cv, shuffle=True)``); every ``C`` is fit on each fold's complement and the ``C`` with the
        best ``selection_metric`` averaged over the folds wins, as scikit-learn's ``LogisticRegressionCV``
        chooses. A larger one holds out a seeded, stratified ``val_fraction`` and scores every ``C`` there.
        Ties go to the smaller ``C`` (the stronger penalty): among fits the validation cannot tell apart, the
        simpler model.
    Cs : sequence of float
        Grid searched when ``C`` is None. The default runs from 1e-4 to 100 in half-decade steps (13 values).
        It covers scikit-learn's default (1) and BioBench's search range for standardised features (1e-3..10),
        reaches one decade lower for few-shot training sets, where the penalty weighs most against the data
        term, and stops at 100, where the fit is close to unregularised. Held-out scores change slowly with
        ``C``, so half-decade steps lose little. A small problem solves the whole grid from scratch as one
        batched problem to ``tol``; a large one walks it warm-started, screening every ``C`` at tolerance 1e-4
        and polishing the best-screened ones (the two best and any within 0.005) to ``tol``, among which it
        chooses; a contender falling over 0.01 behind the best during the polish is dropped (see the module
        docstring). ``val_scores_`` then holds screened (or partly polished) scores for the other ``C``.
    val_fraction : float
        Share of each class held out for choosing ``C`` on training sets of ``cv_below`` examples or more (a class
        keeps at least one example for fitting).
    cv : int
        Folds of the cross-validation that chooses ``C`` on small training sets (at least 2). A class with fewer
        examples than folds is validated in fewer folds; one with a single example is only fitted.
    cv_below : int
        Training sets with fewer examples than this choose ``C`` by ``cv``-fold cross-validation; 0 turns it off.
        Why 1000: a 20% hold-out of fewer than 1000 examples scores each ``C`` on under 200, where one example
        moves accuracy by over 0.5% and the grid's neighbours tie or swap by chance (a 60-image folder held out
        9). Cross-validation scores every example once, for ``cv`` times the fitting work, which below 1000
        examples is small: the folds and the grid are solved as one batch.
    selection_metric : {"macro_f1", "accuracy"}
        Validation score used to choose ``C``; macro-F1 averages over the classes present in the validation labels
        (of each fold).
    class_weight : {None, "balanced"} or dict
        ``"balanced"`` weighs class ``c`` by ``n / (n_classes * n_c)`` (on sample weights, if given), as scikit-learn.
        A dict ``{label: weight}`` multiplies each example's weight by its class's (1 for classes it leaves out), as
        scikit-learn's ``LogisticRegression``; a key that is no training class is an error.
    standardize : bool
        Centre and scale each feature with train statistics before fitting (features with zero variance are only
        centred). This makes one ``C`` grid fit every backbone. The same statistics serve the held-out search.
    max_iter, tol : int, float
        L-BFGS iteration limit and tolerance on the largest gradient entry of the objective divided by the total
        sample weight (scikit-learn's ``gtol``; with fewer rows than features, in row-space coordinates). A fit
        also stops when an iteration lowers the objective by less than 64 float64 epsilons relatively (1e-8 in
        float32, the resolution of float32 loss terms).
    dtype : {"float32", "float64"}
        Precision of fitting and scoring; inputs of any float type (float16 too) are converted.
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    random_state : int, RandomState or None
        Seed of the held-out split or the folds.

    Scores: ``decision_function`` gives the logits, (n, n_classes); for two classes, whose model has one logit
    ``z``, it gives ``(-z/2, z/2)``, so ``predict_proba`` is the softmax of the scores in every case.
    The refit on all of train is warm-started from the chosen ``C``'s solution on the fitting part (the mean over
    the folds); the objective has one minimum, so this changes only the number of iterations.
    Many binary probes on shared features (e.g. NeWT's tasks) are fit together by :func:`fit_many_binary`.

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    coef_ : ndarray, (1, n_features) for two classes, else (n_classes, n_features)
        Weights in the ORIGINAL (un-standardised) feature space, float64, so that
        ``X @ coef_.T + intercept_`` gives the logits.
    intercept_ : ndarray, (1,) or (n_classes,)
    mean_, scale_ : ndarray (n_features,)
        Standardisation statistics (zeros and ones when ``standardize=False``).
    C_ : float
        The ``C`` of the final model.
    val_scores_ : dict[float, float]
        Validation score of each grid ``C``: the mean over the folds, or the hold-out's score (empty when ``C`` was
        given or nothing could be held out).
    val_folds_ : int
        Validation splits averaged into ``val_scores_``: ``cv`` (or fewer, see ``cv``), 1 for a hold-out, 0 when
        ``C`` was given or nothing could be held out.
    n_iter_ : int
        L-BFGS iterations of the final fit.
    n_features_in_ : int
    """

    def __init__(
        self,
        C: float | None = None,
        Cs: Sequence[float] = DEFAULT_CS,
        val_fraction: float = 0.2,
        cv: int = 5,
        cv_below: int = 1000,
        selection_metric: str = "macro_f1",
        class_weight: str | None = None,
        standardize: bool = True,
        max_iter: int = 1000,
        tol: float = 1e-6,
        dtype: str = "float32",
        device: str = "cpu",
        random_state: int | np.random.RandomState | None = 0,
    ) -> None:
        self.C = C
        self.Cs = Cs
        self.val_fraction = val_fraction
        self.cv = cv
        self.cv_below = cv_below
        self.selection_metric = selection_metric
        self.class_weight = class_weight
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol
        self.dtype = dtype
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ checks

    def _check_params(self) -> None:
        def positive(name: str, value: Any) -> None:
            ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name}={value!r} must be a positive finite number")

        if self.C is not None:
            positive("C", self.C)
        try:
            grid = list(self.Cs)
        except TypeError as exc:
            raise ConfigError(f"Cs={self.Cs!r} must be a sequence of positive numbers") from exc
        if not grid:
            raise ConfigError("Cs is empty; give at least one C, e.g. Cs=(0.01, 0.1, 1.0)")
        for c in grid:
            positive("each value of Cs", c)
        fraction_ok = isinstance(self.val_fraction, int | float | np.number) and 0 < self.val_fraction < 1
        if not fraction_ok:
            raise ConfigError(
                f"val_fraction={self.val_fraction!r} must lie strictly between 0 and 1, e.g. 0.2"
            )
        for name, value, low in (("cv", self.cv, 2), ("cv_below", self.cv_below, 0)):
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name}={value!r} must be a whole number of at least {low}, e.g. "
                                  f"{5 if name == 'cv' else 1000}")
        if self.selection_metric not in _METRICS:
            raise ConfigError(f"selection_metric={self.selection_metric!r} is unknown; use one of {_METRICS}")
        if isinstance(self.class_weight, Mapping):
            for label, weight in self.class_weight.items():
                number = isinstance(weight, int | float | np.number) and not isinstance(weight, bool)
                if not number or not math.isfinite(weight) or weight < 0:
                    raise ConfigError(f"class_weight[{label!r}]={weight!r} must be a finite non-negative number")
        elif self.class_weight is not None and not (
            isinstance(self.class_weight, str) and self.class_weight == "balanced"
        ):
            raise ConfigError(f"class_weight={self.class_weight!r} is not supported; use None, 'balanced' or a "
                              "dict {class: weight}")
        if not isinstance(self.standardize, bool | np.bool_):
            raise ConfigError(f"standardize={self.standardize!r} must be True or False")
        if (
            not isinstance(self.max_iter, int | np.integer)
            or isinstance(self.max_iter, bool)
            or self.max_iter < 1
        ):
            raise ConfigError(f"max_iter={self.max_iter!r} must be a positive integer")
        positive("tol", self.tol)
        self._common_checks()
        try:
            check_random_state(self.random_state)
        except ValueError as exc:
            raise ConfigError(
                f"random_state={self.random_state!r} must be an int, a RandomState or None"
            ) from exc

    # ------------------------------------------------------------------ fitting

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LogisticProbe:
        """Fit on features ``X`` (n, D) and labels ``y`` (n,); ``sample_weight`` multiplies each example's loss."""
        self._check_params()
        device, dtype = self._common_checks()
        Xt = as_features(X, dtype=dtype, device=device)
        n, d = Xt.shape
        classes, codes = encode_labels(y, n)
        require_two_classes(classes)
        sw = self._sample_weight(sample_weight, n) * self._class_weights(classes, strict=True)[codes]
        if sw.sum() <= 0:
            raise InputError(f"class_weight={self.class_weight!r} leaves every example with weight zero; "
                             "give some class a positive weight")
        mean, scale = self._statistics(Xt)
        Z = self._standardized(Xt, mean, scale)
        del Xt
        (fitted,) = self._fit_tasks([Z], [codes], [sw], len(classes))
        self._set_fitted(classes, mean, scale, fitted)
        return self

    def _set_fitted(self, classes: np.ndarray, mean: np.ndarray, scale: np.ndarray, fitted: _Fitted) -> None:
        device, dtype = self._common_checks()
        d = mean.shape[0]
        W, b = fitted.theta[:, :d].contiguous(), fitted.theta[:, d].contiguous()
        self.classes_ = classes
        self.n_features_in_ = d
        self.dtype_ = dtype
        self.device_ = device
        self.mean_ = mean
        self.scale_ = scale
        self.C_ = fitted.C
        self.val_scores_ = fitted.val_scores
        self.val_folds_ = fitted.val_folds
        self.n_iter_ = fitted.n_iter
        W64, b64 = W.double().cpu().numpy(), b.double().cpu().numpy()
        self.coef_ = W64 / scale
        self.intercept_ = b64 - self.coef_ @ mean
        self._w = W
        self._b = b
        self._mean_t = torch.as_tensor(mean, dtype=dtype, device=device)
        self._scale_t = torch.as_tensor(scale, dtype=dtype, device=device)

    def _standardized(self, Xt: torch.Tensor, mean: np.ndarray, scale: np.ndarray) -> torch.Tensor:
        if not self.standardize:
            return Xt
        mean_t = torch.as_tensor(mean, dtype=Xt.dtype, device=Xt.device)
        scale_t = torch.as_tensor(scale, dtype=Xt.dtype, device=Xt.device)
        return (Xt - mean_t) / scale_t

    def _sample_weight(self, sample_weight: Any, n: int) -> np.ndarray:
        if sample_weight is None:
            return np.ones(n)
        try:
            sw = np.asarray(sample_weight, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"sample_weight must be numbers: {exc}; pass one float weight per example") from exc
        if sw.shape != (n,):
            raise InputError(
                f"sample_weight has shape {sw.shape} but there are {n} examples; pass one weight each"
            )
        if not np.isfinite(sw).all() or (sw < 0).any() or sw.sum() <= 0:
            raise InputError("sample_weight must be finite, non-negative and not all zero")
        return sw

    def _class_weights(self, classes: np.ndarray, strict: bool) -> np.ndarray:
        """Multiplier of each class's examples from a ``class_weight`` dict (1 for a class it leaves out); ones
        for None and "balanced" (which :meth:`_weights` applies per fitting part). ``strict``: a key that names no
        class of ``classes`` is an error (a typo would otherwise weigh nothing); :func:`fit_many_binary` shares one
        dict between tasks with different classes, so it is lenient."""
        cw = np.ones(len(classes))
        if not isinstance(self.class_weight, Mapping):
            return cw
        index = {c: i for i, c in enumerate(classes.tolist())}
        unknown = [key for key in self.class_weight if key not in index]
        if strict and unknown:
            raise InputError(
                f"class_weight names {unknown[:5]!r}, which are not training classes (those are "
                f"{classes[:5].tolist()!r}{', ...' if len(classes) > 5 else ''}); use the labels as given in y"
            )
        for key, weight in self.class_weight.items():
            if key in index:
                cw[index[key]] = float(weight)
        return cw

    def _statistics(self, Xt: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and standard deviation (1 where it is 0), accumulated in float64."""
        d = Xt.shape[1]
        if not self.standardize:
            return np.zeros(d), np.ones(d)
        total = torch.zeros(d, dtype=torch.float64, device=Xt.device)
        for sl in iter_row_chunks(Xt.shape[0], 8192):
            total += Xt[sl].double().sum(0)
        mean = total / Xt.shape[0]
        sq = torch.zeros(d, dtype=torch.float64, device=Xt.device)
        for sl in iter_row_chunks(Xt.shape[0], 8192):
            sq += ((Xt[sl].double() - mean) ** 2).sum(0)
        std = (sq / Xt.shape[0]).sqrt().cpu().numpy()
        std[std < 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean.cpu().numpy()))] = 1.0
        return mean.cpu().numpy(), std

    def _weights(self, codes: np.ndarray, sw: np.ndarray, k: int) -> np.ndarray:
        """Sample weights times class weights, for the examples given."""
        if self.class_weight != "balanced":
            return sw
        per_class = np.bincount(codes, weights=sw, minlength=k)
        cw = np.zeros(k)
        present = per_class > 0
        cw[present] = sw.sum() / (present.sum() * per_class[present])
        return sw * cw[codes]

    def _fit_tasks(
        self,
        Zs: Sequence[torch.Tensor],
        codes: Sequence[np.ndarray],
        sws: Sequence[np.ndarray],
        k: int,
        names: Sequence[str] | None = None,
    ) -> list[_Fitted]:
        """Fit one model per task (standardised rows ``Zs[t]``, class codes ``codes[t]`` in ``range(k)``).

        Every task gets what :meth:`fit` would give it alone: its own validation splits (from a fresh
        ``check_random_state(random_state)``), grid search and refit. Every (task, fold) fitting part is one
        problem of the batch and every ``C`` one slot, so the folds cost one batched solve, not ``cv``.
        """
        n_tasks = len(Zs)
        names = names or [""] * n_tasks
        chosen = [math.nan if self.C is None else float(self.C)] * n_tasks
        scores: list[dict[float, float]] = [{} for _ in range(n_tasks)]
        inits: list[torch.Tensor | None] = [None] * n_tasks
        n_val = [0] * n_tasks
        if self.C is None:
            grid = sorted(float(c) for c in self.Cs)
            splits: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
            for t in range(n_tasks):
                split = self._validation_splits(codes[t], k, names[t])
                if not split:
                    chosen[t] = min(grid, key=lambda c: (abs(math.log10(c)), c))
                    logger.warning(
                        "%sno class has two or more training examples, so nothing can be held out to "
                        "choose C; using C=%g from the grid (pass C= to set it)",
                        names[t],
                        chosen[t],
                    )
                else:
                    splits[t] = split
            metric = _macro_f1 if self.selection_metric == "macro_f1" else _accuracy
            problems = [(t, f) for t in splits for f in range(len(splits[t]))]
            fold_scores = {t: np.zeros((len(splits[t]), len(grid))) for t in splits}
            theta_sum: dict[int, torch.Tensor] = {}
            eligible: dict[int, np.ndarray] = {}
            sizes = [(i, splits[t][f][0].size) for i, (t, f) in enumerate(problems)]
            for part in self._task_chunks(sizes, Zs[0].shape[1], len(grid), k):
                batch = [problems[i] for i in part]
                fits = [splits[t][f][0] for t, f in batch]
                design = _design(
                    [Zs[t][torch.as_tensor(i, device=Zs[t].device)] for (t, _), i in zip(batch, fits, strict=True)],
                    [codes[t][i] for (t, _), i in zip(batch, fits, strict=True)],
                    [self._weights(codes[t][i], sws[t][i], k) for (t, _), i in zip(batch, fits, strict=True)],
                    k,
                )

                def score(theta: torch.Tensor, batch: list[tuple[int, int]] = batch) -> np.ndarray:
                    """Validation score (T, S) of each problem of the batch at each slot."""
                    out = np.zeros(theta.shape[:2])
                    for j, (t, f) in enumerate(batch):
                        val = splits[t][f][1]
                        pred = _predict_codes(Zs[t][torch.as_tensor(val, device=Zs[t].device)], theta[j])
                        out[j] = [metric(codes[t][val], pred[:, s], k) for s in range(theta.shape[1])]
                    return out

                theta, exact = self._solve_grid(design, grid, score)
                del design
                batch_scores = score(theta)
                for j, (t, f) in enumerate(batch):
                    fold_scores[t][f] = batch_scores[j]
                    theta_sum[t] = theta[j].clone() if t not in theta_sum else theta_sum[t] + theta[j]
                    eligible[t] = eligible.get(t, np.zeros(len(grid), dtype=bool)) | exact[j]
            for t in splits:
                mean = fold_scores[t].mean(axis=0)
                scores[t] = {c: float(mean[s]) for s, c in enumerate(grid)}
                # only C values fit to tol compete (all of them unless a large path was screened)
                best = max(np.flatnonzero(eligible[t]), key=lambda s, mean=mean: (mean[s], -s))
                n_val[t] = len(splits[t])
                # the refit starts from the folds' mean solution at the chosen C (as LogisticRegressionCV's)
                chosen[t], inits[t] = grid[best], theta_sum[t][best] / n_val[t]
                logger.info(
                    "%schose C=%g (%s %.4f %s)",
                    names[t],
                    chosen[t],
                    self.selection_metric,
                    mean[best],
                    f"on {splits[t][0][1].size} held-out examples" if n_val[t] == 1
                    else f"averaged over {n_val[t]} folds of {codes[t].size} examples",
                )
            del theta_sum
        out: list[_Fitted] = []
        for part in self._task_chunks([(t, Z.shape[0]) for t, Z in enumerate(Zs)], Zs[0].shape[1], 1, k):
            design = _design(
                [Zs[t] for t in part],
                [codes[t] for t in part],
                [self._weights(codes[t], sws[t], k) for t in part],
                k,
            )
            res = self._run(design, np.array([[chosen[t]] for t in part]), [inits[t] for t in part])
            theta = design.to_features(res.theta)
            out += [
                _Fitted(chosen[t], scores[t], theta[i, 0], int(res.n_iter[i, 0]), n_val[t])
                for i, t in enumerate(part)
            ]
        return out

    def _validation_splits(self, codes: np.ndarray, k: int, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(fitting part, validation part)`` pairs of one task: ``cv`` stratified folds below ``cv_below``
        examples, else one stratified hold-out; empty when nothing can be validated."""
        rng = check_random_state(self.random_state)
        if codes.size < self.cv_below:
            splits = _stratified_folds(codes, k, int(self.cv), rng)
        else:
            fit_idx, val_idx = _stratified_holdout(codes, k, float(self.val_fraction), rng)
            splits = [(fit_idx, val_idx)] if val_idx.size else []
        counts = np.bincount(codes, minlength=k)
        if splits and (counts == 1).any():
            logger.warning(
                "%s%d of %d classes have a single training example; they are fitted but absent from the "
                "validation used to choose C",
                name,
                int((counts == 1).sum()),
                k,
            )
        return splits

    @staticmethod
    def _task_chunks(sized: list[tuple[int, int]], d: int, n_slots: int, k: int) -> list[list[int]]:
        """Group ``(task, n_rows)`` pairs, in order, so that a group's padded design and L-BFGS state stay
        within ``_CHUNK_ELEMS`` elements; a task too large for that forms a group of its own."""
        rows = 1 if k == 2 else k
        groups: list[list[int]] = []
        widest = 0
        for t, m in sized:
            p = min(m, d)
            cost = m * p + n_slots * rows * (p + 1) * _STATE_COPIES
            grown = max(widest, cost)
            if groups and (len(groups[-1]) + 1) * grown <= _CHUNK_ELEMS:
                groups[-1].append(t)
                widest = grown
            else:
                groups.append([t])
                widest = cost
        return groups

    def _solve_grid(
        self, design: _Design, grid: list[float], score: Callable[[torch.Tensor], np.ndarray] | None = None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Fit every task of ``design`` at every ``C`` of ``grid``: (T, S, rows, d + 1) in feature space, and which
        ``C`` values (T, S) were fit to ``tol`` (the others only to ``_SELECT_TOL``, or dropped from the polish as
        out of reach; only those fit to ``tol`` may be chosen).

        Small problems are solved as one batched problem to ``tol``. Large ones (a big task, or the folds of one)
        walk the grid from strong to weak regularisation, each fit warm-started from the previous one. Given
        ``score`` (validation score of each problem and slot), the walk is a cheap screen: every ``C`` to
        scikit-learn's default tolerance ``_SELECT_TOL``, which scores ``C`` values almost as the exact fits do but
        needs a third of the iterations (the last digits of a fit are its costly part). Then the two best-scoring
        ``C`` values of each problem are polished to ``tol`` from their screened solutions in one batched solve,
        and the choice is made among the polished fits only: close contenders are ranked on exact fits, and a
        ``C`` that screens below the two best is not within reach of the best (see docs/performance.md, Probes).
        """
        n_tasks = design.Z.shape[0]
        if design.macs <= _PATH_MACS:
            res = self._run(design, np.tile(grid, (n_tasks, 1)), None)
            return design.to_features(res.theta), np.ones((n_tasks, len(grid)), dtype=bool)
        screen = score is not None and len(grid) > 2 and self.tol < _SELECT_TOL
        thetas: list[torch.Tensor] = []
        for c in grid:
            starts = list(thetas[-1][:, 0]) if thetas else None
            tol = _SELECT_TOL if screen else None
            res = self._run(design, np.full((n_tasks, 1), c), starts, reduced=True, tol=tol, low=screen)
            thetas.append(res.theta)
        theta = torch.cat(thetas, dim=1)
        if not screen:
            return design.to_features(theta), np.ones((n_tasks, len(grid)), dtype=bool)
        assert score is not None
        screened = score(design.to_features(theta))  # (T, S)
        polish = np.zeros(len(grid), dtype=bool)
        for row in screened:  # each problem's two best (ties to the smaller C) and all within _SELECT_MARGIN
            order = sorted(range(len(grid)), key=lambda s, row=row: (-row[s], s))
            polish[order[:2]] = True
            polish |= row >= row.max() - _SELECT_MARGIN
        slots = np.flatnonzero(polish)
        idx = torch.as_tensor(slots, device=theta.device)

        def hopeless(current: torch.Tensor, running: torch.Tensor) -> np.ndarray:
            """Contenders (T, slots) scoring over ``_DROP_MARGIN`` below their problem's best contender now."""
            now = score(design.to_features(current))
            logger.debug("polish scores %s (running %s)", np.round(now, 4).tolist(), running.tolist())
            return now < now.max(axis=1, keepdims=True) - _DROP_MARGIN

        res = self._run(
            design, np.tile(np.asarray(grid)[slots], (n_tasks, 1)), None, start=theta[:, idx], monitor=hopeless
        )
        theta[:, idx] = res.theta
        exact = np.zeros((n_tasks, len(grid)), dtype=bool)
        exact[:, slots] = res.reason != _DROPPED
        return design.to_features(theta), exact

    def _run(
        self,
        design: _Design,
        Cs: np.ndarray,
        inits: Sequence[torch.Tensor | None] | None,
        reduced: bool = False,
        tol: float | None = None,
        start: torch.Tensor | None = None,
        monitor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        low: bool = False,
    ) -> _Result:
        """Minimise the objective of task ``t`` at ``C = Cs[t, s]`` for every slot ``s`` to ``tol`` (default
        ``self.tol``), starting from zero, from ``inits[t]`` (rows, d + 1) in feature space (design coordinates
        when ``reduced``) in slot 0, or from ``start`` (T, S, rows, p + 1) in design coordinates; the result stays
        in design coordinates. ``low``: a screen, all on low-precision products where the device has them.
        Otherwise a large fit to a tolerance below the screen's first runs to ``_SELECT_TOL`` on them (up to
        ``max_iter`` iterations), then to ``tol`` in full precision (``n_iter`` counts this second phase).
        ``monitor`` is passed to :func:`_lbfgs` for the full-precision phase."""
        n_tasks, _, p = design.Z.shape
        dev, dtype = design.Z.device, design.Z.dtype
        lam = 1.0 / (Cs * design.totals[:, None])
        fun = _Objective(
            design.Z,
            design.y,
            design.w,
            torch.as_tensor(lam, dtype=dtype, device=dev),
            binary=design.rows == 1,
            Zlow=design.low() if low else None,  # a screen: low precision only
        )
        theta0 = torch.zeros(n_tasks, Cs.shape[1], design.rows, p + 1, dtype=dtype, device=dev)
        if inits is not None and any(init is not None for init in inits):
            d = p if reduced or design.V is None else design.V.shape[1]
            blank = torch.zeros(design.rows, d + 1, dtype=dtype, device=dev)
            first = torch.stack([blank if init is None else init for init in inits])
            theta0[:, 0] = first if reduced else design.to_reduced(first[:, None])[:, 0]
        if start is not None:
            theta0 = start.clone()
        gtol = float(self.tol if tol is None else tol)
        if not low and gtol < _SELECT_TOL and design.low() is not None:
            # a large fit to tol: low-precision products take it to the screen's tolerance, float32 ones finish
            fun.Zlow = design.low()
            first = _lbfgs(fun, theta0, int(self.max_iter), _SELECT_TOL)
            logger.debug("low-precision phase: L-BFGS iterations %s", first.n_iter.tolist())
            theta0, fun.Zlow = first.theta, None
        res = _lbfgs(fun, theta0, int(self.max_iter), gtol, monitor=monitor)
        capped = res.reason == _MAXITER
        if capped.any():
            logger.warning(
                "L-BFGS reached max_iter=%d before the gradient fell below tol=%g in %d of %d fits (C=%s); "
                "raise max_iter or tol",
                self.max_iter,
                self.tol,
                int(capped.sum()),
                capped.size,
                sorted({float(c) for c in Cs[capped]}),
            )
        logger.debug(
            "L-BFGS iterations %s, stopped by %s",
            res.n_iter.tolist(),
            [[_REASONS[r] for r in row] for row in res.reason.tolist()],
        )
        return res

    # ------------------------------------------------------------------ scoring

    @staticmethod
    def _logits(Z: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(n, C) scores; the binary model's logit z becomes the symmetric pair (-z/2, z/2)."""
        out = Z @ W.T + b
        if W.shape[0] == 1:
            half = out[:, 0] / 2
            out = torch.stack([-half, half], dim=1)
        return out

    def _scores(self, X: torch.Tensor) -> torch.Tensor:
        Z = (X - self._mean_t) / self._scale_t if self.standardize else X
        return self._logits(Z, self._w, self._b)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), rows summing to 1."""
        return torch.softmax(self._all_scores(X), dim=1).cpu().numpy()

    def _fit_info(self) -> dict[str, Any]:
        return {
            "C": float(self.C_),
            "C_selected": self.C is None,
            "selection_metric": self.selection_metric if self.C is None else None,
            "val_scores": {repr(float(c)): float(s) for c, s in self.val_scores_.items()},
            "val_folds": int(self.val_folds_),
            "n_iter": int(self.n_iter_),
        }


def _predict_codes(Z: torch.Tensor, theta: torch.Tensor) -> np.ndarray:
    """Predicted class codes (n, S) of rows ``Z`` (n, d) under each of the S models ``theta`` (S, rows, d + 1)."""
    n_slots, rows, d1 = theta.shape
    W = theta[..., : d1 - 1].reshape(n_slots * rows, d1 - 1)
    b = theta[..., d1 - 1].reshape(n_slots * rows)
    preds = []
    for sl in iter_row_chunks(Z.shape[0], max(1, _BLOCK_ELEMS // (n_slots * rows))):
        logits = torch.addmm(b, Z[sl], W.T).view(-1, n_slots, rows)
        preds.append((logits[..., 0] > 0).long() if rows == 1 else logits.argmax(-1))
    return torch.cat(preds).cpu().numpy()


def fit_many_binary(X: Any, tasks: Sequence[tuple[Any, Any]], **params: Any) -> list[LogisticProbe]:
    """Fit one binary :class:`LogisticProbe` per task on rows of shared features, all tasks at once.

    Parameters
    ----------
    X : array (n, D)
        Features shared by every task (e.g. the embeddings of all of NeWT's images).
    tasks : sequence of (rows, labels)
        Per task, its training rows of ``X`` (integer indices, or a boolean mask of length n) and their labels,
        which must hold exactly two classes.
    **params
        :class:`LogisticProbe` hyperparameters (``C``, ``Cs``, ``class_weight``, ``device``, ...), shared by all tasks.

    Returns
    -------
    list of LogisticProbe
        Fitted probes, one per task in order, each equal (to the solver's tolerance) to
        ``LogisticProbe(**params).fit(X[rows], labels)``: the same standardisation on the task's own rows, the
        same validation splits and ``C`` choice, the same refit. Score a task's test rows with its probe.

    Raises
    ------
    ConfigError
        A hyperparameter is unknown or has a bad value.
    DataError
        ``X`` is not a finite 2-D matrix, or a task's rows or labels are malformed or do not hold two classes.
    """
    template = LogisticProbe()
    unknown = sorted(set(params) - set(template.get_params()))
    if unknown:
        raise ConfigError(
            f"fit_many_binary got unknown LogisticProbe parameters {unknown}; "
            f"valid ones: {', '.join(sorted(template.get_params()))}"
        )
    template.set_params(**params)
    template._check_params()
    device, dtype = template._common_checks()
    Xt = as_features(X, dtype=dtype, device=device)
    n = Xt.shape[0]
    Zs, codes, sws, kept = [], [], [], []
    for i, task in enumerate(tasks):
        try:
            rows, labels = task
        except (TypeError, ValueError) as exc:
            raise DataError(f"task {i} must be a (rows, labels) pair, got {type(task).__name__}") from exc
        idx = _task_rows(rows, n, i)
        classes, c = encode_labels(labels, idx.size)
        if len(classes) != 2:
            raise DataError(
                f"task {i} has {len(classes)} classes ({list(classes[:5])}); fit_many_binary fits two-class "
                "tasks: use LogisticProbe for others"
            )
        Xi = Xt[torch.as_tensor(idx, device=device)]
        mean, scale = template._statistics(Xi)
        Zs.append(template._standardized(Xi, mean, scale))
        codes.append(c)
        sws.append(template._class_weights(classes, strict=False)[c])
        kept.append((classes, mean, scale))
    if not Zs:
        return []
    fitted = template._fit_tasks(Zs, codes, sws, 2, names=[f"task {i}: " for i in range(len(Zs))])
    probes = []
    for (classes, mean, scale), fit in zip(kept, fitted, strict=True):
        probe = clone(template)
        probe._set_fitted(classes, mean, scale, fit)
        probes.append(probe)
    return probes


def _task_rows(rows: Any, n: int, i: int) -> np.ndarray:
    """A task's training rows as integer indices into ``n`` feature rows."""
    arr = np.asarray(rows)
    if arr.dtype == np.bool_:
        if arr.shape != (n,):
            raise DataError(
                f"task {i}: a boolean row mask must have length {n} (one per feature row), got {arr.shape}"
            )
        arr = np.flatnonzero(arr)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"task {i}: rows must be a non-empty 1-D array of integer indices or a boolean mask, got "
            f"dtype {arr.dtype} shape {arr.shape}"
        )
    if arr.min() < 0 or arr.max() >= n:
        raise DataError(f"task {i}: row indices must lie in [0, {n}), got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)
