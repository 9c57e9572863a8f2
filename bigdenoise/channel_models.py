"""One model per channel (``bigdenoise train --per-channel-models``) and predicting with them.

A per-channel model is a directory holding one ordinary model package per input channel and a
small index::

    OUT/channels.json        {"format": "bigdenoise-channel-models", "channels": [0, 1],
                              "models": {"0": "channel-0", "1": "channel-1"}, "axes": "TCZYX"}
    OUT/channel-0/           a model package trained on channel 0 alone (its own statistics)
    OUT/channel-1/           ... on channel 1
    OUT/bigdenoise.log       the training log

``api.predict`` gives each channel of the input to its own model; the output keeps the input's
axes with the channels along ``C`` (as several channels through one model do).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import make_config, with_default_patch
from .channels import volume_voxel_size
from .errors import ConfigError, InputError, ModelError
from .execute import BlockSettings
from .files import atomic_write_bytes, files_digest
from .logs import current as current_log
from .outputs import Kind, destination
from .package import Model, load_model
from .train import fit
from .volume import Volume

log = logging.getLogger(__name__)

INDEX = "channels.json"
FORMAT = "bigdenoise-channel-models"
CHANNEL_MODELS = Kind("per-channel model", (INDEX, "channel-[0-9]*", "bigdenoise.log"))


@dataclass(frozen=True)
class ChannelModels:
    """A per-channel model directory: ``paths[k]`` is the model package of input channel ``k``,
    ``digests[k]`` its :func:`package_digest`; ``axes`` are the stored axes it was trained on."""

    path: str
    channels: tuple[int, ...]
    paths: Mapping[int, str]
    digests: Mapping[int, str]
    axes: str

    @property
    def digest(self) -> str:
        """One SHA-256 over every channel's package."""
        return hashlib.sha256(json.dumps(sorted(self.digests.items())).encode()).hexdigest()

    def first(self) -> Model:
        """The model of the first channel (the method, network and tiling all channels share)."""
        return load_model(self.paths[self.channels[0]])

    def settings_for(self, settings: BlockSettings, channel: int) -> BlockSettings:
        """``settings`` with the model of input ``channel``."""
        return replace(settings, model_path=self.paths[channel], model_digest=self.digests[channel])

    def check_input(self, volume: Volume) -> None:
        """An InputError for an input without a channel axis, or a chosen channel without a model here."""
        if volume.layout is None:
            raise InputError(f"{volume.source} has no channel axis (axes {volume.axes}) but {self.path} holds one "
                             f"model per channel: predict with one of them, e.g. --model "
                             f"{self.paths[self.channels[0]]}")
        missing = [c for c in volume.layout.channels if c not in self.paths]
        if missing:
            raise InputError(f"{self.path} has models for channel(s) {','.join(map(str, self.channels))}, not for "
                             f"channel {missing[0]}: choose among those with --channel, or train a model for it")


def package_digest(model_dir: Path) -> str:
    """SHA-256 over the package files that decide predictions (config and every tensor file)."""
    return files_digest(sorted([model_dir / "config.json", *model_dir.glob("*.safetensors")]))


def read_channel_models(path: str | Path) -> ChannelModels | None:
    """The per-channel model at ``path``, or None when ``path`` is not one (e.g. an ordinary model
    package); a ModelError when its index or a channel's package is broken."""
    root = Path(path)
    index = root / INDEX
    if not index.is_file():
        return None
    try:
        doc = json.loads(index.read_text())
        paths = {int(k): str((root / v).absolute()) for k, v in doc["models"].items()}
        axes = str(doc["axes"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{index} is not a readable per-channel model index ({exc})") from None
    if doc.get("format") != FORMAT or not paths:
        raise ModelError(f"{index} is not a bigdenoise per-channel model index")
    for channel, package in paths.items():
        if not (Path(package) / "config.json").is_file():
            raise ModelError(f"{root}: the model of channel {channel} ({package}) is missing its config.json")
    digests = {c: package_digest(Path(p)) for c, p in paths.items()}
    return ChannelModels(str(root.absolute()), tuple(sorted(paths)), paths, digests, axes)


def train_channels(volume: Volume, out: str | Path, *, method: str, config: Mapping[str, Any], resume: bool,
                   overwrite: bool, progress: bool) -> ChannelModels:
    """Train one model per chosen channel of ``volume`` (``open_volume(channel=...)``), each on
    its channel alone with its own statistics, into a per-channel model at ``out``.

    ``config``: :class:`bigdenoise.config.TrainConfig` fields shared by every channel (a patch not
    given is fitted as for one model, ``config.with_default_patch``). ``resume`` continues
    each channel's checkpoint (a channel not started yet starts); ``overwrite`` replaces a
    per-channel model bigdenoise wrote, swapped in when every channel is trained.
    """
    if volume.layout is None:
        raise InputError(f"{volume.source} has no channel axis (axes {volume.axes}): --per-channel-models needs "
                         f"an input with a C axis; train one model without it")
    dest = destination(out, CHANNEL_MODELS, protect={"input volume": volume.path}, overwrite=overwrite,
                       resume=resume)
    plans = [(vol, with_default_patch(make_config(method=method, axes=vol.axes, **config), vol.shape,
                                      volume_voxel_size(vol)))
             for vol in volume.channel_volumes()]  # every configuration checked before anything is written
    work = dest.start()
    session = current_log()
    if session is not None:
        session.check({"input volume": volume.path})
        session.open(work)
    names = {}
    for vol, cfg in plans:
        channel = vol.layout.channel
        folder = work / f"channel-{channel}"
        log.info("channel %d: training its own model into %s", channel, folder)
        started = (folder / "checkpoint").is_dir()
        fit({"input": vol}, folder, cfg, resume=resume and started,
            overwrite=folder.exists() and not (resume and started), progress=progress)
        names[str(channel)] = folder.name
    document = {"format": FORMAT, "channels": list(volume.layout.channels), "models": names,
                "axes": volume.layout.axes}
    atomic_write_bytes(work / INDEX, json.dumps(document, indent=2).encode())
    dest.commit()
    models = read_channel_models(dest.path)
    assert models is not None
    return models


def check_train_arguments(target: Any, clean: Any) -> None:
    """A ConfigError for training inputs one model per channel does not take."""
    given = [flag for flag, value in (("--target", target), ("--clean", clean)) if value is not None]
    if given:
        raise ConfigError(f"--per-channel-models trains on the input's channels alone; {given[0]} is not supported "
                          f"with it: train each channel's model with its own command")
