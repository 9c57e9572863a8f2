"""What a training run records as it goes: the loss history (CSV + PNG) and the cosine LR schedule
whose position is derived from the loop's own counters."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from .files import atomic_write_bytes

HISTORY_FILE = "history.csv"
HISTORY_FIELDS = ("step", "stage", "train_loss", "val_loss", "lr", "elapsed_s", "patches_per_s")


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


def write_history(path: Path, rows: list[dict]) -> None:
    lines = [",".join(HISTORY_FIELDS)]
    for r in rows:
        lines.append(",".join("" if r.get(f) is None else str(r[f]) for f in HISTORY_FIELDS))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_history(path: Path) -> list[dict]:
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
