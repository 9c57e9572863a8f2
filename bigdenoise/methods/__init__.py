"""The method registry: what a training example is, the loss, and how a trained net predicts.

A method is a frozen record of plain functions. It may own several networks, train them in
several stages (each stage optimises some of the networks with its own loss) and predict in
any way it likes (one pass, sampling, posterior means), all without touching the engine.
Adding a method is one file plus one line in ``_REGISTRY`` below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
    stacked along a new first axis) and returns a scalar loss tensor. ``schedule`` is the
    learning-rate schedule: ``"plateau"`` (halve the LR when validation stops improving) or
    ``"cosine"`` (anneal from the configured LR to zero over the stage's budget).
    """

    name: str
    nets: tuple[str, ...]
    loss: Callable[[Nets, dict[str, torch.Tensor], Any], torch.Tensor]
    fraction: float = 1.0
    schedule: str = "plateau"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Stage.schedule must be one of {SCHEDULES}, got {self.schedule!r}")


SCHEDULES = ("plateau", "cosine")


@dataclass(frozen=True)
class Method:
    """A denoising method.

    Attributes
    ----------
    name : registry key, as written in configs and on the command line.
    options : pydantic model of the method's own options (all with defaults).
    inputs : the volumes a training sample reads at the same box, e.g. ``("input",)`` or
        ``("input", "target")``; or ``options -> tuple`` when it depends on the options
        (use :meth:`volumes`).
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
    stack_axis : ``options -> str | None``: the volume axis (``"Z"`` or ``"T"``) whose planes
        are fed as input channels, or None. That axis then has the role ``"channel"``: the nets
        are built over the remaining spatial axes, and ``sample["input"]`` holds the
        ``2 * channel_halo + 1`` planes around the target plane (``tiling.reflect_indices``
        mode ``"stack"`` at the volume's ends) while other keys hold the target plane only.
    net_defaults : network settings this method prefers (e.g. ``{"batch_norm": False}``),
        used where the configuration does not set them.
    target_normalization : ``"input"``: every volume is normalised with the input's statistics
        and predictions are mapped back with them (targets with the input's intensity scale:
        N2N, Noise2Stack). ``"own"``: the target is normalised with its own statistics and
        predictions are mapped back with the target's (a clean target of another scale: CARE).
    setup : ``(nets, options, stats) -> None`` or None: called once by ``train.fit`` after the
        nets are built and the input's normalisation ``stats`` is estimated, before training
        (not on resume: its result is part of the nets' tensors, saved in checkpoints and the
        package). PN2V loads its noise model here and records ``stats`` next to it.
    """

    name: str
    options: type[BaseModel]
    inputs: tuple[str, ...] | Callable[[Any], tuple[str, ...]]
    build: Callable[[Any, int, Any], Nets]
    prepare: Callable[[dict[str, np.ndarray], np.random.Generator, Any], dict[str, np.ndarray]]
    stages: Callable[[Any], tuple[Stage, ...]]
    predict: Callable[[Nets, torch.Tensor, Any], torch.Tensor]
    receptive_radius: Callable[[Nets, Any], int]
    factor: Callable[[Nets, Any], int]
    channel_halo: Callable[[Any], int] = lambda options: 0
    stack_axis: Callable[[Any], str | None] = lambda options: None
    net_defaults: Mapping[str, Any] = field(default_factory=dict)
    target_normalization: str = "input"
    setup: Callable[[Nets, Any, Any], None] | None = None

    def __post_init__(self) -> None:
        if self.target_normalization not in ("input", "own"):
            raise ValueError(f"Method.target_normalization must be 'input' or 'own', got {self.target_normalization!r}")

    def volumes(self, options: Any) -> tuple[str, ...]:
        """The volumes one training sample reads (``inputs``, resolved for ``options``)."""
        return tuple(self.inputs(options)) if callable(self.inputs) else tuple(self.inputs)


def _registry() -> dict[str, Method]:
    from . import care, n2n, n2v, noise2stack, pn2v

    return {m.name: m for m in (n2v.METHOD, n2n.METHOD, care.METHOD, noise2stack.METHOD, pn2v.METHOD)}


def get_method(name: str) -> Method:
    """The registered method called ``name``; a ConfigError lists the known ones."""
    methods = _registry()
    if name not in methods:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(methods))}")
    return methods[name]


def method_names() -> list[str]:
    return sorted(_registry())
