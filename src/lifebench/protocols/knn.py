"""k-nearest-neighbour classifier, brute force in torch over query chunks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from lifebench.errors import ConfigError
from lifebench.protocols.base import InputError, TorchClassifier, as_features, encode_labels, iter_row_chunks

__all__ = ["KNN"]

_METRICS = ("cosine", "euclidean")
_WEIGHTS = ("uniform", "distance")


class KNN(TorchClassifier):
    """k-nearest-neighbour vote over the training features.

    Each query's ``n_neighbors`` nearest training examples vote for their class, with weight 1
    (``weights="uniform"``) or 1/distance (``"distance"``; neighbours at distance 0, if any, take all the
    weight, as in scikit-learn). ``predict`` returns the class with the most votes; equal votes go to the class
    of the nearer neighbour. ``decision_function`` and ``predict_proba`` return each class's share of the votes,
    so under a tie ``predict`` may differ from the arg-max of the shares (which takes the first class).

    Parameters
    ----------
    n_neighbors : int
        Neighbours per query.
    metric : {"cosine", "euclidean"}
        Cosine distance is ``1 - cos(a, b)``.
    weights : {"uniform", "distance"}
    batch_size : int
        Queries compared with all training examples at once (memory: batch_size x n_train distances).
    dtype : {"float32", "float64"}
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    random_state : int or None
        Unused (kNN is deterministic); accepted so every protocol takes the same seed argument.
    """

    def __init__(
        self,
        n_neighbors: int = 5,
        metric: str = "cosine",
        weights: str = "uniform",
        batch_size: int = 1024,
        dtype: str = "float32",
        device: str = "cpu",
        random_state: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.weights = weights
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device
        self.random_state = random_state

    def _check_params(self) -> None:
        for name in ("n_neighbors", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.metric not in _METRICS:
            raise ConfigError(f"metric={self.metric!r} is not supported; use one of {_METRICS}")
        if self.weights not in _WEIGHTS:
            raise ConfigError(f"weights={self.weights!r} is not supported; use one of {_WEIGHTS}")
        self._common_checks()

    def fit(self, X: Any, y: Any) -> KNN:
        """Store the training features ``X`` (n, D) and labels ``y`` (n,)."""
        self._check_params()
        device, dtype = self._common_checks()
        Xt = as_features(X, dtype=dtype, device=device)
        classes, codes = encode_labels(y, Xt.shape[0])
        if self.n_neighbors > Xt.shape[0]:
            raise InputError(
                f"n_neighbors={self.n_neighbors} is more than the {Xt.shape[0]} training examples (n_samples = "
                f"{Xt.shape[0]}); lower n_neighbors or fit on more examples"
            )
        if self.metric == "cosine":
            self._fit_X = torch.nn.functional.normalize(Xt, dim=1)
        else:
            self._fit_X = Xt.clone()
            self._fit_sqnorm = (self._fit_X**2).sum(1)
        self._fit_y = torch.as_tensor(codes, device=device)
        self.classes_ = classes
        self.n_features_in_ = Xt.shape[1]
        self.n_samples_fit_ = Xt.shape[0]
        self.dtype_ = dtype
        self.device_ = device
        return self

    # ------------------------------------------------------------------ neighbours

    def _neighbours(self, Q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances and indices of the ``k`` nearest training examples, nearest first."""
        if self.metric == "cosine":
            sim = torch.nn.functional.normalize(Q, dim=1) @ self._fit_X.T
            top_sim, idx = sim.topk(k, dim=1, largest=True, sorted=True)
            return (1 - top_sim).clamp_(0, 2), idx
        # ranking by |t|^2 - 2 q.t is the squared distance minus a per-query constant;
        # the chosen distances are then recomputed exactly and re-sorted
        proxy = self._fit_sqnorm[None, :] - 2 * (Q @ self._fit_X.T)
        _, idx = proxy.topk(k, dim=1, largest=False, sorted=True)
        dist = (Q[:, None, :] - self._fit_X[idx]).norm(dim=2)
        dist, order = dist.sort(dim=1, stable=True)
        return dist, idx.gather(1, order)

    def kneighbors(self, X: Any, n_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Distances and training-set indices of each query's nearest neighbours, each (n, k), nearest first."""
        check_is_fitted(self)
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        if not isinstance(k, int | np.integer) or k < 1 or k > self.n_samples_fit_:
            raise ConfigError(f"n_neighbors={k!r} must be an integer between 1 and {self.n_samples_fit_}")
        Qt = self._fitted_features(X)
        dists, idxs = [], []
        for sl in iter_row_chunks(Qt.shape[0], self.batch_size):
            d, i = self._neighbours(Qt[sl], int(k))
            dists.append(d.cpu())
            idxs.append(i.cpu())
        return torch.cat(dists).numpy(), torch.cat(idxs).numpy()

    # ------------------------------------------------------------------ votes

    def _votes(self, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class vote totals (n, C) and the rank of each class's nearest neighbour (k where absent)."""
        k = self.n_neighbors
        dist, idx = self._neighbours(Q, k)
        labels = self._fit_y[idx]
        if self.weights == "uniform":
            w = torch.ones_like(dist)
        else:
            zero = dist == 0
            w = torch.where(zero.any(dim=1, keepdim=True), zero.to(dist.dtype), 1 / dist)
        n, c = Q.shape[0], len(self.classes_)
        votes = torch.zeros(n, c, dtype=dist.dtype, device=dist.device).scatter_add_(1, labels, w)
        ranks = torch.arange(k, device=dist.device).expand(n, k)
        first = torch.full((n, c), k, dtype=torch.long, device=dist.device)
        first.scatter_reduce_(1, labels, ranks, reduce="amin")
        return votes, first

    def _scores(self, X: torch.Tensor) -> torch.Tensor:
        out = []
        for sl in iter_row_chunks(X.shape[0], self.batch_size):
            votes, _ = self._votes(X[sl])
            out.append(votes / votes.sum(dim=1, keepdim=True))
        return torch.cat(out)

    def predict(self, X: Any) -> np.ndarray:
        """Majority class among the neighbours; equal votes go to the class of the nearer neighbour."""
        Qt = self._fitted_features(X)
        codes = []
        for sl in iter_row_chunks(Qt.shape[0], self.batch_size):
            votes, first = self._votes(Qt[sl])
            top = votes.max(dim=1, keepdim=True).values
            tied = votes >= top * (1 - 8 * torch.finfo(votes.dtype).eps)
            key = torch.where(tied, first, torch.full_like(first, self.n_neighbors + 1))
            codes.append(key.argmin(dim=1).cpu())
        return self.classes_[torch.cat(codes).numpy()]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Vote shares, shape (n, n_classes); the same as ``decision_function``."""
        return self.decision_function(X)
