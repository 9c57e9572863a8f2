"""Denoise in-memory arrays tile by tile: pure compute, no Dask and no Zarr in here."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .background import check_background, subtract_background
from .errors import InputError
from .geometry import Box
from .normalize import denormalize, normalize
from .package import Model
from .runtime import to_fast_layout
from .tiling import TilePlan, Tile, axis_modes, blend_weights, gather, make_plan, read_box, reflect_indices, tiles_for


MAX_BATCH_VOXELS = 2 * 2**20  # input voxels per forward pass: bounds a worker's peak memory


def axis_roles(model: Model, axes: str, source: str = "the input") -> tuple[str, ...]:
    """The role of each volume axis for ``model``; an InputError if the model does not fit.

    A stack model's stack axis (Noise2Stack) is the ``"channel"`` axis."""
    stack = model.stack_axis
    if stack is not None and stack not in axes:
        raise InputError(
            f"{source} has axes {axes} but the model ({model.train_config.method}) feeds planes along {stack} "
            f"as channels; give the input's axes (--axes) so that it has a {stack} axis")
    spatial = "".join(a for a in axes if a in "ZYX" and a != stack)
    if spatial != model.spatial_axes:
        kind = {2: "2D", 3: "3D"}
        raise InputError(
            f"{source} has spatial axes {spatial} ({kind.get(len(spatial), '?')}, axes {axes}) but the model was "
            f"trained on {model.spatial_axes} ({kind.get(len(model.spatial_axes), '?')}, axes {model.axes}); "
            f"train a model on data with the same spatial axes"
        )
    return tuple("channel" if a == stack else "spatial" if a in "ZYX" else "sample" for a in axes)


def plan_for(model: Model, shape: tuple[int, ...], axes: str, *, tile=None, overlap: int = 0,
             halo: int | None = None, block: tuple[int, ...] | None = None,
             source: str = "the input") -> TilePlan:
    """The tile plan for running ``model`` on a volume of ``shape`` and ``axes``."""
    roles = axis_roles(model, axes, source)
    if "channel" in roles and shape[roles.index("channel")] < 2:
        raise InputError(f"{source} has one plane along {model.stack_axis}; the model needs neighbouring planes")
    check_background(model.background, tuple(shape), source)
    return make_plan(
        tuple(shape), roles,
        receptive_radius=model.receptive_radius, factor=model.factor, channel_halo=model.channel_halo,
        tile=tile, overlap=overlap, halo=halo, block=block,
    )


def model_device(model: Model) -> torch.device:
    return next(iter(model.nets.values())).parameters().__next__().device


