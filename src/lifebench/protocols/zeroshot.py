"""Zero-shot classification: cosine similarity of image embeddings to per-class text embeddings, and its
multiple-choice form (:func:`zero_shot_choices`: each question's own options, as for μ-Bench).

The class weights come from the backbone's text tower (:func:`lifebench.features.zero_shot_weights`: the mean
of the normalised embeddings of the class name in every prompt template); this estimator only scores. It is
"fit" without training images: :meth:`ZeroShot.fit` takes the weights, which fixes the classes.

Two choices follow BioCLIP (Imageomics/bioclip @ 4ea3247, ``src/evaluation/zero_shot_iid.py`` and ``data.py``):

* Logits are ``model.logit_scale.exp() * image @ W``: the model's own learned scale, not a fixed 100. The
  scale ranks nothing differently, but the scores stored with every prediction (the logits, and any softmax or
  calibration built on them) depend on it. A backbone without a learned scale gets 100, CLIP's.
* Classes are grouped by their text: ``DatasetFromFile`` makes one class per distinct string
  (``data['class'].unique()``) and labels each image with its string's index, so two species written the same
  way (Rare Species' common names "Yunnan Newt" and "staghorn coral" name two species each) are one class,
  and predicting the shared text is correct for an image of either. :meth:`ZeroShot.fit` keeps one weight row
  per distinct text (the first class of each carries it), and :meth:`ZeroShot.credit_shared_texts` turns a
  predicted shared text into the image's own class when that class is one of the text's, so accuracy is
  BioCLIP's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from lifebench.errors import ConfigError
from lifebench.protocols.base import InputError, TorchClassifier, as_features
from lifebench.tasks.taxonomy import TEXT_TYPES

__all__ = ["DEFAULT_LOGIT_SCALE", "ZeroShot", "zero_shot_choices"]

log = logging.getLogger(__name__)

DEFAULT_LOGIT_SCALE = 100.0
"""The scale of a backbone without a learned one: CLIP's, which its training clamps at 100."""


