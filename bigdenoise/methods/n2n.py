"""Noise2Noise (Lehtinen et al., ICML 2018): learn from pairs of independent noisy acquisitions.

Training: the U-Net maps one noisy acquisition to a second, independent noisy acquisition of
the same scene (``--target``), read at the same box; with zero-mean noise the best prediction
under the MSE is the clean signal. Both volumes are normalised with the *input's* statistics:
they share one intensity scale, and a shared affine map keeps the target's expectation the
clean signal in the network's units. Prediction: one forward pass, mapped back with the input's
statistics. No batch normalisation by default (as in the paper).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from ..nets.unet import build_unet
from . import Method, Nets, Stage


class N2NOptions(BaseModel):
    """Noise2Noise options: the pixel loss (MSE learns the mean, MAE the median)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: Literal["mse", "mae"] = "mse"


def build(net, ndim: int, options) -> Nets:
    return {"unet": build_unet(ndim, 1, 1, **net.model_dump())}


def prepare(sample: dict[str, np.ndarray], rng: np.random.Generator, options) -> dict[str, np.ndarray]:
    """The pair as read: ``input`` and ``target``, each ``(1, *spatial)``."""
    return {"input": sample["input"], "target": sample["target"]}


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean squared (``"mse"``) or absolute (``"mae"``) error over every pixel."""
    diff = pred.float() - target.float()
    return (diff**2).mean() if kind == "mse" else diff.abs().mean()


def loss(nets: Nets, batch: dict[str, torch.Tensor], options) -> torch.Tensor:
    return pixel_loss(nets["unet"](batch["input"]), batch["target"], options.loss)


def predict(nets: Nets, x: torch.Tensor, options) -> torch.Tensor:
    return nets["unet"](x)


METHOD = Method(
    name="n2n",
    options=N2NOptions,
    inputs=("input", "target"),
    build=build,
    prepare=prepare,
    stages=lambda options: (Stage("n2n", ("unet",), loss),),
    predict=predict,
    receptive_radius=lambda nets, options: nets["unet"].receptive_radius,
    factor=lambda nets, options: nets["unet"].factor,
    net_defaults={"batch_norm": False},
)
