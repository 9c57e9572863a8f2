"""Pure geometry of blockwise inference: blend windows, tiles, reflection, blocks."""

import itertools

import numpy as np
import pytest

from bigdenoise.geometry import Box
from bigdenoise.tiling import (
    blend_weights,
    block_shape_for,
    count_blocks,
    gather,
    iter_blocks,
    TilePlan,
    make_plan,
    read_box,
    reflect_indices,
    tiles_for,
)


@pytest.mark.parametrize(
    "shape, roles, tile, overlap",
    [
        ((37, 53), ("spatial", "spatial"), 16, 4),
        ((3, 45, 29), ("sample", "spatial", "spatial"), 12, 4),
        ((21, 19, 23), ("spatial", "spatial", "spatial"), 8, 4),
        ((2, 30, 31), ("sample", "spatial", "spatial"), 8, 0),
    ],
)
def test_blend_weights_sum_to_one(shape, roles, tile, overlap):
    plan = make_plan(shape, roles, receptive_radius=5, factor=4, tile=tile, overlap=overlap)
    total = np.zeros(shape)
    whole = Box.from_shape(shape)
    for t in tiles_for(plan, whole):
        total[t.window.slices] += blend_weights(plan, t)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_tiles_are_anchored_to_the_volume_and_aligned():
    plan = make_plan((1, 100, 90), ("sample", "spatial", "spatial"), receptive_radius=7, factor=4, tile=24, overlap=4)
    assert plan.halo == (0, 8, 8) and plan.overlap == (0, 4, 4) and plan.tile == (1, 24, 24)
    a = {t.index: t for t in tiles_for(plan, Box((0, 10, 10), (1, 30, 30)))}
    b = {t.index: t for t in tiles_for(plan, Box((0, 0, 0), (1, 100, 90)))}
    for index, tile in a.items():
        assert b[index] == tile  # a tile is the same whichever block asks for it
        assert all(o % 4 == 0 for o in tile.input.offset[1:])
        assert tile.input.shape == plan.input_shape


def test_tiles_for_covers_the_box_exactly_once_by_core():
    plan = make_plan((50, 41), ("spatial", "spatial"), receptive_radius=3, factor=2, tile=10)
    box = Box((7, 3), (20, 30))
    cover = np.zeros((50, 41), int)
    for t in tiles_for(plan, box):
        cover[t.core.slices] += 1
    assert (cover[box.slices] == 1).all()


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_reflect_indices_match_numpy_pad(n):
    data = np.arange(n)
    for lo, hi in [(-3, n + 3), (-2 * n - 5, 3 * n + 4), (0, n)]:
        expected = np.pad(data, (max(0, -lo), max(0, hi - n)), mode="reflect" if n > 1 else "edge")
        np.testing.assert_array_equal(reflect_indices(lo, hi, n), expected)


def test_read_box_holds_every_tile_input():
    shape = (2, 40, 35)
    plan = make_plan(shape, ("sample", "spatial", "spatial"), receptive_radius=9, factor=4, tile=16)
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for block in iter_blocks(shape, (1, 16, 20)):
        rbox = read_box(plan, block.write)
        data = volume[rbox.slices]
        for t in tiles_for(plan, block.write):
            got = gather(data, rbox, t.input, shape)
            want = gather(volume, Box.from_shape(shape), t.input, shape)
            np.testing.assert_array_equal(got, want)


def test_blocks_partition_the_volume_and_align_to_chunks():
    shape, chunks = (5, 70, 33), (2, 16, 16)
    block = block_shape_for(chunks, shape, target_voxels=3000)
    assert all(b % c == 0 or b == n for b, c, n in zip(block, chunks, shape))
    cover = np.zeros(shape, int)
    blocks = list(iter_blocks(shape, block))
    assert len(blocks) == count_blocks(shape, block)
    for b in blocks:
        cover[b.write.slices] += 1
        assert all(o % c == 0 for o, c in zip(b.write.offset, chunks))
    assert (cover == 1).all()


