"""OME-Zarr (NGFF 0.4 / 0.5) metadata: what an input's says about its axes, units and scale, and
what an output's says (one level, the input's axes and scale)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .volume import Volume

_OME_AXIS_LETTERS = {"t": "T", "z": "Z", "y": "Y", "x": "X"}


def parent_ome_metadata(
    source: str, root: Path, inner: str
) -> tuple[str, tuple[float, ...] | None, tuple[str | None, ...]] | None:
    """Axes, scale and units of an array that is a level of an OME-Zarr image group."""
    import zarr
    from zarr.storage import LocalStore

    if not inner:
        return None
    parent, _, name = inner.rpartition("/")
    try:
        group = zarr.open_group(store=LocalStore(root, read_only=True), path=parent, mode="r")
    except Exception:
        return None
    multiscales = read_multiscales(dict(group.attrs))
    if not multiscales:
        return None
    for dataset in multiscales[0].get("datasets", []):
        if dataset.get("path") == name:
            array = group[name]
            axes, units = read_ome_axes(source, multiscales[0], array.shape)
            return axes, read_ome_scale(multiscales[0], dataset, array.ndim), units
    return None


def read_multiscales(attrs: dict) -> list | None:
    if "multiscales" in attrs:  # NGFF 0.4
        return attrs["multiscales"]
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:  # NGFF 0.5
        return ome["multiscales"]
    return None


def read_ome_axes(
    source: str, multiscale: dict, shape: tuple[int, ...]
) -> tuple[str, tuple[str | None, ...]]:
    """Axis letters and units from OME axes metadata (NGFF 0.4/0.5: list of dicts)."""
    names = []
    units = []
    for entry in multiscale.get("axes", []):
        name = entry["name"] if isinstance(entry, dict) else str(entry)
        names.append(name.lower())
        units.append(entry.get("unit") if isinstance(entry, dict) else None)
    if "c" in names:
        k = names.index("c")
        index = "[" + ", ".join([":"] * k + ["k"]) + "]"
        raise InputError(
            f"{source} has a channel axis (axes {''.join(names)}, {shape[k]} channel(s)); "
            "multi-channel images are not supported. Denoise each channel separately, e.g. in "
            f"Python: open_volume(dask.array.from_zarr('<path>/0'){index}, axes=...) for channel k"
        )
    unknown = [n for n in names if n not in _OME_AXIS_LETTERS]
    if unknown:
        raise InputError(f"{source}: unsupported OME axis name(s) {unknown}; supported: t, z, y, x")
    return "".join(_OME_AXIS_LETTERS[n] for n in names), tuple(units)


def read_ome_scale(multiscale: dict, dataset: dict, ndim: int) -> tuple[float, ...] | None:
    """The dataset's scale transformation, times the multiscale-wide one if present."""
    scale = find_scale(dataset.get("coordinateTransformations", []), ndim)
    if scale is None:
        return None
    extra = find_scale(multiscale.get("coordinateTransformations", []), ndim)
    if extra is not None:
        scale = tuple(a * b for a, b in zip(scale, extra))
    return scale


def find_scale(transforms: list, ndim: int) -> tuple[float, ...] | None:
    for t in transforms:
        if t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
            return tuple(float(s) for s in t["scale"])
    return None


def ome_metadata(volume: Volume) -> dict:
    """NGFF 0.5 ``ome`` attributes for a one-level image with the input's axes and scale."""
    names = {"S": "t", "T": "t", "Z": "z", "Y": "y", "X": "x"}
    kinds = {"S": "time", "T": "time", "Z": "space", "Y": "space", "X": "space"}
    axes = []
    for i, a in enumerate(volume.axes):
        entry = {"name": names[a], "type": kinds[a]}
        if volume.units is not None and volume.units[i]:
            entry["unit"] = volume.units[i]
        axes.append(entry)
    scale = list(volume.scale) if volume.scale is not None else [1.0] * volume.ndim
    return {
        "version": "0.5",
        "multiscales": [{
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            "name": "denoised",
        }],
    }
