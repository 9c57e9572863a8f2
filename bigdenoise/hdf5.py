"""HDF5 inputs: one dataset of an HDF5 file (``.h5``, ``.hdf5``, ``.hdf``, ``.he5``), read lazily by
box through h5py.

A dataset is named like a Zarr array inside its store: ``scan.h5/group/data``. A file holding a
single dataset of two or more dimensions may be named alone (``scan.h5``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import InputError

SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
_LISTED = 5


def split_path(path: Path) -> tuple[Path, str] | None:
    """``(file, dataset path inside it)`` when a component of ``path`` is an existing HDF5 file
    (by its suffix), else None. The dataset path is ``""`` when ``path`` is the file itself."""
    parts = path.parts
    for i, part in enumerate(parts):
        if Path(part).suffix.lower() in SUFFIXES and Path(*parts[: i + 1]).is_file():
            return Path(*parts[: i + 1]), "/".join(parts[i + 1:])
    return None


def open_hdf5(source: str, file: Path, inner: str) -> tuple[Any, str, str | None]:
    """The dataset ``inner`` of ``file``, opened read-only, its path in the file and the axes its
    ``axes`` attribute names (None when it has none). With ``inner`` empty, the file's only
    dataset of two or more dimensions.

    Raises
    ------
    InputError
        An unreadable file, no such dataset, or an empty ``inner`` in a file with no or several
        datasets to choose from (the message names some).
    """
    import h5py

    try:
        handle = h5py.File(file, "r")
    except Exception as e:  # noqa: BLE001 - h5py names what it could not parse
        raise InputError(f"{source} could not be read as an HDF5 file ({e})") from None
    node = handle.get(inner) if inner else None
    if not isinstance(node, h5py.Dataset):  # list the images only when one must be chosen or named
        arrays: list[str] = []
        handle.visititems(lambda name, obj: arrays.append(name) if isinstance(obj, h5py.Dataset)
                          and obj.ndim >= 2 else None)
        if inner or len(arrays) != 1:
            handle.close()
            if inner:
                raise InputError(f"{source}: {file.name} has no dataset {inner!r}"
                                 + (f"; its datasets: {_some(arrays)}" if arrays else ""))
            if not arrays:
                raise InputError(f"{source} holds no dataset of two or more dimensions")
            raise InputError(f"{source} holds {len(arrays)} datasets ({_some(arrays)}): name one, e.g. "
                             f"{source.rstrip('/')}/{arrays[0]}")
        inner, node = arrays[0], handle[arrays[0]]
    axes = node.attrs.get("axes")
    if isinstance(axes, bytes):
        axes = axes.decode(errors="replace")
    return node, inner, axes.upper() if isinstance(axes, str) else None


def element_size_um(node: Any, axes: str) -> tuple[float, ...] | None:
    """The voxel size in micrometres along the spatial axes (``ZYX`` letters of ``axes``) that the
    dataset's ``element_size_um`` attribute gives (Fiji's HDF5 plugin, ilastik and light-sheet
    pipelines write it), one value per spatial axis or per axis; None when absent or of another
    length."""
    values = node.attrs.get("element_size_um")
    if values is None:
        return None
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    spatial = [i for i, a in enumerate(axes) if a in "ZYX"]
    if len(values) == len(axes) != len(spatial):
        values = [values[i] for i in spatial]
    return tuple(values) if len(values) == len(spatial) and all(v > 0 for v in values) else None


def _some(names: list[str]) -> str:
    return ", ".join(names[:_LISTED]) + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
