"""Real acquisitions in: 5-D OME-Zarr with channels (--channel), multi-series TIFF files
(--series) and voxel sizes given on the command line (--voxel-size)."""

import logging
import pickle
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import zarr

import bigdenoise as bd
from bigdenoise.cli import main
from bigdenoise.errors import InputError
from bigdenoise.geometry import Box
from bigdenoise.infer import predict_whole
from bigdenoise.train import estimate_stats
from bigdenoise.volume import open_volume

from conftest import TINY, assert_exact, rough_copy, smooth_volume, write_zarr

SCALE = [1.0, 1.0, 2.0, 0.5, 0.5]
TRANSLATION = [0.0, 0.0, 10.0, 4.0, 2.0]
SHAPE = (16, 32, 40)


def _tczyx(path, channels):
    """A t,c,z,y,x OME-Zarr image (NGFF 0.4, one level) with scale, translation and units."""
    data = np.stack(channels)[None]
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = group.create_array("0", shape=data.shape, chunks=(1, 1, 8, 16, 16), dtype=data.dtype)
    arr[...] = data
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": SCALE}, {"type": "translation", "translation": TRANSLATION}]}]}]
    return str(path), data


@pytest.fixture(scope="module")
def two_channels(tmp_path_factory):
    """A 1x2 channel OME-Zarr whose channels differ in level and spread, and a rough model
    trained (``--channel 1``) on its channel 1."""
    root = tmp_path_factory.mktemp("channels")
    ch0, _ = smooth_volume(SHAPE, seed=4)
    ch1, _ = smooth_volume(SHAPE, seed=5)
    src, data = _tczyx(root / "in.ome.zarr", [ch0 * 3 + 500, ch1])
    bd.train(src, root / "model", channel=1, progress=False, patch=(8, 16, 16), **TINY)
    return src, data, rough_copy(root / "model", root / "rough")


