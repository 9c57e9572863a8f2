"""The Python API: train a model on a volume, denoise a volume into Zarr."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .backing import cluster_for_memory
from .bioimageio_model import bioimageio_digest, for_volume, is_bioimageio
from .channel_models import (ChannelModels, check_train_arguments, package_digest, read_channel_models,
                             train_channels)
from .channels import all_channels, volume_voxel_size
from .config import make_config, with_default_patch
from .errors import ConfigError, InputError
from .clusters import JobOptions, check_cluster, dask_client, resolve_auto
from .execute import BlockSettings, image_means, run_blocks
from .fingerprint import differences, fingerprint
from .infer import image_statistic, plan_for
from .logs import run_log
from .ome import ome_order_ok
from .package import Model, load_model, prediction_options, with_options
from .runtime import check_compiler
from .tiling import TilePlan, block_shape_for, count_blocks
from .train import estimate_stats, fit, pick_device
from .outputs import PREDICTION, Destination, destination
from .pyramid_run import check_request, write_levels
from .geometry import Box
from .preview import write_preview
from .roi import parse_roi, roi_text, roi_volume
from .volume import Volume, open_volume
from .writer import (channel_spec, create_output, finish_output, load_done, output_chunks, resolve_dtype,
                     run_record)


log = logging.getLogger(__name__)


def _volume(source: Any, axes: str | None, **opening: Any) -> Volume:
    """``source`` opened (``opening``: ``open_volume``'s channel, series, voxel_size), or itself
    when it is a Volume already."""
    opening = {k: v for k, v in opening.items() if v is not None}
    if isinstance(source, Volume):
        opening.pop("fallback_axes", None)
        if opening:
            raise ConfigError(f"{', '.join(opening)} apply when a path or array is opened: pass them to "
                              f"open_volume() for a Volume")
        return source
    return open_volume(source, axes, **opening)


def train(source: Any, out: str | Path, *, method: str = "n2v", axes: str | None = None, target: Any = None,
          clean: Any = None, resume: bool = False, overwrite: bool = False, progress: bool = True,
          log_file: str | Path | None = None, channel: Any = None, series: int | None = None,
          voxel_size: Any = None, per_channel_models: bool = False, **config: Any) -> Model | ChannelModels:
    """Train a denoiser on ``source`` and write its model package to ``out``.

    Parameters
    ----------
    source : a path (Zarr array, OME-Zarr image, TIFF), a numpy/dask array or a Volume.
    out : model directory.
    method : a registered method name (``bigdenoise.methods.method_names()``).
    axes : axes of ``source`` (e.g. ``"SYX"``); read from the metadata when omitted.
    target : second volume for methods that need one (Noise2Noise, CARE, Noise2Stack ``mode="copy"``).
    clean : unpaired clean images of other fields of view (any shape, the input's axes) for
        methods that distil from them (``dbsn``); normalised with the input's statistics.
    log_file : where the run's log goes (default ``bigdenoise.log`` in the model directory).
    channel, series, voxel_size : as for :func:`bigdenoise.volume.open_volume`; training takes one
        channel of an input with a ``C`` axis, or with ``per_channel_models=True`` trains one model
        per chosen channel (default: every channel) into ``out`` (:mod:`bigdenoise.channel_models`;
        returns a ChannelModels). A patch not given follows an anisotropic voxel size and
        fits images smaller than the default (``config.with_default_patch``).
    config : any :class:`bigdenoise.config.TrainConfig` field (``steps``, ``max_time``,
        ``patch``, ``batch_size``, ``net={"depth": 2, ...}``, ``options={...}``, ``seed`` ...).
    """
    if per_channel_models:
        return _train_per_channel(source, out, method=method, axes=axes, target=target, clean=clean, resume=resume,
                                  overwrite=overwrite, progress=progress, log_file=log_file, channel=channel,
                                  series=series, voxel_size=voxel_size, config=config)
    volume = _volume(source, axes, channel=channel, series=series, voxel_size=voxel_size)
    if volume.layout is not None and len(volume.layout.channels) > 1:
        raise ConfigError(f"train learns one channel at a time, not --channel "
                          f"{','.join(map(str, volume.layout.channels))}: train one model per channel "
                          f"(--per-channel-models)")
    cfg = with_default_patch(make_config(method=method, axes=volume.axes, **config), volume.shape,
                             volume_voxel_size(volume))
    volumes = {"input": volume}
    if target is not None:
        volumes["target"] = _volume(target, volume.axes)
    if clean is not None:
        volumes["clean"] = _volume(clean, volume.axes)
    with run_log(log_file):
        return fit(volumes, out, cfg, resume=resume, overwrite=overwrite, progress=progress)


def _train_per_channel(source: Any, out: str | Path, *, method: str, axes: str | None, target: Any, clean: Any,
                       resume: bool, overwrite: bool, progress: bool, log_file: str | Path | None, channel: Any,
                       series: int | None, voxel_size: Any, config: Mapping[str, Any]) -> ChannelModels:
    """``train`` with ``per_channel_models=True``: one model per chosen channel (default: every
    channel) into ``out``."""
    check_train_arguments(target, clean)
    if channel is None and not isinstance(source, Volume):
        channel = all_channels(source, axes, series)
    volume = _volume(source, axes, channel=channel, series=series, voxel_size=voxel_size)
    with run_log(log_file):
        return train_channels(volume, out, method=method, config=config, resume=resume, overwrite=overwrite,
                              progress=progress)


def predict(source: Any, model: str | Path | Model, out: str | Path, *, axes: str | None = None,
            cluster: str = "auto", workers: int | None = None, chunks: tuple[int, ...] | None = None,
            dtype: str = "float32", overwrite: bool = False, resume: bool = False,
            tile: int | tuple[int, ...] | None = None, overlap: int = 0, halo: int | None = None,
            inexact: bool = False, batch_size: int | None = None, precision: str = "fp32", device: str = "auto",
            skip_background: float | None = None, background_value: float = 0.0,
            block_voxels: int = 4 * 2**20, jobs: JobOptions | None = None, compiled: bool = False,
            options: Mapping[str, Any] | None = None, progress: bool = True,
            log_file: str | Path | None = None, channel: Any = None, series: int | None = None,
            voxel_size: Any = None, roi: Any = None, pyramid: bool | int = False, ngff: str | None = None,
            trust_model: bool = False) -> dict:
    """Denoise ``source`` block by block on a Dask cluster into the Zarr array ``out``.

    The output has the input's shape and axes (an OME-Zarr input, or an ``out`` ending in
    ``.ome.zarr``, gives an OME-Zarr image),
    chunked like the input unless ``chunks`` is given. ``resume=True`` continues an
    interrupted run into the same ``out`` (the input must hold the same data, checked by
    content), skipping the blocks it finished. ``overwrite=True`` replaces an earlier
    prediction (only one bigdenoise wrote; the new one is swapped in when complete). With
    ``skip_background=T``, blocks whose input is all below ``T`` are not computed nor written:
    they read as ``background_value``. ``halo`` below the receptive radius needs ``inexact=True``.
    ``jobs`` configures ``cluster="slurm"|"pbs"|"lsf"``; ``cluster="auto"`` runs a one-block
    prediction in this process (``threads``) and any other on local worker processes
    (``clusters.resolve_auto``).
    ``batch_size`` (tiles per forward pass): None lets the worker choose, 4 on a CPU and as many
    as fit in the free memory of a GPU (``infer.forward_batch_size``). ``compiled=True`` runs the
    networks through ``torch.compile`` on each worker: seconds of compilation per worker process
    and input shape, then faster forward passes (worth it on large volumes).
    ``options`` overrides method options that only act at prediction time (the method's
    ``predict_options``, e.g. PN2V's ``{"prediction": "prior_mean"}``) for this prediction;
    values may be strings (``"prior_mean"``, ``"0.5"``), parsed by the method's options model.
    ``channel`` (an input with a ``C`` axis), ``series`` (a multi-series TIFF) and ``voxel_size``
    (written to the output's metadata) are :func:`bigdenoise.volume.open_volume`'s. The output
    keeps the input's axes, with the chosen channels along ``C``; with several channels and a
    model whose output is in its input's units (no separate target statistics), each channel is
    normalised with its own statistics, estimated from its chunks as training estimates them
    (``train.estimate_stats``, the model's seed and chunk count); one channel is denoised exactly
    as if it were a volume of its own (the model's statistics).
    The run's log (cluster, failed blocks with their tracebacks, a summary line) is appended to
    ``log_file``, by default ``bigdenoise.log`` inside the output (``logs.run_log``).
    ``roi`` (``"z0:z1,y0:y1,x0:x1"``, :func:`bigdenoise.roi.parse_roi`) writes only that box, as
    an array of its shape equal to the same box of a full run. Every run writes ``preview.png``
    (mid-planes, input | output) inside the output (:mod:`bigdenoise.preview`).
    An OME-Zarr output is NGFF ``ngff`` (``"0.5"``, default, or ``"0.4"``); ``pyramid=True`` adds 2x-mean
    levels until the smallest fits 512 voxels in-plane, ``pyramid=N`` makes N levels (:mod:`bigdenoise.pyramid`).
    ``model`` may be a bioimage.io model (``.zip``, or a folder with ``rdf.yaml``; :mod:`bigdenoise.bioimageio_model`):
    ONNX weights run as they are, TorchScript ones (code) only with ``trust_model=True``.
    Returns a summary of the run.
    """
    # Every user error is raised before the output is created (tests/test_safety.py).
    check_cluster(cluster, workers)
    _check_numbers(batch_size=batch_size, block_voxels=block_voxels, skip_background=skip_background,
                   background_value=background_value)
    given = _models_and_volume(source, model, out, axes=axes, options=options, trust_model=trust_model,
                               channel=channel, series=series, voxel_size=voxel_size)
    volume = given.volume
    region = None if roi is None else parse_roi(roi, volume)  # tiles still planned on the whole volume
    if volume.path is None:
        cluster = cluster_for_memory(cluster, volume.source)  # threads beside it, or refused (bigdenoise.backing)
    resolve_dtype(dtype, volume.dtype)  # an unknown --dtype is refused before anything is written
    block, plan = _block_and_tiles(given, chunks=chunks, block_voxels=block_voxels, tile=tile, overlap=overlap,
                                   halo=halo, inexact=inexact)
    channels = 1 if volume.layout is None else len(volume.layout.channels)
    cluster = resolve_auto(cluster, count_blocks(volume.shape if region is None else region.shape, block) * channels,
                           workers)
    dev = _device(device, compiled)
    protect = {"input": volume.path, "model": given.model_path}
    as_ome = volume.ome is not None or _ome_zarr_name(out)
    check_request(pyramid, ngff, as_ome)
    dest = destination(out, PREDICTION, protect=protect, overwrite=overwrite, resume=resume)
    record = _run_record(given, block, plan, region, precision=precision, skip_background=skip_background,
                         compiled=compiled, ngff=(ngff or "0.5") if as_ome else None)
    settings = BlockSettings(record["model"], record["model_sha256"], dev, batch_size, precision, 0,
                             skip_background, compiled, given.overrides, imported=given.imported)
    summary = _run(given, plan, block, region, record, settings, dest, protect, log_file=log_file, cluster=cluster,
                   workers=workers, jobs=jobs, chunks=chunks, dtype=dtype, resume=resume,
                   background_value=background_value, ngff=ngff, pyramid=pyramid, block_voxels=block_voxels,
                   progress=progress)
    return {**summary, "output": str(dest.path), "block_shape": block, "tile": plan.tile, "halo": plan.halo}


@dataclass(frozen=True)
class _Given:
    """The model(s) and the volume a prediction runs on."""

    model_path: str  # as given, not resolved: what the output must not overwrite
    models: ChannelModels | None  # one model per channel, or None
    model: Model  # with this prediction's options, ready for the volume (bioimageio_model.for_volume)
    overrides: tuple[tuple[str, Any], ...]  # package.prediction_options
    imported: tuple[tuple[str, Any], ...]  # a bioimage.io model's reload keywords, or ()
    volume: Volume


def _models_and_volume(source: Any, model: str | Path | Model, out: str | Path, *, axes: str | None,
                       options: Mapping[str, Any] | None, trust_model: bool, channel: Any, series: int | None,
                       voxel_size: Any) -> _Given:
    """``predict``'s model (or one model per channel) with its prediction options, and the input
    volume it fits; an InputError for a model not saved on disk."""
    model_path = model.path if isinstance(model, Model) else str(model)
    if model_path is None:
        raise InputError("predict needs a model saved on disk (a model directory); save it first")
    models = None if isinstance(model, Model) else read_channel_models(model_path)  # one model per channel
    if models is not None and channel is None and not isinstance(source, Volume):
        channel = models.channels if all_channels(source, axes, series) else None  # default: every channel
    loaded = model if isinstance(model, Model) else models.first() if models else load_model(
        model_path, trust_model=trust_model)
    overrides = prediction_options(loaded, options)
    loaded = with_options(loaded, overrides)
    volume = _prediction_input(source, axes, loaded, out, channel=channel, series=series, voxel_size=voxel_size)
    loaded, imported = for_volume(loaded, volume)  # a bioimage.io model's statistics of this volume, or ()
    if models is not None:
        models.check_input(volume)
    return _Given(model_path, models, loaded, overrides, imported, volume)


def _block_and_tiles(given: _Given, *, chunks: tuple[int, ...] | None, block_voxels: int,
                     tile: int | tuple[int, ...] | None, overlap: int, halo: int | None,
                     inexact: bool) -> tuple[tuple[int, ...], TilePlan]:
    """The block shape (aligned to the output's chunks) and the tile plan for ``given``'s volume."""
    volume = given.volume
    block = block_shape_for(output_chunks(volume, chunks), volume.shape, block_voxels)
    plan = plan_for(given.model, volume.shape, volume.axes, tile=tile, overlap=overlap, halo=halo, inexact=inexact,
                    block=block, source=volume.source)
    return block, plan


def _device(device: str, compiled: bool) -> str:
    """The torch device ``device`` names; a ConfigError when ``compiled`` needs a compiler it lacks."""
    dev = str(pick_device(device))
    if compiled:
        check_compiler(dev)
    return dev


def _ome_zarr_name(out: str | Path) -> bool:
    """Whether ``out`` names an OME-Zarr image."""
    return str(out).lower().rstrip("/").endswith(".ome.zarr")


def _run_record(given: _Given, block: tuple[int, ...], plan: TilePlan, region: Box | None, *, precision: str,
                skip_background: float | None, compiled: bool, ngff: str | None) -> dict:
    """What the output's attributes record of the run: the model, the input's fingerprint and the
    settings a resumed run must share (``_resumed_blocks``); ``ngff``: an OME-Zarr output's version."""
    volume = given.volume
    model_path = str(Path(given.model_path).resolve())
    digest = given.models.digest if given.models else _digest(Path(model_path))
    record = {"model": model_path, "model_sha256": digest, "source": volume.source,
              "input": fingerprint(volume), "block_shape": list(block), "tile": list(plan.tile),
              "halo": list(plan.halo), "overlap": list(plan.overlap), "precision": precision,
              "skip_background": skip_background, "compiled": compiled, "options": dict(given.overrides)}
    if volume.layout is not None:
        record["channels"] = list(volume.layout.channels)
    if region is not None:
        record["roi"] = roi_text(region)
    if ngff is not None:
        record["ngff"] = ngff
    return record


def _run(given: _Given, plan: TilePlan, block: tuple[int, ...], region: Box | None, record: dict,
         settings: BlockSettings, dest: Destination, protect: Mapping[str, Any], *, log_file: str | Path | None,
         cluster: str, workers: int | None, jobs: JobOptions | None, chunks: tuple[int, ...] | None, dtype: str,
         resume: bool, background_value: float, ngff: str | None, pyramid: bool | int, block_voxels: int,
         progress: bool) -> dict:
    """The accepted run, under its log and Dask client: create the output, denoise every channel
    into it, add the pyramid levels and the preview, and swap it in at ``dest``; the run's summary."""
    volume = given.volume
    with run_log(log_file) as session:
        session.check(protect)
        log.info("predict %s with the model %s into %s (%s): block %s, tile %s, halo %s, %s on %s, cluster %s",
                 volume.source, record["model"], dest.path, "resuming" if resume else "replacing" if dest.replacing
                 else "new", block, plan.tile, plan.halo, settings.precision, settings.device, cluster)
        with dask_client(cluster, workers, device=settings.device, jobs=jobs) as (client, torch_threads):
            shown = volume if region is None else roi_volume(volume, region)  # what the output holds
            spec = create_output(dest.start(), shown, chunks=chunks, dtype=dtype, exist_ok=resume,
                                 attributes=record, fill_value=background_value,
                                 as_ome=_ome_zarr_name(dest.path.name), ngff=ngff or "0.5")
            summary = _run_channels(volume, given.model, plan, block, replace(settings, torch_threads=torch_threads),
                                    spec, client, record, dest, resume, progress, session, given.models, region)
            summary["levels"] = write_levels(spec, client, pyramid, block_voxels=block_voxels, progress=progress)
        finish_output(spec)
        write_preview(dest.work, volume, spec, region)
        dest.commit()
        log.info("wrote %s", dest.path)
    return summary


def _prediction_input(source: Any, axes: str | None, model: Model, out: str | Path, **opening: Any) -> Volume:
    """The volume ``predict`` reads: ``source`` opened with ``axes``, else with the model's axes
    when ``source`` does not say its own; an InputError if they do not fit, a ConfigError for
    channel axes a ``.ome.zarr`` output cannot store."""
    volume = _volume(source, axes, fallback_axes=model.axes, **opening)
    if (volume.layout is not None and str(out).lower().rstrip("/").endswith(".ome.zarr")
            and not ome_order_ok(volume.layout.axes)):
        raise ConfigError(f"{volume.source} has axes {volume.layout.axes}, which OME-Zarr cannot store (it orders "
                          f"t, c, z, y, x): write a plain Zarr output (an --out not ending in .ome.zarr)")
    return volume


def _run_channels(volume: Volume, model: Model, plan, block: tuple[int, ...], settings: BlockSettings, spec,
                  client, record: dict, dest, resume: bool, progress: bool, session,
                  models: ChannelModels | None = None, region: Box | None = None) -> dict:
    """Denoise each chosen channel of ``volume`` (the volume itself without a ``C`` axis) into its
    place in the output, one after the other (with its own model of ``models``); the summaries
    added up."""
    channels = volume.channel_volumes()
    per_channel = len(channels) > 1 and model.output_stats is None and models is None
    total: dict = {}
    for vol in channels:
        out = channel_spec(spec, vol)
        skip = _resumed_blocks(out, record, (region or vol).shape, block, dest) if resume else None
        session.open(dest.work)  # once the run is accepted: inside the output (staged with it when replacing one)
        run = settings if models is None else models.settings_for(settings, vol.layout.channel)
        if per_channel:
            stats = estimate_stats(vol, model.train_config.stats_chunks, model.train_config.seed, model.background)
            run = replace(settings, stats=astuple(stats))
            log.info("channel %d: mean %.4g, std %.4g (its own statistics)", vol.layout.channel, stats.mean,
                     stats.std)
        means = None
        if image_statistic(model) is not None:  # e.g. D-BSN awgn: each image's noise level, before tiling
            means = image_means(vol, plan, block, run, client, progress=progress)
        summary = run_blocks(vol, plan, block, run, out, client, progress=progress, skip=skip, image_means=means,
                             log_path=session.path, region=region)
        for key, value in summary.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            total[key] = total.get(key, 0) + value if numeric else value
    total["voxels_per_s"] = total["voxels"] / max(total["seconds"], 1e-9)
    return total


RESUME_IGNORES = ("model", "source")  # where they are, in the spelling given: content decides


def _resumed_blocks(spec, record: dict, shape: tuple[int, ...], block: tuple[int, ...], dest) -> np.ndarray:
    """Which blocks of the block grid the run being resumed finished; a ConfigError when the input's
    content, the model or the settings differ from that run's."""
    previous = run_record(spec)
    changed = [k for k in record if k not in RESUME_IGNORES and previous.get(k) != record[k]]
    if "input" in changed:
        fields = ", ".join(differences(previous.get("input"), record["input"]))
        raise ConfigError(f"cannot resume {dest.path}: the input {record['source']} is not the data that run "
                          f"started on ({fields} differ); predict into a new --out, or --overwrite to start again")
    if changed:
        raise ConfigError(f"cannot resume {dest.path}: {', '.join(changed)} differ from the run that created it; "
                          f"use the same model and options, or --overwrite to start again")
    grid = tuple(-(-n // b) for n, b in zip(shape, block))
    return np.ones(grid, bool) if previous.get("complete") else load_done(spec, grid)


def _check_numbers(**values: float | None) -> None:
    """A ConfigError naming every option whose value is out of range (None: not given)."""
    bad = []
    for name, value in values.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name in ("batch_size", "block_voxels") and value < 1:
            bad.append(f"{flag} {value} must be at least 1")
        elif not math.isfinite(value):
            bad.append(f"{flag} {value} must be a finite number")
    if bad:
        raise ConfigError("; ".join(bad))


def _digest(model_dir: Path) -> str:
    """SHA-256 over the package files that decide predictions (``channel_models.package_digest``)."""
    return bioimageio_digest(model_dir) if is_bioimageio(model_dir) else package_digest(model_dir)
