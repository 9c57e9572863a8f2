"""D-BSN (methods/dbsn.py, nets/blindspot.py): the blind spot, the receptive radius, the
posterior, the loss bound, and exact tiling of the posterior and distilled paths."""

import json
import math

import numpy as np
import pytest
import torch
import zarr

import bigdenoise as bd
from bigdenoise import api, infer
from bigdenoise.cli import main
from bigdenoise.errors import ConfigError
from bigdenoise.config import NetConfig, make_config
from bigdenoise.data import PatchBatches
from bigdenoise.infer import predict_whole
from bigdenoise.normalize import normalize
from bigdenoise.sampling import TRAIN, make_sampler
from bigdenoise.train import estimate_stats
from bigdenoise.volume import open_volume
from bigdenoise.methods import dbsn, get_method
from bigdenoise.nets import blindspot
from bigdenoise.nets.blindspot import BlindSpotNet
from bigdenoise.package import with_options

from conftest import assert_exact, assert_not_exact, rough_copy, short_halo, smooth_volume, write_zarr

TINY_DBSN = dict(steps=4, val_every=4, batch_size=2, val_patches=2, stats_chunks=4,
                 net={"depth": 2, "features": 4}, options={"width": 4, "blocks": 2})


def _tiny_bsn(ndim, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("width", 8)
    return BlindSpotNet(ndim, 1, **kw).double()


def _centre_gradients(net, ndim, n, batch=3, seed=1):
    """|d out_c / d y| summed over a batch of random inputs, for out = mu and sigma_mu^2 at the centre c."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 1) + (n,) * ndim, generator=g, dtype=torch.float64, requires_grad=True)
    mu, var_mu = net(x)
    c = (slice(None), 0) + (n // 2,) * ndim
    g_mu, = torch.autograd.grad(mu[c].sum(), x, retain_graph=True)
    g_var, = torch.autograd.grad(var_mu[c].sum(), x)
    return g_mu.abs().sum(0)[0], g_var.abs().sum(0)[0]


def _assert_blind(net, ndim):
    n = 2 * net.receptive_radius + 3
    centre = (n // 2,) * ndim
    for grad in _centre_gradients(net, ndim, n):
        assert grad[centre].item() == 0.0, "the output depends on its own voxel: the blind spot leaks"
        for axis in range(ndim):  # the nearest neighbours are seen
            for step in (-1, 1):
                near = list(centre)
                near[axis] += step
                assert grad[tuple(near)].item() > 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_blind_spot_by_autograd_in_train_and_eval_mode_and_after_an_optimiser_step(ndim):
    method = get_method("dbsn")
    options = method.options(width=8)
    torch.manual_seed(0)
    nets = {k: v.double() for k, v in method.build(NetConfig(depth=1, features=4), ndim, options).items()}
    net = nets["bsn"]
    for mode in ("train", "eval"):
        net.train(mode == "train")
        _assert_blind(net, ndim)
    net.train()
    opt = torch.optim.Adam([p for k in ("bsn", "noise") for p in nets[k].parameters()], lr=0.05)
    y = torch.randn((2, 1) + (16,) * ndim, dtype=torch.float64)
    for stage_loss in (dbsn.mu_loss, dbsn.joint_loss):
        opt.zero_grad()
        stage_loss(nets, {"input": y}, options).backward()
        opt.step()
    for mode in ("train", "eval"):
        net.train(mode == "train")
        _assert_blind(net, ndim)
    for conv in (b[0] for b in net.branches):  # the centre tap the convolution applies is zero
        assert isinstance(conv, (blindspot.MaskedConv2d, blindspot.MaskedConv3d))
        assert torch.count_nonzero((conv.weight * conv.mask)[(..., ) + tuple(k // 2 for k in conv.kernel_size)]) == 0
    # loading arbitrary weights (a package from a stranger, rough_copy) cannot unmask it
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    _assert_blind(net, ndim)


def test_leaking_configurations_are_refused_and_would_leak():
    with pytest.raises(ValueError, match="d >= 3"):
        BlindSpotNet(2, branches=((5, 2),))
    with pytest.raises(ConfigError, match="blind voxel"):
        make_config(method="dbsn", axes="YX", options={"branches": "3:2,5:2"})
    assert make_config(method="dbsn", axes="YX", options={"branches": "3:2,7:4"}).method_options.branches == (
        (3, 2), (7, 4))
    # the refusal matters: built anyway, (k=5, d=2) sees the centre through offset a=2 + d*(-1)
    checked = blindspot.check_branches
    try:
        blindspot.check_branches = lambda branches, block_kernel: tuple(tuple(b) for b in branches)
        leaky = _tiny_bsn(2, branches=((5, 2),), blocks=1)
    finally:
        blindspot.check_branches = checked
    n = 2 * leaky.receptive_radius + 3
    g_mu, _ = _centre_gradients(leaky, 2, n)
    assert g_mu[n // 2, n // 2] > 0


def test_awgn_options():
    assert make_config(method="dbsn", axes="YX", options={"noise": "awgn"}).method_options.noise == "awgn"
    with pytest.raises(ConfigError, match="noise_level is a known level of noise=awgn"):
        make_config(method="dbsn", axes="YX", options={"noise_level": 0.1})
    method = get_method("dbsn")
    assert method.prepass(method.options(noise="awgn", prediction="posterior")) is dbsn._awgn_statistic
    for options in ({"noise": "awgn"}, {"noise": "awgn", "prediction": "posterior", "noise_level": 0.2},
                    {"prediction": "posterior"}):
        assert method.prepass(method.options(**options)) is None, options


@pytest.mark.parametrize("ndim, config", [
    (2, {}),
    (3, {}),
    (2, {"blocks": 1, "branches": ((3, 2),), "block_kernel": 5}),
    (2, {"blocks": 3, "branches": ((5, 3), (3, 2))}),
])
def test_computed_receptive_radius_is_the_measured_support(ndim, config):
    net = _tiny_bsn(ndim, **config)
    r = net.receptive_radius
    expected = max(k // 2 + net.blocks * d * (net.block_kernel // 2) for k, d in net.branch_specs)
    assert r == expected
    n = 2 * r + 5
    g = torch.Generator().manual_seed(2)
    x = torch.randn((4, 1) + (n,) * ndim, generator=g, dtype=torch.float64)
    c = (slice(None), 0) + (n // 2,) * ndim
    with torch.no_grad():
        base = net(x)
        for axis in range(ndim):
            for offset, changes in ((r, True), (-r, True), (r + 1, False), (-(r + 1), False)):
                y = x.clone()
                at = [n // 2] * ndim
                at[axis] += offset
                y[(slice(None), 0) + tuple(at)] += 10.0
                out = net(y)
                moved = any(bool((o[c] != b[c]).any()) for o, b in zip(out, base))
                assert moved == changes, f"axis {axis}, offset {offset}: changed={moved}, radius {r}"


def test_the_method_reports_the_radius_of_the_path_it_predicts_with():
    method = get_method("dbsn")
    nets = method.build(NetConfig(depth=2, features=4), 2, method.options())
    radius = {p: method.receptive_radius(nets, method.options(prediction=p)) for p in ("distilled", "posterior", "mu")}
    assert radius == {"distilled": nets["unet"].receptive_radius, "posterior": nets["bsn"].receptive_radius,
                      "mu": nets["bsn"].receptive_radius}
    assert method.factor(nets, method.options()) == nets["unet"].factor == 4


def test_the_default_student_computes_the_same_function_in_training_and_at_prediction():
    """The distilled U-Net has no batch norm by default: the function distillation fits in
    training mode is the one prediction runs (with batch norm they were ten times apart)."""
    config = make_config(method="dbsn", axes="YX")
    assert config.net.batch_norm is False and config.net.features == 8
    torch.manual_seed(0)
    student = get_method("dbsn").build(config.net, 2, dbsn.DBSNOptions())["unet"]
    x = torch.randn(4, 1, 32, 32) * 3 + 1
    with torch.no_grad():
        trained = student.train()(x)
        predicted = student.eval()(x)
    assert torch.equal(trained, predicted)
    assert make_config(method="dbsn", axes="YX", net={"batch_norm": True}).net.batch_norm  # still settable


def test_posterior_closed_form_and_limits():
    g = torch.Generator().manual_seed(0)
    y, mu = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
    var_mu = torch.rand(1000, generator=g, dtype=torch.float64) + 0.01
    var_n = torch.rand(1000, generator=g, dtype=torch.float64) + 0.01
    # product of the Gaussians N(x; mu, var_mu) N(y; x, var_n): precision-weighted mean
    expected = (mu / var_mu + y / var_n) / (1 / var_mu + 1 / var_n)
    torch.testing.assert_close(dbsn.posterior_mean(y, mu, var_mu, var_n), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dbsn.posterior_mean(y, mu, var_mu, var_n * 1e-12), y, rtol=0, atol=1e-9)  # sigma_n -> 0
    torch.testing.assert_close(dbsn.posterior_mean(y, mu, var_mu * 0, var_n), mu, rtol=1e-15, atol=1e-15)  # sigma_mu = 0
    # Monte Carlo: x ~ N(mu, var_mu), y = x + N(0, var_n); the posterior's MSE is var_mu var_n / (var_mu + var_n)
    rng = np.random.default_rng(0)
    s_mu, s_n, m = 0.7, 0.5, 0.3
    x = m + s_mu * rng.standard_normal(400_000)
    yy = x + s_n * rng.standard_normal(x.size)
    est = dbsn.posterior_mean(torch.from_numpy(yy), torch.tensor(m), torch.tensor(s_mu**2), torch.tensor(s_n**2))
    mse = float(((est.numpy() - x) ** 2).mean())
    best = s_mu**2 * s_n**2 / (s_mu**2 + s_n**2)
    assert abs(mse - best) < 0.01 * best and mse < min(s_mu**2, s_n**2)


def test_constrained_loss_bounds_the_nll_and_equals_it_without_sigma_mu():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        y, mu = torch.randn(2, generator=g, dtype=torch.float64) * 3
        var_mu, var_n = torch.rand(2, generator=g, dtype=torch.float64) ** 3 * 5 + 1e-6
        args = [torch.tensor([v]) for v in (y, mu, var_mu, var_n)]
        nll, bound = dbsn.gaussian_nll(*args), dbsn.constrained_loss(*args)
        assert bound >= nll - 1e-12
        args[2] = torch.zeros(1, dtype=torch.float64)
        torch.testing.assert_close(dbsn.constrained_loss(*args), dbsn.gaussian_nll(*args), rtol=1e-15, atol=0)
    # the NLL is -log N(y; mu, var_mu + var_n) up to the constant log(2 pi) / 2
    y, mu, var = torch.tensor([1.3]), torch.tensor([0.2]), torch.tensor([0.7])
    logpdf = torch.distributions.Normal(mu, var.sqrt()).log_prob(y)
    torch.testing.assert_close(dbsn.gaussian_nll(y, mu, var * 0.4, var * 0.6), (-logpdf - 0.5 * math.log(2 * math.pi))[0])


@pytest.mark.parametrize("noise", ["pg", "hg", "awgn"])
def test_stages_train_what_they_say(noise):
    """mu trains the D-BSN only; variance leaves the features and mu untouched; distill only the U-Net."""
    method = get_method("dbsn")
    options = method.options(width=4, noise=noise)
    torch.manual_seed(0)
    nets = method.build(NetConfig(depth=1, features=4), 2, options)
    batch = {"input": torch.randn(2, 1, 16, 16)}
    assert [s.name for s in method.stages(options)] == ["mu", "variance", "joint", "distill"]
    assert [s.name for s in method.stages(method.options(variance_fraction=0))] == ["mu", "joint", "distill"]
    for stage in method.stages(options):
        for net in nets.values():
            net.zero_grad(set_to_none=True)
        stage.loss(nets, batch, options).backward()
        trained = {f"{k}.{n}" for k, net in nets.items() for n, p in net.named_parameters() if p.grad is not None}
        assert trained and all(t.split(".")[0] in stage.nets for t in trained), (stage.name, trained)
        if stage.name == "variance":
            assert all(t.startswith(("bsn.sigma_head", "noise.")) for t in trained)
            assert any(t.startswith("noise.") for t in trained)


def test_co_distillation_trains_the_u_net_and_leaves_the_teachers_gradients_as_they_were():
    """Stage joint with co_distill: the U-Net learns the posterior; the D-BSN's and the noise
    net's gradients are those of the joint loss alone (the target is detached)."""
    method = get_method("dbsn")
    on, off = method.options(width=4), method.options(width=4, co_distill=False)
    assert [s.nets for s in method.stages(on) if s.name == "joint"] == [("bsn", "noise", "unet")]
    assert [s.nets for s in method.stages(off) if s.name == "joint"] == [("bsn", "noise")]
    torch.manual_seed(0)
    nets = method.build(NetConfig(depth=1, features=4, batch_norm=False), 2, on)
    batch = {"input": torch.randn(2, 1, 16, 16)}
    grads = {}
    for name, options in (("on", on), ("off", off)):
        for net in nets.values():
            net.zero_grad(set_to_none=True)
        dbsn.joint_loss(nets, batch, options).backward()
        grads[name] = {f"{k}.{n}": p.grad.clone() for k, net in nets.items() for n, p in net.named_parameters()
                       if p.grad is not None}
    assert any(k.startswith("unet.") for k in grads["on"]) and not any(k.startswith("unet.") for k in grads["off"])
    for key, grad in grads["off"].items():
        torch.testing.assert_close(grads["on"][key], grad, rtol=0, atol=0)


_ROUGH = {}


def _rough_dbsn(tmp_path_factory, noise):
    """A tiny dbsn package (noise level ``noise``) trained a few steps, then given random He
    weights (conftest.rough_copy), and its data; built once per noise mode."""
    if noise not in _ROUGH:
        root = tmp_path_factory.mktemp(f"dbsn_{noise}")
        data, _ = smooth_volume((3, 64, 72), seed=4)
        src = write_zarr(root / "in.zarr", data, (1, 32, 32), "SYX")
        config = {**TINY_DBSN, "options": {**TINY_DBSN["options"], "noise": noise}}
        bd.train(src, root / "model", method="dbsn", progress=False, patch=(32, 32), **config)
        _ROUGH[noise] = rough_copy(root / "model", root / "rough"), data
    return _ROUGH[noise]


@pytest.mark.parametrize("noise, prediction", [("pg", "posterior"), ("hg", "posterior"), ("awgn", "posterior"),
                                               ("pg", "distilled")])
def test_tiled_equals_whole_and_a_short_halo_differs(tmp_path, tmp_path_factory, noise, prediction):
    model_dir, data = _rough_dbsn(tmp_path_factory, noise)
    model = with_options(bd.load_model(model_dir), {"prediction": prediction})
    assert model.options.noise == noise
    expected_radius = model.nets["bsn" if prediction == "posterior" else "unet"].receptive_radius
    assert model.receptive_radius == expected_radius
    ref = predict_whole(data, model)
    src = write_zarr(tmp_path / "in.zarr", data, (1, 13, 17), "SYX")
    common = dict(cluster="threads", progress=False, tile=16, block_voxels=2000, options={"prediction": prediction})
    bd.predict(src, model_dir, tmp_path / "out.zarr", **common)
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...], ref, data)
    summary = bd.predict(src, model_dir, tmp_path / "short.zarr", halo=short_halo(model), inexact=True, **common)
    assert summary["halo"][1:] == (short_halo(model),) * 2
    assert_not_exact(zarr.open_array(str(tmp_path / "short.zarr"), mode="r")[...], ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("noise, prediction", [("awgn", "posterior"), ("pg", "distilled")])
def test_gpu_tiles_equal_the_cpu_whole_image(tmp_path, tmp_path_factory, noise, prediction):
    """On a GPU the posterior (with awgn's whole-image pre-pass) and the distilled net tile
    exactly against the CPU's whole-image pass."""
    model_dir, data = _rough_dbsn(tmp_path_factory, noise)
    src = write_zarr(tmp_path / "in.zarr", data, (1, 13, 17), "SYX")
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", progress=False, tile=16, block_voxels=2000,
               options={"prediction": prediction}, device="cuda")
    cpu = with_options(bd.load_model(model_dir, device="cpu"), {"prediction": prediction})
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...], predict_whole(data, cpu), data)


