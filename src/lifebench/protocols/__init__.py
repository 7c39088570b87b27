"""Protocols: scikit-learn classifiers fit on frozen features (logistic probe, SimpleShot, kNN).

Build one by name with :func:`make_protocol`; record what fitting chose with :func:`fit_info`.
"""

from __future__ import annotations

import difflib
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from lifebench.errors import ConfigError
from lifebench.protocols.base import TorchClassifier, top_k
from lifebench.protocols.knn import KNN
from lifebench.protocols.logreg import LogisticProbe
from lifebench.protocols.openset import MahalanobisOpenSet
from lifebench.protocols.reid import ReID
from lifebench.protocols.simpleshot import BioCLIPFewShot, SimpleShot
from lifebench.protocols.zeroshot import ZeroShot
from lifebench.registry import Registry

__all__ = [
    "KNN",
    "BioCLIPFewShot",
    "PROTOCOLS",
    "LogisticProbe",
    "MahalanobisOpenSet",
    "ReID",
    "SimpleShot",
    "TorchClassifier",
    "ZeroShot",
    "fit_info",
    "make_protocol",
    "top_k",
]

PROTOCOLS: Registry[type[BaseEstimator]] = Registry("protocol")
PROTOCOLS.register(
    "logreg",
    LogisticProbe,
    help="L2 logistic regression (L-BFGS, full batch), C chosen on a held-out part of train",
)
PROTOCOLS.register("simpleshot", SimpleShot, help="SimpleShot: centre, L2-normalise, nearest class centroid")
PROTOCOLS.register("knn", KNN, help="k-nearest-neighbour vote (cosine or Euclidean), brute force")
PROTOCOLS.register(
    "openset",
    MahalanobisOpenSet,
    help="open set: a base protocol (SimpleShot) plus 'unknown' beyond the 95% train Mahalanobis distance",
)
PROTOCOLS.register("zero-shot", ZeroShot,
                   help="zero-shot: cosine similarity to class-name prompts through the text tower (CLIP, BioCLIP)")
PROTOCOLS.register("few-shot", BioCLIPFewShot,
                   help="BioCLIP's few-shot classifier (L2-normalise, then SimpleShot's CL2N nearest centroid); "
                        "pair with --shots 1,5")
PROTOCOLS.register("reid", ReID, help="re-identification: leave-one-out k-NN vote (k=5, cosine), rank-1/5 and mAP")


def make_protocol(name: str, **params: Any) -> BaseEstimator:
    """Build the protocol registered as ``name`` with hyperparameters ``params``, checking them now.

    Raises:
        UnknownNameError: ``name`` is not registered.
        ConfigError: a parameter is unknown to the protocol or has a bad value.
    """
    cls = PROTOCOLS.get(name)
    valid = sorted(cls._get_param_names())
    for key in params:
        if key not in valid:
            by_lower = {v.lower(): v for v in valid}
            close = difflib.get_close_matches(key.lower(), list(by_lower), n=1)
            hint = f"; did you mean {by_lower[close[0]]!r}?" if close else ""
            raise ConfigError(
                f"protocol {name!r} has no parameter {key!r}{hint} (valid parameters: {', '.join(valid)})"
            )
    estimator = cls(**params)
    if isinstance(estimator, TorchClassifier):
        estimator._check_params()
    return estimator


def fit_info(estimator: BaseEstimator) -> dict[str, Any]:
    """What fitting chose, as a JSON-able dict for the results store (e.g. ``{"C": 0.1, "n_iter": 57, ...}``).

    Empty for protocols that choose nothing (SimpleShot, kNN) and for estimators that are not lifebench protocols.
    """
    check_is_fitted(estimator)
    if isinstance(estimator, TorchClassifier):
        return estimator._fit_info()
    return {}
