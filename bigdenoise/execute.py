"""Blockwise prediction on Dask: one task per output block, submitted in a bounded window.

Each task reads its block plus halo straight from storage, denoises it with a model loaded
once per worker process, and writes its own whole output chunks. The client only generates
block boxes (lazily) and counts results: it never holds voxel data.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .clusters import gpu_for_worker
from .errors import BigDenoiseError
from .geometry import Block, Box
from .logs import FILE_ONLY
from .memory import after_block
from .infer import denoise_block, for_inference, image_sums, model_device
from .normalize import Stats
from .package import Model, load_model, with_options
from .tiling import TilePlan, count_blocks, iter_blocks, read_box
from .volume import Volume
from .writer import OutputSpec, mark_done, to_dtype, write_block

log = logging.getLogger(__name__)


class BlockFailed(BigDenoiseError):
    """One or more blocks failed; the message names the first with its cause, and the run's log
    file (``logs.run_log``) that holds every failed block's traceback."""


@dataclass(frozen=True)
class BlockSettings:
    """How a worker runs the model on a block."""

    model_path: str
    model_digest: str = ""
    device: str = "cpu"
    batch_size: int | None = None  # None: infer.forward_batch_size chooses (CPU 4, GPU sized to its memory)
    precision: str = "fp32"
    torch_threads: int = 0
    skip_background: float | None = None
    compiled: bool = False  # torch.compile the networks on each worker (infer.for_inference)
    options: tuple[tuple[str, Any], ...] = ()  # prediction-time method options (package.prediction_options)
    stats: tuple[float, ...] | None = None  # a channel's own normalisation (Stats fields), replacing the model's
    imported: tuple[tuple[str, Any], ...] = ()  # a bioimage.io model's reload keywords (bioimageio_model.for_volume)


_models: dict[tuple, Model] = {}
_outputs: dict[OutputSpec, object] = {}
_lock = threading.Lock()
_compute_lock = threading.Lock()


def worker_model(settings: BlockSettings) -> Model:
    """The model of ``settings``, loaded once per process (batch norms folded for inference,
    ``infer.for_inference``; the prediction-time ``options`` applied) and kept for later tasks."""
    key = (settings.model_path, settings.model_digest, settings.device, settings.compiled, settings.options,
           settings.imported)
    with _lock:
        if key not in _models:
            if settings.torch_threads > 0:
                torch.set_num_threads(settings.torch_threads)
            model = load_model(settings.model_path, device=gpu_for_worker(settings.device), **dict(settings.imported))
            model = with_options(model, settings.options)
            _models[key] = for_inference(model, compiled=settings.compiled)
        model = _models[key]
    return model if settings.stats is None else replace(model, stats=Stats(*settings.stats))


def _output_array(spec: OutputSpec):
    with _lock:
        if spec not in _outputs:
            _outputs[spec] = spec.open("r+")
        return _outputs[spec]


def process_block(volume: Volume, block: Block, plan: TilePlan, settings: BlockSettings, out: OutputSpec,
                  image_means: np.ndarray | None = None, origin: tuple[int, ...] | None = None) -> dict:
    """Read, denoise and write one block (runs on a worker). Returns a small summary.
    ``image_means``: the whole-image pre-pass means (:func:`image_means`), or None. ``origin``:
    the volume voxel at the output's first voxel (a ROI's offset; None: the output is the volume)."""
    t0 = time.perf_counter()
    model = worker_model(settings)
    rbox = read_box(plan, block.write)
    data = volume.read(rbox)
    t1 = time.perf_counter()
    background = settings.skip_background is not None and bool(
        np.nanmax(data[block.write.relative_to(rbox.offset).slices]) < settings.skip_background)
    timings = {"forward_s": 0.0}
    if not background:
        # One block in compute at a time per process while the other task thread reads the next.
        # CPU: the whole of denoise_block, whose numpy work would otherwise take cores from torch's
        # threads mid-convolution; GPU: only the forward passes, so tiling and blending of one
        # block overlap the device's work on another.
        gpu = model_device(model).type == "cuda"
        with nullcontext() if gpu else _compute_lock:
            y = denoise_block(data, rbox, block.write, plan, model, batch_size=settings.batch_size,
                              precision=settings.precision, compute_lock=_compute_lock if gpu else None,
                              timings=timings, image_means=image_means)
    t2 = time.perf_counter()
    if not background:
        write_block(_output_array(out), block.write.relative_to(origin or (0,) * len(block.write.offset)),
                    to_dtype(y, np.dtype(out.dtype)))
    mark_done(out, block.index)
    after_block(out)  # memory.py: a bounded heap, so the worker's peak does not creep with the blocks
    t3 = time.perf_counter()
    return {"index": block.index, "voxels": block.write.size, "background": background, "read_s": t1 - t0,
            "compute_s": t2 - t1, "write_s": t3 - t2, **timings}


def prepass_block(volume: Volume, block: Block, plan: TilePlan, settings: BlockSettings) -> tuple:
    """One block's share of the whole-image pre-pass (runs on a worker): its offset along the
    sample axes, and the per-image sums and voxel counts of the model's statistic over its
    write box (no halo: the statistic is voxelwise)."""
    model = worker_model(settings)
    sums, counts = image_sums(volume.read(block.write), block.write, model, plan.roles)
    sample = [i for i, r in enumerate(plan.roles) if r == "sample"]
    return tuple(block.write.offset[i] for i in sample), sums, counts