@pytest.mark.parametrize("noise", ["pg", "awgn"])
def test_3d_posterior_tiled_equals_whole_and_a_short_halo_differs(tmp_path, noise):
    """ZYX: no sample axis, so awgn's pre-pass gives the whole volume one level."""
    data, _ = smooth_volume((12, 40, 36), seed=5)
    src = write_zarr(tmp_path / "train.zarr", data, (8, 16, 16), "ZYX")
    bd.train(src, tmp_path / "model", method="dbsn", progress=False, patch=(8, 16, 16),
             **{**TINY_DBSN, "net": {"depth": 1, "features": 4}, "options": {"width": 4, "blocks": 1, "noise": noise}})
    model_dir = rough_copy(tmp_path / "model", tmp_path / "rough")
    model = with_options(bd.load_model(model_dir), {"prediction": "posterior"})
    assert model.receptive_radius == model.nets["bsn"].receptive_radius == 5
    ref = predict_whole(data, model)
    src = write_zarr(tmp_path / "in.zarr", data, (5, 11, 9), "ZYX")
    common = dict(cluster="threads", progress=False, tile=(4, 8, 8), block_voxels=3000,
                  options={"prediction": "posterior"})
    bd.predict(src, model_dir, tmp_path / "out.zarr", **common)
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...], ref, data)
    bd.predict(src, model_dir, tmp_path / "short.zarr", halo=short_halo(model), inexact=True, **common)
    assert_not_exact(zarr.open_array(str(tmp_path / "short.zarr"), mode="r")[...], ref)


