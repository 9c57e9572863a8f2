"""Noise models p(x | s): the likelihood of a noisy value ``x`` given the clean signal ``s``.

Probabilistic Noise2Void (Krull, Vičar, Jug 2019) combines a network's samples of the signal
with a measured noise model. Three kinds are built here, all in **raw intensity units** of the
data they were measured on (ADU, counts...), all differentiable in ``s``:

- ``histogram`` (the PN2V paper): a 2D histogram of (clean ``s``, noisy ``x``) pairs, 256 x 256
  bins by default, ranges from the data; every signal row is normalised into a density over
  ``x`` (piecewise constant per ``x`` bin) and rows are interpolated linearly in ``s`` (row
  values sit at the signal-bin centres), so the likelihood is continuous and differentiable in
  ``s``. Rows without calibration data are interpolated from the nearest rows that have some;
  each row is mixed with a uniform density of weight ``floor`` so no value has probability 0.
  ``x`` outside the histogram's range counts as its edge bin; ``s`` is clamped to the range.
- ``gmm`` (Prakash, Lalit, Tomancak, Krull, Jug, "Fully unsupervised probabilistic Noise2Void",
  ISBI 2020): a mixture of ``K`` gaussians whose log-weights, mean offsets and variances are
  polynomials of degree ``D`` in ``u = (s - s_min) / (s_max - s_min)``; variances use
  positive (exponentiated) coefficients, and the means are shifted so the mixture's mean is
  exactly ``s``. Outside the calibrated signal range the mixture keeps the shape it has at the
  range's nearer end (``u`` clamped to [0, 1]) and its mean stays ``s``: extrapolated
  polynomials would shrink the variance to ``min_variance`` below the range and one PN2V
  sample there gave a loss of 10^6, whose gradient then stalled Adam for the rest of a short
  training. Fitted by maximum likelihood with Adam.
- ``gaussian``: Poisson–Gaussian, ``N(x; s, a + b s)`` (``a`` read-noise variance, ``b``
  gain), fitted by least squares of ``(x - s)^2`` on ``s``. Its default (``a = 1``,
  ``b = 0``) is the placeholder a PN2V model is built with before a measured model is loaded.

This module is pure: arrays in, models out, and the noise-model directory format. Reading
calibration pairs from volumes (clean/noisy pairs, repeated frames, bootstrapping from an N2V
model) and placing a noise model on disk safely live in :mod:`bigdenoise.calibration`.

Every noise model is an ``nn.Module`` holding its arrays as buffers, so a PN2V model package
stores it in ``weights.safetensors`` like any network (see :class:`NoiseModelSlot`). A
standalone noise model is a directory: ``noise_model.json`` (format, version, kind, ranges,
bins/degree, provenance), ``noise_model.safetensors`` (the buffers) and ``noise_model.png``
(p(x|s) for a few s). Nothing is pickled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .errors import ConfigError, InputError, ModelError
from .files import atomic_save_tensors, atomic_write_bytes, load_tensors, read_versioned_json

FORMAT = "bigdenoise-noise-model"
FORMAT_VERSION = 1
JSON_FILE = "noise_model.json"
TENSORS_FILE = "noise_model.safetensors"
PLOT_FILE = "noise_model.png"

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


# --------------------------------------------------------------------------- histogram


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


# --------------------------------------------------------------------------- gaussian mixture


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


# --------------------------------------------------------------------------- Poisson-Gaussian


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


# --------------------------------------------------------------------------- inside a model package


class NoiseModelSlot(nn.Module):
    """A noise model as one of a method's networks (PN2V's ``nets["noise_model"]``).

    It holds the noise model (raw units) as a child module named by its kind
    (``histogram``, ``gmm`` or ``gaussian``) and ``norm`` (2,) = (mean, std), the engine's
    normalisation of the training data, so that :meth:`log_likelihood` takes values in the
    network's normalised units: ``raw = normalised * std + mean``. Its tensors travel in the
    model package's ``weights.safetensors`` as ``noise_model.norm`` and
    ``noise_model.<kind>.<buffer>``; loading rebuilds the child of the kind and shapes those
    tensors have, so a package loads strictly whatever noise model it was trained with.
    No stage optimises it (it has no parameters).
    """

    def __init__(self, model: NoiseModel | None = None, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("norm", _buffer((mean, std)))
        self._kind = ""
        self.set_model(model if model is not None else GaussianNoiseModel())

    @property
    def model(self) -> NoiseModel:
        return getattr(self, self._kind)

    def set_model(self, model: NoiseModel, mean: float | None = None, std: float | None = None) -> None:
        """Hold ``model`` (moved to this slot's device); optionally set the normalisation."""
        if self._kind:
            delattr(self, self._kind)
        self._kind = model.kind
        self.add_module(model.kind, model.to(self.norm.device))
        if mean is not None or std is not None:
            old_mean, old_std = _pair(self.norm)
            self.norm.copy_(_buffer((old_mean if mean is None else mean, old_std if std is None else std)))

    def to_raw(self, v: torch.Tensor) -> torch.Tensor:
        return v.float() * self.norm[1] + self.norm[0]

    def log_likelihood(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """ln p(x|s) for normalised ``x`` (observed) and ``s`` (signal samples), broadcast."""
        return self.model.log_likelihood(self.to_raw(x), self.to_raw(s))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        names: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state_dict.items():
            if key.startswith(prefix) and "." in key[len(prefix):]:
                kind, name = key[len(prefix):].split(".", 1)
                names.setdefault(kind, {})[name] = value
        kinds = [k for k in names if k in KINDS]
        if len(kinds) == 1:
            try:
                self.set_model(KINDS[kinds[0]].from_tensors({k: v.detach().cpu() for k, v in names[kinds[0]].items()}))
            except (ModelError, ValueError) as exc:
                error_msgs.append(f"noise model: {exc}")
        elif len(kinds) > 1:
            error_msgs.append(f"noise model: tensors of several kinds {kinds}; expected one")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def check_fits_data(model: NoiseModel, p_low: float, p_high: float, what: str, tolerance: float = 0.25,
                    min_coverage: float = 0.1) -> None:
    """ConfigError unless intensities ``p_low..p_high`` (raw) lie within the noise model's
    noisy-value range widened by ``tolerance`` of its width on each side, and the model's
    signal range spans at least ``min_coverage`` of ``p_low..p_high``."""
    lo, hi = _pair(model.x_range)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return
    s_lo, s_hi = _pair(model.signal_range)
    if s_hi - s_lo < min_coverage * (p_high - p_low):
        raise ConfigError(
            f"the {model.kind} noise model's signal range {s_lo:.6g}..{s_hi:.6g} covers almost none of {what}'s "
            f"intensities {p_low:.6g}..{p_high:.6g}: its calibration signal was nearly constant (a bootstrap from "
            f"an N2V model trained too briefly?). Measure it again from a signal that spans the data's intensities")
    slack = tolerance * (hi - lo)
    if p_low < lo - slack or p_high > hi + slack:
        raise ConfigError(
            f"{what} has raw intensities {p_low:.6g}..{p_high:.6g} (0.1-99.9 percentiles) but the {model.kind} "
            f"noise model was measured on values {lo:.6g}..{hi:.6g}: it describes another intensity range (another "
            f"camera, gain or offset, or data scaled or normalised differently). Measure a noise model on data in "
            f"the same raw units: `bigdenoise noise-model --noisy IN --clean C|--repeats-axis S|--bootstrap "
            f"N2V_MODEL --out NM`"
        )


# --------------------------------------------------------------------------- files and plot


def write_noise_model(model: NoiseModel, directory: str | Path, *, info: dict[str, Any] | None = None,
                      plot: bool = True) -> None:
    """Write ``model`` into the existing ``directory``: ``noise_model.json`` (format, version,
    kind, sizes, ranges, ``info``), ``noise_model.safetensors`` (its buffers) and (``plot=True``)
    ``noise_model.png``, each atomically. Where the directory may go (never over an input,
    replacing only our own outputs) is :func:`bigdenoise.calibration.save_noise_model`'s job."""
    directory = Path(directory)
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "bigdenoise_version": __version__,
                **model.header(), "info": info or {}}
    atomic_save_tensors(model.state_dict(), directory / TENSORS_FILE, metadata={"format": FORMAT, "kind": model.kind})
    atomic_write_bytes(directory / JSON_FILE, json.dumps(document, indent=2).encode())
    if plot:
        plot_noise_model(model, directory / PLOT_FILE)


def load_noise_model(path: str | Path) -> NoiseModel:
    """Load a noise model directory written by :func:`write_noise_model` (no pickle)."""
    path = Path(path)
    json_path, tensors_path = path / JSON_FILE, path / TENSORS_FILE
    if not json_path.is_file():
        raise ConfigError(f"{path} is not a noise model: {JSON_FILE} is missing (make one with `bigdenoise noise-model`)")
    document = read_versioned_json(json_path, FORMAT, FORMAT_VERSION, "noise model")
    kind = document.get("kind")
    if kind not in KINDS:
        raise ModelError(f"{json_path}: unknown noise model kind {kind!r} (known: {', '.join(KINDS)})")
    if not tensors_path.is_file():
        raise ModelError(f"{path}: {TENSORS_FILE} is missing; the noise model is incomplete")
    model = KINDS[kind].from_tensors(load_tensors(tensors_path, "noise model"))
    model.eval()
    return model


def plot_noise_model(model: NoiseModel, path: str | Path, n_signals: int = 5) -> None:
    """PNG of p(x|s) against x for ``n_signals`` signals spread over the model's signal range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s_lo, s_hi = _pair(model.signal_range)
    x_lo, x_hi = _pair(model.x_range)
    if not all(map(math.isfinite, (s_lo, s_hi, x_lo, x_hi))):
        s_lo, s_hi, x_lo, x_hi = -3.0, 3.0, -6.0, 6.0
    signals = np.linspace(s_lo, s_hi, n_signals + 2)[1:-1]
    xs = np.linspace(x_lo, x_hi, 2000)
    with torch.no_grad():
        p = model.log_likelihood(torch.as_tensor(xs, dtype=torch.float32)[None, :],
                                 torch.as_tensor(signals, dtype=torch.float32)[:, None]).exp().numpy()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for s, row in zip(signals, p):
        ax.plot(xs, row, label=f"s = {s:.4g}")
    ax.set_xlabel("noisy value x")
    ax.set_ylabel("p(x | s)")
    ax.set_title(f"{model.kind} noise model")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
