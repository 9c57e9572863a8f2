"""The command line end to end, in-process, and the errors a user can cause."""

import os

import numpy as np
import tifffile
import zarr

from bigdenoise.cli import main
from bigdenoise.cli_args import parse_duration

from conftest import smooth_volume, write_zarr

TRAIN_TINY = ["--steps", "3", "--val-every", "3", "--batch-size", "4", "--depth", "2", "--features", "4",
              "--patch", "32,32", "--quiet"]


def test_train_then_predict_end_to_end(tmp_path, capsys):
    data, _ = smooth_volume((3, 48, 64))
    root = zarr.open_group(str(tmp_path / "case.zarr"), mode="w")
    arr = root.create_array("noisy", shape=data.shape, chunks=(1, 24, 32), dtype="float32")
    arr[...] = data
    src = str(tmp_path / "case.zarr" / "noisy")
    assert main(["train", src, "--method", "n2v", "--axes", "SYX", "--out", str(tmp_path / "model"),
                 "--seed", "1", "--device", "cpu", *TRAIN_TINY]) == 0
    assert "trained n2v for 3 steps" in capsys.readouterr().out
    assert main(["predict", src, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out.zarr"),
                 "--cluster", "threads", "--quiet"]) == 0
    assert "denoised" in capsys.readouterr().out
    out = zarr.open(str(tmp_path / "out.zarr"), mode="r")
    assert isinstance(out, zarr.Array) and out.shape == data.shape
    assert np.isfinite(out[...]).all()
    # the input was not touched
    np.testing.assert_array_equal(zarr.open_array(src, mode="r")[...], data)
    # info describes the model; a model given where an image goes is refused in one line, nothing written
    assert main(["info", str(tmp_path / "model")]) == 0
    text = capsys.readouterr().out
    assert "n2v" in text and "3 steps" in text and "foreground  off" in text and src in text, text
    model = str(tmp_path / "model")
    _fails(["predict", model, "--model", model, "--out", str(tmp_path / "x.zarr"), "--quiet"], capsys,
           "is a bigdenoise model package, not an image")
    _fails(["train", model, "--out", str(tmp_path / "m2"), *TRAIN_TINY], capsys, "not an image")
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "m2").exists()


def test_convert_and_info(tmp_path, capsys):
    data = (np.arange(4 * 50 * 60) % 1000).astype(np.uint16).reshape(4, 50, 60)
    tifffile.imwrite(tmp_path / "in.tif", data, photometric="minisblack")
    assert main(["convert", str(tmp_path / "in.tif"), str(tmp_path / "v.zarr"), "--axes", "ZYX",
                 "--chunks", "2,32,32", "--quiet"]) == 0
    out = zarr.open_array(str(tmp_path / "v.zarr"), mode="r")
    assert out.chunks == (2, 32, 32)
    np.testing.assert_array_equal(out[...], data)
    assert main(["info", str(tmp_path / "v.zarr")]) == 0
    text = capsys.readouterr().out
    assert "ZYX" in text and "uint16" in text


def test_parse_duration():
    assert parse_duration("5m") == 300 and parse_duration("90") == 90 and parse_duration("1.5h") == 5400


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path, capsys):
    model_out = tmp_path / "model"
    _fails(["train", str(tmp_path / "missing.zarr"), "--axes", "SYX", "--out", str(model_out), *TRAIN_TINY],
           capsys, "missing.zarr")
    data, _ = smooth_volume((2, 40, 40))
    src = write_zarr(tmp_path / "in.zarr", data, (1, 20, 20), "SYX")
    _fails(["train", src, "--axes", "ZYXQ", "--out", str(model_out), *TRAIN_TINY], capsys, "axes")
    _fails(["train", src, "--axes", "YX", "--out", str(model_out), *TRAIN_TINY], capsys, "axes")
    nan = write_zarr(tmp_path / "nan.zarr", np.full((2, 40, 40), np.nan, np.float32), (1, 20, 20), "SYX")
    _fails(["train", nan, "--out", str(model_out), *TRAIN_TINY], capsys, "NaN")
    small = write_zarr(tmp_path / "small.zarr", data[:, :16, :16], (1, 16, 16), "SYX")
    _fails(["train", small, "--out", str(model_out), *TRAIN_TINY], capsys, "smaller than the training patch")
    assert not model_out.exists()


def test_prediction_errors_write_nothing(tmp_path, capsys, model_2d):
    model_dir, src2d, _ = model_2d
    vol3d, _ = smooth_volume((8, 32, 32))
    src3d = write_zarr(tmp_path / "vol.zarr", vol3d, (8, 16, 16), "ZYX")
    out = tmp_path / "out.zarr"
    _fails(["predict", src3d, "--model", str(model_dir), "--out", str(out), "--cluster", "threads"], capsys,
           "2D", "3D")
    assert not out.exists()
    _fails(["predict", src2d, "--model", str(tmp_path / "nomodel"), "--out", str(out)], capsys, "config.json")
    assert not out.exists()
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    _fails(["predict", src2d, "--model", str(model_dir), "--out", str(out), "--cluster", "threads", "--quiet"],
           capsys, "--overwrite")
    assert (out / "precious.txt").read_text() == "mine"
    _fails(["predict", src2d, "--model", str(model_dir), "--out", src2d, "--overwrite", "--cluster", "threads"],
           capsys, "input")
    assert os.path.isdir(src2d) and zarr.open_array(src2d, mode="r").shape == (3, 64, 72)


def test_unknown_cluster_is_an_error(tmp_path, capsys, model_2d):
    model_dir, src, _ = model_2d
    _fails(["predict", src, "--model", str(model_dir), "--out", str(tmp_path / "o.zarr"), "--cluster", "nowhere"],
           capsys, "unknown cluster")
    assert not (tmp_path / "o.zarr").exists()
