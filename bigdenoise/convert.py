"""Convert any readable input to a chunked Zarr v3 array, and describe a volume (``bigdenoise info``)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bigdenoise.geometry import Box
from bigdenoise.outputs import ZARR_COPY, destination
from bigdenoise.channels import AxisView, all_channels
from bigdenoise.volume import Volume, default_chunks, open_volume, sample_chunk_boxes
from bigdenoise.writer import create_array, output_chunks

COPY_BLOCK_BYTES = 256 * 2**20  # upper bound of one copied block (unless a single chunk is larger)


def convert(
    source: Any,
    dest: str | Path,
    *,
    axes: str | None = None,
    chunks: tuple[int, ...] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    channel: Any = None,
    series: int | None = None,
    voxel_size: Any = None,
) -> Volume:
    """Copy a volume into a Zarr v3 array at ``dest`` (the array is the store root).

    Parameters
    ----------
    source
        Anything :func:`~bigdenoise.volume.open_volume` opens (path, numpy or dask array).
    dest
        Output directory, e.g. ``out.zarr``.
    axes
        Axis letters of the input if it does not say them itself; stored as ``attrs["axes"]``.
    chunks
        Output chunk shape, one entry per axis (clipped to the shape); default: 64 along Z,
        256 along Y/X, 1 along S/T.
    overwrite
        Replace an existing ``dest`` that bigdenoise wrote (``outputs.destination``); the copy
        is swapped in when complete. Never allowed when ``dest`` overlaps the input.
    progress
        Show a progress bar.
    channel, series, voxel_size
        As for :func:`~bigdenoise.volume.open_volume`: the channel(s) of an input with a ``C``
        axis to copy (the copy keeps its axes, with those channels along ``C``; default: every
        channel), the series of a multi-series TIFF, the voxel size written with the copy.

    Returns
    -------
    Volume
        The written array, opened read-only (its every channel, for an input with a ``C`` axis).
    """
    if channel is None:
        channel = all_channels(source, axes, series)
    volume = open_volume(source, axes, channel=channel, series=series, voxel_size=voxel_size)
    out_chunks = output_chunks(volume, chunks, default_chunks(volume.shape, volume.axes))
    target = destination(dest, ZARR_COPY, protect={"input": volume.path}, overwrite=overwrite)
    try:
        out = create_array(target.start(), volume, out_chunks, volume.dtype, {})
        for vol in volume.channel_volumes():  # an input with a channel axis keeps its axes
            _copy(vol, out if vol.layout is None else AxisView(out, vol.layout.output_fixed), out_chunks, progress)
    except BaseException:
        target.discard()  # a copy cannot be continued: leave nothing half-written
        raise
    target.commit()
    return open_volume(target.path, channel=None if volume.layout is None else tuple(range(len(volume.layout.channels))))


def copy_block_shape(
    shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int, budget: int = COPY_BLOCK_BYTES
) -> tuple[int, ...]:
    """Largest chunk-aligned block of at most ``budget`` bytes, shrinking leading axes first.

    The block is whole along trailing axes where possible (contiguous slabs); it is never
    smaller than one chunk.
    """
    block = list(shape)
    for ax in range(len(shape)):
        if math.prod(block) * itemsize <= budget:
            break
        per_index = math.prod(block) // block[ax] * itemsize  # bytes per index along ax
        n = (budget // per_index) // chunks[ax] * chunks[ax]
        block[ax] = min(shape[ax], max(chunks[ax], n))
    return tuple(block)


def _copy(volume: Volume, out: Any, chunks: tuple[int, ...], progress: bool) -> None:
    block = copy_block_shape(volume.shape, chunks, volume.dtype.itemsize)
    starts = [range(0, s, b) for s, b in zip(volume.shape, block)]
    with tqdm(
        total=volume.nbytes, unit="B", unit_scale=True, desc=f"convert {volume.source}", disable=not progress
    ) as bar:
        for offset in itertools.product(*starts):
            box = Box(offset, tuple(min(b, s - o) for b, s, o in zip(block, volume.shape, offset)))
            out[box.slices] = volume.read(box)
            bar.update(box.size * volume.dtype.itemsize)


# --------------------------------------------------------------------------- info


def describe(volume: Volume, n_chunks: int = 16, seed: int = 0) -> dict:
    """Summarise a volume: layout, size and intensities sampled from up to ``n_chunks`` chunks.

    Returns
    -------
    dict
        Keys ``source, axes, shape, dtype, chunks, nbytes, size, scale, units`` and
        ``intensity`` (dict with ``min, max, mean, std, p1, p50, p99`` over finite sampled
        values (None if there are none), ``n_sampled``, ``nan_fraction``).
    """
    return {
        "source": volume.source,
        "axes": volume.axes,
        "shape": volume.shape,
        "dtype": str(volume.dtype),
        "chunks": volume.chunks,
        "nbytes": volume.nbytes,
        "size": format_bytes(volume.nbytes),
        "scale": volume.scale,
        "units": volume.units,
        "intensity": _sample_intensity(volume, n_chunks, seed),
    }


def _sample_intensity(volume: Volume, n_chunks: int, seed: int) -> dict:
    values = np.concatenate(
        [volume.read(b).ravel().astype(np.float64) for b in sample_chunk_boxes(volume, n_chunks, seed)]
    )
    finite = values[np.isfinite(values)]
    stats: dict[str, Any] = {"n_sampled": int(values.size), "nan_fraction": float(np.isnan(values).mean())}
    if finite.size == 0:
        return {**dict.fromkeys(("min", "max", "mean", "std", "p1", "p50", "p99")), **stats}
    p1, p50, p99 = np.percentile(finite, [1, 50, 99])
    return {
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "p1": float(p1),
        "p50": float(p50),
        "p99": float(p99),
        **stats,
    }


def format_bytes(n: int) -> str:
    """Human-readable size, e.g. ``"1.5 GiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_description(d: dict) -> str:
    """Render :func:`describe`'s dict as an aligned text block."""
    rows = [
        ("source", d["source"]),
        ("axes", d["axes"]),
        ("shape", " x ".join(str(s) for s in d["shape"])),
        ("dtype", d["dtype"]),
        ("chunks", " x ".join(str(c) for c in d["chunks"])),
        ("size", f"{d['size']} ({d['nbytes']} bytes uncompressed)"),
    ]
    if d.get("scale") is not None:
        units = d.get("units") or (None,) * len(d["scale"])
        rows.append(("scale", ", ".join(f"{a}={s:g}{' ' + u if u else ''}" for a, s, u in zip(d["axes"], d["scale"], units))))
    it = d["intensity"]
    rows.append(("sampled", f"{it['n_sampled']} voxels, {it['nan_fraction']:.1%} NaN"))
    if it["min"] is None:
        rows.append(("intensity", "no finite values sampled"))
    else:
        rows.append(("min / max", f"{it['min']:.6g} / {it['max']:.6g}"))
        rows.append(("mean / std", f"{it['mean']:.6g} / {it['std']:.6g}"))
        rows.append(("p1/p50/p99", f"{it['p1']:.6g} / {it['p50']:.6g} / {it['p99']:.6g}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