# --- awgn: one noise level per image, from a whole-volume pre-pass -------------------------------

def _three_noise_levels(seed=7):
    """SYX: three images of one smooth signal with noise of standard deviation 8, 30 and 90."""
    _, clean = smooth_volume((3, 64, 72), seed=seed)
    rng = np.random.default_rng(seed)
    sd = np.array([8.0, 30.0, 90.0])[:, None, None]
    return (clean + sd * rng.standard_normal(clean.shape)).astype(np.float32)


def test_awgn_levels_are_whole_image_means_and_tiles_without_the_prepass_differ(tmp_path, tmp_path_factory,
                                                                                 monkeypatch):
    model_dir, _ = _rough_dbsn(tmp_path_factory, "awgn")
    model = with_options(bd.load_model(model_dir), {"prediction": "posterior"})
    data = _three_noise_levels()
    roles = infer.model_axis_roles(model, "SYX")
    means = infer.image_means_of(data, model, roles)
    assert means.shape == (3,)
    x = normalize(data, model.stats)
    with torch.no_grad():  # each image's level: the statistic's mean over that whole image, in one call
        direct = [float(dbsn._awgn_statistic(model.nets, torch.from_numpy(x[s][None, None])).double().mean())
                  for s in range(3)]
    np.testing.assert_allclose(means, direct, rtol=1e-5)
    assert np.ptp(means) > 0.05 * means.mean(), "the images' levels should differ, or the test proves little"
    ref = predict_whole(data, model)
    src = write_zarr(tmp_path / "in.zarr", data, (1, 13, 17), "SYX")
    common = dict(cluster="threads", progress=False, tile=16, block_voxels=2000, options={"prediction": "posterior"})
    bd.predict(src, model_dir, tmp_path / "out.zarr", **common)
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...], ref, data)
    bd.predict(src, model_dir, tmp_path / "short.zarr", halo=short_halo(model), inexact=True, **common)
    assert_not_exact(zarr.open_array(str(tmp_path / "short.zarr"), mode="r")[...], ref)
    # break it: without the pre-pass every tile takes its own mean as its image's level
    monkeypatch.setattr(api, "image_statistic", lambda model: None)
    monkeypatch.setattr(infer, "image_statistic", lambda model: None)
    bd.predict(src, model_dir, tmp_path / "local.zarr", **common)
    assert_not_exact(zarr.open_array(str(tmp_path / "local.zarr"), mode="r")[...], ref)


