"""The Python API: train a model on a volume, denoise a volume into Zarr."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .config import make_config
from .errors import ConfigError, InputError
from .clusters import JobOptions, check_cluster, dask_client
from .execute import BlockSettings, image_means, run_blocks
from .fingerprint import differences, fingerprint
from .infer import image_statistic, plan_for
from .package import Model, load_model, prediction_options, with_options
from .runtime import check_compiler
from .tiling import block_shape_for
from .train import fit, pick_device
from .outputs import PREDICTION, destination
from .volume import Volume, open_volume
from .writer import create_output, finish_output, load_done, output_chunks, resolve_dtype, run_record


def _volume(source: Any, axes: str | None) -> Volume:
    return source if isinstance(source, Volume) else open_volume(source, axes)


def train(source: Any, out: str | Path, *, method: str = "n2v", axes: str | None = None, target: Any = None,
          clean: Any = None, resume: bool = False, overwrite: bool = False, progress: bool = True, **config: Any) -> Model:
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
    config : any :class:`bigdenoise.config.TrainConfig` field (``steps``, ``max_time``,
        ``patch``, ``batch_size``, ``net={"depth": 2, ...}``, ``options={...}``, ``seed`` ...).
    """
    volume = _volume(source, axes)
    cfg = make_config(method=method, axes=volume.axes, **config)
    volumes = {"input": volume}
    if target is not None:
        volumes["target"] = _volume(target, volume.axes)
    if clean is not None:
        volumes["clean"] = _volume(clean, volume.axes)
    return fit(volumes, out, cfg, resume=resume, overwrite=overwrite, progress=progress)


def predict(source: Any, model: str | Path | Model, out: str | Path, *, axes: str | None = None,
            cluster: str = "local", workers: int | None = None, chunks: tuple[int, ...] | None = None,
            dtype: str = "float32", overwrite: bool = False, resume: bool = False,
            tile: int | tuple[int, ...] | None = None, overlap: int = 0, halo: int | None = None,
            inexact: bool = False, batch_size: int | None = None, precision: str = "fp32", device: str = "auto",
            skip_background: float | None = None, background_value: float = 0.0,
            block_voxels: int = 4 * 2**20, jobs: JobOptions | None = None, compiled: bool = False,
            options: Mapping[str, Any] | None = None, progress: bool = True) -> dict:
    """Denoise ``source`` block by block on a Dask cluster into the Zarr array ``out``.

    The output has the input's shape and axes (an OME-Zarr input, or an ``out`` ending in
    ``.ome.zarr``, gives an OME-Zarr image),
    chunked like the input unless ``chunks`` is given. ``resume=True`` continues an
    interrupted run into the same ``out`` (the input must hold the same data, checked by
    content), skipping the blocks it finished. ``overwrite=True`` replaces an earlier
    prediction (only one bigdenoise wrote; the new one is swapped in when complete). With
    ``skip_background=T``, blocks whose input is all below ``T`` are not computed nor written:
    they read as ``background_value``. ``halo`` below the receptive radius needs ``inexact=True``.
    ``jobs`` configures ``cluster="slurm"|"pbs"|"lsf"``.
    ``batch_size`` (tiles per forward pass): None lets the worker choose, 4 on a CPU and as many
    as fit in the free memory of a GPU (``infer.forward_batch_size``). ``compiled=True`` runs the
    networks through ``torch.compile`` on each worker: seconds of compilation per worker process
    and input shape, then faster forward passes (worth it on large volumes).
    ``options`` overrides method options that only act at prediction time (the method's
    ``predict_options``, e.g. PN2V's ``{"prediction": "prior_mean"}``) for this prediction;
    values may be strings (``"prior_mean"``, ``"0.5"``), parsed by the method's options model.
    Returns a summary of the run.
    """
    check_cluster(cluster, workers)
    _check_numbers(batch_size=batch_size, block_voxels=block_voxels, skip_background=skip_background,
                   background_value=background_value)
    model_path = model.path if isinstance(model, Model) else str(model)
    if model_path is None:
        raise InputError("predict needs a model saved on disk (a model directory); save it first")
    loaded = model if isinstance(model, Model) else load_model(model_path)
    overrides = prediction_options(loaded, options)
    loaded = with_options(loaded, overrides)
    try:
        volume = _volume(source, axes)
    except InputError:
        model_axes = None if axes is not None or isinstance(source, Volume) else _axes_like_model(source, loaded)
        if model_axes is None:
            raise
        volume = _volume(source, model_axes)
    if volume.path is None and cluster != "threads":
        cluster = "threads"  # an in-memory array cannot be shipped to worker processes
    resolve_dtype(dtype, volume.dtype)  # an unknown --dtype is refused before anything is written
    block = block_shape_for(output_chunks(volume, chunks), volume.shape, block_voxels)
    plan = plan_for(loaded, volume.shape, volume.axes, tile=tile, overlap=overlap, halo=halo, inexact=inexact,
                    block=block, source=volume.source)
    dev = str(pick_device(device))
    if compiled:
        check_compiler(dev)
    dest = destination(out, PREDICTION, protect={"input": volume.path, "model": model_path}, overwrite=overwrite,
                       resume=resume)
    model_path = str(Path(model_path).resolve())
    record = {"model": model_path, "model_sha256": _digest(Path(model_path)), "source": volume.source,
              "input": fingerprint(volume), "block_shape": list(block), "tile": list(plan.tile),
              "halo": list(plan.halo), "overlap": list(plan.overlap), "precision": precision,
              "skip_background": skip_background, "compiled": compiled, "options": dict(overrides)}
    with dask_client(cluster, workers, device=dev, jobs=jobs) as (client, torch_threads):
        spec = create_output(dest.start(), volume, chunks=chunks, dtype=dtype, exist_ok=resume, attributes=record,
                             fill_value=background_value, as_ome=dest.path.name.lower().endswith(".ome.zarr"))
        skip = _resumed_blocks(spec, record, volume.shape, block, dest) if resume else None
        settings = BlockSettings(model_path, record["model_sha256"], dev, batch_size, precision, torch_threads,
                                 skip_background, compiled, overrides)
        means = None
        if image_statistic(loaded) is not None:  # e.g. D-BSN awgn: each image's noise level, before tiling
            means = image_means(volume, plan, block, settings, client, progress=progress)
        summary = run_blocks(volume, plan, block, settings, spec, client, progress=progress, skip=skip,
                             image_means=means)
    finish_output(spec)
    dest.commit()
    return {**summary, "output": str(dest.path), "block_shape": block, "tile": plan.tile, "halo": plan.halo}


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
    """SHA-256 over the package files that decide predictions (config and every tensor file)."""
    h = hashlib.sha256()
    for path in sorted([model_dir / "config.json", *model_dir.glob("*.safetensors")]):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for part in iter(lambda: f.read(2**20), b""):
                h.update(part)
    return h.hexdigest()


def _axes_like_model(source: Any, model: Model) -> str | None:
    """The model's axes when the source has as many dimensions, else None."""
    import zarr

    try:
        ndim = source.ndim if hasattr(source, "ndim") else zarr.open(str(source), mode="r").ndim
    except Exception:  # noqa: BLE001 - the caller re-raises the volume's own error
        return None
    return model.axes if ndim == len(model.axes) else None
