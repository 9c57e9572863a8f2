"""Noise models p(x|s): normalisation, differentiability, parameter recovery, calibration
sources (pairs, repeated frames, bootstrapping), files and the command line."""

import json

import numpy as np
import pytest
import torch
import zarr

from bigdenoise import noise_models as nm
from bigdenoise.calibration import calibration_pairs, make_noise_model, save_noise_model
from bigdenoise.cli import main
from bigdenoise.errors import ConfigError, InputError, ModelError

from conftest import shared_data, smooth_volume, write_zarr

GAIN, READ_SIGMA = 2.0, 10.0


def poisson_gaussian(n, seed=0, lo=50.0, hi=1000.0):
    """Signals uniform in [lo, hi] and x = GAIN * Poisson(s / GAIN) + N(0, READ_SIGMA^2)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(lo, hi, n)
    return s, GAIN * rng.poisson(s / GAIN) + rng.normal(0, READ_SIGMA, n)


def likelihood(model, x, s):
    with torch.no_grad():
        return model.log_likelihood(torch.as_tensor(x, dtype=torch.float32)[None, :],
                                    torch.as_tensor(s, dtype=torch.float32)[:, None]).double().exp().numpy()


@pytest.mark.parametrize("integer", [False, True])
def test_histogram_likelihood_integrates_to_one_for_every_signal(integer):
    s, x = poisson_gaussian(100_000)
    if integer:
        s, x = np.round(s), np.round(x)  # camera counts: bins aligned to integers
    model = nm.fit_histogram(s, x, bins=64)
    n_s, n_x = model.density.shape
    lo, hi = nm._pair(model.x_range)
    if integer:
        assert lo % 1 == 0.5 and ((hi - lo) / n_x) % 1 == 0
    sub = 16
    xs = lo + (np.arange(n_x * sub) + 0.5) * (hi - lo) / (n_x * sub)  # midpoints: exact for a step function
    s_lo, s_hi = nm._pair(model.signal_range)
    signals = np.concatenate([[s_lo - 100, s_lo, s_hi, s_hi + 100],
                              np.random.default_rng(1).uniform(s_lo, s_hi, 200)])
    integrals = likelihood(model, xs, signals).sum(axis=1) * (hi - lo) / (n_x * sub)
    assert np.abs(integrals - 1).max() < 1e-5


def test_histogram_is_continuous_and_differentiable_in_the_signal():
    s, x = poisson_gaussian(100_000)
    model = nm.fit_histogram(s, x, bins=64)
    obs = torch.full((50,), 500.0)
    sig = torch.linspace(480, 520, 50, dtype=torch.float32).requires_grad_(True)
    ll = model.log_likelihood(obs, sig)
    (grad,) = torch.autograd.grad(ll.sum(), sig)
    h = 1e-2
    with torch.no_grad():
        numeric = (model.log_likelihood(obs, sig + h) - model.log_likelihood(obs, sig - h)) / (2 * h)
        jumps = (model.log_likelihood(obs, sig + 1e-3) - model.log_likelihood(obs, sig - 1e-3)).abs()
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    assert torch.allclose(grad, numeric, atol=2e-3, rtol=0.05)
    assert jumps.max() < 1e-3  # no steps along s (linear interpolation between rows)


def test_gmm_recovers_poisson_gaussian_parameters():
    s, x = poisson_gaussian(100_000)
    model = nm.fit_gmm(s, x, steps=500)
    signals = np.linspace(100, 950, 10)
    mean, var = nm.conditional_moments(model, signals, np.linspace(-300, 1400, 8000))
    assert np.abs(mean - signals).max() < 0.5  # the mixture's mean is the signal
    gain, read_var = np.polyfit(signals, var, 1)
    assert gain == pytest.approx(GAIN, rel=0.1)
    assert read_var == pytest.approx(READ_SIGMA**2, rel=0.3)
    assert np.abs(var / (GAIN * signals + READ_SIGMA**2) - 1).max() < 0.1
    xs = np.linspace(-300, 1400, 8000)
    assert np.abs(likelihood(model, xs, signals).sum(axis=1) * (xs[1] - xs[0]) - 1).max() < 1e-3


def test_gmm_keeps_its_edge_shape_outside_the_signal_range():
    s, x = poisson_gaussian(20_000)
    model = nm.fit_gmm(s, x, steps=100)
    lo, hi = nm._pair(model.signal_range)
    xs = np.linspace(-300, 1400, 8000)
    for edge, outside in ((lo, lo - 200.0), (hi, hi + 200.0)):
        at_edge = likelihood(model, xs, [edge])[0]
        shifted = likelihood(model, xs + (outside - edge), [outside])[0]  # the edge's density, moved to `outside`
        np.testing.assert_allclose(shifted, at_edge, rtol=1e-3, atol=1e-12)
    sig = torch.tensor([lo - 500.0, lo - 100.0], requires_grad=True)
    ll = model.log_likelihood(torch.tensor(lo), sig)
    (grad,) = torch.autograd.grad(ll.sum(), sig)
    assert torch.isfinite(ll).all() and ll.min() > -1e3  # no collapsed variance below the range
    assert (grad > 0).all()  # samples below the range are pulled back towards the observation


def test_poisson_gaussian_least_squares():
    s, x = poisson_gaussian(100_000)
    h = nm.fit_gaussian(s, x).header()
    assert h["gain"] == pytest.approx(GAIN, rel=0.05)
    assert h["read_variance"] == pytest.approx(READ_SIGMA**2, rel=0.2)


def test_repeated_frames_of_a_static_field(tmp_path):
    rng = np.random.default_rng(0)
    repeats = 16
    field = smooth_volume((64, 64))[1] + 200  # clean, about 100..500
    frames = GAIN * rng.poisson(np.broadcast_to(field / GAIN, (repeats, 64, 64))) + rng.normal(0, READ_SIGMA, (repeats, 64, 64))
    src = write_zarr(tmp_path / "frames.zarr", frames.astype(np.float32), (repeats, 32, 32), "SYX")
    model, info = make_noise_model(src, repeats_axis="S", kind="gaussian")
    assert info["pairs"] == frames.size and info["signal_from"] == "repeats"
    h = model.header()
    # x is one of the frames averaged into the signal: (x - mean) keeps (R-1)/R of the variance
    assert h["gain"] == pytest.approx(GAIN * (1 - 1 / repeats), rel=0.15)
    with pytest.raises(ConfigError, match="not an axis"):
        make_noise_model(src, repeats_axis="Z")


def test_cli_calibration_pairs_write_data_files(tmp_path, capsys):
    noisy, clean = smooth_volume((2, 48, 48))
    src = write_zarr(tmp_path / "noisy.zarr", noisy, (1, 24, 24), "SYX")
    ref = write_zarr(tmp_path / "clean.zarr", clean, (1, 24, 24), "SYX")
    out = tmp_path / "nm"
    assert main(["noise-model", "--noisy", src, "--clean", ref, "--out", str(out), "--bins", "32"]) == 0
    assert "histogram noise model" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [".bigdenoise.json", "noise_model.json", "noise_model.png",
                                                     "noise_model.safetensors"]
    doc = json.loads((out / "noise_model.json").read_text())
    assert doc["format"] == "bigdenoise-noise-model" and doc["kind"] == "histogram"
    assert doc["info"]["pairs"] == noisy.size and doc["info"]["signal_from"] == "clean"
    loaded = nm.load_noise_model(out)
    direct = nm.fit_histogram(clean, noisy, bins=32)
    assert torch.equal(loaded.density, direct.density)
    assert main(["noise-model", "--noisy", src, "--clean", ref, "--out", str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["noise-model", "--noisy", src, "--clean", ref, "--out", str(out), "--kind", "gmm",
                 "--steps", "50", "--overwrite"]) == 0
    assert nm.load_noise_model(out).kind == "gmm"


def test_bootstrap_from_an_n2v_model(tmp_path, model_2d, capsys):
    model_dir, src, data = model_2d
    out = tmp_path / "nm"
    assert main(["noise-model", "--noisy", src, "--bootstrap", str(model_dir), "--out", str(out),
                 "--kind", "gaussian"]) == 0
    doc = json.loads((out / "noise_model.json").read_text())
    assert doc["info"]["signal_from"] == "bootstrap" and doc["info"]["pairs"] == data.size
    assert doc["read_variance"] >= 0 and doc["gain"] >= 0 and doc["read_variance"] + doc["gain"] > 0
    lo, hi = doc["signal_range"]
    assert data.min() - 100 < lo < hi < data.max() + 100  # pseudo-signal in the data's range


def test_bootstrap_takes_the_axes_from_the_model(tmp_path, model_2d, capsys):
    """Without --axes and without axes in the metadata, a volume with as many dimensions as the
    bootstrap model's axes (SYX) gets them; one with another number of dimensions still stops."""
    model_dir, _, data = model_2d
    bare = zarr.create_array(str(tmp_path / "bare.zarr"), shape=data.shape, chunks=(1, 32, 32), dtype=data.dtype)
    bare[...] = data
    out = tmp_path / "nm"
    assert main(["noise-model", "--noisy", str(tmp_path / "bare.zarr"), "--bootstrap", str(model_dir),
                 "--out", str(out), "--kind", "gaussian"]) == 0, capsys.readouterr().err
    assert json.loads((out / "noise_model.json").read_text())["info"]["pairs"] == data.size
    four = zarr.create_array(str(tmp_path / "four.zarr"), shape=(1, *data.shape), chunks=(1, 1, 32, 32),
                             dtype=data.dtype)
    four[...] = data[None]
    with pytest.raises(InputError, match="cannot tell the axes"):
        calibration_pairs(str(tmp_path / "four.zarr"), bootstrap=model_dir)


