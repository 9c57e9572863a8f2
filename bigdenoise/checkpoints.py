"""Training checkpoints: the loop's state, the networks' and the optimiser's tensors, written so
that a kill at any moment leaves a checkpoint to resume, and read back only for the same
configuration and data (no pickle: safetensors files and JSON)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import TrainConfig
from .errors import ConfigError, OutputError
from .files import atomic_save_tensors, atomic_write_bytes, load_tensors, read_json_object
from .fingerprint import differences
from .methods import Nets
from .normalize import Stats
from .package import net_tensors

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainState:
    """Where the training loop is: steps done (all stages, this stage), seconds spent, best validation."""

    step: int = 0
    stage: int = 0
    stage_step: int = 0
    stage_elapsed: float = 0.0
    elapsed: float = 0.0
    best_val: float = math.inf
    best_step: int = 0


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Adam state as flat tensors + JSON (checkpoints never pickle)."""
    sd = opt.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"opt.{pid}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore ``opt`` from :func:`optimizer_tensors`' tensors and JSON."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def load_nets(nets: Nets, tensors: dict[str, torch.Tensor]) -> None:
    """Load each net's weights from ``tensors`` keyed ``<net name>.<parameter>``."""
    for name, net in nets.items():
        net.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})


def save_checkpoint(ckpt_dir: Path, config: TrainConfig, nets: Nets, stats: dict[str, Stats], state: TrainState,
                    opt: torch.optim.Optimizer, sched, best: dict | None, prints: dict) -> None:
    """Write the loop's state so that a kill at any moment leaves the previous checkpoint or this one.

    The tensor files are named by step and written first; ``state.json``, replaced atomically
    last, names them; then the files no state names any more are removed.
    """
    files = {"weights": f"weights-{state.step}.safetensors", "optimizer": f"optimizer-{state.step}.safetensors"}
    atomic_save_tensors(net_tensors(nets), ckpt_dir / files["weights"])
    tensors, meta = optimizer_tensors(opt)
    atomic_save_tensors(tensors, ckpt_dir / files["optimizer"])
    if best is not None:
        files["best"] = f"best-{state.stage}-{state.best_step}.safetensors"
        if not (ckpt_dir / files["best"]).is_file():
            atomic_save_tensors(best, ckpt_dir / files["best"])
    document = {
        "config": config.model_dump(mode="json"),
        "data": prints,
        "stats": {k: s.to_dict() for k, s in stats.items()},
        "state": vars(state).copy(),
        "files": files,
        "optimizer": meta,
        "scheduler": sched.state_dict(),
    }
    atomic_write_bytes(ckpt_dir / "state.json", json.dumps(document, indent=1, default=float).encode())
    for name in os.listdir(ckpt_dir):
        if name.endswith(".safetensors") and name not in files.values():
            (ckpt_dir / name).unlink(missing_ok=True)


def load_checkpoint(ckpt_dir: Path, config: TrainConfig, prints: dict) -> dict:
    """The checkpoint to resume, with its tensors under ``"tensors"``; a clear error when it is
    missing, corrupt, of another configuration or of other data."""
    state_path = ckpt_dir / "state.json"
    if not state_path.is_file():
        raise OutputError(f"cannot resume: {ckpt_dir} has no checkpoint; train without --resume")
    saved = read_json_object(state_path, "checkpoint", OutputError)
    try:
        budget = {"steps", "epochs", "max_time"}
        same = TrainConfig.model_validate(saved["config"]).model_dump(exclude=budget) == config.model_dump(exclude=budget)
        TrainState(**saved["state"])
        files = saved["files"]
    except (KeyError, TypeError, ValueError) as exc:
        raise OutputError(f"the checkpoint {state_path} is incomplete or corrupt ({exc}); train again with "
                          f"--overwrite") from None
    if not same:
        raise ConfigError(f"cannot resume {ckpt_dir.parent}: the configuration differs from the checkpoint's (only "
                          f"--steps, --epochs and --max-time may change); train into a new directory instead")
    for key, now in prints.items():
        changed = differences(saved.get("data", {}).get(key), now)
        if changed:
            raise ConfigError(f"cannot resume {ckpt_dir.parent}: the {key} volume is not the data the checkpoint was "
                              f"trained on ({', '.join(changed)} differ); train into a new directory instead")
    saved["tensors"] = {k: load_tensors(ckpt_dir / name, "checkpoint", OutputError) for k, name in files.items()}
    return saved
