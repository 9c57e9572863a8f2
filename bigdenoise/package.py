"""Model packages: a directory with ``config.json`` and ``weights.safetensors``.

Loading never unpickles anything: the config is JSON, the weights are safetensors, and the
networks are rebuilt from the config by the method's own ``build``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from ._version import __version__
from .config import TrainConfig
from .errors import BigDenoiseError, ConfigError, ModelError
from .files import atomic_save_tensors, atomic_write_bytes, load_tensors, read_versioned_json
from .methods import Method, Nets, get_method, parse_options
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


PREDICT_TIME = "at prediction time"


def prediction_options(model: Model, options: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """``options`` (values may be strings, as from ``predict --option KEY=VALUE``) checked against
    the model's method: only its ``predict_options`` may be given, each value parsed by the
    method's options model. Returned as sorted ``(key, value)`` pairs (hashable, for
    ``execute.BlockSettings``); a ConfigError names a bad key or value. An option given without
    the ones it implies (``Method.option_implies``) brings them."""
    if not options:
        return ()
    for key, implied in model.method.option_implies.items():
        if key in options:
            options = {**{k: v for k, v in implied.items() if k not in options}, **options}
    parsed = parse_options(model.method, options, base=model.train_config.options,
                           allowed=model.method.predict_options, when=PREDICT_TIME)
    return tuple(sorted(parsed.items()))


def with_options(model: Model, overrides: Mapping[str, Any] | tuple[tuple[str, Any], ...]) -> Model:
    """``model`` predicting with its trained method options updated by ``overrides``
    (:func:`prediction_options`); the networks are shared, ``model`` itself is unchanged."""
    overrides = dict(prediction_options(model, dict(overrides)))  # only prediction-time options, valid values
    if not overrides:
        return model
    config = model.train_config
    try:
        config = TrainConfig.model_validate({**config.model_dump(), "options": {**config.options, **overrides}})
    except ValueError as exc:
        raise ConfigError(f"options {overrides} do not apply to this model: {exc}") from None
    return dataclasses.replace(model, train_config=config)


MEMORY_FRACTION = 0.5  # of the memory available now that one model's parameters may take


def build_nets(config: TrainConfig) -> Nets:
    """The method's networks for ``config``, after checking on PyTorch's meta device (nothing
    allocated) that their parameters fit in this machine's available memory."""
    method = get_method(config.method)
    with torch.device("meta"):
        sizes = method.build(config.net, config.spatial_ndim, config.method_options)
    nbytes = sum(p.numel() * p.element_size() for net in sizes.values() for p in net.parameters())
    available = psutil.virtual_memory().available
    if nbytes > MEMORY_FRACTION * available:
        raise ConfigError(f"the {config.method} networks of this configuration (net {config.net.model_dump()}) need "
                          f"{nbytes / 2**30:.1f} GiB of parameters, more than half of the {available / 2**30:.1f} GiB "
                          f"available; choose fewer --features or a smaller --depth")
    return method.build(config.net, config.spatial_ndim, config.method_options)


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
        # every method option, defaults included: a later release that changes a default (the
        # network sizes are options for some methods) still rebuilds the networks saved here
        "train_config": {**config.model_dump(mode="json"), "options": options.model_dump(mode="json")},
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


def describe_model(path: str | Path) -> dict[str, Any]:
    """What ``bigdenoise info MODEL`` shows: the package's ``config.json`` without its networks
    (no weights are read).

    Returns
    -------
    dict
        Keys ``path, method, options, axes, bigdenoise_version, steps, train_seconds, device,
        best_val_loss, data, data_shape, normalization, foreground`` (None where the package
        does not say).
    """
    document = read_versioned_json(Path(path) / CONFIG_FILE, FORMAT, FORMAT_VERSION, "model")
    info, config = document.get("info", {}), document.get("train_config", {})
    return {"path": str(path), "method": document.get("method"), "options": config.get("options"),
            "axes": document.get("axes"), "bigdenoise_version": document.get("bigdenoise_version"),
            **{k: info.get(k) for k in ("steps", "train_seconds", "device", "best_val_loss", "data", "data_shape",
                                        "foreground")},
            "normalization": document.get("normalization")}


def format_model_description(d: dict[str, Any]) -> str:
    """Render :func:`describe_model`'s dict as an aligned text block."""
    norm, fg = d["normalization"] or {}, d["foreground"] or {}
    rows = [("model", d["path"]), ("method", d["method"]),
            ("options", ", ".join(f"{k}={v}" for k, v in (d["options"] or {}).items()) or "defaults"),
            ("axes", d["axes"]),
            ("trained", f"{d['steps']} steps, {d['train_seconds']} s on {d['device']}, best validation loss "
                        f"{d['best_val_loss']:.4g}" if d["best_val_loss"] is not None else "unknown"),
            ("on", ", ".join(f"{k} {v}" for k, v in (d["data"] or {}).items())
             + (f" (shape {' x '.join(map(str, d['data_shape']))})" if d["data_shape"] else "")),
            ("normalised", f"mean {norm['mean']:.6g}, std {norm['std']:.6g}" if norm else "unknown"),
            ("foreground", f"{'on' if fg.get('on') else 'off'}: {fg.get('reason', '')}" if fg else "unknown"),
            ("bigdenoise", d["bigdenoise_version"])]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def load_model(path: str | Path, device: str | torch.device = "cpu", **imported: Any) -> Model:
    """Load a model package; a ModelError says what is missing or incompatible. A bioimage.io
    model (a ``.zip``, or a folder with ``rdf.yaml``) is imported by ``bioimageio_model.load_bioimageio``
    with the keywords ``imported`` (``trust_model``...), which a bigdenoise package ignores."""
    from .bioimageio_model import is_bioimageio, load_bioimageio  # a function-level import: no cycle

    if is_bioimageio(path):
        return load_bioimageio(path, device, **imported)
    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        if (path / "channels.json").is_file():  # channel_models.INDEX
            raise ModelError(f"{path} holds one model per channel: `bigdenoise predict --model {path}` uses them all; "
                             f"load one channel's model from {path}/channel-K")
        raise ModelError(f"{path} is not a bigdenoise model: {CONFIG_FILE} is missing (train one with `bigdenoise train`)")
    document = read_versioned_json(config_path, FORMAT, FORMAT_VERSION, "model")
    try:
        config = TrainConfig.model_validate(document["train_config"])
        stats = Stats.from_dict(document["normalization"])
        out_stats = document.get("output_normalization")
        out_stats = None if out_stats is None else Stats.from_dict(out_stats)
        background_shape = document["background"]["shape"] if "background" in document else None
        nets = build_nets(config)
    except (KeyError, TypeError, ValueError, BigDenoiseError) as exc:
        raise ModelError(f"{config_path} describes a model this bigdenoise cannot build: "
                         f"{type(exc).__name__}: {exc}") from None
    tensors = load_tensors(weights_path, "model package")
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
    if background_shape is not None:
        bg_path = path / BACKGROUND_FILE
        background = load_tensors(bg_path, "model package").get("background")
        if background is None or list(background.shape) != background_shape:
            raise ModelError(f"{bg_path} does not hold the {background_shape} background pattern {config_path} "
                             f"names; the package is corrupt")
        background = background.numpy()
    return Model(
        path=str(path),
        train_config=config,
        method=get_method(config.method),
        nets=nets,
        stats=stats,
        info=document.get("info", {}),
        output_stats=out_stats,
        background=background,
    )
