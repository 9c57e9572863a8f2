"""Axis letters and their roles: the one rule every module uses.

A volume's axes are one of :data:`AXES_ALLOWED`. ``S`` and ``T`` index independent samples (a
stack of images or volumes); ``Z``, ``Y``, ``X`` are spatial. A method may feed the planes of
one axis (its stack axis, ``Z`` or ``T``) to the network as input channels: that axis then has
the role ``"channel"`` and is not one of the spatial axes the network sees.
"""

from __future__ import annotations

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
