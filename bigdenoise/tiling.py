"""Pure geometry of blockwise inference: blocks, tiles, halos and blend windows.

Every axis of the volume has one of three roles:

* ``"sample"`` (S, T): independent images; tiles are one voxel thick, no halo.
* ``"spatial"`` (Z, Y, X seen by the network): tiles of ``tile`` voxels anchored to the volume
  origin, read with a ``halo`` of context on both sides and blended over ``overlap`` voxels.
  Tile origins, halos and overlaps are multiples of the network's down-sampling ``factor`` so
  every tile sees the same pooling grid as a whole-volume pass would.
* ``"channel"`` (a stack axis fed to the network as input channels, e.g. Z for Noise2Stack):
  tiles one plane thick with ``halo`` neighbouring planes on both sides; the network itself
  reduces the neighbourhood to the one output plane.

The reference a tiled prediction reproduces is one network pass over the whole volume, padded
at its far end along each spatial axis to a multiple of ``factor`` (the *padded extent*), with
the network's own (zero) padding at the volume's edges. A tile's input box therefore never
reaches outside ``[0, padded extent)``: where the halo would cross a volume edge, the box is
shifted inwards instead (it keeps its shape, so tiles still batch), and the network sees the
edge exactly as the whole-volume pass does. No voxel is computed for a mirrored margin, which
matters in 3D, where the halo is a large part of a tile, and for volumes thinner than a tile.
The alignment padding ``[n, padded extent)`` mirrors the volume (numpy's ``reflect`` mode),
computed from the volume's own edge, so the value a tile sees never depends on which block it
belongs to. Along a channel axis, planes outside the volume follow Noise2Stack's end-plane rule
(``reflect_indices`` mode ``"stack"``): an absent neighbour is a copy of the existing plane
nearest to it other than the target plane itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .geometry import Block, Box

ROLES = ("sample", "spatial", "channel")


@dataclass(frozen=True)
class TilePlan:
    """How a volume is cut into tiles; one entry per volume axis.

    Attributes
    ----------
    shape : volume shape.
    roles : role of each axis (see module docstring).
    tile : core tile size per axis (1 for sample and channel axes).
    halo : context read on each side (0 for sample axes).
    overlap : blend overlap on each side of a core (0 for sample and channel axes).
    factor : the network's down-sampling factor; spatial axes are padded at their far end to a
        multiple of it (:attr:`padded_shape`).
    """

    shape: tuple[int, ...]
    roles: tuple[str, ...]
    tile: tuple[int, ...]
    halo: tuple[int, ...]
    overlap: tuple[int, ...]
    factor: int = 1

    def __post_init__(self) -> None:
        n = len(self.shape)
        for name in ("roles", "tile", "halo", "overlap"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"TilePlan.{name} has {len(getattr(self, name))} entries, volume has {n} axes")
        for role, t, o in zip(self.roles, self.tile, self.overlap):
            if role not in ROLES:
                raise ValueError(f"unknown axis role {role!r}")
            if t < 1 or o < 0 or 2 * o > t:
                raise ValueError(f"tile {t} and overlap {o} must satisfy tile >= 1 and 2 * overlap <= tile")

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """The volume's shape with every spatial axis rounded up to a multiple of ``factor``."""
        return tuple(_round_up(n, self.factor) if r == "spatial" else n for n, r in zip(self.shape, self.roles))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of every tile's input box (all tiles have the same, so they batch): core,
        overlap and halo on both sides, at most the padded extent along spatial axes."""
        return tuple(
            min(t + 2 * (o + h), p) if r == "spatial" else t + 2 * (o + h)
            for t, o, h, p, r in zip(self.tile, self.overlap, self.halo, self.padded_shape, self.roles)
        )

    @property
    def n_tiles(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / t) for n, t in zip(self.shape, self.tile))


@dataclass(frozen=True)
class Tile:
    """One tile: ``core`` partitions the volume, ``window`` (core + overlap, clipped to the
    volume) is where its prediction is blended in, ``input`` (window + halo, shifted inside the
    padded extent along spatial axes, see the module docstring) is what the network sees."""

    index: tuple[int, ...]
    core: Box
    window: Box
    input: Box


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


DEFAULT_TILE_2D = 1024
"""Default largest core tile side in 2D (a 3D tile is bounded by ``max_input_voxels`` alone)."""


def make_plan(
    shape: tuple[int, ...],
    roles: tuple[str, ...],
    *,
    receptive_radius: int,
    factor: int,
    channel_halo: int = 0,
    tile: int | tuple[int, ...] | None = None,
    overlap: int = 0,
    halo: int | None = None,
    block: tuple[int, ...] | None = None,
    max_input_voxels: int | None = None,
) -> TilePlan:
    """Choose tile, halo and overlap for a volume and a network.

    Parameters
    ----------
    shape, roles : the volume's shape and each axis's role.
    receptive_radius : how far (voxels) the network looks from an output voxel along each
        spatial axis; the halo is this, rounded up to a multiple of ``factor``.
    factor : the network's down-sampling factor; spatial tiles, halos and overlaps are
        multiples of it.
    channel_halo : neighbouring planes on each side along a channel axis.
    tile : core size along spatial axes (one value for all, or one per spatial axis). Default:
        as large as the volume and the block allow (at most ``DEFAULT_TILE_2D`` in 2D), then
        shrunk until one tile's input holds at most ``max_input_voxels`` voxels: fewer, larger
        tiles spend less of their input on halos. Along an axis cut into several blocks, a
        default tile divides the block, so no tile straddles two blocks (each would compute it).
    overlap : blend overlap along spatial axes; 0 (the default) blends nothing, which is exact
        whenever the halo covers the receptive field.
    block : the block shape of the run; tiles are no larger than a block along any axis, so a
        block never computes tiles mostly outside it.
    halo : override the spatial halo (smaller than the receptive field trades exactness for
        speed; use an overlap then to hide seams).
    max_input_voxels : bound on one tile's input voxels when ``tile`` is None (None: unbounded).
    """
    spatial = [i for i, r in enumerate(roles) if r == "spatial"]
    auto = tile is None
    if auto:
        tile = DEFAULT_TILE_2D if len(spatial) <= 2 else max(shape)
    tiles = (tile,) if isinstance(tile, int) else tuple(tile)
    tiles = tiles * len(spatial) if len(tiles) == 1 else tiles
    if len(tiles) != len(spatial):
        raise ConfigError(f"--tile {','.join(map(str, tiles))} needs one size per spatial axis the network sees "
                          f"({len(spatial)}), or one size for all")
    spatial_halo = _round_up(receptive_radius if halo is None else halo, factor)
    spatial_overlap = _round_up(overlap, factor)
    t_out, h_out, o_out = [], [], []
    it = iter(tiles)
    for axis, (n, role) in enumerate(zip(shape, roles)):
        if role == "spatial":
            t = _round_up(min(next(it), n, block[axis] if block else n), factor)
            if auto and block:
                t = _block_divisor(t, block[axis], n, factor)
            t = max(t, _round_up(2 * spatial_overlap, factor), factor)
            t_out.append(t)
            h_out.append(spatial_halo)
            o_out.append(spatial_overlap)
        else:
            t_out.append(1)
            h_out.append(channel_halo if role == "channel" else 0)
            o_out.append(0)
    plan = TilePlan(tuple(shape), tuple(roles), tuple(t_out), tuple(h_out), tuple(o_out), factor)
    if auto and max_input_voxels is not None:
        plan = _shrink_to_fit(plan, max_input_voxels, block)
    return plan


def _block_tiles(block: int, factor: int) -> list[int]:
    """Tile sizes that cut ``block`` into equal parts and are multiples of ``factor``, largest first."""
    return [block // c for c in range(1, block // factor + 1) if block % c == 0 and (block // c) % factor == 0]


def _block_divisor(tile: int, block: int, n: int, factor: int) -> int:
    """The largest tile ``<= tile`` that divides ``block`` and is a multiple of ``factor``, when
    the axis (of length ``n``) holds several blocks and such a tile exists; else ``tile``."""
    if block >= n or block % factor:
        return tile
    return next((d for d in _block_tiles(block, factor) if d <= tile), tile)


def _shrink_to_fit(plan: TilePlan, max_input_voxels: int, block: tuple[int, ...] | None = None) -> TilePlan:
    """``plan`` with its spatial tiles shrunk until one tile's input holds ``max_input_voxels``
    voxels at most, or no tile can shrink further.

    Greedy: the spatial axis with the longest input that can get shorter is cut into more
    tiles (of equal size, so no thin tile is left at the volume's end; dividing the block
    along an axis cut into several blocks)."""
    spatial = [i for i, r in enumerate(plan.roles) if r == "spatial"]
    while math.prod(plan.input_shape) > max_input_voxels:
        for axis in sorted(spatial, key=lambda i: -plan.input_shape[i]):
            shorter = _shorter_tile(plan, axis, block[axis] if block else plan.shape[axis])
            if shorter is not None:
                plan = dataclasses.replace(plan, tile=tuple(shorter if i == axis else t for i, t in enumerate(plan.tile)))
                break
        else:
            break
    return plan


def _shorter_tile(plan: TilePlan, axis: int, block: int) -> int | None:
    """The largest tile along ``axis`` whose input is shorter than the current one, or None.
    Where ``block`` cuts the axis into several blocks, only tiles that divide it qualify."""
    n, t, extent = plan.shape[axis], plan.tile[axis], plan.input_shape[axis]
    margin = 2 * (plan.overlap[axis] + plan.halo[axis])
    smallest = max(plan.factor, 2 * plan.overlap[axis])
    if block < n and block % plan.factor == 0:
        for shorter in _block_tiles(block, plan.factor):
            if shorter >= t:
                continue
            if shorter < smallest:
                return None
            if min(shorter + margin, plan.padded_shape[axis]) < extent:
                return shorter
        return None
    count = -(-n // t)
    while True:
        count += 1
        shorter = max(smallest, _round_up(-(-n // count), plan.factor))
        if min(shorter + margin, plan.padded_shape[axis]) < extent:
            return shorter
        if shorter == smallest:
            return None


def _tile_at(plan: TilePlan, index: tuple[int, ...]) -> Tile:
    core_lo = tuple(k * t for k, t in zip(index, plan.tile))
    core_hi = tuple(min(lo + t, n) for lo, t, n in zip(core_lo, plan.tile, plan.shape))
    win_lo = tuple(max(lo - o, 0) for lo, o in zip(core_lo, plan.overlap))
    win_hi = tuple(min(lo + t + o, n) for lo, t, o, n in zip(core_lo, plan.tile, plan.overlap, plan.shape))
    in_lo = tuple(
        min(max(lo - o - h, 0), p - e) if r == "spatial" else lo - o - h
        for lo, o, h, p, e, r in zip(core_lo, plan.overlap, plan.halo, plan.padded_shape, plan.input_shape, plan.roles)
    )
    return Tile(
        index=index,
        core=Box(core_lo, tuple(h - l for l, h in zip(core_lo, core_hi))),
        window=Box(win_lo, tuple(h - l for l, h in zip(win_lo, win_hi))),
        input=Box(in_lo, plan.input_shape),
    )


def tiles_for(plan: TilePlan, box: Box) -> Iterator[Tile]:
    """Tiles whose blend window intersects ``box``, in C order (lazy)."""
    ranges = []
    for lo, hi, t, o, n_t in zip(box.offset, box.stop, plan.tile, plan.overlap, plan.n_tiles):
        first = max(0, (lo - o) // t - 1)
        last = min(n_t - 1, (hi + o) // t)
        ranges.append(range(first, last + 1))
    for index in np.ndindex(*(len(r) for r in ranges)):
        tile = _tile_at(plan, tuple(r[i] for r, i in zip(ranges, index)))
        if not tile.window.intersect(box).is_empty():
            yield tile


def reflect_indices(start: int, stop: int, n: int, mode: str = "reflect") -> np.ndarray:
    """Indices ``start..stop-1`` mapped into ``[0, n)``.

    mode ``"reflect"``: mirrored like ``numpy.pad(mode="reflect")``.

    mode ``"stack"`` (Noise2Stack's end-plane rule): ``[start, stop)`` is the neighbourhood of
    its centre plane ``c = (start + stop - 1) // 2``, which must lie in the volume; an index
    outside the volume becomes the existing plane nearest to it other than ``c``: ``0`` (or
    ``n - 1``), or ``1`` (``n - 2``) when ``c`` itself is the end plane. So the first plane's
    absent neighbours are all copies of the second plane (as in the paper, for any number of
    neighbours), and the target plane never stands in for a neighbour. Differs from mirroring
    from two neighbours on: plane 1 with 2 neighbours reads planes (0, 0, 1, 2, 3), never its
    own mirror image. Needs ``n >= 2``.
    """
    idx = np.arange(start, stop)
    if mode == "stack":
        centre = (start + stop - 1) // 2
        if n < 2 or not 0 <= centre < n:
            raise ValueError(f"a plane neighbourhood needs >= 2 planes and its centre inside them "
                             f"(centre {centre}, {n} planes)")
        outside = (idx < 0) | (idx >= n)
        idx = np.clip(idx, 0, n - 1)
        step = 1 if centre == 0 else -1
        return np.where(outside & (idx == centre), idx + step, idx)
    if mode != "reflect":
        raise ValueError(f"unknown index mode {mode!r}; use 'reflect' or 'stack'")
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def axis_modes(roles: tuple[str, ...]) -> tuple[str, ...]:
    """The ``reflect_indices`` mode of each axis: ``"stack"`` along channel axes, else mirror."""
    return tuple("stack" if r == "channel" else "reflect" for r in roles)


def read_box(plan: TilePlan, box: Box) -> Box:
    """The part of the volume that must be read to predict every voxel of ``box``.

    The union of the input boxes of the tiles touching ``box``, mirrored into the volume
    (clipped to it along channel axes, which holds every plane the end-plane rule picks).
    """
    lo, hi = list(box.offset), list(box.stop)
    for tile in tiles_for(plan, box):
        lo = [min(a, b) for a, b in zip(lo, tile.input.offset)]
        hi = [max(a, b) for a, b in zip(hi, tile.input.stop)]
    offset, shape = [], []
    for a, b, n, role in zip(lo, hi, plan.shape, plan.roles):
        idx = np.clip(np.arange(a, b), 0, n - 1) if role == "channel" else reflect_indices(a, b, n)
        offset.append(int(idx.min()))
        shape.append(int(idx.max()) + 1 - int(idx.min()))
    return Box(tuple(offset), tuple(shape))


def gather(data: np.ndarray, data_box: Box, want: Box, shape: tuple[int, ...],
           modes: tuple[str, ...] | None = None) -> np.ndarray:
    """Voxels of ``want`` (may reach outside the volume of ``shape``) from ``data``, which holds
    the volume's ``data_box``; outside voxels are mirrored from the volume's edges, or follow
    the end-plane rule along axes whose mode (``axis_modes(plan.roles)``) is ``"stack"``."""
    if all(lo >= 0 and hi <= n for lo, hi, n in zip(want.offset, want.stop, shape)):
        inside = want.relative_to(data_box.offset)
        if all(o >= 0 and e <= d for o, e, d in zip(inside.offset, inside.stop, data.shape)):
            return data[inside.slices]  # the common case: a view, no index arrays
    modes = modes or ("reflect",) * len(shape)
    index = []
    for lo, hi, n, origin, mode in zip(want.offset, want.stop, shape, data_box.offset, modes):
        idx = reflect_indices(lo, hi, n, mode) - origin
        if idx.min() < 0 or idx.max() >= data.shape[len(index)]:
            raise ValueError(f"{want} needs voxels outside the data read ({data_box})")
        index.append(idx)
    return data[np.ix_(*index)]


def _ramp(lo: int, hi: int, core_lo: int, core_hi: int, overlap: int, n: int) -> np.ndarray:
    """1D blend weights over the window ``[lo, hi)`` of a core ``[core_lo, core_hi)``."""
    x = np.arange(lo, hi, dtype=np.float64) + 0.5
    w = np.ones(hi - lo)
    if overlap == 0:
        return w
    if core_lo > 0:
        w *= np.clip((x - (core_lo - overlap)) / (2 * overlap), 0.0, 1.0)
    if core_hi < n:
        w *= np.clip(((core_hi + overlap) - x) / (2 * overlap), 0.0, 1.0)
    return w


def blend_weights(plan: TilePlan, tile: Tile) -> np.ndarray:
    """Weights over ``tile.window`` (float32, window shape). Linear ramps across every
    overlap region; the weights of all tiles sum to one at every voxel of the volume."""
    w = np.ones((), dtype=np.float64)
    for axis in range(len(plan.shape)):
        ramp = _ramp(
            tile.window.offset[axis], tile.window.stop[axis],
            tile.core.offset[axis], tile.core.stop[axis],
            plan.overlap[axis], plan.shape[axis],
        )
        w = np.multiply.outer(w, ramp)
    return w.astype(np.float32)


def block_shape_for(chunks: tuple[int, ...], shape: tuple[int, ...], target_voxels: int) -> tuple[int, ...]:
    """A block shape that is a whole number of ``chunks`` per axis, grown (last axes first)
    by one chunk at a time while it holds at most ``target_voxels`` voxels, never beyond the
    volume (a single chunk may hold more)."""
    block = [min(c, n) for c, n in zip(chunks, shape)]
    for axis in reversed(range(len(shape))):
        while block[axis] < shape[axis]:
            grown = min(block[axis] + chunks[axis], shape[axis])
            if math.prod(block) // block[axis] * grown > target_voxels:
                break
            block[axis] = grown
    return tuple(block)


def iter_blocks(shape: tuple[int, ...], block: tuple[int, ...],
                origin: tuple[int, ...] | None = None) -> Iterator[Block]:
    """Blocks of shape ``block`` (clipped at the end) covering ``shape``, generated lazily in C
    order. With ``block`` a multiple of the output chunks, every block writes whole chunks.
    ``origin``: the grid covers the box ``Box(origin, shape)`` of a larger volume (a ROI) and
    write boxes are in that volume's coordinates."""
    grid = tuple(math.ceil(n / b) for n, b in zip(shape, block))
    origin = origin or (0,) * len(shape)
    for index in np.ndindex(*grid):
        lo = tuple(i * b for i, b in zip(index, block))
        hi = tuple(min(l + b, n) for l, b, n in zip(lo, block, shape))
        size = tuple(h - l for l, h in zip(lo, hi))
        yield Block(tuple(index), Box(tuple(l + o for l, o in zip(lo, origin)), size))


def count_blocks(shape: tuple[int, ...], block: tuple[int, ...]) -> int:
    return math.prod(math.ceil(n / b) for n, b in zip(shape, block))
