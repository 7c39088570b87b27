"""Shared pieces of the protocols: input checks, device and dtype resolution, label encoding, top-k.

Every protocol is a scikit-learn classifier on a feature matrix ``X`` (n, D) and labels ``y`` (n,).
Labels may be any sortable values (ints, strings); ``classes_`` is ``np.unique(y)`` and every score
matrix has one column per entry of ``classes_``, in that order.

Bad features, labels or weights raise :class:`InputError`: a :class:`~lifebench.errors.DataError`, so the CLI
prints it on one line, and a ``ValueError`` (:class:`InputTypeError`: a ``TypeError``), as scikit-learn's
estimator contract asks. Its messages carry the phrases scikit-learn's conformance checks look for ("Reshape
your data", "X has 3 features, but KNN is expecting 4", "Complex data not supported", ...) in one line, without
the array dumps of ``check_array``. tests/test_sklearn_checks.py runs scikit-learn's checks on every protocol.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.validation import check_is_fitted

from lifebench.device import resolve_device
from lifebench.errors import ConfigError, DataError

__all__ = [
    "InputError",
    "InputTypeError",
    "TorchClassifier",
    "as_features",
    "encode_labels",
    "iter_row_chunks",
    "require_two_classes",
    "resolve_device",
    "resolve_dtype",
    "top_k",
]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Return the torch dtype named by ``dtype`` ("float32" or "float64")."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ConfigError(f"dtype {dtype!r} is not supported; use 'float32' or 'float64'")


class InputError(DataError, ValueError):
    """Features, labels or weights that a protocol cannot use: one line in the CLI (a ``DataError``) and the
    ``ValueError`` that scikit-learn's estimator contract (and code written against it) expects."""


class InputTypeError(DataError, TypeError):
    """Features of a type that cannot be read as numbers (e.g. a dict in an object array); a ``TypeError`` as
    numpy's own conversion raises, and a ``DataError`` for the CLI."""


def as_features(
    X: Any, *, dtype: torch.dtype, device: torch.device, n_features: int | None = None, owner: str = "the protocol"
) -> torch.Tensor:
    """Check a feature matrix and return it as a 2-D float tensor of ``dtype`` on ``device``.

    Accepts numpy arrays (any float or int dtype, float16 included; object arrays of numbers), nested lists,
    pandas frames and torch tensors. The result may share memory with the input: callers must not modify it in
    place. ``owner`` (the estimator's class name) names who expected ``n_features`` columns.

    Raises:
        InputError: ``X`` is sparse, complex, not 2-D, empty, holds NaN/inf, or has the wrong number of columns.
        InputTypeError: an object array holds something that is not a number.
    """
    if sparse.issparse(X):
        raise InputError(f"features are a scipy sparse {X.format} matrix, and sparse input is not supported; "
                         "pass a dense array (X.toarray())")
    if isinstance(X, torch.Tensor):
        t = X.detach()
        if t.is_complex():
            raise InputError(f"features have dtype {t.dtype}: Complex data not supported; pass real features")
    else:
        arr = np.asarray(X)
        if arr.dtype == object:  # numbers held as Python objects (e.g. a mixed pandas frame): read them as floats
            try:
                arr = arr.astype(np.float64)
            except TypeError as exc:
                raise InputTypeError(f"features must be numbers: {exc}; pass a float matrix") from exc
            except ValueError as exc:
                raise InputError(f"features must be numbers: {exc}; pass a float matrix") from exc
        if np.iscomplexobj(arr):
            raise InputError(f"features have dtype {arr.dtype}: Complex data not supported; pass real features")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise InputError(
                f"features must be numeric, got an array of dtype {arr.dtype}; pass a float matrix"
            )
        if arr.dtype not in (np.float16, np.float32, np.float64):
            arr = arr.astype(np.float64)
        with warnings.catch_warnings():  # read-only input (a memory-mapped cache) is never written to here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim != 2:
        raise InputError(
            f"features must be a 2-D (n_examples, n_features) matrix, got shape {tuple(t.shape)}. Reshape your "
            "data: X.reshape(-1, 1) for a single feature, X.reshape(1, -1) for a single example"
        )
    for axis, what in ((0, "sample"), (1, "feature")):
        if t.shape[axis] == 0:
            raise InputError(f"features hold 0 {what}(s) (shape={tuple(t.shape)}) while a minimum of 1 is "
                             "required; pass a non-empty matrix")
    if n_features is not None and t.shape[1] != n_features:
        raise InputError(
            f"X has {t.shape[1]} features, but {owner} is expecting {n_features} features as input (it was "
            f"fitted on {n_features} columns); use features from the same backbone for fit and predict"
        )
    t = t.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise InputError("features contain NaN or infinite values; drop or repair those examples first")
    return t


