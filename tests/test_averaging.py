"""A stage's weight average (``Stage.ema``, averaging.py): its update rule, and a resumed stage that
continues its average exactly."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bigdenoise as bd
from bigdenoise.averaging import average_copies, average_rate, update_average

from conftest import smooth_volume, write_zarr


def test_the_average_moves_towards_the_weights_by_the_warmed_up_rate():
    net = torch.nn.Linear(3, 1)
    average = average_copies({"n": net}, ("n",))
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    update_average(average, {"n": net}, 0.99, 0)  # the first step: the decay warms up from 0.1
    torch.testing.assert_close(average["n"].weight, start + 0.9)
    torch.testing.assert_close(net.weight, start + 1.0)  # the copy is its own storage
    update_average(average, {"n": net}, 0.99, 1)
    torch.testing.assert_close(average["n"].weight, start + 0.9 + 0.1 * (1 - 2 / 11))
    assert average_rate(0.99, 10_000) == pytest.approx(0.01)
    assert average_rate(0.5, 100) == pytest.approx(0.5)


def test_a_resumed_stage_continues_its_weight_average_exactly(tmp_path):
    """Trained 4 steps then resumed to 8 equals 8 steps at once; without the average restored from
    the checkpoint it would restart from the raw weights. The average changes the model."""
    data, _ = smooth_volume((3, 64, 72), seed=4)
    src = write_zarr(tmp_path / "in.zarr", data, (1, 32, 32), "SYX")
    mu_only = {"width": 4, "blocks": 2, "mu_fraction": 1, "variance_fraction": 0, "joint_fraction": 0,
               "distill_fraction": 0, "prediction": "mu"}
    cfg = dict(method="dbsn", progress=False, batch_size=2, patch=(32, 32), val_patches=2, val_every=4, stats_chunks=4,
               net={"depth": 2, "features": 4})
    averaged = {**mu_only, "ema": 0.9}
    bd.train(src, tmp_path / "a", steps=8, options=averaged, **cfg)
    bd.train(src, tmp_path / "b", steps=4, options=averaged, **cfg)
    bd.train(src, tmp_path / "b", steps=8, options=averaged, resume=True, **cfg)
    bd.train(src, tmp_path / "raw", steps=8, options=mu_only, **cfg)
    a, b, raw = (load_file(str(tmp_path / m / "weights.safetensors")) for m in ("a", "b", "raw"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert not all(np.array_equal(a[k].numpy(), raw[k].numpy()) for k in a)
