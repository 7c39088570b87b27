"""SimpleShot (Wang et al. 2019, "CL2N"): centre, L2-normalise, then nearest class centroid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lifebench.errors import DataError
from lifebench.protocols.base import TorchClassifier, as_features, encode_labels

__all__ = ["SimpleShot"]


class SimpleShot(TorchClassifier):
    """Nearest-centroid classifier on centred, L2-normalised features.

    ``fit`` stores the train mean ``mean_`` and, per class, the mean of ``z = normalise(x - mean_)``
    (``centroids_``, not re-normalised). ``predict`` returns the class of the nearest centroid in Euclidean
    distance; ``decision_function`` is minus that distance. A vector equal to ``mean_`` normalises to zero.

    Parameters
    ----------
    dtype : {"float32", "float64"}
        Precision of the computation.
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    random_state : int or None
        Unused (SimpleShot is deterministic); accepted so every protocol takes the same seed argument.
    """

    def __init__(self, dtype: str = "float32", device: str = "cpu", random_state: int | None = None) -> None:
        self.dtype = dtype
        self.device = device
        self.random_state = random_state

    def _check_params(self) -> None:
        self._common_checks()

    def transform(self, X: Any) -> np.ndarray:
        """The centred, L2-normalised features ``z`` that the centroids live in."""
        return self._normalise(self._fitted_features(X)).cpu().numpy()

    def _normalise(self, X: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(X - self._mean_t, dim=1)

    def fit(self, X: Any, y: Any) -> SimpleShot:
        """Fit on features ``X`` (n, D) and labels ``y`` (n,)."""
        self._check_params()
        device, dtype = self._common_checks()
        Xt = as_features(X, dtype=dtype, device=device)
        classes, codes = encode_labels(y, Xt.shape[0])
        if len(classes) < 2:
            raise DataError(
                f"training labels hold only the class {classes[0]!r}; a classifier needs at least two"
            )
        self._mean_t = Xt.mean(0, dtype=torch.float64).to(dtype)
        Z = self._normalise(Xt)
        codes_t = torch.as_tensor(codes, device=device)
        sums = torch.zeros(len(classes), Xt.shape[1], dtype=torch.float64, device=device)
        sums.index_add_(0, codes_t, Z.double())
        counts = torch.bincount(codes_t, minlength=len(classes)).double()
        self._centroids_t = (sums / counts[:, None]).to(dtype)

        self.classes_ = classes
        self.n_features_in_ = Xt.shape[1]
        self.dtype_ = dtype
        self.device_ = device
        self.mean_ = self._mean_t.cpu().numpy()
        self.centroids_ = self._centroids_t.cpu().numpy()
        return self

    def _scores(self, X: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(self._normalise(X), self._centroids_t)
