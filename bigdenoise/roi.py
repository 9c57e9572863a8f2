"""A region of interest for ``predict --roi``: parse it, and describe the box-shaped output.

A ROI is one box of the volume. ``predict`` plans tiles and halos on the *whole* volume and
runs only the blocks of a block grid laid over the box (``tiling.iter_blocks(..., origin=)``), so
every tile reads its real context from the volume around the box, mirrored only at the
volume's own borders: the output equals the same box of a full run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .axes import axis_roles
from .errors import ConfigError
from .geometry import Box
from .volume import Volume

_RANGE = re.compile(r"\s*(\d*)\s*:\s*(\d*)\s*")


def parse_roi(roi: str | Sequence[Any], volume: Volume) -> Box:
    """The box ``roi`` names in ``volume`` (all of its axes, ``volume.axes`` order).

    Parameters
    ----------
    roi : ``"z0:z1,y0:y1,x0:x1"``: one half-open range per axis of ``volume.axes`` (``S``/``T``
        included), or one per spatial axis only (the sample axes are then taken whole). An
        empty end means the axis's end (``":"`` is the whole axis, ``"10:"`` from 10 on). From
        Python also a sequence of ``slice``s or ``(start, stop)`` pairs.
    volume : the volume the engine sees (a channel axis ``C`` already dropped: the box holds
        every chosen channel).

    Raises
    ------
    ConfigError
        One line naming what is wrong: a malformed range, the wrong count, an empty box or one
        reaching outside the volume.
    """
    text = roi if isinstance(roi, str) else ",".join(_range_text(r) for r in roi)
    parts = text.split(",") if text.strip() else []
    spatial = [i for i, r in enumerate(axis_roles(volume.axes)) if r == "spatial"]
    example = ",".join(f"0:{n}" for n in volume.shape)
    if len(parts) == len(volume.axes):
        axes = list(range(volume.ndim))
    elif len(parts) == len(spatial):
        axes = spatial
    else:
        raise ConfigError(f"--roi {text} has {len(parts)} ranges; {volume.source} has axes {volume.axes} (shape "
                          f"{volume.shape}): give one range start:stop per axis, e.g. --roi {example}")
    lo, hi = [0] * volume.ndim, list(volume.shape)
    for axis, part in zip(axes, parts):
        m = _RANGE.fullmatch(part)
        letter, n = volume.axes[axis], volume.shape[axis]
        if m is None:
            raise ConfigError(f"--roi {text}: {part.strip()!r} ({letter}) is not a range start:stop of whole "
                              f"numbers, e.g. --roi {example}")
        start = int(m.group(1)) if m.group(1) else 0
        stop = int(m.group(2)) if m.group(2) else n
        if not 0 <= start < stop <= n:
            raise ConfigError(f"--roi {text}: {letter} {start}:{stop} is not a non-empty range inside 0:{n} "
                              f"({volume.source} has shape {volume.shape}, axes {volume.axes})")
        lo[axis], hi[axis] = start, stop
    return Box(tuple(lo), tuple(h - o for o, h in zip(lo, hi)))


def _range_text(r: Any) -> str:
    if isinstance(r, slice):
        if r.step not in (None, 1):
            raise ConfigError(f"--roi takes ranges without a step, not {r}")
        return f"{'' if r.start is None else r.start}:{'' if r.stop is None else r.stop}"
    start, stop = r
    return f"{start}:{stop}"


def roi_text(box: Box) -> str:
    """``box`` as ``--roi`` spells it (recorded in the output, compared on ``--resume``)."""
    return ",".join(f"{o}:{e}" for o, e in zip(box.offset, box.stop))


def roi_volume(volume: Volume, box: Box) -> Volume:
    """What the output of a ROI run describes: the box of ``volume`` as a volume of its own
    (shape ``box.shape``, the input's chunks, axes, scale and units) whose ``translation`` puts
    its first voxel where the box starts (``translation + offset * scale``, per axis); with a
    channel axis its ``layout`` describes the box the same way on the stored axes the engine sees
    (the channel and squeezed axes keep theirs). Its array is a lazy view (dask) of the box; it is
    not reopenable from a path."""
    import dask.array as da

    array = da.from_array(volume.array, chunks=volume.chunks)[box.slices]
    layout = volume.layout
    if layout is not None:
        engine_axes = [i for i, f in enumerate(layout.fixed) if f is None]  # in the engine's order
        offset, shape = [0] * len(layout.axes), list(layout.shape)
        for i, o, n in zip(engine_axes, box.offset, box.shape):
            offset[i], shape[i] = o, n
        layout = replace(layout, shape=tuple(shape),
                         translation=_moved(layout.translation, layout.scale, offset, len(layout.axes)))
    translation = _moved(volume.translation, volume.scale, box.offset, volume.ndim)
    return replace(volume, array=array, path=None, opened=(), translation=translation, layout=layout)


def _moved(translation: tuple[float, ...] | None, scale: tuple[float, ...] | None, offset: Sequence[int],
           ndim: int) -> tuple[float, ...]:
    """The translation of a box starting ``offset`` voxels into an image at ``translation``."""
    start = translation or (0.0,) * ndim
    scale = scale or (1.0,) * ndim
    return tuple(float(t + o * s) for t, o, s in zip(start, offset, scale))
