"""``preview.png``: a quick look at a prediction, written inside every ``predict`` output.

Orthogonal mid-planes of the predicted box (XY, and XZ / YZ for a volume with Z), each as
input | output side by side with one contrast for both (percentiles of the input planes shown).
Only those planes are read, lazily, from the input and from the written output, each cut to a
central window of at most :data:`MAX_SIDE` voxels per side, so a terabyte volume costs a few
chunks. The sheet is drawn with Pillow and stored as an 8-bit grey PNG (small).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes
from .geometry import Box
from .volume import Volume
from .writer import OutputSpec, channel_spec

log = logging.getLogger(__name__)

PREVIEW_FILE = "preview.png"
MAX_SIDE = 512  # voxels per side of a plane's window
PERCENTILES = (1.0, 99.5)  # the shared display range, of the input planes shown
PANEL = 200  # pixels per side of a drawn panel, at most
MARGIN, TITLE = 8, 14  # pixels between panels; above each panel for its title


@dataclass(frozen=True)
class Plane:
    """One orthogonal plane: ``name`` (``"XY"``), ``box`` (volume coordinates, one voxel thick
    along every axis but ``rows`` and ``cols``, the axis indices shown vertically and across)."""

    name: str
    box: Box
    rows: int
    cols: int


def mid_planes(axes: str, box: Box) -> list[Plane]:
    """The orthogonal mid-planes of ``box`` (axes ``axes``): XY, then XZ and YZ when there is a Z
    axis longer than one; sample axes (S, T) at their middle; windows of at most MAX_SIDE."""
    where = {a: i for i, a in enumerate(axes)}
    views = [("XY", "Y", "X")]
    if "Z" in where and box.shape[where["Z"]] > 1:
        views += [("XZ", "Z", "X"), ("YZ", "Z", "Y")]
    planes = []
    for name, row, col in views:
        shown = (where[row], where[col])
        lo, size = [], []
        for i, (o, n) in enumerate(zip(box.offset, box.shape)):
            s = min(n, MAX_SIDE) if i in shown else 1
            lo.append(o + (n - s) // 2 if i in shown else o + n // 2)
            size.append(s)
        planes.append(Plane(name, Box(tuple(lo), tuple(size)), *shown))
    return planes


def _as_2d(data: np.ndarray, plane: Plane) -> np.ndarray:
    image = np.asarray(data, np.float32).reshape(plane.box.shape[plane.rows], plane.box.shape[plane.cols])
    return image  # rows before cols: the box's axes are in volume order and Z/Y come before X


def write_preview(folder: str | Path, volume: Volume, spec: OutputSpec, region: Box | None = None) -> Path | None:
    """Write ``folder/preview.png`` for the prediction of ``volume`` (its box ``region``, a ROI,
    when given) stored as ``spec``; the first chosen channel of an input with several. Returns
    its path, or None (with a warning in the log) when it could not be drawn: a preview never
    fails a finished prediction."""
    try:
        return _write(Path(folder), volume, spec, region)
    except Exception as exc:  # noqa: BLE001 - the prediction is written; the preview is a convenience
        log.warning("preview.png not written: %s: %s", type(exc).__name__, exc)
        return None


def _write(folder: Path, volume: Volume, spec: OutputSpec, region: Box | None) -> Path:
    vol = volume.channel_volumes()[0]
    region = region or Box.from_shape(vol.shape)
    output = channel_spec(spec, vol).open("r")
    panels = []
    for plane in mid_planes(vol.axes, region):
        inp = _as_2d(vol.read(plane.box), plane)
        out = _as_2d(output[plane.box.relative_to(region.offset).slices], plane)
        panels.append((plane, inp, out))
    lo, hi = np.percentile(np.concatenate([p[1].ravel() for p in panels]), PERCENTILES)
    png = render(panels, float(lo), float(hi), vol.scale, vol.axes)
    path = folder / PREVIEW_FILE
    atomic_write_bytes(path, png)
    return path


def render(panels: list[tuple[Plane, np.ndarray, np.ndarray]], lo: float, hi: float,
           scale: tuple[float, ...] | None, axes: str) -> bytes:
    """The preview's PNG bytes: one row per plane, input | output, grey levels ``lo..hi``, each
    panel at most :data:`PANEL` pixels per side, titled; planes drawn with their voxels' aspect
    (from ``scale``) so anisotropic Z looks right."""
    from PIL import Image, ImageDraw

    drawn = []
    for plane, inp, out in panels:
        aspect = 1.0 if scale is None else scale[plane.rows] / scale[plane.cols]
        where = ", ".join(f"{axes[i].lower()}={o}" for i, (o, n) in enumerate(zip(plane.box.offset, plane.box.shape))
                          if n == 1)
        drawn.append([(f"{plane.name} {what}" + (f" ({where})" if where else ""), _panel(image, lo, hi, aspect))
                      for image, what in ((inp, "input"), (out, "output"))])
    heights = [max(p.height for _, p in row) for row in drawn]
    width = max(MARGIN + sum(p.width + MARGIN for _, p in row) for row in drawn)
    sheet = Image.new("L", (width, MARGIN + sum(TITLE + h + MARGIN for h in heights)), 255)
    draw = ImageDraw.Draw(sheet)
    y = MARGIN
    for row, height in zip(drawn, heights):
        x = MARGIN
        for title, panel in row:
            draw.text((x, y), title, fill=0)
            sheet.paste(panel, (x, y + TITLE))
            x += panel.width + MARGIN
        y += TITLE + height + MARGIN
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _panel(image: np.ndarray, lo: float, hi: float, aspect: float):
    """``image`` (rows, cols) as an 8-bit PIL image on ``lo..hi``, scaled to fit PANEL x PANEL
    with rows ``aspect`` times as tall as columns are wide (averaged when shrunk)."""
    from PIL import Image

    grey = np.clip((np.asarray(image, np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    picture = Image.fromarray(np.round(grey * 255).astype(np.uint8))  # 8-bit grey ("L")
    rows, cols = image.shape
    zoom = PANEL / max(rows * aspect, cols)
    size = (max(1, round(cols * zoom)), max(1, round(rows * aspect * zoom)))
    shrink = size[0] < cols or size[1] < rows
    return picture.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.NEAREST)
