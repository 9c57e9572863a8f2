"""COSDD: correlated-noise removal with a VAE whose noise decoder sees one row (Salmon & Krull 2023).

Networks (normalised units, ``(raw - mean) / std``), one file each under :mod:`bigdenoise.nets`:

- ``encoder``: :class:`~bigdenoise.nets.lvae.LadderVAE`: data -> latents (q and p per level,
  analytic KL) -> signal code ``s_code`` at full resolution.
- ``ar_decoder``: :class:`~bigdenoise.nets.ar_decoder.ARDecoder`: ``p(x | s_code)`` pixel by
  pixel, each pixel seeing only the ``receptive_field`` (default 40) pixels before it along one
  axis, through a Gaussian mixture; it can model noise correlated along that axis, not the signal.
- ``signal_decoder``: :class:`~bigdenoise.nets.lvae.SignalDecoder`: ``s_code`` -> signal.
- ``direct_denoiser``: the project's U-Net (``--depth``, ``--features``...), distilled.

Training, two stages through the shared loop:

1. ``vae`` (``1 - distill_fraction`` of the budget): ELBO = mean per-pixel NLL of the AR decoder
   + KL summed over all latents / pixel count, its weight rising from 0 to 1 over the first
   ``kl_warmup`` steps (the ladder VAE paper's warm-up; the COSDD authors use 1 throughout, no
   free bits), plus the signal decoder's MSE to the noisy patch on the *detached* signal code
   (paper Eq. 6; its gradient never reaches the encoder). The encoder's buffer ``kl_per_pixel``
   keeps the last training batch's KL per pixel (it travels in the package); a ``UserWarning``
   is raised once when, past the warm-up, it falls below ``COLLAPSE_KL`` (posterior collapse:
   the latents carry nothing, the signal decoder outputs the mean). The stage hands its
   best-validation weights on (``Stage.keep_best``), not its last ones.
2. ``distill`` (``distill_fraction``, cosine learning rate): MSE of the U-Net on the (not
   dequantised) patch against the mean of ``distill_samples`` signal-decoder outputs of latent
   samples, each target shifted to its input patch's mean (:func:`distill_target`), computed
   without gradients (nothing flows into the VAE or the signal decoder); the training steps'
   mean shift is kept as the signal decoder's ``offset``; a warning when those targets are
   nearly flat (``FLAT_SIGNAL``).

Data (``likelihood``): on a patch whose values lie on a lattice (the normalised grey levels of
integer data) the AR decoder scores each pixel by its mixture's mass over the pixel's grey-level
bin (``binned``, the default), and where a patch piles up on its minimum (``CLIP_SPIKE`` of its
pixels) by the mass below that level's bin: the clip level stands for every value under it. A
bin's mass is at most 1, so a clipped 8-bit background cannot shrink a mixture component onto a
spike (the scale floor ``min_scale`` is the second guard). Float data always get the density.

Direction (``direction``): the axis along which the noise is correlated, **one per volume**,
kept in the AR decoder's buffer ``direction`` (0 x, 1 y; in checkpoints and the package,
:func:`noise_direction`). ``x``/``y`` set it when the nets are built. ``auto`` (the default)
chooses it on the first training batch, before its step: the lag-1 autocorrelation along x vs
y of the high-passed patches (:func:`lag1_autocorrelation`, pooled over the batch, whose
patches the sampler draws from a few chunks of the volume); every later batch, and a resumed
run, decodes along the recorded axis. The shared loop's dihedral augmentation would transpose
half of the square patches, putting the stripes across the decoder's axis, so this method trains
with ``augment=False`` by default (``train_defaults``); an explicit ``augment=True`` decodes half
the patches across their stripes. Prediction does not need the direction.

Prediction (``prediction``, settable at prediction time):

- ``direct`` (default): one U-Net pass; exact tiling like N2V (the U-Net's radius and factor).
- ``sampled`` (also ``--option samples=N`` alone): the mean of ``samples`` (default 100)
  signal-decoder outputs of latent samples ``z ~ q(z|x)`` (the bottom-up pass is computed once
  per tile), less the decoder's ``offset`` (one constant: the level error the direct path's
  targets remove patch by patch; on the strongest stripes +0.030 of the range, 0.6 dB), exact
  when tiled. The latent noise is keyed by ``(seed, sample, level, channel, global coordinate)``
  (:func:`~bigdenoise.nets.lvae.coordinate_noise`, a counter-based hash, seed
  :data:`SAMPLE_SEED`): the method declares ``tile_origins``, so ``infer`` tells
  :func:`predict` where each tile lies (its plane along S/T/Z, its input's first voxel along
  Y, X). The halo is the encoder + signal decoder's receptive radius, measured by a gradient
  probe (:func:`sampled_radius`), and tiles sit on multiples of ``2**levels`` (:func:`factor`),
  so every tile sees what a whole-image pass sees, latent noise included: tiled equals whole.

Volumes (``planes``): the nets are always 2D over YX planes. Along S, T and Z each plane is one
image: on ZYX, SZYX and TZYX volumes Z is a stack axis without neighbours (``Method.planes``), so
training patches are YX patches of single planes and prediction runs plane by plane (the sampled
path keys its noise by the plane too). A model trained on SYX predicts ZYX and the reverse.

Defaults, sized for a few thousand steps (6 minutes on 2 CPU cores), each kept because it measured
better (labs of one seed, then 3-seed records in benchmarks/RESULTS.md, ``quality-cosdd-*``):

- ``likelihood=binned`` with the clip level censored: on Hagen mito-confocal (8-bit, 78 % of the
  low-SNR frame at 0) 1.4 dB above ``dequantized`` (uniform noise of one grey level, then the
  density) and level with struct-N2V; binned without the censoring lost 2 dB.
- ``kl_warmup`` 200 steps: with the KL's full weight from the first step the latents stayed empty
  for 250-750 steps while the AR decoder learnt alone, and a short run could end with a flat
  signal decoder.
- The VAE steps with Adamax at ``VAE_LR_SCALE`` times the configured rate (2e-3, the authors'),
  the distillation with Adam at that rate: under Adam two of three Hagen seeds ended flat.
- Each stage's own schedule (the VAE's rate halved on validation plateaus, the distillation's
  annealed): ``--schedule cosine`` (both annealed) scored 0.40 and 0.45 dB lower at two seeds of
  the strongest stripes.
- ``distill_fraction`` 0.2 and ``distill_samples`` 2 (0.3 and 4 before 7dbb186): the distillation
  needs some 300 steps rather than a share of the time. One VAE (the weakest stripes, 3.5 min),
  its direct denoiser distilled again for a fixed time: 1, 2 and 4 samples per target scored the
  same at 63 s (25.47 to 25.56 dB); 31 s with 4 samples could fall 0.4 dB short, 16 s fell 0.6 to
  1.2 dB. At 6 minutes on the weakest stripes the VAE then makes 8 to 23 % more steps and the
  model scored 0.13 ± 0.21 dB above the old split, two seeds of three (``quality-cosdd-weak-d20``;
  in an earlier one-seed lab on an AMD EPYC fractions 0.15 and 0.45 scored 0.38 and 0.37 dB under
  0.3).
- Its own foreground rule (``Method.foreground``, :class:`~bigdenoise.foreground.Rule`): ``auto``
  also turns foreground-aware sampling on when at least half the sampled voxels sit at a level
  with no noise (a clipped background), and a patch is always accepted only from 30 % foreground
  voxels (the shared 2 %). On the whole Hagen mito-confocal image, 78 % clipped zeros, uniform
  patches left COSDD level with struct-N2V (+0.00, one seed under; the cells 0.33 dB under): 80 %
  of its patches showed only zeros, which teach neither the noise model nor the latents, at a few
  thousand dear steps (12 minutes instead of 6 recovered most of the cells). With the rule +0.26
  and +0.33 (two runs of three seeds, all six above), the cells +0.16 and +0.32; on the central crop (64 % zeros) +0.16, where uniform patches
  gave +0.13 (``quality-cosdd-hagen-fg-cli``, ``-crop-fg-cli``). The shared 85 % rule is kept for
  a noisy background: it was set for N2V, and on sCMOS TIRF cells sampling on cost N2V 0.16 dB.
- ``keep_best`` for the VAE: on Hagen its validation ELBO could degrade late (two of six seeds
  flat at their last step, none from their best one).
- Batches of 8 patches of 64x64 (``train_defaults``; the loop's default is 16): at a wall-clock
  budget the VAE is short of steps, not of patches; 8 makes about twice the steps and scored
  0.07 to 0.43 dB above 16 in the four settings recorded at both (3 seeds each).
- Sizes: 3 levels, ``s_code`` 16 (twice the steps of 32 and 0.6 dB better on the stripes), AR
  decoder 16 channels, kernel 5, dilations 2,4,2,1 (receptive field 40, the paper's), 3 mixture
  components, signal decoder 3 layers. The paper, on a GPU: "large" 14 levels, ``s_code`` 128;
  "small" 6 levels, ``s_code`` 64. The authors' unstrided first latent level let the latents
  encode the row noise here (residue +0.36 against -0.04, one seed).
- ``activation=silu`` in the encoder's blocks (the authors' Mish has the same shape): a VAE step
  about a quarter cheaper on 2 cores of an Intel Xeon (107 -> 79 ms, batch 8 of 64x64), 1.2 to
  1.5 times the steps at a 3.5-minute budget there, and 0.30 dB above Mish on the weakest and the
  strongest stripes, every seed higher, 0.07 on Hagen mito-confocal, every pair higher
  (``quality-cosdd-weak-silu-short``, ``-hard-silu-short``, ``-hagen-silu-short``). The
  encoder's buffer ``activation_code`` keeps it with the weights; older packages, which lack it,
  load with Mish.
- The three VAE nets keep their weights channels last (``build``): their convolutions have few
  channels, and on 2 cores of an AMD EPYC a step took 0.82 times as long.
- The direct denoiser has no batch norm (``net_defaults``, as CARE, N2N and D-BSN) and its
  targets keep the input patch's mean (:func:`distill_target`). One VAE (BSD68's even half, row
  stripes, 6 min), distilled again for 110 s each time: with batch norm, evaluation-mode outputs
  sat off their targets by a global offset that changed from run to run (-0.039 to +0.012 of the
  range; 21.93 to 23.23 dB); without it they kept the decoder's own offset (-0.013; 23.12,
  23.23); with the targets' means matched as well, 0.000 (23.49, 23.51 dB; the VAE's 32-sample
  mean 23.19). Over 3 seeds there, 0.55 dB above struct-N2V where it had been 0.48 under.

Where it falls short: on noise that is not correlated (Hagen nucleus) it is 4 to 5 dB under N2V: the
noise decoder's 40-pixel context predicts the signal along the row, the latents keep what the row
cannot tell, and the outputs lose the brightness of large bright objects. With an 8-pixel context
(``ar_dilations=1``) it is 0.3 dB under N2V there, with a higher SSIM, and 0.2 dB over N2V on FMD
confocal (on Hagen mito-confocal, whose noise is row-correlated, one seed of it gave 21.82 dB, the
default 21.97 at that seed in an earlier run: no gain); on real sCMOS TIRF frames, whose noise is
nearly white, the default was 0.07 dB over N2V and the 8-pixel context 0.16, every pair higher
(``quality-cosdd-tirf``). ``auto`` warns when the first batch's noise shows no direction
(:data:`ISOTROPIC`). It needs steps: on the row stripes about 350 (batch 16, a
slow 2-core AMD EPYC) left it 1.15 dB under struct-N2V, about 2,850 (batch 8, an EPYC four times
faster) put it 0.81 dB above (0.97 with the distillation fixed); at the strongest stripes of the
issue's range about 2,700 steps left it +0.12 and +0.33 dB above struct-N2V in two runs of the
same three seeds, one seed under in each (-0.03, -0.24): at a wall-clock budget a seed does not fix a
run, and it moves about 0.4 dB from run to run; the seed under by 0.24 lost it in the distillation
(its VAE's 100-sample mean scored 22.59 dB, its direct denoiser 21.95); a third run, on an EPYC
with about 1,900 steps, +0.19 (one seed -0.04), and one VAE of it distilled five times 22.02 to
22.13 dB: most of the spread is the VAE's. On the weakest stripes about 2,900 steps put it 1.40 dB
over N2V, about 1,900 (a slower EPYC) 0.48. With SiLU, at 3.5 minutes on a fast Xeon (a slow
machine's 6): +0.24 over struct-N2V at the strongest stripes, every seed above, +0.83 over N2V
at the weakest, and level with struct-N2V on Hagen mito-confocal (-0.06, one seed -0.33). With
the shorter distillation as well, at 6 minutes on an Intel Xeon: +1.21 over N2V at the weakest
stripes (every pair higher, one seed +0.81), +0.51 over struct-N2V at the strongest (every seed
above), +0.13 over struct-N2V on Hagen mito-confocal over nine seeds (-0.01, +0.27 and, through
the command line, +0.13 in three runs of three seeds, one seed -0.20); on the whole Hagen image,
whose background is 78 % clipped zeros, with its own foreground rule (see Defaults), +0.26 and
+0.33 in two runs of three seeds, all six above, and +0.16 on the central crop
(``quality-cosdd-hagen-fg-cli``, ``-seeds345``, ``-crop-fg-cli``).
Its stripe residue is mostly that of a blur: -0.24 on Set12's column stripes, as a supervised CARE's, a blur of the clean images giving -0.17 there;
+0.16 on BSD68's row stripes, a supervised CARE's +0.20, a blur of the clean images with no noise
+0.11; with the images' part cancelled between the row and column cases, +0.07 against CARE's
+0.11 (``quality-cosdd-bsd68-cli``, ``residue-content``).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..foreground import Rule
from ..nets.ar_decoder import ARDecoder, receptive_field
from ..nets.lvae import LadderVAE, SignalDecoder, coordinate_noise
from ..nets.unet import build_unet
from . import Method, Nets, Stage, image_mean

SAMPLE_SEED = 0
"""Seed of ``prediction=sampled``'s latent noise (keyed with the sample and the voxel coordinates)."""

