"""The :class:`NoiseModel` base class and helpers shared by every kind of noise model."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import InputError, ModelError

_LOG_2PI = math.log(2 * math.pi)


def _buffer(values: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


class NoiseModel(nn.Module):
    """Base class: ``log_likelihood(x, s)`` in raw units, broadcasting ``x`` against ``s``.

    Buffers common to every kind: ``signal_range`` (2,) and ``x_range`` (2,), the ranges of
    the calibration signal and noisy values (used to check that data fit the model).
    """

    kind: ClassVar[str] = ""

    def log_likelihood(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``ln p(x | s)`` (float32, shape of ``x`` and ``s`` broadcast), differentiable in ``s``."""
        raise NotImplementedError

    def header(self) -> dict[str, Any]:
        """JSON description of the model (kind, sizes, ranges)."""
        return {"kind": self.kind, "signal_range": _pair(self.signal_range), "x_range": _pair(self.x_range)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> NoiseModel:
        """A model of this kind holding ``tensors`` (its state dict); shapes come from them."""
        raise NotImplementedError


def _pair(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().cpu().tolist()]


def _require(tensors: dict[str, torch.Tensor], names: tuple[str, ...], kind: str) -> None:
    missing = [n for n in names if n not in tensors]
    extra = [n for n in tensors if n not in names]
    if missing or extra:
        raise ModelError(f"{kind} noise model tensors do not match: missing {missing}, unexpected {extra}")


def _pairs_1d(signal: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(signal, dtype=np.float64).ravel()
    x = np.asarray(noisy, dtype=np.float64).ravel()
    if s.shape != x.shape:
        raise InputError(f"signal and noisy values must pair up, got {s.size} and {x.size} values")
    keep = np.isfinite(s) & np.isfinite(x)
    if keep.sum() < 100:
        raise InputError(f"only {int(keep.sum())} finite calibration pairs; a noise model needs many more")
    return s[keep], x[keep]


def conditional_moments(model: NoiseModel, s: np.ndarray, x_grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``x`` given each ``s``, by numerical integration of p(x|s) on ``x_grid``.

    Parameters
    ----------
    s : (M,) signal values; x_grid : (G,) evenly spaced x values covering the likelihood.

    Returns
    -------
    mean, variance : (M,) float64
    """
    with torch.no_grad():
        ll = model.log_likelihood(torch.as_tensor(x_grid, dtype=torch.float32)[None, :],
                                  torch.as_tensor(s, dtype=torch.float32)[:, None])
    p = ll.double().exp().numpy()
    p /= p.sum(axis=1, keepdims=True)
    mean = p @ x_grid
    return mean, p @ x_grid**2 - mean**2
