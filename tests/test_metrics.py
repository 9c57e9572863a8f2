"""bigdenoise.metrics: known values, invariances, and SSIM against scikit-image."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from bigdenoise import metrics


def _images(seed: int = 0, shape=(48, 40)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    clean = 100 + 80 * np.sin(yy / 5.0) * np.cos(xx / 7.0)
    return clean, clean + rng.normal(0, 20, shape)


def test_psnr_identical_is_inf_and_ssim_is_one():
    clean, _ = _images()
    assert metrics.psnr(clean, clean, 255) == math.inf
    assert metrics.ssim(clean, clean, 255) == pytest.approx(1.0, abs=1e-12)
    assert metrics.si_psnr(3 * clean + 7, clean) > 200  # exact up to rounding of the fit


def test_psnr_of_a_constant_offset():
    clean, _ = _images()
    # MSE = 5**2 -> 10 log10(255**2 / 25) = 20 log10(51)
    assert metrics.psnr(clean + 5, clean, 255) == pytest.approx(20 * math.log10(51), abs=1e-12)
    assert metrics.psnr(clean - 1, clean, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_psnr_rejects_bad_input():
    clean, _ = _images()
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(clean[:-1], clean, 255)
    with pytest.raises(ValueError, match="data_range"):
        metrics.psnr(clean, clean, 0)


def test_affine_fit_recovers_a_and_b():
    clean, noisy = _images()
    a, b = metrics.affine_fit((clean - 3.0) / 2.5, clean)  # clean = 2.5 * pred + 3
    assert a == pytest.approx(2.5, rel=1e-12) and b == pytest.approx(3.0, rel=1e-10)
    # with noise it is the least-squares solution (same as numpy's lstsq)
    a, b = metrics.affine_fit(noisy, clean)
    design = np.stack([noisy.ravel(), np.ones(noisy.size)], axis=1)
    (ea, eb), *_ = np.linalg.lstsq(design, clean.ravel(), rcond=None)
    assert (a, b) == pytest.approx((ea, eb), rel=1e-9)
    # a constant prediction: a = 0, b = mean(ref)
    assert metrics.affine_fit(np.full_like(clean, 4.0), clean) == pytest.approx((0.0, clean.mean()))
    fitted = metrics.apply_affine_fit(noisy, clean)
    assert fitted == pytest.approx(ea * noisy + eb)


def test_si_psnr_invariant_to_scale_and_shift_of_the_prediction():
    clean, noisy = _images(1)
    base = metrics.si_psnr(noisy, clean)
    for scale, shift in [(2.0, 0.0), (0.01, -40.0), (-3.0, 1000.0), (1.0, 12.5)]:
        assert metrics.si_psnr(scale * noisy + shift, clean) == pytest.approx(base, abs=1e-9)
    # and it never rates a prediction worse than plain PSNR with the same peak
    peak = clean.max() - clean.min()
    assert base >= metrics.psnr(noisy, clean, peak) - 1e-12


def test_si_psnr_matches_the_pn2v_definition():
    """juglab ScaleInvPSNR: normalise the reference to zero mean / unit std, zero-mean the
    prediction and scale it by least squares onto the reference, peak (max - min) / std."""
    clean, noisy = _images(2)
    gt = (clean - clean.mean()) / clean.std()
    x = noisy - noisy.mean()
    x = x * np.sum(gt * x) / np.sum(x * x)
    peak = (clean.max() - clean.min()) / clean.std()
    expected = 10 * np.log10(peak**2 / np.mean((gt - x) ** 2))
    assert metrics.si_psnr(noisy, clean) == pytest.approx(expected, abs=1e-9)


def test_ssim_known_properties():
    clean, noisy = _images(3)
    s = metrics.ssim(noisy, clean, 255)
    assert 0 < s < 1
    assert metrics.ssim(clean, noisy, 255) == pytest.approx(s, abs=1e-12)  # symmetric
    assert metrics.ssim(clean, clean + 50, 255) < 1  # luminance term sees an offset
    with pytest.raises(ValueError, match="window"):
        metrics.ssim(clean[:8, :8], clean[:8, :8], 255)


@pytest.mark.parametrize("shape", [(48, 40), (64, 64), (12, 30, 25)])
def test_ssim_matches_skimage(shape):
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(4)
    clean = rng.uniform(0, 255, shape)
    clean = (clean + np.roll(clean, 1, 0) + np.roll(clean, 1, -1)) / 3
    noisy = clean + rng.normal(0, 25, shape)
    ours = metrics.ssim(noisy, clean, 255)
    theirs = skm.structural_similarity(noisy, clean, data_range=255, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False)
    assert ours == pytest.approx(theirs, abs=1e-3)


def test_mean_sem():
    assert metrics.mean_sem([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0 / math.sqrt(3)))
    mean, sem = metrics.mean_sem([5.0])
    assert mean == 5.0 and math.isnan(sem)


def test_import_does_not_pull_in_skimage_or_scipy():
    code = "import sys, bigdenoise.metrics; print('skimage' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"