VAE_LR_SCALE = 2.0
"""The VAE stage's learning rate over the configured one (Adamax's steps are smaller than Adam's)."""

COLLAPSE_KL = 1e-3
"""KL per pixel (nats) below which the latents are taken to have collapsed."""

ISOTROPIC = 0.05
"""``|rho_x - rho_y|`` (:func:`lag1_autocorrelation`) of the first training batch under which
``direction=auto`` warns that the noise has no direction. Batches of 8 patches of 64x64: 0.004 to
0.019 on Hagen nucleus and membrane, FMD, W2S and TIRF (uncorrelated noise), 0.19 to 0.56 on the
issue's stripes (weakest to strongest) and 0.32 on Hagen mito-confocal."""

SHORT_DILATIONS = (1,)
"""The noise decoder's dilations that the no-direction warning recommends (``ar_dilations=1``:
8 pixels of context with the default kernel; Hagen nucleus: 0.3 dB under N2V where 40 pixels were 4
to 5 dB under); a decoder that sees no more than they would at its kernel is not warned about."""

CLIP_SPIKE = 0.05
"""Fraction of an integer patch on its minimum from which ``likelihood=binned`` takes that
minimum for a clip level (8-bit Hagen mito-confocal: 78% of the low-SNR frame is 0)."""

