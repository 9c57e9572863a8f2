"""Small files that must never be torn or trusted blindly: atomic writes, versioned JSON, safetensors."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ._version import __version__
from .errors import BigDenoiseError, ModelError


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
    """Write ``tensors`` as safetensors to ``path``, atomically like :func:`atomic_write_bytes`.

    The file is serialised in memory and written by :func:`atomic_write_bytes`, so a kill leaves
    only our own ``.*.tmp`` names behind (some safetensors versions write through a temporary file
    of their own, ``.tmpXXXXXX``, that a killed run would leave in a user's folder).
    """
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def load_tensors(path: Path, what: str, error: type[BigDenoiseError] = ModelError) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``; ``error`` naming ``what`` it is when the file is
    missing, truncated or not safetensors."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} is missing: the {what} is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{path} is not a readable safetensors file ({exc}): the {what} is corrupt") from None


def read_json_object(path: Path, what: str, error: type[BigDenoiseError] = ModelError) -> dict:
    """The JSON object in ``path``; ``error`` when it is unreadable, not JSON or not an object."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not a readable JSON file ({exc}): the {what} is corrupt") from None
    if not isinstance(document, dict):
        raise error(f"{path} holds a JSON {type(document).__name__}, not an object: it is not a bigdenoise {what}")
    return document


def read_versioned_json(json_path: Path, fmt: str, max_version: int, what: str) -> dict:
    """The JSON document at ``json_path``, checked to be of format ``fmt`` and a version this
    bigdenoise reads; a ModelError otherwise. ``what`` names the kind of file in messages."""
    document = read_json_object(json_path, what)
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


def files_digest(paths) -> str:
    """SHA-256 over ``paths`` in the order given: each file's name, then its bytes."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for part in iter(lambda: f.read(2**20), b""):
                h.update(part)
    return h.hexdigest()


MARKER = ".bigdenoise.json"  # in every output folder bigdenoise writes (``outputs.Destination``)
MARKER_FORMAT = "bigdenoise-output"
IMAGE_KINDS = ("prediction", "Zarr copy")  # the kinds of output that are images, and so inputs too


def written_kind(path: Path) -> str | None:
    """The kind of output (``outputs.Kind.name``) bigdenoise wrote at the folder ``path``, as its
    marker says; None where there is no readable marker of ours."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    return str(marker.get("kind"))
