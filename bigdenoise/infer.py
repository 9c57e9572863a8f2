"""Denoise in-memory arrays tile by tile: pure compute, no Dask and no Zarr in here."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from .axes import axis_roles, net_axes
from .background import check_background, subtract_background
from .errors import ConfigError, InputError
from .geometry import Box
from .normalize import denormalize, normalize
from .package import Model
from .nets import UNet, fold_batch_norm, inference_copy
from .runtime import free_device_memory, memory_format, to_device, to_fast_layout
from .tiling import TilePlan, Tile, axis_modes, blend_weights, gather, make_plan, reflect_indices, tiles_for


MAX_BATCH_VOXELS = 2 * 2**20  # input voxels per forward pass on the CPU: bounds a worker's peak memory
CPU_BATCH = 4  # tiles per forward pass on the CPU when none is asked for
GPU_MAX_BATCH = 64  # tiles per forward pass on a GPU, at most
GPU_MEMORY_FRACTION = 0.5  # of the device's free memory one forward pass may plan to use
LIVE_FEATURE_MAPS = 12  # full-resolution feature maps of ``features`` channels alive at once, with margin


def model_axis_roles(model: Model, axes: str, source: str = "the input") -> tuple[str, ...]:
    """The role of each volume axis for ``model``; an InputError if the model does not fit.

    A stack model's stack axis (Noise2Stack) is the ``"channel"`` axis."""
    stack = model.stack_axis
    if stack is not None and stack not in axes:
        raise InputError(
            f"{source} has axes {axes} but the model ({model.train_config.method}) feeds planes along {stack} "
            f"as channels; give the input's axes (--axes) so that it has a {stack} axis")
    spatial = net_axes(axes, stack)
    if spatial != model.spatial_axes:
        kind = {2: "2D", 3: "3D"}
        raise InputError(
            f"{source} has spatial axes {spatial} ({kind.get(len(spatial), '?')}, axes {axes}) but the model was "
            f"trained on {model.spatial_axes} ({kind.get(len(model.spatial_axes), '?')}, axes {model.axes}); "
            f"train a model on data with the same spatial axes"
        )
    return axis_roles(axes, stack)


def plan_for(model: Model, shape: tuple[int, ...], axes: str, *, tile=None, overlap: int = 0,
             halo: int | None = None, inexact: bool = False, block: tuple[int, ...] | None = None,
             source: str = "the input") -> TilePlan:
    """The tile plan for running ``model`` on a volume of ``shape`` and ``axes``.

    A ``halo`` below the model's receptive radius makes tiles differ from a whole-volume pass
    (seams): a ConfigError unless ``inexact`` says that is accepted.
    """
    if overlap < 0 or (halo is not None and halo < 0):
        raise ConfigError(f"--overlap {overlap} and --halo {halo} must not be negative")
    radius = model.receptive_radius
    if halo is not None and halo < radius and not inexact:
        raise ConfigError(f"--halo {halo} is below the model's receptive radius {radius}: tiles would not match "
                          f"a whole-volume pass (seams); use at least {radius}, or pass --inexact to accept that")
    roles = model_axis_roles(model, axes, source)
    if "channel" in roles and shape[roles.index("channel")] < 2:
        raise InputError(f"{source} has one plane along {model.stack_axis}; the model needs neighbouring planes")
    check_background(model.background, tuple(shape), source)
    return make_plan(
        tuple(shape), roles,
        receptive_radius=radius, factor=model.factor, channel_halo=model.channel_halo,
        tile=tile, overlap=overlap, halo=halo, block=block, max_input_voxels=MAX_BATCH_VOXELS,
    )


def model_device(model: Model) -> torch.device:
    return next(iter(model.nets.values())).parameters().__next__().device


