"""The method registry: what a training example is, the loss, and how a trained net predicts.

A method is a frozen record of plain functions. It may own several networks, train them in
several stages (each stage optimises some of the networks with its own loss) and predict in
any way it likes (one pass, sampling, posterior means), all without touching the engine.
Adding a method is one file plus one line in ``_registry()`` below.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from ..foreground import Rule

Nets = dict[str, torch.nn.Module]


@dataclass(frozen=True)
class Stage:
    """One training stage: optimise ``nets`` with ``loss`` for ``fraction`` of the budget.

    ``loss(nets, batch, options)`` takes a batch of tensors (the keys ``prepare`` produced,
    stacked along a new first axis) and returns a scalar loss tensor. ``schedule`` is the
    learning-rate schedule: ``"plateau"`` (halve the LR when validation stops improving) or
    ``"cosine"`` (anneal from the configured LR to zero over the stage's budget).
    ``optimizer``: ``"adam"``, or ``"adamax"`` (Adam with the infinity norm of past gradients in
    place of their root mean square; COSDD's authors train its VAE with it). ``lr_scale``: the
    stage's learning rate is the configured ``lr`` times this. ``keep_best``: the next stage
    starts from this stage's weights with the best validation loss, not from its last ones.
    ``unpaired``: the method's unpaired volumes (``Method.unpaired``) this stage's training
    batches read, when they were given (other stages do not read them; validation batches,
    shared by every stage, always do).
    """

    name: str
    nets: tuple[str, ...]
    loss: Callable[[Nets, dict[str, torch.Tensor], Any], torch.Tensor]
    fraction: float = 1.0
    schedule: str = "plateau"
    unpaired: tuple[str, ...] = ()
    optimizer: str = "adam"
    lr_scale: float = 1.0
    keep_best: bool = False

    def __post_init__(self) -> None:
        if not self.lr_scale > 0:
            raise ValueError(f"Stage.lr_scale must be positive, got {self.lr_scale!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Stage.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Stage.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


SCHEDULES = ("plateau", "cosine")
OPTIMIZERS = ("adam", "adamax")


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
        ``(N, C, *spatial)``, ``y`` the denoised tiles ``(N, 1, *spatial)``. With
        ``tile_origins``, called as ``predict(nets, x, options, origins=origins)``.
    receptive_radius : ``(nets, options) -> int``: how far an output voxel looks (voxels).
    factor : ``(nets, options) -> int``: spatial sizes the nets accept are multiples of this.
    channel_halo : ``options -> int``: neighbouring planes fed as channels along a stack axis
        (0 for methods without a stack axis).
    stack_axis : ``options -> str | None``: the volume axis (``"Z"`` or ``"T"``) whose planes
        are fed as input channels, or None. That axis then has the role ``"channel"``: the nets
        are built over the remaining spatial axes, and ``sample["input"]`` holds the
        ``2 * channel_halo + 1`` planes around the target plane (``tiling.reflect_indices``
        mode ``"stack"`` at the volume's ends) while other keys hold the target plane only.
    planes : the nets are 2D over YX planes whatever the volume: on a volume with a Z axis (ZYX,
        SZYX, TZYX), Z is the stack axis with no neighbours (``channel_halo`` 0), so each YX plane
        is one image, as along S and T, in training and prediction alike (COSDD). Needs no
        ``stack_axis`` of its own.
    train_defaults : training settings this method prefers (``TrainConfig`` fields, e.g. COSDD's
        ``{"lr": 2e-3}``), used where the configuration does not set them.
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
    predict_options : names of options that only change how trained nets predict (never the
        nets' shapes nor training), so ``predict --option KEY=VALUE`` may override them for one
        prediction (:func:`parse_options`, ``package.with_options``); e.g. PN2V's ``prediction``.
    option_implies : prediction-time options that bring others when given without them, e.g.
        COSDD's ``{"samples": {"prediction": "sampled"}}``: ``--option samples=100`` alone asks
        for the sampled path, since the direct one has no samples (``package.prediction_options``).
    tile_origins : ``predict`` also takes ``origins``, where each tile lies in the volume: an
        ``(N, volume ndim)`` int64 tensor, for each tile the global coordinate of its plane
        along sample and channel axes, then of its input's first voxel along the spatial axes
        (volume order within each group, so the spatial ones come last; they are multiples of
        ``factor``); ``origins=None`` when the caller knows no position. A method that draws
        noise keys it by these coordinates so tiles reproduce a whole-volume pass (COSDD's
        sampled prediction). False (the default): ``predict`` is called without it.
    unpaired : optional volumes the method may also train on, each read at its own random boxes
        (independent of the input's; ``sample[key]`` holds that patch, ``(1, *spatial)``), of any
        shape with the input's axes, normalised with the input's statistics, not background-
        subtracted; given to ``train.fit`` in ``volumes`` under their key (``train --clean``:
        ``"clean"``). Only stages naming the key in ``Stage.unpaired`` read it in training. D-BSN:
        ``("clean",)``, clean images of other fields of view for synthetic pairs. Methods that do
        not name a volume refuse it.
    prepass : ``options -> None``, or a voxelwise statistic ``(nets, x) -> s``, ``x`` normalised
        voxels ``(N, 1, *spatial)`` and ``s`` of the same shape, depending on each voxel's own
        value only (no halo). When not None, prediction first averages ``s`` over every voxel of
        each whole image (each position along the S/T axis, or the whole volume when there is
        none), reading the volume once block by block (``execute.image_means``;
        ``infer.image_means_of`` in memory), then predicts each image with the option
        ``image_option`` set to its image's mean (a float), so a tiled prediction equals a
        whole-image one. D-BSN's ``noise=awgn``: the image's noise variance. Not for methods
        with a stack axis.
    image_option : the option that receives each image's mean of ``prepass`` (needed with it).
    foreground : the rule of foreground-aware patch sampling (``foreground.Rule``): when ``auto``
        turns it on and how much foreground a patch must hold; the shared rule unless a method
        measured a better one of its own (COSDD: also on for a clipped background).
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
    planes: bool = False
    net_defaults: Mapping[str, Any] = field(default_factory=dict)
    train_defaults: Mapping[str, Any] = field(default_factory=dict)
    target_normalization: str = "input"
    setup: Callable[[Nets, Any, Any], None] | None = None
    predict_options: tuple[str, ...] = ()
    option_implies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tile_origins: bool = False
    unpaired: tuple[str, ...] = ()
    prepass: Callable[[Any], Callable[[Nets, torch.Tensor], torch.Tensor] | None] = lambda options: None
    image_option: str | None = None
    foreground: Rule = Rule()

    def __post_init__(self) -> None:
        unknown = set(self.predict_options) - set(self.options.model_fields)
        if unknown:
            raise ValueError(f"Method.predict_options names no option of {self.name}: {sorted(unknown)}")
        implied = set(self.option_implies) | {k for v in self.option_implies.values() for k in v}
        if not implied <= set(self.predict_options):
            raise ValueError(f"Method.option_implies names options that are not predict_options of {self.name}: "
                             f"{sorted(implied - set(self.predict_options))}")
        if self.target_normalization not in ("input", "own"):
            raise ValueError(f"Method.target_normalization must be 'input' or 'own', got {self.target_normalization!r}")
        if self.image_option is not None and self.image_option not in self.options.model_fields:
            raise ValueError(f"Method.image_option names no option of {self.name}: {self.image_option!r}")
        if set(self.unpaired) & {"input", "target"}:
            raise ValueError(f"Method.unpaired must not name the paired volumes input or target: {self.unpaired}")

    def image_statistic(self, options: Any) -> Callable[[Nets, torch.Tensor], torch.Tensor] | None:
        """The voxelwise statistic whose whole-image means prediction needs first, or None
        (``prepass``; None too when the method has no ``image_option`` to receive them)."""
        return self.prepass(options) if self.image_option is not None else None

    def stack_for(self, options: Any, axes: str) -> str | None:
        """The stack axis on a volume of ``axes``: ``stack_axis``, or for a ``planes`` method Z
        when ``axes`` has one (each YX plane one image)."""
        axis = self.stack_axis(options)
        if axis is None and self.planes and "Z" in axes.upper():
            axis = "Z"
        return axis.upper() if axis else None

    def volumes(self, options: Any) -> tuple[str, ...]:
        """The volumes one training sample reads (``inputs``, resolved for ``options``)."""
        return tuple(self.inputs(options)) if callable(self.inputs) else tuple(self.inputs)


def image_mean(v: torch.Tensor) -> torch.Tensor:
    """``v`` ``(N, C, *spatial)`` -> its mean over each image's voxels, ``(N, C, 1, ...)``."""
    return v.mean(dim=tuple(range(2, v.ndim)), keepdim=True)


def _registry() -> dict[str, Method]:
    from . import care, cosdd, dbsn, n2n, n2v, noise2stack, pn2v

    return {m.name: m for m in (n2v.METHOD, n2n.METHOD, care.METHOD, noise2stack.METHOD, pn2v.METHOD, dbsn.METHOD,
                                cosdd.METHOD)}


def get_method(name: str) -> Method:
    """The registered method called ``name``; a ConfigError lists the known ones."""
    methods = _registry()
    if name not in methods:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(methods))}")
    return methods[name]


