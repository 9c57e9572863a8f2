"""Issue 20, item 1: one model per channel (``train --per-channel-models``), ``--channel`` on
convert and noise-model, and a dask array read from Zarr denoised on a cluster of worker
processes that reopen the Zarr by path."""

import json
import pickle
import shutil

import dask.array as da
import numpy as np
import pytest
import zarr

import bigdenoise as bd
from bigdenoise.errors import ModelError
from bigdenoise.cli import main
from bigdenoise.errors import ConfigError, InputError
from bigdenoise.infer import predict_whole
from bigdenoise.noise_models import load_noise_model
from bigdenoise.volume import open_volume

from conftest import assert_exact, smooth_volume, write_zarr

SHAPE = (8, 32, 32)
TRAIN = ["--steps", "3", "--val-every", "3", "--batch-size", "4", "--depth", "2", "--features", "4",
         "--patch", "8,16,16", "--quiet"]


def _tczyx(path, channels):
    """A t,c,z,y,x OME-Zarr image (NGFF 0.4, one level) with a scale."""
    data = np.stack(channels)[None]
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=data.shape, chunks=(1, 1, 8, 16, 16), dtype=data.dtype)[...] = data
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2.0, 0.5, 0.5]}]}]}]
    return str(path), data


@pytest.fixture(scope="module")
def per_channel(tmp_path_factory):
    """Two channels 4x apart in level and spread, and one model per channel trained on them."""
    root = tmp_path_factory.mktemp("per_channel")
    ch0, clean0 = smooth_volume(SHAPE, seed=4)
    ch1, clean1 = smooth_volume(SHAPE, seed=5)
    src, data = _tczyx(root / "in.ome.zarr", [ch0 * 4 + 2000, ch1])
    clean, _ = _tczyx(root / "clean.ome.zarr", [clean0 * 4 + 2000, clean1])
    assert main(["train", src, "--out", str(root / "models"), "--per-channel-models", *TRAIN]) == 0
    return src, data, clean, root / "models"


def test_one_model_per_channel_each_with_its_own_statistics(per_channel):
    src, data, _, models = per_channel
    index = json.loads((models / "channels.json").read_text())
    assert index["channels"] == [0, 1] and index["models"] == {"0": "channel-0", "1": "channel-1"}
    m0, m1 = bd.load_model(models / "channel-0"), bd.load_model(models / "channel-1")
    assert m0.stats.mean > 1500 > 500 > m1.stats.mean  # each learnt on its own channel
    assert (models / "bigdenoise.log").is_file() and json.loads((models / ".bigdenoise.json").read_text())[
        "kind"] == "per-channel model"


def test_the_folder_of_models_answers_option_help_and_says_what_it_is(per_channel, capsys):
    models = per_channel[3]
    assert main(["predict", "--model", str(models), "--option", "help"]) == 0
    assert "n2v has no prediction-time options" in capsys.readouterr().out
    with pytest.raises(ModelError, match="one model per channel"):
        bd.load_model(models)


