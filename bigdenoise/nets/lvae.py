"""COSDD's ladder VAE (encoder) and signal decoder, 2D or 3D; architecture only.

Ladder VAE (Sønderby et al. 2016, as in HDN and COSDD, Salmon & Krull 2023), ``levels`` levels,
``s_code`` channels of signal code, ``z = s_code // 2`` latent channels per level, ``filters``
feature channels (default ``s_code``)::

    stem:       conv 5 -> act  -> gated residual block                       (full resolution)
    bottom-up:  level l: conv 3 stride 2 -> gated residual block -> d_l      (1 / 2**(l+1))
    top-down:   top level:   q(z|d) = N from conv 3 of d; p(z) = N(0, 1)
                level l:     h = up x2 (nearest); p(z|h) from conv 3 of h,
                             q(z|h, d_l) from conv 3 of cat(h, d_l)
                then         h = gated residual block(h + conv 1 of cat(h, z))
    output:     up x2 -> gated residual block -> conv 1 -> s_code            (full resolution)

The top-down path sees the data only through the latents, so the signal code carries what the
latents carry. Gaussians are ``(mean, softplus(raw) + MIN_STD)``; the KL is analytic
(:func:`gaussian_kl`) given the latents sampled above. No batch norm (the authors use it): the
nets compute the same function in training and prediction and on any tile.

Gated residual block: ``x + gate(conv3(act(conv3(act(x)))))`` with ``gate(h) = tanh(a) *
sigmoid(b)``, ``(a, b)`` a 1x1 conv of ``h``; ``act`` Mish (the authors') or SiLU (``activation``).

Sizes (paper, 2D): "large" 14 levels, s_code 128 (z 64), ~25 M parameters, 20 GB GPU;
"small" 6 levels, s_code 64 (z 32); the authors' course 6 levels, s_code 32. The CPU default
here (methods/cosdd.py) is 3 levels, s_code 16. Inputs are padded at the far end to a multiple of
``2**levels`` and cropped back (never centred, so the down-sampling grid is anchored at 0).

Signal decoder: ``layers`` conv 3 + ReLU of ``width`` channels, then a 1x1 conv to one channel
(the authors: 4 layers of s_code channels, reflect padding; zero padding here).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
MIN_STD = 1e-4

Noise = Callable[[int, tuple[int, ...], torch.Tensor], torch.Tensor]
"""``(level, shape, like) -> eps``: the standard normal noise of one level's latents."""


def gaussian_kl(mq: torch.Tensor, sq: torch.Tensor, mp: torch.Tensor, sp: torch.Tensor) -> torch.Tensor:
    """Elementwise KL( N(mq, sq^2) || N(mp, sp^2) ) (nats)."""
    return torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5


def gaussian_log_prob(z: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((z - m) / s) ** 2 - torch.log(s) - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=z.dtype))


_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply, constants below 2**31 so int64 never overflows)."""
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def keyed_normal(keys: list[torch.Tensor]) -> torch.Tensor:
    """Standard normal values that are a pure function of integer ``keys`` (broadcast together):
    two chained 32-bit hashes -> two uniforms -> Box-Muller. Counter-based: the value for a key
    never depends on which other keys are drawn, so a tile and a whole image that share a latent
    (same global coordinate) draw the same noise for it."""
    h = torch.zeros((), dtype=torch.int64, device=keys[0].device)
    for k in keys:
        h = _hash32(h * 0x1F3D5B79 + _hash32(k.to(torch.int64)))
    u1 = (_hash32(h ^ 0x68E31DA4).double() + 0.5) / 2**32
    u2 = (_hash32(h ^ 0x1B56C4E9).double() + 0.5) / 2**32
    return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)


def coordinate_noise(seed: int, sample: int, origins: torch.Tensor) -> Noise:
    """Latent noise keyed by ``(seed, sample, level, channel, global coordinates)``.

    ``origins`` (N, k) int64: the global voxel coordinates of each batch item's first voxel, the
    last ``ndim`` of them spatial (multiples of the VAE's ``factor``; leading ones, e.g. the
    plane index, are keys as they are). Latent ``i`` of level ``l`` along a spatial axis sits at
    global latent coordinate ``origin / 2**(l+1) + i``.
    """

    def noise(level: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = shape
        nd = len(spatial)
        o = origins.to(like.device, torch.int64)
        view = [n, 1] + [1] * nd
        keys = [torch.tensor(seed, device=like.device), torch.tensor(sample, device=like.device),
                torch.tensor(level, device=like.device)]
        keys += [o[:, a].reshape(view) for a in range(o.shape[1] - nd)]
        keys.append(torch.arange(c, device=like.device).reshape([1, c] + [1] * nd))
        for a, size in enumerate(spatial):
            grid = [1, 1] + [1] * nd
            grid[2 + a] = size
            start = o[:, o.shape[1] - nd + a].reshape(view) // 2 ** (level + 1)
            keys.append(start + torch.arange(size, device=like.device).reshape(grid))
        return keyed_normal(keys).expand(shape).to(like.dtype)

    return noise


ACTIVATIONS = ("mish", "silu")
"""The nets' activations, by their code in ``LadderVAE.activation_code``: Mish (the authors') and
SiLU (the same shape, cheaper on a CPU)."""


class Activation(nn.Module):
    """Mish or SiLU by ``name``; one instance is shared by all of a net's blocks."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(x) if self.name == "mish" else F.silu(x)

    def extra_repr(self) -> str:
        return self.name


