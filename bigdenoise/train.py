"""One training loop for every method: budget, device, AMP, Adam, LR on plateau or cosine, validation,
atomic checkpoints, resume, progress; the loss history and the cosine schedule live in history.py,
the checkpoint files in checkpoints.py."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from tqdm.auto import tqdm

from .checkpoints import CHECKPOINT_DIR, TrainState, load_checkpoint, load_nets, load_optimizer, save_checkpoint
from .config import TrainConfig
from .errors import ConfigError, InputError
from .fingerprint import fingerprint
from .logs import current as current_log
from .history import HISTORY_FILE, CosineLR, plot_history, read_history, write_history
from .methods import Method, Nets, Stage, get_method, method_names
from .normalize import Stats, stats_from_samples
from .outputs import MODEL, destination
from .package import Model, build_nets, load_model, net_tensors, save_model
from .runtime import nets_to_fast_layout, to_fast_layout, tune_allocator
from .background import estimate_background, subtract_background
from .sampling import TRAIN, VALIDATION, foreground_plan, make_sampler, patch_count
from .data import PatchBatches
from .volume import Volume, check_finite_sample, refuse_nonfinite, sample_chunk_boxes

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


ACTIVATION_BYTES = 2 * 12 * 4  # per patch voxel and feature: ~12 live maps in fp32, kept again for the backward


def check_training_memory(config: TrainConfig, device: torch.device) -> None:
    """A ConfigError when one training batch's activations alone would need more memory than the
    device has free (a rough lower bound: a batch this large would be killed by the system)."""
    needed = config.batch_size * math.prod(config.patch_shape) * config.net.features * ACTIVATION_BYTES
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else psutil.virtual_memory().available
    if needed > free:
        raise ConfigError(f"a training batch of {config.batch_size} patches of {config.patch_shape} with "
                          f"{config.net.features} features needs about {needed / 2**30:.1f} GiB, more than the "
                          f"{free / 2**30:.1f} GiB free on {device}; lower --batch-size, --patch or --features")


def estimate_stats(volume: Volume, n_chunks: int, seed: int, background: np.ndarray | None = None) -> Stats:
    """Normalisation statistics from ``n_chunks`` random storage chunks (never a full pass),
    after subtracting ``background`` (a YX pattern) when given."""
    boxes = sample_chunk_boxes(volume, n_chunks, seed)
    samples = [subtract_background(volume.read(b), b, background) for b in boxes]
    refuse_nonfinite(volume.source, samples)
    return stats_from_samples(samples, seed=seed)


def check_volumes(volumes: Mapping[str, Volume], config: TrainConfig, unpaired: tuple[str, ...] = ()) -> None:
    """Errors a user can cause, raised before any work starts. ``unpaired`` volumes
    (``Method.unpaired``) may have any shape, but the input's axes."""
    first = volumes["input"]
    if first.axes != config.axes:
        raise InputError(f"{first.source}: volume axes {first.axes} differ from the config's axes {config.axes}")
    for key, vol in volumes.items():
        if key in unpaired:
            if vol.axes != first.axes:
                raise InputError(f"{vol.source} ({key}) has axes {vol.axes} but {first.source} has {first.axes}; "
                                 f"give the {key} volume the input's axes")
        elif vol.shape != first.shape:
            raise InputError(f"{vol.source} ({key}) has shape {vol.shape} but {first.source} has {first.shape}; paired volumes must match")
        spatial = [n for a, n in zip(vol.axes, vol.shape) if a in config.net_axes]
        if any(n < p for n, p in zip(spatial, config.patch_shape)):
            raise InputError(
                f"{vol.source}: spatial shape {tuple(spatial)} ({config.net_axes}) is smaller than the training "
                f"patch {config.patch_shape}; pass a smaller --patch (multiples of {2**config.net.depth})"
            )
        check_finite_sample(vol)
    stack = config.stack_axis
    if stack is not None and first.shape[first.axes.index(stack)] < 2:
        raise InputError(f"{first.source}: {config.method} needs neighbouring planes along {stack} but the volume "
                         f"has one; choose another --stack-axis or method")