# The distillation targets' spread below this fraction of the input's: the signal decoder outputs a
# nearly flat image. Measured: 6 min on one core (~250 VAE steps) left 2 of 3 seeds flat (13 dB,
# below the noisy input) with a KL per pixel (0.008) that COLLAPSE_KL does not flag.
FLAT_SIGNAL = 0.1


class COSDDOptions(BaseModel):
    """COSDD options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    direction: Literal["x", "y", "auto"] = Field(
        "auto", description="axis of the noise correlation, one per volume: auto (chosen from the high-passed "
        "lag-1 autocorrelation of the first training patches and recorded in the package), x (rows) or y (columns)")
    levels: int = Field(3, ge=1, le=8, description="ladder VAE levels, each down-sampling by 2 (paper: 6 or 14)")
    s_code: int = Field(16, ge=2, le=512, description="signal code channels; latents s_code/2 per level (paper: 64 or 128)")
    ar_channels: int = Field(16, ge=1, le=512, description="AR decoder feature channels (paper: 64)")
    ar_kernel: int = Field(5, ge=2, le=15, description="AR decoder 1-D kernel")
    ar_dilations: tuple[int, ...] = Field(
        (2, 4, 2, 1), description="dilations of the AR decoder's layers after the first; receptive field "
        "(ar_kernel - 1) * (1 + sum): 40 by default, the paper's value")
    components: int = Field(3, ge=1, le=16, description="Gaussians of the noise mixture (paper: 3-5)")
    min_scale: float = Field(1e-3, gt=0, description="floor of the mixture's scales (normalised units)")
    activation: Literal["silu", "mish"] = Field(
        "silu", description="the encoder's activation: silu, or mish (the authors'; the same shape, a VAE step "
        "about a third dearer on a CPU); a package keeps the one it was trained with")
    decoder_layers: int = Field(3, ge=1, le=16, description="signal decoder conv layers (paper: 4)")
    likelihood: Literal["binned", "dequantized", "continuous"] = Field(
        "binned", description="the noise model's score of integer-valued patches: binned (each component's mass "
        "over the grey level's bin; a patch's minimum shared by CLIP_SPIKE of its pixels is a clip level, censored), "
        "dequantized (uniform noise of one grey level added, then the density) or continuous (the density at the "
        "values as they are); other data always get the density")
    kl_warmup: int = Field(
        200, ge=0, description="VAE training steps over which the KL's weight rises linearly from 0 to 1 (the "
        "ladder VAE's warm-up; 0: weight 1 from the start, as the COSDD authors)")
    distill_fraction: float = Field(0.2, gt=0, lt=1, description="budget share of the direct denoiser's distillation")
    distill_samples: int = Field(2, ge=1, le=64, description="latent samples averaged per distillation target")
    prediction: Literal["direct", "sampled"] = Field(
        "direct", description="direct: the distilled U-Net (one pass); sampled: mean of `samples` signal-decoder "
        "outputs, latent noise keyed by voxel coordinates (both tile exactly)")
    samples: int = Field(100, ge=1, le=100000, description="latent samples averaged by prediction=sampled (paper: 100)")

    @model_validator(mode="before")
    @classmethod
    def _dequantize(cls, data):
        """Packages written before ``likelihood`` say ``dequantize`` (true: dequantized)."""
        if isinstance(data, dict) and "dequantize" in data:
            data = dict(data)
            old = data.pop("dequantize")
            data.setdefault("likelihood", "dequantized" if old else "continuous")
        return data

    @field_validator("ar_dilations", mode="before")
    @classmethod
    def _dilations(cls, value):
        if isinstance(value, str):
            value = [int(v) for v in value.replace(" ", "").split(",") if v]
        value = tuple(value)
        if not value or any(int(d) < 1 for d in value):
            raise ValueError("ar_dilations must be one or more positive integers, e.g. 2,4,2,1")
        return value


DIRECTIONS = ("x", "y")
"""``ARDecoder.direction`` 0 and 1."""


def build(net, ndim: int, options: COSDDOptions) -> Nets:
    ar = ARDecoder(ndim, options.s_code, channels=options.ar_channels, kernel=options.ar_kernel,
                   dilations=options.ar_dilations, components=options.components, min_scale=options.min_scale)
    if options.direction != "auto":
        ar.direction.fill_(float(DIRECTIONS.index(options.direction)))
    vae = {
        "encoder": LadderVAE(ndim, levels=options.levels, s_code=options.s_code, activation=options.activation),
        "ar_decoder": ar,
        "signal_decoder": SignalDecoder(ndim, options.s_code, layers=options.decoder_layers),
    }
    if ndim == 2:
        for v in vae.values():
            v.to(memory_format=torch.channels_last)
    return {**vae, "direct_denoiser": build_unet(ndim, 1, 1, **net.model_dump())}


def noise_direction(nets: Nets) -> Literal["x", "y"] | None:
    """The axis the AR decoder decodes along, as recorded in ``nets`` (None: not chosen yet)."""
    d = float(nets["ar_decoder"].direction)
    return None if d < 0 else DIRECTIONS[int(d)]


# ---------------------------------------------------------------------------------------------
# Preparing examples (pure numpy)


def grey_step(x: np.ndarray) -> float:
    """The lattice step of ``x`` when its values are integers after an affine map (normalised
    integer data: one grey level), else 0."""
    u = np.unique(x)
    if u.size < 2 or u.size > 65536:
        return 0.0
    step = float(np.diff(u).min())
    if step <= 0:
        return 0.0
    r = (u.astype(np.float64) - float(u[0])) / step
    if r[-1] > 65536 or np.abs(r - np.round(r)).max() > 1e-2:
        return 0.0
    return step


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k windows of the last two axes ('valid')."""
    c = np.cumsum(np.cumsum(np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)]), -1), -2)
    s = c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]
    return s / (k * k)


