"""Noise2Stack (Papkov et al., 2021): denoise a plane from its neighbours in a stack.

The planes around a target plane ``z`` along a stack axis (Z, or T for time-lapses) are fed to
a U-Net over the remaining spatial axes (2D for ZYX/TYX data) as input channels:

* ``mode="self"`` (self-supervised, an even number ``2k`` of input planes): the neighbours
  ``z-k .. z-1, z+1 .. z+k`` only; the target is the held-out noisy plane ``z`` itself. Noise
  is independent between planes, the signal is shared, so the network learns the signal.
* ``mode="copy"`` (copy-supervised, ``2k + 1`` planes): plane ``z`` and its neighbours; the
  target is plane ``z`` of a second, independent noisy acquisition (``--target``), normalised
  with the input's statistics (as Noise2Noise; with ``k = 0`` it would be Noise2Noise).

End planes: absent neighbours are copies of the existing plane nearest to them other than
``z`` (the paper: "for the first plane we use two copies of the second plane");
``tiling.reflect_indices(mode="stack")`` implements it for training
(``sampling.read_neighbourhood``) and blockwise prediction alike.

Training as in the paper: MSE on the network output, Adam, cosine learning-rate schedule over
the budget, no batch normalisation (``net_defaults``). The camera background removal the paper
applies to microscopy is ``--remove-background`` (``TrainConfig.remove_background``).
Prediction: one forward pass per plane neighbourhood (the tiler's ``"channel"`` axis with a
halo of ``k`` planes).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError
from ..nets.unet import build_unet
from . import Method, Nets, Stage


class Noise2StackOptions(BaseModel):
    """Noise2Stack options: stack axis, neighbours per side, self- or copy-supervised."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stack_axis: Literal["Z", "T"] = Field("Z", description="axis whose neighbouring planes are input channels")
    neighbours: int = Field(1, ge=1, le=16, description="planes on each side of the target plane (k)")
    mode: Literal["self", "copy"] = Field(
        "self", description="self: 2k neighbours predict the held-out plane; copy: the plane and its 2k "
        "neighbours predict the plane of a second acquisition (--target)")

    @field_validator("stack_axis", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.upper() if isinstance(value, str) else value


def in_channels(options: Noise2StackOptions) -> int:
    return 2 * options.neighbours + (options.mode == "copy")


def _neighbours_only(x, options: Noise2StackOptions):
    """Channels of a ``2k + 1`` neighbourhood without the centre (the target plane)."""
    k = options.neighbours
    return x[:, [c for c in range(2 * k + 1) if c != k]]


def build(net, ndim: int, options: Noise2StackOptions) -> Nets:
    if net.residual:
        raise ConfigError("noise2stack feeds several planes as channels; residual=True needs one input channel, "
                          "train with residual off")
    return {"unet": build_unet(ndim, in_channels(options), 1, **net.model_dump())}


def prepare(sample: dict[str, np.ndarray], rng: np.random.Generator, options: Noise2StackOptions) -> dict[str, np.ndarray]:
    """``sample["input"]`` is the ``(2k + 1, *spatial)`` neighbourhood of the target plane
    (centre = the plane itself); copy mode also has ``sample["target"]`` ``(1, *spatial)``."""
    x, k = sample["input"], options.neighbours
    if options.mode == "self":
        return {"input": np.ascontiguousarray(_neighbours_only(x[None], options)[0]),
                "target": np.ascontiguousarray(x[k:k + 1])}
    return {"input": x, "target": sample["target"]}


def mse(nets: Nets, batch: dict[str, torch.Tensor], options: Noise2StackOptions) -> torch.Tensor:
    pred = nets["unet"](batch["input"])
    return ((pred.float() - batch["target"].float()) ** 2).mean()


def predict(nets: Nets, x: torch.Tensor, options: Noise2StackOptions) -> torch.Tensor:
    """``x``: ``(N, 2k + 1, *spatial)`` plane neighbourhoods -> ``(N, 1, *spatial)``."""
    return nets["unet"](_neighbours_only(x, options) if options.mode == "self" else x)


METHOD = Method(
    name="noise2stack",
    options=Noise2StackOptions,
    inputs=lambda options: ("input",) if options.mode == "self" else ("input", "target"),
    build=build,
    prepare=prepare,
    stages=lambda options: (Stage("noise2stack", ("unet",), mse, schedule="cosine"),),
    predict=predict,
    receptive_radius=lambda nets, options: nets["unet"].receptive_radius,
    factor=lambda nets, options: nets["unet"].factor,
    channel_halo=lambda options: options.neighbours,
    stack_axis=lambda options: options.stack_axis,
    net_defaults={"batch_norm": False},
)
