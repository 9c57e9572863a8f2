"""D-BSN: the dilated blind-spot network of Wu et al. (ECCV 2020), in 2D or 3D.

Every output voxel ``i`` of :class:`BlindSpotNet` depends on the input around ``i`` but never
on ``y_i`` itself, so the mean ``mu`` (and the variance ``sigma_mu^2``) can be trained against
the noisy input on every voxel.

Layout (``C = width``; every convolution 'same' zero-padded, ReLU after each unless noted)::

    head:      1x1 conv in -> C
    branch b:  centrally masked k_b^n conv (centre tap 0), 1x1, 1x1,
               ``blocks`` x [x + 1x1(ReLU(dilated conv(x)))]  (kernel ``block_kernel``, dilation d_b, no ReLU after +),
               1x1
    fuse:      concat(branches) -> 1x1 -> C                     = features f
    mu:        1x1, 1x1, 1x1 -> 1 (linear)
    sigma_mu:  1x1 -> 16, 1x1 -> 16, 1x1 -> 1, squared          = sigma_mu^2 >= 0

**Why the centre stays blind.** The masked conv reads offsets ``a`` in ``[-r, r]^n \\ {0}``
(``r = (k-1)/2``); every later spatial conv of the branch reads offsets that are multiples of
``d``, so an output sees ``y_{i + a + d m}``; that is ``y_i`` only if ``a = -d m``, i.e. ``a`` a
non-zero multiple of ``d`` inside ``[-r, r]``, which is impossible when ``d >= r + 1 = (k+1)/2``.
Configurations with ``d < (k+1)/2`` (e.g. ``k=5, d=2``) leak the centre and are refused. The
branch never sees the voxels ``i + d Z^n`` either (D-BSN's known holes, 6 Z^n for the paper's
two branches). The centre tap is held at zero by a fixed mask multiplied into the weight at
every forward pass (:class:`MaskedConv2d` / :class:`MaskedConv3d`), so no optimiser step, weight
load or weight edit can make it non-zero. There is no batch norm nor any pooled statistic
(they would mix ``y_i`` into every output).

**Receptive radius** (:attr:`BlindSpotNet.receptive_radius`) is computed from the layers: the
sum over a branch's convolutions of ``dilation * (kernel // 2)``, the largest over branches
(residual skips and 1x1 convs add nothing): ``r_b + blocks * d_b * (block_kernel // 2)``.

**Sizes.** The method's default (``methods.dbsn.DBSNOptions``, CPU-sized): width 16, 2 blocks per
branch, branches ``(3, 2)`` and ``(5, 3)``, block kernel 3: radius 8. The paper (``XHWXD/DBSN``):
width 96, 8 blocks per branch, whose Inception blocks run parallel 5x5 and 3x3 dilated paths:
radius 1 + 8*4 = 33 and 2 + 8*6 = 50; ``width=96, blocks=8, block_kernel=5`` gives that receptive
field (radius 50) with one 5x5 dilated path per block instead of the Inception block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}

DEFAULT_BRANCHES = ((3, 2), (5, 3))
SIGMA_WIDTH = 16


class _CentreMask:
    """Mixin for a convolution whose centre tap is multiplied by a fixed zero at every forward pass."""

    def _init_mask(self) -> None:
        mask = torch.ones_like(self.weight[:1, :1])
        mask[(0, 0) + tuple(k // 2 for k in self.kernel_size)] = 0.0
        # Not saved in the state dict: a model package cannot carry a different mask.
        self.register_buffer("mask", mask, persistent=False)
        with torch.no_grad():
            self.weight.mul_(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask.to(self.weight.dtype), self.bias)


class MaskedConv2d(_CentreMask, nn.Conv2d):
    """2D 'same' convolution (odd kernel >= 3) whose centre tap is zero, always."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        nn.Conv2d.__init__(self, cin, cout, kernel, padding=kernel // 2)
        self._init_mask()


