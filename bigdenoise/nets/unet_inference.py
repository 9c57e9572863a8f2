"""Inference-only copies of a trained :class:`~bigdenoise.nets.unet.UNet` that compute the same
function with less work (float rounding aside).

- :func:`fold_batch_norm` folds every batch norm into the convolution before it.
- :func:`inference_copy` replaces each decoder level's first convolution with
  :class:`CoarseUpConv` (reads the coarse features directly: no up-sampled or concatenated map)
  and every other conv block with :class:`ConvReLU` (ReLU fused into oneDNN's convolution on
  the CPU).

Training never uses these; prediction (``bigdenoise.infer``) does.
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

from bigdenoise.nets.unet import UNet


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
