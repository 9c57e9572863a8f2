"""PN2V's histogram noise model (Krull, Vičar, Jug 2019) and its fit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .base import NoiseModel, _buffer, _pairs_1d, _require


class HistogramNoiseModel(NoiseModel):
    """PN2V's histogram noise model.

    Buffers: ``density`` (n_s, n_x): row ``i`` is p(x | s = centre of signal bin i) as a
    density per unit ``x`` (piecewise constant over the ``n_x`` bins of ``x_range``; each row
    integrates to 1); ``signal_range`` (2,); ``x_range`` (2,).
    """

    kind = "histogram"

    def __init__(self, density: torch.Tensor, signal_range: Any, x_range: Any) -> None:
        super().__init__()
        density = torch.as_tensor(density, dtype=torch.float32)
        if density.ndim != 2 or min(density.shape) < 1:
            raise ValueError(f"density must be a 2D (signal bins, x bins) array, got shape {tuple(density.shape)}")
        self.register_buffer("density", density)
        self.register_buffer("signal_range", _buffer(signal_range))
        self.register_buffer("x_range", _buffer(x_range))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> HistogramNoiseModel:
        _require(tensors, ("density", "signal_range", "x_range"), cls.kind)
        return cls(tensors["density"], tensors["signal_range"].numpy(), tensors["x_range"].numpy())

    def header(self) -> dict[str, Any]:
        return {**super().header(), "bins": list(self.density.shape)}

    def log_likelihood(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x, s = torch.broadcast_tensors(x.float(), s.float())
            n_s, n_x = self.density.shape
            s_lo, s_hi = self.signal_range[0], self.signal_range[1]
            x_lo, x_hi = self.x_range[0], self.x_range[1]
            # continuous row index; rows sit at the signal-bin centres
            t = ((s - s_lo) / (s_hi - s_lo) * n_s - 0.5).clamp(0, n_s - 1)
            i0 = t.detach().floor().clamp(max=max(n_s - 2, 0)).long()
            w = t - i0
            i1 = (i0 + 1).clamp(max=n_s - 1)
            j = ((x - x_lo) / (x_hi - x_lo) * n_x).floor().clamp(0, n_x - 1).long()
            flat = self.density.reshape(-1)
            p = flat[i0 * n_x + j] * (1 - w) + flat[i1 * n_x + j] * w
            return torch.log(p)


def fit_histogram(signal: np.ndarray, noisy: np.ndarray, bins: int | tuple[int, int] = 256,
                  floor: float = 1e-4) -> HistogramNoiseModel:
    """The PN2V histogram noise model from paired values.

    Parameters
    ----------
    signal, noisy : arrays of one shape (any), raw units
        Clean (or pseudo-clean) values and the noisy values observed with them.
    bins : int or (signal bins, x bins)
        256 x 256 in the paper. Ranges are the data's min..max; integer-valued data get bins
        of a whole number of integers each (fewer bins when the range is narrower).
    floor : float
        Weight of a uniform density mixed into every row (so no likelihood is 0).

    Returns
    -------
    HistogramNoiseModel
    """
    s, x = _pairs_1d(signal, noisy)
    n_s, n_x = (bins, bins) if isinstance(bins, int) else tuple(bins)
    if n_s < 2 or n_x < 2:
        raise ConfigError(f"a histogram noise model needs at least 2 bins per axis, got {(n_s, n_x)}")
    for name, v in (("signal", s), ("noisy", x)):
        if not v.max() > v.min():
            raise InputError(f"the {name} calibration values are all {v.min()}: a noise model needs a range of intensities")
    s_range, n_s = _bins(s, n_s)
    x_range, n_x = _bins(x, n_x)
    counts, _, _ = np.histogram2d(s, x, bins=(n_s, n_x), range=(s_range, x_range))
    totals = counts.sum(axis=1)
    filled = np.flatnonzero(totals > 0)
    rows = counts[filled] / totals[filled, None]
    # rows without data: linear interpolation between the nearest rows with data
    probs = np.empty_like(counts)
    for j in range(n_x):
        probs[:, j] = np.interp(np.arange(n_s), filled, rows[:, j])
    probs = (1 - floor) * probs + floor / n_x
    width = (x_range[1] - x_range[0]) / n_x
    return HistogramNoiseModel(torch.from_numpy((probs / width).astype(np.float32)), s_range, x_range)


def _bins(values: np.ndarray, bins: int) -> tuple[tuple[float, float], int]:
    """Range and number of bins for ``values``: min..max in ``bins`` bins, except for integer
    values (camera counts), whose bins hold the same number of integers each (edges on
    half-integers), so quantisation leaves no empty or doubled bins."""
    lo, hi = float(values.min()), float(values.max())
    if not np.all(values == np.round(values)):
        return (lo, hi), bins
    width = math.ceil((hi - lo + 1) / bins)
    n = math.ceil((hi - lo + 1) / width)
    return (lo - 0.5, lo - 0.5 + n * width), n
