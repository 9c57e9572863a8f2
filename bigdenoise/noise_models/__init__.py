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

This package is pure: arrays in, models out, and the noise-model directory format. Reading
calibration pairs from volumes (clean/noisy pairs, repeated frames, bootstrapping from an N2V
model) and placing a noise model on disk safely live in :mod:`bigdenoise.calibration`.

Every noise model is an ``nn.Module`` holding its arrays as buffers, so a PN2V model package
stores it in ``weights.safetensors`` like any network (see :class:`NoiseModelSlot`). A
standalone noise model is a directory: ``noise_model.json`` (format, version, kind, ranges,
bins/degree, provenance), ``noise_model.safetensors`` (the buffers) and ``noise_model.png``
(p(x|s) for a few s). Nothing is pickled.

Modules: ``base`` (:class:`NoiseModel`, shared helpers, :func:`conditional_moments`),
``histogram``, ``gmm``, ``gaussian`` (one kind each, with its fit), ``kinds`` (the ``KINDS``
registry and :func:`fit`), ``slot`` (:class:`NoiseModelSlot`, :func:`check_fits_data`) and
``files`` (the directory format: :func:`write_noise_model`, :func:`load_noise_model`,
:func:`plot_noise_model`). Every public name is re-exported here.
"""

from __future__ import annotations

from .base import NoiseModel, _pair, conditional_moments
from .files import (FORMAT, FORMAT_VERSION, JSON_FILE, PLOT_FILE, TENSORS_FILE, load_noise_model, plot_noise_model,
                    write_noise_model)
from .gaussian import GaussianNoiseModel, fit_gaussian
from .gmm import GaussianMixtureNoiseModel, fit_gmm
from .histogram import HistogramNoiseModel, fit_histogram
from .kinds import KINDS, fit
from .slot import NoiseModelSlot, check_fits_data

__all__ = [
    "FORMAT", "FORMAT_VERSION", "JSON_FILE", "KINDS", "PLOT_FILE", "TENSORS_FILE", "GaussianMixtureNoiseModel",
    "GaussianNoiseModel", "HistogramNoiseModel", "NoiseModel", "NoiseModelSlot", "check_fits_data",
    "conditional_moments", "fit", "fit_gaussian", "fit_gmm", "fit_histogram", "load_noise_model",
    "plot_noise_model", "write_noise_model",
]
# ``_pair`` (private) is used by the tests through this package: keep it importable here.
_pair = _pair
