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
from .runtime import free_device_memory, memory_format, to_device, to_fast_layout, true_fp32
from .tiling import TilePlan, Tile, axis_modes, blend_weights, gather, make_plan, reflect_indices, tiles_for


MAX_BATCH_VOXELS = 2 * 2**20  # input voxels per forward pass on the CPU: bounds a worker's peak memory
CPU_BATCH = 4  # tiles per forward pass on the CPU when none is asked for
GPU_MAX_BATCH = 64  # tiles per forward pass on a GPU, at most
GPU_MEMORY_FRACTION = 0.5  # of the device's free memory one forward pass may plan to use
LIVE_FEATURE_MAPS = 12  # full-resolution feature maps of ``features`` channels alive at once, with margin


def model_axis_roles(model: Model, axes: str, source: str = "the input") -> tuple[str, ...]:
    """The role of each volume axis for ``model``; an InputError if the model does not fit.

    A stack model's stack axis (Noise2Stack) is the ``"channel"`` axis; a ``planes`` model
    (2D over YX, COSDD) stacks Z on any volume that has one, whatever it was trained on."""
    stack = model.method.stack_for(model.options, axes) if model.method.planes else model.stack_axis
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
    if "channel" in roles and model.channel_halo > 0 and shape[roles.index("channel")] < 2:
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


def run_model(model: Model, x: np.ndarray, precision: str = "fp32", origins: np.ndarray | None = None) -> np.ndarray:
    """The method's prediction for a normalised batch ``x`` ``(N, C, *spatial)`` -> ``(N, 1, *spatial)``.

    ``origins`` ``(N, volume ndim)``: where each tile lies (:func:`tile_origin`), passed on to
    a method with ``tile_origins`` (others never see it)."""
    device = model_device(model)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    kwargs = {}
    if model.method.tile_origins:
        kwargs["origins"] = None if origins is None else torch.as_tensor(np.asarray(origins, np.int64))
    exact = true_fp32(device) if dtype is None else nullcontext()
    with torch.inference_mode(), exact, torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        y = model.method.predict(model.nets, to_fast_layout(to_device(x, device)), model.options, **kwargs)
    return y.float().cpu().numpy()


def tile_origin(tile: Tile, roles: tuple[str, ...]) -> tuple[int, ...]:
    """Where ``tile`` lies, as ``Method.tile_origins`` states it: its plane along sample and
    channel axes, then its input box's first voxel along spatial axes."""
    lead = [tile.core.offset[i] for i, r in enumerate(roles) if r != "spatial"]
    return tuple(lead + [tile.input.offset[i] for i, r in enumerate(roles) if r == "spatial"])


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


def _batches(tiles: Iterator[Tile], size: int, key=lambda tile: None) -> Iterator[list[Tile]]:
    """Consecutive tiles in batches of at most ``size``, a new batch wherever ``key(tile)`` changes."""
    batch: list[Tile] = []
    for tile in tiles:
        if batch and key(tile) != key(batch[0]):
            yield batch
            batch = []
        batch.append(tile)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- the whole-image pre-pass (methods.Method.prepass) ------------------------------------------

PREPASS_VOXELS = 2**18  # voxels per call of a prepass statistic: bounds its feature maps' memory


def image_statistic(model: Model):
    """The model's voxelwise pre-pass statistic for its current options, or None (``Method.prepass``)."""
    return model.method.image_statistic(model.options)


