"""Probabilistic Noise2Void: loss and MMSE against their formulas, the N2V warm-up stage, the
noise model inside the model package, exact blockwise prediction, resume (also across the
warm-up's end), and errors for a missing or mismatched noise model."""

import json
import math

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

import bigdenoise as bd
from bigdenoise import noise_models as nm
from bigdenoise.calibration import make_noise_model, save_noise_model
from bigdenoise.cli import main
from bigdenoise.config import NetConfig
from bigdenoise.errors import ConfigError
from bigdenoise.infer import for_inference, predict_whole
from bigdenoise.methods import get_method, n2v, pn2v

from conftest import TINY, assert_exact, assert_not_exact, rough_copy, short_halo, smooth_volume, write_zarr

PN2V = dict(TINY, patch=(32, 32))


def tiny_nets(samples=8, seed=0):
    method = get_method("pn2v")
    options = method.options(samples=samples)
    torch.manual_seed(seed)
    nets = method.build(NetConfig(depth=1, features=4), 2, options)
    s, x = smooth_volume((64, 64))[::-1]
    nets["noise_model"].set_model(nm.fit_histogram(s, x, bins=32), mean=float(x.mean()), std=float(x.std()))
    return method, options, nets


@pytest.fixture(scope="module")
def pn2v_model(tmp_path_factory):
    """A noise model measured on clean/noisy pairs and a tiny PN2V model trained with it."""
    root = tmp_path_factory.mktemp("pn2v")
    data, clean = smooth_volume((3, 64, 72))
    model, info = make_noise_model(data, clean=clean, axes="SYX", bins=64)
    save_noise_model(model, root / "nm", info=info)
    src = write_zarr(root / "in.zarr", data, (1, 32, 32), "SYX")
    bd.train(src, root / "model", method="pn2v", progress=False,
             options={"noise_model": str(root / "nm"), "samples": 8}, **PN2V)
    return root, src, data


def test_loss_is_the_negative_log_mean_likelihood_on_masked_pixels():
    method, options, nets = tiny_nets()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 16, 16)).astype(np.float32)
    example = method.prepare({"input": x}, rng, options)
    batch = {k: torch.from_numpy(v[None]) for k, v in example.items()}
    loss = pn2v.loss(nets, batch, options)
    with torch.no_grad():
        samples = pn2v.samples(nets, batch["input"])[0]  # (K, 16, 16)
        terms = []
        for y, xx in zip(*np.nonzero(example["mask"][0])):
            p = nets["noise_model"].log_likelihood(batch["target"][0, 0, y, xx], samples[:, y, xx]).exp()
            terms.append(-math.log(float(p.double().mean())))
    assert float(loss.detach()) == pytest.approx(np.mean(terms), rel=1e-5)
    assert example["mask"].sum() == len(terms) > 0


def test_warmup_is_a_first_stage_only_when_asked_for():
    method = get_method("pn2v")
    (only,) = method.stages(method.options(warmup=0))
    assert (only.name, only.nets, only.loss, only.fraction) == ("pn2v", ("unet", "centre"), pn2v.loss, 1.0)
    warm, main = method.stages(method.options(warmup=0.3))
    assert (warm.name, warm.nets, warm.loss) == ("warmup", ("unet", "centre"), pn2v.warmup_loss)
    assert (main.name, main.loss) == ("pn2v", pn2v.loss)
    assert (warm.fraction, main.fraction) == pytest.approx((0.3, 0.7))