def lag1_autocorrelation(x: np.ndarray, box: int = 5) -> tuple[float, float]:
    """``(rho_x, rho_y)``: lag-1 autocorrelation along the last axis and along the one before, of
    ``x`` (..., Y, X) high-passed by subtracting a ``box`` x ``box`` mean."""
    x = np.asarray(x, np.float64)
    h = box // 2
    if min(x.shape[-2:]) <= box + 1:
        box, h = 1, 0
    hp = x[..., h:x.shape[-2] - h, h:x.shape[-1] - h] - (_box_mean(x, box) if box > 1 else x.mean())
    hp = hp - hp.mean()
    var = float((hp * hp).mean())
    if var <= 0:
        return 0.0, 0.0
    rx = float((hp[..., :, 1:] * hp[..., :, :-1]).mean()) / var
    ry = float((hp[..., 1:, :] * hp[..., :-1, :]).mean()) / var
    return rx, ry


def prepare(sample: dict[str, np.ndarray], rng: np.random.Generator, options: COSDDOptions) -> dict[str, np.ndarray]:
    """``input``: the patch; ``noisy``: what the ELBO scores (the patch, dequantised with
    ``likelihood=dequantized``). With ``binned``: ``half``, half the patch's grey level (0 when
    its values are not integers: then the density), and ``censored``, 1 on its pixels on a clip
    level (the patch's minimum when at least ``CLIP_SPIKE`` of them sit there), else 0."""
    x = sample["input"].astype(np.float32)
    if options.likelihood == "continuous":
        return {"input": x, "noisy": x}
    step = grey_step(x)
    if options.likelihood == "dequantized":
        noisy = (x + rng.uniform(-step / 2, step / 2, x.shape)).astype(np.float32) if step > 0 else x
        return {"input": x, "noisy": noisy}
    floor = x <= x.min() + step / 4
    censored = floor if step > 0 and floor.mean() >= CLIP_SPIKE else np.zeros(x.shape, bool)
    return {"input": x, "noisy": x, "half": np.full((1,) * x.ndim, step / 2, np.float32),
            "censored": censored.astype(np.float32)}


