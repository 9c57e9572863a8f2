"""Exponential moving averages of a stage's networks (Polyak averaging) for the training loop.

A stage with ``Stage.ema > 0`` keeps a copy of each network it trains; after every optimiser step
the copy moves towards the trained weights. The copies are what the stage validates, keeps as its
best and hands to the next stage; the optimiser goes on with the raw weights (a resumed stage
continues both exactly: checkpoints carry the copies).
"""

from __future__ import annotations

import copy

import torch

from .methods import Nets


def average_copies(nets: Nets, names: tuple[str, ...]) -> Nets:
    """Copies of the networks ``names`` of ``nets``, to hold their running average."""
    return {name: copy.deepcopy(nets[name]).requires_grad_(False) for name in names}


def average_rate(decay: float, count: int) -> float:
    """How far the average moves towards the weights after the stage's step ``count`` (from 0):
    ``1 - min(decay, (1 + count) / (10 + count))``; the warm-up keeps the first steps' weights,
    often random, from lingering in the average."""
    return 1.0 - min(decay, (1 + count) / (10 + count))


@torch.no_grad()
def update_average(average: Nets, nets: Nets, decay: float, count: int) -> None:
    """Move each copy in ``average`` towards its network in ``nets`` after the step ``count``;
    integer buffers are copied."""
    rate = average_rate(decay, count)
    for name, copied in average.items():
        for mean, now in zip(copied.state_dict().values(), nets[name].state_dict().values()):
            if mean.is_floating_point():
                mean.lerp_(now, rate)
            else:
                mean.copy_(now)


def take_average(nets: Nets, average: Nets) -> None:
    """Load the averaged weights into ``nets`` (a stage hands them to the next one)."""
    for name, copied in average.items():
        nets[name].load_state_dict(copied.state_dict())
