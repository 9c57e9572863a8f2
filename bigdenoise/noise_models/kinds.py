"""The registry of noise model kinds and :func:`fit`, which fits one of a kind by name."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .base import NoiseModel
from .gaussian import GaussianNoiseModel, fit_gaussian
from .gmm import GaussianMixtureNoiseModel, fit_gmm
from .histogram import HistogramNoiseModel, fit_histogram

KINDS: dict[str, type[NoiseModel]] = {
    HistogramNoiseModel.kind: HistogramNoiseModel,
    GaussianMixtureNoiseModel.kind: GaussianMixtureNoiseModel,
    GaussianNoiseModel.kind: GaussianNoiseModel,
}


def fit(signal: np.ndarray, noisy: np.ndarray, kind: str = "histogram", *, bins: int = 256, gaussians: int = 3,
        degree: int = 1, steps: int = 1000, seed: int = 0) -> NoiseModel:
    """Fit a noise model of ``kind`` (``histogram``, ``gmm`` or ``gaussian``) to paired values."""
    if kind == "histogram":
        return fit_histogram(signal, noisy, bins)
    if kind == "gmm":
        return fit_gmm(signal, noisy, gaussians=gaussians, degree=degree, steps=steps, seed=seed)
    if kind == "gaussian":
        return fit_gaussian(signal, noisy)
    raise ConfigError(f"unknown noise model kind {kind!r}; choose one of {', '.join(KINDS)}")
