"""Pyramid levels of an OME-Zarr output, on Dask: level k from level k-1, one task per region of
whole level-k chunks (so every chunk has exactly one writer), reading only the level-(k-1) box
it averages (``pyramid.source_box``).

A level is listed in the image's ``multiscales`` once it is complete, so the output always opens
as a valid image of its finished levels. A level being written keeps the done records of
``writer.mark_done`` (prefixed ``L<k>_``): a killed run continued with ``predict --resume`` (or a
second ``bigdenoise pyramid``) redoes only the regions not recorded. The ``omero`` display
window is computed last, from sampled chunks of the smallest level.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from .errors import ConfigError, OutputError
from .execute import BlockFailed
from .geometry import Block
from .ome import NGFF_VERSIONS, image_attributes, read_multiscales, read_ome_axes, read_ome_scale, read_ome_translation
from .pyramid import Level, display_window, downsample, plan_levels, source_box
from .tiling import block_shape_for, iter_blocks
from .writer import OutputSpec, create_level, finish_output, load_done, mark_done, to_dtype

log = logging.getLogger(__name__)

SAMPLED_CHUNKS = 16  # chunks per channel read for the display window


def check_request(pyramid: bool | int | None, ngff: str | None, ome: bool) -> None:
    """Refuse ``--pyramid``/``--ngff`` that cannot apply, before anything is written: an unknown
    NGFF version, or either option for a plain Zarr output (one bare array, no image group)."""
    if ngff is not None and ngff not in NGFF_VERSIONS:
        raise ConfigError(f"--ngff {ngff}: choose one of {', '.join(NGFF_VERSIONS)}")
    asked = [flag for flag, given in (("--pyramid", pyramid not in (None, False)), ("--ngff", ngff is not None))
             if given]
    if asked and not ome:
        raise ConfigError(f"{' and '.join(asked)} need an OME-Zarr output (an --out ending in .ome.zarr); a plain "
                          f".zarr output is one bare array")
    if not isinstance(pyramid, bool) and pyramid is not None and pyramid < 1:
        raise ConfigError(f"--pyramid {pyramid}: a pyramid has at least 1 level")


def _levels_asked(pyramid: bool | int | None) -> int | None:
    """``levels`` of :func:`pyramid.plan_levels`: True -> automatic (None), False/None -> 1."""
    if isinstance(pyramid, bool) or pyramid is None:
        return None if pyramid else 1
    return int(pyramid)


def write_levels(spec: OutputSpec, client, pyramid: bool | int | None = False, *, block_voxels: int = 4 * 2**20,
                 progress: bool = True) -> int:
    """Complete the OME-Zarr image at ``spec.path`` (level 0 written) with the levels ``pyramid``
    asks for (False: none; True: until the smallest fits ``pyramid.FIT`` in-plane; N: N levels in
    all) and its final metadata (levels, ``omero`` window). Levels already listed are kept.
    Nothing for a plain Zarr output. Returns the number of levels."""
    if not spec.array_path:
        return 1
    group = zarr.open_group(spec.path, mode="r+")
    multiscale = read_multiscales(dict(group.attrs))[0]
    listed = len(multiscale["datasets"])
    base = group["0"]
    plan = _plan(spec.path, multiscale, base.shape, _levels_asked(pyramid), listed)
    version = "0.4" if group.metadata.zarr_format == 2 else "0.5"
    names = [a["name"] for a in multiscale["axes"]]
    for k in range(1, len(plan)):
        level_spec = _level_array(spec.path, group, k, plan[k], base, names, listed)
        if k >= listed:
            _run_level(OutputSpec(spec.path, str(k - 1), plan[k - 1].shape, level_spec.chunks, level_spec.dtype),
                       level_spec, plan[k], client, block_voxels, progress)
            group.attrs.update(_attributes(multiscale, plan[:k + 1], version))
            log.info("pyramid level %d of %s written: shape %s", k, spec.path, plan[k].shape)
    smallest = OutputSpec(spec.path, str(len(plan) - 1), plan[-1].shape, (), base.dtype.str)
    channel = names.index("c") if "c" in names else None
    windows = client.submit(sample_windows, smallest, channel, pure=False).result()
    group.attrs.update(_attributes(multiscale, plan, version, windows))
    return len(plan)


def _plan(path: str, multiscale: dict, shape: tuple[int, ...], levels: int | None, listed: int) -> tuple[Level, ...]:
    ndim = len(shape)
    dataset = multiscale["datasets"][0]
    axes, _ = read_ome_axes(path, multiscale, shape)
    scale, translation = read_ome_scale(multiscale, dataset, ndim), read_ome_translation(multiscale, dataset, ndim)
    plan = plan_levels(shape, axes, scale, translation, levels)
    return plan if len(plan) >= listed else plan_levels(shape, axes, scale, translation, listed)


def _attributes(multiscale: dict, plan: tuple[Level, ...], version: str, windows: list[dict] | None = None) -> dict:
    return image_attributes(multiscale["axes"], [(lv.scale, lv.translation) for lv in plan], version, windows,
                            multiscale.get("name", "denoised"))


def _level_array(path: str, group: zarr.Group, k: int, level: Level, base: zarr.Array, names: list[str],
                 listed: int) -> OutputSpec:
    """Level ``k``'s array (created, or the one a killed run left, checked) as an OutputSpec
    whose done records are prefixed ``L<k>_``; chunks are level 0's, clipped to the level."""
    chunks = tuple(min(c, n) for c, n in zip(base.chunks, level.shape))
    spec = OutputSpec(path, str(k), level.shape, chunks, base.dtype.str, part=f"L{k}_")
    if str(k) not in group:
        create_level(group, str(k), level.shape, chunks, base.dtype, base.fill_value, names)
        return spec
    array = group[str(k)]
    if array.shape != level.shape or array.chunks != chunks or array.dtype != base.dtype:
        state = "level" if k < listed else "partly written level"
        raise OutputError(f"{spec.path}: its {state} {k} has shape {array.shape}, chunks {array.chunks}, dtype "
                          f"{array.dtype}, not the {level.shape}, {chunks}, {base.dtype} this pyramid makes; "
                          f"predict it again with --overwrite")
    return spec


