"""Run files: ``bigdenoise train --config run.yaml`` / ``predict --config run.json``.

A run file is a mapping whose keys are the command's flags (``max-time`` or ``max_time``; the
positional ``input`` too). Its values become the flags' defaults, so they are parsed and
validated exactly as typed flags are (argparse types, then ``config.TrainConfig`` or
``api.predict``), and any flag given on the command line overrides them (``--option`` key by
key). For ``train`` a key may also be a :class:`config.TrainConfig` field that has no flag
(``lr_patience``, ``val_patches``, ``net: {...}``, ``options: {...}``). A model's own
``config.json`` (or its directory) given to ``train --config`` repeats its training: its
recorded ``train_config`` and training data. Unknown keys are a one-line ConfigError.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cli_args import parse_option
from .errors import ConfigError

COMMANDS = ("train", "predict")
EXTRA = "run_config"  # the Namespace attribute holding a train file's TrainConfig fields without a flag
_NOT_KEYS = {"help", "config", "debug", EXTRA}


def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="RUN_FILE",
                   help="read the flags from a YAML or JSON file (keys: the flags' names, e.g. max-time: 5m); flags "
                        "given here override it. train: a model's config.json (or its directory) repeats its training")


def apply_run_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """When ``argv`` runs ``train`` or ``predict`` with ``--config FILE``, make FILE's values the
    defaults of that command's flags in ``parser`` (the ``bigdenoise`` parser); else nothing."""
    command = next((w for w in argv if not w.startswith("-")), None)
    if command not in COMMANDS:
        return
    rest = argv[argv.index(command) + 1:]
    path = next((rest[i + 1] for i, w in enumerate(rest[:-1]) if w == "--config"), None)
    path = path or next((w.split("=", 1)[1] for w in rest if w.startswith("--config=")), None)
    if path is None:
        return
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    values = read_run_file(path, command)
    given = {parse_option(v)[0] for k, v in zip(rest, rest[1:]) if k == "--option" and "=" in v}
    given |= {parse_option(w.split("=", 1)[1])[0] for w in rest if w.startswith("--option=")}
    set_defaults(sub, values, path, command, given)


def read_run_file(path: str | Path, command: str) -> dict[str, Any]:
    """The run file's mapping: YAML (``.yaml``/``.yml``) or JSON; a model package's
    ``config.json`` (or the package's directory) as the ``train`` flags that repeat its training."""
    from .package import CONFIG_FILE, FORMAT

    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"run file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any parse error, named for the user
        raise ConfigError(f"run file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: "
                          f"{' '.join(str(exc).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"run file {path} must hold a mapping of flags to values, not {type(values).__name__}")
    if values.get("format") == FORMAT:
        if command != "train":
            raise ConfigError(f"{path} is a model's config.json: give the model to predict with --model, or the "
                              f"file to `bigdenoise train --config` to repeat its training")
        return model_run(values)
    return values


def model_run(document: dict) -> dict[str, Any]:
    """The ``train`` run-file values that repeat the training recorded in a model's config.json:
    its ``train_config`` (every field) and the volumes it was trained on (``info.data``)."""
    values = {k: v for k, v in document["train_config"].items() if v is not None}
    data = document.get("info", {}).get("data", {})
    for key in ("input", "target", "clean"):
        if data.get(key):
            values[key] = data[key]
    return values


def set_defaults(sub: argparse.ArgumentParser, values: dict[str, Any], path: str | Path, command: str,
                 given_options: set[str] = frozenset()) -> None:
    """Make ``values`` the defaults of ``sub``'s flags (converted and checked as the flags are);
    ``given_options``: ``--option`` keys on the command line, which replace the file's."""
    from .config import TrainConfig

    actions = {a.dest: a for a in sub._actions if a.dest not in _NOT_KEYS}
    extra: dict[str, Any] = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest in actions:
            action = actions[dest]
            action.default = _default(action, value, key, path, given_options)
            action.required = False
            if not action.option_strings:
                action.nargs = "?"  # the positional input may then come from the file
        elif command == "train" and dest in TrainConfig.model_fields:
            extra[dest] = value
        else:
            flags = ", ".join(sorted(k.replace("_", "-") for k in actions if k not in ("version",)))
            raise ConfigError(f"run file {path}: unknown key {key!r} for bigdenoise {command} (the keys are its "
                              f"flags: {flags})")
    sub.set_defaults(**{EXTRA: extra})


def _default(action: argparse.Action, value: Any, key: str, path: str | Path, given_options: set[str]) -> Any:
    """``value`` as the parsed value of ``action``'s flag."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"run file {path}: {key} must be true or false, not {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else value
        items = items if isinstance(items, list) else [items]
        parsed = [_convert(action, _text(v), key, path) for v in items]
        return [p for p in parsed if not (action.dest == "option" and p[0] in given_options)]
    return None if value is None else _convert(action, _text(value), key, path)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _convert(action: argparse.Action, text: str, key: str, path: str | Path) -> Any:
    try:
        value = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise ConfigError(f"run file {path}: {key}: {text!r} is not valid ({exc})") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"run file {path}: {key}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def with_run_config(a: argparse.Namespace, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``train``'s keywords: a run file's TrainConfig fields without a flag, under ``kwargs``
    (from the flags), ``net`` and ``options`` merged key by key (the flags' win)."""
    extra = dict(getattr(a, EXTRA, None) or {})
    for key in ("net", "options"):
        if key in extra and key in kwargs:
            kwargs = {**kwargs, key: {**extra[key], **kwargs[key]}}
    return {**extra, **kwargs}