class MaskedConv3d(_CentreMask, nn.Conv3d):
    """3D 'same' convolution (odd kernel >= 3) whose centre tap is zero, always."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        nn.Conv3d.__init__(self, cin, cout, kernel, padding=kernel // 2)
        self._init_mask()


_MASKED = {2: MaskedConv2d, 3: MaskedConv3d}


def check_branches(branches: Sequence[Sequence[int]], block_kernel: int) -> tuple[tuple[int, int], ...]:
    """``branches`` as ``((k, d), ...)``; a ValueError for a configuration that leaks the centre
    (``d < (k+1)/2``) or is malformed."""
    out = []
    if not branches:
        raise ValueError("D-BSN needs at least one branch (k, d)")
    if block_kernel < 3 or block_kernel % 2 == 0:
        raise ValueError(f"block_kernel must be odd and >= 3, got {block_kernel}")
    for branch in branches:
        k, d = (int(v) for v in branch)
        if k < 3 or k % 2 == 0:
            raise ValueError(f"branch ({k}, {d}): the masked kernel k must be odd and >= 3")
        if d < (k + 1) // 2:
            raise ValueError(
                f"branch ({k}, {d}) would see the blind voxel: a masked {k}x{k} conv reads offsets up to {k // 2}, "
                f"so a dilation d={d} < (k+1)/2 = {(k + 1) // 2} brings the centre back (offset a + d*m = 0); "
                f"use d >= {(k + 1) // 2}")
        out.append((k, d))
    return tuple(out)


class _Residual(nn.Module):
    """``x + mix(ReLU(conv(x)))``: a dilated conv and a 1x1 conv with a residual skip."""

    def __init__(self, ndim: int, width: int, kernel: int, dilation: int) -> None:
        super().__init__()
        conv = _CONV[ndim]
        self.conv = conv(width, width, kernel, dilation=dilation, padding=dilation * (kernel // 2))
        self.mix = conv(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.relu(self.conv(x)))


def _branch(ndim: int, width: int, k: int, d: int, blocks: int, block_kernel: int) -> nn.Sequential:
    conv = _CONV[ndim]
    layers: list[nn.Module] = [_MASKED[ndim](width, width, k), nn.ReLU(),
                               conv(width, width, 1), nn.ReLU(), conv(width, width, 1), nn.ReLU()]
    layers += [_Residual(ndim, width, block_kernel, d) for _ in range(blocks)]
    layers += [conv(width, width, 1), nn.ReLU()]
    return nn.Sequential(*layers)


def _reach(module: nn.Module) -> int:
    """How far (voxels per axis) the convolutions of ``module``, applied in series, look."""
    return sum(m.dilation[0] * (m.kernel_size[0] // 2) for m in module.modules() if isinstance(m, _ConvNd))


class BlindSpotNet(nn.Module):
    """D-BSN (see the module docstring). ``forward(x)`` -> ``(mu, sigma_mu2)``, both ``(N, 1, *spatial)``.

    Parameters
    ----------
    ndim : 2 or 3 spatial axes.
    in_channels : input channels (1 for grey microscopy).
    width : feature channels C (paper: 96).
    blocks : dilated residual blocks per branch (paper: 8).
    branches : ``((k, d), ...)``: masked kernel and dilation of each branch; ``d >= (k+1)/2``.
    block_kernel : kernel of the dilated convolutions (3; 5 reaches the paper's radius).

    Attributes
    ----------
    receptive_radius : int, computed from the layers (voxels per axis).
    factor : 1 (no down-sampling).
    """

    def __init__(self, ndim: int, in_channels: int = 1, *, width: int = 32, blocks: int = 2,
                 branches: Sequence[Sequence[int]] = DEFAULT_BRANCHES, block_kernel: int = 3) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if width < 1 or blocks < 0 or in_channels < 1:
            raise ValueError(f"width and in_channels must be >= 1 and blocks >= 0, got {width}, {in_channels}, {blocks}")
        self.branch_specs = check_branches(branches, block_kernel)
        self.ndim, self.in_channels, self.width, self.blocks, self.block_kernel = ndim, in_channels, width, blocks, block_kernel
        conv = _CONV[ndim]
        self.head = nn.Sequential(conv(in_channels, width, 1), nn.ReLU())
        self.branches = nn.ModuleList(_branch(ndim, width, k, d, blocks, block_kernel) for k, d in self.branch_specs)
        self.fuse = nn.Sequential(conv(width * len(self.branches), width, 1), nn.ReLU())
        self.mu_head = nn.Sequential(conv(width, width, 1), nn.ReLU(), conv(width, width, 1), nn.ReLU(),
                                     conv(width, 1, 1))
        self.sigma_head = nn.Sequential(conv(width, SIGMA_WIDTH, 1), nn.ReLU(), conv(SIGMA_WIDTH, SIGMA_WIDTH, 1),
                                        nn.ReLU(), conv(SIGMA_WIDTH, 1, 1))
        self.factor = 1
        self.receptive_radius = _reach(self.head) + max(_reach(b) for b in self.branches) + _reach(self.fuse) + max(
            _reach(self.mu_head), _reach(self.sigma_head))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The blind feature map f ``(N, width, *spatial)`` of ``x`` ``(N, in_channels, *spatial)``."""
        h = self.head(x)
        return self.fuse(torch.cat([b(h) for b in self.branches], dim=1))

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """mu ``(N, 1, *spatial)``: the signal predicted from each voxel's surroundings."""
        return self.mu_head(self.features(x))

    @staticmethod
    def variance(sigma_out: torch.Tensor) -> torch.Tensor:
        """sigma_mu^2 from the sigma head's output (its square, as the authors' code)."""
        return sigma_out.square()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.mu_head(f), self.variance(self.sigma_head(f))


def build_blindspot(ndim: int, in_channels: int = 1, *, width: int = 32, blocks: int = 2,
                    branches: Sequence[Sequence[int]] = DEFAULT_BRANCHES, block_kernel: int = 3) -> BlindSpotNet:
    return BlindSpotNet(ndim, in_channels, width=width, blocks=blocks, branches=branches, block_kernel=block_kernel)