def image_sums(data: np.ndarray, data_box: Box, model: Model, roles: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Sums (float64) and voxel counts of the model's pre-pass statistic over ``data`` (raw
    voxels of ``data_box``), per image: both shaped as ``data_box`` along the sample axes
    (``()`` when there is none). The statistic is voxelwise, so any box may be summed alone."""
    statistic = image_statistic(model)
    if statistic is None:
        raise ValueError(f"method {model.method.name} has no pre-pass statistic with these options")
    if "channel" in roles:
        raise ConfigError(f"method {model.method.name}: a whole-image pre-pass is not built for stack axes")
    sample = [i for i, r in enumerate(roles) if r == "sample"]
    x = normalize(subtract_background(data, data_box, model.background), model.stats)
    x = np.transpose(x, sample + [i for i in range(x.ndim) if i not in sample])
    lead = x.shape[:len(sample)]
    x = x.reshape((math.prod(lead), -1))
    sums = np.zeros(x.shape[0])
    device = model_device(model)
    flat = (1, 1) + (1,) * (len(roles) - len(sample) - 1)  # 1x1 statistic: any voxels may form one image row
    with torch.inference_mode():
        for j in range(x.shape[0]):
            for start in range(0, x.shape[1], PREPASS_VOXELS):
                part = torch.from_numpy(np.ascontiguousarray(x[j, start:start + PREPASS_VOXELS], np.float32))
                v = statistic(model.nets, part.reshape(flat + (-1,)).to(device))
                sums[j] += float(v.double().sum())
    return sums.reshape(lead), np.full(lead, x.shape[1], np.int64)


def image_means_of(array: np.ndarray, model: Model, roles: tuple[str, ...]) -> np.ndarray | None:
    """The model's pre-pass means per image of an in-memory ``array`` (shaped as its sample
    axes), or None when the model needs none."""
    if image_statistic(model) is None:
        return None
    sums, counts = image_sums(array, Box.from_shape(array.shape), model, roles)
    return sums / counts


def with_image_mean(model: Model, value: float) -> Model:
    """``model`` predicting one image whose pre-pass mean is ``value`` (its ``image_option`` set)."""
    config = model.train_config
    options = {**config.options, model.method.image_option: float(value)}
    return dataclasses.replace(model, train_config=config.model_copy(update={"options": options}))


def denoise_block(data: np.ndarray, data_box: Box, write_box: Box, plan: TilePlan, model: Model, *,
                  batch_size: int | None = None, precision: str = "fp32",
                  compute_lock: AbstractContextManager | None = None, timings: dict | None = None,
                  image_means: np.ndarray | None = None) -> np.ndarray:
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
    image_means : for a model with a pre-pass (``Method.prepass``), each image's mean of its
        statistic over the whole volume, shaped as the volume's sample axes (``()`` if none):
        every tile of image ``s`` is predicted with ``image_means[s]`` (``with_image_mean``).

    Returns
    -------
    float32 array of ``write_box.shape``: the denoised intensities.
    """
    x = normalize(subtract_background(data, data_box, model.background), model.stats)
    out = np.zeros(write_box.shape, dtype=np.float32)
    batch_size = forward_batch_size(model, plan, batch_size, precision)
    lock = compute_lock if compute_lock is not None else nullcontext()
    modes = axis_modes(plan.roles)
    sample = [i for i, r in enumerate(plan.roles) if r == "sample"]
    image = lambda tile: tuple(tile.core.offset[i] for i in sample)  # noqa: E731
    if image_statistic(model) is not None and image_means is None:
        raise ValueError(f"method {model.method.name} ({model.method.image_option}) needs each image's pre-pass "
                         f"mean: compute image_means first (execute.image_means, image_means_of)")
    images: dict[tuple[int, ...], Model] = {}  # the model of each image (its pre-pass mean set)
    split = image if image_means is not None else (lambda tile: ())  # batches mix images unless levels differ
    for batch in _batches(tiles_for(plan, write_box), batch_size, split):
        key = split(batch[0])
        if key not in images:
            images[key] = model if image_means is None else with_image_mean(model, np.asarray(image_means)[key])
        inputs = np.stack([_to_net(gather(x, data_box, t.input, plan.shape, modes), plan.roles) for t in batch])
        origins = np.array([tile_origin(t, plan.roles) for t in batch]) if model.method.tile_origins else None
        with lock:
            t0 = time.perf_counter()
            outputs = run_model(images[key], inputs, precision, origins)
            if timings is not None:
                timings["forward_s"] = timings.get("forward_s", 0.0) + time.perf_counter() - t0
        for tile, y in zip(batch, outputs):
            y = _crop_to_window(y, tile, plan) * blend_weights(plan, tile)
            part = tile.window.intersect(write_box)
            out[part.relative_to(write_box.offset).slices] += y[part.relative_to(tile.window.offset).slices]
    return denormalize(out, model.out_stats)


def predict_array(array: np.ndarray, model: Model, axes: str | None = None, *, tile=None, overlap: int = 0,
                  batch_size: int | None = None, precision: str = "fp32") -> np.ndarray:
    """Denoise an in-memory array (float32 result of the same shape), tile by tile (after the
    whole-image pre-pass of a method that has one)."""
    array = np.asarray(array)
    axes = axes or model.axes
    if len(axes) != array.ndim:
        raise InputError(f"axes {axes} do not fit an array of shape {array.shape}")
    plan = plan_for(model, array.shape, axes, tile=tile, overlap=overlap)
    whole = Box.from_shape(array.shape)
    return denoise_block(array, whole, whole, plan, for_inference(model), batch_size=batch_size, precision=precision,
                         image_means=image_means_of(array, model, plan.roles))


def predict_whole(array: np.ndarray, model: Model, axes: str | None = None) -> np.ndarray:
    """Reference prediction: one network pass per image over the whole array, mirror-padded at
    the far end of each spatial axis to a multiple of the network's factor (``tiling``'s
    reference).

    For a stack model, one pass per plane of the stack axis, its neighbourhood built with the
    end-plane rule (``reflect_indices`` mode ``"stack"``) independently of the tiling code. A
    method with ``tile_origins`` is told each image's planes and a spatial origin of 0. A method
    with a pre-pass (``Method.prepass``) predicts each image with its statistic's mean over that
    whole image, computed here in one call on the image.
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
        statistic = image_statistic(model)
        one = model
        if statistic is not None:
            with torch.inference_mode():
                v = statistic(model.nets, torch.from_numpy(np.ascontiguousarray(xi[None], np.float32)).to(
                    model_device(model)))
            one = with_image_mean(model, float(v.double().mean()))
        xi = np.pad(xi, [(0, 0)] + pads, mode="reflect")
        origin = np.array([tuple(pos) + (0,) * len(spatial)])  # as infer.tile_origin: planes, then spatial
        y = run_model(one, xi[None], origins=origin)[0, 0]
        out[pos] = y[tuple(slice(0, n) for n in sizes)]
    return denormalize(np.transpose(out, np.argsort(samples + spatial)), model.out_stats)
