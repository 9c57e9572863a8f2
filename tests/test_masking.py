import numpy as np
import pytest

from bigdenoise.masking import n2v_mask, stratified_coords


def _cell_counts(points: np.ndarray, shape: tuple[int, ...], side: int) -> np.ndarray:
    """Number of points in each cell of a grid of cubic cells of the given side."""
    n_cells = tuple(-(-s // side) for s in shape)
    counts = np.zeros(n_cells, dtype=int)
    np.add.at(counts, tuple((points // side).T), 1)
    return counts


def _sources(masked: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Positions (N, ndim) that values of an arange patch came from."""
    return np.stack(np.unravel_index(masked.astype(np.int64), shape), axis=-1)


@pytest.mark.parametrize(
    "shape, fraction, side",
    [((64, 64), 64 / 4096, 8), ((16, 16, 16), 64 / 4096, 4), ((8, 12, 16), 1 / 8, 2), ((10, 6), 1.0, 1)],
)
def test_stratified_coords_one_per_cell(shape, fraction, side):
    coords = stratified_coords(shape, fraction, np.random.default_rng(0))
    assert coords.shape == (round(np.prod(shape) * fraction), len(shape))
    assert np.all(_cell_counts(coords, shape, side) == 1)


def test_stratified_coords_ragged_patch():
    shape = (30, 21)  # cells of side 8: the last row and column of cells are partial
    for seed in range(20):
        coords = stratified_coords(shape, 64 / 4096, np.random.default_rng(seed))
        assert np.all(coords >= 0) and np.all(coords < shape)
        counts = _cell_counts(coords, shape, 8)
        assert counts.max() == 1
        assert np.all(counts[:-1, :-1] == 1)  # full cells always have their point
    with pytest.raises(ValueError, match="fraction"):
        stratified_coords(shape, 0.0, np.random.default_rng(0))


def test_mask_marks_exactly_the_replaced_pixels():
    shape = (64, 64)
    patch = np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape)
    masked, mask = n2v_mask(patch, np.random.default_rng(1))
    assert masked.shape == patch.shape and masked.dtype == patch.dtype
    assert mask.shape == shape and mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert mask.sum() == 64  # the paper's N = 64 per 64x64 patch
    assert np.all(_cell_counts(np.argwhere(mask), shape, 8) == 1)
    # Unique values: every masked pixel changes, nothing else does.
    np.testing.assert_array_equal(masked[0] != patch[0], mask == 1)
    assert masked is not patch and np.all(patch[0] == np.arange(64 * 64).reshape(shape))


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 4)])
def test_replacement_is_a_different_pixel_in_the_clipped_window(shape):
    # fraction=1 masks every pixel, borders and corners included.
    n = int(np.prod(shape))
    base = np.arange(n, dtype=np.float32).reshape(shape)
    patch = np.stack([base, base + 10_000])  # two channels
    for seed in range(10):
        masked, mask = n2v_mask(patch, np.random.default_rng(seed), fraction=1.0, window=5)
        assert np.all(mask == 1)
        np.testing.assert_array_equal(masked[1] - masked[0], 10_000)  # same source in every channel
        centres = np.argwhere(mask)
        sources = _sources(masked[0][tuple(centres.T)], shape)
        assert not np.any(np.all(sources == centres, axis=1))
        assert np.all(np.abs(sources - centres) <= 2)


def test_replacement_is_uniform_over_the_clipped_window():
    # At the corner of the patch the 5x5 window is clipped to 3x3: 8 candidate neighbours.
    shape = (6, 6)
    patch = np.arange(36, dtype=np.float32).reshape(1, *shape)
    draws = 2400
    rng = np.random.default_rng(0)
    sources = [int(n2v_mask(patch, rng, fraction=1.0)[0][0, 0, 0]) for _ in range(draws)]
    values, counts = np.unique(sources, return_counts=True)
    expected = {r * 6 + c for r in range(3) for c in range(3)} - {0}
    assert set(values.tolist()) == expected
    assert np.all(np.abs(counts - draws / 8) < 0.25 * draws / 8)


def _window_median(image: np.ndarray, centre: tuple[int, ...], half: int, exclude: set) -> float:
    values = []
    for offset in np.ndindex(*(2 * half + 1,) * image.ndim):
        pos = tuple(c + o - half for c, o in zip(centre, offset))
        if pos in exclude or any(p < 0 or p >= s for p, s in zip(pos, image.shape)):
            continue
        values.append(image[pos])
    return float(np.median(values))


@pytest.mark.parametrize("shape, struct_span", [((9, 8), 0), ((5, 6, 5), 0), ((9, 8), 1)])
def test_median_replacement(shape, struct_span):
    rng = np.random.default_rng(3)
    patch = rng.normal(size=(2, *shape)).astype(np.float32)
    kwargs = dict(struct_axis=0, struct_span=struct_span) if struct_span else {}
    masked, mask = n2v_mask(patch, rng, fraction=1.0, replacement="median", **kwargs)
    for centre in map(tuple, np.argwhere(mask)):
        exclude = {centre}
        for step in range(-struct_span, struct_span + 1):
            exclude.add((centre[0] + step,) + centre[1:])
        for c in range(2):
            expected = _window_median(patch[c], centre, 2, exclude)
            assert masked[(c,) + centre] == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_struct_mask_hides_the_line_but_not_the_loss_mask():
    shape = (32, 32)
    patch = np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape)
    plain_masked, plain_mask = n2v_mask(patch, np.random.default_rng(5))
    masked, mask = n2v_mask(patch, np.random.default_rng(5), struct_axis=1, struct_span=2)
    np.testing.assert_array_equal(mask, plain_mask)

    centres = np.argwhere(mask)
    line = np.zeros(shape, dtype=bool)
    for y, x in centres:
        line[y, max(0, x - 2) : x + 3] = True
    line[tuple(centres.T)] = False
    changed = masked[0] != patch[0]
    assert not np.any(changed & ~line & (mask == 0))  # only centres and line pixels change
    assert changed[line].mean() > 0.9  # line values are random pixels of the patch (rarely themselves)
    assert np.all(np.isin(masked[0][line], patch))
    # A centre's replacement never comes from its own line (its noise may be correlated).
    sources = _sources(masked[0][tuple(centres.T)], shape)
    assert not np.any((sources[:, 0] == centres[:, 0]) & (np.abs(sources[:, 1] - centres[:, 1]) <= 2))
    assert np.all(np.abs(sources - centres) <= 2)


def test_seeding():
    patch = np.random.default_rng(0).normal(size=(1, 24, 24, 24)).astype(np.float32)
    a = n2v_mask(patch, np.random.default_rng(7), struct_axis=2, struct_span=1)
    b = n2v_mask(patch, np.random.default_rng(7), struct_axis=2, struct_span=1)
    c = n2v_mask(patch, np.random.default_rng(8), struct_axis=2, struct_span=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[0], c[0])


def test_bad_arguments():
    patch = np.zeros((1, 16, 16), dtype=np.float32)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="window"):
        n2v_mask(patch, rng, window=4)
    with pytest.raises(ValueError, match="replacement"):
        n2v_mask(patch, rng, replacement="mean")
    with pytest.raises(ValueError, match="struct_axis"):
        n2v_mask(patch, rng, struct_span=2)
    with pytest.raises(ValueError, match="struct_axis"):
        n2v_mask(patch, rng, struct_axis=2, struct_span=2)
    with pytest.raises(ValueError, match="too small"):
        n2v_mask(np.zeros((1, 1, 1), dtype=np.float32), rng, fraction=1.0)
    with pytest.raises(ValueError, match="too small"):
        n2v_mask(np.zeros((1, 1, 3), dtype=np.float32), rng, fraction=1.0, struct_axis=1, struct_span=2)
