"""Contract test over every registered method."""

import numpy as np
import pytest
import torch

from bigdenoise.config import NetConfig
from bigdenoise.methods import Stage, get_method, method_names


@pytest.mark.parametrize("name", method_names())
@pytest.mark.parametrize("ndim", [2, 3])
def test_method_contract(name, ndim):
    method = get_method(name)
    options = method.options()
    net = NetConfig(depth=1, features=4)
    nets = method.build(net, ndim, options)
    assert nets and all(isinstance(n, torch.nn.Module) for n in nets.values())
    factor = method.factor(nets, options)
    radius = method.receptive_radius(nets, options)
    assert factor >= 1 and radius >= 1
    spatial = (8, 16, 16)[-ndim:]
    channels = 2 * method.channel_halo(options) + 1 if method.channel_halo(options) else 1
    rng = np.random.default_rng(0)
    sample = {k: rng.normal(size=(channels if k == "input" else 1,) + spatial).astype(np.float32)
              for k in method.volumes(options) + method.unpaired}  # unpaired volumes given too
    example = method.prepare(sample, rng, options)
    assert all(v.dtype == np.float32 for v in example.values())
    batch = {k: torch.from_numpy(np.stack([v, v])) for k, v in example.items()}
    for stage in method.stages(options):
        loss = stage.loss(nets, batch, options)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert any(p.grad is not None for n in stage.nets for p in nets[n].parameters())
    for n in nets.values():
        n.eval()
    with torch.inference_mode():
        y = method.predict(nets, torch.zeros((3, channels) + spatial), options)
    assert y.shape == (3, 1) + spatial
    if method.image_option is None:  # a pre-pass statistic needs the option that receives its means
        assert method.image_statistic(options) is None


class _Unpickling(AssertionError):
    pass


def _refuse(what):
    def refuse(*args, **kwargs):
        raise _Unpickling(f"{what} was called while loading a model package")

    return refuse


@pytest.mark.parametrize("name", method_names())
def test_model_packages_load_without_unpickling(tmp_path, monkeypatch, name):
    """DESIGN.md invariant 6, enforced: with pickle and torch.load made to raise, a package of
    every registered method (with a background pattern, output statistics and, for PN2V, a
    measured noise model) loads, and gives back the saved tensors."""
    import pickle

    from bigdenoise import noise_models as nm
    from bigdenoise.config import make_config
    from bigdenoise.normalize import Stats
    from bigdenoise.package import build_nets, load_model, net_tensors, save_model

    from conftest import smooth_volume

    config = make_config(method=name, axes="ZYX", net={"depth": 1, "features": 4}, remove_background=True)
    torch.manual_seed(0)
    nets = build_nets(config)
    if "noise_model" in nets:
        signal, noisy = smooth_volume((32, 32))[::-1]
        nets["noise_model"].set_model(nm.fit_histogram(signal, noisy, bins=16), mean=300.0, std=40.0)
    background = np.random.default_rng(0).uniform(90, 110, (16, 16)).astype(np.float32)
    save_model(tmp_path / "m", config, nets, Stats(300.0, 40.0, 200.0, 400.0, 1000), {"steps": 0},
               output_stats=Stats(1000.0, 100.0, 800.0, 1200.0, 1000), background=background)
    with monkeypatch.context() as patch:
        for module, attr in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                             (torch.serialization, "load")]:
            patch.setattr(module, attr, _refuse(f"{module.__name__}.{attr}"))
        # the guard itself works: these are the calls a pickle-based loader would make
        with pytest.raises(_Unpickling):
            torch.load(str(tmp_path / "m" / "weights.safetensors"))
        with pytest.raises(_Unpickling):
            pickle.loads(b"")
        model = load_model(tmp_path / "m")
    saved, loaded = net_tensors(nets), net_tensors(model.nets)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k].cpu(), loaded[k].cpu()) for k in saved)
    assert model.method.name == name and model.out_stats.mean == 1000.0
    np.testing.assert_array_equal(model.background, background)
    if "noise_model" in nets:
        assert model.nets["noise_model"].model.kind == "histogram"


@pytest.mark.parametrize("field", [{"schedule": "linear"}, {"optimizer": "sgd"}, {"lr_scale": 0.0}])
def test_a_stage_refuses_an_unknown_schedule_or_optimiser_and_a_rate_scale_not_positive(field):
    with pytest.raises(ValueError, match=next(iter(field))):
        Stage("s", ("net",), lambda nets, batch, options: None, **field)