def test_a_known_awgn_level_skips_the_prepass(tmp_path_factory):
    model_dir, data = _rough_dbsn(tmp_path_factory, "awgn")
    model = with_options(bd.load_model(model_dir), {"prediction": "posterior", "noise_level": "0.3"})
    assert model.options.noise_level == 0.3 and infer.image_statistic(model) is None
    y = torch.from_numpy(normalize(data, model.stats)[:1, None])
    with torch.no_grad():
        var_n = dbsn.noise_variance(model.nets, y, y, model.options)
    assert var_n.shape == (1, 1, 1, 1) and float(var_n) == pytest.approx(0.3)


# --- unpaired clean images (--clean) -------------------------------------------------------------

def _clean_batches(tmp_path, n=16, patch=(32, 32)):
    """A noisy SYX input and a clean volume of another shape (and scale), read as training does."""
    noisy, _ = smooth_volume((3, 64, 72), seed=1)
    _, clean = smooth_volume((2, 48, 80), seed=2)
    clean = clean * 1.5
    vols = {"input": open_volume(write_zarr(tmp_path / "noisy.zarr", noisy, (1, 32, 32), "SYX")),
            "clean": open_volume(write_zarr(tmp_path / "clean.zarr", clean.astype(np.float32), (1, 24, 40), "SYX"))}
    stats = estimate_stats(vols["input"], 4, 0)
    samplers = {k: make_sampler(v, patch, cache_bytes=2**24, active=4) for k, v in vols.items()}
    data = PatchBatches(vols, {"input": stats, "clean": stats}, samplers["input"], dbsn.prepare,
                        get_method("dbsn").options(), batch_size=n, seed=0, stream=TRAIN,
                        unpaired={"clean": samplers["clean"]})
    return data, samplers, stats, clean


