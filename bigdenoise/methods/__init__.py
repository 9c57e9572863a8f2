"""The method registry: what a training example is, the loss, and how a trained net predicts.

A method is a frozen record of plain functions. It may own several networks, train them in
several stages (each stage optimises some of the networks with its own loss) and predict in
any way it likes (one pass, sampling, posterior means), all without touching the engine.
Adding a method is one file plus one line in ``_REGISTRY`` below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from ..errors import ConfigError

Nets = dict[str, torch.nn.Module]


@dataclass(frozen=True)
class Stage:
    """One training stage: optimise ``nets`` with ``loss`` for ``fraction`` of the budget.

    ``loss(nets, batch, options)`` takes a batch of tensors (the keys ``prepare`` produced,
    stacked along a new first axis) and returns a scalar loss tensor.
    """

    name: str
    nets: tuple[str, ...]
    loss: Callable[[Nets, dict[str, torch.Tensor], Any], torch.Tensor]
    fraction: float = 1.0


@dataclass(frozen=True)
class Method:
    """A denoising method.

    Attributes
    ----------
    name : registry key, as written in configs and on the command line.
    options : pydantic model of the method's own options (all with defaults).
    inputs : the volumes a training sample reads at the same box, e.g. ``("input",)`` or
        ``("input", "target")``.
    build : ``(net_config, ndim, options) -> Nets``: fresh networks for ``ndim`` spatial axes.
    prepare : ``(sample, rng, options) -> example``: one training example from the arrays read
        for one patch (``sample[key]`` is ``(C, *spatial)`` float32, normalised); pure numpy.
    stages : ``options -> tuple[Stage, ...]``.
    predict : ``(nets, x, options) -> y``: ``x`` is a normalised batch of tiles
        ``(N, C, *spatial)``, ``y`` the denoised tiles ``(N, 1, *spatial)``.
    receptive_radius : ``(nets, options) -> int``: how far an output voxel looks (voxels).
    factor : ``(nets, options) -> int``: spatial sizes the nets accept are multiples of this.
    channel_halo : ``options -> int``: neighbouring planes fed as channels along a stack axis
        (0 for methods without a stack axis).
    """

    name: str
    options: type[BaseModel]
    inputs: tuple[str, ...]
    build: Callable[[Any, int, Any], Nets]
    prepare: Callable[[dict[str, np.ndarray], np.random.Generator, Any], dict[str, np.ndarray]]
    stages: Callable[[Any], tuple[Stage, ...]]
    predict: Callable[[Nets, torch.Tensor, Any], torch.Tensor]
    receptive_radius: Callable[[Nets, Any], int]
    factor: Callable[[Nets, Any], int]
    channel_halo: Callable[[Any], int] = lambda options: 0


def _registry() -> dict[str, Method]:
    from . import n2v

    return {m.name: m for m in (n2v.METHOD,)}


def get_method(name: str) -> Method:
    """The registered method called ``name``; a ConfigError lists the known ones."""
    methods = _registry()
    if name not in methods:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(methods))}")
    return methods[name]


def method_names() -> list[str]:
    return sorted(_registry())
