import pytest
import torch
from torch import nn

from bigdenoise.nets import UNet, build_unet, fold_batch_norm, param_count, receptive_radius, inference_copy


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("n2v2", [False, True])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_shapes(ndim, depth, n2v2, batch_norm):
    net = build_unet(ndim, 2, 3, depth=depth, features=4, n2v2=n2v2, batch_norm=batch_norm)
    assert isinstance(net, UNet) and net.factor == 2**depth and net.ndim == ndim
    f = net.factor
    spatial = (2 * f, 3 * f) if ndim == 2 else (f, 2 * f, 3 * f)
    x = torch.randn(2, 2, *spatial)
    assert net(x).shape == (2, 3, *spatial)
    assert net.eval()(x).shape == (2, 3, *spatial)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()) == batch_norm
    assert param_count(net) > 0


def test_n2v2_drops_top_skip_and_has_no_blur_parameters():
    plain = build_unet(2, 1, 1, features=8)
    n2v2 = build_unet(2, 1, 1, features=8, n2v2=True)
    assert n2v2.up[0][0][0].in_channels == 8 and plain.up[0][0][0].in_channels == 16
    assert n2v2.up[1][0][0].in_channels == plain.up[1][0][0].in_channels == 32
    assert param_count(plain) - param_count(n2v2) == 8 * 8 * 9  # only the level-0 skip weights
    assert set(n2v2.state_dict()) <= set(plain.state_dict())


def test_residual():
    torch.manual_seed(0)
    net = build_unet(2, 2, 2, depth=2, features=4, residual=True).eval()
    x = torch.randn(1, 2, 16, 16)
    with_residual = net(x)
    net.residual = False
    torch.testing.assert_close(with_residual - net(x), x)
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        build_unet(2, 1, 2, residual=True)


def test_wrong_input_size():
    net = build_unet(2, 1, 1, depth=2, features=4)
    with pytest.raises(ValueError, match=r"spatial size \(16, 18\) must be a multiple of 4 \(2\*\*depth\)"):
        net(torch.randn(1, 1, 16, 18))
    with pytest.raises(ValueError, match="expects input of shape"):
        net(torch.randn(1, 1, 8, 8, 8))


def test_bad_arguments():
    for kwargs in [dict(ndim=4), dict(depth=0), dict(kernel=4)]:
        with pytest.raises(ValueError):
            build_unet(**{"ndim": 2, "in_channels": 1, "out_channels": 1, **kwargs})


def test_receptive_radius_values():
    # Measured gradient footprints of these nets (the test below re-measures them).
    assert receptive_radius(1, 3, False) == 9
    assert receptive_radius(2, 3, False) == 23
    assert receptive_radius(2, 3, True) == 26
    assert receptive_radius(2, 5, False) == 43  # the paper's simulated-data net
    assert receptive_radius(3, 3, False) == 51
    assert build_unet(3, 1, 1, depth=3, kernel=3).receptive_radius == receptive_radius(3, 3, False)


def _gradient_extents(net: UNet, shape: tuple[int, ...], centre: tuple[int, ...]) -> list[int]:
    """Per axis, the largest distance from ``centre`` of an input voxel with nonzero gradient of
    the output at ``centre`` (union over a small batch of random inputs)."""
    x = torch.randn(2, 1, *shape, dtype=torch.float64, requires_grad=True)
    net(x)[(slice(None), 0) + centre].sum().backward()
    support = torch.nonzero(x.grad.abs().sum(dim=(0, 1)) > 0)
    assert len(support) > 0
    return (support - torch.tensor(centre)).abs().amax(dim=0).tolist()


