"""Boxes and blocks: the plain geometric values every stage passes around.

All boxes are in voxel coordinates of the full volume (every axis, sample axes included),
half-open: ``offset <= index < offset + shape``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """An axis-aligned, half-open box ``[offset, offset + shape)``."""

    offset: tuple[int, ...]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.offset) != len(self.shape):
            raise ValueError(f"offset {self.offset} and shape {self.shape} differ in length")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(o + s for o, s in zip(self.offset, self.shape))

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + s) for o, s in zip(self.offset, self.shape))

    def is_empty(self) -> bool:
        return any(s <= 0 for s in self.shape)

    def intersect(self, other: Box) -> Box:
        lo = tuple(max(a, b) for a, b in zip(self.offset, other.offset))
        hi = tuple(min(a, b) for a, b in zip(self.stop, other.stop))
        return Box(lo, tuple(max(0, h - l) for l, h in zip(lo, hi)))

    def grow(self, amount: tuple[int, ...]) -> Box:
        """Grow by ``amount[i]`` voxels on both sides of axis ``i``."""
        return Box(
            tuple(o - a for o, a in zip(self.offset, amount)),
            tuple(s + 2 * a for s, a in zip(self.shape, amount)),
        )

    def shift(self, by: tuple[int, ...]) -> Box:
        return Box(tuple(o + b for o, b in zip(self.offset, by)), self.shape)

    def relative_to(self, origin: tuple[int, ...]) -> Box:
        """This box in the coordinates of an array whose first voxel sits at ``origin``."""
        return Box(tuple(o - p for o, p in zip(self.offset, origin)), self.shape)

    @staticmethod
    def from_shape(shape: tuple[int, ...]) -> Box:
        return Box((0,) * len(shape), tuple(shape))


@dataclass(frozen=True)
class Block:
    """One unit of blockwise work: ``write`` is a whole number of output chunks.

    ``index`` is the block's position in the block grid. The voxels a block needs to read
    (write box plus halo, reflected at the volume's edges) are derived by the tiling plan.
    """

    index: tuple[int, ...]
    write: Box