def test_overlap_larger_than_half_a_tile_grows_the_tile_or_is_rejected():
    plan = make_plan((64, 64), ("spatial", "spatial"), receptive_radius=2, factor=1, tile=8, overlap=8)
    assert plan.tile == (16, 16)
    with pytest.raises(ValueError, match="overlap"):
        TilePlan((64,), ("spatial",), (8,), (0,), (8,))


def test_plan_shrinks_tiles_to_small_volumes():
    plan = make_plan((3, 10, 13), ("sample", "spatial", "spatial"), receptive_radius=2, factor=4)
    assert plan.tile == (1, 12, 16)
    assert list(itertools.islice(tiles_for(plan, Box.from_shape((3, 10, 13))), 5))


@pytest.mark.parametrize("shape, tile, overlap", [((45, 29), 12, 4), ((37, 53), 16, 0), ((9, 61), 8, 4)])
def test_input_boxes_stay_inside_the_padded_volume_and_keep_the_halo(shape, tile, overlap):
    """Where the halo would cross a volume edge the input box shifts inwards (same shape, on the
    pooling grid), so every window still has a full halo towards the volume's interior."""
    plan = make_plan(shape, ("spatial", "spatial"), receptive_radius=7, factor=4, tile=tile, overlap=overlap)
    padded = plan.padded_shape
    assert all(p % 4 == 0 and p - 4 < n <= p for p, n in zip(padded, shape))
    for t in tiles_for(plan, Box.from_shape(shape)):
        assert t.input.shape == plan.input_shape
        for axis in range(2):
            lo, hi = t.input.offset[axis], t.input.stop[axis]
            assert 0 <= lo and hi <= padded[axis] and lo % 4 == 0
            assert lo == 0 or t.window.offset[axis] - lo >= plan.halo[axis]
            assert hi == padded[axis] or hi - t.window.stop[axis] >= plan.halo[axis]


def test_a_thin_volume_is_one_tile_without_mirrored_margins():
    """A 32x256x256 volume under a 2 Mi voxel budget: one tile whose input is the volume itself."""
    shape = (32, 256, 256)
    plan = make_plan(shape, ("spatial",) * 3, receptive_radius=30, factor=4, max_input_voxels=2 * 2**20)
    assert plan.tile == shape and plan.input_shape == shape
    assert [t.input for t in tiles_for(plan, Box.from_shape(shape))] == [Box((0, 0, 0), shape)]


@pytest.mark.parametrize("shape, block", [((512, 1024, 1024), (64, 256, 256)), ((20, 300, 700), None)])
def test_default_3d_tiles_fit_the_voxel_budget(shape, block):
    budget = 2 * 2**20
    plan = make_plan(shape, ("spatial",) * 3, receptive_radius=30, factor=4, block=block, max_input_voxels=budget)
    assert np.prod(plan.input_shape) <= budget
    assert all(t % 4 == 0 for t in plan.tile)
    if block:
        assert all(t <= b for t, b in zip(plan.tile, block))


@pytest.mark.parametrize("shape, chunks, radius", [
    ((512, 2048, 2048), (64, 256, 256), 23),
    ((600, 3000, 2900), (64, 256, 256), 23),
    ((2048, 2048), (512, 512), 23),
    ((5000, 5000), (1024, 1024), 26),
    ((40, 3000, 3000), (8, 512, 512), 51),
])
def test_default_tiles_divide_the_blocks(shape, chunks, radius):
    """No default tile straddles two blocks, where it would be computed twice."""
    ndim = len(shape)
    block = block_shape_for(chunks, shape, 4 * 2**20)
    plan = make_plan(shape, ("spatial",) * ndim, receptive_radius=radius, factor=4, block=block,
                     max_input_voxels=2 * 2**20)
    assert np.prod(plan.input_shape) <= 2 * 2**20
    for t, b, n in zip(plan.tile, block, shape):
        assert t % 4 == 0 and t <= b
        if b < n:
            assert b % t == 0, (plan.tile, block)
