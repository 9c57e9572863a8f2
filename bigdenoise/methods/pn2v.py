"""Probabilistic Noise2Void (Krull, Vičar, Jug 2019).

The U-Net predicts ``K`` samples ``s^k`` of each pixel's signal (a sample-based prior that
sees the pixel's surroundings only, thanks to N2V masking); a noise model ``p(x|s)``
(:mod:`bigdenoise.noise_models`) links them to the observed noisy value ``x``.

- Samples: ``s^k = centre(f) + offset_k(f)`` for the U-Net's features ``f`` (see :func:`_head`).
- Training, two stages with N2V masking (:func:`bigdenoise.masking.n2v_mask`), losses on the
  masked pixels only. Warm-up (``warmup`` of the budget, none when 0): N2V's loss, the MSE
  between the centre ``centre(f)`` and the noisy value, trains the U-Net's trunk and the centre
  while the offsets keep their initial comb, so the prior starts centred where N2V would predict.
  Then PN2V (paper eq. 7): loss ``-ln((1/K) sum_k p(x_i | s_i^k))``, computed as
  ``-(logsumexp_k ln p(x_i|s_i^k) - ln K)`` for stability, trains everything. The offsets
  start as a narrow comb (``initial_spread`` 0.25): eq. 7 widens a too-narrow prior quickly
  but shrinks a too-wide one slowly, and a wide prior makes the MMSE lean on the noisy pixel.
  Measured with benchmarks/pn2v_vs_n2v.py (Set12, 300 steps): gmm noise model 25.38 dB
  without warm-up and with a +-1 comb, 25.73 dB with both (N2V 25.07); histogram 21.99 ->
  24.44 dB (its samples get no gradient outside its signal range, so a centre already near
  the data matters more). Confirmed on images no benchmark scores (the last 12 Train400 images,
  3 seeds: every alternative lower in every seed; benchmarks/RESULTS.md#pn2v-defaults).
- Prediction (eq. 10): on the unmasked input, the MMSE estimate
  ``sum_k p(x|s^k) s^k / sum_k p(x|s^k)`` (``prediction="mmse"``), or the prior's mean
  ``(1/K) sum_k s^k`` (``prediction="prior_mean"``). Tiles are processed one at a time and
  the U-Net's 1x1 head is applied to slices of the ``K`` samples whose weighted sums are
  accumulated at once (online log-sum-exp), so the ``K``-channel output never exists whole:
  a tile's peak memory is the U-Net's features plus a few slices of at most
  ``SAMPLE_BUDGET`` values.

Units: the network sees normalised values (``(raw - mean) / std``, the engine's statistics);
the noise model lives in raw intensity units. ``nets["noise_model"]`` is a
:class:`~bigdenoise.noise_models.NoiseModelSlot` holding the noise model *and* the training
data's ``(mean, std)`` as buffers; it maps samples and observations to raw units before
evaluating ``p(x|s)``. ``setup`` (called by ``train.fit`` once the statistics are known) loads
the noise model named by ``options.noise_model`` and records the statistics; after that the
noise model and the statistics travel in ``weights.safetensors`` like the U-Net, and no stage
optimises them. A model package therefore never needs the noise-model file again.

Paper settings: U-Net depth 3, 64 features, K = 800 (``--depth 3 --features 64 --samples
800``, for a GPU). Defaults here are the engine's U-Net (depth 2, 32 features) and K = 64,
which train at a useful speed on a CPU.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..masking import n2v_mask
from ..nets.unet import build_unet
from ..noise_models import NoiseModelSlot, check_fits_data, load_noise_model
from . import Method, Nets, Stage
from .n2v import mse_on_mask

SAMPLE_BUDGET = 2**22
"""Most sample values (slice of K x tile voxels) alive at once while predicting one tile."""


class PN2VOptions(BaseModel):
    """PN2V options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    noise_model: str | None = Field(
        None, description="noise model directory (`bigdenoise noise-model --out NM`), read when training starts")
    samples: int = Field(64, ge=2, le=4096, description="K, samples of the signal per pixel (paper: 800)")
    masked_fraction: float = Field(64 / 4096, gt=0, lt=0.5)
    window: int = Field(5, ge=3)
    replacement: Literal["uniform", "median"] = "uniform"
    initial_spread: float = Field(
        0.25, ge=0, description="the K samples start evenly spread over +-this around their centre (normalised units)")
    warmup: float = Field(
        0.3, ge=0, lt=1, description="fraction of the training budget first spent training the samples' shared "
        "centre with N2V's loss, before PN2V's loss (0: PN2V's loss from the start)")
    prediction: Literal["mmse", "prior_mean"] = Field(
        "mmse", description="mmse: likelihood-weighted mean of the samples; prior_mean: their plain mean")


def build(net, ndim: int, options: PN2VOptions) -> Nets:
    if net.residual:
        raise ConfigError("pn2v predicts K samples per pixel and has no residual U-Net; drop residual")
    unet = build_unet(ndim, 1, options.samples, **net.model_dump())
    centre = type(unet.head)(unet.head.in_channels, 1, 1)
    with torch.no_grad():
        centre.bias.zero_()
        unet.head.weight.zero_()
        unet.head.bias.copy_(torch.linspace(-options.initial_spread, options.initial_spread, options.samples))
    return {
        "unet": unet,
        "centre": centre,
        "noise_model": NoiseModelSlot(),  # placeholder: N(x; s, 1) until setup loads the measured model
    }