def for_inference(model: Model, compiled: bool = False) -> Model:
    """``model`` with every U-Net replaced by a faster inference copy computing the same function.

    Batch norms are folded into the convolutions before them (one pass over every feature map
    less per convolution). Unless ``compiled``, ``nets.inference_copy`` then makes each decoder
    level's first convolution read the coarse features directly instead of an up-sampled,
    concatenated map (12 % fewer multiply-adds in 2D, 17 % in 3D) and fuses the other
    convolutions' ReLUs on the CPU. The outputs equal the original model's up to float
    rounding. ``compiled=True`` instead wraps every network in ``torch.compile``
    (``runtime.check_compiler`` first): the first call of a network's forward with a new input
    shape compiles (seconds), later ones run fused kernels; methods that call other methods of a
    network (PN2V's ``trunk``) run those eagerly. ``model`` itself is not changed.
    """
    nets = {}
    for name, net in model.nets.items():
        if isinstance(net, UNet):
            net = fold_batch_norm(net) if net.batch_norm else copy.deepcopy(net).eval()
            # Inductor runs the coarse decoder's strided phase sums slower than the plain
            # decoder (3D: 3.5 s vs 2.5 s per forward on the benchmark CPU) and fuses ReLUs
            # itself, so compiled nets keep the plain U-Net.
            net = net if compiled else inference_copy(net)
            net = net.to(memory_format=memory_format(net.ndim))
        nets[name] = torch.compile(net) if compiled else net
    return dataclasses.replace(model, nets=nets)


