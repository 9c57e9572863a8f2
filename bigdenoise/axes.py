"""Axis letters and their roles: the one rule every module uses.

A volume's axes are one of :data:`AXES_ALLOWED`. ``S`` and ``T`` index independent samples (a
stack of images or volumes); ``Z``, ``Y``, ``X`` are spatial. A method may feed the planes of
one axis (its stack axis, ``Z`` or ``T``) to the network as input channels: that axis then has
the role ``"channel"`` and is not one of the spatial axes the network sees.

A stored input may also have a channel axis ``C`` (:func:`stored_axes_ok`): the engine never
sees it. ``volume.open_volume`` fixes it at one chosen channel (and drops a singleton ``T``/``S``
beside it) and a :class:`Layout` records how to restore those axes in the output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

AXES_ALLOWED = ("YX", "ZYX", "SYX", "TYX", "SZYX", "TZYX")
SPATIAL = "ZYX"


def axis_role(axis: str, stack_axis: str | None = None) -> str:
    """``"channel"`` for the stack axis, ``"spatial"`` for Z, Y, X, else ``"sample"``."""
    if axis == stack_axis:
        return "channel"
    return "spatial" if axis in SPATIAL else "sample"


def axis_roles(axes: str, stack_axis: str | None = None) -> tuple[str, ...]:
    """The role of each letter of ``axes`` (:func:`axis_role`)."""
    return tuple(axis_role(a, stack_axis) for a in axes)


def net_axes(axes: str, stack_axis: str | None = None) -> str:
    """The spatial axes the network sees: Z, Y, X of ``axes`` except the stack axis."""
    return "".join(a for a in axes if axis_role(a, stack_axis) == "spatial")


CHANNEL = "C"


def stored_axes_ok(axes: str) -> bool:
    """Whether ``axes`` may be a stored input's axes: one of :data:`AXES_ALLOWED`, or one of them
    with one channel axis ``C`` before the ``YX`` plane (``CYX``, ``CZYX``, ``TCZYX`` as in
    OME-Zarr, ``ZCYX`` as in ImageJ hyperstacks)."""
    if axes in AXES_ALLOWED:
        return True
    rest = axes.replace(CHANNEL, "")
    return axes.count(CHANNEL) == 1 and rest in AXES_ALLOWED and axes.index(CHANNEL) < len(axes) - 2


def squeezed_axes(axes: str, shape: tuple[int, ...], channel: int | None) -> tuple[int | None, ...]:
    """Which stored axes the engine does not see, as one entry per axis of ``axes``: the index it
    is fixed at, or None for an axis kept. With a channel axis, ``C`` is fixed at ``channel`` and
    a singleton ``T``/``S`` is dropped (fixed at 0); without one, nothing is fixed."""
    if CHANNEL not in axes:
        return (None,) * len(axes)
    return tuple(channel if a == CHANNEL else 0 if a in "ST" and n == 1 else None for a, n in zip(axes, shape))


@dataclass(frozen=True)
class Layout:
    """How the axes the engine sees sit in a stored input with a channel axis, and how the
    output restores them.

    ``axes``, ``shape``: the stored input's (e.g. ``"TCZYX"``); ``fixed``: per stored axis, the
    index it is fixed at (the channel of this view, 0 for a squeezed singleton) or None;
    ``channels``: every channel chosen (the output's ``C`` holds them in this order);
    ``scale``, ``units``, ``translation``: physical metadata per stored axis (or None).
    """

    axes: str
    shape: tuple[int, ...]
    fixed: tuple[int | None, ...]
    channels: tuple[int, ...]
    scale: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    translation: tuple[float, ...] | None = None

    @property
    def channel(self) -> int:
        """The input channel of this view."""
        return int(self.fixed[self.axes.index(CHANNEL)])

    def for_channel(self, channel: int) -> "Layout":
        k = self.axes.index(CHANNEL)
        return replace(self, fixed=self.fixed[:k] + (channel,) + self.fixed[k + 1:])

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The output's shape: the input's, with as many channels as were chosen."""
        return tuple(len(self.channels) if a == CHANNEL else n for a, n in zip(self.axes, self.shape))

    @property
    def output_fixed(self) -> tuple[int | None, ...]:
        """Where this view's voxels go in the output: its channel's place among those chosen."""
        return tuple(self.channels.index(f) if a == CHANNEL else f for a, f in zip(self.axes, self.fixed))
