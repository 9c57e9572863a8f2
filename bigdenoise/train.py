"""One training loop for every method: budget, device, AMP, Adam, LR on plateau or cosine, validation,
atomic checkpoints, resume, progress, loss history (CSV + PNG)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .config import TrainConfig
from .errors import ConfigError, InputError, OutputError
from .methods import Nets, Stage, get_method
from .normalize import Stats, stats_from_samples
from .package import (
    Model,
    atomic_save_tensors,
    atomic_write_bytes,
    build_nets,
    load_model,
    net_tensors,
    save_model,
)
from .runtime import nets_to_fast_layout, to_fast_layout, tune_allocator
from .background import estimate_background, subtract_background
from .sampling import TRAIN, VALIDATION, make_sampler, patch_count
from .data import PatchBatches
from .volume import Volume, check_finite_sample, sample_chunk_boxes

CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "history.csv"
HISTORY_FIELDS = ("step", "stage", "train_loss", "val_loss", "lr", "elapsed_s", "patches_per_s")


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def estimate_stats(volume: Volume, n_chunks: int, seed: int, background: np.ndarray | None = None) -> Stats:
    """Normalisation statistics from ``n_chunks`` random storage chunks (never a full pass),
    after subtracting ``background`` (a YX pattern) when given."""
    boxes = sample_chunk_boxes(volume, n_chunks, seed)
    return stats_from_samples([subtract_background(volume.read(b), b, background) for b in boxes], seed=seed)


def check_volumes(volumes: Mapping[str, Volume], config: TrainConfig) -> None:
    """Errors a user can cause, raised before any work starts."""
    first = volumes["input"]
    if first.axes != config.axes:
        raise InputError(f"{first.source}: volume axes {first.axes} differ from the config's axes {config.axes}")
    for key, vol in volumes.items():
        if vol.shape != first.shape:
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


class CosineLR:
    """Cosine annealing (Loshchilov & Hutter 2017) of the LR from ``base_lr`` to zero over a
    stage's budget.

    Before every step the LR is set from the fraction of the stage's budget used (steps done /
    step budget, or elapsed / time budget, whichever is further), so the curve fits a step
    budget exactly and follows the clock under a time budget. The fraction comes from the loop
    state, so a resumed run continues the same curve (a budget changed on resume bends it).
    Validation does not steer it; ``state_dict`` is plain JSON like ReduceLROnPlateau's.
    """

    def __init__(self, opt: torch.optim.Optimizer, base_lr: float) -> None:
        self.opt = opt
        self.base_lr = base_lr

    def set_progress(self, fraction: float) -> None:
        lr = self.base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, fraction))))
        for group in self.opt.param_groups:
            group["lr"] = lr

    def step(self, metric: float | None = None) -> None:
        """Called after each validation, like ReduceLROnPlateau; nothing to do."""

    def state_dict(self) -> dict:
        return {"schedule": "cosine", "base_lr": self.base_lr}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr = float(state["base_lr"])


@dataclass
class _State:
    step: int = 0
    stage: int = 0
    stage_step: int = 0
    stage_elapsed: float = 0.0
    elapsed: float = 0.0
    best_val: float = math.inf


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


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Adam state as flat tensors + JSON (checkpoints never pickle)."""
    sd = opt.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"opt.{pid}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _write_history(path: Path, rows: list[dict]) -> None:
    lines = [",".join(HISTORY_FIELDS)]
    for r in rows:
        lines.append(",".join("" if r.get(f) is None else str(r[f]) for f in HISTORY_FIELDS))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (v if k == "stage" else (float(v) if v else None)) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_history(rows: list[dict], path: Path) -> None:
    """Loss curves (train and validation against step) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    steps = [r["step"] for r in rows]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        pts = [(s, r[key]) for s, r in zip(steps, rows) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=label, marker="." if len(pts) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _validate(nets: Nets, stage: Stage, options: object, batches: list[dict[str, torch.Tensor]], device, amp) -> float:
    for net in nets.values():
        net.eval()
    losses = []
    with torch.inference_mode(), amp():
        for batch in batches:
            batch = {k: to_fast_layout(v.to(device, non_blocking=True)) for k, v in batch.items()}
            losses.append(float(stage.loss(nets, batch, options)))
    return float(np.mean(losses))


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

    ``resume=True`` continues from ``out_dir/checkpoint`` with the same configuration.
    """
    method = get_method(config.method)
    needed = method.volumes(config.method_options)
    missing = [k for k in needed if k not in volumes]
    if missing:
        raise ConfigError(f"method {config.method} ({_describe_options(config)}) needs these volumes too: "
                          f"{', '.join(missing)}; pass the second volume with --target (target=...)")
    unused = [k for k in volumes if k not in needed]
    if unused:
        raise ConfigError(f"method {config.method} ({_describe_options(config)}) does not use the {', '.join(unused)} "
                          f"volume; drop --target, or choose a method that trains on pairs (n2n, care, "
                          f"noise2stack --mode copy)")
    check_volumes(volumes, config)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    if resume:
        if not (ckpt_dir / "state.json").is_file():
            raise OutputError(f"cannot resume: {ckpt_dir} has no checkpoint; train without --resume")
        saved = json.loads((ckpt_dir / "state.json").read_text())
        budget = {"steps", "epochs", "max_time"}
        if TrainConfig.model_validate(saved["config"]).model_dump(exclude=budget) != config.model_dump(exclude=budget):
            raise ConfigError(
                f"cannot resume {out_dir}: the configuration differs from the checkpoint's (only --steps, "
                f"--epochs and --max-time may change); train into a new directory instead"
            )
    elif out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputError(f"{out_dir} exists and is not empty; pass --overwrite to replace it or --resume to continue")
        shutil.rmtree(out_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    device = pick_device(config.device)
    options = config.method_options
    stages = method.stages(options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        nets = build_nets(config)
    for net in nets.values():
        net.to(device)
    nets_to_fast_layout(nets, config.spatial_ndim)
    tune_allocator()
    amp_dtype = torch.bfloat16 if device.type == "cuda" and config.amp else None

    def amp():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    volume = volumes["input"]
    background = estimate_background(volume) if config.remove_background else None
    if resume:
        stats = {k: Stats.from_dict(v) for k, v in saved["stats"].items()}
    else:
        own = {"input"} if method.target_normalization == "input" else set(volumes)
        stats = {k: estimate_stats(v, config.stats_chunks, config.seed, background) for k, v in volumes.items()
                 if k in own}
        stats.update({k: stats["input"] for k in volumes if k not in own})
        if method.setup is not None:
            method.setup(nets, options, stats["input"])  # e.g. PN2V: load the noise model, record the stats
    cache_bytes = config.cache_mb * 2**20 // max(1, len(volumes))
    sampler = make_sampler(volume, config.patch_shape, cache_bytes=cache_bytes, active=config.batch_size,
                           stack_axis=config.stack_axis)
    common = dict(batch_size=config.batch_size, seed=config.seed, augment=config.augment, cache_bytes=cache_bytes,
                  stack_axis=config.stack_axis, channel_halo=method.channel_halo(options), background=background)
    n_val = math.ceil(config.val_patches / config.batch_size)
    val_data = PatchBatches(volumes, stats, sampler, method.prepare, options, stream=VALIDATION,
                            n_batches=n_val, **{**common, "augment": False})
    val_batches = list(val_data)
    step_budget, time_budget = _stage_budgets(config, stages, volume)

    state = _State()
    history: list[dict] = []
    if resume:
        state = _State(**saved["state"])
        history = _read_history(out_dir / HISTORY_FILE)
        ckpt = load_file(str(ckpt_dir / "weights.safetensors"))
        for name, net in nets.items():
            net.load_state_dict({k[len(name) + 1:]: v for k, v in ckpt.items() if k.startswith(name + ".")})
    best = load_file(str(ckpt_dir / "best.safetensors")) if (ckpt_dir / "best.safetensors").is_file() else None

    run_start = time.monotonic() - state.elapsed
    for stage_index in range(state.stage, len(stages)):
        stage = stages[stage_index]
        params = [p for name in stage.nets for p in nets[name].parameters()]
        opt = torch.optim.Adam(params, lr=config.lr)
        if (config.schedule or stage.schedule) == "cosine":
            sched = CosineLR(opt, config.lr)
        else:
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=config.lr_patience)
        if resume and stage_index == state.stage and (ckpt_dir / "optimizer.safetensors").is_file():
            _load_optimizer(opt, load_file(str(ckpt_dir / "optimizer.safetensors")), saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
        elif stage_index != state.stage:
            state.stage, state.stage_step, state.stage_elapsed = stage_index, 0, 0.0
            state.best_val, best = math.inf, None  # stages' losses differ: keep the last stage's best
        max_steps, max_secs = step_budget[stage_index], time_budget[stage_index]
        stage_elapsed0, stage_t0 = state.stage_elapsed, time.monotonic()
        train_data = PatchBatches(volumes, stats, sampler, method.prepare, options, stream=TRAIN,
                                  start_batch=state.step, **common)
        loader = torch.utils.data.DataLoader(
            train_data, batch_size=None, num_workers=config.num_workers,
            pin_memory=device.type == "cuda", persistent_workers=False,
        )
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
            batch = {k: to_fast_layout(v.to(device, non_blocking=True)) for k, v in batch.items()}
            with amp():
                loss = stage.loss(nets, batch, options)
            if not torch.isfinite(loss):
                raise ConfigError(f"training diverged at step {state.step} (loss {float(loss)}); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.step += 1
            state.stage_step += 1
            window_losses.append(float(loss.detach()))
            window_patches += config.batch_size
            bar.update(1 if by_steps else max(0, min(int(stage_secs), bar.total) - bar.n))
            last = spent()
            if state.stage_step % config.val_every == 0 or last:
                # patches/s of the training steps (reading and masking included), without the
                # validation and checkpoint writes that follow
                rate = window_patches / max(time.monotonic() - window_t0, 1e-9)
                val = _validate(nets, stage, options, val_batches, device, amp)
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
                if val < state.best_val:
                    state.best_val = val
                    best = {k: v.detach().cpu().clone() for k, v in net_tensors(nets).items()}
                    atomic_save_tensors(best, ckpt_dir / "best.safetensors")
                _checkpoint(ckpt_dir, config, stats, state, nets, opt, sched)
                _write_history(out_dir / HISTORY_FILE, history)
                window_losses, window_t0, window_patches = [], time.monotonic(), 0
            if last:
                break
        bar.close()
        _checkpoint(ckpt_dir, config, stats, state, nets, opt, sched)

    if best is not None:
        for name, net in nets.items():
            net.load_state_dict({k[len(name) + 1:]: v for k, v in best.items() if k.startswith(name + ".")})
    info = {
        "steps": state.step,
        "train_seconds": round(state.elapsed, 1),
        "best_val_loss": state.best_val,
        "device": str(device),
        "data": {k: v.source for k, v in volumes.items()},
        "data_shape": list(volume.shape),
    }
    output_stats = stats["target"] if method.target_normalization == "own" and "target" in stats else None
    save_model(out_dir, config, nets, stats["input"], info, output_stats=output_stats, background=background)
    if history:
        _write_history(out_dir / HISTORY_FILE, history)
        plot_history(history, out_dir / "loss.png")
    return load_model(out_dir)


def _checkpoint(ckpt_dir: Path, config: TrainConfig, stats: Mapping[str, Stats], state: _State, nets: Nets,
                opt: torch.optim.Optimizer, sched) -> None:
    """Write weights, optimizer and loop state; each file is replaced atomically and the state
    file, written last, only names files already complete."""
    atomic_save_tensors(net_tensors(nets), ckpt_dir / "weights.safetensors")
    document = {
        "config": config.model_dump(mode="json"),
        "stats": {k: s.to_dict() for k, s in stats.items()},
        "state": vars(state).copy(),
    }
    tensors, meta = _optimizer_tensors(opt)
    atomic_save_tensors(tensors, ckpt_dir / "optimizer.safetensors")
    document["optimizer"] = meta
    document["scheduler"] = sched.state_dict()
    atomic_write_bytes(ckpt_dir / "state.json", json.dumps(document, indent=1, default=float).encode())
