"""CSBDeep-style U-Net in 2D or 3D, with the N2V2 variant (max-blur-pool, no top skip).

Layout (``depth`` levels, ``f = features``)::

    level l (down):  conv(f*2**l) -> conv(f*2**l)            -> skip_l, then pool by 2
    bottom:          conv(f*2**depth) -> conv(f*2**(depth-1))
    level l (up):    upsample x2 (nearest), concat skip_l,
                     conv(f*2**l) -> conv(f*2**max(0, l-1))
    head:            1x1 conv to ``out_channels``, linear (+ input if ``residual``)

Every conv is 'same' padded and followed by batch norm (optional) then ReLU. With ``n2v2=True``
(Höck et al. 2022) pooling is max-blur-pool (Zhang 2019) and the level-0 skip is dropped.

For prediction, :mod:`bigdenoise.nets.unet_inference` gives copies of a trained net that
compute the same function with less work (``fold_batch_norm``, ``inference_copy``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def receptive_radius(depth: int, kernel: int, n2v2: bool) -> int:
    """Receptive-field radius of a :class:`UNet`, in input voxels per axis: the farthest input
    voxel, along any axis, that can influence an output voxel.

    Exact for the architecture (a measured gradient footprint equals it): follows, backwards
    along one axis, the interval of voxels every layer reads, for each output position relative
    to the pooling grid, and keeps the widest reach. Per layer: a 'same' convolution of size k
    widens the interval by ``k//2`` on each side; a 2-max-pool maps coarse ``[a, b]`` to fine
    ``[2a, 2b+1]`` (N2V2's max-blur-pool: ``[2a-1, 2b+2]``); nearest up-sampling maps fine
    ``[a, b]`` to coarse ``[a//2, b//2]``; a skip connection reads the encoder's features at the
    decoder's interval. Padding at the volume's edges only narrows the intervals.
    """
    half = kernel // 2

    def two_convs(lo: int, hi: int) -> tuple[int, int]:
        return lo - 2 * half, hi + 2 * half

    def encoder_input(level: int, lo: int, hi: int) -> tuple[int, int]:
        """Input voxels read by the input of ``down[level]`` (``level == depth``: the bottom's)."""
        while level > 0:
            level -= 1
            lo, hi = (2 * lo - 1, 2 * hi + 2) if n2v2 else (2 * lo, 2 * hi + 1)
            lo, hi = two_convs(lo, hi)
        return lo, hi

    def decoder_output(level: int, lo: int, hi: int) -> tuple[int, int]:
        """Input voxels read by the output of ``up[level]`` over ``[lo, hi]``."""
        lo, hi = two_convs(lo, hi)
        reads = [] if n2v2 and level == 0 else [encoder_input(level, *two_convs(lo, hi))]
        coarse = (lo // 2, hi // 2)
        reads.append(encoder_input(depth, *two_convs(*coarse)) if level + 1 == depth
                     else decoder_output(level + 1, *coarse))
        return min(r[0] for r in reads), max(r[1] for r in reads)

    radius = 0
    for q in range(2**depth):
        lo, hi = decoder_output(0, q, q)
        radius = max(radius, q - lo, hi - q)
    return radius


def _conv_block(ndim: int, cin: int, cout: int, kernel: int, batch_norm: bool) -> nn.Sequential:
    """conv (k, 'same') -> batch norm (or Identity) -> ReLU. Index 1 is always the norm slot."""
    return nn.Sequential(
        _CONV[ndim](cin, cout, kernel, padding=kernel // 2),
        _BATCH_NORM[ndim](cout) if batch_norm else nn.Identity(),
        nn.ReLU(inplace=True),
    )


def _double_conv(ndim: int, cin: int, cmid: int, cout: int, kernel: int, batch_norm: bool) -> nn.Sequential:
    return nn.Sequential(
        _conv_block(ndim, cin, cmid, kernel, batch_norm),
        _conv_block(ndim, cmid, cout, kernel, batch_norm),
    )


class MaxBlurPool(nn.Module):
    """Anti-aliased down-sampling by 2 (Zhang 2019): 2-max-pool with stride 1, then a fixed,
    normalised, separable [1,2,1] binomial blur applied with stride 2.

    Input (N, C, *spatial) with even spatial sizes; output (N, C, *spatial/2).
    The stride-1 max shrinks each axis by one; replicate padding by one on both sides before
    the blur brings the output to exactly half the input size.
    """

    def __init__(self, ndim: int, channels: int) -> None:
        super().__init__()
        self.ndim = ndim
        taps = torch.tensor([1.0, 2.0, 1.0]) / 4.0
        kernel = taps
        for _ in range(ndim - 1):
            kernel = kernel[..., None] * taps
        # Fixed weights, not a parameter and not saved in the state dict.
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ndim == 2:
            x = F.max_pool2d(x, kernel_size=2, stride=1)
            x = F.pad(x, (1, 1) * 2, mode="replicate")
            return F.conv2d(x, self.kernel.to(x.dtype), stride=2, groups=x.shape[1])
        x = F.max_pool3d(x, kernel_size=2, stride=1)
        x = F.pad(x, (1, 1) * 3, mode="replicate")
        return F.conv3d(x, self.kernel.to(x.dtype), stride=2, groups=x.shape[1])


class UNet(nn.Module):
    """CSBDeep-style U-Net, 2D (``ndim=2``) or 3D (``ndim=3``). See the module docstring.

    Attributes
    ----------
    ndim, in_channels, out_channels, depth, features, kernel, batch_norm, n2v2, residual
        The construction arguments (enough to rebuild the net with :func:`build_unet`).
    factor : int
        ``2**depth``; every spatial size of the input must be a multiple of it.
    receptive_radius : int
        The receptive-field radius in input voxels per axis (see :func:`receptive_radius`).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int,
        *,
        depth: int = 2,
        features: int = 32,
        kernel: int = 3,
        batch_norm: bool = True,
        n2v2: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {kernel}")
        if in_channels < 1 or out_channels < 1 or features < 1:
            raise ValueError("in_channels, out_channels and features must be >= 1")
        if residual and in_channels != out_channels:
            raise ValueError(
                f"residual=True needs in_channels == out_channels, got {in_channels} and {out_channels}"
            )
        self.ndim = ndim
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        self.features = features
        self.kernel = kernel
        self.batch_norm = batch_norm
        self.n2v2 = n2v2
        self.residual = residual
        self.factor = 2**depth
        self.receptive_radius = receptive_radius(depth, kernel, n2v2)

        self.down = nn.ModuleList()
        self.pools = nn.ModuleList()
        cin = in_channels
        for level in range(depth):
            f = features * 2**level
            self.down.append(_double_conv(ndim, cin, f, f, kernel, batch_norm))
            self.pools.append(MaxBlurPool(ndim, f) if n2v2 else _MAX_POOL[ndim](2))
            cin = f
        bottom_out = features * 2 ** (depth - 1)
        self.bottom = _double_conv(ndim, cin, features * 2**depth, bottom_out, kernel, batch_norm)
        # up[level]: input = upsampled features (f*2**level channels) + skip of that level.
        self.up = nn.ModuleList()
        for level in range(depth):
            f = features * 2**level
            skip = 0 if self._drops_skip(level) else f
            self.up.append(_double_conv(ndim, f + skip, f, features * 2 ** max(0, level - 1), kernel, batch_norm))
        self.head = _CONV[ndim](features, out_channels, 1)
        # Set only on inference copies (unet_inference.inference_copy): stand-ins for each
        # up[level][0], each called as coarse_up[level](h, skip).
        self.coarse_up: nn.ModuleList | None = None

    def _drops_skip(self, level: int) -> bool:
        return self.n2v2 and level == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise a batch.

        Parameters
        ----------
        x : Tensor, shape (N, C_in, *spatial)
            ``len(spatial) == ndim``; every spatial size a multiple of ``factor``.

        Returns
        -------
        Tensor, shape (N, C_out, *spatial)
        """
        if x.ndim != self.ndim + 2:
            raise ValueError(
                f"UNet(ndim={self.ndim}) expects input of shape (N, C, {', '.join('ZYX'[-self.ndim:])}), "
                f"got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(s % self.factor for s in spatial):
            fixed = tuple(-(-s // self.factor) * self.factor for s in spatial)
            raise ValueError(
                f"UNet input spatial size {spatial} must be a multiple of {self.factor} (2**depth) "
                f"on every axis; pad it, e.g. to {fixed}"
            )
        out = self.head(self.trunk(x))
        if self.residual:
            out = out + x
        return out

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The features before the 1x1 head, ``(N, features, *spatial)`` (input unchecked).

        ``forward(x) == head(trunk(x))`` (+ ``x`` if residual). Methods with many output
        channels (PN2V's samples) apply the head in slices to bound memory.
        """
        skips = []
        h = x
        for level in range(self.depth):
            h = self.down[level](h)
            skips.append(None if self._drops_skip(level) else h)
            h = self.pools[level](h)
        h = self.bottom(h)
        for level in reversed(range(self.depth)):
            if self.coarse_up is not None:
                h = self.coarse_up[level](h, skips[level])
                h = self.up[level][1](h)
                continue
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            if skips[level] is not None:
                h = torch.cat([h, skips[level]], dim=1)
            h = self.up[level](h)
        return h


def build_unet(
    ndim: int,
    in_channels: int,
    out_channels: int,
    *,
    depth: int = 2,
    features: int = 32,
    kernel: int = 3,
    batch_norm: bool = True,
    n2v2: bool = False,
    residual: bool = False,
) -> UNet:
    """Build a :class:`UNet`. Defaults follow the Noise2Void paper (depth 2, kernel 3,
    batch norm, 32 features, linear output); ``n2v2=True`` gives the N2V2 architecture."""
    return UNet(
        ndim,
        in_channels,
        out_channels,
        depth=depth,
        features=features,
        kernel=kernel,
        batch_norm=batch_norm,
        n2v2=n2v2,
        residual=residual,
    )


def param_count(net: nn.Module) -> int:
    """Number of trainable parameters of ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
