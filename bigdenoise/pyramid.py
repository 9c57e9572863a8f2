"""Resolution pyramids, pure: which levels an image gets and the 2x mean that makes each one.

A level is made from the one before it by a mean over 2 voxels along each reduced axis: Y and X
always (while longer than one voxel), Z only once the in-plane voxel size has reached Z's, so an
anisotropic light-sheet stack first becomes isotropic and is then reduced evenly. Other axes
(time, channel, independent images) are never reduced. A trailing odd row is averaged over what
exists: a level's size is ``ceil(n / 2)`` and its last voxel is the mean of the one voxel left.
No I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .geometry import Box

FIT = 512  # the automatic pyramid stops once the smallest level fits this many voxels in-plane
_IN_PLANE = ("Y", "X")


@dataclass(frozen=True)
class Level:
    """One resolution level.

    Attributes
    ----------
    shape : its shape, on the image's axes.
    factors : per axis, how many voxels of the level before are averaged into one (1 or 2;
        all 1 for level 0).
    scale : voxel size per axis (physical units, 1 where the image has none).
    translation : position of its first voxel's centre per axis; level k is shifted by half a
        voxel of level k-1 along each reduced axis (NGFF mean-pooling convention).
    """

    shape: tuple[int, ...]
    factors: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]


def reduce_factors(shape: tuple[int, ...], axes: str, scale: tuple[float, ...]) -> tuple[int, ...]:
    """The factors (1 or 2 per axis) that make the next level from a level of ``shape`` and
    voxel size ``scale`` on ``axes`` (letters ``TCZYX``/``S``)."""
    in_plane = [scale[i] for i, a in enumerate(axes) if a in _IN_PLANE]
    factors = []
    for n, a, s in zip(shape, axes, scale):
        reduce = a in _IN_PLANE or (a == "Z" and bool(in_plane) and min(in_plane) >= s * (1 - 1e-9))
        factors.append(2 if reduce and n > 1 else 1)
    return tuple(factors)


def plan_levels(shape: tuple[int, ...], axes: str, scale: tuple[float, ...] | None = None,
                translation: tuple[float, ...] | None = None, levels: int | None = None,
                fit: int = FIT) -> tuple[Level, ...]:
    """The levels of an image of ``shape`` on ``axes``: ``levels`` of them in all (level 0
    included), or, when None, as many as it takes for the smallest to fit ``fit`` voxels along
    Y and X. A level's shape depends only on level 0, never on how many levels are asked for.

    Raises
    ------
    ConfigError
        ``levels`` below 1, or more levels than Y and X can be halved.
    """
    if levels is not None and levels < 1:
        raise ConfigError(f"--pyramid {levels}: a pyramid has at least 1 level (level 0, the full resolution)")
    scale = tuple(float(s) for s in scale) if scale is not None else (1.0,) * len(shape)
    translation = tuple(float(t) for t in translation) if translation is not None else (0.0,) * len(shape)
    plan = [Level(tuple(shape), (1,) * len(shape), scale, translation)]
    in_plane = [i for i, a in enumerate(axes) if a in _IN_PLANE]
    while len(plan) < levels if levels is not None else max(plan[-1].shape[i] for i in in_plane) > fit:
        last = plan[-1]
        factors = reduce_factors(last.shape, axes, last.scale)
        if all(factors[i] == 1 for i in in_plane):
            raise ConfigError(f"--pyramid {levels}: an image of shape {tuple(shape)} ({axes}) has only {len(plan)} "
                              f"levels before Y and X are one voxel; ask for at most {len(plan)}")
        plan.append(Level(tuple(math.ceil(n / f) for n, f in zip(last.shape, factors)), factors,
                          tuple(s * f for s, f in zip(last.scale, factors)),
                          tuple(t + (f - 1) / 2 * s for t, s, f in zip(last.translation, last.scale, factors))))
    return tuple(plan)


def source_box(box: Box, factors: tuple[int, ...], previous: tuple[int, ...]) -> Box:
    """The box of the level before (shape ``previous``) that the voxels of ``box`` average."""
    lo = tuple(o * f for o, f in zip(box.offset, factors))
    hi = tuple(min(s * f, n) for s, f, n in zip(box.stop, factors, previous))
    return Box(lo, tuple(h - l for l, h in zip(lo, hi)))


def downsample(data: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """The mean over ``factors`` voxels per axis of ``data`` (any axes), in float64; an axis of
    length ``n`` becomes ``ceil(n / f)`` long, its last voxel the mean of the voxels that exist."""
    out = np.asarray(data, dtype=np.float64)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        starts = np.arange(0, out.shape[axis], f)
        counts = np.minimum(f, out.shape[axis] - starts).reshape([-1 if i == axis else 1 for i in range(out.ndim)])
        out = np.add.reduceat(out, starts, axis=axis) / counts
    return out


def display_window(values: np.ndarray, dtype: np.dtype, percentiles: tuple[float, float] = (0.5, 99.5)) -> dict:
    """An OMERO display window from sampled ``values`` of one channel: ``start``/``end`` at the
    ``percentiles``, ``min``/``max`` the dtype's range (integers) or the sampled range (floats)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        values = np.zeros(1)
    start, end = (float(v) for v in np.percentile(values, percentiles))
    if np.issubdtype(dtype, np.integer):
        low, high = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
    else:
        low, high = float(values.min()), float(values.max())
    return {"start": start, "end": end if end > start else start + 1.0, "min": low, "max": max(high, start + 1.0)}
