"""TIFF inputs: plane folders and globs, ImageJ and OME-TIFF axes and voxel sizes, kept in outputs."""

import numpy as np
import pytest
import tifffile
import zarr

import bigdenoise as bd
from bigdenoise.cli import main
from bigdenoise.errors import InputError
from bigdenoise.geometry import Box
from bigdenoise.volume import open_volume

from conftest import smooth_volume


def _planes(folder, data, name="plane_{}.tif", start=1):
    folder.mkdir()
    for i, plane in enumerate(data):
        tifffile.imwrite(folder / name.format(i + start), plane)
    return folder


@pytest.fixture
def stack():
    return (np.arange(40 * 24 * 20) % 251).astype(np.uint16).reshape(40, 24, 20)


def test_a_folder_of_planes_equals_the_same_data_in_one_tiff(tmp_path, stack):
    folder = _planes(tmp_path / "planes", stack)  # plane_1 .. plane_40: natural, not lexical, order
    tifffile.imwrite(tmp_path / "one.tif", stack)
    for source in (folder, str(folder / "plane_*.tif")):
        vol = open_volume(source, axes="ZYX")
        assert vol.shape == stack.shape and vol.axes == "ZYX"
        np.testing.assert_array_equal(vol.read(Box.from_shape(vol.shape)), stack)
    whole = open_volume(tmp_path / "one.tif", axes="ZYX")
    np.testing.assert_array_equal(whole.read(Box.from_shape(whole.shape)), stack)


def test_a_missing_or_mis_sized_plane_is_named(tmp_path, stack):
    folder = _planes(tmp_path / "gap", stack)
    (folder / "plane_17.tif").unlink()
    with pytest.raises(InputError, match=r"planes \[17\] missing"):
        open_volume(folder, axes="ZYX")
    odd = _planes(tmp_path / "odd", stack)
    tifffile.imwrite(odd / "plane_9.tif", stack[0, :20])
    with pytest.raises(InputError, match="plane_9.tif holds a"):
        open_volume(odd, axes="ZYX")


def test_imagej_print_resolution_is_not_a_voxel_size_and_units_get_ome_zarr_names(tmp_path, stack):
    # ImageJ writes a TIFF's 1 dot per inch (or cm) as its calibration: that is "not calibrated"
    for unit in ("inch", "cm"):
        tifffile.imwrite(tmp_path / f"{unit}.tif", stack, imagej=True, resolution=(1, 1),
                         metadata={"unit": unit, "axes": "ZYX"})
        vol = open_volume(tmp_path / f"{unit}.tif")
        assert vol.scale is None and vol.units is None, unit
    # a real calibration in cm is kept, under the unit's OME-Zarr name; an unknown unit is dropped
    tifffile.imwrite(tmp_path / "cm_real.tif", stack, imagej=True, resolution=(1e4, 1e4),
                     metadata={"unit": "cm", "axes": "ZYX"})
    vol = open_volume(tmp_path / "cm_real.tif")
    assert vol.scale == pytest.approx((1.0, 1e-4, 1e-4)) and vol.units == (None, "centimeter", "centimeter")
    tifffile.imwrite(tmp_path / "odd.tif", stack, imagej=True, resolution=(2, 2), metadata={"unit": "furlong"})
    assert open_volume(tmp_path / "odd.tif", axes="ZYX").units == (None,) * 3


def test_imagej_and_ome_tiff_give_axes_and_voxel_size(tmp_path, stack):
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "ome.tif", stack, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.4, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 2.0})
    for name in ("ij.tif", "ome.tif"):
        vol = open_volume(tmp_path / name)  # no axes needed
        assert vol.axes == "ZYX"
        assert vol.scale == pytest.approx((2.0, 0.4, 0.4)) and vol.units == ("micrometer",) * 3
    # ImageJ calls every stack's planes slices: given axes win, the in-plane sizes stay
    frames = open_volume(tmp_path / "ij.tif", axes="SYX")
    assert frames.axes == "SYX" and frames.scale == pytest.approx((1.0, 0.4, 0.4))
    tifffile.imwrite(tmp_path / "plain.tif", stack)
    with pytest.raises(InputError, match="cannot tell the axes"):
        open_volume(tmp_path / "plain.tif")


