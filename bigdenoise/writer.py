"""Output storage: create a chunk-aligned Zarr v3 array (or OME-Zarr image) and write blocks."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from .errors import OutputError
from .ome import ome_metadata, read_multiscales
from .channels import AxisView
from .volume import Volume

OUTPUT_DTYPES = ("float32", "float16", "input", "uint8", "uint16", "int16", "int32")


@dataclass(frozen=True)
class OutputSpec:
    """Where and how the denoised volume is written.

    ``array_path`` is the Zarr array inside ``path`` (``""`` when the store root is the array,
    ``"0"`` for an OME-Zarr image). ``shape`` and ``chunks`` are the volume's; for an input with
    a channel axis (``Volume.layout``) the stored array has the input's axes and ``fixed`` says
    where this channel's voxels go (:class:`channels.AxisView`), ``part`` prefixes its done records.
    """

    path: str
    array_path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    fixed: tuple[int | None, ...] | None = None
    part: str = ""

    def open(self, mode: str = "r+") -> zarr.Array | AxisView:
        root = zarr.open(self.path, mode=mode)
        array = root if not self.array_path else root[self.array_path]
        return array if self.fixed is None else AxisView(array, self.fixed)


def channel_spec(spec: OutputSpec, volume: Volume) -> OutputSpec:
    """``spec`` for one of ``volume.channel_volumes()``: where that channel is written in the
    output and its own done records (several channels share one block grid)."""
    if volume.layout is None:
        return spec
    several = len(volume.layout.channels) > 1
    return OutputSpec(spec.path, spec.array_path, spec.shape, spec.chunks, spec.dtype, volume.layout.output_fixed,
                      f"c{volume.layout.channel}_" if several else "")


def resolve_dtype(dtype: str, input_dtype: np.dtype) -> np.dtype:
    if dtype not in OUTPUT_DTYPES:
        raise OutputError(f"output dtype {dtype!r} is not supported; choose one of {', '.join(OUTPUT_DTYPES)}")
    return np.dtype(input_dtype) if dtype == "input" else np.dtype(dtype)


def to_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float32 predictions to ``dtype``, rounding and clipping to its range for integers."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


def output_chunks(volume: Volume, chunks: tuple[int, ...] | None,
                  default: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The output's chunk shape: ``chunks``, else ``default``, else the input's; clipped to the volume."""
    if chunks is not None and (len(chunks) != volume.ndim or any(int(c) < 1 for c in chunks)):
        raise OutputError(f"output chunks {tuple(chunks)} must have {volume.ndim} positive sizes, one per axis "
                          f"{volume.axes}")
    return tuple(min(int(c), n) for c, n in zip(chunks or default or volume.chunks, volume.shape))


def create_array(path: str | Path, volume: Volume, chunks: tuple[int, ...], dtype: np.dtype,
                 attributes: dict, fill_value: float = 0) -> zarr.Array:
    """A plain Zarr v3 array at ``path`` of ``volume``'s shape, recording its axes (also as
    dimension names), scale, units and translation next to ``attributes``. For an input with a
    channel axis (``volume.layout``): the input's axes, with the chosen channels along ``C``
    (``chunks`` are the volume's; 1 along the axes it does not see)."""
    meta = volume.layout or volume
    shape = volume.shape
    if volume.layout is not None:
        shape = volume.layout.output_shape
        kept = iter(chunks)
        chunks = tuple(1 if f is not None else next(kept) for f in volume.layout.fixed)
    attrs = {"axes": meta.axes, **attributes}
    for key in ("scale", "units", "translation"):
        if getattr(meta, key) is not None:
            attrs[key] = list(getattr(meta, key))
    return zarr.create_array(store=str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                             attributes=attrs, dimension_names=tuple(meta.axes.lower()), zarr_format=3)