def method_names() -> list[str]:
    return sorted(_registry())


def _type_name(annotation: Any) -> str:
    """``float``, ``int | None``, ``mmse|prior_mean`` (a Literal's choices)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _admits_none(annotation: Any) -> bool:
    return annotation is type(None) or (get_origin(annotation) in (Union, types.UnionType)
                                        and type(None) in get_args(annotation))


def option_fields(method: Method, keys: Iterable[str] | None = None) -> list[tuple[str, str, Any, str]]:
    """``(name, type, default, description)`` of the method's options (only ``keys`` if given)."""
    fields = method.options.model_fields
    names = list(fields) if keys is None else [k for k in fields if k in set(keys)]
    return [(k, _type_name(fields[k].annotation), fields[k].get_default(call_default_factory=True),
             fields[k].description or "") for k in names]


def describe_options(method: Method, keys: Iterable[str] | None = None) -> str:
    """The method's options (only ``keys`` if given), one per line: name, type, default, description."""
    rows = option_fields(method, keys)
    if not rows:
        return f"method {method.name} has no such options"
    width = max(len(f"{n} ({t})") for n, t, _, _ in rows)
    return "\n".join(f"  {f'{n} ({t})':<{width}}  default {d!r}" + (f": {text}" if text else "")
                      for n, t, d, text in rows)