@pytest.mark.slow
def test_a_plane_folder_is_denoised_and_the_voxel_size_kept(tmp_path, model_3d, capsys):
    model_dir, _, _ = model_3d
    data, _ = smooth_volume((24, 40, 36), seed=1)
    folder = _planes(tmp_path / "planes", data.astype(np.float32))
    out = tmp_path / "out.zarr"
    assert main(["predict", str(folder / "*.tif"), "--model", str(model_dir), "--out", str(out), "--axes", "ZYX",
                 "--cluster", "threads", "--quiet"]) == 0
    assert zarr.open_array(str(out), mode="r").shape == data.shape
    # an output inside the folder of planes is refused, as for any input
    assert main(["predict", str(folder / "*.tif"), "--model", str(model_dir), "--out", str(folder / "o.zarr"),
                 "--axes", "ZYX", "--cluster", "threads", "--quiet"]) == 2
    tifffile.imwrite(tmp_path / "ij.tif", data.astype(np.float32), imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    bd.predict(tmp_path / "ij.tif", model_dir, tmp_path / "ij.zarr", cluster="threads", progress=False)
    written = zarr.open_array(str(tmp_path / "ij.zarr"), mode="r")
    assert written.attrs["scale"] == pytest.approx([2.0, 0.4, 0.4]) and written.attrs["units"] == ["micrometer"] * 3
    assert open_volume(tmp_path / "ij.zarr").scale == pytest.approx((2.0, 0.4, 0.4))


def test_a_tiff_without_axes_is_predicted_with_the_models_axes(tmp_path, model_2d, capsys):
    """`bigdenoise predict IN --model M --out O` with no --axes: a plain TIFF (no axes in its
    metadata) with as many dimensions as the model's axes (SYX) takes them; one with another
    number of dimensions still stops with one line."""
    model_dir, _, data = model_2d
    tifffile.imwrite(tmp_path / "plain.tif", data.astype(np.float32))
    out = tmp_path / "out.zarr"
    assert main(["predict", str(tmp_path / "plain.tif"), "--model", str(model_dir), "--out", str(out),
                 "--cluster", "threads", "--quiet"]) == 0, capsys.readouterr().err
    written = zarr.open_array(str(out), mode="r")
    assert written.shape == data.shape and written.attrs["axes"] == "SYX"
    tifffile.imwrite(tmp_path / "four.tif", data[None].astype(np.float32), photometric="minisblack")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "four.tif"), "--model", str(model_dir), "--out",
                 str(tmp_path / "four.zarr"), "--cluster", "threads", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot tell the axes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "four.zarr").exists()


def test_one_image_named_as_a_stack_trains_and_predicts_as_a_stack_of_one(tmp_path, capsys):
    """`bigdenoise train IN --axes SYX` and `predict IN --axes SYX` on a single 2D image: the
    leading sample axis names a stack of one, so both run and the output is the image's shape;
    a leading spatial axis (ZYX) is still refused with one line."""
    image, _ = smooth_volume((48, 56), seed=3)
    tifffile.imwrite(tmp_path / "one.tif", image.astype(np.float32))
    assert open_volume(tmp_path / "one.tif", "syx").axes == "YX"
    assert open_volume(tmp_path / "one.tif", "TYX").axes == "YX"
    model, out = tmp_path / "model", tmp_path / "out.zarr"
    assert main(["train", str(tmp_path / "one.tif"), "--method", "n2v", "--axes", "SYX", "--out", str(model),
                 "--steps", "2", "--batch-size", "2", "--patch", "32,32", "--quiet"]) == 0, capsys.readouterr().err
    assert main(["predict", str(tmp_path / "one.tif"), "--model", str(model), "--axes", "SYX", "--out", str(out),
                 "--quiet"]) == 0, capsys.readouterr().err
    assert zarr.open_array(str(out), mode="r").shape == image.shape
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "one.tif"), "--model", str(model), "--axes", "ZYX", "--out",
                 str(tmp_path / "z.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "have 3 letters" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_an_ome_zarr_suffix_gives_an_ome_zarr_image_whatever_the_input(tmp_path, model_3d):
    from ome_zarr_models.v05.image import Image

    model_dir, _, _ = model_3d
    data, _ = smooth_volume((24, 40, 36), seed=1)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    bd.predict(tmp_path / "ij.tif", model_dir, tmp_path / "out.ome.zarr", cluster="threads", progress=False)
    group = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    Image.from_zarr(group)  # validates the NGFF 0.5 metadata
    ms = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"] and ms["axes"][0]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([2.0, 0.4, 0.4])
    assert group["0"].shape == data.shape
    reopened = open_volume(tmp_path / "out.ome.zarr")
    assert reopened.axes == "ZYX" and reopened.scale == pytest.approx((2.0, 0.4, 0.4))