class GatedResBlock(nn.Module):
    """``x + gate(conv(act(conv(act(x)))))``, channels kept, 'same' zero padding."""

    def __init__(self, ndim: int, channels: int, act: Activation, kernel: int = 3) -> None:
        super().__init__()
        conv = _CONV[ndim]
        self.act = act
        self.conv1 = conv(channels, channels, kernel, padding=kernel // 2)
        self.conv2 = conv(channels, channels, kernel, padding=kernel // 2)
        self.gate = conv(channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.act(self.conv1(self.act(x))))
        a, b = self.gate(h).chunk(2, dim=1)
        return x + torch.tanh(a) * torch.sigmoid(b)


def _gaussian(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, raw = params.chunk(2, dim=1)
    return mean, F.softplus(raw) + MIN_STD


class LadderVAE(nn.Module):
    """Ladder VAE encoder: ``x`` (N, 1, *spatial) -> signal code (N, s_code, *spatial), KL.

    Attributes: ``ndim, levels, s_code, z_channels, filters, factor`` (``2**levels``); buffers
    ``kl_per_pixel``: the KL per pixel of the last training batch (a posterior-collapse record
    that travels in the package; -1 until a training step sets it) and ``train_steps``: the
    training steps taken (a KL warm-up's clock, kept in checkpoints so a resumed run goes on);
    ``activation_code``: the activation (:data:`ACTIVATIONS`), so weights load with the one they
    were trained with (Mish where a package predates the buffer); ``activation`` its name.
    """

    def __init__(self, ndim: int, *, levels: int = 3, s_code: int = 32, filters: int | None = None,
                 activation: str = "silu") -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if levels < 1 or s_code < 2:
            raise ValueError("levels must be >= 1 and s_code >= 2")
        conv = _CONV[ndim]
        f = filters or s_code
        z = s_code // 2
        self.ndim, self.levels, self.s_code, self.z_channels, self.filters = ndim, levels, s_code, z, f
        self.factor = 2**levels
        self.act = Activation(activation)

        def block():
            return GatedResBlock(ndim, f, self.act)

        self.stem = nn.Sequential(conv(1, f, 5, padding=2), self.act, block())
        self.down = nn.ModuleList(nn.Sequential(conv(f, f, 3, stride=2, padding=1), block()) for _ in range(levels))
        self.q = nn.ModuleList(conv(f if l == levels - 1 else 2 * f, 2 * z, 3, padding=1) for l in range(levels))
        self.p = nn.ModuleList(conv(f, 2 * z, 3, padding=1) for _ in range(levels - 1))  # p[l], l < levels-1
        self.merge = nn.ModuleList(conv(z if l == levels - 1 else f + z, f, 1) for l in range(levels))
        self.td = nn.ModuleList(block() for _ in range(levels))
        self.out = nn.Sequential(block(), conv(f, s_code, 1))
        self.register_buffer("kl_per_pixel", torch.full((), -1.0))  # -1: not measured yet
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("activation_code", torch.tensor(ACTIVATIONS.index(activation)))

    @property
    def activation(self) -> str:
        return self.act.name

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "activation_code"
        state_dict.setdefault(key, torch.tensor(ACTIVATIONS.index("mish")))  # packages written before SiLU
        self.act.name = ACTIVATIONS[int(state_dict[key])]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        sizes = tuple(x.shape[2:])
        pads = [(-n) % self.factor for n in sizes]
        if any(pads):
            x = F.pad(x, [p for pad in reversed(pads) for p in (0, pad)])
        return x, sizes

    def bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features ``d_l`` of every level for ``x`` (spatial sizes multiples of ``factor``)."""
        h = self.stem(x)
        feats = []
        for down in self.down:
            h = down(h)
            feats.append(h)
        return feats

    def top_down(self, feats: list[torch.Tensor], noise: Noise | None = None, *, mean: bool = False,
                 kl: bool = True, log_ratio: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Sample the latents from q and decode: ``(s_code, kl, log_ratio)``.

        ``kl``: analytic KL summed over all latents of each batch item, ``(N,)`` (None when not
        asked: sampling then skips the priors p); ``log_ratio``: ``sum log q(z) - log p(z)`` at
        the sampled ``z`` (a one-sample Monte-Carlo KL), ``(N,)``, None unless asked.
        ``noise``: the standard normal draws (default ``torch.randn``); ``mean``: use q's means.
        """
        priors = kl or log_ratio
        kl_sum = ratio_sum = 0.0
        h = None
        for level in reversed(range(self.levels)):
            d = feats[level]
            if h is None:
                mq, sq = _gaussian(self.q[level](d))
                mp, sp = torch.zeros_like(mq), torch.ones_like(sq)
            else:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
                mp, sp = _gaussian(self.p[level](h)) if priors else (None, None)
                mq, sq = _gaussian(self.q[level](torch.cat([h, d], 1)))
            if mean:
                z = mq
            else:
                eps = noise(level, tuple(mq.shape), mq) if noise is not None else torch.randn_like(mq)
                z = mq + sq * eps
            dims = tuple(range(1, mq.ndim))
            if kl:
                kl_sum = kl_sum + gaussian_kl(mq, sq, mp, sp).sum(dims)
            if log_ratio:
                ratio_sum = ratio_sum + (gaussian_log_prob(z, mq, sq) - gaussian_log_prob(z, mp, sp)).sum(dims)
            m = self.merge[level](z if h is None else torch.cat([h, z], 1))
            h = self.td[level](m if h is None else h + m)
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.out(h), kl_sum if kl else None, ratio_sum if log_ratio else None

    def forward(self, x: torch.Tensor, noise: Noise | None = None, *, mean: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, 1, *spatial) -> ``(s_code (N, s_code, *spatial), kl (N,))``; any spatial size
        (padded at the far end to a multiple of ``factor``, the code cropped back)."""
        xp, sizes = self._pad(x)
        code, kl, _ = self.top_down(self.bottom_up(xp), noise, mean=mean)
        return code[(slice(None), slice(None), *(slice(0, n) for n in sizes))], kl


class SignalDecoder(nn.Module):
    """Signal code (N, s_code, *spatial) -> signal (N, 1, *spatial): ``layers`` conv 3 + ReLU, 1x1 conv.

    ``offset``: how far its outputs sit above their inputs on average (the running mean over
    :meth:`record_offset` calls; 0 until one), the level error of a short-trained decoder that
    the sampled prediction removes; ``offset_batches`` counts the calls. Both travel in the
    package; one written before they existed loads with 0 (its predictions unchanged).
    """

    def __init__(self, ndim: int, s_code: int = 32, *, width: int | None = None, layers: int = 3) -> None:
        super().__init__()
        conv = _CONV[ndim]
        w = width or s_code
        mods: list[nn.Module] = []
        cin = s_code
        for _ in range(layers):
            mods += [conv(cin, w, 3, padding=1), nn.ReLU()]
            cin = w
        mods.append(conv(cin, 1, 1))
        self.net = nn.Sequential(*mods)
        self.ndim, self.layers = ndim, layers
        self.register_buffer("offset", torch.zeros(()))
        self.register_buffer("offset_batches", torch.zeros((), dtype=torch.int64))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)

    @torch.no_grad()
    def record_offset(self, value: torch.Tensor) -> None:
        """Add one batch's mean of (output - input), a 0-d tensor on the decoder's device (no
        host round-trip), to the running mean ``offset``."""
        self.offset_batches += 1
        self.offset += (value - self.offset) / self.offset_batches

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("offset", "offset_batches"):  # packages written before the offset was recorded
            state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
