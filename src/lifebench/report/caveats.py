"""Warnings that travel with a score when its test set is too small to trust it.

A leaderboard cell such as ``1.000 [1.000, 1.000]*`` on 15 test images looks certain and is not: every resample of
15 right answers is again 15 right answers, so the bootstrap has no variation to show. These checks are the one
place that decides when a number needs a warning; :func:`~lifebench.report.leaderboard.build_leaderboard` runs them
on every cell, logs them, stores them in ``leaderboard.json`` / ``.csv`` (the ``warnings`` of each cell) and the
text and Markdown tables print them under the legend.

Thresholds, and why
-------------------
* :data:`SMALL_TEST_SET` = 100 test images. Below it one image moves accuracy by more than a point, and a 95%
  interval of an accuracy near 0.8 is wider than +-0.08 (binomial), so two models rarely separate. It is also where
  the rule of three (0 errors in n leaves error rates up to 3/n plausible) passes 3%.
* :data:`FEW_PER_CLASS` = 5 test images of a class. With fewer, that class's recall moves in steps of at least
  0.2 per image, and a macro average gives the class the same weight as a class of hundreds; resamples that miss
  the class change which classes are averaged.
* A zero-width interval (``high - low`` below 1e-12): every resample scored the same, usually because every test
  image (or none) was right. That is a bootstrap artefact, never certainty.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FEW_PER_CLASS", "SMALL_TEST_SET", "sample_warnings"]

SMALL_TEST_SET = 100
"""Test sets with fewer images (resampled units) than this get a warning."""
FEW_PER_CLASS = 5
"""Classes with fewer test images than this (but at least one) get a warning."""
_ZERO_WIDTH = 1e-12


def sample_warnings(
    n_test: int,
    class_counts: np.ndarray | None = None,
    interval: tuple[float, float] | None = None,
) -> list[str]:
    """The warnings for one score: ``n_test`` resampled test units, the number of test images of each class
    (None when the metric is not per class, e.g. re-identification), and the interval ``(low, high)``.

    Returns short sentences, empty when nothing is wrong.
    """
    out = []
    if n_test < SMALL_TEST_SET:
        step = 100 / n_test if n_test else math.inf
        out.append(f"small test set: {n_test} images (fewer than {SMALL_TEST_SET}); one image moves accuracy by "
                   f"{step:.1f} points, so scores, intervals and ties are rough")
    if class_counts is not None:
        counts = np.asarray(class_counts)
        counts = counts[counts > 0]
        few = counts[counts < FEW_PER_CLASS]
        if few.size:
            out.append(f"{few.size} of {counts.size} test classes have fewer than {FEW_PER_CLASS} test images "
                       f"(the smallest {int(few.min())}); their per-class scores are noisy")
    if interval is not None:
        low, high = interval
        if math.isfinite(low) and math.isfinite(high) and high - low < _ZERO_WIDTH:
            rule = f"; with {n_test} test images the true value may still be {3 / n_test:.3f} away (95%, rule of " \
                "three)" if n_test else ""
            out.append("zero-width interval: every bootstrap resample scored the same (e.g. every test image "
                       f"right), which shows no uncertainty, not certainty{rule}")
    return out
