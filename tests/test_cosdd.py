"""COSDD (methods/cosdd.py, nets/lvae.py, nets/ar_decoder.py): the AR decoder's causality, a
normalised mixture, the KL, the stop-gradients, one noise direction per volume, the measured
radius of the sampled path, and exact tiling of the direct denoiser and of the sampled path."""

import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import zarr

import bigdenoise as bd
from bigdenoise.config import NetConfig, make_config
from bigdenoise.infer import for_inference, plan_for, predict_array, predict_whole
from bigdenoise.methods import cosdd
from bigdenoise.nets.ar_decoder import ARDecoder, mixture_log_prob
from bigdenoise.cli import main
from bigdenoise.package import prediction_options, with_options
from bigdenoise.nets.lvae import LadderVAE, gaussian_kl, gaussian_log_prob

from conftest import (COSDD_SMALL as SMALL, TINY, assert_exact, assert_not_exact, rough_copy, short_halo,
                      smooth_volume, write_zarr)


def _support(ar, shape, pos, along_y, trials=3):
    """Input pixels the mixture parameters at ``pos`` depend on (union over random inputs)."""
    seen = torch.zeros(shape[2:], dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    for _ in range(trials):
        x = torch.randn(shape, generator=g, requires_grad=True)
        code = torch.randn((shape[0], ar.s_code) + shape[2:], generator=g)
        out = sum(p[(0, slice(None)) + pos].sum() for p in ar.params(x, code, along_y))
        (grad,) = torch.autograd.grad(out, x)
        seen |= grad[0, 0] != 0
    return seen


@pytest.mark.parametrize("kernel, dilations", [(3, (2, 1)), (5, (2, 4, 2, 1))])
def test_ar_decoder_sees_exactly_the_receptive_field_before_each_pixel(kernel, dilations):
    torch.manual_seed(0)
    ar = ARDecoder(2, 3, channels=8, kernel=kernel, dilations=dilations)
    rf = ar.receptive_field
    assert rf == (kernel - 1) * (1 + sum(dilations))
    width = rf + 12
    for i, j in [(3, rf + 5), (2, 4), (0, 0)]:
        seen = _support(ar, (1, 1, 6, width), (i, j), False)
        expected = torch.zeros_like(seen)
        expected[i, max(0, j - rf):j] = True
        assert torch.equal(seen, expected), (i, j, seen.nonzero().tolist())
        # along y: the same after transposing, rows i-rf..i-1 of column i
        seen = _support(ar, (1, 1, width, 6), (j, i), True)
        assert torch.equal(seen, expected.T), (j, i, seen.nonzero().tolist())


def test_mixture_integrates_to_one():
    torch.manual_seed(0)
    ar = ARDecoder(2, 4, channels=8, kernel=3, dilations=(1,), components=3, min_scale=0.05)
    x = torch.randn(1, 1, 2, 3)
    logits, loc, scale = ar.params(x, torch.randn(1, 4, 2, 3))
    grid = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    for idx in np.ndindex(2, 3):
        sel = (0, slice(None)) + idx
        p = mixture_log_prob(grid[:, None], *(t[sel].detach().double()[None, :] for t in (logits, loc, scale)))
        total = torch.trapezoid(p.exp().flatten(), grid)
        assert abs(float(total) - 1) < 1e-4, float(total)


def test_binned_mixture_sums_to_one_over_the_grey_levels_with_the_clip_level_censored():
    """Integer data: each pixel's mass over its grey level's bin, everything below the clip level
    in that level; summed over the levels that follow it, 1. Far-out pixels keep finite
    log-probabilities and gradients."""
    torch.manual_seed(0)
    m = 3
    logits, loc = torch.randn(1, m, 1, dtype=torch.float64), torch.randn(1, m, 1, dtype=torch.float64)
    scale = torch.tensor([0.01, 0.3, 2.0], dtype=torch.float64).reshape(1, m, 1)
    step, clip = 0.25, -1.5
    x = (clip + step * torch.arange(400, dtype=torch.float64)).reshape(1, 1, -1)  # to 98: past every component
    half = torch.full((1, 1, 1), step / 2, dtype=torch.float64)
    params = (logits.expand(1, m, 400), loc.expand(1, m, 400), scale.expand(1, m, 400))
    censored = x <= clip
    p = mixture_log_prob(x, *params, half=half, censored=censored).exp()
    assert abs(float(p.sum()) - 1) < 1e-9 and float(p.max()) <= 1
    uncensored = mixture_log_prob(x, *params, half=half).exp()
    assert float(uncensored.sum()) < 0.99  # the mass under the clip level's bin is what censoring adds
    far = torch.tensor([[[-60.0, 0.0, 60.0]]], requires_grad=True)
    loc_far = torch.zeros(1, m, 3, requires_grad=True)
    scale_far = torch.full((1, m, 3), 0.01, requires_grad=True)
    lp = mixture_log_prob(far, torch.zeros(1, m, 3), loc_far, scale_far, half=torch.full((1, 1, 1), 0.1))
    lp.sum().backward()
    assert torch.isfinite(lp).all() and float(lp[0, 0, 1]) == pytest.approx(0, abs=1e-6)
    assert torch.isfinite(loc_far.grad).all() and torch.isfinite(scale_far.grad).all()


def test_binned_scores_of_bf16_parameters_are_computed_in_float32():
    """Under bf16 autocast (a GPU's default) the AR decoder's outputs are bf16; the mixture's
    weights and bins are still computed in float32."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(2, 3, 16, generator=g).bfloat16() for _ in range(3)]
    params[2] = params[2].abs() + 0.5
    x, half = torch.randn(2, 1, 16, generator=g), torch.full((1, 1, 1), 0.01)
    low = mixture_log_prob(x, *params, half=half)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, mixture_log_prob(x, *(t.float() for t in params), half=half))


def test_analytic_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mq, mp = torch.randn(5, generator=g), torch.randn(5, generator=g)
    sq, sp = torch.rand(5, generator=g) + 0.3, torch.rand(5, generator=g) + 0.3
    z = mq + sq * torch.randn(200000, 5, generator=g)
    mc = (gaussian_log_prob(z, mq, sq) - gaussian_log_prob(z, mp, sp)).mean(0)
    torch.testing.assert_close(mc, gaussian_kl(mq, sq, mp, sp), atol=0.02, rtol=0.02)
    # the ladder VAE's KL (summed over levels, given the latents above) against its one-sample log ratio
    torch.manual_seed(0)
    vae = LadderVAE(2, levels=2, s_code=4)
    x = torch.randn(1, 1, 8, 8).expand(4000, -1, -1, -1)
    with torch.no_grad():
        _, kl, log_ratio = vae.top_down(vae.bottom_up(x), log_ratio=True)
    sem = float(log_ratio.std()) / len(log_ratio) ** 0.5
    assert abs(float(log_ratio.mean() - kl.mean())) < 4 * sem, (float(log_ratio.mean()), float(kl.mean()), sem)
    assert float(kl.mean()) > 0


def test_sampling_without_the_kl_decodes_the_same_latents():
    # the sampled paths skip the priors and the KL (speed); the signal code must not change
    torch.manual_seed(0)
    vae = LadderVAE(2, levels=3, s_code=8)
    feats = vae.bottom_up(torch.randn(2, 1, 16, 16))
    torch.manual_seed(1)
    code, kl, ratio = vae.top_down(feats)
    torch.manual_seed(1)
    fast, none_kl, none_ratio = vae.top_down(feats, kl=False)
    assert torch.equal(code, fast)
    assert kl.shape == (2,) and ratio is None and none_kl is None and none_ratio is None


def _batch(options, n=2, shape=(32, 32)):
    rng = np.random.default_rng(0)
    ex = [cosdd.prepare({"input": rng.normal(size=(1,) + shape).astype(np.float32)}, rng, options) for _ in range(n)]
    return {k: torch.from_numpy(np.stack([e[k] for e in ex])) for k in ex[0]}


def test_gradients_stop_where_the_method_says():
    options = cosdd.COSDDOptions(**SMALL)
    torch.manual_seed(0)
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, options)
    batch = _batch(options)
    _, _, sd = cosdd.elbo_terms(nets, batch)
    sd.backward()
    assert all(p.grad is None or not p.grad.any() for p in nets["encoder"].parameters()), \
        "the signal decoder's loss reaches the encoder"
    assert any(p.grad is not None and p.grad.any() for p in nets["signal_decoder"].parameters())
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    cosdd.distill_loss(nets, batch, options).backward()
    for name in ("encoder", "ar_decoder", "signal_decoder"):
        assert all(p.grad is None for p in nets[name].parameters()), f"the distillation loss reaches the {name}"
    assert any(p.grad is not None and p.grad.any() for p in nets["direct_denoiser"].parameters())


def _stripes(along, seed=0, shape=(64, 64)):
    """A smooth signal plus white noise plus noise correlated along ``along`` ("x": rows)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    signal = np.sin(yy / 7.0) + np.cos(xx / 5.0)
    g = np.exp(-np.arange(-6, 7) ** 2 / (2 * 2.0**2))
    e = rng.normal(size=(shape[0] + 12, shape[1] + 12))
    corr = np.apply_along_axis(lambda r: np.convolve(r, g, "valid"), 1, e)[6:-6]  # along rows
    if along == "y":
        corr = np.apply_along_axis(lambda c: np.convolve(c, g, "valid"), 0, e)[:, 6:-6]
    return (signal + 0.1 * rng.normal(size=shape) + 0.3 * corr / g.sum() ** 0.5).astype(np.float32)


def test_auto_direction_picks_the_axis_of_the_stripes():
    options = cosdd.COSDDOptions(**SMALL)
    torch.manual_seed(0)
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, options)
    assert cosdd.noise_direction(nets) is None
    for seed in range(3):
        for along in ("x", "y"):
            patch = {"input": torch.from_numpy(_stripes(along, seed)[None, None])}
            assert cosdd.batch_direction(nets, patch) == along
    # one direction for a batch, recorded on the first training batch and kept afterwards
    rows = {k: torch.from_numpy(np.stack([_stripes("x", s)[None] for s in range(2)])) for k in ("input", "noisy")}
    cols = {k: torch.from_numpy(np.stack([_stripes("y", s)[None] for s in range(2)])) for k in ("input", "noisy")}
    assert cosdd.batch_direction(nets, cols) == "y" and cosdd.noise_direction(nets) is None  # not recorded
    for net in nets.values():
        net.train()
    cosdd.vae_loss(nets, rows, options)
    assert cosdd.noise_direction(nets) == "x"
    assert cosdd.batch_direction(nets, cols) == "x"  # the volume's direction, whatever a later batch looks like
    fixed = cosdd.build(NetConfig(depth=1, features=4), 2, cosdd.COSDDOptions(**SMALL, direction="y"))
    assert cosdd.noise_direction(fixed) == "y" and cosdd.batch_direction(fixed, rows, record=True) == "y"
    # the loop's rotations would transpose stripes: the method trains without augmentation by default
    from bigdenoise.config import make_config

    assert make_config(method="cosdd", axes="SYX").augment is False
    assert make_config(method="n2v", axes="SYX").augment is True


