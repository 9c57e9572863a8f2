"""D-BSN + noise-level network + distillation (Wu, Liu, Cao, Ren, Zuo, ECCV 2020, "Unpaired
Learning of Deep Image Denoising"), for self-supervised training on noisy volumes alone.

Networks (all in normalised units, ``(raw - mean) / std``):

- ``bsn``: :class:`~bigdenoise.nets.blindspot.BlindSpotNet`, blind to each voxel's own value:
  the signal's mean ``mu`` and its uncertainty ``sigma_mu^2`` from the surroundings.
- ``noise``: :class:`NoiseLevel`, 1x1 convolutions giving the noise variance ``sigma_n^2``
  per voxel, a function of the signal (``mu``, detached: the noise level never trains ``mu``):
  ``noise="pg"`` (default; Poisson-Gaussian microscopy noise, variance affine in the signal:
  ``sigma_n^2 = tau softplus(G (a mu + b) / tau)``, tau = 0.05, a smooth positive floor; the
  gain G = ``NOISE_GAIN`` lets Adam move the level fast enough) or
  ``"hg"`` (the paper's heteroscedastic mode: a free 1x1-conv MLP of ``mu``) or ``"awgn"`` (one
  level per image, below).
- ``unet``: the project's U-Net (``--depth``, ``--features``...), distilled from the posterior;
  8 features by default (``net_defaults``): 5,300 multiply-adds per voxel against the width-16
  D-BSN's 22,000, so the distilled path predicts 3.5 times faster than the posterior (34 BSD68
  images, 5.2 Mvox, 2 EPYC cores: 1.96 s against 6.81 s); 16 features gave 1.6 times and the
  same PSNR (26.07 dB both, Poisson-Gaussian Set12, seed 0); width 24 with 8 features 25.48.
  No batch norm (``net_defaults``): with it, the student regressing the posterior kept a
  training-mode loss ten times its evaluation-mode loss (batch statistics far from the running
  ones) and the weights that predict ran jumped between checkpoints; without it, a student
  distilled from one fixed teacher for 150 s scored 1.7 dB higher (26.69 against 24.99 dB on
  BSD68-even sigma 25, within 0.11 dB of its teacher's posterior).

Defaults for a few hundred steps. Chosen first on an Intel Xeon (matmul probe 425 GFLOP/s, about
2,900 steps in 5 minutes) on BSD68-even at sigma 25 through the command line, seed 0 (the images
benchmarks/RESULTS.md's section quality-dbsn also scores): batch 16 (8 was worse at equal time),
a constant learning rate per stage (cosine annealing per stage cost 0.6 dB; with the defaults
below, on the EPYC, 0.36 dB on Poisson-Gaussian Set12, and a moving average of the weights 0.19 dB:
RESULTS quality-dbsn-averaging), the pseudo-pair loss over the whole patch (leaving out the band
where the teacher saw zero padding did not help), and a rate of 1e-3 then (4e-4 gave a posterior
0.3-0.8 dB lower). On 2 cores of an AMD EPYC nine times slower at matmul (about 500 steps at
width 32) the blind-spot net was under-trained and the distilled net fell 1.5 dB under N2V on
Poisson-Gaussian Set12, so the defaults now buy steps and train the blind mean longer: ``width``
16 (was 32: twice the steps), stage shares mu 0.4, variance 0.1, joint 0.3, distill 0.2 (were
0.2, 0.1, 0.3, 0.4), a rate of 2e-3 (``train_defaults``) and a student of 8 features (``unet``
above). Labs on that EPYC, 5 minutes, distilled PSNR (dB) for seeds 0, 1, 2:

===========================================  ===================  ==============
setting                                      Set12 Poisson-Gauss  BSD68 sigma 25
===========================================  ===================  ==============
old defaults (student U-Net 16 features)     23.99, 24.85, 24.68  25.94
width 16 + shares, rate 1e-3                 25.34, 25.53, 25.62  26.07
width 16 + shares, rate 2e-3                 26.07, 25.66         26.84
the same, student 8 features (the defaults)  26.07
width 24 + shares, rate 2e-3, student 8      25.48
N2V (its defaults)                           25.50, -, 25.46      24.95
===========================================  ===================  ==============

(N2V's seed 1 ran beside another job and is left out.) RESULTS records three seeds of the new
defaults on that EPYC: quality-dbsn-pg on Set12 (+0.34 dB over N2V; a second run,
quality-dbsn-averaging, +0.71), quality-dbsn on BSD68 at sigma 25 (+0.95), quality-dbsn-sigma at
sigma 15 and 50 (+0.67, +0.15), quality-dbsn-set12-sigma (Set12 at sigma 15, 25 and 50: +1.01,
+0.75, +0.54), quality-dbsn-w2s (+1.13), quality-dbsn-fmd (FMD confocal: +0.27, level with CARE),
quality-dbsn-awgn (BSD68 sigma 25 again: +0.68; ``noise=awgn`` +0.75, level with pg; CARE 1.29 dB
above) and quality-dbsn-hagen (row-correlated noise: level with N2V, under struct-N2V). On an
Intel Xeon six times faster (about 5,000 steps in 5 minutes) the same defaults are +1.12 dB over
N2V on BSD68 at sigma 25 (quality-dbsn-bsd68-xeon) and +0.76 on Set12 (quality-dbsn-xeon); there
CARE trained on Train400 pairs stays above the distilled net on Set12 by 1.70, 1.17 and 0.72 dB
at sigma 15, 25 and 50 (quality-dbsn-set12-care), on BSD68 by 1.95 and 0.91 dB at sigma 15 and
50 (quality-dbsn-bsd68-care).

Loss (slides S14, ``loss="constrained"``, the default) per voxel::

    1/2 [ (y - mu)^2 / (sigma_mu^2 + sigma_n^2) + log sigma_n^2 + sigma_mu^2 / sigma_n^2 ]

an upper bound of the Gaussian NLL ``1/2 [(y - mu)^2 / (sigma_mu^2 + sigma_n^2) + log(sigma_mu^2
+ sigma_n^2)]`` (``loss="nll"``, what the authors' released scripts train with), equal to it at
``sigma_mu = 0``. Only the sum of the variances enters the NLL, so the split between them is
not identifiable under it; the bound penalises ``sigma_mu^2`` and keeps ``sigma_n^2`` the noise.

Stages (fractions of the budget; a 0 fraction drops the stage), as the authors' code:
``mu`` (MSE of ``mu`` against ``y`` on every voxel), ``variance`` (the loss with the features
and ``mu`` frozen: the sigma head and the noise net), ``joint`` (the loss, everything of stage
one), ``distill`` (the U-Net trained on pseudo-pairs ``y -> x_hat``, the posterior mean of the
frozen stage-one nets; MSE). With ``co_distill`` (default) the U-Net already learns ``y ->
x_hat`` during ``joint``, from the posterior of the forward pass that stage computes anyway
(detached, so the teacher's gradients are unchanged): the student gains the joint stage's steps
(a third more in a 5-minute CPU run) at the cost of a U-Net step per joint step (its effect
alone was not measured).

``noise="awgn"``: one noise variance per image, as the authors' AWGN mode: the noise net is the
``hg`` MLP of 1x1 convolutions applied to the noisy ``y`` itself (not to ``mu``), giving a
voxelwise ``v(y_i)``, and an image's level is the mean of ``v`` over the whole image. In
training the "image" is the patch (each patch gets the mean of ``v`` over its voxels); the MLP's
last layer starts at zero, so the net starts as one learned scalar log-variance, which is all
the paper's mode amounts to when the training data has one noise level, and it can learn to
tell images of different levels apart from their intensity distribution. At prediction
(``prediction=posterior``) the level must be the whole image's, not a tile's, or tiles would
disagree: the method's ``prepass`` hands ``v`` to the engine, which averages it over every voxel
of each image (each position along S/T, or the whole volume) in a first pass before tiling and
predicts each image with ``noise_level`` set to its mean (``methods.Method.prepass``). Giving
``noise_level`` yourself (normalised variance) fixes a known level and skips the pre-pass; in
training it fixes the level too (the noise net is then unused).

Unpaired clean images (``train --clean CLEAN``; ``Method.unpaired``): during stage ``distill``
each training sample also reads a clean patch ``x`` of the clean volume (other fields of view,
any shape, the input's axes) at a random box of its own, normalised with the *input's*
statistics, and ``prepare`` draws a standard normal ``n`` for it from the sample's generator.
The synthetic pair is ``y~ = x + sigma_n(x) n -> x`` with the learned (frozen) noise net
(``awgn``: the level of the noisy patch drawn with it), and the loss is the slides' S11::

    L = mean ||f(y~) - x||^2 + clean_weight * mean ||f(y) - x_hat||^2

``clean_weight`` (lambda) defaults to 0.1, the weight the authors' distillation code gives the
pseudo-pairs (their batches are also 7/8 clean, ours pair one clean patch with each noisy one;
their +-10 % jitter of the noise level is not reproduced). Without ``--clean`` the loss is the
pseudo-pair MSE alone.

Posterior mean (Gaussian prior ``N(mu, sigma_mu^2)``, Gaussian noise ``N(0, sigma_n^2)``)::

    x_hat = (sigma_mu^2 y + sigma_n^2 mu) / (sigma_mu^2 + sigma_n^2)

Prediction (``prediction``, settable at prediction time): ``distilled`` (default: the U-Net,
one pass, its receptive radius), ``posterior`` (``x_hat``; the D-BSN's radius) or ``mu``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from ..errors import ConfigError
from ..nets.blindspot import BlindSpotNet, check_branches
from ..nets.unet import build_unet
from . import Method, Nets, Stage, image_mean

PG_TAU = 0.05  # the pg noise level's softplus temperature (normalised variance units)
MIN_VARIANCE = 1e-4  # floor of sigma_n^2 (normalised units), so the loss and the posterior stay finite
INITIAL_NOISE_VARIANCE = 0.5  # sigma_n^2 of an untrained noise net (normalised units)
NOISE_GAIN = 10.0
"""The noise net's 1x1 convs' output is multiplied by this. Adam moves every parameter by about
the learning rate per step, so without a gain the pg net's two parameters travel ~0.1 in a
few hundred steps, while the normalised noise variance may be anywhere in (0, 1): at 400
steps on synthetic Poisson-Gaussian data the learned sigma_n stayed 1.7x the truth, its
offset stuck near the start."""


def _parse_branches(value):
    """``"3:2,5:3"`` (command line) or ``[[3, 2], [5, 3]]`` -> ``((3, 2), (5, 3))``."""
    if isinstance(value, str):
        try:
            return tuple(tuple(int(v) for v in part.split(":")) for part in value.replace(" ", "").split(",") if part)
        except ValueError:
            raise ValueError(f"branches {value!r}: write k:d pairs separated by commas, e.g. 3:2,5:3") from None
    return value


class DBSNOptions(BaseModel):
    """D-BSN options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    noise: Literal["pg", "hg", "awgn"] = Field(
        "pg", description="noise level sigma_n^2: pg (affine in the signal, Poisson-Gaussian), hg (1x1-conv MLP of "
        "the signal), awgn (one level per image, the image mean of a 1x1-conv MLP of y)")
    noise_level: float | None = Field(
        None, gt=0, description="awgn only: a known noise variance (normalised units) for every image; None: "
        "learned, and estimated per image by a whole-volume pre-pass at prediction")
    clean_weight: float = Field(
        0.1, ge=0, description="lambda: weight of the pseudo-pairs y -> x_hat against the synthetic pairs from "
        "--clean in distillation (the authors' 0.1); unused without --clean")
    loss: Literal["constrained", "nll"] = Field(
        "constrained", description="constrained: the slides' bound (keeps sigma_n the noise); nll: plain Gaussian NLL")
    width: int = Field(16, ge=1, le=512, description="D-BSN feature channels (paper: 96)")
    blocks: int = Field(2, ge=0, le=64, description="dilated residual blocks per branch (paper: 8)")
    branches: tuple[tuple[int, int], ...] = Field(
        ((3, 2), (5, 3)), description="masked kernel k and dilation d of each branch (k:d,k:d), d >= (k+1)/2")
    block_kernel: int = Field(3, ge=3, le=9, description="kernel of the dilated convolutions (5 reaches the paper's radius)")
    noise_width: int = Field(16, ge=1, le=256, description="channels of the hg noise net's 1x1 convolutions")
    mu_fraction: float = Field(0.4, ge=0, description="budget share of stage mu (MSE of mu)")
    variance_fraction: float = Field(0.1, ge=0, description="budget share of stage variance (sigma heads, mu frozen)")
    joint_fraction: float = Field(0.3, ge=0, description="budget share of stage joint (D-BSN and noise net)")
    distill_fraction: float = Field(0.2, ge=0, description="budget share of stage distill (U-Net on y -> posterior)")
    co_distill: bool = Field(
        True, description="the U-Net also learns y -> posterior during stage joint, from the D-BSN's forward pass "
        "that stage computes anyway (detached); stage distill then refines it on the final posterior")
    prediction: Literal["distilled", "posterior", "mu"] = Field(
        "distilled", description="distilled: the U-Net; posterior: Bayes posterior mean of the D-BSN; mu: its prior mean")

    @field_validator("branches", mode="before")
    @classmethod
    def _branches(cls, value):
        return _parse_branches(value)

    @model_validator(mode="after")
    def _consistent(self):
        check_branches(self.branches, self.block_kernel)  # ValueError for a leaking configuration
        if self.noise_level is not None and self.noise != "awgn":
            raise ValueError(f"noise_level is a known level of noise=awgn; noise={self.noise} learns its own")
        if self.mu_fraction + self.variance_fraction + self.joint_fraction + self.distill_fraction <= 0:
            raise ValueError("at least one stage fraction must be > 0")
        if self.variance_fraction + self.joint_fraction <= 0 and self.distill_fraction > 0:
            raise ValueError("distillation needs trained variances: give variance_fraction or joint_fraction > 0")
        if self.prediction == "distilled" and self.distill_fraction <= 0:
            raise ValueError("prediction=distilled needs distill_fraction > 0; or predict with posterior or mu")
        return self