def test_a_channel_axis_needs_a_choice_and_the_choice_is_lazy(two_channels, tmp_path, capsys):
    src, data, model = two_channels
    with pytest.raises(InputError, match="has 2 channels .*--channel K"):
        open_volume(src)
    assert main(["predict", src, "--model", str(model), "--out", str(tmp_path / "o.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--channel" in err and not (tmp_path / "o.zarr").exists()
    for bad, match in (("2", "channel 2 does not exist; it has 2"), ("1,1", "names a channel twice"),
                       ("x", "not a list of numbers")):
        with pytest.raises(InputError, match=match):
            open_volume(src, channel=bad)
    vol = open_volume(src, channel=1)
    assert vol.axes == "ZYX" and vol.shape == SHAPE and vol.chunks == (8, 16, 16)
    assert vol.scale == (2.0, 0.5, 0.5) and vol.translation == (10.0, 4.0, 2.0)
    np.testing.assert_array_equal(vol.read(Box((3, 5, 7), (4, 9, 11))), data[0, 1, 3:7, 5:14, 7:18])
    again = pickle.loads(pickle.dumps(open_volume(src, channel="0,1").channel_volumes()[1]))  # as workers get it
    assert again.layout.channel == 1 and again.layout.channels == (0, 1)
    np.testing.assert_array_equal(again.read(Box.from_shape(SHAPE)), data[0, 1])
    with pytest.raises(bd.errors.ConfigError, match="one model per channel"):
        bd.train(src, tmp_path / "m", channel="0,1", progress=False, **TINY)


@pytest.mark.slow
def test_channel_1_of_a_tczyx_ome_zarr_keeps_axes_scale_translation_and_equals_channel_1_alone(two_channels, tmp_path):
    from ome_zarr_models.v05.image import Image

    src, data, model = two_channels
    out = tmp_path / "out.ome.zarr"
    assert main(["predict", src, "--model", str(model), "--out", str(out), "--channel", "1",
                 "--cluster", "threads", "--quiet"]) == 0
    group = zarr.open_group(str(out), mode="r")
    Image.from_zarr(group)  # validates the NGFF 0.5 metadata
    ms = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == list("tczyx")
    assert [a.get("unit") for a in ms["axes"]] == [None, None] + ["micrometer"] * 3
    transforms = ms["datasets"][0]["coordinateTransformations"]
    assert transforms == [{"type": "scale", "scale": SCALE}, {"type": "translation", "translation": TRANSLATION}]
    assert group["0"].shape == (1, 1, *SHAPE)
    # the same model on channel 1 written as a volume of its own
    alone = write_zarr(tmp_path / "alone.zarr", data[0, 1], (8, 16, 16), "ZYX")
    bd.predict(alone, model, tmp_path / "alone_out.zarr", cluster="threads", progress=False)
    np.testing.assert_array_equal(group["0"][0, 0], zarr.open_array(str(tmp_path / "alone_out.zarr"))[...])
    reopened = open_volume(out)  # a singleton channel needs no --channel
    assert reopened.axes == "ZYX" and reopened.scale == (2.0, 0.5, 0.5) and reopened.translation == (10.0, 4.0, 2.0)


@pytest.mark.slow
def test_several_channels_are_each_denoised_with_their_own_statistics(two_channels, tmp_path):
    src, data, model_dir = two_channels
    out = tmp_path / "both.zarr"  # an OME-Zarr input gives an OME-Zarr output
    bd.predict(src, model_dir, out, channel=[0, 1], cluster="local", workers=1, progress=False)
    both = zarr.open_group(str(out), mode="r")["0"]
    assert both.shape == (1, 2, *SHAPE) and both.metadata.dimension_names == tuple("tczyx")
    transforms = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]["datasets"][0][
        "coordinateTransformations"]
    assert transforms == [{"type": "scale", "scale": SCALE}, {"type": "translation", "translation": TRANSLATION}]
    model = bd.load_model(model_dir)
    vol0, vol1 = open_volume(src, channel="0,1").channel_volumes()
    # channel 1, the one the model learnt: its own statistics are the model's, so it is denoised as alone
    assert estimate_stats(vol1, model.train_config.stats_chunks, model.train_config.seed) == model.stats
    single = tmp_path / "one.zarr"
    bd.predict(src, model_dir, single, channel=1, cluster="threads", progress=False)
    np.testing.assert_array_equal(both[0, 1], zarr.open_group(str(single))["0"][0, 0])
    # channel 0 (3x brighter, offset): normalised with its own statistics, not the model's
    own = replace(model, stats=estimate_stats(vol0, model.train_config.stats_chunks, model.train_config.seed))
    assert_exact(both[0, 0], predict_whole(data[0, 0], own), data[0, 0])
    assert np.abs(both[0, 0] - predict_whole(data[0, 0], model)).max() > 1.0
    # resuming a finished run changes nothing; each channel keeps its own done records
    bd.predict(src, model_dir, out, channel=[0, 1], cluster="threads", resume=True, progress=False)
    np.testing.assert_array_equal(zarr.open_group(str(out))["0"][0, 0], both[0, 0])


def test_series_of_a_multi_series_tiff(tmp_path, caplog):
    a = np.arange(6 * 8 * 10, dtype=np.uint16).reshape(6, 8, 10)
    b = (a[::-1] * 3).astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "two.tif") as tif:
        tif.write(a, metadata={"axes": "ZYX"})
        tif.write(b[:5], metadata={"axes": "ZYX"})
    vol = open_volume(tmp_path / "two.tif", axes="ZYX", series=1)
    np.testing.assert_array_equal(vol.read(Box.from_shape(vol.shape)), b[:5])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vol)).read(Box.from_shape(vol.shape)), b[:5])
    with caplog.at_level(logging.WARNING, logger="bigdenoise.tiff"):
        first = open_volume(tmp_path / "two.tif", axes="ZYX")
    assert first.shape == a.shape and "has 2 series; using series 0" in caplog.text and "--series" in caplog.text
    with pytest.raises(InputError, match=r"has 2 series \(0 to 1\): --series 2"):
        open_volume(tmp_path / "two.tif", axes="ZYX", series=2)
    caplog.clear()
    tifffile.imwrite(tmp_path / "one.tif", a)
    with caplog.at_level(logging.WARNING, logger="bigdenoise.tiff"):
        open_volume(tmp_path / "one.tif", axes="ZYX")
    assert "series" not in caplog.text
    with pytest.raises(InputError, match="--series"):
        open_volume(write_zarr(tmp_path / "a.zarr", a, (3, 8, 10), "ZYX"), series=1)


