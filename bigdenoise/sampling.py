"""Where training patches come from: index + seed -> Box, and chunk-aware reads.

A sampler is a pure function of ``(index, seed)``; nothing here holds global random state.
To keep storage reads low on volumes far larger than memory, consecutive training samples are
drawn from a small rotating set of *regions* (boxes about one chunk large) that stay in a
bounded chunk cache while they are in use.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .axes import axis_roles
from .background import subtract_background
from .foreground import Foreground, Rule, decide
from .geometry import Box
from .tiling import reflect_indices
from .volume import Volume, sample_chunk_boxes

TRAIN, VALIDATION = 0, 1


def unpaired_stream(stream: int, j: int) -> int:
    """The random stream of the ``j``-th unpaired volume's boxes (``data.PatchBatches``) in
    ``stream`` (TRAIN or VALIDATION): never one of the two, so its boxes are independent of the
    input's."""
    return 2 + 2 * j + stream


def sample_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The random generator of sample ``index`` of a stream (train or validation)."""
    return np.random.default_rng([seed, stream, index])


@dataclass(frozen=True)
class PatchSampler:
    """Random patches of a volume, uniform over positions, drawn region by region.

    Attributes
    ----------
    shape : volume shape (all axes).
    patch : patch shape over all axes (1 along sample axes).
    region : region shape over all axes, at least ``patch``; patches of one region are drawn
        inside it so they share chunks.
    active : how many regions are in use at once (consecutive indices cycle over them, so one
        batch mixes ``active`` regions).
    per_region : how many patches each region serves before the next region is drawn.
    """

    shape: tuple[int, ...]
    patch: tuple[int, ...]
    region: tuple[int, ...]
    active: int = 16
    per_region: int = 1

    def __post_init__(self) -> None:
        for n, p, r in zip(self.shape, self.patch, self.region):
            if not 1 <= p <= r <= n:
                raise ValueError(f"need 1 <= patch <= region <= volume, got {self.patch}, {self.region}, {self.shape}")

    def region_box(self, region_index: int, seed: int, stream: int, attempt: int = 0) -> Box:
        key = [seed, stream, 1_000_003, region_index] + ([attempt] if attempt else [])
        rng = np.random.default_rng(key)
        offset = tuple(int(rng.integers(0, n - r + 1)) for n, r in zip(self.shape, self.region))
        return Box(offset, self.region)

    def box(self, index: int, seed: int, stream: int = TRAIN, attempt: int = 0) -> Box:
        """The patch of sample ``index``: a uniformly placed patch inside its region.

        ``attempt > 0``: the ``attempt``-th further candidate of foreground-aware sampling
        (``foreground.choose_attempt``), uniformly placed in a region of its own, shared by the
        samples of the same region (so their retries read the same chunks).
        """
        group, slot = divmod(index, self.active * self.per_region)
        region_index = group * self.active + slot % self.active
        region = self.region_box(region_index, seed, stream, attempt)
        rng = np.random.default_rng([seed, stream, index] + ([attempt] if attempt else []))
        offset = tuple(
            o + int(rng.integers(0, r - p + 1)) for o, r, p in zip(region.offset, region.shape, self.patch)
        )
        return Box(offset, self.patch)


def make_sampler(
    volume: Volume, patch_spatial: tuple[int, ...], *, cache_bytes: int, active: int, per_region: int | None = None,
    stack_axis: str | None = None,
) -> PatchSampler:
    """A sampler for ``volume`` with a spatial ``patch`` (over the volume's spatial axes, except
    ``stack_axis``: along it a patch is the one target plane, see :func:`read_neighbourhood`).

    Regions are one storage chunk large (at least the patch). ``per_region`` defaults to 1 when
    the whole volume fits in the cache (plain uniform sampling) and to 8 otherwise.
    """
    it = iter(patch_spatial)
    patch = tuple(next(it) if r == "spatial" else 1 for r in axis_roles(volume.axes, stack_axis))
    region = tuple(min(n, max(p, c)) for n, p, c in zip(volume.shape, patch, volume.chunks))
    if per_region is None:
        per_region = 1 if volume.nbytes <= cache_bytes else 8
    return PatchSampler(volume.shape, patch, region, active=active, per_region=per_region)


def foreground_plan(volume: Volume, setting: str | float, n_chunks: int, seed: int,
                    background: np.ndarray | None = None, rule: Rule = Rule()) -> Foreground:
    """The run's foreground-aware sampling decision (:func:`foreground.decide`, with the method's
    ``rule``) from ``n_chunks`` random storage chunks of ``volume`` (``volume.sample_chunk_boxes``,
    the ones normalisation reads; nothing for ``"off"``), after subtracting ``background`` (a YX
    pattern) when given."""
    if setting == "off":
        return decide("off", [])
    boxes = sample_chunk_boxes(volume, n_chunks, seed)
    return decide(setting, [subtract_background(volume.read(b), b, background) for b in boxes], seed, rule)


class ChunkCache:
    """Reads boxes of a volume chunk by chunk, keeping recently used chunks in memory.

    Only the storage chunks intersecting a requested box are read, each at most once while it
    stays in the cache; the cache holds at most ``max_bytes`` of decoded chunks (LRU).
    ``reads`` counts chunk reads from storage.
    """

    def __init__(self, volume: Volume, max_bytes: int = 512 * 2**20) -> None:
        self.volume = volume
        self.max_bytes = max_bytes
        self.reads = 0
        self._chunks: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._bytes = 0

    def _chunk(self, index: tuple[int, ...]) -> np.ndarray:
        if index in self._chunks:
            self._chunks.move_to_end(index)
            return self._chunks[index]
        data = self.volume.read(self.volume.chunk_box(index))
        self.reads += 1
        self._chunks[index] = data
        self._bytes += data.nbytes
        while self._bytes > self.max_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self._bytes -= old.nbytes
        return data

    def read(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (inside the volume) as a numpy array of the volume's dtype."""
        chunks = self.volume.chunks
        out = np.empty(box.shape, dtype=self.volume.dtype)
        first = [o // c for o, c in zip(box.offset, chunks)]
        last = [(s - 1) // c for s, c in zip(box.stop, chunks)]
        for rel in np.ndindex(*(l - f + 1 for f, l in zip(first, last))):
            index = tuple(f + r for f, r in zip(first, rel))
            cbox = self.volume.chunk_box(index)
            part = cbox.intersect(box)
            out[part.relative_to(box.offset).slices] = self._chunk(index)[part.relative_to(cbox.offset).slices]
        return out


def read_neighbourhood(cache: ChunkCache, box: Box, axis: int, k: int) -> np.ndarray:
    """The plane neighbourhood of a one-plane ``box``: planes ``z - k .. z + k`` along ``axis``.

    Reads only the planes inside the volume (through ``cache``); absent neighbours at the
    volume's ends are copies of the existing plane nearest to them other than ``z``
    (``tiling.reflect_indices`` mode ``"stack"``, the rule prediction uses too): with ``k = 1``
    plane 0 gets two copies of plane 1.

    Returns
    -------
    array of ``box.shape`` with ``2 * k + 1`` entries along ``axis``, centre entry = plane ``z``.
    """
    z, n = box.offset[axis], cache.volume.shape[axis]
    if box.shape[axis] != 1:
        raise ValueError(f"a plane neighbourhood is read around one plane, got {box.shape[axis]} along axis {axis}")
    idx = reflect_indices(z - k, z + k + 1, n, mode="stack")
    lo, hi = int(idx.min()), int(idx.max()) + 1
    read = Box(box.offset[:axis] + (lo,) + box.offset[axis + 1:], box.shape[:axis] + (hi - lo,) + box.shape[axis + 1:])
    return np.take(cache.read(read), idx - lo, axis=axis)


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 in-plane (last two axes) rotations/flips of ``x``; ``k`` in 0..7.

    Odd rotations need square planes; for non-square planes only the four flips are used.
    """
    if x.shape[-1] != x.shape[-2]:
        k = (k % 4) * 2
    if k >= 4:
        x = x[..., ::-1]
    return np.ascontiguousarray(np.rot90(x, k % 4, axes=(-2, -1)))


def patch_count(volume: Volume, patch_spatial: tuple[int, ...], stack_axis: str | None = None) -> int:
    """Patches in one 'epoch': as many as tile the volume once (every plane of a stack axis is a
    target plane)."""
    roles = axis_roles(volume.axes, stack_axis)
    spatial = [n for r, n in zip(roles, volume.shape) if r == "spatial"]
    samples = math.prod(n for r, n in zip(roles, volume.shape) if r != "spatial")
    return max(1, samples * math.prod(max(1, n // p) for n, p in zip(spatial, patch_spatial)))
