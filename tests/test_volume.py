"""Tests of bigdenoise.volume and bigdenoise.convert on real Zarr and TIFF files."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from bigdenoise.convert import convert, copy_block_shape, describe, format_description
from bigdenoise.errors import InputError, OutputError
from bigdenoise.geometry import Box
from bigdenoise.volume import Volume, check_finite_sample, open_volume


def _data(shape: tuple[int, ...], dtype: str = "uint16") -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 1000, size=shape).astype(dtype)


def _write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...], zarr_format: int = 3, **attrs) -> None:
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks, zarr_format=zarr_format)
    arr[:] = data
    arr.attrs.update(attrs)


def _write_ome(path: Path, data: np.ndarray) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    level0 = group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(4, 16, 16))
    level0[:] = data
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "z", "type": "space", "unit": "micrometer"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}],
        }
    ]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiff_stack(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = _data((6, 70, 90))
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, tile=(32, 32))
    return path, data


# --------------------------------------------------------------------------- opening


def test_zarr_v3_array_root(tmp_path: Path) -> None:
    data = _data((5, 40, 50))
    _write_zarr(tmp_path / "vol.zarr", data, (2, 16, 16), axes="ZYX")
    v = open_volume(tmp_path / "vol.zarr")
    assert v.axes == "ZYX" and v.shape == data.shape and v.dtype == np.uint16
    assert v.chunks == (2, 16, 16)
    assert v.path == str((tmp_path / "vol.zarr").absolute())
    assert v.spatial_axes == "ZYX" and v.spatial_shape == data.shape and v.sample_axes == ""
    assert v.nbytes == data.nbytes
    np.testing.assert_array_equal(v.read(Box.from_shape(v.shape)), data)


def test_zarr_v2_array(tmp_path: Path) -> None:
    data = _data((3, 30, 20), "float32")
    _write_zarr(tmp_path / "v2.zarr", data, (1, 10, 10), zarr_format=2)
    v = open_volume(str(tmp_path / "v2.zarr"), axes="syx")
    assert v.axes == "SYX" and v.sample_axes == "S" and v.spatial_axes == "YX"
    assert v.spatial_shape == (30, 20)
    np.testing.assert_array_equal(v.read(Box((1, 5, 3), (2, 10, 7))), data[1:3, 5:15, 3:10])


def test_nested_array_in_store(tmp_path: Path) -> None:
    data = _data((40, 30))
    group = zarr.open_group(str(tmp_path / "store.zarr"), mode="w")
    arr = group.create_array("group/array", shape=data.shape, dtype=data.dtype, chunks=(16, 16))
    arr[:] = data
    v = open_volume(tmp_path / "store.zarr" / "group" / "array")
    assert v.axes == "YX"  # 2D defaults to YX
    np.testing.assert_array_equal(v.read(Box.from_shape(v.shape)), data)


def test_store_without_zarr_suffix(tmp_path: Path) -> None:
    data = _data((20, 30))
    _write_zarr(tmp_path / "plain", data, (10, 10))
    np.testing.assert_array_equal(open_volume(tmp_path / "plain").read(Box((0, 0), (20, 30))), data)


def test_ome_zarr_04_group(tmp_path: Path) -> None:
    data = _data((8, 32, 32))
    _write_ome(tmp_path / "img.ome.zarr", data)
    v = open_volume(tmp_path / "img.ome.zarr")
    assert v.axes == "ZYX"
    assert v.scale == (2.0, 0.5, 0.5)
    assert v.units == ("micrometer",) * 3
    assert v.ome is not None and "multiscales" in v.ome
    np.testing.assert_array_equal(v.read(Box((1, 2, 3), (3, 4, 5))), data[1:4, 2:6, 3:8])
    # A level array inside the image group takes its axes from the group.
    level = open_volume(tmp_path / "img.ome.zarr" / "0")
    assert level.axes == "ZYX" and level.scale == (2.0, 0.5, 0.5)
    # given axes win where they only rename the plane axis (OME-Zarr has no S; a stack of images
    # is stored as z or t): the voxel size along it is dropped, the in-plane ones kept
    frames = open_volume(tmp_path / "img.ome.zarr", axes="SYX")
    assert frames.axes == "SYX" and frames.scale == (1.0, 0.5, 0.5)
    assert frames.units == (None, "micrometer", "micrometer")
    with pytest.raises(InputError, match="disagree"):
        open_volume(tmp_path / "img.ome.zarr", axes="CYX")


def test_given_axes_rename_the_plane_axis_of_a_zarr_but_never_y_x_or_c(tmp_path: Path) -> None:
    _write_zarr(tmp_path / "s.zarr", _data((3, 16, 16)), (1, 16, 16), axes="SYX")
    assert open_volume(tmp_path / "s.zarr", axes="ZYX").axes == "ZYX"
    with pytest.raises(InputError, match="disagree"):
        open_volume(tmp_path / "s.zarr", axes="CYX")


def test_ome_zarr_05_group(tmp_path: Path) -> None:
    data = _data((3, 16, 16))
    group = zarr.open_group(str(tmp_path / "img5.zarr"), mode="w", zarr_format=3)
    group.create_array("s0", shape=data.shape, dtype=data.dtype, chunks=(1, 16, 16))[:] = data
    axes = [{"name": "t", "type": "time"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    datasets = [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 3, 3]}]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    v = open_volume(tmp_path / "img5.zarr")
    assert v.axes == "TYX" and v.scale == (1.0, 3.0, 3.0) and v.units == (None, None, None)
    assert open_volume(tmp_path / "img5.zarr", axes="SYX").axes == "SYX"  # NGFF has no S: a stack is t or z
    np.testing.assert_array_equal(v.read(Box.from_shape(v.shape)), data)


def test_ome_channel_axis_needs_a_choice(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="w")
    group.create_array("0", shape=(2, 8, 8), dtype="uint8")
    axes = [{"name": "c", "type": "channel"}, {"name": "y"}, {"name": "x"}]
    group.attrs["multiscales"] = [{"axes": axes, "datasets": [{"path": "0"}]}]
    with pytest.raises(InputError, match="has 2 channels .*--channel K"):
        open_volume(tmp_path / "c.zarr")
    assert open_volume(tmp_path / "c.zarr", channel=1).axes == "YX"
    single = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    single.create_array("0", shape=(1, 1, 8, 8), dtype="uint8")
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "y"}, {"name": "x"}]
    single.attrs["multiscales"] = [{"axes": axes, "datasets": [{"path": "0"}]}]
    v = open_volume(tmp_path / "s.zarr")  # singleton t and c: squeezed, no --channel needed
    assert v.axes == "YX" and v.shape == (8, 8) and v.layout.axes == "TCYX"
    with pytest.raises(InputError, match="no channel axis"):
        open_volume(single["0"], axes="TZYX", channel=0)


def test_tiff_lazy(tiff_stack: tuple[Path, np.ndarray]) -> None:
    path, data = tiff_stack
    v = open_volume(path, axes="ZYX")
    assert isinstance(v.array, zarr.Array)  # a zarr array over tifffile's store: nothing read yet
    assert v.chunks == (1, 32, 32)
    assert v.shape == data.shape and v.dtype == data.dtype
    np.testing.assert_array_equal(v.read(Box((2, 10, 20), (3, 50, 60))), data[2:5, 10:60, 20:80])
    np.testing.assert_array_equal(v.read(Box.from_shape(v.shape)), data)


def test_tiff_pages_and_2d(tmp_path: Path) -> None:
    stack = _data((4, 20, 30))
    tifffile.imwrite(tmp_path / "pages.tiff", stack, photometric="minisblack")  # strips, a page per plane
    v = open_volume(tmp_path / "pages.tiff", axes="SYX")
    np.testing.assert_array_equal(v.read(Box((1, 0, 0), (2, 20, 30))), stack[1:3])
    tifffile.imwrite(tmp_path / "image.tif", stack[0])
    assert open_volume(tmp_path / "image.tif").axes == "YX"


def test_numpy_and_dask(tmp_path: Path) -> None:
    data = _data((3, 300, 40), "float32")
    v = open_volume(data, axes="ZYX")
    assert v.source == "<numpy array>" and v.path is None
    assert v.chunks == (3, 256, 40)
    out = v.read(Box((0, 0, 0), (1, 2, 2)))
    out[:] = -1
    assert data[0, 0, 0] != -1  # read returns a copy

    d = da.from_array(data, chunks=(1, 100, 20))
    w = open_volume(d, axes="zyx")
    assert w.source == "<dask array>" and w.chunks == (1, 100, 20)
    box = Box((1, 50, 5), (2, 200, 30))
    np.testing.assert_array_equal(w.read(box), data[box.slices])
    assert pickle.loads(pickle.dumps(w)).read(box).shape == box.shape


def test_chunk_grid_and_box(tmp_path: Path) -> None:
    _write_zarr(tmp_path / "g.zarr", _data((10, 33, 20)), (4, 16, 20), axes="ZYX")
    v = open_volume(tmp_path / "g.zarr")
    assert v.chunk_grid() == (3, 3, 1)
    assert v.chunk_box((0, 0, 0)) == Box((0, 0, 0), (4, 16, 20))
    assert v.chunk_box((2, 2, 0)) == Box((8, 32, 0), (2, 1, 20))
    with pytest.raises(ValueError):
        v.chunk_box((3, 0, 0))
    with pytest.raises(ValueError):
        v.read(Box((0, 0, 0), (11, 1, 1)))
    with pytest.raises(ValueError):
        v.read(Box((-1, 0, 0), (1, 1, 1)))


def test_pickle_reopens_path_volumes(tmp_path: Path, tiff_stack: tuple[Path, np.ndarray]) -> None:
    path, data = tiff_stack
    for v in (open_volume(path, axes="ZYX"), open_volume(str(path), axes="ZYX")):
        w = pickle.loads(pickle.dumps(v))
        assert isinstance(w, Volume) and w.axes == "ZYX" and w.path == v.path
        np.testing.assert_array_equal(w.read(Box((1, 0, 0), (2, 70, 90))), data[1:3])
    _write_ome(tmp_path / "img.zarr", data[:, :32, :32])
    w = pickle.loads(pickle.dumps(open_volume(tmp_path / "img.zarr")))
    assert w.scale == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(w.read(Box.from_shape(w.shape)), data[:, :32, :32])


# --------------------------------------------------------------------------- errors


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        open_volume(tmp_path / "nope.zarr")


def test_not_zarr_or_tiff(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a Zarr array"):
        open_volume(tmp_path / "empty")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="TIFF"):
        open_volume(tmp_path / "bad.tif")


def test_axes_errors(tmp_path: Path) -> None:
    data = _data((4, 8, 8))
    with pytest.raises(InputError, match="ZYX"):
        open_volume(data, axes="XYZ")
    with pytest.raises(InputError, match="dimensions"):
        open_volume(data, axes="YX")
    with pytest.raises(InputError, match="cannot tell the axes.*--axes ZYX"):
        open_volume(data)
    with pytest.raises(InputError, match="data type"):
        open_volume(data.astype(np.complex64), axes="ZYX")
    with pytest.raises(InputError, match="data type"):
        open_volume(data.astype(bool), axes="ZYX")
    with pytest.raises(InputError, match="length 0"):
        open_volume(np.zeros((0, 4), np.float32))


def test_group_not_ome_lists_arrays(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "multi.zarr"), mode="w")
    group.create_array("raw", shape=(4, 4), dtype="uint8")
    group.create_array("sub/labels", shape=(4, 4), dtype="uint8")
    with pytest.raises(InputError) as info:
        open_volume(tmp_path / "multi.zarr")
    message = str(info.value)
    assert "not an OME-Zarr image" in message
    assert "multi.zarr/raw" in message and "multi.zarr/sub/labels" in message


def test_check_finite_sample() -> None:
    nan = np.full((4, 300, 300), np.nan, np.float32)
    with pytest.raises(InputError, match="only NaN/inf"):
        check_finite_sample(open_volume(nan, axes="ZYX"))
    part = np.ones((4, 300, 300), np.float32)
    part[2, 100, 100] = np.inf
    # Four chunks of (4, 256, 256) hold every voxel: the one infinite voxel is found and counted.
    with pytest.raises(InputError, match=r"NaN/inf values \(0.00% of 360,000"):
        check_finite_sample(open_volume(part, axes="ZYX"))
    check_finite_sample(open_volume(np.ones((4, 300, 300), np.float32), axes="ZYX"))
    check_finite_sample(open_volume(np.zeros((4, 4), np.uint8)))


# --------------------------------------------------------------------------- convert / info


def test_convert_tiff_to_zarr(tmp_path: Path, tiff_stack: tuple[Path, np.ndarray]) -> None:
    path, data = tiff_stack
    before = _sha(path)
    out = convert(path, tmp_path / "out.zarr", axes="ZYX", chunks=(2, 32, 64), progress=False)
    assert _sha(path) == before
    assert out.axes == "ZYX" and out.chunks == (2, 32, 64)
    arr = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert arr.metadata.zarr_format == 3 and arr.attrs["axes"] == "ZYX"
    np.testing.assert_array_equal(arr[:], data)
    reopened = open_volume(tmp_path / "out.zarr")  # axes come from attrs
    assert reopened.axes == "ZYX"

    with pytest.raises(OutputError, match="already exists"):
        convert(path, tmp_path / "out.zarr", axes="ZYX", progress=False)
    again = convert(path, tmp_path / "out.zarr", axes="ZYX", overwrite=True, progress=False)
    assert again.chunks == (6, 70, 90)  # default chunks clipped to the shape


def test_convert_refuses_overlap_and_keeps_scale(tmp_path: Path) -> None:
    data = _data((8, 32, 32))
    _write_ome(tmp_path / "img.zarr", data)
    with pytest.raises(OutputError, match="would be or sit inside the input"):
        convert(tmp_path / "img.zarr", tmp_path / "img.zarr", overwrite=True, progress=False)
    with pytest.raises(OutputError, match="would be or sit inside the input"):
        convert(tmp_path / "img.zarr" / "0", tmp_path / "img.zarr" / "copy", progress=False)
    out = convert(tmp_path / "img.zarr", tmp_path / "copy.zarr", progress=False)
    assert out.scale == (2.0, 0.5, 0.5) and out.units == ("micrometer",) * 3
    np.testing.assert_array_equal(out.read(Box.from_shape(out.shape)), data)


def test_copy_block_shape_bounded() -> None:
    # A wide 3D volume: blocks shrink along Z, then Y, then X, staying chunk-aligned.
    assert copy_block_shape((1000, 20000, 20000), (64, 256, 256), 2, budget=256 * 2**20) == (64, 256, 8192)
    assert copy_block_shape((1000, 2000, 2000), (64, 256, 256), 2, budget=256 * 2**20) == (64, 1024, 2000)
    assert copy_block_shape((10, 10), (5, 5), 1, budget=1000) == (10, 10)


def test_describe(tmp_path: Path) -> None:
    data = np.arange(4 * 40 * 40, dtype=np.float32).reshape(4, 40, 40)
    data[0] = np.nan
    _write_ome(tmp_path / "img.zarr", data)
    d = describe(open_volume(tmp_path / "img.zarr"), n_chunks=100)
    assert d["shape"] == (4, 40, 40) and d["dtype"] == "float32" and d["axes"] == "ZYX"
    assert d["nbytes"] == data.nbytes and d["size"] == "25.0 KiB"
    it = d["intensity"]
    assert it["n_sampled"] == data.size  # fewer chunks than n_chunks: everything sampled
    assert it["nan_fraction"] == pytest.approx(0.25)
    assert it["min"] == 1600 and it["max"] == data.size - 1
    text = format_description(d)
    for word in ("shape", "4 x 40 x 40", "float32", "ZYX", "25.0 KiB", "Z=2 micrometer", "p1/p50/p99", "25.0% NaN"):
        assert word in text