def run_model(model: Model, x: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """The method's prediction for a normalised batch ``x`` ``(N, C, *spatial)`` -> ``(N, 1, *spatial)``."""
    device = model_device(model)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        y = model.method.predict(model.nets, to_fast_layout(torch.from_numpy(x).to(device)), model.options)
    return y.float().cpu().numpy()


def _to_net(x: np.ndarray, roles: tuple[str, ...]) -> np.ndarray:
    """One tile in volume layout -> ``(C, *net spatial)`` (sample axes dropped, channel axis first)."""
    channel = [i for i, r in enumerate(roles) if r == "channel"]
    spatial = [i for i, r in enumerate(roles) if r == "spatial"]
    x = np.transpose(x, channel + spatial + [i for i, r in enumerate(roles) if r == "sample"])
    return x.reshape((-1 if channel else 1,) + x.shape[len(channel): len(channel) + len(spatial)])


def _crop_to_window(y: np.ndarray, tile: Tile, plan: TilePlan) -> np.ndarray:
    """Network output ``(1, *net spatial)`` of one tile -> its blend window in volume layout."""
    spatial = [i for i, r in enumerate(plan.roles) if r == "spatial"]
    rel = tile.window.relative_to(tile.input.offset)
    index = tuple(slice(rel.offset[i], rel.stop[i]) for i in spatial)
    y = y[0][index]
    shape = tuple(tile.window.shape[i] if r == "spatial" else 1 for i, r in enumerate(plan.roles))
    return y.reshape(shape)


def _batches(tiles: Iterator[Tile], size: int) -> Iterator[list[Tile]]:
    batch: list[Tile] = []
    for tile in tiles:
        batch.append(tile)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def denoise_block(data: np.ndarray, data_box: Box, write_box: Box, plan: TilePlan, model: Model, *,
                  batch_size: int = 4, precision: str = "fp32") -> np.ndarray:
    """Denoise ``write_box`` of a volume.

    Parameters
    ----------
    data : the volume's voxels in ``data_box`` (raw intensities, any numeric dtype); must cover
        ``tiling.read_box(plan, write_box)``.
    data_box : where ``data`` sits in the volume.
    write_box : the voxels to produce.
    plan : the tile plan of the volume.
    model : a loaded model.

    Returns
    -------
    float32 array of ``write_box.shape``: the denoised intensities.
    """
    x = normalize(subtract_background(data, data_box, model.background), model.stats)
    out = np.zeros(write_box.shape, dtype=np.float32)
    # 3D convolutions need workspace ~ kernel volume x input voxels: bound the batch by voxels
    batch_size = max(1, min(batch_size, MAX_BATCH_VOXELS // math.prod(plan.input_shape)))
    modes = axis_modes(plan.roles)
    for batch in _batches(tiles_for(plan, write_box), batch_size):
        inputs = np.stack([_to_net(gather(x, data_box, t.input, plan.shape, modes), plan.roles) for t in batch])
        outputs = run_model(model, inputs, precision)
        for tile, y in zip(batch, outputs):
            y = _crop_to_window(y, tile, plan) * blend_weights(plan, tile)
            part = tile.window.intersect(write_box)
            out[part.relative_to(write_box.offset).slices] += y[part.relative_to(tile.window.offset).slices]
    return denormalize(out, model.out_stats)


def predict_array(array: np.ndarray, model: Model, axes: str | None = None, *, tile=None, overlap: int = 0,
                  batch_size: int = 4, precision: str = "fp32") -> np.ndarray:
    """Denoise an in-memory array (float32 result of the same shape), tile by tile."""
    array = np.asarray(array)
    axes = axes or model.axes
    if len(axes) != array.ndim:
        raise InputError(f"axes {axes} do not fit an array of shape {array.shape}")
    plan = plan_for(model, array.shape, axes, tile=tile, overlap=overlap)
    whole = Box.from_shape(array.shape)
    return denoise_block(array, whole, whole, plan, model, batch_size=batch_size, precision=precision)


def predict_whole(array: np.ndarray, model: Model, axes: str | None = None) -> np.ndarray:
    """Reference prediction: one network pass per image over the whole (mirror-padded) array.

    For a stack model, one pass per plane of the stack axis, its neighbourhood built with the
    end-plane rule (``reflect_indices`` mode ``"stack"``) independently of the tiling code.
    Memory grows with the array: use it to check the tiled paths, not on real volumes.
    """
    axes = axes or model.axes
    array = np.asarray(array)
    roles = axis_roles(model, axes)
    halo = -(-model.receptive_radius // model.factor) * model.factor
    spatial = [i for i, r in enumerate(roles) if r == "spatial"]
    samples = [i for i, r in enumerate(roles) if r in ("sample", "channel")]
    x = normalize(subtract_background(array, Box.from_shape(array.shape), model.background), model.stats)
    x = np.transpose(x, samples + spatial)
    lead = x.shape[: len(samples)]
    stack = [j for j, i in enumerate(samples) if roles[i] == "channel"]
    k = model.channel_halo
    sizes = x.shape[len(samples):]
    padded = [n + 2 * halo for n in sizes]
    pads = [(halo, math.ceil(p / model.factor) * model.factor - p + halo) for p in padded]
    out = np.empty(x.shape, np.float32)
    for pos in np.ndindex(*lead):
        if stack:
            j = stack[0]
            planes = reflect_indices(pos[j] - k, pos[j] + k + 1, lead[j], mode="stack")
            xi = np.stack([x[pos[:j] + (int(z),) + pos[j + 1:]] for z in planes])
        else:
            xi = x[pos][None]
        xi = np.pad(xi, [(0, 0)] + pads, mode="reflect")
        y = run_model(model, xi[None])[0, 0]
        out[pos] = y[tuple(slice(halo, halo + n) for n in sizes)]
    return denormalize(np.transpose(out, np.argsort(samples + spatial)), model.out_stats)