def _describe_options(config: TrainConfig) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.method_options.model_dump().items()) or "default options"


def _stage_budgets(config: TrainConfig, stages: tuple[Stage, ...], volume: Volume) -> tuple[list[int | None], list[float | None]]:
    """Steps and seconds per stage; ``None`` where that budget is not set."""
    steps = config.steps
    if config.epochs is not None:
        epoch_steps = math.ceil(patch_count(volume, config.patch_shape, config.stack_axis) / config.batch_size)
        by_epochs = max(1, math.ceil(config.epochs * epoch_steps))
        steps = by_epochs if steps is None else min(steps, by_epochs)
    if steps is None and config.max_time is None:
        steps = 2000
    total = sum(s.fraction for s in stages)
    step_b = [None if steps is None else max(1, round(steps * s.fraction / total)) for s in stages]
    time_b = [None if config.max_time is None else config.max_time * s.fraction / total for s in stages]
    return step_b, time_b


def _validate(nets: Nets, stage: Stage, options: object, batches: list[dict[str, torch.Tensor]], device, amp) -> float:
    for net in nets.values():
        net.eval()
    losses = []
    with torch.inference_mode(), amp():
        for batch in batches:
            batch = {k: to_fast_layout(v.to(device, non_blocking=True)) for k, v in batch.items()}
            losses.append(float(stage.loss(nets, batch, options)))
    return float(np.mean(losses))