def test_auto_direction_warns_once_when_the_noise_has_no_direction():
    """White noise on a smooth signal: the two axes correlate alike, COSDD has nothing to remove
    that N2V could not and its noise decoder would model the signal; stripes, or a decoder that
    already sees only the recommended short context: no warning."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    white = np.stack([np.sin(yy / 7.0) + np.cos(xx / 5.0) + 0.5 * rng.normal(size=(64, 64)) for _ in range(2)])
    rows = np.stack([_stripes("x", seed) for seed in range(2)])
    short = {**SMALL, "ar_dilations": (1,)}
    wide = {**SMALL, "ar_kernel": 7, "ar_dilations": (1,)}  # the short context at a wider kernel: 12 pixels
    for data, small, warned in ((white, SMALL, 1), (rows, SMALL, 0), (white, short, 0), (white, wide, 0)):
        nets = cosdd.build(NetConfig(depth=1, features=4), 2, cosdd.COSDDOptions(**small))
        batch = {"input": torch.from_numpy(data[:, None].astype(np.float32))}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cosdd.batch_direction(nets, batch)  # not recording (validation): no choice, no warning
            for _ in range(2):
                cosdd.batch_direction(nets, batch, record=True)  # chosen once
        assert sum("no direction" in str(w.message) for w in caught) == warned
        assert all("ar_dilations=1: 8 pixels" in str(w.message) for w in caught)  # at the default kernel


def test_a_runs_warning_is_in_its_log_and_one_line_on_the_console(tmp_path):
    """The no-direction warning of a training run: through the API Python shows it (pytest
    catches it) and the model's log keeps it; through the command line the console prints the
    log's one line (not Python's file, line and source; not after a progress bar) and the log
    keeps it too."""
    from bigdenoise.logs import LOG_FILE

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    white = np.stack([np.sin(yy / 7.0) + np.cos(xx / 5.0) + 0.5 * rng.normal(size=(64, 64)) for _ in range(2)])
    src = write_zarr(tmp_path / "in.zarr", white.astype(np.float32), (1, 32, 32), "SYX")
    record = "WARNING bigdenoise.warnings: cosdd: the noise shows no direction"
    with pytest.warns(UserWarning, match="no direction"):
        bd.train(src, tmp_path / "api", method="cosdd", progress=False, options=SMALL, **{**TINY, "steps": 2})
    assert record in (tmp_path / "api" / LOG_FILE).read_text()
    options = [a for k, v in SMALL.items() for a in ("--option", f"{k}={v}")]
    run = subprocess.run([sys.executable, "-m", "bigdenoise.cli", "train", src, "--method", "cosdd", "--axes", "SYX",
                          "--out", str(tmp_path / "cli"), "--steps", "2", "--val-every", "2", "--batch-size", "4",
                          "--depth", "2", "--features", "4", *options], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # the progress bars redraw after "\r"; the warning is a line of its own, not the tail of a bar's
    err = [line for line in re.split("[\r\n]", run.stderr) if "no direction" in line or "UserWarning" in line]
    assert len(err) == 1 and err[0].startswith("bigdenoise: WARNING: cosdd: the noise shows no direction"), err
    assert record in (tmp_path / "cli" / LOG_FILE).read_text()


@pytest.mark.parametrize("along", ["x", "y"])
def test_auto_direction_is_chosen_once_per_volume_and_travels_in_the_package(tmp_path, along):
    data = np.stack([_stripes(along, seed, (64, 64)) for seed in range(2)])
    src = write_zarr(tmp_path / "in.zarr", data, (1, 32, 32), "SYX")
    model = bd.train(src, tmp_path / "model", method="cosdd", progress=False, options=SMALL,
                     **{**TINY, "steps": 2})
    assert cosdd.noise_direction(model.nets) == along
    assert cosdd.noise_direction(bd.load_model(tmp_path / "model").nets) == along


def test_integer_patches_are_dequantised_by_one_grey_level():
    rng = np.random.default_rng(0)
    x = ((rng.integers(0, 40, (1, 32, 32)) - 20.0) / 7.5).astype(np.float32)  # normalised grey levels
    ex = cosdd.prepare({"input": x}, rng, cosdd.COSDDOptions(likelihood="dequantized"))
    assert cosdd.grey_step(x) == pytest.approx(1 / 7.5, rel=1e-4)
    d = ex["noisy"] - x
    assert np.abs(d).max() <= 0.5 / 7.5 + 1e-6 and d.std() > 0.1 / 7.5
    np.testing.assert_array_equal(ex["input"], x)
    smooth = rng.normal(size=(1, 32, 32)).astype(np.float32)
    assert cosdd.grey_step(smooth) == 0
    np.testing.assert_array_equal(cosdd.prepare({"input": smooth}, rng, cosdd.COSDDOptions())["noisy"], smooth)


def test_binned_patches_carry_their_grey_level_and_a_clip_level_only_where_pixels_pile_up():
    rng = np.random.default_rng(0)
    raw = np.maximum(rng.integers(-30, 40, (1, 32, 32)), 0)  # 8-bit-like: about 43% clipped to 0
    x = ((raw - 12.0) / 7.5).astype(np.float32)
    ex = cosdd.prepare({"input": x}, rng, cosdd.COSDDOptions())
    np.testing.assert_array_equal(ex["noisy"], x)  # not dequantised
    assert ex["half"].shape == (1, 1, 1) and float(ex["half"].item()) == pytest.approx(0.5 / 7.5, rel=1e-4)
    np.testing.assert_array_equal(ex["censored"], raw == 0)
    spread = ((rng.integers(0, 4000, (1, 32, 32)) - 12.0) / 7.5).astype(np.float32)  # its minimum is rare
    assert not cosdd.prepare({"input": spread}, rng, cosdd.COSDDOptions())["censored"].any()
    smooth = rng.normal(size=(1, 32, 32)).astype(np.float32)
    ex = cosdd.prepare({"input": smooth}, rng, cosdd.COSDDOptions())
    assert float(ex["half"].item()) == 0 and not ex["censored"].any()  # not integers: the density
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, cosdd.COSDDOptions(**SMALL))
    example = cosdd.prepare({"input": x}, rng, cosdd.COSDDOptions())
    batch = {k: torch.from_numpy(np.stack([v])) for k, v in example.items()}
    nll, _, _ = cosdd.elbo_terms(nets, batch, record=True)
    assert float(nll) >= 0  # a probability per pixel, not a density
    # packages written before `likelihood` load with what they trained with
    assert cosdd.COSDDOptions(dequantize=True).likelihood == "dequantized"
    assert cosdd.COSDDOptions.model_validate({"dequantize": False}).likelihood == "continuous"


def test_sampled_radius_is_the_encoder_and_signal_decoders_reach():
    """The radius measured on a small twin holds for the real nets: the gradient of the centre
    output is zero beyond it and, for some phase, nonzero at it. By autograd, not by moving an
    input: at the radius the dependence can be ~1e-19, which rounding hides on some CPUs."""
    options = cosdd.COSDDOptions(**SMALL)
    torch.manual_seed(0)
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, options)
    radius = cosdd.sampled_radius(nets)
    enc, dec = nets["encoder"].double(), nets["signal_decoder"].double()
    f = enc.factor
    x = torch.randn(1, 1, f, 4 * radius, dtype=torch.float64, requires_grad=True)
    out = dec(enc(x, noise=lambda level, shape, like: torch.ones(shape, dtype=like.dtype))[0])
    reached = False
    for c in range(2 * radius // f * f, 2 * radius // f * f + f):
        (grad,) = torch.autograd.grad(out[..., c].sum(), x, retain_graph=True)
        cols = grad.abs().sum((0, 1, 2))
        assert not cols[: c - radius].any() and not cols[c + radius + 1:].any(), c
        reached |= bool(cols[c - radius] > 0 or cols[c + radius] > 0)
    assert reached


def test_sampled_prediction_is_the_mean_of_keyed_samples():
    options = cosdd.COSDDOptions(**SMALL, prediction="sampled", samples=4)
    torch.manual_seed(0)
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, options)
    x = torch.randn(2, 1, 16, 24)
    origins = torch.tensor([[0, 0, 0], [1, 0, 8]])
    with torch.no_grad():
        a, b = cosdd.predict(nets, x, options, origins), cosdd.predict(nets, x, options, origins)
        keyed = cosdd.signal_samples(nets, x, 4, origins=origins, seed=cosdd.SAMPLE_SEED)
        other = cosdd.predict(nets, x, options, origins + torch.tensor([[0, 0, 4]]))
        torch.manual_seed(1)
        c = cosdd.signal_samples(nets, x, 4)  # unkeyed draws
    assert a.shape == x.shape and torch.equal(a, b) and torch.equal(a, keyed) and not torch.equal(a, c)
    assert not torch.equal(a, other)  # the noise moves with the tile
    assert cosdd.METHOD.tile_origins and cosdd.COSDDOptions(samples="7").samples == 7
    assert cosdd.factor(nets, options) == 4 and cosdd.receptive_radius(nets, options) == cosdd.sampled_radius(nets)


@pytest.fixture(scope="module")
def cosdd_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cosdd")
    data, _ = smooth_volume((3, 64, 72))
    src = write_zarr(root / "in.zarr", data, (1, 32, 32), "SYX")
    bd.train(src, root / "model", method="cosdd", progress=False, options=SMALL, **TINY)
    return root, src, data


@pytest.fixture(scope="module")
def rough_cosdd(tmp_path_factory, cosdd_model):
    root, _, data = cosdd_model
    return rough_copy(root / "model", tmp_path_factory.mktemp("rough-cosdd") / "model"), data


def test_package_travels_with_every_net(cosdd_model):
    root, _, data = cosdd_model
    model = bd.load_model(root / "model")
    assert set(model.nets) == {"encoder", "ar_decoder", "signal_decoder", "direct_denoiser"}
    assert model.receptive_radius == model.nets["direct_denoiser"].receptive_radius
    assert cosdd.noise_direction(model.nets) in ("x", "y")  # the volume's direction was recorded
    assert float(model.nets["encoder"].kl_per_pixel) >= 0  # measured in training
    assert int(model.nets["signal_decoder"].offset_batches) > 0  # measured in the distillation
    y = predict_array(data, with_options(model, {"prediction": "sampled", "samples": 2}))
    assert y.shape == data.shape and np.isfinite(y).all()


def test_samples_alone_asks_for_the_sampled_path(cosdd_model, tmp_path, capsys):
    """The issue's reference path is `predict --option samples=100`: `samples` given without
    `prediction` selects the sampled path (the direct one has no samples); with
    `prediction=direct` beside it, direct stays."""
    root, src, _ = cosdd_model
    model = bd.load_model(root / "model")
    assert dict(prediction_options(model, {"samples": "2"})) == {"prediction": "sampled", "samples": 2}
    assert dict(prediction_options(model, {"samples": "2", "prediction": "direct"}))["prediction"] == "direct"
    outs = {}
    for name, options in (("direct", []), ("alone", ["samples=2"]), ("both", ["prediction=sampled", "samples=2"])):
        out = tmp_path / f"{name}.zarr"
        flags = [a for o in options for a in ("--option", o)]
        assert main(["predict", src, "--model", str(root / "model"), "--out", str(out), "--cluster", "threads",
                     "--quiet", *flags]) == 0, capsys.readouterr().err
        outs[name] = zarr.open_array(str(out), mode="r")[...]
    np.testing.assert_array_equal(outs["alone"], outs["both"])
    assert not np.allclose(outs["alone"], outs["direct"])


@pytest.mark.parametrize("in_chunks, out_chunks, tile", [((1, 13, 17), None, 16), ((2, 64, 72), (1, 24, 40), 8)])
def test_direct_denoiser_blockwise_equals_whole(tmp_path, rough_cosdd, in_chunks, out_chunks, tile):
    model_dir, data = rough_cosdd
    src = write_zarr(tmp_path / "in.zarr", data, in_chunks, "SYX")
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", chunks=out_chunks, tile=tile,
               block_voxels=2000, progress=False)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert_exact(out, predict_whole(data, for_inference(bd.load_model(model_dir))), data)


def test_direct_denoiser_halo_below_the_radius_is_not_exact(tmp_path, rough_cosdd):
    model_dir, data = rough_cosdd
    model = bd.load_model(model_dir)
    src = write_zarr(tmp_path / "in.zarr", data, (2, 64, 72), "SYX")
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", chunks=(1, 24, 40), tile=8,
               block_voxels=2000, progress=False, halo=short_halo(model), inexact=True)
    assert_not_exact(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...],
                     predict_whole(data, for_inference(model)))


SAMPLED = {"prediction": "sampled", "samples": 3}


@pytest.fixture(scope="module")
def wide_data():
    """Planes wide enough that tiles with the sampled path's halo (48) do not cover them."""
    return smooth_volume((2, 136, 152))[0]


