"""Blockwise prediction equals whole-array prediction, on real Zarr and real Dask schedulers.

Exactness is checked on models with random He weights (``conftest.rough_copy``: output that
varies at the data's scale) with the rule ``conftest.assert_exact`` (max|tiled - whole| <=
1e-4 of the whole output's spread); each family has a negative control with a halo below the
receptive radius that must miss it."""

import json
import os
import shutil

import numpy as np
import pytest
import zarr

import bigdenoise as bd
from bigdenoise.errors import ConfigError
from bigdenoise.infer import predict_array, predict_whole

from conftest import assert_exact, assert_not_exact, short_halo, write_zarr


def _predict(src, model, out, **kw):
    kw.setdefault("cluster", "threads")
    return bd.predict(src, model, out, progress=False, **kw)


@pytest.mark.parametrize(
    "in_chunks, out_chunks, tile",
    [
        ((1, 13, 17), None, 16),  # uneven input chunks, output chunked like the input
        ((2, 64, 72), (1, 24, 40), 32),  # one input chunk, several output blocks
        ((1, 7, 64), (3, 16, 16), 8),  # tiles smaller than the halo
    ],
)
def test_2d_blockwise_equals_whole(tmp_path, rough_2d, in_chunks, out_chunks, tile):
    model_dir, _, data = rough_2d
    src = write_zarr(tmp_path / "in.zarr", data, in_chunks, "SYX")
    _predict(src, model_dir, tmp_path / "out.zarr", chunks=out_chunks, tile=tile, block_voxels=2000)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert out.shape == data.shape and out.dtype == np.float32
    ref = predict_whole(data, bd.load_model(model_dir))
    assert_exact(out[...], ref, data)


@pytest.mark.parametrize("in_chunks, out_chunks, tile", [((1, 13, 17), None, 16), ((1, 7, 64), (3, 16, 16), 8)])
def test_2d_halo_below_the_receptive_radius_is_not_exact(tmp_path, rough_2d, in_chunks, out_chunks, tile):
    """Negative control: the run of the test above with a halo 3 voxels short must miss the rule."""
    model_dir, _, data = rough_2d
    model = bd.load_model(model_dir)
    src = write_zarr(tmp_path / "in.zarr", data, in_chunks, "SYX")
    summary = _predict(src, model_dir, tmp_path / "out.zarr", chunks=out_chunks, tile=tile, block_voxels=2000,
                       halo=short_halo(model), inexact=True)
    assert summary["halo"][1:] == (short_halo(model),) * 2
    assert_not_exact(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...], predict_whole(data, model))


@pytest.mark.parametrize("in_chunks, out_chunks", [((5, 11, 9), None), ((12, 64, 60), (4, 16, 32))])
def test_3d_blockwise_equals_whole(tmp_path, rough_3d, in_chunks, out_chunks):
    model_dir, data = rough_3d
    src = write_zarr(tmp_path / "in.zarr", data, in_chunks, "ZYX")
    _predict(src, model_dir, tmp_path / "out.zarr", chunks=out_chunks, tile=(4, 8, 8), block_voxels=3000)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    ref = predict_whole(data, bd.load_model(model_dir))
    assert_exact(out, ref, data)


def test_3d_halo_below_the_receptive_radius_is_not_exact(tmp_path, rough_3d):
    model_dir, data = rough_3d
    model = bd.load_model(model_dir)
    src = write_zarr(tmp_path / "in.zarr", data, data.shape, "ZYX")
    _predict(src, model_dir, tmp_path / "out.zarr", chunks=(4, 16, 32), tile=(4, 8, 8), block_voxels=3000,
             halo=short_halo(model), inexact=True)
    assert_not_exact(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...], predict_whole(data, model))


@pytest.mark.skipif(shutil.which(os.environ.get("CXX") or "g++") is None,
                    reason="torch.compile on a CPU needs a C++ compiler (g++ or $CXX), none found")
def test_compiled_prediction_equals_whole(tmp_path, rough_2d):
    model_dir, _, data = rough_2d
    src = write_zarr(tmp_path / "in.zarr", data, (1, 32, 32), "SYX")
    summary = _predict(src, model_dir, tmp_path / "out.zarr", tile=32, block_voxels=3000, compiled=True)
    assert summary["blocks"] > 1
    assert 0 < summary["forward_s"] <= summary["compute_s"]  # seconds in forward passes, within the blocks' compute
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert out.attrs["bigdenoise"]["compiled"] is True
    assert_exact(out[...], predict_whole(data, bd.load_model(model_dir)), data)


def test_compile_without_a_compiler_is_a_clear_error(tmp_path, model_2d, monkeypatch):
    model_dir, src, _ = model_2d
    monkeypatch.setenv("CXX", "no-such-compiler-x")
    with pytest.raises(ConfigError, match="C\\+\\+ compiler.*no-such-compiler-x"):
        _predict(src, model_dir, tmp_path / "out.zarr", compiled=True, device="cpu")
    assert not (tmp_path / "out.zarr").exists()


def test_local_cluster_with_worker_processes(tmp_path, rough_2d):
    model_dir, src, data = rough_2d
    summary = _predict(src, model_dir, tmp_path / "out.zarr", cluster="local", workers=2, chunks=(1, 32, 32),
                       block_voxels=1000)
    assert summary["blocks"] == 3 * 2 * 3
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert_exact(out, predict_whole(data, bd.load_model(model_dir)), data)


def test_blending_with_reduced_halo_stays_close(tmp_path, rough_2d):
    model_dir, _, data = rough_2d
    model = bd.load_model(model_dir)
    ref = predict_whole(data, model)
    blended = predict_array(data, model, tile=16, overlap=8)
    # overlap blending alone (halo still the receptive field) stays exact
    assert_exact(blended, ref, data)


def test_in_memory_array_is_predicted_with_threads(tmp_path, rough_2d):
    model_dir, _, data = rough_2d
    _predict(data, model_dir, tmp_path / "out.zarr", cluster="local")
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert_exact(out[...], predict_whole(data, bd.load_model(model_dir)), data)
    assert json.loads(json.dumps(dict(out.attrs)))["axes"] == "SYX"


def test_input_dtype_output_is_clipped(tmp_path, model_2d):
    model_dir, _, data = model_2d
    ints = np.clip(data, 0, 255).astype(np.uint8)
    src = write_zarr(tmp_path / "in.zarr", ints, (1, 32, 32), "SYX")
    _predict(src, model_dir, tmp_path / "out.zarr", dtype="input")
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert out.dtype == np.uint8
    ref = np.clip(np.rint(predict_whole(ints, bd.load_model(model_dir))), 0, 255)
    assert np.abs(out[...].astype(float) - ref).max() <= 1


def test_ome_zarr_in_gives_ome_zarr_out(tmp_path, model_3d, rough_3d):
    from ome_zarr_models.v05.image import Image

    _, _, data = model_3d
    model_dir, _ = rough_3d
    group = zarr.open_group(str(tmp_path / "in.ome.zarr"), mode="w", zarr_format=3)
    arr = group.create_array("0", shape=data.shape, chunks=(8, 20, 18), dtype=data.dtype)
    arr[...] = data
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [2.0, 0.5, 0.5]}]}]}]}
    _predict(str(tmp_path / "in.ome.zarr"), model_dir, tmp_path / "out.ome.zarr", tile=(8, 16, 16))
    out = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    Image.from_zarr(out)  # validates the OME-Zarr metadata
    ms = out.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.5]
    assert_exact(out["0"][...], predict_whole(data, bd.load_model(model_dir)), data)