def test_warmup_loss_is_n2v_mse_of_the_centre_and_leaves_the_offsets_alone():
    method, options, nets = tiny_nets()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 1, 16, 16)).astype(np.float32)
    examples = [method.prepare({"input": xi}, rng, options) for xi in x]
    batch = {k: torch.from_numpy(np.stack([e[k] for e in examples])) for k in examples[0]}
    loss = pn2v.warmup_loss(nets, batch, options)
    loss.backward()
    loss = loss.detach()
    with torch.no_grad():
        centre = nets["centre"](nets["unet"].trunk(batch["input"]))  # (2, 1, 16, 16)
        mask = batch["mask"] > 0
        expected = ((centre - batch["target"])[mask] ** 2).mean()
        # with the offsets' initial comb (zero weights, symmetric biases) the centre is the samples' mean
        assert torch.allclose(pn2v.samples(nets, batch["input"]).mean(1, keepdim=True), centre, atol=1e-5)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) == pytest.approx(float(n2v.mse_on_mask(centre, batch)), rel=1e-6)
    assert nets["unet"].head.weight.grad is None and nets["centre"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("prediction", ["mmse", "prior_mean"])
def test_prediction_is_the_formula_whatever_the_sample_slicing(monkeypatch, prediction):
    method, _, nets = tiny_nets(samples=12)
    options = method.options(samples=12, prediction=prediction)
    for net in nets.values():
        net.eval()
    x = torch.randn(3, 1, 16, 24)
    with torch.no_grad():
        samples = pn2v.samples(nets, x)
        if prediction == "mmse":
            w = torch.softmax(nets["noise_model"].log_likelihood(x, samples), dim=1)
            expected = (w * samples).sum(1, keepdim=True)
        else:
            expected = samples.mean(1, keepdim=True)
        whole = method.predict(nets, x, options)
        monkeypatch.setattr(pn2v, "SAMPLE_BUDGET", 5 * 16 * 24)  # slices of 5 samples: 5, 5, 2
        sliced = method.predict(nets, x, options)
    assert whole.shape == (3, 1, 16, 24)
    assert torch.allclose(whole, expected, atol=1e-5)
    assert torch.allclose(sliced, expected, atol=1e-5)


def test_noise_model_and_normalisation_travel_in_the_package(pn2v_model):
    root, _, _ = pn2v_model
    model_dir = root / "model"
    assert not list(model_dir.rglob("*.pt")) and not list(model_dir.rglob("*.pkl"))
    tensors = load_file(str(model_dir / "weights.safetensors"))
    assert {"noise_model.norm", "noise_model.histogram.density"} <= set(tensors)
    measured = nm.load_noise_model(root / "nm")
    assert torch.equal(tensors["noise_model.histogram.density"], measured.density)
    stats = json.loads((model_dir / "config.json").read_text())["normalization"]
    assert tensors["noise_model.norm"].tolist() == pytest.approx([stats["mean"], stats["std"]])
    (root / "nm" / "noise_model.json").rename(root / "nm" / "moved.json")  # the package needs no noise-model file
    try:
        loaded = bd.load_model(model_dir)
    finally:
        (root / "nm" / "moved.json").rename(root / "nm" / "noise_model.json")
    slot = loaded.nets["noise_model"]
    assert slot.model.kind == "histogram" and torch.equal(slot.model.density, measured.density)


@pytest.fixture(scope="module")
def rough_pn2v(tmp_path_factory, pn2v_model):
    """The PN2V package with random He weights in every convolution (its measured noise model
    kept): MMSE estimates that vary at the data's scale."""
    root, _, data = pn2v_model
    return rough_copy(root / "model", tmp_path_factory.mktemp("rough-pn2v") / "model"), data


def _whole(model_dir, data):
    """The whole-array reference, computed with the inference copy of the networks that tiles use
    (batch norm folded): the MMSE weights exp(ln p(x|s^k)) of random weights amplify the last-bit
    differences between folded and unfolded convolutions up to ~1e-4 of the output's spread, which
    is not a tiling error. Against this reference the tiles agree to float rounding (measured: bitwise)."""
    return predict_whole(data, for_inference(bd.load_model(model_dir)))


@pytest.mark.parametrize("in_chunks, out_chunks, tile", [((1, 13, 17), None, 16), ((2, 64, 72), (1, 24, 40), 8)])
def test_blockwise_equals_whole(tmp_path, rough_pn2v, in_chunks, out_chunks, tile):
    model_dir, data = rough_pn2v
    src = write_zarr(tmp_path / "in.zarr", data, in_chunks, "SYX")
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", chunks=out_chunks, tile=tile,
               block_voxels=2000, progress=False)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert_exact(out, _whole(model_dir, data), data)