@pytest.mark.parametrize("in_chunks, out_chunks, tile", [((1, 29, 37), None, 16), ((2, 136, 152), (1, 40, 56), 24)])
def test_sampled_prediction_blockwise_equals_whole(tmp_path, rough_cosdd, wide_data, in_chunks, out_chunks, tile):
    """prediction=sampled keys its latent noise by global voxel coordinates: blockwise through
    Zarr on disk equals one whole-image pass per plane (same seed, same samples)."""
    model_dir, _ = rough_cosdd
    data = wide_data
    model = with_options(bd.load_model(model_dir), SAMPLED)
    assert model.receptive_radius == cosdd.sampled_radius(model.nets) and model.factor == 4
    plan = plan_for(model, data.shape, "SYX", tile=tile)
    assert max(plan.input_shape[1:]) < min(data.shape[1:])  # tiles really cut the planes
    src = write_zarr(tmp_path / "in.zarr", data, in_chunks, "SYX")
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", chunks=out_chunks, tile=tile,
               block_voxels=6000, progress=False, options=SAMPLED)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert_exact(out, predict_whole(data, for_inference(model)), data)


def test_sampled_halo_below_the_radius_is_not_exact(tmp_path, rough_cosdd, wide_data):
    """Half the measured radius: the outermost voxels of the sampled path's reach weigh little
    (3 voxels short of it moved the output by ~1e-6 of its spread), half of it is a seam."""
    model_dir, _ = rough_cosdd
    data = wide_data
    model = with_options(bd.load_model(model_dir), SAMPLED)
    src = write_zarr(tmp_path / "in.zarr", data, (2, 136, 152), "SYX")
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", chunks=(1, 40, 56), tile=24,
               block_voxels=6000, progress=False, halo=short_halo(model, by=model.receptive_radius // 2),
               inexact=True, options=SAMPLED)
    assert_not_exact(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...],
                     predict_whole(data, for_inference(model)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("options", [{"prediction": "direct"}, SAMPLED])
def test_gpu_tiles_equal_the_cpu_whole_image(tmp_path, rough_cosdd, wide_data, options):
    """On a GPU both paths tile exactly against the CPU's whole-image pass: the keyed latent
    noise is the same numbers on either device, and fp32 is true fp32 there."""
    model_dir, _ = rough_cosdd
    data = wide_data
    src = write_zarr(tmp_path / "in.zarr", data, (1, 40, 56), "SYX")
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", tile=24, block_voxels=6000,
               progress=False, options=options, device="cuda")
    cpu = with_options(bd.load_model(model_dir, device="cpu"), options)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert_exact(out, predict_whole(data, for_inference(cpu)), data)