def image_means(volume: Volume, plan: TilePlan, block_shape: tuple[int, ...], settings: BlockSettings, client, *,
                window: int | None = None, progress: bool = True) -> np.ndarray:
    """The first pass of a model with a pre-pass (``methods.Method.prepass``): its statistic's
    mean over every voxel of each image (each position along the sample axes; the whole volume
    when there is none), as an array shaped as the volume's sample axes. One task per block,
    at most ``window`` in flight; the client only adds up per-image sums."""
    from distributed import as_completed

    sample = [i for i, r in enumerate(plan.roles) if r == "sample"]
    lead = tuple(volume.shape[i] for i in sample)
    sums, counts = np.zeros(lead), np.zeros(lead, np.int64)
    if window is None:
        window = max(4, 2 * (sum(client.nthreads().values()) or 1))
    blocks = iter_blocks(volume.shape, block_shape)
    pending = as_completed()

    def submit_next() -> bool:
        block = next(blocks, None)
        if block is not None:
            pending.add(client.submit(prepass_block, volume, block, plan, settings, pure=False, retries=1,
                                      key=f"bigdenoise-prepass-{'-'.join(map(str, block.index))}-{id(plan)}"))
        return block is not None

    for _ in range(window):
        if not submit_next():
            break
    with tqdm(total=count_blocks(volume.shape, block_shape), unit="block", desc="pre-pass", disable=not progress,
              dynamic_ncols=True) as bar:
        for future in pending:
            offset, s, c = future.result()
            future.release()
            where = tuple(slice(o, o + n) for o, n in zip(offset, np.shape(s)))
            sums[where] += s
            counts[where] += c
            bar.update(1)
            submit_next()
    return sums / np.maximum(counts, 1)


def run_blocks(volume: Volume, plan: TilePlan, block_shape: tuple[int, ...], settings: BlockSettings,
               out: OutputSpec, client, *, window: int | None = None, progress: bool = True,
               skip: np.ndarray | None = None, image_means: np.ndarray | None = None,
               log_path: Path | None = None, region: Box | None = None) -> dict:
    """Run every block of the volume (of its box ``region``, a ROI, when given: the block grid
    then covers the region and ``out`` holds only it) on ``client``, at most ``window`` tasks in flight.

    ``skip`` is a boolean array over the block grid of blocks already done (resume). Failed
    blocks (each tried twice) do not stop the others: each is logged with its traceback (to the
    run's log file, ``log_path``, when a ``logs.run_log`` is open), and at the end a BlockFailed
    names the first with its cause. A summary line (blocks done, resumed, failed, voxels/s) is
    logged when the run ends, failed or not.
    The summary's ``read_s``, ``compute_s`` (``forward_s`` of it in forward passes) and
    ``write_s`` are task seconds summed over the blocks. ``image_means``: the pre-pass's
    per-image means (:func:`image_means`) for a model that has one, else None.
    """
    from distributed import as_completed

    region = region or Box.from_shape(volume.shape)
    total = count_blocks(region.shape, block_shape)
    if window is None:
        n_threads = sum(client.nthreads().values()) or 1
        window = max(4, 2 * n_threads)
    blocks = (b for b in iter_blocks(region.shape, block_shape, region.offset) if skip is None or not skip[b.index])
    done = total - (int(skip.sum()) if skip is not None else 0)
    pending = as_completed()
    index_of: dict[str, tuple[int, ...]] = {}

    def submit_next() -> bool:
        block = next(blocks, None)
        if block is None:
            return False
        key = f"bigdenoise-block-{'-'.join(map(str, block.index))}-{id(out)}"
        index_of[key] = block.index
        pending.add(client.submit(process_block, volume, block, plan, settings, out, image_means, region.offset,
                                  key=key, retries=1, pure=False))
        return True

    for _ in range(window):
        if not submit_next():
            break
    failures: list[str] = []
    voxels = background = 0
    t0 = time.perf_counter()
    timing = {"read_s": 0.0, "compute_s": 0.0, "forward_s": 0.0, "write_s": 0.0}
    with tqdm(total=done, unit="block", desc="predict", disable=not progress, dynamic_ncols=True) as bar:
        for future in pending:
            try:
                result = future.result()
                voxels += result["voxels"]
                background += result["background"]
                for k in timing:
                    timing[k] += result[k]
            except Exception as exc:  # noqa: BLE001 - reported with its block below
                index = index_of[future.key]
                failures.append(f"block {index}: {type(exc).__name__}: {exc}")
                log.error("block %s failed: %s: %s", index, type(exc).__name__, exc,
                          exc_info=(type(exc), exc, future.traceback()), extra=FILE_ONLY)
            index_of.pop(future.key, None)
            future.release()
            bar.update(1)
            bar.set_postfix(Mvox_s=f"{voxels / max(time.perf_counter() - t0, 1e-9) / 1e6:.2f}")
            submit_next()
    seconds = time.perf_counter() - t0
    log.info("predict finished: %d blocks done, %d resumed, %d failed, of %d (%d of them background); %d voxels "
             "in %.1f s, %.4g voxels/s", done - len(failures), total - done, len(failures), total, background,
             voxels, seconds, voxels / max(seconds, 1e-9))
    if failures:
        others = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
        where = f"tracebacks in {log_path}" if log_path is not None else "tracebacks in the bigdenoise log"
        raise BlockFailed(
            f"{len(failures)} of {done} blocks failed, {failures[0].splitlines()[0]}{others} ({where}); "
            f"the other blocks were written: fix the cause and rerun with --resume to redo only the failed ones"
        )
    return {"blocks": done, "skipped": total - done, "background_blocks": background, "voxels": voxels,
            "seconds": seconds,
            "voxels_per_s": voxels / max(seconds, 1e-9), **timing}

