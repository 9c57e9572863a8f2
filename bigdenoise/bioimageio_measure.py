"""What an imported bioimage.io model needs measured: how far its output reaches (the halo,
from an impulse probe, :func:`measure_radius`) and the statistics of a volume its pre- and
post-processing need (:func:`volume_measures`), fixed once so every tile sees the same values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError, ModelError
from .volume import Volume, sample_chunk_boxes

if TYPE_CHECKING:
    from .bioimageio_model import ImportedNet, Layout

STATS_CHUNKS = 32  # random chunks the measures are estimated from (as training's statistics)
STATS_VOXELS = 4_000_000
# Halo measurement (measure_radius): probe edge per spatial ndim, first and largest.
PROBE_START = {2: 64, 3: 32}
PROBE_MAX = {2: 512, 3: 128}
IMPULSE = 4.0  # added to the probe cube (probes are ~N(0, 1) in the network's input units)
CHANGED = 1e-6  # an output voxel changed when it moved by more than this fraction of the largest change


def measure_radius(net: ImportedNet, seed: int = 0) -> int:
    """How far the model's output moves when a voxel of its input does (voxels, any axis).

    Rule: three probe tiles (zeros and two N(0, 1) draws, in the network's input units, no
    pre/post-processing) get ``IMPULSE`` added (subtracted on the last) on a cube of ``factor``
    voxels per side at their centre, so every position modulo the down-sampling grid is
    perturbed; an output voxel changed if it moved by more than ``CHANGED`` of the largest
    change. The radius is the farthest changed voxel's distance outside the cube, plus
    ``factor - 1`` (the cube's own extent). Probes start at 64 (2D) / 32 (3D) voxels per side and
    double while the change reaches a probe's border, up to 512 / 128; beyond that the model
    looks at whole images and cannot be tiled: a ModelError.
    """
    lay = net.layout
    ndim, f = len(lay.spatial), lay.factor
    edge = PROBE_START[ndim]
    while True:
        shape = tuple(lay.valid_size(i, edge) for i in range(ndim))
        start = [(n // 2) // f * f for n in shape]
        rng = np.random.default_rng(seed)
        base = np.stack([np.zeros(shape), rng.standard_normal(shape), rng.standard_normal(shape)]).astype(np.float32)
        moved = base.copy()
        cube = tuple(slice(s, s + f) for s in start)
        for k, sign in enumerate((1, 1, -1)):
            moved[(k,) + cube] += sign * IMPULSE
        y = net.apply(np.concatenate([base, moved])[:, None], processing=False)[:, 0]
        change = np.abs(y[3:] - y[:3]).max(axis=0)
        changed = np.nonzero(change > CHANGED * max(float(change.max()), 1e-30))
        if not changed[0].size:
            return f - 1
        reach = [int(max(s - c.min(), c.max() - (s + f - 1), 0)) for s, c in zip(start, changed)]
        at_border = any(c.min() == 0 or c.max() == n - 1 for c, n in zip(changed, shape))
        if not at_border:
            return max(reach) + f - 1
        if edge * 2 > PROBE_MAX[ndim]:
            raise ModelError(f"the model's response to one voxel reaches the border of a {shape} probe: it looks at "
                             f"whole images and cannot be tiled exactly")
        edge *= 2


def volume_measures(volume: Volume, required: frozenset, layout: Layout, seed: int) -> tuple:
    """``((measure, value), ...)`` of ``required`` (bioimage.io measures) over up to ``STATS_CHUNKS``
    random chunks of ``volume`` (at most ``STATS_VOXELS`` voxels, floats): a per-sample statistic
    is taken over the whole volume, the same for every tile."""
    from bioimageio.core.sample import Sample
    from bioimageio.core.stat_measures import SampleMean, SampleQuantile, SampleStd, SampleVar
    from bioimageio.core.tensor import Tensor

    values = np.concatenate([np.asarray(volume.read(b), np.float32).ravel()
                             for b in sample_chunk_boxes(volume, STATS_CHUNKS, seed)])
    if not np.isfinite(values).all():
        raise InputError(f"{volume.source} contains NaN/inf values; the model's processing needs finite statistics")
    if values.size > STATS_VOXELS:
        values = np.random.default_rng(seed).choice(values, STATS_VOXELS, replace=False)
    shape = tuple(values.size if d == layout.spatial[-1] else 1 for d in layout.in_dims)
    sample = Sample(members={layout.in_id: Tensor(values.reshape(shape), dims=layout.in_dims)}, stat={}, id=None)
    kinds = {"mean": SampleMean, "std": SampleStd, "var": SampleVar, "quantile": SampleQuantile}
    out = []
    for m in sorted(required, key=repr):
        one = m
        if m.scope == "dataset":  # the volume is the data set and the sample: one value
            axes = None if m.axes is None else tuple(a for a in m.axes if str(a) != "batch")
            extra = {"q": m.q} if m.name == "quantile" else {}
            one = kinds[m.name](member_id=m.member_id, axes=axes, **extra)
        value = one.compute(sample)
        value = np.asarray(getattr(value, "data", value), np.float64)
        out.append((m, float(value.reshape(-1)[0])))
    return tuple(out)