def _head(nets: Nets) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(K, F, 1, ...)`` and bias ``(K,)`` of the 1x1 conv from features to the K samples.

    Sample ``k`` is ``centre(f) + head_k(f)``: one linear map from the features to K values, as
    in the paper, written as a shared centre plus per-sample offsets. The centre receives the
    gradient of every sample (responsibilities sum to one); the offsets start as a comb of
    ``initial_spread`` (normalised units) around it (zero weights), so no sample starts far from
    the data, where its likelihood, and so its gradient, would vanish. A plain K-output head with
    random weights leaves most samples stranded hundreds of intensity levels away after a short
    training (measured on Poisson-Gaussian Set12).
    """
    head, centre = nets["unet"].head, nets["centre"]
    return head.weight + centre.weight, head.bias + centre.bias


def samples(nets: Nets, x: torch.Tensor) -> torch.Tensor:
    """The K signal samples (normalised units) for a batch ``x`` ``(N, 1, *spatial)`` -> ``(N, K, *spatial)``."""
    weight, bias = _head(nets)
    return (F.conv2d if x.ndim == 4 else F.conv3d)(nets["unet"].trunk(x), weight, bias)


def centre(nets: Nets, x: torch.Tensor) -> torch.Tensor:
    """The samples' shared centre (normalised units) for a batch ``x`` ``(N, 1, *spatial)`` -> ``(N, 1, *spatial)``."""
    return nets["centre"](nets["unet"].trunk(x))


def setup(nets: Nets, options: PN2VOptions, stats) -> None:
    """Load the noise model, check it fits the data's intensities, record the normalisation."""
    if options.noise_model is None:
        raise ConfigError(
            "method pn2v needs a noise model p(x|s): pass --noise-model NM (Python: options={'noise_model': NM}). "
            "Make one with `bigdenoise noise-model --noisy IN --clean C --out NM` (calibration pairs), "
            "`--repeats-axis S` (repeated frames of a static field) or `--bootstrap N2V_MODEL` (no calibration data)")
    model = load_noise_model(options.noise_model)
    check_fits_data(model, stats.p_low, stats.p_high, "the training data")
    nets["noise_model"].set_model(model, mean=stats.mean, std=stats.std)


def prepare(sample: dict[str, np.ndarray], rng: np.random.Generator, options: PN2VOptions) -> dict[str, np.ndarray]:
    x = sample["input"]
    masked, mask = n2v_mask(x, rng, fraction=options.masked_fraction, window=options.window,
                            replacement=options.replacement)
    return {"input": masked, "target": x, "mask": mask[None]}


def warmup_loss(nets: Nets, batch: dict[str, torch.Tensor], options: PN2VOptions) -> torch.Tensor:
    """N2V's loss (:func:`~bigdenoise.methods.n2v.mse_on_mask`) of the samples' shared :func:`centre`."""
    return mse_on_mask(centre(nets, batch["input"]), batch)


def loss(nets: Nets, batch: dict[str, torch.Tensor], options: PN2VOptions) -> torch.Tensor:
    """Mean over the masked pixels of ``-ln((1/K) sum_k p(x | s^k))``."""
    mask = batch["mask"][:, 0] > 0  # (B, *spatial)
    s = samples(nets, batch["input"]).movedim(1, -1)[mask].float()  # (M, K)
    x = batch["target"][:, 0][mask].float()  # (M,)
    log_p = nets["noise_model"].log_likelihood(x[:, None], s)
    return -(torch.logsumexp(log_p, dim=1) - math.log(s.shape[1])).mean()


def stages(options: PN2VOptions) -> tuple[Stage, ...]:
    """The warm-up (when ``options.warmup`` > 0), then PN2V, sharing the budget by ``warmup``."""
    main = Stage("pn2v", ("unet", "centre"), loss, fraction=1.0 - options.warmup)
    if options.warmup == 0:
        return (main,)
    return Stage("warmup", ("unet", "centre"), warmup_loss, fraction=options.warmup), main


def predict(nets: Nets, x: torch.Tensor, options: PN2VOptions) -> torch.Tensor:
    """MMSE (or prior-mean) estimate for ``x`` ``(N, 1, *spatial)`` -> ``(N, 1, *spatial)``, one tile at a time."""
    return torch.cat([_estimate(nets, x[i:i + 1], options.prediction) for i in range(x.shape[0])])


def _estimate(nets: Nets, x: torch.Tensor, prediction: str) -> torch.Tensor:
    unet, slot = nets["unet"], nets["noise_model"]
    features = unet.trunk(x)
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    k_total = unet.out_channels
    step = max(1, min(k_total, SAMPLE_BUDGET // math.prod(x.shape[2:])))
    weight, bias = _head(nets)
    peak = num = den = None
    for k0 in range(0, k_total, step):
        s = conv(features, weight[k0:k0 + step], bias[k0:k0 + step]).float()  # (1, c, *spatial)
        if prediction == "prior_mean":
            part = s.sum(1, keepdim=True)
            num = part if num is None else num + part
            continue
        log_p = slot.log_likelihood(x, s)
        top = log_p.amax(1, keepdim=True)
        if peak is None:
            peak, num, den = top, torch.zeros_like(top), torch.zeros_like(top)
        else:
            top = torch.maximum(peak, top)
            rescale = torch.exp(peak - top)
            num, den, peak = num * rescale, den * rescale, top
        e = torch.exp(log_p - peak)
        den = den + e.sum(1, keepdim=True)
        num = num + (e * s).sum(1, keepdim=True)
    return num / k_total if prediction == "prior_mean" else num / den


METHOD = Method(
    name="pn2v",
    options=PN2VOptions,
    inputs=("input",),
    build=build,
    prepare=prepare,
    stages=stages,
    predict=predict,
    receptive_radius=lambda nets, options: nets["unet"].receptive_radius,
    factor=lambda nets, options: nets["unet"].factor,
    setup=setup,
    predict_options=("prediction",),
)
