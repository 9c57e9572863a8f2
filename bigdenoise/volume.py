"""Lazy access to input volumes: Zarr (v2/v3), OME-Zarr, TIFF, HDF5, ``.npy`` and picture files,
numpy and dask arrays.

A :class:`Volume` wraps a lazily indexable array together with its axes (one of
:data:`AXES_ALLOWED`), storage chunking and physical metadata. Nothing is read until
:meth:`Volume.read` is called, and only the requested box is read. Which axis letters an input
has and which of its channels the engine sees are decided in :mod:`bigdenoise.channels`.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bigdenoise.axes import Layout, axis_roles, net_axes
from bigdenoise.backing import zarr_path
from bigdenoise.channels import (AxisView, parse_numbers, resolve_axes, select_channel, stored_array_axes,
                                 volume_voxel_size, with_voxel_size)
from bigdenoise.errors import InputError
from bigdenoise.files import IMAGE_KINDS, written_kind
from bigdenoise.geometry import Box
from bigdenoise.hdf5 import element_size_um, open_hdf5, split_path as split_hdf5_path
from bigdenoise.images import NPY_SUFFIX, PICTURE_SUFFIXES, open_npy, open_picture
from bigdenoise.tiff import SUFFIXES as TIFF_SUFFIXES, TiffData, is_sequence, open_sequence, open_tiff
from bigdenoise.ome import (parent_ome_metadata, read_multiscales, read_ome_axes, read_ome_scale,
                            read_ome_translation)


_DEFAULT_CHUNK = {"S": 1, "T": 1, "C": 1, "Z": 64, "Y": 256, "X": 256}
_MAX_SAMPLE_EDGE = 512  # voxels per axis read from one chunk when sampling values


@dataclass(frozen=True)
class Volume:
    """A lazily read volume with named axes.

    Attributes
    ----------
    array
        Lazily indexable array of shape ``shape``: ``zarr.Array`` (also over tifffile's
        store), ``dask.array.Array`` or ``np.ndarray``.
    axes
        Axis letters, one of :data:`AXES_ALLOWED`, e.g. ``"ZYX"``; ``len(axes) == array.ndim``.
    source
        The input as the user gave it (for messages), or ``"<numpy array>"``/``"<dask array>"``.
    chunks
        Storage chunk shape, one entry per axis (the unit of efficient reads).
    scale, units
        Per-axis physical voxel size and unit (from OME-Zarr, OME-TIFF or ImageJ metadata), or None.
    ome
        The OME-Zarr group attributes as found (``{"multiscales": ...}`` for NGFF 0.4,
        ``{"ome": {...}}`` for NGFF 0.5), to copy to outputs; None for plain arrays.
    path
        Absolute, reopenable location (None for in-memory arrays).
    translation
        Per-axis physical offset of the first voxel (OME-Zarr ``translation``), or None.
    layout
        For a stored input with a channel axis: which channel this is, the axes the engine does
        not see (``C``, a singleton ``T``) and how the output restores them; None otherwise.
        ``array`` is then a :class:`channels.AxisView` of the stored array.
    opened
        The ``open_volume`` keywords that reopen this volume from ``path`` (pickling).
    """

    array: Any
    axes: str
    source: str
    chunks: tuple[int, ...]
    scale: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    ome: dict | None = None
    path: str | None = None
    translation: tuple[float, ...] | None = None
    layout: Layout | None = None
    opened: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if len(self.axes) != self.array.ndim or len(self.chunks) != self.array.ndim:
            raise ValueError(
                f"axes {self.axes!r} and chunks {self.chunks} must have one entry per axis "
                f"of the array of shape {self.shape}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spatial_axes(self) -> str:
        """The spatial axis letters, e.g. ``"ZYX"`` or ``"YX"``."""
        return net_axes(self.axes)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(s for r, s in zip(axis_roles(self.axes), self.shape) if r == "spatial")

    @property
    def sample_axes(self) -> str:
        """The sample axis letter (``"S"`` or ``"T"``), or ``""``."""
        return "".join(a for a, r in zip(self.axes, axis_roles(self.axes)) if r == "sample")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def read(self, box: Box) -> np.ndarray:
        """Read the voxels of ``box`` (in full-volume coordinates, all axes).

        Returns
        -------
        np.ndarray
            A new array of shape ``box.shape`` and dtype ``self.dtype``.

        Raises
        ------
        ValueError
            If the box does not lie inside the volume.
        InputError
            If the storage cannot be read there (a truncated or corrupt file or chunk).
        """
        if box.ndim != self.ndim or any(o < 0 for o in box.offset) or any(
            e > s for e, s in zip(box.stop, self.shape)
        ):
            raise ValueError(f"box {box} does not lie inside {self.source} of shape {self.shape}")
        try:
            part = self.array[box.slices]
        except Exception as exc:  # noqa: BLE001 - storage errors of any library, named for the user
            raise InputError(f"{self.source}: reading voxels {box.offset}..{box.stop} failed ({type(exc).__name__}: "
                             f"{exc}); the file may be truncated or corrupt") from None
        if isinstance(part, np.ndarray):
            base = self.array.array if isinstance(self.array, AxisView) else self.array
            return part.copy() if isinstance(base, np.ndarray) else part
        if hasattr(part, "compute"):
            # Synchronous: reads may run inside Dask worker tasks, where nested pools are unwanted.
            return np.asarray(part.compute(scheduler="synchronous"))
        return np.asarray(part)

    def chunk_grid(self) -> tuple[int, ...]:
        """Number of storage chunks along each axis."""
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunks))

    def chunk_box(self, index: tuple[int, ...]) -> Box:
        """The box of the storage chunk at grid position ``index``, clipped to the volume."""
        if len(index) != self.ndim or any(not 0 <= i < n for i, n in zip(index, self.chunk_grid())):
            raise ValueError(f"chunk index {index} outside the chunk grid {self.chunk_grid()}")
        offset = tuple(i * c for i, c in zip(index, self.chunks))
        shape = tuple(min(c, s - o) for c, s, o in zip(self.chunks, self.shape, offset))
        return Box(offset, shape)

    def channel_volumes(self) -> list[Volume]:
        """One volume per chosen channel (``open_volume(channel=...)``), in the order chosen;
        ``[self]`` for an input without a channel axis."""
        if self.layout is None:
            return [self]
        return [replace(self, array=AxisView(self.array.array, lay.fixed), layout=lay)
                for lay in (self.layout.for_channel(c) for c in self.layout.channels)]

    def __reduce__(self):
        # Path-backed volumes are reopened where they are unpickled (tifffile stores do not pickle).
        if self.path is not None:
            channel = None if self.layout is None else self.layout.channel
            return (_reopen, (self.path, self.opened or (("axes", self.axes),), channel))
        return (
            Volume,
            (self.array, self.axes, self.source, self.chunks, self.scale, self.units, self.ome, self.path,
             self.translation, self.layout, self.opened),
        )


def _reopen(path: str, opened: tuple[tuple[str, Any], ...], channel: int | None) -> Volume:
    volume = open_volume(path, **dict(opened))
    return volume if channel is None else next(v for v in volume.channel_volumes() if v.layout.channel == channel)


# --------------------------------------------------------------------------- opening


def open_volume(source: Any, axes: str | None = None, *, channel: int | str | Sequence[int] | None = None,
                series: int | None = None, voxel_size: str | Sequence[float] | None = None,
                fallback_axes: str | None = None) -> Volume:
    """Open a volume lazily from a path (Zarr, OME-Zarr, TIFF, HDF5, ...) or wrap a numpy/dask array.

    Parameters
    ----------
    source
        Path (str or Path) to a Zarr array (``vol.zarr`` or ``store.zarr/group/array``), an
        OME-Zarr image group (level 0 is used), a TIFF file (``series``), a dataset of an HDF5
        file (``scan.h5/group/data``, or ``scan.h5`` when it holds one), a ``.npy`` file
        (memory-mapped), a picture (PNG, JPEG, ...: :mod:`bigdenoise.images`), or a sequence of TIFF
        planes: a folder of them or a glob pattern (``planes/*.tif``; natural order, the planes
        are the first axis); or a numpy, dask or open zarr array (a ``da.from_zarr`` array opens
        as its Zarr path, ``backing.zarr_path``; other arrays stay in this process).
    axes
        Axis letters, one of :data:`AXES_ALLOWED` (case-insensitive), or one of them with a
        channel axis ``C`` (``CZYX``, ``TCZYX``, ...; :func:`axes.stored_axes_ok`). Optional when
        the input says its axes (OME-Zarr, ImageJ or OME-TIFF metadata, ``attrs["axes"]``) or is 2D.
    channel
        For an input with a ``C`` axis: the channel(s) to denoise, an int, a sequence or
        ``"0,2"``; required when there is more than one channel. The volume returned is the
        first chosen channel, with ``C`` (and a singleton ``T``/``S``) dropped from its axes;
        :meth:`Volume.channel_volumes` gives one volume per chosen channel and ``layout`` says
        how an output restores the input's axes.
    series
        Which series of a multi-series TIFF file (default 0, with a warning naming the count).
    voxel_size
        Physical voxel size along the spatial axes (``z,y,x`` or ``y,x``), for inputs whose
        metadata give none (it replaces what they give); written to every output.
    fallback_axes
        Axes to take when ``axes`` is None and the input neither says its own nor is 2D (a
        model's axes, for an input with as many dimensions); the input's own error otherwise.

    Raises
    ------
    InputError
        If the input is missing, unreadable or unsupported, or its axes are unknown or wrong.
    """
    if series is not None and not (isinstance(source, (str, Path)) and not is_sequence(source)
                                   and Path(source).suffix.lower() in TIFF_SUFFIXES):
        raise InputError(f"{_name(source)}: --series chooses an image of a multi-series TIFF file; "
                         "this input is not one: leave --series out")
    try:
        volume = _open_stored(source, axes, series)
    except InputError as exc:
        if axes is not None or fallback_axes is None:
            raise
        try:
            volume = _open_stored(source, fallback_axes, series)
        except InputError:
            raise exc from None
    if voxel_size is not None:
        volume = with_voxel_size(volume, parse_numbers(voxel_size, "--voxel-size", float))
    volume = select_channel(volume, None if channel is None else parse_numbers(channel, "--channel", int))
    opened = (("axes", volume.layout.axes if volume.layout else volume.axes),
              ("channel", None if volume.layout is None or channel is None else volume.layout.channels),
              ("series", series), ("voxel_size", None if voxel_size is None else volume_voxel_size(volume)))
    return replace(volume, opened=opened)


def _name(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>"


def _open_stored(source: Any, axes: str | None, series: int | None) -> Volume:
    """The input as stored, all its axes (a ``C`` axis too)."""
    if isinstance(source, np.ndarray):
        return _wrap_array(source, "<numpy array>", axes)
    if _is_dask_array(source):
        stored = zarr_path(source)  # a da.from_zarr array: reopened by path where it is read
        return _wrap_array(source, "<dask array>", axes) if stored is None else _open_zarr(stored, Path(stored), axes)
    if _is_zarr_array(source):
        axes = resolve_axes(axes, stored_array_axes(source), source.shape, "<zarr array>")
        _check_array(source, "<zarr array>")
        return Volume(source, axes, "<zarr array>", tuple(source.chunks))
    if not isinstance(source, (str, Path)):
        raise InputError(
            f"cannot open {type(source).__name__!r}: pass a path to a Zarr/OME-Zarr/TIFF input, "
            "a numpy array or a dask array"
        )
    path = Path(source).expanduser().absolute()
    written = written_kind(path)  # None for a file or a folder without our marker
    if written is not None and written not in IMAGE_KINDS:
        raise InputError(f"{source} is a bigdenoise {written}, not an image: give an image here "
                         f"(a model goes to --model)")
    if is_sequence(source):
        return _from_tiff(str(source), open_sequence(str(path)), axes, str(path))
    hdf5 = split_hdf5_path(path)
    if hdf5 is not None:
        return _from_hdf5(str(source), *hdf5, axes)
    if not path.exists():
        raise InputError(f"{source} does not exist: check the path")
    suffix = path.suffix.lower()
    if path.is_file() and suffix in TIFF_SUFFIXES:
        return _from_tiff(str(source), open_tiff(str(source), path, series), axes, str(path))
    if path.is_file() and suffix == NPY_SUFFIX:
        return _wrap_array(open_npy(str(source), path), str(source), axes, None, str(path))
    if path.is_file() and suffix in PICTURE_SUFFIXES:
        array, found = open_picture(str(source), path)
        return _wrap_array(array, str(source), axes, found, str(path))
    return _open_zarr(str(source), path, axes)


def _is_dask_array(obj: Any) -> bool:
    dask_array = sys.modules.get("dask.array")  # a dask array exists only once dask.array is imported (0.5 s)
    return dask_array is not None and isinstance(obj, dask_array.Array)


def _is_zarr_array(obj: Any) -> bool:
    import zarr

    return isinstance(obj, zarr.Array)


def _wrap_array(array: Any, source: str, axes: str | None, found: str | None = None,
                path: str | None = None, chunks: tuple[int, ...] | None = None) -> Volume:
    """A numpy or dask array, or an array of a file: ``.npy``, picture or HDF5 dataset (``found``:
    the axes it implies; ``path``: where it is reopened from when unpickled; ``chunks``: its
    storage chunks, if any)."""
    axes = resolve_axes(axes, found, array.shape, source)
    _check_array(array, source)
    if source == "<dask array>":
        chunks = tuple(int(c[0]) for c in array.chunks)
    elif chunks is None:
        chunks = default_chunks(array.shape, axes)
    return Volume(array, axes, source, tuple(chunks), path=path)


def _from_hdf5(source: str, file: Path, inner: str, axes: str | None) -> Volume:
    node, inner, found = open_hdf5(source, file, inner)
    volume = _wrap_array(node, source, axes, found, str(file / inner), node.chunks)
    size = element_size_um(node, volume.axes)
    if size is None:
        return volume
    units = tuple("micrometer" if a in "ZYX" else None for a in volume.axes)
    return replace(with_voxel_size(volume, size), units=units)


def _from_tiff(source: str, data: TiffData, axes: str | None, path: str) -> Volume:
    weakref.finalize(data.array, data.close)  # close the files once the array is garbage
    found = data.axes
    if axes is not None and found is not None and axes.upper() != found:
        found = None  # ImageJ calls the planes of any stack "slices" (Z): given axes win over a TIFF's
    axes = resolve_axes(axes, found, data.array.shape, source)
    _check_array(data.array, source)
    scale, units, _ = _named_alike(axes, data.axes, data.scale, data.units, None)
    return Volume(data.array, axes, source, tuple(data.array.chunks), scale, units, path=path)


def _named_alike(axes: str, found: str | None, scale: tuple | None, units: tuple | None,
                 translation: tuple | None) -> tuple[tuple | None, tuple | None, tuple | None]:
    """The metadata's ``scale``, ``units`` and ``translation`` (per axis of ``found``) kept for the
    axes that ``axes`` names alike, the neutral value (1, no unit, 0) for the others, all None
    when no axis is named alike; unchanged when the axes are the metadata's."""
    if found is None or axes == found:
        return scale, units, translation
    same = [len(axes) == len(found) and a == b for a, b in zip(axes, found)]
    if not any(same):
        return None, None, None

    def kept(values, neutral):
        return None if values is None else tuple(v if k else neutral for v, k in zip(values, same))

    return kept(scale, 1.0), kept(units, None), kept(translation, 0.0)


def split_store_path(path: Path) -> tuple[Path, str]:
    """Split a path into the Zarr store root and the node path inside the store.

    The store root is the path up to and including the first component ending in ``.zarr``;
    without such a component the whole path is the store root.
    """
    parts = path.parts
    for i, part in enumerate(parts):
        if part.lower().endswith(".zarr"):
            return Path(*parts[: i + 1]), "/".join(parts[i + 1 :])
    return path, ""


def _open_zarr(source: str, path: Path, axes: str | None) -> Volume:
    import zarr
    from zarr.storage import LocalStore

    root, inner = split_store_path(path)
    try:
        node = zarr.open(store=LocalStore(root, read_only=True), path=inner, mode="r")
    except Exception as e:
        raise InputError(
            f"{source} is not a Zarr array, OME-Zarr image, TIFF, HDF5, .npy or picture file ({e}); "
            "pass the path of a Zarr array (e.g. data.zarr or data.zarr/group/array), a .tif, .h5, .npy or .png file"
        ) from e
    if isinstance(node, zarr.Group):
        return _open_ome_group(source, node, path, axes)
    meta = parent_ome_metadata(source, root, inner)
    given = stored_array_axes(node)
    scale = _attr_floats(node, "scale", node.ndim)
    units = _attr_units(node)
    translation = _attr_floats(node, "translation", node.ndim)
    if meta is not None:
        given, scale, units, translation = meta
    axes = resolve_axes(axes, given, node.shape, source)
    _check_array(node, source)
    scale, units, translation = _named_alike(axes, given, scale, units, translation)
    return Volume(node, axes, source, tuple(node.chunks), scale, units, path=str(path), translation=translation)


def _open_ome_group(source: str, group: Any, path: Path, axes: str | None) -> Volume:
    attrs = dict(group.attrs)
    multiscales = read_multiscales(attrs)
    if multiscales is None:
        raise InputError(_not_ome_message(source, group))
    multiscale = multiscales[0]
    datasets = multiscale.get("datasets") or []
    if not datasets:
        raise InputError(f"{source}: the OME-Zarr multiscales metadata lists no datasets")
    level0 = datasets[0]["path"]
    try:
        array = group[level0]
    except KeyError as e:
        raise InputError(f"{source}: OME-Zarr level {level0!r} is missing from the group") from e
    ome_axes, units = read_ome_axes(source, multiscale, array.shape)
    scale = read_ome_scale(multiscale, datasets[0], array.ndim)
    translation = read_ome_translation(multiscale, datasets[0], array.ndim)
    axes = resolve_axes(axes, ome_axes, array.shape, source)
    _check_array(array, source)
    scale, units, translation = _named_alike(axes, ome_axes, scale, units, translation)
    return Volume(array, axes, source, tuple(array.chunks), scale, units, attrs, str(path), translation)


def _not_ome_message(source: str, group: Any) -> str:
    import zarr

    arrays = [name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]
    if not arrays:
        return f"{source} is a Zarr group without arrays or OME-Zarr metadata: nothing to open"
    listing = "\n".join(f"  {source.rstrip('/')}/{name}  shape {group[name].shape}" for name in arrays[:20])
    more = f"\n  ... and {len(arrays) - 20} more" if len(arrays) > 20 else ""
    return (
        f"{source} is a Zarr group but not an OME-Zarr image; pass one of its arrays instead:\n"
        f"{listing}{more}"
    )


def _attr_floats(array: Any, key: str, ndim: int) -> tuple[float, ...] | None:
    value = array.attrs.get(key)
    if isinstance(value, list) and len(value) == ndim:
        return tuple(float(v) for v in value)
    return None


def _attr_units(array: Any) -> tuple[str | None, ...] | None:
    value = array.attrs.get("units")
    if isinstance(value, list) and len(value) == array.ndim:
        return tuple(value)
    return None


# --------------------------------------------------------------------------- checks


def _check_array(array: Any, source: str) -> None:
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(
            f"{source} has data type {dtype}, which is not supported: use integer or floating point data"
        )
    if any(int(s) == 0 for s in array.shape):
        raise InputError(f"{source} has an axis of length 0 (shape {tuple(array.shape)}): it holds no data")


def default_chunks(shape: tuple[int, ...], axes: str) -> tuple[int, ...]:
    """Chunking used when none is given: 64 along Z, 256 along Y/X, 1 along S/T, clipped to ``shape``."""
    return tuple(min(int(s), _DEFAULT_CHUNK[a]) for s, a in zip(shape, axes))


def sample_chunk_boxes(volume: Volume, n_chunks: int, seed: int = 0) -> list[Box]:
    """Boxes of up to ``n_chunks`` distinct random storage chunks, for sampling values.

    Each box lies inside one chunk and is at most 512 voxels along any axis, so sampling
    never reads much even from badly chunked inputs.
    """
    rng = np.random.default_rng(seed)
    grid = volume.chunk_grid()
    total = math.prod(grid)
    if total <= n_chunks:
        indices = [tuple(int(i) for i in np.unravel_index(k, grid)) for k in range(total)]
    else:
        chosen: set[tuple[int, ...]] = set()
        while len(chosen) < n_chunks:
            chosen.add(tuple(int(rng.integers(n)) for n in grid))
        indices = sorted(chosen)
    return [_cap_box(volume.chunk_box(i), rng) for i in indices]


def _cap_box(box: Box, rng: np.random.Generator) -> Box:
    shape = tuple(min(s, _MAX_SAMPLE_EDGE) for s in box.shape)
    offset = tuple(o + int(rng.integers(s - c + 1)) for o, s, c in zip(box.offset, box.shape, shape))
    return Box(offset, shape)


def check_finite_sample(volume: Volume, rng_seed: int = 0, n_chunks: int = 8) -> None:
    """Raise InputError if any value in up to ``n_chunks`` random chunks is NaN or infinite
    (:func:`refuse_nonfinite`). Integer data is always finite and is not read."""
    if np.issubdtype(volume.dtype, np.floating):
        refuse_nonfinite(volume.source, [volume.read(b) for b in sample_chunk_boxes(volume, n_chunks, rng_seed)])


def refuse_nonfinite(source: str, samples: list[np.ndarray]) -> None:
    """Raise InputError naming the fraction of NaN/inf values in ``samples`` of ``source``, if any."""
    total = sum(s.size for s in samples)
    bad = total - sum(int(np.count_nonzero(np.isfinite(s))) for s in samples)
    if bad:
        which = "only NaN/inf" if bad == total else f"NaN/inf values ({bad / total:.2%} of {total:,} sampled voxels)"
        raise InputError(f"{source} contains {which}: a denoiser cannot learn from them; replace them in "
                         f"the data (e.g. by the background value) before training")