def run_model(model: Model, x: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """The method's prediction for a normalised batch ``x`` ``(N, C, *spatial)`` -> ``(N, 1, *spatial)``."""
    device = model_device(model)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        y = model.method.predict(model.nets, to_fast_layout(to_device(x, device)), model.options)
    return y.float().cpu().numpy()


def workspace_bytes_per_voxel(features: int, precision: str = "fp32") -> int:
    """Estimated device memory a forward pass of the U-Net needs per input voxel of a tile.

    About ``LIVE_FEATURE_MAPS`` full-resolution maps of ``features`` channels (the skip, the
    up-sampled features, their concatenation, the convolution's output and workspace, the
    coarser levels), in the precision's element size.
    """
    element = 4 if precision == "fp32" else 2
    return LIVE_FEATURE_MAPS * features * element


def batch_for_memory(free_bytes: int, tile_voxels: int, bytes_per_voxel: int, *,
                     fraction: float = GPU_MEMORY_FRACTION, cap: int = GPU_MAX_BATCH) -> int:
    """How many tiles one forward pass may hold on a device with ``free_bytes`` free.

    Parameters
    ----------
    free_bytes : free device memory.
    tile_voxels : input voxels of one tile (all its channels).
    bytes_per_voxel : workspace estimate per input voxel (:func:`workspace_bytes_per_voxel`).
    fraction : part of the free memory the batch may plan to use (the rest absorbs the
        allocator's fragmentation and the estimate's error).
    cap : most tiles per pass (beyond a few dozen a GPU is no faster).

    Returns
    -------
    int in ``[1, cap]``: at least one tile, even when the estimate says it does not fit.
    """
    if tile_voxels < 1 or bytes_per_voxel < 1:
        raise ValueError(f"tile_voxels and bytes_per_voxel must be positive, got {tile_voxels}, {bytes_per_voxel}")
    fits = int(max(0, free_bytes) * fraction) // (tile_voxels * bytes_per_voxel)
    return max(1, min(cap, fits))


def forward_batch_size(model: Model, plan: TilePlan, batch_size: int | None = None, precision: str = "fp32") -> int:
    """Tiles per forward pass for ``model`` on its device.

    CPU: ``batch_size`` (default ``CPU_BATCH``), at most ``MAX_BATCH_VOXELS`` input voxels, since
    a 3D convolution's CPU workspace is about kernel volume x input voxels. CUDA: as many tiles
    as :func:`batch_for_memory` fits in the free device memory, at most ``batch_size`` when given.
    """
    tile_voxels = math.prod(plan.input_shape)
    free = free_device_memory(model_device(model))
    if free is None:
        return max(1, min(batch_size or CPU_BATCH, MAX_BATCH_VOXELS // tile_voxels))
    features = model.train_config.net.features
    fits = batch_for_memory(free, tile_voxels, workspace_bytes_per_voxel(features, precision))
    return fits if batch_size is None else max(1, min(batch_size, fits))


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
                  batch_size: int | None = None, precision: str = "fp32",
                  compute_lock: AbstractContextManager | None = None, timings: dict | None = None) -> np.ndarray:
    """Denoise ``write_box`` of a volume.

    Parameters
    ----------
    data : the volume's voxels in ``data_box`` (raw intensities, any numeric dtype); must cover
        ``tiling.read_box(plan, write_box)``.
    data_box : where ``data`` sits in the volume.
    write_box : the voxels to produce.
    plan : the tile plan of the volume.
    model : a loaded model.
    batch_size : tiles per forward pass (None: :func:`forward_batch_size` chooses).
    precision : ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast.
    compute_lock : held around each forward pass only (a worker's lock shared by its task
        threads), so that another thread's reads, normalisation and blending overlap it.
    timings : when given, ``timings["forward_s"]`` grows by the seconds spent in forward passes.

    Returns
    -------
    float32 array of ``write_box.shape``: the denoised intensities.
    """
    x = normalize(subtract_background(data, data_box, model.background), model.stats)
    out = np.zeros(write_box.shape, dtype=np.float32)
    batch_size = forward_batch_size(model, plan, batch_size, precision)
    lock = compute_lock if compute_lock is not None else nullcontext()
    modes = axis_modes(plan.roles)
    for batch in _batches(tiles_for(plan, write_box), batch_size):
        inputs = np.stack([_to_net(gather(x, data_box, t.input, plan.shape, modes), plan.roles) for t in batch])
        with lock:
            t0 = time.perf_counter()
            outputs = run_model(model, inputs, precision)
            if timings is not None:
                timings["forward_s"] = timings.get("forward_s", 0.0) + time.perf_counter() - t0
        for tile, y in zip(batch, outputs):
            y = _crop_to_window(y, tile, plan) * blend_weights(plan, tile)
            part = tile.window.intersect(write_box)
            out[part.relative_to(write_box.offset).slices] += y[part.relative_to(tile.window.offset).slices]
    return denormalize(out, model.out_stats)


def predict_array(array: np.ndarray, model: Model, axes: str | None = None, *, tile=None, overlap: int = 0,
                  batch_size: int | None = None, precision: str = "fp32") -> np.ndarray:
    """Denoise an in-memory array (float32 result of the same shape), tile by tile."""
    array = np.asarray(array)
    axes = axes or model.axes
    if len(axes) != array.ndim:
        raise InputError(f"axes {axes} do not fit an array of shape {array.shape}")
    plan = plan_for(model, array.shape, axes, tile=tile, overlap=overlap)
    whole = Box.from_shape(array.shape)
    return denoise_block(array, whole, whole, plan, for_inference(model), batch_size=batch_size, precision=precision)


def predict_whole(array: np.ndarray, model: Model, axes: str | None = None) -> np.ndarray:
    """Reference prediction: one network pass per image over the whole array, mirror-padded at
    the far end of each spatial axis to a multiple of the network's factor (``tiling``'s
    reference).

    For a stack model, one pass per plane of the stack axis, its neighbourhood built with the
    end-plane rule (``reflect_indices`` mode ``"stack"``) independently of the tiling code.
    Memory grows with the array: use it to check the tiled paths, not on real volumes.
    """
    axes = axes or model.axes
    array = np.asarray(array)
    roles = model_axis_roles(model, axes)
    spatial = [i for i, r in enumerate(roles) if r == "spatial"]
    samples = [i for i, r in enumerate(roles) if r in ("sample", "channel")]
    x = normalize(subtract_background(array, Box.from_shape(array.shape), model.background), model.stats)
    x = np.transpose(x, samples + spatial)
    lead = x.shape[: len(samples)]
    stack = [j for j, i in enumerate(samples) if roles[i] == "channel"]
    k = model.channel_halo
    sizes = x.shape[len(samples):]
    pads = [(0, -n % model.factor) for n in sizes]
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
        out[pos] = y[tuple(slice(0, n) for n in sizes)]
    return denormalize(np.transpose(out, np.argsort(samples + spatial)), model.out_stats)