def encode_labels(y: Any, n_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(classes, codes)`` with ``classes = np.unique(y)`` and ``classes[codes] == y``.

    A column vector (n, 1) is read as a 1-D array with a ``DataConversionWarning``, as scikit-learn does.

    Raises:
        InputError: ``y`` is None, not 1-D, does not match the number of examples, holds missing or infinite
            values, or holds continuous numbers (regression targets) rather than classes.
    """
    if y is None:
        raise InputError("fit requires y to be passed, but the target y is None; pass one label per example")
    y_arr = np.asarray(y)
    if y_arr.ndim == 2 and y_arr.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected; read as y.ravel()",
                      DataConversionWarning, stacklevel=3)
        y_arr = y_arr.ravel()
    if y_arr.ndim != 1:
        raise InputError(f"labels must be a 1-D array, got shape {y_arr.shape}; pass one label per example")
    if y_arr.shape[0] != n_examples:
        raise InputError(f"got {y_arr.shape[0]} labels for {n_examples} examples; pass one label per example")
    if y_arr.dtype.kind == "f":
        if not np.isfinite(y_arr).all():
            raise InputError("labels contain NaN or infinite values; drop the unlabelled examples first")
        fractional = y_arr != np.round(y_arr)
        if fractional.any():
            raise InputError(
                f"labels hold continuous values (e.g. {y_arr[fractional][0]!r}), not classes (Unknown label type: "
                "continuous); a classifier needs class labels such as ints or strings"
            )
    try:
        classes, codes = np.unique(y_arr, return_inverse=True)
    except TypeError as exc:
        raise InputError(f"labels must be mutually comparable (all ints or all strings): {exc}") from exc
    return classes, codes.astype(np.int64).reshape(-1)


def require_two_classes(classes: np.ndarray) -> None:
    """Raise :class:`InputError` unless the training labels hold at least two classes."""
    if len(classes) < 2:
        raise InputError(
            f"training labels hold only one class ({classes[0]!r}); a classifier needs at least two"
        )


def iter_row_chunks(n: int, chunk_size: int) -> Iterator[slice]:
    """Yield slices that cover ``range(n)`` in consecutive blocks of at most ``chunk_size`` rows."""
    assert chunk_size > 0
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def top_k(scores: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """Rank classes by score: an (n, min(k, C)) int array of column indices, best first.

    Equal scores are ranked by column index (lower first), so the ranking is deterministic.
    Map the codes back to labels with ``estimator.classes_[codes]``.
    """
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    if s.ndim != 2:
        raise DataError(f"scores must be an (n_examples, n_classes) matrix, got shape {s.shape}")
    if not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k={k!r} must be a positive integer")
    k = min(int(k), s.shape[1])
    order = np.argsort(-s, axis=1, kind="stable")
    return order[:, :k].astype(np.int64)


class TorchClassifier(ClassifierMixin, BaseEstimator):
    """Common base of the protocols: prediction from ``decision_function`` and parameter checks.

    Subclasses implement ``fit``, ``_scores(X_tensor) -> torch.Tensor`` (n, C) and ``_check_params``,
    and may override ``_fit_info``.
    """

    #: rows sent to the device at a time when scoring
    _predict_chunk = 8192

    def _check_params(self) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def _common_checks(self) -> tuple[torch.device, torch.dtype]:
        return resolve_device(self.device), resolve_dtype(self.dtype)

    def _fitted_features(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        return as_features(X, dtype=self.dtype_, device=self.device_, n_features=self.n_features_in_,
                           owner=type(self).__name__)

    def _scores(self, X: torch.Tensor) -> torch.Tensor:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def _all_scores(self, X: Any) -> torch.Tensor:
        Xt = self._fitted_features(X)
        out = [self._scores(Xt[sl]) for sl in iter_row_chunks(Xt.shape[0], self._predict_chunk)]
        return torch.cat(out, dim=0)

    def decision_function(self, X: Any) -> np.ndarray:
        """Per-class scores, shape (n, n_classes); higher means more likely."""
        return self._all_scores(X).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (values of ``classes_``), shape (n,)."""
        codes = self._all_scores(X).argmax(dim=1).cpu().numpy()
        return self.classes_[codes]

    def _fit_info(self) -> dict[str, Any]:
        return {}
