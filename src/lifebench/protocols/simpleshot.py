"""SimpleShot (Wang et al. 2019, "CL2N"): centre, L2-normalise, then nearest class centroid; and BioCLIP's
few-shot classifier, which L2-normalises every feature first.

Why two: BioCLIP (Imageomics/bioclip @ 4ea3247, ``src/evaluation/few_shot.py``) normalises the image features as
it extracts them (``F.normalize(image_features, dim=-1)`` in ``run``), and only then applies ``CL2N`` (centre on
the support mean, normalise) in ``get_acc``. The support mean of unit vectors differs from the mean of the raw
features, so wherever feature norms vary the two classifiers disagree; ``few-shot`` reproduces BioCLIP's
numbers, ``simpleshot`` stays the classifier of BioBench's probes (KABR, MammalNet, FungiCLEF).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils import Tags, TransformerTags

from lifebench.protocols.base import TorchClassifier, as_features, encode_labels, require_two_classes

__all__ = ["BioCLIPFewShot", "SimpleShot"]


class SimpleShot(TransformerMixin, TorchClassifier):
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

    #: L2-normalise every feature before centring (BioCLIP's few-shot); plain SimpleShot does not.
    _unit_first = False

    def __sklearn_tags__(self) -> Tags:
        # A classifier that also transforms (``transform`` gives the space the centroids live in; TransformerMixin
        # adds ``fit_transform``). The output dtype is the ``dtype`` parameter's, so only that input dtype comes
        # back unchanged.
        tags = super().__sklearn_tags__()
        tags.transformer_tags = TransformerTags(preserves_dtype=[str(self.dtype)])
        return tags

    def transform(self, X: Any) -> np.ndarray:
        """The centred, L2-normalised features ``z`` that the centroids live in."""
        return self._normalise(self._prepare(self._fitted_features(X))).cpu().numpy()

    def _prepare(self, X: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(X, dim=1) if self._unit_first else X

    def _normalise(self, X: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(X - self._mean_t, dim=1)

    def fit(self, X: Any, y: Any) -> SimpleShot:
        """Fit on features ``X`` (n, D) and labels ``y`` (n,)."""
        self._check_params()
        device, dtype = self._common_checks()
        Xt = as_features(X, dtype=dtype, device=device)
        classes, codes = encode_labels(y, Xt.shape[0])
        Xt = self._prepare(Xt)
        require_two_classes(classes)
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
        return -torch.cdist(self._normalise(self._prepare(X)), self._centroids_t)


class BioCLIPFewShot(SimpleShot):
    """BioCLIP's few-shot classifier: L2-normalise each feature, then SimpleShot's CL2N nearest centroid.

    The order is BioCLIP's (``few_shot.py`` @ 4ea3247): unit-normalise every image feature (``run``), take the
    mean of the normalised support features, subtract it from support and queries and normalise again
    (``CL2N``), average each class's support vectors into a centroid without re-normalising it, and predict the
    class whose centroid is nearest in Euclidean distance (``LA.norm(train_center[:, None] - test)``, 1-NN).
    ``mean_`` is therefore the mean of unit vectors. Exact distance ties (which need duplicated support images)
    go to the first class in sorted order here; BioCLIP's ``np.argpartition`` leaves them unspecified.

    Parameters are SimpleShot's.
    """
    _unit_first = True