class ZeroShot(TorchClassifier):
    """Scores ``logit_scale * normalise(x) @ W.T`` for class weights ``W`` (C, D), rows normalised; a class
    whose text repeats an earlier class's scores ``-inf`` (see the module docstring).

    Parameters
    ----------
    text_type : str or None
        How class names are written: one of BioCLIP's text types (asis, sci, com, taxon, sci_com, taxon_com);
        read by the runner, which builds the names from the task's taxonomy. None: the task's own default.
    templates : str
        "bioclip" (the 81 templates: "a photo of {}." plus OpenAI's 80 ImageNet templates) or the path of a
        text file with one template per line.
    logit_scale : float or None
        Multiplies the cosine similarities; changes no ranking, only the confidences. None (default): the
        backbone's own learned scale (``logit_scale.exp()`` of an open_clip model, as BioCLIP scores), or 100
        for a backbone without one. The value used is in the fit info (``logit_scale``, ``logit_scale_source``).
    dtype, device, random_state
        As every protocol (``random_state`` is unused).
    """

    def __init__(self, text_type: str | None = None, templates: str = "bioclip", logit_scale: float | None = None,
                 dtype: str = "float32", device: str = "cpu", random_state: int | None = None) -> None:
        self.text_type = text_type
        self.templates = templates
        self.logit_scale = logit_scale
        self.dtype = dtype
        self.device = device
        self.random_state = random_state

    def _check_params(self) -> None:
        self._common_checks()
        if self.text_type is not None and self.text_type not in TEXT_TYPES:
            raise ConfigError(f"text_type {self.text_type!r} is not one of {', '.join(TEXT_TYPES)}")
        if self.logit_scale is not None and (isinstance(self.logit_scale, bool)
                                             or not isinstance(self.logit_scale, int | float) or self.logit_scale <= 0):
            raise ConfigError(f"logit_scale {self.logit_scale!r} must be a positive number, e.g. 100")

    def resolve_logit_scale(self, model_scale: float | None) -> tuple[float, str]:
        """``(scale, source)``: the ``logit_scale`` parameter when given ("param"), else the backbone's learned
        ``model_scale`` ("model"), else 100 ("default: the backbone has no learned scale")."""
        if self.logit_scale is not None:
            return float(self.logit_scale), "param"
        if model_scale is not None:
            return float(model_scale), "model"
        return DEFAULT_LOGIT_SCALE, "default: the backbone has no learned scale"

    def fit(self, weights: Any, y: Any = None, *, texts: Sequence[str] | None = None,
            model_logit_scale: float | None = None) -> ZeroShot:
        """Take the class weights ``(C, D)``, one row per class in the order of the class codes 0..C-1.

        ``y``: the class names of the rows (for logs and the fit info); ``texts``: the text each row was built
        from, to group classes that share one (BioCLIP's one class per string); ``model_logit_scale``: the
        backbone's learned scale, used unless the ``logit_scale`` parameter is set.
        """
        self._check_params()
        device, dtype = self._common_checks()
        W = as_features(weights, dtype=dtype, device=device)
        y_arr = np.asarray(y) if y is not None else np.arange(W.shape[0])
        if y_arr.ndim != 1:
            raise InputError(f"class names must be a 1-D array, got shape {y_arr.shape}; pass one name per row")
        names = [str(c) for c in y_arr.tolist()]
        if len(names) != W.shape[0] or (texts is not None and len(texts) != W.shape[0]):
            raise InputError(f"{W.shape[0]} weight rows but {len(names)} class names and "
                             f"{len(texts) if texts is not None else W.shape[0]} texts; pass one name and text per row")
        self._weights_t = torch.nn.functional.normalize(W, dim=1)
        self.classes_ = np.arange(W.shape[0])
        self.class_names_ = np.array(names, dtype=object)
        self.n_features_in_ = W.shape[1]
        self.dtype_, self.device_ = dtype, device
        self.logit_scale_, self.logit_scale_source_ = self.resolve_logit_scale(model_logit_scale)
        groups: dict[str, list[int]] = {}
        for code, text in enumerate(texts if texts is not None else names):
            groups.setdefault(text, []).append(code)
        self.shared_texts_ = {t: [names[c] for c in codes] for t, codes in groups.items() if len(codes) > 1}
        self._group_of = np.arange(W.shape[0])  # per class: the code of the first class with its text
        for codes in groups.values():
            self._group_of[codes] = codes[0]
        hidden = self._group_of != np.arange(W.shape[0])
        self._hidden_t = torch.as_tensor(hidden, device=device)
        if self.shared_texts_:
            log.warning("zero-shot: %d texts name several classes each and count as one class, as in BioCLIP (a "
                        "prediction of the text is correct for an image of any of them): %s", len(self.shared_texts_),
                        "; ".join(f"{t!r}: {', '.join(c)}" for t, c in list(self.shared_texts_.items())[:5]))
        return self

    def _scores(self, X: torch.Tensor) -> torch.Tensor:
        scores = self.logit_scale_ * torch.nn.functional.normalize(X, dim=1) @ self._weights_t.T
        return scores.masked_fill(self._hidden_t, float("-inf"))  # a repeated text is one class, not two

    def credit_shared_texts(self, y_true: np.ndarray, y_pred: np.ndarray, ranked: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Where the predicted (or a ranked) class stands for a text that the true class shares, name the true
        class instead: BioCLIP scores the text, which is right for an image of any class it names. Arrays of
        class names, as :func:`~lifebench.runner.run` stores them; returned unchanged when no text is shared."""
        if not self.shared_texts_:
            return y_pred, ranked
        code = {n: i for i, n in enumerate(self.class_names_.tolist())}
        head = {n: self.class_names_[self._group_of[i]] for n, i in code.items()}  # class -> its text's carrier
        y_true = np.asarray(y_true, dtype=object)
        true_head = np.array([head.get(t, t) for t in y_true.tolist()], dtype=object)
        hidden = {n for n, h in head.items() if n != h}  # scored -inf: ranked only when few classes are left
        ranked = np.where(np.isin(np.asarray(ranked, dtype=object), list(hidden)), "", ranked)
        y_pred = np.where(np.asarray(y_pred, dtype=object) == true_head, y_true, y_pred).astype(str)
        ranked = np.where(np.asarray(ranked, dtype=object) == true_head[:, None], y_true[:, None], ranked)
        return y_pred, ranked.astype(str)

    def _fit_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"logit_scale": self.logit_scale_, "logit_scale_source": self.logit_scale_source_}
        if self.shared_texts_:
            info["shared_texts"] = {t: list(c) for t, c in self.shared_texts_.items()}
        return info


def zero_shot_choices(questions: Sequence, rows: np.ndarray, X: np.ndarray,
                      embed: Callable[[list[str]], np.ndarray], logit_scale: float = DEFAULT_LOGIT_SCALE,
                      width: int = 5
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contrastive multiple choice: per row, the option whose caption is most similar to the image.

    ``questions[rows[k]]`` is the :class:`~lifebench.tasks.base.Question` of image embedding ``X[k]``; ``embed``
    maps caption strings to text-tower vectors (each distinct caption is embedded once). Returns the predicted
    options, the options ranked by similarity (``width`` columns, ``""`` padding) and the softmax probability of
    the prediction over its question's options (``logit_scale`` times the cosine similarities). Ties go to the
    earlier option.
    """
    qs = [questions[i] for i in np.asarray(rows).tolist()]
    texts = [tuple(q.captions) if q.captions is not None else tuple(q.options) for q in qs]
    unique = list(dict.fromkeys(t for ts in texts for t in ts))
    if not unique:
        return np.array([], dtype=str), np.zeros((0, width), dtype=str), np.array([], dtype=float)
    T = np.asarray(embed(unique), dtype=np.float64)
    T /= np.maximum(np.linalg.norm(T, axis=1, keepdims=True), 1e-12)
    Xn = np.asarray(X, dtype=np.float64)
    Xn = Xn / np.maximum(np.linalg.norm(Xn, axis=1, keepdims=True), 1e-12)
    col = {t: j for j, t in enumerate(unique)}
    pred = np.empty(len(qs), dtype=object)
    ranked = np.full((len(qs), width), "", dtype=object)
    conf = np.empty(len(qs), dtype=np.float64)
    for k, (q, ts) in enumerate(zip(qs, texts, strict=True)):
        sims = T[[col[t] for t in ts]] @ Xn[k]
        order = np.argsort(-sims, kind="stable")
        logits = logit_scale * (sims - sims.max())
        probs = np.exp(logits) / np.exp(logits).sum()
        pred[k] = q.options[order[0]]
        top = [q.options[j] for j in order[:width]]
        ranked[k, :len(top)] = top
        conf[k] = probs[order[0]]
    return pred.astype(str), ranked.astype(str), conf
