"""OME-Zarr (NGFF 0.4 / 0.5) metadata: what an input's says about its axes, units, scale and
translation, and what an output's says (its levels with their scale and translation, the input's
axes and units, an OMERO display window)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .volume import Volume

_OME_AXIS_LETTERS = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}


def parent_ome_metadata(
    source: str, root: Path, inner: str
) -> tuple[str, tuple[float, ...] | None, tuple[str | None, ...], tuple[float, ...] | None] | None:
    """Axes, scale, units and translation of an array that is a level of an OME-Zarr image group."""
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
            return (axes, read_ome_scale(multiscales[0], dataset, array.ndim), units,
                    read_ome_translation(multiscales[0], dataset, array.ndim))
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
    unknown = [n for n in names if n not in _OME_AXIS_LETTERS]
    if unknown:
        raise InputError(f"{source}: unsupported OME axis name(s) {unknown}; supported: t, c, z, y, x")
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


def read_ome_translation(multiscale: dict, dataset: dict, ndim: int) -> tuple[float, ...] | None:
    """The dataset's translation (after its scale), plus the multiscale-wide transformations':
    the multiscale scale multiplies the dataset's translation, its translation is added."""
    own = find_scale(dataset.get("coordinateTransformations", []), ndim, "translation")
    outer_scale = find_scale(multiscale.get("coordinateTransformations", []), ndim)
    outer = find_scale(multiscale.get("coordinateTransformations", []), ndim, "translation")
    if own is None and outer is None:
        return None
    own = own or (0.0,) * ndim
    if outer_scale is not None:
        own = tuple(a * b for a, b in zip(own, outer_scale))
    return tuple(a + b for a, b in zip(own, outer or (0.0,) * ndim))


def find_scale(transforms: list, ndim: int, kind: str = "scale") -> tuple[float, ...] | None:
    """The first ``kind`` (``"scale"`` or ``"translation"``) transformation's values."""
    for t in transforms:
        if t.get("type") == kind and len(t.get(kind, [])) == ndim:
            return tuple(float(s) for s in t[kind])
    return None


def ome_order_ok(axes: str) -> bool:
    """Whether ``axes`` are in the order NGFF requires (time, channel, then space: ``TCZYX``)."""
    rank = [{"S": 0, "T": 0, "C": 1, "Z": 2, "Y": 3, "X": 4}[a] for a in axes]
    return rank == sorted(rank)


NGFF_VERSIONS = ("0.4", "0.5")  # 0.4 is stored as Zarr v2, 0.5 as Zarr v3


def ome_metadata(volume: Volume, version: str = "0.5") -> dict:
    """NGFF ``version`` group attributes for a one-level image with the input's axes (all of
    them, ``volume.layout``'s when the input has a channel axis), scale, translation and units."""
    names = {"S": "t", "T": "t", "C": "c", "Z": "z", "Y": "y", "X": "x"}
    kinds = {"S": "time", "T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
    meta = volume.layout or volume
    axes = []
    for i, a in enumerate(meta.axes):
        entry = {"name": names[a], "type": kinds[a]}
        if meta.units is not None and meta.units[i] and a != "C":
            entry["unit"] = meta.units[i]
        axes.append(entry)
    scale = tuple(meta.scale) if meta.scale is not None else (1.0,) * len(meta.axes)
    return image_attributes(axes, [(scale, meta.translation)], version)


def image_attributes(axes: list[dict], levels: list[tuple[tuple[float, ...], tuple[float, ...] | None]],
                     version: str = "0.5", windows: list[dict] | None = None, name: str = "denoised") -> dict:
    """The attributes of an OME-Zarr image group (NGFF ``version``, ``"0.4"`` or ``"0.5"``).

    Parameters
    ----------
    axes : NGFF axis entries (``{"name", "type"[, "unit"]}``), one per array axis.
    levels : per level (arrays ``"0"``, ``"1"``, ...), its scale and translation (None, or all
        zeros: none written) per axis.
    windows : per channel (along ``c``; one without a ``c`` axis), an OMERO display window
        (``start``, ``end``, ``min``, ``max``); None: no ``omero`` block.
    """
    datasets = []
    for k, (scale, translation) in enumerate(levels):
        transforms = [{"type": "scale", "scale": [float(s) for s in scale]}]
        if translation is not None and any(t != 0 for t in translation):
            transforms.append({"type": "translation", "translation": [float(t) for t in translation]})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    multiscale = {"axes": axes, "datasets": datasets, "name": name}
    if len(levels) > 1:
        multiscale["type"] = "mean"
    omero = None
    if windows is not None:
        omero = {"channels": [{"label": f"{name} {i}" if len(windows) > 1 else name, "color": "FFFFFF",
                               "active": True, "coefficient": 1.0, "family": "linear", "inverted": False,
                               "window": window} for i, window in enumerate(windows)],
                 "rdefs": {"model": "greyscale" if len(windows) == 1 else "color"}}
    if version == "0.4":
        attrs = {"multiscales": [{"version": "0.4", **multiscale}]}
        return attrs if omero is None else {**attrs, "omero": omero}
    if version != "0.5":
        raise ValueError(f"NGFF version {version!r}: one of {NGFF_VERSIONS}")
    ome = {"version": "0.5", "multiscales": [multiscale]}
    return {"ome": ome if omero is None else {**ome, "omero": omero}}
