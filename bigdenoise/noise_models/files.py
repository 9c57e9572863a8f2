"""The standalone noise-model directory: write, load and plot (no pickle)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import ConfigError, ModelError
from ..files import atomic_save_tensors, atomic_write_bytes, load_tensors, read_versioned_json
from .base import NoiseModel, _pair
from .kinds import KINDS

FORMAT = "bigdenoise-noise-model"
FORMAT_VERSION = 1
JSON_FILE = "noise_model.json"
TENSORS_FILE = "noise_model.safetensors"
PLOT_FILE = "noise_model.png"


def write_noise_model(model: NoiseModel, directory: str | Path, *, info: dict[str, Any] | None = None,
                      plot: bool = True) -> None:
    """Write ``model`` into the existing ``directory``: ``noise_model.json`` (format, version,
    kind, sizes, ranges, ``info``), ``noise_model.safetensors`` (its buffers) and (``plot=True``)
    ``noise_model.png``, each atomically. Where the directory may go (never over an input,
    replacing only our own outputs) is :func:`bigdenoise.calibration.save_noise_model`'s job."""
    directory = Path(directory)
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "bigdenoise_version": __version__,
                **model.header(), "info": info or {}}
    atomic_save_tensors(model.state_dict(), directory / TENSORS_FILE, metadata={"format": FORMAT, "kind": model.kind})
    atomic_write_bytes(directory / JSON_FILE, json.dumps(document, indent=2).encode())
    if plot:
        plot_noise_model(model, directory / PLOT_FILE)


def load_noise_model(path: str | Path) -> NoiseModel:
    """Load a noise model directory written by :func:`write_noise_model` (no pickle)."""
    path = Path(path)
    json_path, tensors_path = path / JSON_FILE, path / TENSORS_FILE
    if not json_path.is_file():
        raise ConfigError(f"{path} is not a noise model: {JSON_FILE} is missing (make one with `bigdenoise noise-model`)")
    document = read_versioned_json(json_path, FORMAT, FORMAT_VERSION, "noise model")
    kind = document.get("kind")
    if kind not in KINDS:
        raise ModelError(f"{json_path}: unknown noise model kind {kind!r} (known: {', '.join(KINDS)})")
    if not tensors_path.is_file():
        raise ModelError(f"{path}: {TENSORS_FILE} is missing; the noise model is incomplete")
    model = KINDS[kind].from_tensors(load_tensors(tensors_path, "noise model"))
    model.eval()
    return model


def plot_noise_model(model: NoiseModel, path: str | Path, n_signals: int = 5) -> None:
    """PNG of p(x|s) against x for ``n_signals`` signals spread over the model's signal range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s_lo, s_hi = _pair(model.signal_range)
    x_lo, x_hi = _pair(model.x_range)
    if not all(map(math.isfinite, (s_lo, s_hi, x_lo, x_hi))):
        s_lo, s_hi, x_lo, x_hi = -3.0, 3.0, -6.0, 6.0
    signals = np.linspace(s_lo, s_hi, n_signals + 2)[1:-1]
    xs = np.linspace(x_lo, x_hi, 2000)
    with torch.no_grad():
        p = model.log_likelihood(torch.as_tensor(xs, dtype=torch.float32)[None, :],
                                 torch.as_tensor(signals, dtype=torch.float32)[:, None]).exp().numpy()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for s, row in zip(signals, p):
        ax.plot(xs, row, label=f"s = {s:.4g}")
    ax.set_xlabel("noisy value x")
    ax.set_ylabel("p(x | s)")
    ax.set_title(f"{model.kind} noise model")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
