"""Model packages: a directory with ``config.json`` and ``weights.safetensors``.

Loading never unpickles anything: the config is JSON, the weights are safetensors, and the
networks are rebuilt from the config by the method's own ``build``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ._version import __version__
from .config import TrainConfig
from .errors import BigDenoiseError, ModelError
from .methods import Method, Nets, get_method
from .normalize import Stats
from .runtime import nets_to_fast_layout

FORMAT = "bigdenoise-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
BACKGROUND_FILE = "background.safetensors"


@dataclass(frozen=True)
class Model:
    """A trained model: its configuration, method, networks (eval mode) and normalisation.

    ``stats`` normalise the input; ``output_stats`` (None: the same) map predictions back to
    intensities. ``background`` is a YX pattern subtracted from the input before
    normalisation (``TrainConfig.remove_background``), or None.
    """

    path: str | None
    train_config: TrainConfig
    method: Method
    nets: Nets
    stats: Stats
    info: dict[str, Any]
    output_stats: Stats | None = None
    background: np.ndarray | None = None

    @property
    def axes(self) -> str:
        return self.train_config.axes

    @property
    def spatial_axes(self) -> str:
        """The spatial axes the network sees (a stack axis is not one of them)."""
        return self.train_config.net_axes

    @property
    def stack_axis(self) -> str | None:
        return self.train_config.stack_axis

    @property
    def out_stats(self) -> Stats:
        """The statistics that map the network's output back to intensities."""
        return self.stats if self.output_stats is None else self.output_stats

    @property
    def options(self) -> Any:
        return self.train_config.method_options

    @property
    def receptive_radius(self) -> int:
        return int(self.method.receptive_radius(self.nets, self.options))

    @property
    def factor(self) -> int:
        return int(self.method.factor(self.nets, self.options))

    @property
    def channel_halo(self) -> int:
        return int(self.method.channel_halo(self.options))


def build_nets(config: TrainConfig) -> Nets:
    method = get_method(config.method)
    return method.build(config.net, config.spatial_ndim, config.method_options)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def net_tensors(nets: Nets) -> dict[str, torch.Tensor]:
    """All parameters and buffers of ``nets``, keyed ``"<net>.<name>"``."""
    return {f"{name}.{k}": v for name, net in nets.items() for k, v in net.state_dict().items()}


def save_model(path: str | Path, config: TrainConfig, nets: Nets, stats: Stats, info: dict[str, Any], *,
               output_stats: Stats | None = None, background: np.ndarray | None = None) -> Path:
    """Write a model package into directory ``path`` (created if needed).

    ``output_stats``: statistics of the training target that map predictions back (written as
    ``output_normalization``; omitted when predictions use the input's). ``background``: the YX
    pattern removed before normalisation, written to ``background.safetensors``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    method = get_method(config.method)
    options = config.method_options
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bigdenoise_version": __version__,
        "method": config.method,
        "axes": config.axes,
        "spatial_axes": config.net_axes,
        "stack_axis": config.stack_axis,
        "receptive_radius": int(method.receptive_radius(nets, options)),
        "factor": int(method.factor(nets, options)),
        "channel_halo": int(method.channel_halo(options)),
        "normalization": stats.to_dict(),
        "train_config": config.model_dump(mode="json"),
        "info": info,
    }
    if output_stats is not None:
        document["output_normalization"] = output_stats.to_dict()
    if background is not None:
        document["background"] = {"file": BACKGROUND_FILE, "shape": list(background.shape)}
        atomic_save_tensors({"background": torch.from_numpy(np.asarray(background, np.float32))},
                            path / BACKGROUND_FILE, metadata={"format": FORMAT})
    atomic_save_tensors(net_tensors(nets), path / WEIGHTS_FILE, metadata={"format": FORMAT})
    atomic_write_bytes(path / CONFIG_FILE, json.dumps(document, indent=2).encode())
    return path


def read_versioned_json(json_path: Path, fmt: str, max_version: int, what: str) -> dict:
    """The JSON document at ``json_path``, checked to be of format ``fmt`` and a version this
    bigdenoise reads; a ModelError otherwise. ``what`` names the kind of file in messages."""
    try:
        document = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{json_path} is not valid JSON ({exc})") from None
    if document.get("format") != fmt:
        raise ModelError(f"{json_path} is not a bigdenoise {what} file (format {document.get('format')!r})")
    version = document.get("format_version")
    if not isinstance(version, int) or version > max_version:
        raise ModelError(
            f"{json_path.parent} uses {what} format version {version!r} (made by bigdenoise "
            f"{document.get('bigdenoise_version', '?')}); this bigdenoise {__version__} reads up to "
            f"version {max_version}: upgrade bigdenoise"
        )
    return document


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """Load a model package; a ModelError says what is missing or incompatible."""
    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        raise ModelError(f"{path} is not a bigdenoise model: {CONFIG_FILE} is missing (train one with `bigdenoise train`)")
    document = read_versioned_json(config_path, FORMAT, FORMAT_VERSION, "model")
    try:
        config = TrainConfig.model_validate(document["train_config"])
        nets = build_nets(config)
    except (KeyError, ValueError, BigDenoiseError) as exc:
        raise ModelError(f"{config_path} describes a model this bigdenoise cannot build: {exc}") from None
    if not weights_path.is_file():
        raise ModelError(f"{path}: {WEIGHTS_FILE} is missing; the package is incomplete")
    tensors = load_file(str(weights_path))
    for name, net in nets.items():
        prefix = f"{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{weights_path} does not match the network in {config_path}: {exc}") from None
        net.to(device).eval()
    nets_to_fast_layout(nets, config.spatial_ndim)
    background = None
    if "background" in document:
        bg_path = path / BACKGROUND_FILE
        if not bg_path.is_file():
            raise ModelError(f"{path}: {BACKGROUND_FILE} is missing; the package is incomplete")
        background = load_file(str(bg_path))["background"].numpy()
        if list(background.shape) != document["background"].get("shape"):
            raise ModelError(f"{bg_path} holds a {background.shape} pattern, {config_path} says "
                             f"{document['background'].get('shape')}")
    out_stats = document.get("output_normalization")
    return Model(
        path=str(path),
        train_config=config,
        method=get_method(config.method),
        nets=nets,
        stats=Stats.from_dict(document["normalization"]),
        info=document.get("info", {}),
        output_stats=None if out_stats is None else Stats.from_dict(out_stats),
        background=background,
    )