def test_kl_per_pixel_is_recorded_and_a_collapse_warned_once_past_the_warm_up(monkeypatch):
    options = cosdd.COSDDOptions(**SMALL, kl_warmup=2, direction="x")  # random data: no direction to find
    torch.manual_seed(0)
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, options)
    for net in nets.values():
        net.train()
    batch = _batch(options, n=3)
    torch.manual_seed(1)
    kl = cosdd.elbo_terms(nets, batch)[1].detach()
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cosdd.vae_loss(nets, batch, options)  # a healthy KL: no warning
        assert float(nets["encoder"].kl_per_pixel) == pytest.approx(float(kl), rel=1e-5)
        monkeypatch.setattr(cosdd, "COLLAPSE_KL", float(kl) * 10)
        cosdd.vae_loss(nets, batch, options)  # step 1 of a 2-step warm-up: the KL is small by design
    with pytest.warns(UserWarning, match="collapsed") as caught:
        for _ in range(3):
            cosdd.vae_loss(nets, batch, options)
    assert sum("collapsed" in str(w.message) for w in caught) == 1  # once, not at every step


def test_the_kl_warms_up_over_training_steps_and_validation_weighs_it_fully():
    """A training step's loss is NLL + w KL + signal-decoder MSE with w = (step + 1) / kl_warmup
    up to 1, the step counted in the encoder's ``train_steps`` (saved with the weights);
    evaluation gives the full ELBO and counts nothing."""
    options = cosdd.COSDDOptions(**SMALL, kl_warmup=4)
    torch.manual_seed(0)
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, options)
    batch = _batch(options)
    enc = nets["encoder"]
    assert "train_steps" in enc.state_dict()
    for net in nets.values():
        net.train()
    for step in range(6):
        torch.manual_seed(step)
        nll, kl, sd = cosdd.elbo_terms(nets, batch)
        torch.manual_seed(step)
        loss = cosdd.vae_loss(nets, batch, options)
        assert float(loss) == pytest.approx(float(nll + min(1.0, (step + 1) / 4) * kl + sd), rel=1e-5), step
        assert int(enc.train_steps) == step + 1
    for net in nets.values():
        net.eval()
    torch.manual_seed(9)
    nll, kl, sd = cosdd.elbo_terms(nets, batch)
    torch.manual_seed(9)
    assert float(cosdd.vae_loss(nets, batch, options)) == pytest.approx(float(nll + kl + sd), rel=1e-5)
    assert int(enc.train_steps) == 6
    assert cosdd.kl_weight(0, 0) == 1.0


