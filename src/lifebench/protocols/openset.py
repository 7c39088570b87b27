"""Open-set classification: a closed-set protocol plus a Mahalanobis-distance "none of these" detector.

Lee et al. (2018), as BioBench's FungiCLEF probe uses it: a base protocol (SimpleShot by default) is fit on the
training features; separately, class means and one shared covariance are estimated on the RAW features, as
scikit-learn's ``LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto", store_covariance=True)`` does:
per class, the features are standardised, the Ledoit-Wolf shrunk covariance is taken and scaled back, and the
class covariances are averaged with the class frequencies as weights. A training example's score is its
smallest squared Mahalanobis distance to a class mean; the threshold is the ``quantile`` of those scores over
the training examples (95%: about 5% of the training examples themselves would be called unknown). ``predict``
returns ``unknown_label`` (-1) when a query's smallest squared distance exceeds the threshold, otherwise the
base protocol's prediction.
"""

from __future__ import annotations

import logging
from numbers import Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from lifebench.errors import ConfigError
from lifebench.protocols.base import (
    InputError,
    TorchClassifier,
    as_features,
    encode_labels,
    iter_row_chunks,
    require_two_classes,
)

__all__ = ["MahalanobisOpenSet", "ledoit_wolf_lda_covariance"]

logger = logging.getLogger(__name__)

_SHARED = ("dtype", "device", "random_state")  # parameters handed down to the base protocol when it has them


def _base_class(name: str) -> type[BaseEstimator]:
    from lifebench.protocols import PROTOCOLS  # late: the registry imports this module

    if name == "openset":
        raise ConfigError("base='openset' would nest the open-set protocol in itself; use e.g. base='simpleshot'")
    return PROTOCOLS.get(name)