@dataclass(frozen=True)
class _Run:
    """What every stage of one training run shares (built once by :func:`_prepare`)."""

    config: TrainConfig
    method: Method
    options: Any
    nets: Nets
    device: torch.device
    amp_dtype: torch.dtype | None
    volumes: Mapping[str, Volume]
    stats: dict[str, Stats]
    background: np.ndarray | None
    sampler: Any
    batches: dict[str, Any]  # PatchBatches settings shared by training and validation
    val_batches: list[dict[str, torch.Tensor]]
    step_budget: list[int | None]
    time_budget: list[float | None]
    work: Path

    def amp(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def data(self, start_batch: int, stage: Stage) -> PatchBatches:
        return PatchBatches(self.volumes, self.stats, self.sampler, self.method.prepare, self.options, stream=TRAIN,
                            start_batch=start_batch, read=stage.unpaired, **self.batches)


def fit(
    volumes: Mapping[str, Volume],
    out_dir: str | Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Model:
    """Train ``config.method`` on ``volumes`` (keys as the method's ``inputs``) into a model
    package at ``out_dir``; returns the loaded model (best validation weights).

    ``resume=True`` continues from the checkpoint in ``out_dir`` with the same configuration and
    the same data (checked by content). ``overwrite=True`` replaces a model package that
    bigdenoise wrote; the new one is swapped in when training ends (``outputs.destination``).
    """
    method = get_method(config.method)
    _check_method_volumes(method, volumes, config)
    check_volumes(volumes, config, method.unpaired)
    protect = {f"{k} volume": v.path for k, v in volumes.items()}
    protect.update({f"{k} option": v for k, v in config.method_options.model_dump().items()
                    if isinstance(v, str) and Path(v).exists()})  # e.g. PN2V's noise model
    dest = destination(out_dir, MODEL, protect=protect, overwrite=overwrite, resume=resume)
    session = current_log()  # the run's log (api.train opens one): a file the user named is checked here
    if session is not None:
        session.check(protect)
    prints = {k: fingerprint(v) for k, v in volumes.items()}
    saved = load_checkpoint(dest.work / CHECKPOINT_DIR, config, prints) if resume else None
    run = _prepare(volumes, config, method, dest.work, saved)
    work = dest.start()
    if session is not None:
        session.open(work)  # inside the model directory (staged with it when replacing one)
    log.info("train %s on %s into %s (%s) on %s: %s", config.method, ", ".join(f"{k} {v.source}" for k, v in
             volumes.items()), dest.path, "resuming" if saved else "replacing" if dest.replacing else "new",
             run.device, json.dumps(config.model_dump(mode="json"), default=str))
    (work / CHECKPOINT_DIR).mkdir(exist_ok=True)
    state, history, best = TrainState(), [], None
    if saved is not None:
        state = TrainState(**saved["state"])
        log.info("resuming at step %d (stage %d)", state.step, state.stage)
        history = read_history(work / HISTORY_FILE)
        load_nets(run.nets, saved["tensors"]["weights"])
        best = saved["tensors"].get("best")
    run_start = time.monotonic() - state.elapsed
    for stage_index in range(state.stage, len(run.method.stages(run.options))):
        best = _run_stage(run, stage_index, state, history, best, saved, run_start, progress, prints)
    if best is not None:
        load_nets(run.nets, best)
    info = {
        "steps": state.step,
        "train_seconds": round(state.elapsed, 1),
        "best_val_loss": state.best_val,
        "device": str(run.device),
        "data": {k: v.source for k, v in volumes.items()},
        "data_shape": list(volumes["input"].shape),
        "foreground": run.batches["foreground"].to_dict(),
    }
    output_stats = run.stats["target"] if method.target_normalization == "own" and "target" in run.stats else None
    save_model(work, config, run.nets, run.stats["input"], info, output_stats=output_stats,
               background=run.background)
    if history:
        write_history(work / HISTORY_FILE, history)
        plot_history(history, work / "loss.png")
    dest.commit()
    log.info("train finished: %d steps in %.1f s on %s, best validation loss %.6g; model written to %s",
             state.step, state.elapsed, run.device, state.best_val, dest.path)
    return load_model(dest.path)


def _check_method_volumes(method: Method, volumes: Mapping[str, Volume], config: TrainConfig) -> None:
    needed = method.volumes(config.method_options)
    for key in volumes:
        if key not in needed and key not in method.unpaired and key != "target":
            takers = [m for m in method_names() if key in get_method(m).unpaired]
            raise ConfigError(f"method {config.method} does not use a {key} volume (--{key}); drop it, or train "
                              f"with a method that does: {', '.join(takers) or 'none'}")
        if key in method.unpaired and not any(key in s.unpaired for s in method.stages(config.method_options)):
            raise ConfigError(f"method {config.method} ({_describe_options(config)}) trains no stage on the {key} "
                              f"volume (--{key}); drop it, or give the stage that uses it a budget share")
    missing = [k for k in needed if k not in volumes]
    if missing:
        raise ConfigError(f"method {config.method} ({_describe_options(config)}) needs these volumes too: "
                          f"{', '.join(missing)}; pass the second volume with --target (target=...)")
    unused = [k for k in volumes if k not in needed and k not in method.unpaired]
    if unused:
        raise ConfigError(f"method {config.method} ({_describe_options(config)}) does not use the {', '.join(unused)} "
                          f"volume; drop --target, or choose a method that trains on pairs (n2n, care, "
                          f"noise2stack --mode copy)")


def _prepare(volumes: Mapping[str, Volume], config: TrainConfig, method: Method, work: Path,
             saved: dict | None) -> _Run:
    """Build the nets, normalisation, sampler and validation batches of a run (``saved``: the
    checkpoint being resumed, whose statistics are kept)."""
    device = pick_device(config.device)
    check_training_memory(config, device)
    options = config.method_options
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        nets = build_nets(config)
    for net in nets.values():
        net.to(device)
    nets_to_fast_layout(nets, config.spatial_ndim)
    tune_allocator()
    volume = volumes["input"]
    background = estimate_background(volume) if config.remove_background else None
    if saved is not None:
        stats = {k: Stats.from_dict(v) for k, v in saved["stats"].items()}
    else:
        own = {"input"} if method.target_normalization == "input" else set(volumes) - set(method.unpaired)
        stats = {k: estimate_stats(v, config.stats_chunks, config.seed, background) for k, v in volumes.items()
                 if k in own}
        stats.update({k: stats["input"] for k in volumes if k not in own})
        if method.setup is not None:
            method.setup(nets, options, stats["input"])  # e.g. PN2V: load the noise model, record the stats
    cache_bytes = config.cache_mb * 2**20 // max(1, len(volumes))
    sampler = make_sampler(volume, config.patch_shape, cache_bytes=cache_bytes, active=config.batch_size,
                           stack_axis=config.stack_axis)
    unpaired = {k: make_sampler(v, config.patch_shape, cache_bytes=cache_bytes, active=config.batch_size)
                for k, v in volumes.items() if k in method.unpaired}  # own boxes, normalised as the input
    batches = dict(batch_size=config.batch_size, seed=config.seed, augment=config.augment, cache_bytes=cache_bytes,
                   stack_axis=config.stack_axis, channel_halo=method.channel_halo(options), background=background,
                   unpaired=unpaired, foreground=foreground_plan(volume, config.foreground, config.stats_chunks,
                                                                 config.seed, background, method.foreground))
    log.info("foreground-aware sampling %s: %s", "on" if batches["foreground"].on else "off",
             batches["foreground"].reason)
    n_val = math.ceil(config.val_patches / config.batch_size)
    val_data = PatchBatches(volumes, stats, sampler, method.prepare, options, stream=VALIDATION,
                            n_batches=n_val, **{**batches, "augment": False})
    step_budget, time_budget = _stage_budgets(config, method.stages(options), volume)
    amp_dtype = torch.bfloat16 if device.type == "cuda" and config.amp else None
    return _Run(config, method, options, nets, device, amp_dtype, volumes, stats, background, sampler, batches,
                list(val_data), step_budget, time_budget, work)


def _run_stage(run: _Run, stage_index: int, state: TrainState, history: list[dict], best: dict | None,
               saved: dict | None, run_start: float, progress: bool, prints: dict) -> dict | None:
    """Train one stage to its budget, validating and checkpointing every ``val_every`` steps and
    after its last step; returns the best weights so far (a later stage starts its own best).
    A ``keep_best`` stage leaves ``run.nets`` at its best weights for the next stage."""
    config, nets, options = run.config, run.nets, run.options
    stage = run.method.stages(options)[stage_index]
    opt, sched = _optimizer(run, stage, stage_index, state, saved)
    if stage_index != state.stage:
        state.stage, state.stage_step, state.stage_elapsed = stage_index, 0, 0.0
        state.best_val, best = math.inf, None  # stages' losses differ: keep the last stage's best
    max_steps, max_secs = run.step_budget[stage_index], run.time_budget[stage_index]
    stage_elapsed0, stage_t0 = state.stage_elapsed, time.monotonic()
    budget = " or ".join(([] if max_steps is None else [f"{max_steps} steps"]) +
                         ([] if max_secs is None else [f"{max_secs:.1f} s"]))
    log.info("stage %s (%d of %d) starts at step %d: budget %s; trains %s", stage.name, stage_index + 1,
             len(run.method.stages(options)), state.step, budget, ", ".join(stage.nets))
    loader = torch.utils.data.DataLoader(run.data(state.step, stage), batch_size=None, num_workers=config.num_workers,
                                         pin_memory=run.device.type == "cuda", persistent_workers=False)
    by_steps = max_steps is not None
    bar = tqdm(
        total=max_steps if by_steps else int(max_secs),
        initial=state.stage_step if by_steps else int(stage_elapsed0),
        unit="step" if by_steps else "s",
        bar_format=None if by_steps else "{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]",
        desc=f"train {stage.name}", disable=not progress, dynamic_ncols=True,
    )
    for net in nets.values():
        net.train()
    window_losses: list[float] = []
    window_t0, window_patches = time.monotonic(), 0

    def spent() -> bool:
        return (max_steps is not None and state.stage_step >= max_steps) or (
            max_secs is not None and stage_elapsed0 + (time.monotonic() - stage_t0) >= max_secs
        )

    # The budget is checked right after each step, so that the stage's last step is always
    # recorded (history, validation, checkpoint); a resumed stage may have none left.
    for batch in [] if spent() else loader:
        stage_secs = stage_elapsed0 + (time.monotonic() - stage_t0)
        if isinstance(sched, CosineLR):
            sched.set_progress(max(0.0 if max_steps is None else state.stage_step / max_steps,
                                   0.0 if max_secs is None else stage_secs / max_secs))
        window_losses.append(_step(run, stage, opt, batch, state))
        window_patches += config.batch_size
        bar.update(1 if by_steps else max(0, min(int(stage_secs), bar.total) - bar.n))
        last = spent()
        if state.stage_step % config.val_every == 0 or last:
            # patches/s of the training steps (reading and masking included), without the
            # validation and checkpoint writes that follow
            rate = window_patches / max(time.monotonic() - window_t0, 1e-9)
            val = _validate(nets, stage, options, run.val_batches, run.device, run.amp)
            for net in nets.values():
                net.train()
            sched.step(val)
            now = time.monotonic()
            state.elapsed = now - run_start
            state.stage_elapsed = stage_elapsed0 + (now - stage_t0)
            history.append({
                "step": state.step, "stage": stage.name, "train_loss": float(np.mean(window_losses)),
                "val_loss": val, "lr": opt.param_groups[0]["lr"], "elapsed_s": round(state.elapsed, 2),
                "patches_per_s": round(rate, 2),
            })
            bar.set_postfix(loss=f"{np.mean(window_losses):.4g}", val=f"{val:.4g}", patches_s=f"{rate:.0f}",
                            step=state.step)
            log.info("step %d (%s): train loss %.6g, validation loss %.6g, lr %.3g, %.1f patches/s", state.step,
                     stage.name, history[-1]["train_loss"], val, history[-1]["lr"], rate)
            if val < state.best_val:
                state.best_val, state.best_step = val, state.step
                best = {k: v.detach().cpu().clone() for k, v in net_tensors(nets).items()}
            save_checkpoint(run.work / CHECKPOINT_DIR, config, nets, run.stats, state, opt, sched, best, prints)
            write_history(run.work / HISTORY_FILE, history)
            window_losses, window_t0, window_patches = [], time.monotonic(), 0
        if last:
            break
    bar.close()
    save_checkpoint(run.work / CHECKPOINT_DIR, config, nets, run.stats, state, opt, sched, best, prints)
    log.info("stage %s ends at step %d after %.1f s; best validation loss %.6g at step %d", stage.name, state.step,
             state.stage_elapsed, state.best_val, state.best_step)
    if stage.keep_best and best is not None:
        load_nets(nets, best)  # after the checkpoint: a resumed run reaches this line again
    return best


OPTIMIZER_CLASSES = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}


def _optimizer(run: _Run, stage: Stage, stage_index: int, state: TrainState, saved: dict | None):
    """The stage's optimiser (Adam or Adamax, at ``lr`` times the stage's ``lr_scale``) over its
    networks and its LR schedule (cosine or on plateau), restored from the checkpoint ``saved``
    when the run resumes inside this stage."""
    config = run.config
    params = [p for name in stage.nets for p in run.nets[name].parameters()]
    lr = config.lr * stage.lr_scale
    opt = OPTIMIZER_CLASSES[stage.optimizer](params, lr=lr)
    if (config.schedule or stage.schedule) == "cosine":
        sched = CosineLR(opt, lr)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=config.lr_patience)
    if saved is not None and stage_index == state.stage and "optimizer" in saved["tensors"]:
        load_optimizer(opt, saved["tensors"]["optimizer"], saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
    return opt, sched


def _step(run: _Run, stage: Stage, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
          state: TrainState) -> float:
    """One optimiser step on ``batch``; returns its loss, or an error naming the cause when the
    loss is not finite."""
    batch = {k: to_fast_layout(v.to(run.device, non_blocking=True)) for k, v in batch.items()}
    with run.amp():
        loss = stage.loss(run.nets, batch, run.options)
    if not torch.isfinite(loss):
        if not all(bool(torch.isfinite(v).all()) for v in batch.values() if v.is_floating_point()):
            raise InputError(f"a training patch of {run.volumes['input'].source} holds NaN or infinite values at step "
                             f"{state.step}: replace them in the data (e.g. by the background value) and train again")
        raise ConfigError(f"training diverged at step {state.step} (loss {float(loss)}); lower --lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    state.step += 1
    state.stage_step += 1
    return float(loss.detach())