@torch.no_grad()
def test_coordinate_keyed_latent_noise_makes_tiles_equal_the_whole_image():
    """The sampled path with noise keyed by global coordinates: two tiles with a halo of the
    measured radius give the whole image's values exactly (what ``prediction=sampled`` does with
    the tile origins ``infer`` passes); with per-call noise they do not."""
    options = cosdd.COSDDOptions(**SMALL)
    torch.manual_seed(0)
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, options)
    radius, f = cosdd.sampled_radius(nets), nets["encoder"].factor
    halo = -(-radius // f) * f
    width, cut = 2 * halo + 3 * f, halo + f  # the second tile's core starts at `cut`
    x = torch.randn(1, 1, 2 * f, width)
    plane = 3  # a leading key, e.g. the S index
    whole = cosdd.signal_samples(nets, x, 3, origins=torch.tensor([[plane, 0, 0]]), seed=7)
    lo = cut - halo
    tile = cosdd.signal_samples(nets, x[..., lo:], 3, origins=torch.tensor([[plane, 0, lo]]), seed=7)
    err = float((tile[..., halo:] - whole[..., cut:]).abs().max())
    spread = float(whole.max() - whole.min())
    assert err <= 1e-5 * spread, (err, spread)
    left = cosdd.signal_samples(nets, x[..., :cut + halo], 3, origins=torch.tensor([[plane, 0, 0]]), seed=7)
    assert float((left[..., :cut] - whole[..., :cut]).abs().max()) <= 1e-5 * spread
    torch.manual_seed(3)
    unkeyed = cosdd.signal_samples(nets, x[..., lo:], 3)
    assert float((unkeyed[..., halo:] - whole[..., cut:]).abs().max()) > 1e-3 * spread
    other = cosdd.signal_samples(nets, x, 3, origins=torch.tensor([[plane + 1, 0, 0]]), seed=7)
    assert not torch.equal(other, whole)  # another plane draws other noise
    # the keyed draws are standard normal
    from bigdenoise.nets.lvae import keyed_normal
    z = keyed_normal([torch.arange(200000)])
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01


def test_the_methods_own_rate_and_batch_are_the_defaults_and_explicit_ones_win():
    from bigdenoise.config import make_config

    assert make_config(method="cosdd", axes="SYX").lr == 2e-3
    assert make_config(method="cosdd", axes="SYX", lr=1e-3).lr == 1e-3
    assert make_config(method="n2v", axes="SYX").lr == 4e-4
    assert make_config(method="cosdd", axes="SYX").batch_size == 8
    assert make_config(method="cosdd", axes="SYX", batch_size=16).batch_size == 16
    assert make_config(method="n2v", axes="SYX").batch_size == 16


def test_the_vae_stage_steps_under_adamax_and_the_distillation_under_adam(tmp_path, monkeypatch):
    """The authors train the VAE with Adamax (under Adam two of three Hagen seeds ended flat), here
    at twice the configured rate; the distillation under Adam at the configured rate. Each
    optimiser class is watched stepping: it must carry exactly its stage's parameters, at its rate
    (the largest seen: the distillation's cosine schedule only lowers it)."""
    stepped: dict[str, int] = {}
    rates: dict[str, float] = {}
    for cls in (torch.optim.Adam, torch.optim.Adamax):
        def spy(self, *args, _step=cls.step, _name=cls.__name__, **kwargs):
            stepped[_name] = sum(p.numel() for g in self.param_groups for p in g["params"])
            rates[_name] = max(rates.get(_name, 0.0), *(g["lr"] for g in self.param_groups))
            return _step(self, *args, **kwargs)
        monkeypatch.setattr(cls, "step", spy)
    data, _ = smooth_volume((2, 64, 64))
    src = write_zarr(tmp_path / "in.zarr", data, (1, 32, 32), "SYX")
    nets = bd.train(src, tmp_path / "model", method="cosdd", progress=False, options=SMALL, **{**TINY, "steps": 4}).nets
    size = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    assert stepped == {"Adamax": size["encoder"] + size["ar_decoder"] + size["signal_decoder"],
                       "Adam": size["direct_denoiser"]}
    assert rates == pytest.approx({"Adamax": 2 * 2e-3, "Adam": 2e-3})


def test_the_distillation_starts_from_the_vae_stages_best_weights(tmp_path):
    """The VAE stage hands the distillation its weights with the best validation loss, not its
    last ones (a late bad step could leave a flat signal decoder to distil). The encoder counts
    its training steps in a buffer saved with the weights, so the package's count is the step of
    the weights it kept: the VAE stage's best validation step, here earlier than its last step
    (at a rate far too high the weights blow up after the first step, whose validation loss
    stays the lowest by orders of magnitude)."""
    from bigdenoise.history import HISTORY_FILE, read_history

    data, _ = smooth_volume((2, 64, 64))
    src = write_zarr(tmp_path / "in.zarr", data, (1, 32, 32), "SYX")
    model = bd.train(src, tmp_path / "model", method="cosdd", progress=False, options=SMALL, lr=0.3,
                     **{**TINY, "steps": 10, "val_every": 1})
    vae = [row for row in read_history(tmp_path / "model" / HISTORY_FILE) if row["stage"] == "vae"]
    best = min(vae, key=lambda row: row["val_loss"])["step"]
    assert best < vae[-1]["step"], "the setting must make the last VAE step not the best"
    assert int(model.nets["encoder"].train_steps) == best


def test_zyx_volumes_train_and_predict_2d_nets_plane_by_plane(tmp_path):
    """On ZYX (and TZYX) volumes the nets are 2D over YX, each Z plane one image: training reads
    single planes, prediction runs plane by plane, exactly when tiled (the sampled path keys its
    noise by the plane too), and the model predicts SYX data just as it does ZYX data."""
    data, _ = smooth_volume((3, 64, 72), seed=1)
    src = write_zarr(tmp_path / "in.zarr", data, (1, 32, 32), "ZYX")
    bd.train(src, tmp_path / "model", method="cosdd", progress=False, options=SMALL, **TINY)
    model_dir = rough_copy(tmp_path / "model", tmp_path / "rough")
    model = bd.load_model(model_dir)
    assert model.spatial_axes == "YX" and model.stack_axis == "Z" and model.channel_halo == 0
    assert all(getattr(net, "ndim", 2) == 2 for net in model.nets.values())
    for options in ({}, SAMPLED):
        m = with_options(model, options)
        whole = predict_whole(data, for_inference(m))
        bd.predict(src, model_dir, tmp_path / f"out{len(options)}.zarr", cluster="threads", chunks=(1, 24, 40),
                   tile=16, block_voxels=3000, progress=False, options=options or None)
        assert_exact(zarr.open_array(str(tmp_path / f"out{len(options)}.zarr"), mode="r")[...], whole, data)
        np.testing.assert_array_equal(predict_whole(data, for_inference(m), axes="SYX"), whole)
    tzyx = np.stack([data, data[::-1]])
    sampled = with_options(model, SAMPLED)
    y = predict_array(tzyx, sampled, axes="TZYX", tile=16)
    assert y.shape == tzyx.shape
    assert_exact(y, predict_whole(tzyx, for_inference(sampled), axes="TZYX"), tzyx)


def test_distillation_warns_when_the_signal_decoder_is_flat():
    """A VAE that has not learnt the signal gives flat distillation targets (the recorded 1-core
    benchmark: 2 of 3 seeds, 13 dB, no KL warning): training says so; a decoder whose output
    varies at the input's scale, or evaluation, does not warn."""
    options = cosdd.COSDDOptions(**SMALL)
    torch.manual_seed(0)
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, options)
    batch = {"input": torch.randn(2, 1, 16, 16) + torch.tensor([-3.0, 3.0]).view(2, 1, 1, 1)}  # targets keep these
    last = nets["signal_decoder"].net[-1]
    with torch.no_grad():
        last.weight.zero_()  # the output is the bias: flat
    nets["direct_denoiser"].train()
    with pytest.warns(UserWarning, match="nearly flat"):
        cosdd.distill_loss(nets, batch, options)
    nets["direct_denoiser"].eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cosdd.distill_loss(nets, batch, options)  # evaluation (validation) never warns
        nets["direct_denoiser"].train()
        with torch.no_grad():
            torch.nn.init.normal_(last.weight, std=10.0)  # varies at the input's scale
        cosdd.distill_loss(nets, batch, options)