def test_clean_patches_are_read_at_their_own_boxes_with_the_inputs_statistics(tmp_path):
    data, samplers, stats, clean = _clean_batches(tmp_path)
    batch = data.batch(0)
    assert set(batch) == {"input", "clean", "clean_noise"} and batch["clean"].shape == batch["input"].shape
    assert float(batch["clean"].mean()) == pytest.approx(float((clean.mean() - stats.mean) / stats.std), abs=0.5)
    noisy = data.volumes["input"]  # the noisy volume as its own "clean" one, with the input's sampler:
    same = PatchBatches({"input": noisy, "clean": noisy}, data.stats, samplers["input"], lambda s, r, o: s, None,
                        batch_size=1, seed=0, augment=False, unpaired={"clean": samplers["input"]})
    examples = [same.example(i) for i in range(8)]
    assert all(e["input"].shape == e["clean"].shape == (1, 32, 32) for e in examples)
    # ... its own random stream still puts the clean boxes elsewhere than the input's
    assert sum(not np.array_equal(e["input"], e["clean"]) for e in examples) >= 7
    noise = batch["clean_noise"].numpy()
    assert abs(noise.mean()) < 4 / math.sqrt(noise.size) and abs(noise.var() - 1) < 6 * math.sqrt(2 / noise.size)
    without = PatchBatches(data.volumes, data.stats, data.sampler, dbsn.prepare, data.options, batch_size=2, seed=0,
                           unpaired=data.unpaired, read=())  # stages that do not name it never read it
    assert set(without.batch(0)) == {"input"} and "clean" not in without.caches()
    assert [s.unpaired for s in get_method("dbsn").stages(data.options)] == [(), (), (), ("clean",)]