def test_halo_below_the_receptive_radius_is_not_exact(tmp_path, rough_pn2v):
    model_dir, data = rough_pn2v
    model = bd.load_model(model_dir)
    src = write_zarr(tmp_path / "in.zarr", data, (2, 64, 72), "SYX")
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", chunks=(1, 24, 40), tile=8,
               block_voxels=2000, progress=False, halo=short_halo(model), inexact=True)
    assert_not_exact(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...], _whole(model_dir, data))


def test_resume_keeps_the_noise_model(tmp_path, pn2v_model):
    root, src, _ = pn2v_model
    options = {"noise_model": str(root / "nm"), "samples": 8, "warmup": 0}
    kw = dict(PN2V, steps=2, val_every=2)
    bd.train(src, tmp_path / "m", method="pn2v", progress=False, options=options, **kw)
    model = bd.train(src, tmp_path / "m", method="pn2v", progress=False, options=options, resume=True,
                     **dict(kw, steps=4))
    assert model.info["steps"] == 4 and model.nets["noise_model"].model.kind == "histogram"


class _Stop(Exception):
    pass


def test_resume_across_the_end_of_the_warmup_continues_exactly(tmp_path, pn2v_model, monkeypatch):
    root, src, _ = pn2v_model
    kw = dict(PN2V, steps=8, val_every=2, progress=False, method="pn2v",
              options={"noise_model": str(root / "nm"), "samples": 8, "warmup": 0.5})
    bd.train(src, tmp_path / "a", **kw)

    def stop(*args):
        raise _Stop  # the PN2V stage's first step: the run ends after the warm-up's last checkpoint

    with monkeypatch.context() as patch:
        patch.setattr(pn2v, "loss", stop)
        with pytest.raises(_Stop):
            bd.train(src, tmp_path / "b", **kw)
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["state"]["stage"] == 0
    model = bd.train(src, tmp_path / "b", resume=True, **kw)
    assert model.info["steps"] == 8
    wa, wb = (load_file(str(tmp_path / d / "weights.safetensors")) for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for d in "ab":
        rows = [r.split(",") for r in (tmp_path / d / "history.csv").read_text().splitlines()[1:]]
        assert [r[1] for r in rows] == ["warmup", "warmup", "pn2v", "pn2v"]
        # the model is the PN2V stage's best, never the warm-up's (another loss, not comparable)
        assert model.info["best_val_loss"] == pytest.approx(min(float(r[3]) for r in rows[2:]))


def test_missing_or_mismatched_noise_model_is_a_clear_error(tmp_path, pn2v_model):
    root, src, data = pn2v_model
    with pytest.raises(ConfigError, match="needs a noise model"):
        bd.train(src, tmp_path / "a", method="pn2v", progress=False, **PN2V)
    with pytest.raises(ConfigError, match="noise_model.json is missing"):
        bd.train(src, tmp_path / "b", method="pn2v", progress=False, options={"noise_model": str(tmp_path / "nope")},
                 **PN2V)
    # a noise model measured at other intensities (e.g. another gain / offset, or rescaled data)
    s, x = smooth_volume((64, 64))[::-1]
    save_noise_model(nm.fit_histogram(s * 10 + 5000, x * 10 + 5000), tmp_path / "far", plot=False)
    with pytest.raises(ConfigError, match="another intensity range"):
        bd.train(src, tmp_path / "c", method="pn2v", progress=False, options={"noise_model": str(tmp_path / "far")},
                 **PN2V)


def test_cli_train_with_a_noise_model(tmp_path, pn2v_model, capsys):
    root, src, _ = pn2v_model
    code = main(["train", src, "--method", "pn2v", "--noise-model", str(root / "nm"), "--samples", "8",
                 "--out", str(tmp_path / "m"), "--steps", "2", "--val-every", "2", "--batch-size", "4",
                 "--patch", "32,32", "--depth", "2", "--features", "4", "--quiet"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["method"] == "pn2v" and config["train_config"]["options"]["samples"] == 8
    assert main(["train", src, "--method", "pn2v", "--out", str(tmp_path / "n"), "--steps", "1", "--quiet"]) == 2
    assert "--noise-model" in capsys.readouterr().err
