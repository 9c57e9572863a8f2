"""CSBDeep-style U-Net in 2D or 3D, with the N2V2 variant (max-blur-pool, no top skip).

Layout (``depth`` levels, ``f = features``)::

    level l (down):  conv(f*2**l) -> conv(f*2**l)            -> skip_l, then pool by 2
    bottom:          conv(f*2**depth) -> conv(f*2**(depth-1))
    level l (up):    upsample x2 (nearest), concat skip_l,
                     conv(f*2**l) -> conv(f*2**max(0, l-1))
    head:            1x1 conv to ``out_channels``, linear (+ input if ``residual``)

Every conv is 'same' padded and followed by batch norm (optional) then ReLU. With ``n2v2=True``
(Höck et al. 2022) pooling is max-blur-pool (Zhang 2019) and the level-0 skip is dropped.

For prediction, :func:`fold_batch_norm` and :func:`inference_copy` give copies of a trained
net that compute the same function with less work (see :class:`CoarseUpConv`).
"""

from __future__ import annotations

import copy
import functools
import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

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


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """Kernels that apply a 3-tap 'same' convolution of a nearest-up-sampled (x2) input to the
    coarse input directly, one kernel per output phase.

    Along one axis, fine output ``2i + p`` reads fine ``2i + p - 1 .. 2i + p + 1``, which are
    coarse ``i-1, i, i`` for ``p = 0`` and ``i, i, i+1`` for ``p = 1``: 2 taps with weights
    ``(w0, w1 + w2)`` at coarse offsets ``(-1, 0)``, or ``(w0 + w1, w2)`` at ``(0, +1)``.

    Parameters
    ----------
    weight : Tensor, shape (C_out, C_in, 3, ...)
        ``ndim`` kernel axes of size 3.

    Returns
    -------
    Tensor, shape (2**ndim * C_out, C_in, 2, ...)
        Phase-major blocks of ``C_out`` output channels; phase ``(p_0, ..., p_{ndim-1})`` (one bit
        per kernel axis, the last axis fastest) is block ``sum(p_a * 2**(ndim-1-a))``. Its
        kernel reads the coarse input padded by one at offsets ``p_a .. p_a + 1``.
    """
    kernels = [weight]
    for axis in range(2, weight.ndim):
        split = []
        for k in kernels:
            w0, w1, w2 = k.unbind(axis)
            split += [torch.stack([w0, w1 + w2], axis), torch.stack([w0 + w1, w2], axis)]
        kernels = split
    return torch.cat(kernels)


