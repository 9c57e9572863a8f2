"""Measuring a noise model from data: the calibration workflow behind ``bigdenoise noise-model``.

The models themselves (p(x|s), fitting from arrays, the directory format) are pure and live in
:mod:`bigdenoise.noise_models`; this module opens volumes, reads a bounded random sample of their
storage chunks (never the whole volume), runs inference for bootstrapping and places the result
on disk through :mod:`bigdenoise.outputs`.

(signal, noisy) calibration pairs come from exactly one source:

- clean/noisy pairs: a clean volume of the noisy volume's shape;
- repeated noisy frames of a static field along one axis: their mean is the signal (it keeps
  1/R of the noise variance for R frames);
- bootstrapping (Prakash et al., ISBI 2020): a trained N2V model's prediction is the
  pseudo-signal, computed with :func:`bigdenoise.infer.denoise_block` on each sampled box and
  its halo. Without ``axes`` the noisy volume takes its axes from its metadata or, failing that,
  from the model when the volume has as many dimensions as the model's axes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, InputError
from .geometry import Box
from .infer import denoise_block, plan_for
from .noise_models import KINDS, NoiseModel, fit, write_noise_model
from .outputs import NOISE_MODEL, destination
from .package import Model, load_model
from .tiling import read_box
from .volume import Volume, open_volume

Pairs = tuple[list[np.ndarray], list[np.ndarray]]


def calibration_pairs(noisy: Any, *, clean: Any = None, repeats_axis: str | None = None, bootstrap: Any = None,
                      axes: str | None = None, max_chunks: int = 64, max_pairs: int = 2_000_000,
                      seed: int = 0, channel: Any = None, series: int | None = None,
                      voxel_size: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(signal, noisy) value pairs for fitting a noise model, from exactly one source.

    Parameters
    ----------
    noisy : volume (path, array or Volume) of noisy raw values.
    clean : a volume of the same shape with the clean signal (calibration pairs).
    repeats_axis : an axis of ``noisy`` (e.g. ``"S"``) along which the frames are repeated
        acquisitions of a static field; the signal is their mean (it keeps 1/R of the noise
        variance for R frames).
    bootstrap : a trained N2V model (directory or Model) whose prediction is the pseudo-signal.
    axes : axes of ``noisy`` (and ``clean``); optional when the input says its axes, is 2D or,
        with ``bootstrap``, has as many dimensions as the model's axes (then it takes those).
    max_chunks : storage chunks (boxes of at most 512 voxels per axis) read at random.
    max_pairs : pairs kept, drawn at random from what was read.
    channel, series, voxel_size : as for :func:`bigdenoise.volume.open_volume`; a noise model is
        measured on one channel of an input with a ``C`` axis (``clean`` has the same axes and
        gives the same channel).

    Returns
    -------
    signal, noisy : (P,) float64
    """
    given = [n for n, v in (("clean", clean), ("repeats_axis", repeats_axis), ("bootstrap", bootstrap)) if v is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one source of signal for the noise model: calibration pairs (--clean), "
                          "repeated frames of a static field (--repeats-axis) or an N2V model to bootstrap from "
                          f"(--bootstrap); got {', '.join(given) or 'none'}")
    rng = np.random.default_rng(seed)
    opening = {k: v for k, v in (("channel", channel), ("series", series), ("voxel_size", voxel_size))
               if v is not None}
    if bootstrap is not None:
        model = bootstrap if isinstance(bootstrap, Model) else load_model(bootstrap)
        volume = _open_noisy(noisy, axes, model.axes, **opening)
        signals, values = _bootstrap_pairs(volume, model, max_chunks, max_pairs, rng)
    elif clean is not None:
        volume = _open_noisy(noisy, axes, **opening)
        signals, values = _clean_pairs(volume, clean, max_chunks, max_pairs, rng)
    else:
        volume = _open_noisy(noisy, axes, **opening)
        signals, values = _repeat_pairs(volume, repeats_axis, max_chunks, max_pairs, rng)
    return np.concatenate(signals), np.concatenate(values)


def _open_noisy(noisy: Any, axes: str | None, model_axes: str | None = None, **opening: Any) -> Volume:
    """``noisy`` as a Volume (``opening``: ``open_volume``'s channel, series, voxel_size; one
    channel); without ``axes`` and metadata, ``model_axes`` when their length fits."""
    if isinstance(noisy, Volume):
        return noisy
    volume = open_volume(noisy, axes, fallback_axes=model_axes, **opening)
    if volume.layout is not None and len(volume.layout.channels) > 1:
        raise ConfigError(f"a noise model is measured on one channel, not --channel "
                          f"{','.join(map(str, volume.layout.channels))}: measure one per channel")
    return volume


