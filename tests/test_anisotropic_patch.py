"""Default training patches fitted to the volume: a volume whose Z voxels are longer than its Y/X
voxels trains with a default patch shrunk in Z (issue 20, item 3), images smaller than the
default patch train whole; the patch is recorded in the model."""

import json

import numpy as np
import pytest
import tifffile

import bigdenoise as bd
from bigdenoise.cli import main
from bigdenoise.config import DEFAULT_PATCH_3D, anisotropic_patch, make_config, with_default_patch

from conftest import TINY, smooth_volume, write_zarr

BIG = (64, 256, 256)  # a volume larger than every default patch


@pytest.mark.parametrize("size, depth, patch", [
    ((2.0, 0.4, 0.4), 2, (12, 64, 64)),   # 64 * 0.2 = 12.8 -> 12 (multiple of 4)
    ((2.0, 0.4, 0.4), 1, (12, 64, 64)),   # 12.8 -> 12 (multiple of 2)
    ((10.0, 0.1, 0.1), 2, (4, 64, 64)),   # 0.64 -> the floor of 4
    ((10.0, 0.1, 0.1), 3, (8, 64, 64)),   # the floor is one 2**depth
    ((1.0, 0.4, 0.4), 2, None),           # 25.6 -> above 16: the default stays
    ((0.4, 0.4, 0.4), 2, None),           # isotropic
    ((0.2, 0.4, 0.4), 2, None),           # finer Z: never grown
])
def test_the_rule(size, depth, patch):
    assert anisotropic_patch(size, depth) == patch


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("aniso")
    data, _ = smooth_volume((16, 64, 64), seed=3)
    return write_zarr(root / "in.zarr", data, (16, 64, 64), "ZYX"), data, root


def test_anisotropic_voxels_train_with_a_flatter_patch_and_isotropic_keep_the_default(volume, tmp_path):
    src, _, _ = volume
    flat = bd.train(src, tmp_path / "flat", voxel_size="2,0.4,0.4", progress=False, **TINY)
    assert flat.train_config.patch == (12, 64, 64) and flat.train_config.patch_shape == (12, 64, 64)
    saved = json.loads((tmp_path / "flat" / "config.json").read_text())
    assert json.dumps(saved).count("[12, 64, 64]") == 1  # recorded in the package's config
    cubic = bd.train(src, tmp_path / "cubic", voxel_size="0.4,0.4,0.4", progress=False, **TINY)
    assert cubic.train_config.patch is None and cubic.train_config.patch_shape == DEFAULT_PATCH_3D


def test_a_given_patch_and_2d_nets_are_left_alone():
    flat = (2.0, 0.4, 0.4)
    assert with_default_patch(make_config(axes="ZYX", patch=(8, 32, 32)), BIG, flat).patch == (8, 32, 32)
    assert with_default_patch(make_config(axes="ZYX"), BIG, flat).patch == (12, 64, 64)
    assert with_default_patch(make_config(axes="ZYX"), BIG, None).patch is None
    two_d = make_config(axes="ZYX", method="noise2stack")  # the net sees YX planes: nothing to shrink
    assert with_default_patch(two_d, BIG, flat) is two_d


def test_images_smaller_than_the_default_patch_train_whole(tmp_path, capsys):
    assert with_default_patch(make_config(axes="SYX"), (3, 48, 42), None).patch == (48, 40)
    assert with_default_patch(make_config(axes="ZYX"), (10, 80, 64), (2.0, 0.4, 0.4)).patch == (8, 64, 64)
    assert with_default_patch(make_config(axes="SYX", patch=(32, 32)), (3, 48, 42), None).patch == (32, 32)
    data, _ = smooth_volume((3, 48, 42), seed=4)
    src = write_zarr(tmp_path / "small.zarr", data, (1, 48, 42), "SYX")
    out = tmp_path / "model"
    assert main(["train", src, "--out", str(out), "--steps", "3", "--val-every", "3", "--batch-size", "4",
                 "--depth", "2", "--features", "4", "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["train_config"]["patch"] == [48, 40]
    # thinner than one multiple of 2**depth: still one line naming --patch
    thin = write_zarr(tmp_path / "thin.zarr", data[:, :3], (1, 3, 42), "SYX")
    capsys.readouterr()
    assert main(["train", thin, "--out", str(tmp_path / "m2"), "--steps", "3", "--quiet"]) == 2
    assert "smaller than the training patch" in capsys.readouterr().err


def test_an_imagej_tiff_spacing_gives_the_patch_on_the_command_line(volume, tmp_path, capsys):
    _, data, _ = volume
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, data, imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
    args = ["train", str(tif), "--out", str(tmp_path / "m"), "--steps", "2", "--val-every", "2", "--batch-size", "2",
            "--depth", "2", "--features", "4", "--num-workers", "0", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    assert bd.load_model(tmp_path / "m").train_config.patch == (12, 64, 64)
    assert np.isclose(bd.open_volume(tif).scale[0], 2.0)