def test_tirf_repeated_frames(tmp_path):
    tif = shared_data("acsn_scmos_tirf", "TIRF_200Hz.tif", what="the TIRF data")
    model, info = make_noise_model(str(tif), axes="SYX", repeats_axis="S", max_pairs=200_000)
    save_noise_model(model, tmp_path / "nm", info=info)
    s_lo, s_hi = nm._pair(model.signal_range)
    x_lo, x_hi = nm._pair(model.x_range)
    assert 80 < s_lo < s_hi < 200 and x_lo < s_lo and x_hi > s_hi  # about 103 ADU mean
    mean, var = nm.conditional_moments(model, np.array([100.0, 110.0]), np.linspace(x_lo, x_hi, 4000))
    assert np.abs(mean - [100, 110]).max() < 3 and np.all((var > 4) & (var < 400))


def test_clear_errors(tmp_path, capsys):
    noisy, clean = smooth_volume((2, 48, 48))
    src = write_zarr(tmp_path / "noisy.zarr", noisy, (1, 24, 24), "SYX")
    other = write_zarr(tmp_path / "other.zarr", clean[:1], (1, 24, 24), "SYX")
    with pytest.raises(SystemExit):  # argparse: exactly one of --clean / --repeats-axis / --bootstrap
        main(["noise-model", "--noisy", src, "--out", str(tmp_path / "nm")])
    with pytest.raises(ConfigError, match="exactly one"):
        calibration_pairs(src, clean=other, repeats_axis="S")
    with pytest.raises(InputError, match="must match voxel for voxel"):
        calibration_pairs(src, clean=other)
    assert main(["noise-model", "--noisy", src, "--repeats-axis", "Q", "--out", str(tmp_path / "nm")]) == 2
    assert "not an axis" in capsys.readouterr().err
    assert not (tmp_path / "nm").exists()
    with pytest.raises(ConfigError, match="noise_model.json is missing"):
        nm.load_noise_model(tmp_path / "absent")
    path = save_noise_model(nm.fit_gaussian(clean, noisy), tmp_path / "g", plot=False)
    doc = json.loads((path / "noise_model.json").read_text())
    (path / "noise_model.json").write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(ModelError, match="upgrade"):
        nm.load_noise_model(path)


def test_slot_rebuilds_the_kind_it_loads():
    s, x = poisson_gaussian(20_000)
    trained = nm.NoiseModelSlot(nm.fit_gmm(s, x, gaussians=2, degree=2, steps=20), mean=500.0, std=250.0)
    fresh = nm.NoiseModelSlot()  # placeholder gaussian, as a PN2V package is built before loading
    fresh.load_state_dict(trained.state_dict(), strict=True)
    assert fresh.model.kind == "gmm" and fresh.model.degree == 2
    obs, sig = torch.randn(7, 1), torch.randn(7, 5)
    assert torch.equal(fresh.log_likelihood(obs, sig), trained.log_likelihood(obs, sig))
    # normalised units: raw = v * std + mean
    assert torch.allclose(trained.log_likelihood(obs, sig), trained.model.log_likelihood(obs * 250 + 500, sig * 250 + 500))