@pytest.mark.parametrize("noise", ["pg", "awgn"])
def test_synthetic_pairs_have_the_noise_level_the_model_learned(tmp_path, noise):
    data, _, _, _ = _clean_batches(tmp_path, n=24)
    options = get_method("dbsn").options(noise=noise)
    nets = get_method("dbsn").build(NetConfig(depth=1, features=4), 2, options)
    noise_net = nets["noise"]
    with torch.no_grad():  # a "learned" level that varies: with the signal (pg) or with the image (awgn)
        if noise == "pg":
            noise_net.net.weight.fill_(0.15 / dbsn.NOISE_GAIN)
            noise_net.net.bias.fill_(0.3 / dbsn.NOISE_GAIN)
        else:  # v = softplus(relu(y) - 1), whatever the other nets drew: brighter images are noisier
            first, second, last = (m for m in noise_net.net if isinstance(m, torch.nn.Conv2d))
            first.weight.fill_(1.0), first.bias.zero_()
            second.weight.fill_(1.0 / second.in_channels), second.bias.zero_()
            last.weight.fill_(1.0 / dbsn.NOISE_GAIN / last.in_channels), last.bias.fill_(-1.0 / dbsn.NOISE_GAIN)
    batch = data.batch(0)
    y, x = batch["input"], batch["clean"]
    with torch.no_grad():
        noisy = dbsn.synthetic_noisy(nets, x, batch["clean_noise"], y, options)
        level = noise_net(x) if noise == "pg" else dbsn.image_mean(noise_net(y)).expand_as(x)
    r, level = (noisy - x).numpy().ravel(), level.numpy().ravel()
    groups = np.array_split(np.argsort(x.numpy().ravel()), 4) if noise == "pg" else np.array_split(np.arange(r.size), 24)
    ratios = [float((r[g] ** 2).mean() / level[g].mean()) for g in groups]
    tolerance = 5 * math.sqrt(2 / min(len(g) for g in groups))
    assert all(abs(q - 1) < tolerance for q in ratios), (ratios, tolerance)
    spread = [level[g].mean() for g in groups]
    assert max(spread) > 2 * min(spread), "the level should vary, or the test cannot tell x, mu or y apart"


