"""L2-regularised multinomial logistic regression fit full-batch with L-BFGS in torch.

The objective is scikit-learn's ``LogisticRegression(penalty="l2")``::

    sum_i w_i * CE_i  +  1 / (2 C) * ||W||^2          (the intercept is not penalised)

with ``w_i`` the sample weight times the class weight. It is strictly convex in ``W``, so for the same ``C``
this and scikit-learn converge to the same solution. As in scikit-learn, two classes are fit as one
binary logistic model (``coef_`` has one row) and more classes as a softmax over all classes.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state

from lifebench.errors import ConfigError, DataError
from lifebench.protocols.base import TorchClassifier, as_features, encode_labels, iter_row_chunks

__all__ = ["DEFAULT_CS", "LogisticProbe"]

logger = logging.getLogger(__name__)

#: Half-decade grid from 1e-4 to 100 (13 values), in round numbers so that results stores stay readable.
DEFAULT_CS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)

_METRICS = ("macro_f1", "accuracy")
#: elements of an (rows x classes) block processed at once in the objective
_BLOCK_ELEMS = 1 << 24


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


Objective = Callable[[torch.Tensor], tuple[float, torch.Tensor]]


def _objective(Z: torch.Tensor, y: torch.Tensor, swn: torch.Tensor, lam: float, binary: bool) -> Objective:
    """The loss divided by the total sample weight, and its gradient, of ``theta = [W | b]``.

    ``swn`` are the normalised sample weights (summing to 1) and ``lam = 1 / (C * total weight)``.
    Rows are processed in blocks so that the (rows x classes) logits stay small. The loss is accumulated
    in float64 so that the line search can see small decreases in float32 runs.
    """
    n, d = Z.shape
    yf = y.to(Z.dtype)

    def fun(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        W, b = theta[:, :d], theta[:, d]
        chunk = max(1, _BLOCK_ELEMS // theta.shape[0])
        grad = torch.zeros_like(theta)
        grad[:, :d] = lam * W
        loss = 0.5 * lam * float(torch.sum(W * W, dtype=torch.float64))
        for sl in iter_row_chunks(n, chunk):
            Zc, wc = Z[sl], swn[sl]
            logits = Zc @ W.T + b
            if binary:
                z = logits[:, 0]
                loss += float(
                    torch.sum(wc * (torch.nn.functional.softplus(z) - yf[sl] * z), dtype=torch.float64)
                )
                G = ((torch.sigmoid(z) - yf[sl]) * wc)[:, None]
            else:
                yc = y[sl]
                lse = torch.logsumexp(logits, dim=1)
                picked = logits.gather(1, yc[:, None])[:, 0]
                loss += float(torch.sum(wc * (lse - picked), dtype=torch.float64))
                G = logits.sub_(lse[:, None]).exp_()
                G[torch.arange(G.shape[0], device=G.device), yc] -= 1
                G *= wc[:, None]
            grad[:, :d] += G.T @ Zc
            grad[:, d] += G.sum(0)
        return loss, grad

    return fun


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sum(a * b, dtype=torch.float64))


def _lbfgs(
    fun: Objective, x0: torch.Tensor, max_iter: int, gtol: float, history: int = 10
) -> tuple[torch.Tensor, int, str]:
    """Minimise a smooth convex ``fun`` with L-BFGS and a backtracking (Armijo) line search.

    Returns ``(x, n_iter, reason)``, the reason for stopping being one of: ``"gtol"``, the largest gradient
    entry is at most ``gtol``; ``"ftol"``, an iteration lowered the loss by less than float64 rounding;
    ``"linesearch"``, no step lowers the loss (the arithmetic's limit, common in float32); ``"max_iter"``.
    Curvature pairs are kept only when ``s.y > 0``, which strict convexity guarantees up to rounding.
    """
    x = x0.clone()
    f, g = fun(x)
    pairs: deque[tuple[torch.Tensor, torch.Tensor, float]] = deque(maxlen=history)
    ftol = 64 * np.finfo(np.float64).eps
    for it in range(max_iter):
        if float(g.abs().max()) <= gtol:
            return x, it, "gtol"
        # two-loop recursion: d = -H g
        q = g.clone()
        alphas = []
        for s, yv, rho in reversed(pairs):
            a = rho * _dot(s, q)
            q.sub_(yv, alpha=a)
            alphas.append(a)
        if pairs:
            s, yv, rho = pairs[-1]
            q.mul_(1.0 / (rho * _dot(yv, yv)))
        for (s, yv, rho), a in zip(pairs, reversed(alphas), strict=True):
            q.add_(s, alpha=a - rho * _dot(yv, q))
        direction = q.neg_()
        gtd = _dot(g, direction)
        if gtd >= 0:  # not a descent direction (rounding): restart from steepest descent
            pairs.clear()
            direction = -g
            gtd = -_dot(g, g)
        step = 1.0 if pairs else min(1.0, 1.0 / float(g.abs().sum()))
        for _ in range(40):
            x_new = x + step * direction
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * gtd:
                break
            # minimiser of the quadratic through f, the slope gtd and f_new, kept within [0.1, 0.5] * step
            denom = 2.0 * (f_new - f - gtd * step)
            trial = -gtd * step * step / denom if denom > 0 else 0.5 * step
            step = min(max(trial, 0.1 * step), 0.5 * step)
        else:
            return x, it, "linesearch"
        s_vec, y_vec = x_new - x, g_new - g
        sy = _dot(s_vec, y_vec)
        if sy > 1e-12 * _dot(y_vec, y_vec) and sy > 0:
            pairs.append((s_vec, y_vec, 1.0 / sy))
        decrease = f - f_new
        x, f, g = x_new, f_new, g_new
        if decrease <= ftol * max(abs(f), abs(f + decrease), 1.0):
            return x, it + 1, "ftol"
    return x, max_iter, "gtol" if float(g.abs().max()) <= gtol else "max_iter"


class LogisticProbe(TorchClassifier):
    """Multinomial logistic-regression probe, optionally choosing ``C`` on a held-out part of train.

    Parameters
    ----------
    C : float or None
        Inverse L2 strength, as in scikit-learn. ``None`` chooses it from ``Cs``: a seeded, stratified
        ``val_fraction`` of train is held out, each ``C`` is fit on the rest (warm-started from strong to weak
        regularisation), the ``C`` with the best ``selection_metric`` on the held-out part wins (ties go to the
        smaller ``C``), and the model is refit on all of train with it.
    Cs : sequence of float
        Grid searched when ``C`` is None. The default runs from 1e-4 to 100 in half-decade steps (13 values).
        It covers scikit-learn's default (1) and BioBench's search range for standardised features (1e-3..10),
        reaches one decade lower for few-shot training sets, where the penalty weighs most against the data
        term, and stops at 100, where the fit is close to unregularised. Held-out scores change slowly with
        ``C``, so half-decade steps lose little, and warm starts keep the 13 fits cheap.
    val_fraction : float
        Share of each class held out for choosing ``C`` (a class keeps at least one example for fitting).
    selection_metric : {"macro_f1", "accuracy"}
        Held-out score used to choose ``C``; macro-F1 averages over the classes present in the held-out labels.
    class_weight : {None, "balanced"}
        ``"balanced"`` weighs class ``c`` by ``n / (n_classes * n_c)`` (on sample weights, if given), as scikit-learn.
    standardize : bool
        Centre and scale each feature with train statistics before fitting (features with zero variance are only
        centred). This makes one ``C`` grid fit every backbone. The same statistics serve the held-out search.
    max_iter, tol : int, float
        L-BFGS iteration limit and tolerance on the largest gradient entry of the objective divided by the total
        sample weight (scikit-learn's ``gtol``).
    dtype : {"float32", "float64"}
        Precision of fitting and scoring; inputs of any float type (float16 too) are converted.
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    random_state : int, RandomState or None
        Seed of the held-out split.

    Scores: ``decision_function`` gives the logits, (n, n_classes); for two classes, whose model has one logit
    ``z``, it gives ``(-z/2, z/2)``, so ``predict_proba`` is the softmax of the scores in every case.
    The refit on all of train is warm-started from the chosen ``C``'s solution on the fitting part; the objective
    has one minimum, so this changes only the number of iterations.

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
        Held-out score of each grid ``C`` (empty when ``C`` was given or nothing could be held out).
    n_iter_ : int
        L-BFGS iterations of the final fit.
    n_features_in_ : int
    """

    def __init__(
        self,
        C: float | None = None,
        Cs: Sequence[float] = DEFAULT_CS,
        val_fraction: float = 0.2,
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
        if self.selection_metric not in _METRICS:
            raise ConfigError(f"selection_metric={self.selection_metric!r} is unknown; use one of {_METRICS}")
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(f"class_weight={self.class_weight!r} is not supported; use None or 'balanced'")
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
        if len(classes) < 2:
            raise DataError(
                f"training labels hold only the class {classes[0]!r}; a classifier needs at least two"
            )
        sw = self._sample_weight(sample_weight, n)

        mean, scale = self._statistics(Xt)
        mean_t = torch.as_tensor(mean, dtype=dtype, device=device)
        scale_t = torch.as_tensor(scale, dtype=dtype, device=device)
        Z = (Xt - mean_t) / scale_t if self.standardize else Xt
        del Xt
        codes_t = torch.as_tensor(codes, device=device)
        k = len(classes)

        init = None
        if self.C is None:
            chosen, val_scores, init = self._select_C(Z, codes, codes_t, sw, k)
        else:
            chosen, val_scores = float(self.C), {}
        W, b, n_iter = self._solve(Z, codes_t, sw, k, chosen, init)

        self.classes_ = classes
        self.n_features_in_ = d
        self.dtype_ = dtype
        self.device_ = device
        self.mean_ = mean
        self.scale_ = scale
        self.C_ = chosen
        self.val_scores_ = val_scores
        self.n_iter_ = n_iter
        W64, b64 = W.double().cpu().numpy(), b.double().cpu().numpy()
        self.coef_ = W64 / scale
        self.intercept_ = b64 - self.coef_ @ mean
        self._w = W
        self._b = b
        self._mean_t = mean_t
        self._scale_t = scale_t
        return self

    def _sample_weight(self, sample_weight: Any, n: int) -> np.ndarray:
        if sample_weight is None:
            return np.ones(n)
        sw = np.asarray(sample_weight, dtype=np.float64)
        if sw.shape != (n,):
            raise DataError(
                f"sample_weight has shape {sw.shape} but there are {n} examples; pass one weight each"
            )
        if not np.isfinite(sw).all() or (sw < 0).any() or sw.sum() <= 0:
            raise DataError("sample_weight must be finite, non-negative and not all zero")
        return sw

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

    def _select_C(
        self, Z: torch.Tensor, codes: np.ndarray, codes_t: torch.Tensor, sw: np.ndarray, k: int
    ) -> tuple[float, dict[float, float], tuple[torch.Tensor, torch.Tensor] | None]:
        grid = sorted(float(c) for c in self.Cs)
        rng = check_random_state(self.random_state)
        fit_idx, val_idx = _stratified_holdout(codes, k, float(self.val_fraction), rng)
        counts = np.bincount(codes, minlength=k)
        if val_idx.size == 0:
            fallback = min(grid, key=lambda c: (abs(math.log10(c)), c))
            logger.warning(
                "no class has two or more training examples, so nothing can be held out to choose C; "
                "using C=%g from the grid (pass C= to set it)",
                fallback,
            )
            return fallback, {}, None
        if (counts < 2).any():
            logger.warning(
                "%d of %d classes have a single training example; they are fitted but absent from the "
                "held-out part used to choose C",
                int((counts < 2).sum()),
                k,
            )
        fit_t = torch.as_tensor(fit_idx, device=Z.device)
        Z_fit, y_fit = Z[fit_t], codes_t[fit_t]
        Z_val = Z[torch.as_tensor(val_idx, device=Z.device)]
        y_val = codes[val_idx]
        metric = _macro_f1 if self.selection_metric == "macro_f1" else _accuracy
        scores: dict[float, float] = {}
        best_c, best_score, best_params = grid[0], -math.inf, None
        params = None
        for c in grid:
            W, b, _ = self._solve(Z_fit, y_fit, sw[fit_idx], k, c, params, codes=codes[fit_idx])
            params = (W, b)
            pred = self._logits(Z_val, W, b).argmax(dim=1).cpu().numpy()
            scores[c] = metric(y_val, pred, k)
            if scores[c] > best_score:
                best_c, best_score, best_params = c, scores[c], params
        logger.info(
            "chose C=%g (%s %.4f on %d held-out examples)",
            best_c,
            self.selection_metric,
            best_score,
            val_idx.size,
        )
        return best_c, scores, best_params

    def _solve(
        self,
        Z: torch.Tensor,
        y: torch.Tensor,
        sw: np.ndarray,
        k: int,
        C: float,
        init: tuple[torch.Tensor, torch.Tensor] | None,
        codes: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Minimise the objective for one ``C``; returns ``(W, b, n_iter)`` in standardised space."""
        d = Z.shape[1]
        rows = 1 if k == 2 else k
        codes = y.cpu().numpy() if codes is None else codes
        w_all = self._weights(codes, sw, k)
        total = float(w_all.sum())
        swn = torch.as_tensor(w_all / total, dtype=Z.dtype, device=Z.device)
        if init is None:
            theta0 = torch.zeros(rows, d + 1, dtype=Z.dtype, device=Z.device)
        else:
            theta0 = torch.cat([init[0], init[1][:, None]], dim=1)
        fun = _objective(Z, y, swn, 1.0 / (C * total), binary=rows == 1)
        theta, n_iter, reason = _lbfgs(fun, theta0, int(self.max_iter), float(self.tol))
        if reason == "max_iter":
            logger.warning(
                "L-BFGS reached max_iter=%d before the gradient fell below tol=%g (C=%g); raise max_iter or tol",
                n_iter,
                self.tol,
                C,
            )
        else:
            logger.debug("L-BFGS stopped after %d iterations (%s) at C=%g", n_iter, reason, C)
        return theta[:, :d].contiguous(), theta[:, d].contiguous(), n_iter

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
            "n_iter": int(self.n_iter_),
        }
