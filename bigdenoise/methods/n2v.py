"""Noise2Void (Krull et al., CVPR 2019), with the N2V2 and struct-N2V variants.

Training: in each patch a stratified set of pixels is masked, each replaced by a random
neighbour from a 5x5 (5x5x5) window excluding itself (N2V2: by the window's median); the
U-Net is trained with the MSE between its output and the original noisy values at the masked
pixels only. Prediction: one forward pass on the unmasked input.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..masking import n2v_mask
from ..nets.unet import build_unet
from . import Method, Nets, Stage


class N2VOptions(BaseModel):
    """Noise2Void options. Defaults follow the paper (64 masked pixels per 64x64 patch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    masked_fraction: float = Field(64 / 4096, gt=0, lt=0.5)
    window: int = Field(5, ge=3)
    replacement: Literal["uniform", "median"] = Field("uniform", description="N2V2 uses median")
    struct_axis: int | None = Field(None, ge=0, description="spatial axis of correlated noise (struct-N2V)")
    struct_span: int = Field(0, ge=0)


def build(net, ndim: int, options: N2VOptions) -> Nets:
    return {"unet": build_unet(ndim, 1, 1, **net.model_dump())}


def prepare(sample: dict[str, np.ndarray], rng: np.random.Generator, options: N2VOptions) -> dict[str, np.ndarray]:
    x = sample["input"]
    masked, mask = n2v_mask(
        x, rng, fraction=options.masked_fraction, window=options.window, replacement=options.replacement,
        struct_axis=options.struct_axis, struct_span=options.struct_span,
    )
    return {"input": masked, "target": x, "mask": mask[None]}


def mse_on_mask(pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared error between ``pred`` and ``batch["target"]`` over the masked pixels only.

    ``pred``, ``batch["target"]`` and ``batch["mask"]`` (1 at the masked pixels, else 0) are
    ``(B, 1, *spatial)``; returns a scalar.
    """
    mask = batch["mask"]
    return ((pred.float() - batch["target"]) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


def masked_mse(nets: Nets, batch: dict[str, torch.Tensor], options: N2VOptions) -> torch.Tensor:
    """N2V's loss: :func:`mse_on_mask` of the U-Net's output for the masked input."""
    return mse_on_mask(nets["unet"](batch["input"]), batch)


def predict(nets: Nets, x: torch.Tensor, options: N2VOptions) -> torch.Tensor:
    return nets["unet"](x)


METHOD = Method(
    name="n2v",
    options=N2VOptions,
    inputs=("input",),
    build=build,
    prepare=prepare,
    stages=lambda options: (Stage("n2v", ("unet",), masked_mse),),
    predict=predict,
    receptive_radius=lambda nets, options: nets["unet"].receptive_radius,
    factor=lambda nets, options: nets["unet"].factor,
)