@functools.cache
def _fused_relu_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _fused_relu_ok(x: torch.Tensor) -> bool:
    """Whether oneDNN's convolution with a fused ReLU applies: CPU, float32, no autocast."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and _fused_relu_available())


class ConvReLU(nn.Module):
    """``relu(conv(x))`` of a conv block without batch norm: an inference-only stand-in.

    On the CPU in float32 it is one oneDNN call with the ReLU applied as the convolution writes
    its output (the fused operator torch.compile's CPU backend emits), which saves a pass over
    the feature map; elsewhere the convolution, then an in-place ReLU.
    """

    def __init__(self, block: nn.Sequential) -> None:
        super().__init__()
        if not isinstance(block[1], nn.Identity):
            raise ValueError("ConvReLU needs a conv block without batch norm (fold it first)")
        self.conv = block[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if _fused_relu_ok(x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, c.weight, c.bias, list(c.padding), list(c.stride), list(c.dilation), c.groups, "relu", [], "")
        return torch.relu_(c(x))


class CoarseUpConv(nn.Module):
    """``relu(conv(cat(upsample(h), skip)))`` of a decoder level, computed without up-sampling or
    concatenating: an inference-only stand-in for ``up[level][0]`` of a net without batch norm.

    The conv splits into the part reading the up-sampled features and the part reading the skip.
    The first runs on the coarse ``h`` with one 2-tap kernel per output phase
    (:func:`_phase_kernels`): ``2**ndim * 2**ndim`` instead of ``3**ndim * 2**ndim`` multiply-adds
    per coarse voxel and channel pair (16 vs 36 in 2D, 64 vs 216 in 3D), and no up-sampled or
    concatenated map is ever written. Its phases are added, strided, into the skip part's output.
    Zero padding of the coarse ``h`` is exactly the fine map's zero padding, so the output equals
    the original block's up to float rounding.
    """

    def __init__(self, block: nn.Sequential, up_channels: int, has_skip: bool) -> None:
        super().__init__()
        conv = block[0]
        if not isinstance(block[1], nn.Identity) or conv.kernel_size[0] != 3:
            raise ValueError("CoarseUpConv needs a 3-tap conv without batch norm (fold it first)")
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        self.ndim = weight.ndim - 2
        self.out_channels = weight.shape[0]
        phases = _phase_kernels(weight[:, :up_channels])
        self.phase_weight = nn.Parameter(phases, requires_grad=False)
        # The bias goes with the skip conv, or with every phase when there is no skip.
        self.phase_bias = None if has_skip else nn.Parameter(bias.repeat(2**self.ndim), requires_grad=False)
        self.skip_weight = nn.Parameter(weight[:, up_channels:].clone(), requires_grad=False) if has_skip else None
        self.skip_bias = nn.Parameter(bias.clone(), requires_grad=False) if has_skip else None

    def forward(self, h: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """``h`` (N, C_up, *coarse), ``skip`` (N, C_skip, *2*coarse) or None -> (N, C_out, *2*coarse)."""
        conv = F.conv2d if self.ndim == 2 else F.conv3d
        phases = conv(F.pad(h, (1, 1) * self.ndim), self.phase_weight, self.phase_bias)
        coarse = h.shape[2:]
        if skip is not None:
            out = conv(skip, self.skip_weight, self.skip_bias, padding=1)
        else:
            fine = tuple(2 * s for s in coarse)
            layout = torch.channels_last if self.ndim == 2 else torch.channels_last_3d
            if not phases.is_contiguous(memory_format=layout):
                layout = torch.contiguous_format
            out = torch.empty((h.shape[0], self.out_channels, *fine), dtype=phases.dtype,
                              device=phases.device, memory_format=layout)
        c = self.out_channels
        for block, phase in enumerate(itertools.product((0, 1), repeat=self.ndim)):
            fine_part = out[(slice(None), slice(None), *(slice(p, None, 2) for p in phase))]
            coarse_part = phases[(slice(None), slice(block * c, (block + 1) * c),
                                  *(slice(p, p + s) for p, s in zip(phase, coarse)))]
            if skip is not None:
                fine_part += coarse_part
            else:
                fine_part.copy_(coarse_part)
        return torch.relu_(out)


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
        # Set only on inference copies (inference_copy): stand-ins for each up[level][0].
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


def fold_batch_norm(net: UNet) -> UNet:
    """Copy of ``net`` in eval mode with every batch norm folded into the conv before it.

    The copy gives the same outputs as ``net.eval()`` (float rounding aside) and has
    ``nn.Identity`` where the batch norms were, so its state dict also loads into a net built
    with ``batch_norm=False`` (its ``batch_norm`` attribute is set to False). ``net`` itself
    is not changed.
    """
    folded = copy.deepcopy(net).eval()
    for block in folded.modules():
        if not (
            isinstance(block, nn.Sequential)
            and len(block) >= 2
            and isinstance(block[0], _ConvNd)
            and isinstance(block[1], _BatchNorm)
        ):
            continue
        conv, bn = block[0], block[1]
        with torch.no_grad():
            # Fold in float64, then store in the conv's dtype.
            scale = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
            shift = -bn.running_mean.double() * scale
            if bn.affine:
                scale = scale * bn.weight.double()
                shift = shift * bn.weight.double() + bn.bias.double()
            weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.ndim - 1)))
            bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
            bias = bias * scale + shift
            conv.weight.copy_(weight.to(conv.weight.dtype))
            if conv.bias is None:
                conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
            else:
                conv.bias.copy_(bias.to(conv.bias.dtype))
        block[1] = nn.Identity()
    folded.batch_norm = False
    return folded


def inference_copy(net: UNet) -> UNet:
    """Copy of ``net`` (no batch norm: fold it first) that computes the same function faster,
    for prediction only: each decoder level's first convolution reads the coarse features
    directly (:class:`CoarseUpConv`) and every other conv block applies its ReLU as the
    convolution writes (:class:`ConvReLU`). Same outputs up to float rounding.

    The copy is frozen: its stand-ins hold copies of the weights, so training it, or loading a
    state dict into it, would leave them stale. ``net`` itself is not changed.
    """
    if net.batch_norm:
        raise ValueError("inference_copy needs a net without batch norm; apply fold_batch_norm first")
    fast = copy.deepcopy(net).eval()
    if net.kernel == 3:
        fast.coarse_up = nn.ModuleList(
            CoarseUpConv(fast.up[level][0], fast.features * 2**level, not fast._drops_skip(level))
            for level in range(fast.depth)
        )
        for level in range(fast.depth):
            fast.up[level][0] = nn.Identity()  # the stand-in replaces it; drop the unused weights
    for pair in [*fast.down, fast.bottom, *fast.up]:
        for i, block in enumerate(pair):
            if isinstance(block, nn.Sequential):
                pair[i] = ConvReLU(block)
    fast.requires_grad_(False)
    return fast