def ledoit_wolf_lda_covariance(
    X: torch.Tensor, codes: torch.Tensor, n_classes: int, shrinkage: str | float = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class means (C, D), class priors (C,) and the shared covariance (D, D), all float64.

    Equal to scikit-learn's ``LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage)`` ``means_``,
    ``priors_`` (class frequencies) and ``covariance_``. With ``shrinkage="auto"`` each class's covariance is
    Ledoit-Wolf shrunk in standardised units: with ``Z`` the class's standardised rows (constant features keep
    scale 1), ``E = Z'Z / n_k``, ``mu = trace(E) / D`` and the Ledoit-Wolf coefficient ``a``, the class term is
    ``s s' * ((1 - a) E + a mu I)``, which equals ``(1 - a) Xc'Xc / n_k + a mu diag(s^2)`` for the centred rows
    ``Xc``; so the weighted sum over classes is one product ``Xc' diag(w) Xc`` plus a diagonal. With a float
    ``shrinkage`` every class is shrunk by that amount in raw units (scikit-learn's ``shrunk_covariance``).
    """
    X = X.double()
    n, d = X.shape
    counts = torch.bincount(codes, minlength=n_classes).double()
    means = torch.zeros(n_classes, d, dtype=torch.float64, device=X.device).index_add_(0, codes, X)
    means /= counts[:, None]
    Xc = X - means[codes]
    priors = counts / n
    if not isinstance(shrinkage, str):  # fixed shrinkage in raw units: (1 - a) E_k + a trace(E_k)/D I per class
        a = float(shrinkage)
        cov = (1.0 - a) * (Xc.T @ Xc) / n
        cov.diagonal().add_(a * float((Xc * Xc).sum()) / n / d)
        return means, priors, cov
    eps = torch.finfo(torch.float64).eps
    row_weight = torch.empty(n, dtype=torch.float64, device=X.device)
    diag = torch.zeros(d, dtype=torch.float64, device=X.device)
    order = torch.argsort(codes, stable=True)
    start = 0
    for k, stop in enumerate(torch.cumsum(counts.long(), 0).tolist()):
        rows = order[start:stop]
        nk = stop - start
        start = stop
        Xk = Xc[rows]
        var = (Xk * Xk).mean(0)
        # scikit-learn's StandardScaler test for a constant feature, whose scale it sets to 1
        constant = var <= nk * eps * var + (nk * means[k] * eps) ** 2
        scale = torch.where(constant, torch.ones_like(var), var.sqrt())
        Zk = Xk / scale
        sq = Zk * Zk
        trace = float(sq.sum()) / nk  # trace of E = Z'Z / n_k
        mu = trace / d
        beta_ = float((sq.sum(1) ** 2).sum())  # sum of the entries of (Z^2)'(Z^2) = sum_i |z_i|^4
        gram = Zk @ Zk.T if nk < d else Zk.T @ Zk  # the same squared Frobenius norm either way
        delta_ = float((gram * gram).sum()) / nk**2
        a = 0.0
        if d > 1:
            beta = (beta_ / nk - delta_) / (d * nk)
            delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
            beta = min(beta, delta)
            a = 0.0 if beta == 0 else beta / delta
        row_weight[rows] = float(priors[k]) * (1.0 - a) / nk
        diag += (float(priors[k]) * a * mu) * scale**2
    cov = Xc.T @ (Xc * row_weight[:, None])
    cov.diagonal().add_(diag)
    return means, priors, cov


def _whitening(cov: torch.Tensor) -> torch.Tensor:
    """``W`` with ``W @ W.T`` the inverse of ``cov`` (its pseudo-inverse when ``cov`` is singular)."""
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:  # positive definite: W = L^-T, so |(x - m) W|^2 = (x - m)' cov^-1 (x - m)
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        return torch.linalg.solve_triangular(chol, eye, upper=False).T
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > float(evals.max()) * cov.shape[0] * torch.finfo(cov.dtype).eps
    logger.warning("open-set covariance is singular (%d of %d directions kept); using its pseudo-inverse",
                   int(keep.sum()), cov.shape[0])
    return evecs[:, keep] / evals[keep].sqrt()


class MahalanobisOpenSet(TorchClassifier):
    """A base protocol that says "unknown" for queries far from every class (Mahalanobis distance).

    ``fit`` fits the base protocol (``base``, a registered protocol name) on ``X, y``; estimates ``means_``
    (C, D) and the shared ``covariance_`` (D, D) on the raw features as scikit-learn's
    ``LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage, store_covariance=True)`` does; and sets
    ``threshold_`` to the ``quantile`` of the training examples' smallest squared Mahalanobis distance.
    ``predict`` returns ``unknown_label`` where a query's smallest squared distance is above ``threshold_``, else
    the base prediction; ``decision_function`` is the base protocol's (n, C) scores, for ranking the known
    classes. A singular covariance is inverted as a pseudo-inverse.

    Parameters
    ----------
    base : str
        Registered protocol fit for the known classes (default ``"simpleshot"``, as BioBench).
    quantile : float in (0, 1]
        Fraction of the training examples that the threshold keeps as known (BioBench: 0.95).
    shrinkage : "auto" or float in [0, 1]
        Covariance shrinkage: Ledoit-Wolf per class (``"auto"``, BioBench) or a fixed amount.
    unknown_label : int or str
        What ``predict`` returns for "none of the known classes" (-1, the code lifebench stores as unknown).
    base_params : dict or None
        Extra hyperparameters for the base protocol; ``dtype``, ``device`` and ``random_state`` are passed
        down to it anyway when it takes them.
    dtype : {"float32", "float64"}
        Precision of the distance computations (the covariance is always estimated in float64).
    device : str
        Torch device, e.g. ``"auto"``, ``"cpu"`` or ``"cuda"``.
    random_state : int or None
        Passed to the base protocol; the detector itself is deterministic.
    """

    def __init__(
        self,
        base: str = "simpleshot",
        quantile: float = 0.95,
        shrinkage: str | float = "auto",
        unknown_label: int | str = -1,
        base_params: dict[str, Any] | None = None,
        dtype: str = "float32",
        device: str = "auto",
        random_state: int | None = None,
    ) -> None:
        self.base = base
        self.quantile = quantile
        self.shrinkage = shrinkage
        self.unknown_label = unknown_label
        self.base_params = base_params
        self.dtype = dtype
        self.device = device
        self.random_state = random_state

    def _check_params(self) -> None:
        q = self.quantile
        if not isinstance(q, Real) or isinstance(q, bool) or not 0.0 < float(q) <= 1.0:
            raise ConfigError(f"quantile={q!r} must be a number in (0, 1], e.g. 0.95")
        s = self.shrinkage
        if isinstance(s, str):
            if s != "auto":
                raise ConfigError(f"shrinkage={s!r} is not supported; use 'auto' (Ledoit-Wolf) or a number in [0, 1]")
        elif not isinstance(s, Real) or isinstance(s, bool) or not 0.0 <= float(s) <= 1.0:
            raise ConfigError(f"shrinkage={s!r} must be 'auto' (Ledoit-Wolf) or a number in [0, 1]")
        if self.base_params is not None and not isinstance(self.base_params, dict):
            raise ConfigError(f"base_params={self.base_params!r} must be a dict of the base protocol's parameters")
        self._make_base()
        self._common_checks()

    def _make_base(self) -> BaseEstimator:
        cls = _base_class(self.base)
        names = cls._get_param_names()
        params = {k: getattr(self, k) for k in _SHARED if k in names}
        params.update(self.base_params or {})
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ConfigError(f"base protocol {self.base!r} has no parameter {unknown[0]!r} "
                              f"(valid parameters: {', '.join(sorted(names))})")
        est = cls(**params)
        if isinstance(est, TorchClassifier):
            est._check_params()
        return est

    def fit(self, X: Any, y: Any) -> MahalanobisOpenSet:
        """Fit the base protocol and the distance detector on features ``X`` (n, D) and labels ``y`` (n,)."""
        self._check_params()
        device, dtype = self._common_checks()
        Xt = as_features(X, dtype=torch.float64, device=device)
        classes, codes = encode_labels(y, Xt.shape[0])
        require_two_classes(classes)
        if np.any(classes == self.unknown_label):
            raise InputError(f"the training labels include unknown_label={self.unknown_label!r}; drop those rows "
                            "or choose another unknown_label")
        base = self._make_base().fit(X, y)

        codes_t = torch.as_tensor(codes, device=device)
        means, priors, cov = ledoit_wolf_lda_covariance(Xt, codes_t, len(classes), self.shrinkage)
        whiten = _whitening(cov)
        centre = Xt.mean(0)
        self._centre_t = centre.to(dtype)
        self._whiten_t = whiten.to(dtype)
        self._means_w_t = ((means - centre) @ whiten).to(dtype)

        self.classes_ = classes
        self.n_features_in_ = Xt.shape[1]
        self.dtype_ = dtype
        self.device_ = device
        self.base_ = base
        self.means_ = means.cpu().numpy()
        self.priors_ = priors.cpu().numpy()
        self.covariance_ = cov.cpu().numpy()
        train_d2 = self._min_d2(Xt.to(dtype)).cpu().numpy().astype(np.float64)
        self.threshold_ = float(np.quantile(train_d2, float(self.quantile)))
        self.train_unknown_fraction_ = float((train_d2 > self.threshold_).mean())
        return self

    def _d2_chunk(self, X: torch.Tensor) -> torch.Tensor:
        Y = (X - self._centre_t) @ self._whiten_t
        d2 = (Y * Y).sum(1, keepdim=True) - 2.0 * Y @ self._means_w_t.T + (self._means_w_t**2).sum(1)
        return d2.clamp_min_(0.0)

    def _min_d2(self, Xt: torch.Tensor) -> torch.Tensor:
        out = [self._d2_chunk(Xt[sl]).min(dim=1).values for sl in iter_row_chunks(Xt.shape[0], self._predict_chunk)]
        return torch.cat(out)

    def squared_mahalanobis(self, X: Any) -> np.ndarray:
        """Squared Mahalanobis distance of every row of ``X`` to every class mean, shape (n, n_classes)."""
        Xt = self._fitted_features(X)
        return torch.cat([self._d2_chunk(Xt[sl]) for sl in iter_row_chunks(Xt.shape[0], self._predict_chunk)]
                         ).cpu().numpy()

    def score_samples(self, X: Any) -> np.ndarray:
        """Minus the smallest squared Mahalanobis distance: higher means more like the known classes."""
        return -self._min_d2(self._fitted_features(X)).cpu().numpy()

    def is_unknown(self, X: Any) -> np.ndarray:
        """Boolean (n,): whether each row's smallest squared distance is above ``threshold_``."""
        return -self.score_samples(X) > self.threshold_

    def decision_function(self, X: Any) -> np.ndarray:
        """The base protocol's per-class scores, shape (n, n_classes), for ranking the known classes."""
        check_is_fitted(self)
        return np.asarray(self.base_.decision_function(X))

    def predict(self, X: Any) -> np.ndarray:
        """The base prediction, or ``unknown_label`` where the row is far from every class."""
        check_is_fitted(self)
        unknown = self.is_unknown(X)  # first: its input errors name this estimator, not the base
        pred = np.asarray(self.base_.predict(X))
        try:
            out = pred.astype(np.result_type(pred.dtype, np.asarray(self.unknown_label).dtype))
        except TypeError:
            out = pred.astype(object)
        if out.dtype.kind in "US":  # a fixed-width string array could truncate the unknown label
            out = out.astype(object)
        out[unknown] = self.unknown_label
        return out

    def _fit_info(self) -> dict[str, Any]:
        return {"base": self.base, "threshold": self.threshold_, "quantile": float(self.quantile),
                "train_unknown_fraction": self.train_unknown_fraction_}
