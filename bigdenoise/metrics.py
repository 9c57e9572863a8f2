"""Image quality metrics for evaluating denoisers against a reference (pure numpy).

Every function takes one image (or one volume: all axes are spatial) and its reference of the
same shape and computes in float64. None of them clips, rescales or guesses a data range:
PSNR and SSIM take ``data_range`` explicitly (255 for 8-bit images; the reference's
``max - min`` for microscopy data without a fixed scale).

- :func:`psnr`: peak signal-to-noise ratio, ``10 log10(data_range**2 / MSE)``.
- :func:`affine_fit`: least-squares ``a, b`` minimising ``||a * pred + b - ref||**2``; used when
  prediction and reference do not share an intensity scale (independently contrast-stretched
  8-bit pairs, CARE's evaluation) — apply it to every method alike.
- :func:`si_psnr`: the scale- and shift-invariant PSNR of Probabilistic Noise2Void (Krull et
  al. 2020, Table 1, rows marked *), as in juglab's ``ScaleInvPSNR`` / CAREamics
  ``scale_invariant_psnr``.
- :func:`ssim`: structural similarity (Wang et al. 2004) with an 11-tap Gaussian window of
  sigma 1.5, K1 = 0.01, K2 = 0.03, population covariances; equal to scikit-image's
  ``structural_similarity(x, ref, data_range=..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``.
- :func:`mean_sem`: mean and standard error of the mean over images.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["psnr", "affine_fit", "apply_affine_fit", "si_psnr", "ssim", "mean_sem"]


def _pair(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"image shape {x.shape} differs from the reference's {ref.shape}")
    if x.size == 0:
        raise ValueError("empty images")
    return x, ref


def psnr(x: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """PSNR in dB of ``x`` against ``ref``: ``10 log10(data_range**2 / mean((x - ref)**2))``.

    ``data_range`` is the peak value of the scale (255 for 8-bit data), stated by the caller.
    Identical images give ``inf``.
    """
    x, ref = _pair(x, ref)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    mse = float(np.mean((x - ref) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(float(data_range) ** 2 / mse))


def affine_fit(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(a, b)`` minimising ``sum((a * pred + b - ref)**2)``.

    ``a = cov(pred, ref) / var(pred)``, ``b = mean(ref) - a * mean(pred)``; a constant ``pred``
    gives ``a = 0, b = mean(ref)``.
    """
    pred, ref = _pair(pred, ref)
    p = pred - pred.mean()
    var = float(np.mean(p * p))
    a = float(np.mean(p * (ref - ref.mean())) / var) if var > 0 else 0.0
    return a, float(ref.mean() - a * pred.mean())


def apply_affine_fit(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``a * pred + b`` (float64) with ``(a, b) = affine_fit(pred, ref)``."""
    a, b = affine_fit(pred, ref)
    return a * np.asarray(pred, dtype=np.float64) + b


def si_psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """Scale- and shift-invariant PSNR (Probabilistic Noise2Void, Krull et al. 2020).

    The reference is normalised to zero mean and unit standard deviation, the prediction is
    made zero-mean and scaled by least squares onto it, and the PSNR uses the normalised
    reference's range ``(max(ref) - min(ref)) / std(ref)`` as its peak (juglab's
    ``ScaleInvPSNR``, as CAREamics computes it). Since the normalisation scales the error and
    the peak alike, this equals ``psnr(a * x + b, ref, max(ref) - min(ref))`` with ``(a, b) =
    affine_fit(x, ref)``, which is how it is computed here: invariant to any ``x -> c x + d``.
    """
    x, ref = _pair(x, ref)
    peak = float(ref.max() - ref.min())
    if peak == 0:
        raise ValueError("si_psnr needs a reference that is not constant")
    return psnr(apply_affine_fit(x, ref), ref, peak)


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _filter_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable correlation with ``kernel`` along every axis, keeping the 'valid' part only."""
    for axis in range(x.ndim):
        moved = np.moveaxis(x, axis, -1)
        windows = np.lib.stride_tricks.sliding_window_view(moved, kernel.size, axis=-1)
        x = np.moveaxis(windows @ kernel, -1, axis)
    return x


def ssim(x: np.ndarray, ref: np.ndarray, data_range: float, *, sigma: float = 1.5, truncate: float = 3.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean structural similarity of ``x`` and ``ref`` (Wang, Bovik, Sheikh, Simoncelli 2004).

    Local means, variances and covariance are Gaussian-weighted (``sigma`` 1.5, the window cut
    at ``truncate * sigma``: 11 taps), population (not sample) statistics, constants
    ``C1 = (k1 * data_range)**2`` and ``C2 = (k2 * data_range)**2``; the SSIM map is averaged
    over the positions whose whole window lies inside the image (scikit-image's convention:
    its border is cropped by the window radius). All axes are spatial; every side must be at
    least the window size.
    """
    x, ref = _pair(x, ref)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    kernel = _gaussian_kernel(sigma, truncate)
    if min(x.shape) < kernel.size:
        raise ValueError(f"ssim needs every side >= {kernel.size} (the Gaussian window), got shape {x.shape}")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = _filter_valid(x, kernel), _filter_valid(ref, kernel)
    vx = _filter_valid(x * x, kernel) - mx * mx
    vy = _filter_valid(ref * ref, kernel) - my * my
    cxy = _filter_valid(x * ref, kernel) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def mean_sem(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (``std(ddof=1) / sqrt(n)``; NaN for one value)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_sem of no values")
    sem = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), sem