def _clean_pairs(volume: Volume, clean: Any, max_chunks: int, max_pairs: int, rng: np.random.Generator) -> Pairs:
    layout = volume.layout  # a clean volume with a C axis gives the same channel
    ref = clean if isinstance(clean, Volume) else open_volume(clean, layout.axes if layout else volume.axes,
                                                              channel=layout.channels if layout else None)
    if ref.shape != volume.shape:
        raise InputError(f"{ref.source} (clean) has shape {ref.shape} but {volume.source} has {volume.shape}; "
                         f"calibration pairs must match voxel for voxel")
    indices = _choose(volume.chunk_grid(), max_chunks, rng)
    per_box = max(1, max_pairs // len(indices))
    signals, values = [], []
    for index in indices:
        box = _capped(volume.chunk_box(index), rng)
        s, x = _subsample(ref.read(box), volume.read(box), per_box, rng)
        signals.append(s)
        values.append(x)
    return signals, values


def _repeat_pairs(volume: Volume, repeats_axis: str, max_chunks: int, max_pairs: int,
                  rng: np.random.Generator) -> Pairs:
    axis_name = repeats_axis.upper()
    if len(axis_name) != 1 or axis_name not in volume.axes:
        raise ConfigError(f"--repeats-axis {repeats_axis!r} is not an axis of {volume.source} (axes {volume.axes})")
    axis = volume.axes.index(axis_name)
    repeats = volume.shape[axis]
    if repeats < 2:
        raise InputError(f"{volume.source} has {repeats} frame along {axis_name}; repeated frames need at least 2")
    grid = list(volume.chunk_grid())
    grid[axis] = 1
    indices = _choose(tuple(grid), max_chunks, rng)
    per_box = max(1, max_pairs // len(indices))
    signals, values = [], []
    for index in indices:
        box = volume.chunk_box(index)
        box = _capped(Box(tuple(0 if i == axis else o for i, o in enumerate(box.offset)),
                          tuple(repeats if i == axis else n for i, n in enumerate(box.shape))),
                      rng, keep_axis=axis)
        frames = volume.read(box).astype(np.float64)
        mean = np.broadcast_to(frames.mean(axis=axis, keepdims=True), frames.shape)
        s, x = _subsample(mean, frames, per_box, rng)
        signals.append(s)
        values.append(x)
    return signals, values


def _bootstrap_pairs(volume: Volume, model: Model, max_chunks: int, max_pairs: int,
                     rng: np.random.Generator) -> Pairs:
    plan = plan_for(model, volume.shape, volume.axes, source=volume.source)
    indices = _choose(volume.chunk_grid(), max_chunks, rng)
    per_box = max(1, max_pairs // len(indices))
    signals, values = [], []
    for index in indices:
        box = _capped(volume.chunk_box(index), rng, cap=256)
        rbox = read_box(plan, box)
        data = volume.read(rbox)
        pred = denoise_block(data, rbox, box, plan, model)
        s, x = _subsample(pred, data[box.relative_to(rbox.offset).slices], per_box, rng)
        signals.append(s)
        values.append(x)
    return signals, values


def _choose(grid: tuple[int, ...], n: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    total = math.prod(grid)
    picks = range(total) if total <= n else sorted(rng.choice(total, n, replace=False).tolist())
    return [tuple(int(i) for i in np.unravel_index(k, grid)) for k in picks]


def _capped(box: Box, rng: np.random.Generator, cap: int = 512, keep_axis: int | None = None) -> Box:
    offset, shape = list(box.offset), list(box.shape)
    for i, n in enumerate(shape):
        if i != keep_axis and n > cap:
            offset[i] += int(rng.integers(0, n - cap + 1))
            shape[i] = cap
    return Box(tuple(offset), tuple(shape))


def _subsample(s: np.ndarray, x: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s, x = s.ravel(), x.ravel()
    if s.size > n:
        keep = rng.choice(s.size, n, replace=False)
        s, x = s[keep], x[keep]
    return s.astype(np.float64), x.astype(np.float64)


def make_noise_model(noisy: Any, *, clean: Any = None, repeats_axis: str | None = None, bootstrap: Any = None,
                     axes: str | None = None, kind: str = "histogram", bins: int = 256, gaussians: int = 3,
                     degree: int = 1, steps: int = 1000, max_chunks: int = 64, max_pairs: int = 2_000_000,
                     seed: int = 0, channel: Any = None, series: int | None = None,
                     voxel_size: Any = None) -> tuple[NoiseModel, dict[str, Any]]:
    """Read calibration pairs (see :func:`calibration_pairs`; ``channel``, ``series``, ``voxel_size``
    as there) and fit a noise model of ``kind``.

    Returns the model and a provenance record (source, number of pairs, settings) for its JSON.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown noise model kind {kind!r}; choose one of {', '.join(KINDS)}")
    s, x = calibration_pairs(noisy, clean=clean, repeats_axis=repeats_axis, bootstrap=bootstrap, axes=axes,
                             max_chunks=max_chunks, max_pairs=max_pairs, seed=seed, channel=channel, series=series,
                             voxel_size=voxel_size)
    model = fit(s, x, kind, bins=bins, gaussians=gaussians, degree=degree, steps=steps, seed=seed)
    if clean is not None:
        source = {"signal_from": "clean", "clean": _describe(clean)}
    elif repeats_axis is not None:
        source = {"signal_from": "repeats", "repeats_axis": repeats_axis.upper()}
    else:
        source = {"signal_from": "bootstrap", "bootstrap": _describe(getattr(bootstrap, "path", bootstrap))}
    chosen = {} if channel is None else {"channel": channel if isinstance(channel, (int, str)) else list(channel)}
    return model, {"noisy": _describe(noisy), **chosen, **source, "pairs": int(s.size), "seed": seed}


def save_noise_model(model: NoiseModel, path: str | Path, *, info: dict[str, Any] | None = None,
                     overwrite: bool = False, protect: dict[str, Any] | None = None, plot: bool = True) -> Path:
    """Write ``model`` as a noise-model directory at ``path`` (see
    :func:`bigdenoise.noise_models.write_noise_model`). ``overwrite`` replaces a noise model
    bigdenoise wrote; ``protect`` names paths the directory must not overlap
    (:func:`bigdenoise.outputs.destination`); the directory is swapped in when complete."""
    dest = destination(path, NOISE_MODEL, protect=protect, overwrite=overwrite)
    work = dest.start()
    write_noise_model(model, work, info=info, plot=plot)
    dest.commit()
    return dest.path


def _describe(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return str(getattr(source, "source", type(source).__name__))
