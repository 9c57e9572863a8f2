"""TIFF inputs, read lazily through tifffile's Zarr stores: single files (plain, ImageJ, OME-TIFF)
and sequences of one file per plane (a folder or a glob pattern), whose planes may also be
pictures (PNG, JPEG, ...: :mod:`bigdenoise.images`).

What the file's metadata say about axes and voxel size is returned with the array, so that
``volume.open_volume`` needs no ``--axes`` for an ImageJ or OME-TIFF stack and outputs keep the
voxel size.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .axes import stored_axes_ok
from .errors import InputError
from .images import PICTURE_SUFFIXES, open_picture

log = logging.getLogger(__name__)

SUFFIXES = (".tif", ".tiff")
GLOB_CHARACTERS = "*?["
# tifffile's axis letters -> ours ("I": an image sequence, one independent image per index)
_AXES = {"Z": "Z", "Y": "Y", "X": "X", "T": "T", "I": "S", "C": "C"}
# TIFF metadata's length units (ImageJ's and OME's spellings) as OME-Zarr (UDUNITS-2) names; others are dropped
_UNITS = {"um": "micrometer", "µm": "micrometer", "\u00b5m": "micrometer", "micron": "micrometer",
          "microns": "micrometer", "micrometer": "micrometer", "nm": "nanometer", "nanometer": "nanometer",
          "pm": "picometer", "Å": "angstrom", "A": "angstrom", "angstrom": "angstrom", "mm": "millimeter",
          "millimeter": "millimeter", "cm": "centimeter", "centimeter": "centimeter", "m": "meter", "meter": "meter",
          "in": "inch", "inch": "inch"}
# ImageJ copies a TIFF's print resolution (dots per inch or cm) into its calibration: one dot per unit
# of these is its "not calibrated", not a voxel an inch wide
_PRINT_UNITS = ("inch", "centimeter")


@dataclass(frozen=True)
class TiffData:
    """A lazily read TIFF input: ``array`` (zarr, over tifffile's store), the axes its metadata
    name (None when unknown), per-axis voxel size and unit (None when absent), and ``close``."""

    array: Any
    axes: str | None
    scale: tuple[float, ...] | None
    units: tuple[str | None, ...] | None
    close: Any


def is_sequence(source: str | Path) -> bool:
    """A glob pattern, or a folder of TIFF files or pictures that is not a Zarr store."""
    text = str(source)
    if any(c in text for c in GLOB_CHARACTERS):
        return True
    path = Path(text).expanduser()
    zarr_files = ("zarr.json", ".zarray", ".zgroup")
    return path.is_dir() and not any((path / f).exists() for f in zarr_files) and any(
        p.suffix.lower() in SUFFIXES + PICTURE_SUFFIXES for p in path.iterdir())


def open_tiff(source: str, path: Path, series: int | None = None) -> TiffData:
    """Series ``series`` (default 0, logged as a warning when the file has several), level 0 of
    one TIFF file, with the axes and voxel size its ImageJ or OME metadata give. A series the
    file does not have is an InputError saying how many it has."""
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(str(path)) as tif:
            count = len(tif.series)
            if series is not None and not 0 <= series < count:
                raise InputError(f"{source} has {count} series (0 to {count - 1}): --series {series} is not one "
                                 f"of them")
            if series is None and count > 1:
                log.warning("%s has %d series; using series 0 (%s, shape %s): choose another with --series N",
                            source, count, tif.series[0].axes, tif.series[0].shape)
            chosen = tif.series[series or 0]
            axes = _our_axes(chosen.axes)
            scale, units = _voxel_size(tif, chosen.axes, series or 0) if axes else (None, None)
        store = tifffile.imread(str(path), aszarr=True, series=series or 0, level=0)
        array = zarr.open(store, mode="r")
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{source} could not be read as a TIFF file ({e})") from e
    if axes is not None and len(axes) != array.ndim:
        axes = scale = units = None
    return TiffData(array, axes, scale, units, store.close)


def open_sequence(source: str) -> TiffData:
    """One file per plane (``source`` a folder or a glob pattern; TIFF files, or pictures when
    the folder has no TIFF or the pattern names pictures), naturally sorted; the planes are the
    first axis. A gap in the files' numbering or a plane of another shape is an error naming it."""
    import tifffile
    import zarr

    pattern, pictures = _plane_pattern(source)
    try:
        sequence = (tifffile.FileSequence(_read_picture, pattern) if pictures else tifffile.TiffSequence(pattern))
    except Exception as e:  # noqa: BLE001 - tifffile names what it could not parse
        kind = "picture" if pictures else "TIFF"
        raise InputError(f"{source}: no {kind} plane sequence there ({e})") from None
    files = list(sequence)
    numbers = [re.findall(r"\d+", Path(f).stem) for f in files]
    if all(numbers):  # numbered planes: a gap in the numbering is a missing plane
        present = {int(n[-1]) for n in numbers}
        gaps = [i for i in range(min(present), max(present) + 1) if i not in present]
        if gaps and len(present) == len(files):
            raise InputError(f"{source}: the plane numbering has gaps (planes {gaps[:5]} missing between "
                             f"{Path(files[0]).name} and {Path(files[-1]).name}); add the missing files or "
                             f"remove the rest")
    shapes = {f: (_picture_header if pictures else _tiff_header)(f) for f in files}
    first = shapes[files[0]]
    odd = next((f for f in files if shapes[f] != first), None)
    if odd is not None:
        raise InputError(f"{odd} holds a {shapes[odd][0]} {shapes[odd][1]} plane but {files[0]} a {first[0]} "
                         f"{first[1]} one: every plane of a sequence must match")
    try:
        store = sequence.aszarr()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - the first plane is read to learn the planes' shape
        raise InputError(f"{files[0]} could not be read ({e})") from None
    return TiffData(zarr.open(store, mode="r"), None, None, None, store.close)


def _plane_pattern(source: str) -> tuple[str, bool]:
    """The glob pattern of a sequence's files and whether they are pictures (else TIFF): a
    folder's TIFF files, else its pictures of one format."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return str(path), path.suffix.lower() in PICTURE_SUFFIXES
    suffixes = {p.suffix for p in path.iterdir()}  # one listing: a plane folder may hold many thousand files
    if any(s.lower() in SUFFIXES for s in suffixes):
        return str(path / "*.tif*"), False
    formats = sorted(s for s in suffixes if s.lower() in PICTURE_SUFFIXES)
    if len(formats) > 1:
        raise InputError(f"{source} holds pictures of several formats ({', '.join(formats)}): pass a glob pattern "
                         f"naming the planes, e.g. '{Path(source) / ('*' + formats[0])}'")
    return str(path / f"*{formats[0]}"), True


def _read_picture(name: str, **_: Any) -> Any:
    return open_picture(name, Path(name))[0]


def _tiff_header(name: str) -> tuple[tuple[int, ...], Any]:
    import tifffile

    try:
        with tifffile.TiffFile(name) as tif:
            return tif.series[0].shape, tif.series[0].dtype
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{name} could not be read as a TIFF file ({e})") from None


def _picture_header(name: str) -> tuple[tuple[int, ...], str]:
    from PIL import Image

    try:
        with Image.open(name) as picture:
            return picture.size[::-1], f"mode {picture.mode}"
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{name} could not be read as a picture ({e})") from None


def _our_axes(tiff_axes: str) -> str | None:
    letters = "".join(_AXES.get(a, "?") for a in tiff_axes)
    return letters if stored_axes_ok(letters) else None


def _voxel_size(tif: Any, tiff_axes: str,
                series: int = 0) -> tuple[tuple[float, ...] | None, tuple[str | None, ...] | None]:
    """Voxel size and unit per axis from OME-XML (the ``series``-th image's) or ImageJ metadata
    (1.0 and None where absent)."""
    sizes: dict[str, float] = {}
    unit = None
    if tif.is_ome and tif.ome_metadata:
        every = [el for el in ET.fromstring(tif.ome_metadata).iter() if el.tag.endswith("Pixels")]
        pixels = every[min(series, len(every) - 1)]
        for axis in "XYZ":
            if pixels.get(f"PhysicalSize{axis}") is not None:
                sizes[axis] = float(pixels.get(f"PhysicalSize{axis}"))
        unit = _UNITS.get(pixels.get("PhysicalSizeXUnit", "µm"))
    elif tif.is_imagej and tif.imagej_metadata is not None:
        meta = tif.imagej_metadata
        tags = tif.pages[0].tags
        for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
            if tag in tags:
                num, den = tags[tag].value
                if num:
                    sizes[axis] = den / num
        if "spacing" in meta:
            sizes["Z"] = float(meta["spacing"])
        unit = _UNITS.get(str(meta.get("unit", "")).strip())
        if unit in _PRINT_UNITS and set(sizes.values()) == {1.0}:
            sizes, unit = {}, None
    if not sizes:
        return None, None
    scale = tuple(sizes.get(a, 1.0) for a in tiff_axes)
    units = tuple(unit if a in sizes else None for a in tiff_axes)
    return scale, units
