"""A fixed background pattern (e.g. a camera's offset pattern) over the image plane.

Noise2Stack (Papkov et al. 2021) subtracts the camera background, the median over all images,
from each image before normalisation, so the network cannot learn the pattern shared by
neighbouring planes as if it were signal. Here the pattern is the median over up to
``max_planes`` planes spread evenly over the volume (every plane of a small one), computed one
strip of storage-chunk rows at a time: memory is ``max_planes`` strips, never the volume.
The pattern is stored in the model package; prediction subtracts it too, so a model trained
with it returns background-free intensities.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError, InputError
from .geometry import Box
from .volume import Volume

MAX_PLANES = 32
MIN_PLANES = 3


def estimate_background(volume: Volume, max_planes: int = MAX_PLANES) -> np.ndarray:
    """The median YX plane of ``volume`` over up to ``max_planes`` evenly spread planes.

    Returns
    -------
    float32 array ``(Y, X)`` (the volume's last two axes).
    """
    lead, (ny, nx) = volume.shape[:-2], volume.shape[-2:]
    total = math.prod(lead)
    if total < MIN_PLANES:
        raise ConfigError(
            f"{volume.source}: removing a fixed background needs at least {MIN_PLANES} planes to take a median "
            f"over, the volume has {total}; train without --remove-background")
    flat = np.unique(np.linspace(0, total - 1, min(max_planes, total)).round().astype(int))
    planes = [np.unravel_index(int(i), lead) if lead else () for i in flat]
    strip = max(1, volume.chunks[-2])
    pattern = np.empty((ny, nx), np.float32)
    for y0 in range(0, ny, strip):
        h = min(strip, ny - y0)
        rows = [volume.read(Box(tuple(int(p) for p in plane) + (y0, 0), (1,) * len(lead) + (h, nx))).reshape(h, nx)
                for plane in planes]
        pattern[y0:y0 + h] = np.median(np.stack(rows).astype(np.float32), axis=0)
    return pattern


def subtract_background(x: np.ndarray, box: Box, pattern: np.ndarray | None) -> np.ndarray:
    """``x`` (the voxels of ``box``, YX last) minus the pattern at the box's YX position, as
    float32; ``x`` unchanged when ``pattern`` is None."""
    if pattern is None:
        return x
    ys, xs = box.slices[-2:]
    return np.asarray(x, dtype=np.float32) - pattern[ys, xs]


def check_background(pattern: np.ndarray | None, shape: tuple[int, ...], source: str) -> None:
    """An InputError when a model's background pattern does not fit a volume's planes."""
    if pattern is not None and tuple(pattern.shape) != tuple(shape[-2:]):
        raise InputError(
            f"{source}: the model removes a background pattern of {pattern.shape[0]}x{pattern.shape[1]} (YX) "
            f"but the input's planes are {shape[-2]}x{shape[-1]}; use a model trained on data of this plane size "
            f"or one trained without --remove-background")
