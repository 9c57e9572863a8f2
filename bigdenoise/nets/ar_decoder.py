"""COSDD's autoregressive noise decoder: 1-D causal dilated convolutions along one axis; architecture only.

The decoder models ``p(x | s_code)`` pixel by pixel, each pixel conditioned on the signal code
at that pixel and on the ``receptive_field`` pixels before it along one axis (``"x"``: the
same row, columns ``j - RF .. j - 1``; ``"y"``: the same column, rows ``i - RF .. i - 1``),
never on itself nor on any other row (column). It can therefore model noise correlated along
that axis but not the signal, which has to go through the latents (COSDD paper, §2.3, §5.4).

Layers (``C`` channels): layer 0 reads the input shifted by one pixel along the axis (so the
current pixel is excluded), kernel ``kernel - 1``, dilation 1; layer ``i > 0`` is a causal
kernel ``kernel`` conv of dilation ``dilations[i - 1]`` with a residual connection. Every
layer adds a 1x1 conv of the signal code, then ReLU. The receptive field is
``(kernel - 1) * (1 + sum(dilations))`` pixels; the default ``kernel=5, dilations=(2, 4, 2, 1)``
gives 40, the authors' value (their 8 blocks, ``4 * (1+1+2+1+2+1+1+1)``; §5.4: flat for 10-120).

Output: a Gaussian mixture per pixel, ``components`` (weight logits, means, scales); the
log-weights are ``log_softmax``-normalised (the authors' code missed this from d858c76 to
c0b49ac) and the scales are ``softplus(raw) + min_scale`` (normalised units), so a component
cannot collapse onto a spike of clipped, quantised data. Integer data can be scored by each
component's mass over the pixel's grey-level bin, a clip level censored (``half``,
``censored``). The axis is chosen per call (``along_y`` transposes the last two axes in and
out); the buffer ``direction`` is where a method records the one axis it decodes along (-1: not
chosen yet, 0: x, 1: y), so the choice travels with the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def mixture_log_prob(x: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                     half: torch.Tensor | None = None, censored: torch.Tensor | None = None) -> torch.Tensor:
    """``log sum_m softmax(logits)_m p_m(x)``: ``x`` (N, 1, ...), the mixture's (N, M, ...) -> (N, 1, ...).

    ``p_m`` is the density ``N(x; loc_m, scale_m^2)``, or, where ``half`` (broadcastable to ``x``:
    half a grey level of integer data) is positive, the component's mass over the grey level's
    bin ``[x - half, x + half]``; where ``censored`` (like ``x``) is nonzero, its mass below
    ``x + half`` (a clip level stands for every value under it). A bin's mass is at most 1, so
    no component can gain by shrinking onto a spike of clipped, quantised data. Computed in at
    least float32, whatever the decoder's outputs are (bf16 under a GPU's autocast).
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, logits, loc, scale = (t.to(dtype) for t in (x, logits, loc, scale))
    log_w = F.log_softmax(logits, dim=1)
    log_p = -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    if half is not None and bool((half > 0).any()):  # float data: the density, at no extra cost
        below_top = torch.special.log_ndtr((x + half - loc) / scale)
        log_bin = _log_sub_exp(torch.special.log_ndtr((x - half - loc) / scale), below_top)
        if censored is not None:
            log_bin = torch.where(censored > 0, below_top, log_bin)
        log_p = torch.where(half > 0, log_bin, log_p)
    return torch.logsumexp(log_w + log_p, dim=1, keepdim=True)


def _log_sub_exp(small: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
    """``log(exp(large) - exp(small))`` for ``small < large``; equal ends (an empty bin, or one
    rounded away) give about ``large - 28`` instead of -inf, so no gradient is NaN."""
    return large + torch.log(-torch.expm1(torch.clamp(small - large, max=-1e-12)))


def receptive_field(kernel: int, dilations: tuple[int, ...]) -> int:
    """Pixels before each pixel that an :class:`ARDecoder` of this ``kernel`` and these
    ``dilations`` sees (its first layer reads ``kernel - 1`` of them)."""
    return (kernel - 1) * (1 + sum(dilations))


class ARDecoder(nn.Module):
    """Causal 1-D Gaussian-mixture decoder, 2D or 3D. See the module docstring.

    Attributes: ``ndim, s_code, channels, kernel, dilations, components, min_scale,
    receptive_field``; buffer ``direction`` (-1 not chosen, 0 x, 1 y), set by the method.
    """

    def __init__(self, ndim: int, s_code: int = 32, *, channels: int = 32, kernel: int = 5,
                 dilations: tuple[int, ...] = (2, 4, 2, 1), components: int = 3, min_scale: float = 1e-3) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if kernel < 2:
            raise ValueError("kernel must be >= 2 (layer 0 reads kernel - 1 earlier pixels)")
        conv = _CONV[ndim]
        ones = (1,) * (ndim - 1)
        self.ndim, self.s_code, self.channels, self.kernel = ndim, s_code, channels, kernel
        self.dilations, self.components, self.min_scale = tuple(dilations), components, min_scale
        self.receptive_field = receptive_field(kernel, self.dilations)
        self.layers = nn.ModuleList([conv(1, channels, ones + (kernel - 1,))])
        self.layers.extend(conv(channels, channels, ones + (kernel,), dilation=ones + (d,)) for d in self.dilations)
        self.cond = nn.ModuleList(conv(s_code, channels, 1) for _ in range(len(self.dilations) + 1))
        self.head = nn.Sequential(conv(channels, channels, 1), nn.ReLU(), conv(channels, 3 * components, 1))
        self.register_buffer("direction", torch.full((), -1.0))  # -1: not chosen yet, 0: x (rows), 1: y (columns)

    def _causal(self, layer: nn.Module, h: torch.Tensor, reach: int) -> torch.Tensor:
        return layer(F.pad(h, (reach, 0)))

    def params(self, x: torch.Tensor, code: torch.Tensor, along_y: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixture parameters ``(logits, loc, scale)``, each (N, components, *spatial), for
        ``x`` (N, 1, *spatial) and the signal code (N, s_code, *spatial); causal along the last
        axis (x), or along the one before it (y) when ``along_y``."""
        if along_y:
            x, code = x.transpose(-1, -2), code.transpose(-1, -2)
        shifted = F.pad(x, (1, 0))[..., :-1]  # pixel j sees x[j-1]: the current pixel is excluded
        h = torch.relu(self._causal(self.layers[0], shifted, self.kernel - 2) + self.cond[0](code))
        for layer, cond, d in zip(self.layers[1:], self.cond[1:], self.dilations):
            h = h + torch.relu(self._causal(layer, h, d * (self.kernel - 1)) + cond(code))
        logits, loc, raw = self.head(h).chunk(3, dim=1)
        scale = F.softplus(raw) + self.min_scale
        if along_y:
            logits, loc, scale = (t.transpose(-1, -2) for t in (logits, loc, scale))
        return logits, loc, scale

    def log_prob(self, x: torch.Tensor, code: torch.Tensor, along_y: bool = False,
                 half: torch.Tensor | None = None, censored: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel log-likelihood ``log p(x_ij | x_i,<j, code)`` (N, 1, *spatial) (``along_y``:
        ``x_<i,j``); ``half``, ``censored``: binned integer data (:func:`mixture_log_prob`)."""
        return mixture_log_prob(x, *self.params(x, code, along_y), half=half, censored=censored)