def _summary(method: Method, keys: Iterable[str] | None) -> str:
    rows = option_fields(method, keys)
    return ", ".join(f"{n} ({t}, default {d!r})" for n, t, d, _ in rows) or "none"


def parse_options(method: Method, raw: Mapping[str, Any], *, base: Mapping[str, Any] | None = None,
                  allowed: Iterable[str] | None = None, when: str = "") -> dict[str, Any]:
    """``raw`` options of ``method`` (values typically strings from ``--option KEY=VALUE``),
    validated by the method's pydantic model on top of ``base`` and returned with their
    parsed values (``"0.5"`` -> 0.5, ``"true"`` -> True; ``"none"``/``"null"`` -> None where the
    option admits None). ``allowed``: the only keys that may be given (e.g. ``predict_options``),
    ``when`` (e.g. ``"at prediction time"``) names that restriction in errors. A ConfigError
    names the bad key or value and lists the options with their types and defaults."""
    fields = method.options.model_fields
    known = list(fields) if allowed is None else [k for k in fields if k in set(allowed)]
    listing = f"the options of method {method.name}{' settable ' + when if when else ''}: {_summary(method, known)}"
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown option {key!r} for method {method.name}; {listing}")
        if key not in known:
            raise ConfigError(f"option {key!r} of method {method.name} cannot be set {when or 'here'} (it shapes the "
                              f"networks or only acts in training); {listing}")
    values = {k: None if isinstance(v, str) and v.strip().lower() in ("none", "null")
              and _admits_none(fields[k].annotation) else v for k, v in raw.items()}
    try:
        parsed = method.options.model_validate({**(base or {}), **values})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}"
            + (f"={raw[e['loc'][0]]!r}" if e["loc"] and e["loc"][0] in raw else "") + f": {e['msg']}"
            for e in exc.errors())
        raise ConfigError(f"invalid option of method {method.name}: {problems}; {listing}") from None
    return {k: getattr(parsed, k) for k in raw}