# 3D inputs are thin along one axis to keep float64 conv3d fast; only the long axes are
# checked for tightness (all axes for the upper bound).
@pytest.mark.parametrize(
    "depth, kernel, n2v2, shape",
    [
        (2, 3, False, (72, 72)),
        (2, 3, True, (80, 80)),
        (2, 5, False, (112, 112)),
        (3, 3, True, (160, 160)),
        (2, 3, False, (68, 12, 68)),
        (2, 3, True, (12, 68, 68)),
        (1, 3, True, (28, 28, 28)),
    ],
)
def test_receptive_radius_is_exact(depth, kernel, n2v2, shape):
    torch.manual_seed(0)
    ndim = len(shape)
    net = build_unet(ndim, 1, 1, depth=depth, features=4, kernel=kernel, n2v2=n2v2).double().eval()
    radius = net.receptive_radius
    long_axes = [a for a, s in enumerate(shape) if s >= 2 * radius + 4]  # support stays off the border
    assert len(long_axes) >= 2
    # Centres at every position relative to the pooling grid along the long axes.
    middle = tuple(s // 2 for s in shape)
    centres = [tuple(m + q * (a in long_axes) for a, m in enumerate(middle)) for q in range(net.factor)]
    extents = [_gradient_extents(net, shape, c) for c in centres]
    assert max(max(e) for e in extents) <= radius
    assert max(e[a] for e in extents for a in long_axes) == radius


def test_fold_batch_norm():
    torch.manual_seed(0)
    for ndim, n2v2 in [(2, False), (3, True)]:
        net = build_unet(ndim, 1, 2, depth=2, features=8, n2v2=n2v2)
        # Make the batch-norm statistics and affine parameters non-trivial.
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.uniform_(m.weight, 0.5, 2.0)
                nn.init.uniform_(m.bias, -0.5, 0.5)
        spatial = (32, 32) if ndim == 2 else (8, 16, 16)
        with torch.no_grad():
            for _ in range(3):
                net(3.0 * torch.randn(4, 1, *spatial) + 1.0)
        net.eval()
        folded = fold_batch_norm(net)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
        assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())  # original kept
        assert not folded.training and not folded.batch_norm
        x = 3.0 * torch.randn(2, 1, *spatial) + 1.0
        with torch.no_grad():
            torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=0)
        # The folded weights load into a net built without batch norm.
        plain = build_unet(ndim, 1, 2, depth=2, features=8, n2v2=n2v2, batch_norm=False).eval()
        plain.load_state_dict(folded.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(plain(x), folded(x))


@pytest.mark.parametrize("ndim,depth,n2v2,residual", [(2, 2, False, False), (2, 3, True, False), (3, 2, False, True), (3, 1, True, False)])
def test_inference_copy_computes_the_same_function(ndim, depth, n2v2, residual):
    """The inference copy equals the original net, borders included, on non-square inputs and
    for every phase of the up-sampling grid (odd and even positions hold different kernels)."""
    torch.manual_seed(1)
    net = build_unet(ndim, 2 if residual else 1, 2 if residual else 3, depth=depth, features=8,
                     n2v2=n2v2, residual=residual, batch_norm=False).eval()
    for p in net.parameters():  # break any symmetry between the taps a phase sums
        nn.init.uniform_(p, -0.5, 0.5)
    fast = inference_copy(net)
    assert net.coarse_up is None and fast.coarse_up is not None  # the original is kept
    assert not any(p.requires_grad for p in fast.parameters())
    spatial = (16, 24) if ndim == 2 else (8, 16, 24)
    spatial = tuple(s * 2 ** max(0, depth - 2) for s in spatial)
    x = torch.randn(3, net.in_channels, *spatial)
    with torch.no_grad():
        # In float64, so that only a wrong tap or phase could make a difference.
        expected = net.double()(x.double())
        fast64 = inference_copy(net)
        torch.testing.assert_close(fast64(x.double()), expected, atol=1e-12 * expected.abs().max().item(), rtol=0)
        torch.testing.assert_close(fast64.trunk(x.double()), net.trunk(x.double()), atol=1e-12 * expected.abs().max().item(), rtol=0)
        # In float32 and channels-last, as prediction runs it.
        layout = torch.channels_last if ndim == 2 else torch.channels_last_3d
        fast_cl = fast.to(memory_format=layout)
        got = fast_cl(x.contiguous(memory_format=layout)).double()
        torch.testing.assert_close(got, expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
        # Under autocast the conv blocks leave oneDNN's fused ReLU for autocast's convolutions.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(x).double()
        torch.testing.assert_close(low, expected, atol=0.05 * expected.abs().max().item(), rtol=0)


def test_inference_copy_of_a_net_with_5_tap_kernels():
    """Only 3-tap decoders run on the coarse features; every conv block still fuses its ReLU."""
    net = build_unet(2, 1, 1, depth=2, features=4, kernel=5, batch_norm=False).eval()
    fast = inference_copy(net)
    assert fast.coarse_up is None
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), atol=1e-5, rtol=1e-5)


def test_inference_copy_needs_folded_batch_norm():
    with pytest.raises(ValueError, match="fold_batch_norm"):
        inference_copy(build_unet(2, 1, 1, depth=1, features=4))