def create_output(path: str | Path, volume: Volume, *, chunks: tuple[int, ...] | None = None,
                  dtype: str = "float32", exist_ok: bool = False, attributes: dict | None = None,
                  fill_value: float = 0, as_ome: bool = False, ngff: str = "0.5") -> OutputSpec:
    """Create the output for ``volume`` in the folder ``path`` (an ``outputs.Destination``'s
    started ``work``): a Zarr v3 array of the volume's shape, or an OME-Zarr image (level ``0``,
    axes, scale and units copied) when the input is OME-Zarr or ``as_ome`` asks for one: NGFF
    ``ngff`` (``"0.5"`` in Zarr v3, ``"0.4"`` in Zarr v2).

    With ``exist_ok`` an array already there is reused (for resuming): its shape, chunks and dtype
    must match. Chunks never written (skipped background) read as ``fill_value``.
    """
    path = Path(path)
    out_dtype = resolve_dtype(dtype, volume.dtype)
    chunks = output_chunks(volume, chunks)
    ome = volume.ome is not None or as_ome
    array_path = "0" if ome else ""
    spec = channel_spec(OutputSpec(str(path), array_path, tuple(volume.shape), chunks, out_dtype.str), volume)
    if exist_ok and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file()):
        try:
            arr = spec.open("r")
        except Exception as exc:  # noqa: BLE001 - any failure means it cannot be continued
            raise OutputError(f"{path} cannot be continued: its Zarr array does not open ({exc})") from None
        if arr.shape != spec.shape or arr.chunks != spec.chunks or arr.dtype != out_dtype:
            raise OutputError(
                f"{path} exists with shape {arr.shape}, chunks {arr.chunks}, dtype {arr.dtype}, but this run "
                f"writes {spec.shape}, {spec.chunks}, {out_dtype}; use --overwrite to replace it"
            )
        return spec
    fill = to_dtype(np.asarray(fill_value, dtype=np.float32), out_dtype).item()
    if not ome:
        create_array(path, volume, chunks, out_dtype, {"bigdenoise": attributes or {}}, fill)
    else:
        metadata = ome_metadata(volume, ngff)
        group = zarr.create_group(store=str(path), zarr_format=2 if ngff == "0.4" else 3)
        shape, full_chunks = spec.shape, chunks
        if volume.layout is not None:
            shape, kept = volume.layout.output_shape, iter(chunks)
            full_chunks = tuple(1 if f is not None else next(kept) for f in volume.layout.fixed)
        create_level(group, "0", shape, full_chunks, out_dtype, fill,
                     [a["name"] for a in read_multiscales(metadata)[0]["axes"]])
        group.attrs.update({**metadata, "bigdenoise": attributes or {}})
    return spec


def create_level(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype,
                 fill_value: float, dimension_names: list[str]) -> zarr.Array:
    """One level array of an OME-Zarr image group: Zarr v3 with dimension names (NGFF 0.5), or
    Zarr v2 with ``/``-separated chunk keys (NGFF 0.4)."""
    if group.metadata.zarr_format == 2:
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                                  chunk_key_encoding={"name": "v2", "separator": "/"})
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                              dimension_names=dimension_names)


def write_block(array: zarr.Array, box, data: np.ndarray) -> None:
    """Write one block (a whole number of chunks) into the output array."""
    array[box.slices] = data


# Done records: one empty marker file per finished block, listed in one call when resuming.
DONE_DIR = ".bigdenoise-done"


def _done_dir(spec: OutputSpec) -> Path:
    return Path(spec.path) / DONE_DIR


def mark_done(spec: OutputSpec, index: tuple[int, ...]) -> None:
    """Record that block ``index`` is completely written (called after its write returned)."""
    d = _done_dir(spec)
    d.mkdir(exist_ok=True)
    (d / (spec.part + "-".join(map(str, index)))).touch()


def load_done(spec: OutputSpec, grid: tuple[int, ...]) -> np.ndarray:
    """Boolean array over the block grid: which blocks a previous run finished."""
    done = np.zeros(grid, dtype=bool)
    d = _done_dir(spec)
    if not d.is_dir():
        return done
    for name in os.listdir(d):
        if spec.part and not name.startswith(spec.part):
            continue
        try:
            index = tuple(int(v) for v in name[len(spec.part):].split("-"))
            done[index] = True
        except (ValueError, IndexError):
            continue  # not one of ours, or from another block grid: redo rather than trust it
    return done


def run_record(spec: OutputSpec) -> dict:
    """What the run that created the output recorded about itself (``attrs["bigdenoise"]``)."""
    root = zarr.open(spec.path, mode="r")
    return dict(root.attrs.get("bigdenoise", {}))


def finish_output(spec: OutputSpec) -> None:
    """Mark the output complete and drop its done records."""
    root = zarr.open(spec.path, mode="r+")
    record = dict(root.attrs.get("bigdenoise", {}))
    record["complete"] = True
    root.attrs["bigdenoise"] = record
    shutil.rmtree(_done_dir(spec), ignore_errors=True)
