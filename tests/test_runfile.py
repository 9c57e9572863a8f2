"""Run files: train/predict --config FILE, validated as the flags are, flags overriding the file."""

import hashlib
import json

import numpy as np
import pytest
import yaml
import zarr

from bigdenoise.cli import main

from conftest import smooth_volume, write_zarr

FLAGS = ["--steps", "3", "--val-every", "3", "--batch-size", "4", "--patch", "8,16,16", "--depth", "2",
         "--features", "4", "--seed", "5", "--device", "cpu", "--quiet"]
FILE = {"steps": 3, "val-every": 3, "batch_size": 4, "patch": [8, 16, 16], "depth": 2, "features": 4, "seed": 5,
        "device": "cpu", "quiet": True}


def _digest(model_dir):
    return hashlib.sha256((model_dir / "weights.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("runfile")
    data, _ = smooth_volume((16, 32, 32), seed=4)
    return root, write_zarr(root / "in.zarr", data, (8, 16, 16), "ZYX")


@pytest.mark.slow
def test_a_run_file_trains_the_same_weights_as_the_flags_and_a_models_config_repeats_it(volume):
    root, src = volume
    assert main(["train", src, "--out", str(root / "flags"), *FLAGS]) == 0
    (root / "run.yaml").write_text(yaml.safe_dump({"input": src, "out": str(root / "file"), **FILE}))
    assert main(["train", "--config", str(root / "run.yaml")]) == 0
    assert _digest(root / "file") == _digest(root / "flags")
    # the model's own config.json repeats its training (every TrainConfig field, the same input)
    assert main(["train", "--config", str(root / "flags" / "config.json"), "--out", str(root / "again"),
                 "--quiet"]) == 0
    assert _digest(root / "again") == _digest(root / "flags")
    # a flag overrides the file: another seed, other weights
    assert main(["train", "--config", str(root / "run.yaml"), "--out", str(root / "seed6"), "--seed", "6"]) == 0
    assert json.loads((root / "seed6" / "config.json").read_text())["train_config"]["seed"] == 6
    assert _digest(root / "seed6") != _digest(root / "flags")


def test_predict_run_file_with_flags_overriding_it(volume, model_3d, tmp_path):
    _, src = volume
    model_dir, _, _ = model_3d
    run = {"input": src, "model": str(model_dir), "out": str(tmp_path / "file.zarr"), "cluster": "threads",
           "tile": [8, 16, 16], "block_voxels": 4096, "chunks": "8,16,16", "quiet": True, "roi": "0:8,0:32,0:32"}
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert main(["predict", "--config", str(tmp_path / "run.json"), "--roi", "0:16,0:16,0:32"]) == 0
    out = zarr.open_array(str(tmp_path / "file.zarr"), mode="r")
    assert out.shape == (16, 16, 32)  # the flag's ROI, not the file's
    assert out.attrs["bigdenoise"]["tile"] == [8, 16, 16]  # the file's tile
    assert main(["predict", src, "--model", str(model_dir), "--out", str(tmp_path / "flags.zarr"), "--cluster",
                 "threads", "--tile", "8,16,16", "--block-voxels", "4096", "--chunks", "8,16,16", "--quiet",
                 "--roi", "0:16,0:16,0:32"]) == 0
    np.testing.assert_array_equal(out[...], zarr.open_array(str(tmp_path / "flags.zarr"), mode="r")[...])


@pytest.mark.parametrize("command, content, message", [
    ("train", {"input": "x.zarr", "out": "m", "stpes": 3}, "unknown key 'stpes'"),
    ("predict", {"input": "x.zarr", "model": "m", "out": "o.zarr", "lr": 0.1}, "unknown key 'lr'"),
    ("train", {"input": "x.zarr", "out": "m", "patch": "8,a"}, "patch"),
    ("predict", {"input": "x.zarr", "model": "m", "out": "o.zarr", "precision": "fp8"}, "not one of"),
    ("train", ["steps", 3], "mapping"),
])
def test_bad_run_files_are_one_line_errors(tmp_path, capsys, command, content, message):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(content))
    assert main([command, "--config", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err and "run file" in err
    assert not (tmp_path / "m").exists()


def test_a_file_value_is_validated_by_the_training_config(volume, tmp_path, capsys):
    _, src = volume
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"input": src, "out": str(tmp_path / "m"), "val_patches": 0,
                                                           "steps": 1, "patch": [8, 16, 16], "batch_size": 2}))
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "val_patches" in err
    assert not (tmp_path / "m").exists()