def test_distill_loss_weighs_the_pseudo_pairs_by_clean_weight(tmp_path):
    data, _, _, _ = _clean_batches(tmp_path, n=2)
    batch = data.batch(0)
    method = get_method("dbsn")
    torch.manual_seed(0)
    nets = method.build(NetConfig(depth=1, features=4), 2, method.options())
    with torch.no_grad():
        pseudo = dbsn.distill_loss(nets, {"input": batch["input"]}, method.options())
        both = {w: dbsn.distill_loss(nets, batch, method.options(clean_weight=w)) for w in (0.0, 0.1, 1.0)}
    torch.testing.assert_close(both[1.0] - both[0.0], pseudo, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[0.1] - both[0.0], 0.1 * pseudo, rtol=1e-5, atol=1e-6)
    assert method.options().clean_weight == 0.1


CLI_TINY = ["--steps", "4", "--val-every", "4", "--batch-size", "2", "--depth", "2", "--features", "4",
            "--patch", "32,32", "--quiet", "--device", "cpu", "--option", "width=4", "--option", "blocks=1"]


def test_train_with_clean_through_the_cli_records_and_protects_it(tmp_path, capsys):
    noisy, _ = smooth_volume((3, 64, 72), seed=1)
    _, clean = smooth_volume((2, 48, 80), seed=2)
    src = write_zarr(tmp_path / "noisy.zarr", noisy, (1, 32, 32), "SYX")
    cln = write_zarr(tmp_path / "clean.zarr", clean, (1, 24, 40), "SYX")
    out = tmp_path / "model"
    assert main(["train", src, "--method", "dbsn", "--clean", cln, "--out", str(out), *CLI_TINY]) == 0, \
        capsys.readouterr().err
    model = bd.load_model(out)
    assert model.info["data"]["clean"] == cln
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["data"]["clean"]["shape"] == [2, 48, 80]  # fingerprinted for --resume
    assert state["stats"]["clean"] == state["stats"]["input"]  # normalised with the input's statistics
    # --resume with other clean images is refused, and so is an output inside the clean volume
    other = write_zarr(tmp_path / "other.zarr", clean[::-1].copy(), (1, 24, 40), "SYX")
    capsys.readouterr()
    for argv, needle in ((["--clean", other, "--out", str(out), "--resume"], "clean volume"),
                         (["--clean", cln, "--out", str(tmp_path / "clean.zarr" / "m")], "clean")):
        assert main(["train", src, "--method", "dbsn", *argv, *CLI_TINY]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "clean.zarr" / "m").exists()


def test_methods_that_do_not_use_clean_images_refuse_them(tmp_path, capsys):
    noisy, clean = smooth_volume((2, 48, 48))
    src = write_zarr(tmp_path / "noisy.zarr", noisy, (1, 24, 24), "SYX")
    cln = write_zarr(tmp_path / "clean.zarr", clean, (1, 24, 24), "SYX")
    out = tmp_path / "model"
    assert main(["train", src, "--method", "n2v", "--clean", cln, "--out", str(out), *CLI_TINY[:-4]]) == 2
    err = capsys.readouterr().err
    assert "n2v does not use a clean volume (--clean)" in err and "dbsn" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    no_distill = ["--option", "distill_fraction=0", "--option", "prediction=posterior"]
    assert main(["train", src, "--method", "dbsn", "--clean", cln, "--out", str(out), *CLI_TINY, *no_distill]) == 2
    err = capsys.readouterr().err
    assert "trains no stage on the clean volume" in err and len(err.strip().splitlines()) == 1 and not out.exists()
