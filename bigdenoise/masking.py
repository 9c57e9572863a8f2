"""Blind-spot masking for Noise2Void training (pure numpy).

Noise2Void (Krull et al. 2019, sec. 3.4-3.5): in each training patch, N pixels chosen by
stratified sampling have their value replaced by that of a random neighbour; the loss is taken
only at those pixels, against the original values. Variants: median replacement (N2V2,
Höck et al. 2022) and struct-N2V (Broaddus et al. 2020), which also hides a line of pixels
along one axis to cope with noise correlated along it.
"""

from __future__ import annotations

import itertools

import numpy as np


def stratified_coords(spatial_shape: tuple[int, ...], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random position per cell of a regular grid over the patch.

    The cell side is ``round((1 / fraction) ** (1 / ndim))`` (at least 1), so about
    ``fraction`` of the pixels are chosen, spread over the whole patch without clustering.
    Cells at the ragged end of an axis are partial; a position drawn outside the patch is
    dropped.

    Parameters
    ----------
    spatial_shape : tuple of int
        Patch shape, spatial axes only (e.g. (Y, X) or (Z, Y, X)).
    fraction : float
        Wanted fraction of masked pixels, in (0, 1].
    rng : numpy.random.Generator
        The only source of randomness.

    Returns
    -------
    ndarray of int64, shape (N, ndim)
        Coordinates, one row per chosen pixel, in grid-cell order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    shape = np.asarray(spatial_shape, dtype=np.int64)
    ndim = len(shape)
    side = max(1, round((1.0 / fraction) ** (1.0 / ndim)))
    n_cells = -(-shape // side)  # ceil
    origins = np.indices(tuple(n_cells)).reshape(ndim, -1).T * side
    coords = origins + rng.integers(0, side, size=origins.shape)
    return coords[np.all(coords < shape, axis=1)]


def _neighbour_offsets(ndim: int, window: int, struct_axis: int | None, struct_span: int) -> np.ndarray:
    """Offsets (K, ndim) of the window without its centre (and without the struct line)."""
    half = window // 2
    offsets = np.array(list(itertools.product(range(-half, half + 1), repeat=ndim)), dtype=np.int64)
    keep = np.any(offsets != 0, axis=1)
    if struct_axis is not None and struct_span > 0:
        others = np.delete(offsets, struct_axis, axis=1)
        on_line = np.all(others == 0, axis=1) & (np.abs(offsets[:, struct_axis]) <= struct_span)
        keep &= ~on_line
    return offsets[keep]


def _on_excluded(pos: np.ndarray, coords: np.ndarray, axis: int, span: int) -> np.ndarray:
    """(N,) bool: ``pos`` is the centre ``coords`` or on its struct line (``span`` along ``axis``)."""
    same_elsewhere = np.all(np.delete(pos == coords, axis, axis=1), axis=1)
    return same_elsewhere & (np.abs(pos[:, axis] - coords[:, axis]) <= span)


def _uniform_neighbours(
    coords: np.ndarray, lo: np.ndarray, hi: np.ndarray, axis: int, span: int, rng: np.random.Generator
) -> np.ndarray:
    """(N, ndim) positions drawn uniformly from the clipped windows ``[lo, hi]`` minus the
    excluded positions, by rejection (the excluded share is small; callers ensure it is < 1)."""
    size = hi - lo + 1
    pos = lo + (rng.random(coords.shape) * size).astype(np.int64)
    redo = np.flatnonzero(_on_excluded(pos, coords, axis, span))
    while len(redo):
        pos[redo] = lo[redo] + (rng.random((len(redo), coords.shape[1])) * size[redo]).astype(np.int64)
        redo = redo[_on_excluded(pos[redo], coords[redo], axis, span)]
    return pos


def _median_neighbours(
    patch: np.ndarray, coords: np.ndarray, window: int, struct_axis: int | None, span: int
) -> np.ndarray:
    """(C, N) median, per channel, of the in-patch window neighbours of each of ``coords``
    (centre and struct line excluded)."""
    half = window // 2
    ndim = patch.ndim - 1
    # A NaN border marks the neighbours outside the patch; NaNs sort last and are not counted.
    padded = np.pad(patch.astype(np.float64), [(0, 0)] + [(half, half)] * ndim, constant_values=np.nan)
    strides = np.cumprod((padded.shape[2:] + (1,))[::-1])[::-1]  # flat strides of the spatial axes
    offsets = _neighbour_offsets(ndim, window, struct_axis, span)  # (K, ndim)
    flat_index = ((coords + half) @ strides)[:, None] + (offsets @ strides)[None, :]  # (N, K)
    values = np.sort(padded.reshape(patch.shape[0], -1)[:, flat_index], axis=2)  # (C, N, K)
    n_valid = np.sum(~np.isnan(values), axis=2, keepdims=True)  # (C, N, 1)
    lower = np.take_along_axis(values, (n_valid - 1) // 2, 2)
    upper = np.take_along_axis(values, n_valid // 2, 2)
    return 0.5 * (lower + upper)[..., 0]


def _check_mask_args(
    patch: np.ndarray, window: int, replacement: str, struct_axis: int | None, struct_span: int
) -> None:
    """Raise ``ValueError`` for arguments :func:`n2v_mask` cannot honour."""
    if patch.ndim < 2:
        raise ValueError(f"patch must have shape (C, *spatial), got shape {patch.shape}")
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 3, got {window}")
    if replacement not in ("uniform", "median"):
        raise ValueError(f"replacement must be 'uniform' or 'median', got {replacement!r}")
    ndim = patch.ndim - 1
    if struct_span < 0:
        raise ValueError(f"struct_span must be >= 0, got {struct_span}")
    if struct_span > 0 and (struct_axis is None or not 0 <= struct_axis < ndim):
        raise ValueError(f"struct_span > 0 needs a struct_axis in [0, {ndim}), got {struct_axis}")


def _clipped_windows(
    coords: np.ndarray, spatial: tuple[int, ...], window: int, axis: int, span: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive bounds ``lo, hi`` (each (N, ndim)) of each chosen pixel's window clipped to
    the patch; raise ``ValueError`` if a window holds nothing but the excluded positions (the
    centre and, with ``span > 0``, its struct line along ``axis``)."""
    shape = np.asarray(spatial, dtype=np.int64)
    half = window // 2
    lo = np.maximum(coords - half, 0)
    hi = np.minimum(coords + half, shape - 1)
    n_excluded = np.minimum(hi[:, axis], coords[:, axis] + span) - np.maximum(lo[:, axis], coords[:, axis] - span) + 1
    if np.any(np.prod(hi - lo + 1, axis=1) - n_excluded <= 0):
        raise ValueError(f"patch of spatial shape {spatial} is too small: a masked pixel has no neighbour to copy")
    return lo, hi


def _hide_struct_lines(
    patch: np.ndarray, masked: np.ndarray, coords: np.ndarray, axis: int, span: int, rng: np.random.Generator
) -> None:
    """Struct-N2V: overwrite, in ``masked``, the in-patch pixels at offsets ±1..±``span`` along
    ``axis`` from each of ``coords`` with values of pixels of ``patch`` drawn uniformly (the
    same donor pixel for every channel)."""
    steps = np.concatenate([np.arange(-span, 0), np.arange(1, span + 1)])
    line = np.repeat(coords, len(steps), axis=0)
    line[:, axis] += np.tile(steps, len(coords))
    line = line[(line[:, axis] >= 0) & (line[:, axis] < patch.shape[1 + axis])]
    flat = patch.reshape(patch.shape[0], -1)
    donors = rng.integers(0, flat.shape[1], size=len(line))
    masked[(slice(None),) + tuple(line.T)] = flat[:, donors]


def n2v_mask(
    patch: np.ndarray,
    rng: np.random.Generator,
    *,
    fraction: float = 64 / 4096,
    window: int = 5,
    replacement: str = "uniform",
    struct_axis: int | None = None,
    struct_span: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise2Void input masking of one patch.

    Pixels are chosen with :func:`stratified_coords`. Each chosen pixel's value is replaced,
    in every channel, by

    - ``"uniform"``: the value of a neighbour drawn uniformly from the ``window``^ndim window
      centred on it, the pixel itself excluded and the window clipped to the patch;
    - ``"median"`` (N2V2): the median of that same set of neighbours, per channel.

    With ``struct_axis`` and ``struct_span = s > 0`` (struct-N2V), the pixels at offsets
    ±1..±s along ``struct_axis`` from each chosen pixel (inside the patch) get values drawn
    uniformly among the patch's pixels (the same random pixel for every channel); these line
    pixels are also excluded from the neighbours used for the replacement above, so that no
    noise correlated with the hidden pixel leaks into its input. The loss mask still marks
    only the chosen pixels.

    Parameters
    ----------
    patch : ndarray, shape (C, *spatial)
        Float patch; all channels are masked at the same positions. Not modified.
    rng : numpy.random.Generator
        The only source of randomness.
    fraction : float
        Fraction of masked pixels (default 64 per 64x64 patch, as in the paper).
    window : int
        Odd side of the neighbourhood window (>= 3).
    replacement : {"uniform", "median"}
    struct_axis : int or None
        Spatial axis (0-based, channel axis not counted) of the struct-N2V line.
    struct_span : int
        Half-length ``s`` of the struct-N2V line; 0 disables it.

    Returns
    -------
    masked : ndarray, shape (C, *spatial), dtype of ``patch``
        The masked copy of the patch (network input).
    mask : ndarray of float32, shape (*spatial)
        1 at the masked pixels (where the loss is taken), 0 elsewhere.
    """
    _check_mask_args(patch, window, replacement, struct_axis, struct_span)
    spatial = patch.shape[1:]
    coords = stratified_coords(spatial, fraction, rng)  # (N, ndim)
    span = struct_span if struct_span > 0 else 0
    axis = struct_axis if span > 0 else 0
    lo, hi = _clipped_windows(coords, spatial, window, axis, span)

    masked = patch.copy()
    if span > 0:
        _hide_struct_lines(patch, masked, coords, axis, span, rng)
    centre_index = (slice(None),) + tuple(coords.T)
    if replacement == "uniform":
        masked[centre_index] = patch[(slice(None),) + tuple(_uniform_neighbours(coords, lo, hi, axis, span, rng).T)]
    else:
        masked[centre_index] = _median_neighbours(patch, coords, window, struct_axis, span).astype(patch.dtype)

    mask = np.zeros(spatial, dtype=np.float32)
    mask[tuple(coords.T)] = 1.0
    return masked, mask