def test_series_and_voxel_size_on_the_command_line(tmp_path, model_3d, capsys):
    model_dir, _, _ = model_3d
    data, _ = smooth_volume((16, 24, 20), seed=2)
    with tifffile.TiffWriter(tmp_path / "two.tif") as tif:
        tif.write(data[:, :8, :8], metadata={"axes": "ZYX"})
        tif.write(data, metadata={"axes": "ZYX"})
    out = tmp_path / "out.zarr"
    assert main(["predict", str(tmp_path / "two.tif"), "--series", "1", "--voxel-size", "2.5,0.5,0.5",
                 "--axes", "ZYX", "--model", str(model_dir), "--out", str(out), "--cluster", "threads",
                 "--quiet"]) == 0
    written = zarr.open_array(str(out), mode="r")
    assert written.shape == data.shape and written.attrs["scale"] == [2.5, 0.5, 0.5]
    assert open_volume(out).scale == (2.5, 0.5, 0.5)
    assert main(["predict", str(tmp_path / "two.tif"), "--series", "3", "--axes", "ZYX", "--model",
                 str(model_dir), "--out", str(tmp_path / "o3.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has 2 series (0 to 1)" in err
    src = write_zarr(tmp_path / "plain.zarr", data, (8, 12, 10), "ZYX")
    assert main(["predict", src, "--voxel-size", "0.5,0.5", "--model", str(model_dir), "--out",
                 str(tmp_path / "o2.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--voxel-size gives 2 value(s)" in err and "give z,y,x" in err
    assert not (tmp_path / "o2.zarr").exists() and not (tmp_path / "o3.zarr").exists()
    ome = tmp_path / "out.ome.zarr"
    assert main(["predict", src, "--voxel-size", "3,1,1", "--model", str(model_dir), "--out", str(ome),
                 "--cluster", "threads", "--quiet"]) == 0
    ms = zarr.open_group(str(ome), mode="r").attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [3.0, 1.0, 1.0]
    # a plain Zarr CZYX input: a plain CZYX output holding the chosen channels, with the voxel size
    czyx = write_zarr(tmp_path / "czyx.zarr", np.stack([data, data * 2, data + 7]), (1, 8, 12, 10), "CZYX")
    both = tmp_path / "both.zarr"
    assert main(["predict", czyx, "--channel", "2,0", "--voxel-size", "3,1,1", "--model", str(model_dir),
                 "--out", str(both), "--cluster", "threads", "--quiet"]) == 0
    written = zarr.open_array(str(both), mode="r")
    assert written.shape == (2, *data.shape) and written.attrs["axes"] == "CZYX"
    assert written.attrs["scale"] == [1.0, 3.0, 1.0, 1.0] and written.metadata.dimension_names == tuple("czyx")
    # each channel with its own statistics: channel 2 is channel 0 shifted by 7, and so is its output
    np.testing.assert_allclose(written[0], written[1] + 7, atol=1e-3)


def test_an_imagej_hyperstack_keeps_its_axes_in_a_plain_zarr_only(tmp_path, model_3d, capsys):
    model_dir, _, _ = model_3d
    data, _ = smooth_volume((16, 2, 24, 20), seed=6)
    tifffile.imwrite(tmp_path / "hs.tif", data, imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um"})
    assert main(["predict", str(tmp_path / "hs.tif"), "--channel", "1", "--model", str(model_dir), "--out",
                 str(tmp_path / "o.ome.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "axes ZCYX, which OME-Zarr cannot store" in err
    assert not (tmp_path / "o.ome.zarr").exists()
    assert main(["predict", str(tmp_path / "hs.tif"), "--channel", "1", "--model", str(model_dir), "--out",
                 str(tmp_path / "o.zarr"), "--cluster", "threads", "--quiet"]) == 0
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")
    assert out.shape == (16, 1, 24, 20) and out.attrs["axes"] == "ZCYX"
    assert out.attrs["scale"] == pytest.approx([2.0, 1.0, 0.4, 0.4])
    alone = tmp_path / "alone.zarr"
    bd.predict(write_zarr(tmp_path / "c1.zarr", data[:, 1], (1, 24, 20), "ZYX"), model_dir, alone,
               cluster="threads", progress=False)
    np.testing.assert_allclose(out[:, 0], zarr.open_array(str(alone))[...], rtol=0, atol=1e-4)


def test_a_roi_of_two_channels_equals_the_same_box_of_the_full_run(two_channels, tmp_path):
    src, _, model_dir = two_channels
    run = dict(channel=[0, 1], cluster="threads", progress=False, tile=(8, 16, 16), block_voxels=4096)
    bd.predict(src, model_dir, tmp_path / "full.ome.zarr", **run)
    bd.predict(src, model_dir, tmp_path / "roi.ome.zarr", roi="3:13,5:29,0:27", **run)
    full = zarr.open_group(str(tmp_path / "full.ome.zarr"), mode="r")["0"][...]
    group = zarr.open_group(str(tmp_path / "roi.ome.zarr"), mode="r")
    box = full[:, :, 3:13, 5:29, 0:27]
    assert group["0"].shape == box.shape == (1, 2, 10, 24, 27)
    np.testing.assert_array_equal(group["0"][...], box)
    translation = [t + o * s for t, o, s in zip(TRANSLATION, (0, 0, 3, 5, 0), SCALE)]
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": SCALE}, {"type": "translation", "translation": translation}]
    assert (tmp_path / "roi.ome.zarr" / "preview.png").stat().st_size > 1000
