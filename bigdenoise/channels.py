"""Choosing the axes and channels of a stored input: which letters its axes have, which of its
channels to denoise, which axes the engine does not see, and the voxel size given for it.

:class:`AxisView` fixes some axes of a stored array at one index (a chosen channel, a squeezed
singleton axis) without reading it; :func:`select_channel` turns an opened input with a ``C``
axis into the volume of one channel (its :class:`axes.Layout` says how outputs restore the
stored axes). ``volume.open_volume`` calls these; nothing here reads voxels.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bigdenoise.axes import AXES_ALLOWED, CHANNEL, Layout, axis_roles, squeezed_axes, stored_axes_ok
from bigdenoise.errors import InputError

if TYPE_CHECKING:
    from bigdenoise.volume import Volume


class AxisView:
    """A lazily indexed view of ``array`` with some axes fixed at one index (a chosen channel,
    a squeezed singleton axis). Indexing with the kept axes' slices reads (or writes) only
    those voxels of ``array``; ``fixed`` has one entry per axis of ``array``: an index or None."""

    def __init__(self, array: Any, fixed: tuple[int | None, ...]) -> None:
        if len(fixed) != array.ndim:
            raise ValueError(f"fixed {fixed} must have one entry per axis of an array of shape {array.shape}")
        self.array = array
        self.fixed = tuple(fixed)
        self.shape = tuple(int(n) for n, f in zip(array.shape, fixed) if f is None)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(int(c) for c, f in zip(self.array.chunks, self.fixed) if f is None)

    def _expand(self, key: Any) -> tuple:
        key = key if isinstance(key, tuple) else (key,)
        kept = iter(tuple(key) + (slice(None),) * (self.ndim - len(key)))
        return tuple(next(kept) if f is None else f for f in self.fixed)

    def __getitem__(self, key: Any) -> Any:
        return self.array[self._expand(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[self._expand(key)] = value

    def __reduce__(self):
        return (AxisView, (self.array, self.fixed))


def parse_numbers(value: Any, flag: str, kind: type) -> tuple:
    """``"0,2"``, ``"2 0.4 0.4"``, a number or a sequence -> a tuple of ``kind``; a one-line
    InputError naming ``flag`` otherwise."""
    items = value.replace(",", " ").split() if isinstance(value, str) else (
        list(value) if isinstance(value, (list, tuple)) else [value])
    try:
        numbers = tuple(kind(v) for v in items)
    except (TypeError, ValueError):
        numbers = ()
    if not numbers or (kind is int and any(isinstance(v, float) and not float(v).is_integer() for v in items)):
        example = "1 or 0,2" if kind is int else "2,0.4,0.4"
        raise InputError(f"{flag} {value!r} is not a list of numbers like {example}")
    if kind is float and any(not math.isfinite(v) or v <= 0 for v in numbers):
        raise InputError(f"{flag} {value!r}: voxel sizes must be positive numbers")
    return numbers


def volume_voxel_size(volume: Volume) -> tuple[float, ...] | None:
    """The voxel size along the spatial axes, or None when unknown."""
    if volume.scale is None:
        return None
    return tuple(s for s, r in zip(volume.scale, axis_roles(volume.axes)) if r == "spatial")


def with_voxel_size(volume: Volume, size: tuple[float, ...]) -> Volume:
    """``volume`` with ``size`` (one value per spatial axis) as the scale of its spatial axes."""
    spatial = [i for i, a in enumerate(volume.axes) if a in "ZYX"]
    if len(size) != len(spatial):
        letters = ",".join(volume.axes[i].lower() for i in spatial)
        raise InputError(f"--voxel-size gives {len(size)} value(s) but {volume.source} has {len(spatial)} spatial "
                         f"axes (axes {volume.axes}): give {letters}")
    scale = list(volume.scale or (1.0,) * volume.ndim)
    for i, v in zip(spatial, size):
        scale[i] = float(v)
    return replace(volume, scale=tuple(scale))


def select_channel(volume: Volume, channels: tuple[int, ...] | None) -> Volume:
    """The volume of the first of ``channels`` of an input with a ``C`` axis (C and a singleton
    T/S dropped, the stored axes kept in ``layout``); ``volume`` itself without a ``C`` axis."""
    axes, source = volume.axes, volume.source
    if CHANNEL not in axes:
        if channels is not None:
            raise InputError(f"{source} has no channel axis (axes {axes}): leave out --channel")
        return volume
    n = volume.shape[axes.index(CHANNEL)]
    if channels is None:
        if n > 1:
            raise InputError(f"{source} has {n} channels (axes {axes}): choose which to denoise with --channel K, "
                             f"or several with --channel 0,{n - 1}")
        channels = (0,)
    bad = [c for c in channels if not 0 <= c < n]
    if bad:
        raise InputError(f"{source}: --channel {bad[0]} does not exist; it has {n} channel(s), 0 to {n - 1}")
    if len(set(channels)) != len(channels):
        raise InputError(f"--channel {','.join(map(str, channels))} names a channel twice; name each once")
    fixed = squeezed_axes(axes, volume.shape, channels[0])
    layout = Layout(axes, volume.shape, fixed, tuple(int(c) for c in channels), volume.scale, volume.units,
                    volume.translation)

    def kept(values):
        return None if values is None else tuple(v for v, f in zip(values, fixed) if f is None)

    return replace(volume, array=AxisView(volume.array, fixed), axes="".join(kept(axes)), chunks=kept(volume.chunks),
                   scale=kept(volume.scale), units=kept(volume.units), translation=kept(volume.translation),
                   layout=layout, opened=())


def all_channels(source: Any, axes: str | None = None, series: int | None = None) -> tuple[int, ...] | None:
    """Every channel of ``source`` (a path or array with a ``C`` axis), or None without one
    (opening it then says why)."""
    from bigdenoise.volume import open_volume

    try:
        probe = open_volume(source, axes, channel=0, series=series)
    except InputError:
        return None
    return tuple(range(probe.layout.shape[probe.layout.axes.index(CHANNEL)]))


def stored_array_axes(array: Any) -> str | None:
    """Axes written by us (``attrs["axes"]``) or from Zarr v3 dimension names."""
    axes = array.attrs.get("axes")
    if isinstance(axes, str):
        return axes.upper()
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(isinstance(n, str) for n in names):
        joined = "".join(names).upper()
        if stored_axes_ok(joined):
            return joined
    return None


def resolve_axes(given: str | None, found: str | None, shape: tuple[int, ...], source: str) -> str:
    """Decide the axes from the user's ``given`` and the metadata's ``found`` letters."""
    ndim = len(shape)
    if given is not None:
        axes = validate_axes(_one_of_a_stack(given, ndim), ndim, source)
        if found is not None and found != axes and not relabels_planes(axes, found):
            raise InputError(
                f"axes {axes!r} disagree with the axes {found!r} in the metadata of {source}: "
                f"leave axes out or pass {found!r}"
            )
        return axes
    if found is not None:
        return validate_axes(found, ndim, source)
    if ndim == 2:
        return "YX"
    raise InputError(
        f"cannot tell the axes of {source} (shape {tuple(shape)}): pass axes, "
        "e.g. --axes ZYX for a volume or --axes SYX for a stack of 2D images"
    )


def _one_of_a_stack(given: str, ndim: int) -> str:
    """``given`` without its leading sample axis (S or T) when the input has one dimension fewer:
    a single image (or volume) named as a stack of them is a stack of one."""
    given = given.upper()
    if len(given) == ndim + 1 and given[0] in "ST" and stored_axes_ok(given[1:]):
        return given[1:]
    return given


PLANES = "STZ"  # the axes whose planes are images: samples, time points, slices


def relabels_planes(given: str, found: str) -> bool:
    """Whether ``given`` axes differ from the metadata's ``found`` only in which of S, T and Z
    name the axes that are not Y, X or C: given axes win there, as OME-Zarr has no axis for a
    stack of independent images (S is stored as ``t``) and ImageJ calls any stack's planes Z."""
    return len(given) == len(found) and all(g == f or (g in PLANES and f in PLANES) for g, f in zip(given, found))


def validate_axes(axes: str, ndim: int, source: str) -> str:
    """``axes`` in upper case if they are supported and have ``ndim`` letters; an InputError otherwise."""
    axes = axes.upper()
    if not stored_axes_ok(axes):
        raise InputError(f"axes {axes!r} for {source} are not supported: use one of {', '.join(AXES_ALLOWED)}, "
                         f"or one of them with a channel axis C before YX (e.g. CZYX, TCZYX)")
    if len(axes) != ndim:
        allowed = [a for a in AXES_ALLOWED if len(a) == ndim]
        hint = f"use one of {', '.join(allowed)}" if allowed else f"use one of {', '.join(AXES_ALLOWED)}"
        raise InputError(f"axes {axes!r} have {len(axes)} letters but {source} has {ndim} dimensions: {hint}")
    return axes
