"""The Poisson–Gaussian noise model (PN2V's placeholder) and its fit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .base import _LOG_2PI, NoiseModel, _buffer, _pair, _pairs_1d, _require


class GaussianNoiseModel(NoiseModel):
    """``p(x|s) = N(x; s, max(a + b s, min_variance))``.

    Buffers: ``coeffs`` (2,) = (a, b) (read-noise variance, gain); ``min_variance`` ();
    ``signal_range`` (2,); ``x_range`` (2,). The defaults (a = 1, b = 0, unbounded ranges)
    are PN2V's placeholder before a measured model is loaded.
    """

    kind = "gaussian"

    def __init__(self, coeffs: Any = (1.0, 0.0), min_variance: float = 1e-6,
                 signal_range: Any = (-math.inf, math.inf), x_range: Any = (-math.inf, math.inf)) -> None:
        super().__init__()
        self.register_buffer("coeffs", _buffer(coeffs))
        self.register_buffer("min_variance", _buffer(min_variance))
        self.register_buffer("signal_range", _buffer(signal_range))
        self.register_buffer("x_range", _buffer(x_range))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> GaussianNoiseModel:
        _require(tensors, ("coeffs", "min_variance", "signal_range", "x_range"), cls.kind)
        return cls(tensors["coeffs"].numpy(), float(tensors["min_variance"]), tensors["signal_range"].numpy(),
                   tensors["x_range"].numpy())

    def header(self) -> dict[str, Any]:
        a, b = _pair(self.coeffs)
        return {**super().header(), "read_variance": a, "gain": b}

    def log_likelihood(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x, s = x.float(), s.float()
            var = (self.coeffs[0] + self.coeffs[1] * s).clamp_min(self.min_variance)
            return -0.5 * (_LOG_2PI + var.log() + (x - s) ** 2 / var)


def fit_gaussian(signal: np.ndarray, noisy: np.ndarray) -> GaussianNoiseModel:
    """Poisson–Gaussian fit: non-negative least squares of ``(x - s)^2`` on ``(1, s)``
    (``a, b >= 0``); variance floor 1e-6 of the mean squared residual."""
    s, x = _pairs_1d(signal, noisy)
    r = (x - s) ** 2
    mean_var = float(np.mean(r)) or 1.0
    design = np.stack([np.ones_like(s), s], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    candidates = [(float(a), float(b))] if a >= 0 and b >= 0 else []
    candidates += [(mean_var, 0.0), (0.0, max(float(s @ r / max(s @ s, 1e-300)), 0.0))]
    a, b = min(candidates, key=lambda ab: float(np.sum((r - ab[0] - ab[1] * s) ** 2)))
    return GaussianNoiseModel((a, b), 1e-6 * mean_var, (float(s.min()), float(s.max())),
                              (float(x.min()), float(x.max())))