# ---------------------------------------------------------------------------------------------
# Losses


def batch_direction(nets: Nets, batch: dict[str, torch.Tensor], record: bool = False) -> Literal["x", "y"]:
    """The AR decoder's axis for ``batch``: the recorded one, or, while none is (``auto`` before
    the first training step), the axis along which the batch's high-passed patches correlate most
    (:func:`lag1_autocorrelation`, pooled over the batch), recorded in the AR decoder's
    ``direction`` when ``record``, with a warning when the two axes' correlations differ by less
    than :data:`ISOTROPIC` (no correlated noise to remove) and the decoder sees more than
    :data:`SHORT_DILATIONS` would give it."""
    chosen = noise_direction(nets)
    if chosen is not None:
        return chosen
    rx, ry = lag1_autocorrelation(batch["input"].detach().float().cpu().numpy())
    chosen = "y" if ry > rx else "x"
    if record:
        ar = nets["ar_decoder"]
        ar.direction.fill_(float(DIRECTIONS.index(chosen)))
        context, short = ar.receptive_field, receptive_field(ar.kernel, SHORT_DILATIONS)
        if abs(rx - ry) < ISOTROPIC and context > short:
            warnings.warn(
                f"cosdd: the noise shows no direction (high-passed lag-1 autocorrelation {rx:+.2f} along x, "
                f"{ry:+.2f} along y): COSDD removes noise correlated along rows or columns; on uncorrelated noise "
                f"its noise decoder's {context}-pixel context models the signal too and large bright objects "
                f"lose their brightness; use --method n2v, or a short context (--option "
                f"ar_dilations={','.join(map(str, SHORT_DILATIONS))}: {short} pixels)", UserWarning, stacklevel=2)
    return chosen