class NoiseLevel(nn.Module):
    """Noise variance ``sigma_n^2`` ``(N, 1, *spatial)`` of the signal ``mu`` ``(N, 1, *spatial)`` by 1x1 convs.

    ``kind="pg"``: one 1x1 conv, ``o = NOISE_GAIN (a mu + b)`` (zero ``a`` at start), ``sigma_n^2 =
    tau softplus(o / tau) + MIN_VARIANCE``: affine in the signal where it is positive.
    ``kind="hg"``: 1x1 -> ``width`` -> ReLU -> 1x1 -> ReLU -> 1x1 (last zero-initialised) times
    ``NOISE_GAIN``, ``sigma_n^2 = softplus(o) + MIN_VARIANCE``. ``kind="awgn"``: the same net, fed
    the noisy ``y``: its output is the voxelwise ``v`` whose image mean is the image's level
    (:func:`noise_variance`). All start at ``INITIAL_NOISE_VARIANCE``.
    """

    def __init__(self, ndim: int, kind: str, width: int = 16) -> None:
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[ndim]
        self.kind = kind
        if kind == "pg":
            self.net = conv(1, 1, 1)
            start = PG_TAU * math.log(math.expm1(INITIAL_NOISE_VARIANCE / PG_TAU))
        elif kind in ("hg", "awgn"):
            self.net = nn.Sequential(conv(1, width, 1), nn.ReLU(), conv(width, width, 1), nn.ReLU(), conv(width, 1, 1))
            start = math.log(math.expm1(INITIAL_NOISE_VARIANCE))
        else:
            raise ConfigError(f"noise level kind {kind!r} is not built; use pg, hg or awgn")
        last = self.net if kind == "pg" else self.net[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(start / NOISE_GAIN)

    def forward(self, mu: torch.Tensor) -> torch.Tensor:
        o = NOISE_GAIN * self.net(mu)
        if self.kind == "pg":
            return PG_TAU * F.softplus(o / PG_TAU) + MIN_VARIANCE
        return F.softplus(o) + MIN_VARIANCE


def build(net, ndim: int, options: DBSNOptions) -> Nets:
    return {
        "bsn": BlindSpotNet(ndim, 1, width=options.width, blocks=options.blocks, branches=options.branches,
                            block_kernel=options.block_kernel),
        "noise": NoiseLevel(ndim, options.noise, options.noise_width),
        "unet": build_unet(ndim, 1, 1, **net.model_dump()),
    }


def prepare(sample: dict[str, np.ndarray], rng: np.random.Generator, options: DBSNOptions) -> dict[str, np.ndarray]:
    """Nothing to mask: the network is blind by construction; every voxel is a target. With a
    clean patch (``--clean``), also the standard normal draw ``clean_noise`` of its synthetic pair."""
    example = {"input": sample["input"]}
    if "clean" in sample:
        example["clean"] = sample["clean"]
        example["clean_noise"] = rng.standard_normal(sample["clean"].shape, dtype=np.float32)
    return example


# --- the formulas (pure tensor functions) -------------------------------------------------------

def posterior_mean(y: torch.Tensor, mu: torch.Tensor, var_mu: torch.Tensor, var_n: torch.Tensor) -> torch.Tensor:
    """``(var_mu y + var_n mu) / (var_mu + var_n)``: the mean of x given y under the prior
    ``N(mu, var_mu)`` and the noise ``N(0, var_n)`` (``var_n > 0``)."""
    return (var_mu * y + var_n * mu) / (var_mu + var_n)


def gaussian_nll(y, mu, var_mu, var_n) -> torch.Tensor:
    """Mean over voxels of ``1/2 [(y - mu)^2 / (var_mu + var_n) + log(var_mu + var_n)]``."""
    var = var_mu + var_n
    return 0.5 * ((y - mu) ** 2 / var + torch.log(var)).mean()


def constrained_loss(y, mu, var_mu, var_n) -> torch.Tensor:
    """Mean over voxels of ``1/2 [(y - mu)^2 / (var_mu + var_n) + log var_n + var_mu / var_n]`` (slides
    S14), >= :func:`gaussian_nll` (``log(a + b) <= log b + a / b``), equal where ``var_mu = 0``."""
    return 0.5 * ((y - mu) ** 2 / (var_mu + var_n) + torch.log(var_n) + var_mu / var_n).mean()


LOSSES = {"constrained": constrained_loss, "nll": gaussian_nll}


def noise_variance(nets: Nets, y: torch.Tensor, mu: torch.Tensor, options: DBSNOptions) -> torch.Tensor:
    """sigma_n^2 of the noisy ``y`` whose signal estimate is ``mu`` (both ``(N, 1, *spatial)``),
    broadcastable to them: the noise net of ``mu`` (pg, hg); for awgn ``noise_level`` if set,
    else the mean of the net's ``v(y)`` over each of the ``N`` images (a patch, a tile or a
    whole image: the engine's pre-pass sets ``noise_level`` so that tiles use the whole image's)."""
    if options.noise != "awgn":
        return nets["noise"](mu)
    if options.noise_level is not None:
        return torch.full((y.shape[0], 1) + (1,) * (y.ndim - 2), float(options.noise_level), device=y.device)
    return image_mean(nets["noise"](y).float())


def _awgn_statistic(nets: Nets, x: torch.Tensor) -> torch.Tensor:
    """The voxelwise ``v(y)`` whose whole-image mean is an awgn image's noise variance."""
    return nets["noise"](x)


def prepass(options: DBSNOptions):
    """The statistic prediction averages per image first: awgn's ``v`` on the posterior path
    (unless ``noise_level`` is given); None otherwise."""
    if options.noise == "awgn" and options.noise_level is None and options.prediction == "posterior":
        return _awgn_statistic
    return None


# --- stages -------------------------------------------------------------------------------------

def mu_loss(nets: Nets, batch: dict[str, torch.Tensor], options: DBSNOptions) -> torch.Tensor:
    """Stage mu: MSE between the blind mean and the noisy input, every voxel."""
    y = batch["input"]
    return ((nets["bsn"].mean(y).float() - y) ** 2).mean()


def variance_loss(nets: Nets, batch: dict[str, torch.Tensor], options: DBSNOptions) -> torch.Tensor:
    """Stage variance: the loss for the sigma head and the noise net, the features and mu frozen."""
    y, bsn = batch["input"], nets["bsn"]
    with torch.no_grad():
        f = bsn.features(y)
        mu = bsn.mu_head(f)
    var_mu = bsn.variance(bsn.sigma_head(f))
    return LOSSES[options.loss](y, mu.float(), var_mu.float(), noise_variance(nets, y, mu, options).float())


def joint_loss(nets: Nets, batch: dict[str, torch.Tensor], options: DBSNOptions) -> torch.Tensor:
    """Stage joint: the loss for the whole D-BSN and the noise net (which sees mu detached); with
    ``co_distill``, plus the U-Net's MSE to the current posterior mean (detached: the student's
    term trains the U-Net only)."""
    y = batch["input"]
    mu, var_mu = nets["bsn"](y)
    var_n = noise_variance(nets, y, mu.detach(), options)
    loss = LOSSES[options.loss](y, mu.float(), var_mu.float(), var_n.float())
    if not options.co_distill:
        return loss
    target = posterior_mean(y.float(), mu.detach().float(), var_mu.detach().float(), var_n.detach().float())
    return loss + ((nets["unet"](y).float() - target) ** 2).mean()


def posterior(nets: Nets, y: torch.Tensor, options: DBSNOptions) -> torch.Tensor:
    """The posterior mean ``x_hat`` ``(N, 1, *spatial)`` of ``y`` ``(N, 1, *spatial)`` from the D-BSN and noise net."""
    mu, var_mu = nets["bsn"](y)
    var_n = noise_variance(nets, y, mu, options)
    return posterior_mean(y.float(), mu.float(), var_mu.float(), var_n.float())  # float32 under autocast too


def synthetic_noisy(nets: Nets, clean: torch.Tensor, noise: torch.Tensor, y: torch.Tensor,
                    options: DBSNOptions) -> torch.Tensor:
    """The noisy half ``x + sigma_n(x) n`` of synthetic pairs: clean patches ``clean`` and standard
    normal ``noise`` ``(N, 1, *spatial)``, with the noise net's level of the signal ``x`` (awgn: the
    level of the noisy patch ``y[i]`` drawn with ``clean[i]``). No gradient reaches the noise net."""
    with torch.no_grad():
        var_n = noise_variance(nets, y, clean, options).float()
    return clean.float() + var_n.sqrt() * noise.float()


def distill_loss(nets: Nets, batch: dict[str, torch.Tensor], options: DBSNOptions) -> torch.Tensor:
    """Stage distill: MSE between the U-Net's output for ``y`` and the frozen posterior mean; with
    clean patches (``--clean``), plus the MSE on synthetic pairs, the former weighted by
    ``clean_weight``."""
    y = batch["input"]
    with torch.no_grad():
        target = posterior(nets, y, options).float()
    pseudo = ((nets["unet"](y).float() - target) ** 2).mean()
    if "clean" not in batch:
        return pseudo
    x = batch["clean"].float()
    noisy = synthetic_noisy(nets, x, batch["clean_noise"], y, options)
    return ((nets["unet"](noisy.to(y.dtype)).float() - x) ** 2).mean() + options.clean_weight * pseudo


def stages(options: DBSNOptions) -> tuple[Stage, ...]:
    every = (
        Stage("mu", ("bsn",), mu_loss, fraction=options.mu_fraction),
        Stage("variance", ("bsn", "noise"), variance_loss, fraction=options.variance_fraction),
        Stage("joint", ("bsn", "noise", "unet") if options.co_distill else ("bsn", "noise"), joint_loss,
              fraction=options.joint_fraction),
        Stage("distill", ("unet",), distill_loss, fraction=options.distill_fraction, unpaired=("clean",)),
    )
    return tuple(s for s in every if s.fraction > 0)


# --- prediction ---------------------------------------------------------------------------------

def predict(nets: Nets, x: torch.Tensor, options: DBSNOptions) -> torch.Tensor:
    """``x`` ``(N, 1, *spatial)`` -> ``(N, 1, *spatial)`` by ``options.prediction``; the D-BSN
    paths run one tile at a time (its full-resolution feature maps bound the memory)."""
    if options.prediction == "distilled":
        return nets["unet"](x)
    if options.prediction == "posterior":
        return torch.cat([posterior(nets, x[i:i + 1], options) for i in range(x.shape[0])])
    return torch.cat([nets["bsn"].mean(x[i:i + 1]) for i in range(x.shape[0])])


def receptive_radius(nets: Nets, options: DBSNOptions) -> int:
    """The radius of the nets the chosen prediction runs: the U-Net's, or the D-BSN's."""
    return nets["unet" if options.prediction == "distilled" else "bsn"].receptive_radius


METHOD = Method(
    name="dbsn",
    options=DBSNOptions,
    inputs=("input",),
    build=build,
    prepare=prepare,
    stages=stages,
    predict=predict,
    receptive_radius=receptive_radius,
    factor=lambda nets, options: nets["unet"].factor,
    predict_options=("prediction", "noise_level"),
    unpaired=("clean",),
    train_defaults={"lr": 2e-3},
    net_defaults={"features": 8, "batch_norm": False},
    prepass=prepass,
    image_option="noise_level",
)