def test_predict_gives_each_channel_its_own_model_and_keeps_the_axes(per_channel, tmp_path, capsys):
    src, data, _, models = per_channel
    out = tmp_path / "out.ome.zarr"
    assert main(["predict", src, "--model", str(models), "--out", str(out), "--cluster", "threads", "--quiet"]) == 0
    got = zarr.open_group(str(out), mode="r")["0"]
    assert got.shape == (1, 2, *SHAPE) and got.metadata.dimension_names == tuple("tczyx")
    for k in (0, 1):
        own = bd.load_model(models / f"channel-{k}")
        other = bd.load_model(models / f"channel-{1 - k}")
        assert_exact(got[0, k], predict_whole(data[0, k], own))
        assert np.abs(got[0, k] - predict_whole(data[0, k], other)).max() > 10 * np.ptp(got[0, k]) * 1e-4
    # one channel of the two, and a channel without a model
    assert main(["predict", src, "--model", str(models), "--out", str(tmp_path / "one.zarr"), "--channel", "1",
                 "--cluster", "threads", "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "one.zarr"))["0"][0, 0], got[0, 1])
    three, _ = _tczyx(tmp_path / "three.ome.zarr", [data[0, 0], data[0, 1], data[0, 1]])
    with pytest.raises(InputError, match="not for channel 2"):
        bd.predict(three, models, tmp_path / "x.zarr", channel="0,2", cluster="threads", progress=False)
    alone = write_zarr(tmp_path / "alone.zarr", data[0, 1], (8, 16, 16), "ZYX")
    with pytest.raises(InputError, match="has no channel axis .* one model per channel: predict with one of them"):
        bd.predict(alone, models, tmp_path / "y.zarr", cluster="threads", progress=False)
    with pytest.raises(ConfigError, match="--target is not supported"):
        bd.train(src, tmp_path / "m", per_channel_models=True, target=src, progress=False)


def test_convert_and_noise_model_take_a_channel(per_channel, tmp_path, capsys):
    src, data, clean, _ = per_channel
    assert main(["convert", src, str(tmp_path / "c1.zarr"), "--channel", "1", "--quiet"]) == 0
    one = zarr.open_array(str(tmp_path / "c1.zarr"), mode="r")
    assert one.shape == (1, 1, *SHAPE) and one.attrs["axes"] == "TCZYX"
    np.testing.assert_array_equal(one[...], data[:, 1:2])
    assert main(["convert", src, str(tmp_path / "all.zarr"), "--voxel-size", "3,0.5,0.5", "--quiet"]) == 0
    both = zarr.open_array(str(tmp_path / "all.zarr"), mode="r")
    np.testing.assert_array_equal(both[...], data)  # without --channel: every channel
    assert both.attrs["scale"] == [1.0, 1.0, 3.0, 0.5, 0.5]
    nm = tmp_path / "nm"
    assert main(["noise-model", "--noisy", src, "--clean", clean, "--channel", "1", "--kind", "gaussian",
                 "--out", str(nm)]) == 0, capsys.readouterr().err
    low, high = load_noise_model(nm).header()["signal_range"]
    clean1 = zarr.open_group(clean, mode="r")["0"][0, 1]
    assert np.isclose(low, clean1.min(), rtol=0.05) and np.isclose(high, clean1.max(), rtol=0.05)
    assert json.loads((nm / "noise_model.json").read_text())["info"]["channel"] == "1"
    assert main(["noise-model", "--noisy", src, "--clean", clean, "--channel", "0,1", "--out",
                 str(tmp_path / "nm2")]) == 2
    assert "one channel" in capsys.readouterr().err


@pytest.mark.slow  # starts a LocalCluster of 2 worker processes
def test_a_dask_array_from_zarr_runs_on_worker_processes_reading_the_zarr(per_channel, tmp_path):
    _, data, _, models = per_channel
    path = write_zarr(tmp_path / "ch1.zarr", data[0, 1], (8, 16, 16), "ZYX")
    lazy = da.from_zarr(path)
    vol = open_volume(lazy)
    assert vol.path == str(tmp_path / "ch1.zarr") and vol.axes == "ZYX"
    assert len(pickle.dumps(vol)) < 1000  # what each task ships: the path, not the graph
    out = tmp_path / "out.zarr"
    bd.predict(lazy, models / "channel-1", out, cluster="local", workers=2, chunks=(8, 16, 16), block_voxels=1,
               progress=False)
    log = (out / "bigdenoise.log").read_text()
    assert "cluster local" in log and "cluster threads" not in log
    assert_exact(zarr.open_array(str(out))[...], predict_whole(data[0, 1], bd.load_model(models / "channel-1")))
    # in the client's memory: threads beside it, refused on other machines
    for memory in (data[0, 1], da.from_zarr(path)[1:]):
        assert open_volume(memory, "ZYX").path is None
        with pytest.raises(ConfigError, match="cannot read: save it as Zarr"):
            bd.predict(memory, models / "channel-1", tmp_path / "refused.zarr", axes="ZYX", cluster="tcp://127.0.0.1:1",
                       progress=False)
    assert not (tmp_path / "refused.zarr").exists()


def test_a_killed_per_channel_run_resumes_each_channel_with_its_own_model(per_channel, tmp_path):
    src, data, _, models = per_channel
    out = tmp_path / "out.ome.zarr"
    run = dict(cluster="threads", progress=False, block_voxels=8 * 16 * 16)
    summary = bd.predict(src, models, out, **run)
    first = zarr.open_group(str(out), mode="r")["0"][...]
    grid = tuple(-(-n // b) for n, b in zip(SHAPE, summary["block_shape"]))
    assert np.prod(grid) == 4
    # as if killed in channel 1: channel 0 recorded done, channel 1 only its first block
    zarr.open_group(str(out), mode="r+")["0"][0, 1] = 0
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["bigdenoise"]["complete"] = False
    (out / "zarr.json").write_text(json.dumps(meta))
    done = out / ".bigdenoise-done"
    done.mkdir()
    for index in np.ndindex(*grid):
        (done / ("c0_" + "-".join(map(str, index)))).touch()
    (done / "c1_0-0-0").touch()
    again = bd.predict(src, models, out, resume=True, **run)
    assert again["skipped"] == 4 + 1 and again["blocks"] == 3
    resumed = zarr.open_group(str(out), mode="r")["0"][...]
    first_block = (0, 1, *(slice(0, b) for b in summary["block_shape"]))
    assert (resumed[first_block] == 0).all()  # recorded done: not computed again
    resumed[first_block] = first[first_block]
    np.testing.assert_array_equal(resumed, first)  # the others with channel 1's own model
    # a folder whose channel 1 model changed is another run: refused
    other = tmp_path / "models"
    shutil.copytree(models, other)
    shutil.copytree(models / "channel-0", other / "channel-1", dirs_exist_ok=True)
    with pytest.raises(ConfigError, match="cannot resume .* model"):
        bd.predict(src, other, out, resume=True, **run)