def elbo_terms(nets: Nets, batch: dict[str, torch.Tensor], record: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(nll, kl, sd_mse)`` per pixel for a batch: the AR decoder's mean negative
    log-likelihood (along :func:`batch_direction`), the KL summed over latents / pixel count,
    the signal decoder's MSE on the detached signal code."""
    along_y = batch_direction(nets, batch, record) == "y"
    x = batch["noisy"].float()
    code, kl = nets["encoder"](x)
    code = code.float()
    nll = -nets["ar_decoder"].log_prob(x, code, along_y=along_y, half=batch.get("half"),
                                       censored=batch.get("censored")).mean()
    kl = kl.float().sum() / x.numel()
    sd = ((nets["signal_decoder"](code.detach()).float() - x) ** 2).mean()
    return nll, kl, sd


def kl_weight(steps: int, warmup: int) -> float:
    """The KL's weight at training step ``steps`` (0-based) of a ``warmup``-step linear warm-up."""
    return 1.0 if warmup <= 0 else min(1.0, (steps + 1) / warmup)


def vae_loss(nets: Nets, batch: dict[str, torch.Tensor], options: COSDDOptions) -> torch.Tensor:
    """ELBO (NLL + KL per pixel) plus the signal decoder's MSE (stop-gradient into the encoder).

    A training step (nets in training mode, gradients on) weighs the KL by :func:`kl_weight`
    (the warm-up: with the full KL from the first step the latents stay empty for hundreds of
    steps while the AR decoder learns alone), counts itself in the encoder's ``train_steps``,
    records the noise direction (``auto``: on the first batch) and the KL per pixel, and warns
    once when that KL, past the warm-up, says the latents collapsed. Validation: the full ELBO."""
    enc = nets["encoder"]
    training = enc.training and torch.is_grad_enabled()
    nll, kl, sd = elbo_terms(nets, batch, record=training)
    if not training:
        return nll + kl + sd
    steps = int(enc.train_steps)
    kl_value = float(kl.detach())  # the step's one device sync of the method
    with torch.no_grad():
        enc.kl_per_pixel.fill_(kl_value)
        enc.train_steps.add_(1)
    if kl_value < COLLAPSE_KL and steps >= options.kl_warmup and not getattr(enc, "_collapse_warned", False):
        enc._collapse_warned = True
        warnings.warn(f"cosdd: the KL is {kl_value:.2e} nats per pixel at step {steps}: the latents may have "
                      f"collapsed (the signal decoder then outputs the mean); check the noise direction, train "
                      f"longer or with another seed", UserWarning, stacklevel=2)
    return nll + kl_weight(steps, options.kl_warmup) * kl + sd


def signal_samples(nets: Nets, x: torch.Tensor, n: int, generator: torch.Generator | None = None,
                   origins: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Mean of ``n`` signal-decoder outputs of latent samples ``z ~ q(z | x)``; ``x`` (N, 1, *spatial).

    The latent noise: ``torch.randn`` (from ``generator`` when given), or, with ``origins``
    ((N, k) global voxel coordinates of each item's first voxel, spatial ones multiples of the
    encoder's ``factor``), keyed by ``(seed, sample, level, channel, global coordinate)``
    (:func:`~bigdenoise.nets.lvae.coordinate_noise`): then tiles with a halo of
    :func:`sampled_radius` give exactly the whole image's values.
    """
    enc, dec = nets["encoder"], nets["signal_decoder"]
    xp, sizes = enc._pad(x)
    feats = enc.bottom_up(xp)

    def drawn(level, shape, like):
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)

    total = None
    for k in range(n):
        if origins is not None:
            noise = coordinate_noise(seed, k, origins)
        else:
            noise = drawn if generator is not None else None
        code, _, _ = enc.top_down(feats, noise, kl=False)
        s = dec(code).float()
        total = s if total is None else total + s
    return (total / n)[(slice(None), slice(None), *(slice(0, m) for m in sizes))]


def distill_target(nets: Nets, x: torch.Tensor, samples: int, record: bool = False) -> torch.Tensor:
    """The direct denoiser's target for ``x`` (N, 1, *spatial): the mean of ``samples``
    signal-decoder outputs, shifted so that each patch's mean is the input patch's (the noise has
    zero mean, the assumption of the signal decoder's MSE; a short-trained decoder's outputs were
    off by 0.013 to 0.030 of the range, 0..1 stripes data). ``record``: add the batch's mean
    shift to the signal decoder's ``offset``, which the sampled prediction removes."""
    target = signal_samples(nets, x, samples)
    shift = image_mean(target) - image_mean(x)
    if record:
        nets["signal_decoder"].record_offset(shift.mean())
    return target - shift


def _spread(x: torch.Tensor) -> float:
    """Standard deviation of ``x`` (N, C, *spatial) about each patch's mean."""
    return float((x - image_mean(x)).std())


def distill_loss(nets: Nets, batch: dict[str, torch.Tensor], options: COSDDOptions) -> torch.Tensor:
    """MSE of the direct denoiser against :func:`distill_target`. A training step warns (once
    per process) when those targets are nearly flat: their spread about each patch's mean under
    ``FLAT_SIGNAL`` of the input's (the VAE has not learnt the signal)."""
    x = batch["input"]
    training = nets["direct_denoiser"].training
    with torch.no_grad():
        target = distill_target(nets, x.float(), options.distill_samples, record=training)
        if training and _spread(target) < FLAT_SIGNAL * _spread(x.float()):
            warnings.warn("cosdd: the signal decoder's output is nearly flat (its spread is under "
                          f"{FLAT_SIGNAL:.0%} of the input's): the VAE has not learnt the signal yet and the "
                          "denoised images will be flat; train longer (--max-time), on more cores, or with "
                          "another seed", UserWarning, stacklevel=2)
    return ((nets["direct_denoiser"](x).float() - target) ** 2).mean()


def stages(options: COSDDOptions) -> tuple[Stage, ...]:
    return (Stage("vae", ("encoder", "ar_decoder", "signal_decoder"), vae_loss, fraction=1.0 - options.distill_fraction,
                  optimizer="adamax", lr_scale=VAE_LR_SCALE, keep_best=True),
            Stage("distill", ("direct_denoiser",), distill_loss, fraction=options.distill_fraction,
                  schedule="cosine"))


# ---------------------------------------------------------------------------------------------
# Prediction


def predict(nets: Nets, x: torch.Tensor, options: COSDDOptions, origins: torch.Tensor | None = None) -> torch.Tensor:
    """Denoised tiles ``(N, 1, *spatial)`` for ``x`` ``(N, 1, *spatial)``.

    ``origins`` (``Method.tile_origins``): ``(N, k)`` int64, each tile's planes along the
    non-spatial axes, then its first voxel along the spatial ones; ``prediction=sampled`` keys
    its latent noise by them (None: every tile as one whole image at spatial origin 0)."""
    if options.prediction == "direct":
        return nets["direct_denoiser"](x)
    if origins is None:
        origins = torch.zeros((x.shape[0], x.ndim - 2), dtype=torch.int64)
    offset = nets["signal_decoder"].offset.to(x.dtype)
    return signal_samples(nets, x, options.samples, origins=origins, seed=SAMPLE_SEED) - offset


def _probe_radius(fn, ndim: int, factor: int, size: int = 128) -> int:
    """How far an output voxel of ``fn`` (N, 1, *spatial) -> (N, C, *spatial) looks along the last
    axis, measured: for each phase of the ``factor`` grid, the support of the gradient of one
    output voxel (summed over channels) with respect to the input; the input widens until the
    support stays inside it. Float64, random data."""
    while True:
        shape = (1, 1) + (factor,) * (ndim - 1) + (size,)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
        y = fn(x).sum(1)
        centre = (size // 2) // factor * factor
        radius, touches = 0, False
        for q in range(factor):
            (grad,) = torch.autograd.grad(y[(0,) + (factor // 2,) * (ndim - 1) + (centre + q,)], x, retain_graph=True)
            cols = grad.abs().reshape(-1, size).sum(0).nonzero().flatten()
            if cols.numel():
                lo, hi = int(cols.min()), int(cols.max())
                radius = max(radius, centre + q - lo, hi - centre - q)
                touches = touches or lo == 0 or hi == size - 1
        if not touches:
            return radius
        size *= 2


def sampled_radius(nets: Nets) -> int:
    """Receptive radius of ``signal_decoder(encoder(x))``, measured by a gradient probe
    (:func:`_probe_radius`) on a 2D twin of the same structure (levels, decoder layers; every
    kernel is isotropic, so the radius is the same along every axis, also in 3D) with 4 channels
    and random float64 weights, latents at ``mean + std`` so both of q's outputs count. Cached
    on the encoder."""
    enc = nets["encoder"]
    cached = getattr(enc, "_sampled_radius", None)
    if cached is not None:
        return cached
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        e = LadderVAE(2, levels=enc.levels, s_code=4).double()
        d = SignalDecoder(2, 4, layers=nets["signal_decoder"].layers).double()

    def fn(x):
        return d(e(x, noise=lambda level, shape, like: torch.ones(shape, dtype=like.dtype))[0])

    with torch.enable_grad():
        radius = _probe_radius(fn, 2, e.factor)
    enc._sampled_radius = radius
    return radius


def receptive_radius(nets: Nets, options: COSDDOptions) -> int:
    if options.prediction == "direct":
        return nets["direct_denoiser"].receptive_radius
    return sampled_radius(nets)


def factor(nets: Nets, options: COSDDOptions) -> int:
    if options.prediction == "direct":
        return nets["direct_denoiser"].factor
    return max(nets["direct_denoiser"].factor, nets["encoder"].factor)


METHOD = Method(
    name="cosdd",
    options=COSDDOptions,
    inputs=("input",),
    build=build,
    prepare=prepare,
    stages=stages,
    predict=predict,
    receptive_radius=receptive_radius,
    factor=factor,
    predict_options=("prediction", "samples"),
    option_implies={"samples": {"prediction": "sampled"}},  # `--option samples=100` alone: the sampled path
    tile_origins=True,
    planes=True,
    # the authors' rate (at 4e-4 the latents stay empty for long); batch 8, twice the steps of 16
    # (see Defaults); no augmentation, whose 90-degree rotations would turn the stripes across the
    # one noise direction
    train_defaults={"lr": 2e-3, "batch_size": 8, "augment": False},
    net_defaults={"batch_norm": False},  # the direct denoiser's (see Defaults)
    foreground=Rule(clipped_background=0.5, full_content=0.3),  # see Defaults
)
