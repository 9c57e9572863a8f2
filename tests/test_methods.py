"""Contract test over every registered method."""

import numpy as np
import pytest
import torch

from bigdenoise.config import NetConfig
from bigdenoise.methods import get_method, method_names


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
              for k in method.volumes(options)}
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
