"""Blockwise prediction equals whole-array prediction, on real Zarr and real Dask schedulers."""

import json
import os
import shutil

import numpy as np
import pytest
import zarr

import bigdenoise as bd
from bigdenoise.errors import ConfigError
from bigdenoise.infer import predict_array, predict_whole

from conftest import write_zarr


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
def test_2d_blockwise_equals_whole(tmp_path, model_2d, in_chunks, out_chunks, tile):
    model_dir, _, data = model_2d
    src = write_zarr(tmp_path / "in.zarr", data, in_chunks, "SYX")
    _predict(src, model_dir, tmp_path / "out.zarr", chunks=out_chunks, tile=tile, block_voxels=2000)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert out.shape == data.shape and out.dtype == np.float32
    ref = predict_whole(data, bd.load_model(model_dir))
    assert np.abs(out[...] - ref).max() <= 1e-4


@pytest.mark.parametrize("in_chunks, out_chunks", [((5, 11, 9), None), ((24, 40, 36), (8, 8, 16))])
def test_3d_blockwise_equals_whole(tmp_path, model_3d, in_chunks, out_chunks):
    model_dir, _, data = model_3d
    src = write_zarr(tmp_path / "in.zarr", data, in_chunks, "ZYX")
    _predict(src, model_dir, tmp_path / "out.zarr", chunks=out_chunks, tile=(8, 16, 16), block_voxels=3000)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    ref = predict_whole(data, bd.load_model(model_dir))
    assert np.abs(out - ref).max() <= 1e-4


@pytest.mark.skipif(shutil.which(os.environ.get("CXX") or "g++") is None,
                    reason="torch.compile on a CPU needs a C++ compiler (g++ or $CXX), none found")
def test_compiled_prediction_equals_whole(tmp_path, model_2d):
    model_dir, _, data = model_2d
    src = write_zarr(tmp_path / "in.zarr", data, (1, 32, 32), "SYX")
    summary = _predict(src, model_dir, tmp_path / "out.zarr", tile=32, block_voxels=3000, compiled=True)
    assert summary["blocks"] > 1
    assert 0 < summary["forward_s"] <= summary["compute_s"]  # seconds in forward passes, within the blocks' compute
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert out.attrs["bigdenoise"]["compiled"] is True
    assert np.abs(out[...] - predict_whole(data, bd.load_model(model_dir))).max() <= 1e-4


def test_compile_without_a_compiler_is_a_clear_error(tmp_path, model_2d, monkeypatch):
    model_dir, src, _ = model_2d
    monkeypatch.setenv("CXX", "no-such-compiler-x")
    with pytest.raises(ConfigError, match="C\\+\\+ compiler.*no-such-compiler-x"):
        _predict(src, model_dir, tmp_path / "out.zarr", compiled=True, device="cpu")
    assert not (tmp_path / "out.zarr").exists()


def test_local_cluster_with_worker_processes(tmp_path, model_2d):
    model_dir, src, data = model_2d
    summary = _predict(src, model_dir, tmp_path / "out.zarr", cluster="local", workers=2, chunks=(1, 32, 32),
                       block_voxels=1000)
    assert summary["blocks"] == 3 * 2 * 3
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert np.abs(out - predict_whole(data, bd.load_model(model_dir))).max() <= 1e-4


def test_blending_with_reduced_halo_stays_close(tmp_path, model_2d):
    model_dir, _, data = model_2d
    model = bd.load_model(model_dir)
    ref = predict_whole(data, model)
    blended = predict_array(data, model, tile=16, overlap=8)
    # overlap blending alone (halo still the receptive field) stays exact
    assert np.abs(blended - ref).max() <= 1e-4


def test_in_memory_array_is_predicted_with_threads(tmp_path, model_2d):
    model_dir, _, data = model_2d
    _predict(data, model_dir, tmp_path / "out.zarr", cluster="local")
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert np.abs(out[...] - predict_whole(data, bd.load_model(model_dir))).max() <= 1e-4
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


def test_ome_zarr_in_gives_ome_zarr_out(tmp_path, model_3d):
    from ome_zarr_models.v05.image import Image

    model_dir, _, data = model_3d
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
    assert np.abs(out["0"][...] - predict_whole(data, bd.load_model(model_dir))).max() <= 1e-4