def test_distillation_targets_keep_each_input_patchs_mean():
    """The signal decoder of a short run can be off in level (BSD68: -0.013 of the range): the
    direct denoiser learns each patch's mean from the input, not from the decoder."""
    options = cosdd.COSDDOptions(**SMALL)
    torch.manual_seed(0)
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, options)
    with torch.no_grad():
        nets["signal_decoder"].net[-1].bias.add_(3.0)  # a decoder off in level
    x = torch.randn(3, 1, 16, 16) + torch.tensor([-1.0, 0.0, 2.0]).view(3, 1, 1, 1)
    with torch.no_grad():
        torch.manual_seed(1)
        target = cosdd.distill_target(nets, x, 2)
        torch.manual_seed(1)  # the same latent draws
        raw = cosdd.signal_samples(nets, x, 2)
    torch.testing.assert_close(target.mean((2, 3)), x.mean((2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(target - target.mean((2, 3), keepdim=True), raw - raw.mean((2, 3), keepdim=True),
                               atol=1e-5, rtol=0)  # only the level moves


def test_the_sampled_path_removes_the_level_error_the_distillation_measured():
    """The distillation's training steps keep the running mean of their targets' shift (a short
    run's decoder sat +0.030 of the range above its inputs on the strongest stripes: 0.6 dB of
    the sampled path); validation leaves it; the sampled prediction subtracts it; a package
    written without it loads with 0."""
    options = cosdd.COSDDOptions(**SMALL, prediction="sampled", samples=2)
    torch.manual_seed(0)
    nets = cosdd.build(NetConfig(depth=1, features=4), 2, options)
    decoder = nets["signal_decoder"]
    with torch.no_grad():
        decoder.net[-1].bias.add_(3.0)  # a decoder off in level
    batches = [{"input": torch.randn(2, 1, 16, 16) + level} for level in (-1.0, 2.0)]
    shifts = []
    with torch.no_grad():
        for batch in batches:
            torch.manual_seed(1)
            raw = cosdd.signal_samples(nets, batch["input"], options.distill_samples)
            shifts.append(float((raw.mean((2, 3)) - batch["input"].mean((2, 3))).mean()))
    nets["direct_denoiser"].train()
    for batch in batches:
        torch.manual_seed(1)  # the same latent draws
        cosdd.distill_loss(nets, batch, options)
    assert int(decoder.offset_batches) == 2 and abs(float(decoder.offset) - np.mean(shifts)) < 1e-5
    nets["direct_denoiser"].eval()
    cosdd.distill_loss(nets, batches[0], options)  # validation
    assert int(decoder.offset_batches) == 2
    x, origins = batches[1]["input"], torch.zeros((2, 3), dtype=torch.int64)
    with torch.no_grad():
        keyed = cosdd.signal_samples(nets, x, 2, origins=origins, seed=cosdd.SAMPLE_SEED)
        torch.testing.assert_close(cosdd.predict(nets, x, options, origins), keyed - decoder.offset, atol=1e-6, rtol=0)
    old = {k: v for k, v in decoder.state_dict().items() if not k.startswith("offset")}
    fresh = cosdd.build(NetConfig(depth=1, features=4), 2, options)["signal_decoder"]
    fresh.load_state_dict(old, strict=True)
    assert float(fresh.offset) == 0 and int(fresh.offset_batches) == 0


def test_the_direct_denoiser_has_no_batch_norm_by_default():
    """With batch norm the distilled U-Net's evaluation-mode outputs sat off its targets by a
    global offset that changed from run to run (BSD68: -0.039 to +0.012 of the range)."""
    config = make_config(method="cosdd", axes="YX")
    assert config.net.batch_norm is False
    direct = cosdd.build(config.net, 2, config.method_options)["direct_denoiser"]
    x = torch.randn(4, 1, 32, 32) * 3 + 1
    with torch.no_grad():
        assert torch.equal(direct.train()(x), direct.eval()(x))
    assert make_config(method="cosdd", axes="YX", net={"batch_norm": True}).net.batch_norm  # still settable


def test_the_encoder_keeps_its_activation_and_an_older_package_loads_with_mish():
    """SiLU by default, Mish by option; the activation travels with the weights, and weights
    saved before it did (no ``activation_code``) load with Mish, the function they were trained
    with, even into an encoder built with SiLU."""
    net = NetConfig(batch_norm=False)
    silu = cosdd.build(net, 2, cosdd.COSDDOptions(**SMALL))["encoder"]
    mish = cosdd.build(net, 2, cosdd.COSDDOptions(**SMALL, activation="mish"))["encoder"]
    assert (silu.activation, mish.activation) == ("silu", "mish")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        reference = mish(x, mean=True)[0]
        weights = mish.state_dict()
        silu.load_state_dict({**weights, "activation_code": torch.tensor(1)})
        assert silu.activation == "silu" and not torch.allclose(silu(x, mean=True)[0], reference)
        silu.load_state_dict({k: v for k, v in weights.items() if k != "activation_code"})
        assert silu.activation == "mish"
        torch.testing.assert_close(silu(x, mean=True)[0], reference)