def level_block(source: OutputSpec, target: OutputSpec, block: Block, factors: tuple[int, ...]) -> int:
    """Write one region of whole chunks of level ``target`` as the mean of level ``source``
    (runs on a worker); record it done. Returns its voxel count."""
    box = source_box(block.write, factors, source.shape)
    data = downsample(source.open("r")[box.slices], factors)
    target.open("r+")[block.write.slices] = to_dtype(data, np.dtype(target.dtype))
    mark_done(target, block.index)
    return block.write.size


def _run_level(source: OutputSpec, target: OutputSpec, level: Level, client, block_voxels: int,
               progress: bool) -> None:
    """Every region of ``target`` not recorded done, at most 2 tasks per worker thread in flight;
    a BlockFailed naming the first failed region once the others are written."""
    from distributed import as_completed

    block = block_shape_for(target.chunks, target.shape, block_voxels)
    done = load_done(target, tuple(math.ceil(n / b) for n, b in zip(target.shape, block)))
    todo: Iterator[Block] = (b for b in iter_blocks(target.shape, block) if not done[b.index])
    window = max(4, 2 * (sum(client.nthreads().values()) or 1))
    pending = as_completed()
    failures: list[str] = []

    def submit_next() -> None:
        b = next(todo, None)
        if b is not None:
            key = f"bigdenoise-level-{target.array_path}-{'-'.join(map(str, b.index))}-{id(target)}"
            pending.add(client.submit(level_block, source, target, b, level.factors, key=key, retries=1, pure=False))

    for _ in range(window):
        submit_next()
    with tqdm(total=int(done.size - done.sum()), unit="block", desc=f"level {target.array_path}",
              disable=not progress, dynamic_ncols=True) as bar:
        for future in pending:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append(f"{future.key}: {type(exc).__name__}: {exc}")
                log.error("pyramid region %s failed: %s", future.key, exc)
            future.release()
            bar.update(1)
            submit_next()
    if failures:
        raise BlockFailed(f"{len(failures)} regions of pyramid level {target.array_path} failed, the first "
                          f"{failures[0]}; the others were written: rerun with --resume (or bigdenoise pyramid) "
                          f"to redo only the failed ones")


def sample_windows(spec: OutputSpec, channel_axis: int | None) -> list[dict]:
    """An OMERO display window per channel (along ``channel_axis``; one when None) from up to
    ``SAMPLED_CHUNKS`` chunks of the array ``spec``, spread evenly over its chunk grid (runs on
    a worker)."""
    array = spec.open("r")
    grid = [math.ceil(n / c) for n, c in zip(array.shape, array.chunks)]
    windows = []
    for c in range(array.shape[channel_axis]) if channel_axis is not None else [None]:
        sub = list(grid)
        if c is not None:
            sub[channel_axis] = 1
        total = math.prod(sub)
        values = []
        for flat in np.unique(np.linspace(0, total - 1, min(SAMPLED_CHUNKS, total)).round().astype(np.int64)):
            index = list(np.unravel_index(flat, sub))
            if c is not None:
                index[channel_axis] = c // array.chunks[channel_axis]
            box = tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(index, array.chunks, array.shape))
            data = array[box]
            if c is not None:
                data = np.take(data, c - box[channel_axis].start, axis=channel_axis)
            values.append(data.ravel())
        windows.append(display_window(np.concatenate(values), array.dtype))
    return windows


def add_pyramid(out: str | Path, *, levels: int | None = None, cluster: str = "local", workers: int | None = None,
                block_voxels: int = 4 * 2**20, progress: bool = True) -> dict:
    """``bigdenoise pyramid OUT``: add levels (``levels`` in all, else until the smallest fits
    ``pyramid.FIT`` in-plane) to a complete OME-Zarr prediction bigdenoise wrote. Anything
    else (a missing path, another program's data, a plain Zarr output, a prediction not finished)
    is refused with an OutputError. Returns ``{"output", "levels"}``."""
    from .clusters import check_cluster, dask_client
    from .outputs import PREDICTION, destination

    check_cluster(cluster, workers)
    if not Path(out).expanduser().exists():
        raise OutputError(f"{out} does not exist: give a prediction bigdenoise wrote (predict --out NAME.ome.zarr)")
    dest = destination(out, PREDICTION, resume=True)  # refuses what bigdenoise did not write
    if dest.replacing:
        raise OutputError(f"a replacement of {dest.path} was interrupted: finish it with predict --resume first")
    root = zarr.open(str(dest.path), mode="r")
    if isinstance(root, zarr.Array) or not read_multiscales(dict(root.attrs)):
        raise OutputError(f"{dest.path} is a plain Zarr array; pyramids are for OME-Zarr outputs (predict --out "
                          f"NAME.ome.zarr)")
    if not dict(root.attrs.get("bigdenoise", {})).get("complete"):
        raise OutputError(f"{dest.path} is not complete; finish it with predict --resume first")
    spec = OutputSpec(str(dest.path), "0", root["0"].shape, root["0"].chunks, root["0"].dtype.str)
    with dask_client(cluster, workers) as (client, _):
        n = write_levels(spec, client, True if levels is None else levels, block_voxels=block_voxels,
                         progress=progress)
    finish_output(spec)  # drops the levels' done records
    return {"output": str(dest.path), "levels": n}
