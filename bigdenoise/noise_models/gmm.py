"""The signal-dependent gaussian mixture noise model (Prakash et al. 2020) and its fit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, InputError
from .base import _LOG_2PI, NoiseModel, _buffer, _pairs_1d, _require


class GaussianMixtureNoiseModel(NoiseModel):
    """Signal-dependent gaussian mixture (Prakash et al. 2020).

    Buffers: ``weight`` (3K, D+1): polynomial coefficients in ``u`` of, per gaussian, the mean
    offset (rows 0..K-1, in units of ``scale``), the log of the variance coefficients (rows
    K..2K-1; variance = ``scale**2 * sum_i exp(w_i) u**i``) and the log-weight (rows 2K..3K-1);
    ``scale`` (): a noise scale of the calibration data; ``min_variance`` (); ``signal_range``
    (2,); ``x_range`` (2,). For ``s`` outside ``signal_range`` the polynomials are evaluated at
    the range's nearer end (the mixture's shape there, centred on ``s``).
    """

    kind = "gmm"

    def __init__(self, weight: torch.Tensor, scale: float, min_variance: float, signal_range: Any,
                 x_range: Any) -> None:
        super().__init__()
        weight = torch.as_tensor(weight, dtype=torch.float32)
        if weight.ndim != 2 or weight.shape[0] % 3 or weight.shape[0] == 0:
            raise ValueError(f"weight must have shape (3K, D+1), got {tuple(weight.shape)}")
        self.register_buffer("weight", weight)
        self.register_buffer("scale", _buffer(scale))
        self.register_buffer("min_variance", _buffer(min_variance))
        self.register_buffer("signal_range", _buffer(signal_range))
        self.register_buffer("x_range", _buffer(x_range))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> GaussianMixtureNoiseModel:
        _require(tensors, ("weight", "scale", "min_variance", "signal_range", "x_range"), cls.kind)
        return cls(tensors["weight"], float(tensors["scale"]), float(tensors["min_variance"]),
                   tensors["signal_range"].numpy(), tensors["x_range"].numpy())

    @property
    def gaussians(self) -> int:
        return self.weight.shape[0] // 3

    @property
    def degree(self) -> int:
        return self.weight.shape[1] - 1

    def header(self) -> dict[str, Any]:
        return {**super().header(), "gaussians": self.gaussians, "degree": self.degree,
                "scale": float(self.scale), "min_variance": float(self.min_variance)}

    def log_likelihood(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return _gmm_log_likelihood(self.weight, x.float(), s.float(), self.signal_range, self.scale,
                                       self.min_variance)


def _poly(coeffs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """sum_i coeffs[i] * u**i (Horner), shaped like ``u``."""
    out = torch.zeros_like(u) + coeffs[-1]
    for c in coeffs.flip(0)[1:]:
        out = out * u + c
    return out


def _gmm_log_likelihood(weight: torch.Tensor, x: torch.Tensor, s: torch.Tensor, signal_range: torch.Tensor,
                        scale: torch.Tensor, min_variance: torch.Tensor) -> torch.Tensor:
    """ln p(x|s) of the mixture; one gaussian at a time, so memory stays a few arrays of ``s``'s size.

    The polynomials are evaluated at ``u`` clamped to [0, 1] (the calibrated signal range).
    """
    x, s = torch.broadcast_tensors(x, s)
    k = weight.shape[0] // 3
    u = ((s - signal_range[0]) / (signal_range[1] - signal_range[0])).clamp(0, 1)
    offsets = [_poly(weight[i], u) for i in range(k)]
    variances = [(_poly(weight[k + i].exp(), u) * scale**2).clamp_min(min_variance) for i in range(k)]
    logits = torch.stack([_poly(weight[2 * k + i], u) for i in range(k)])
    log_alpha = torch.log_softmax(logits, dim=0)
    alpha = log_alpha.exp()
    shift = sum(alpha[i] * offsets[i] for i in range(k))
    terms = torch.stack([
        log_alpha[i] - 0.5 * (_LOG_2PI + variances[i].log())
        - 0.5 * (x - s - scale * (offsets[i] - shift)) ** 2 / variances[i]
        for i in range(k)
    ])
    return torch.logsumexp(terms, dim=0)


def fit_gmm(signal: np.ndarray, noisy: np.ndarray, *, gaussians: int = 3, degree: int = 1, steps: int = 1000,
            batch: int = 16_384, lr: float = 0.05, seed: int = 0) -> GaussianMixtureNoiseModel:
    """Fit a :class:`GaussianMixtureNoiseModel` to paired values by maximum likelihood (Adam).

    Parameters
    ----------
    signal, noisy : arrays of one shape, raw units
    gaussians, degree : K and D (Prakash et al. use K = 3 gaussians with linear coefficients)
    steps, batch, lr : Adam steps on random mini-batches of pairs; ``seed`` fixes them.
    """
    s, x = _pairs_1d(signal, noisy)
    if gaussians < 1 or degree < 0:
        raise ConfigError(f"a gmm noise model needs >= 1 gaussian and degree >= 0, got {gaussians}, {degree}")
    s_range = (float(s.min()), float(s.max()))
    if not s_range[1] > s_range[0]:
        raise InputError(f"the signal calibration values are all {s_range[0]}: a noise model needs a range")
    scale = float(np.std(x - s)) or 1.0
    min_variance = (1e-3 * scale) ** 2
    k = gaussians
    init = torch.zeros(3 * k, degree + 1)
    init[:k, 0] = torch.linspace(-0.5, 0.5, k) if k > 1 else 0.0
    init[k:2 * k] = math.log(0.5)
    w = nn.Parameter(init)
    opt = torch.optim.Adam([w], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    st, xt = torch.from_numpy(s.astype(np.float32)), torch.from_numpy(x.astype(np.float32))
    rng_t, scale_t, minv_t = _buffer(s_range), _buffer(scale), _buffer(min_variance)
    for _ in range(steps):
        idx = torch.randint(len(st), (min(batch, len(st)),), generator=generator) if len(st) > batch else slice(None)
        loss = -_gmm_log_likelihood(w, xt[idx], st[idx], rng_t, scale_t, minv_t).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return GaussianMixtureNoiseModel(w.detach().clone(), scale, min_variance, s_range,
                                     (float(x.min()), float(x.max())))
