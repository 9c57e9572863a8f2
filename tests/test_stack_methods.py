"""Noise2Stack, Noise2Noise and CARE: the end-plane rule, paired volumes, exact blockwise
prediction with a stack axis, background removal, the cosine schedule and the CLI."""

import json

import numpy as np
import pytest
import zarr

import bigdenoise as bd
from bigdenoise.background import estimate_background
from bigdenoise.cli import main
from bigdenoise.data import PatchBatches
from bigdenoise.errors import ConfigError, InputError
from bigdenoise.geometry import Box
from bigdenoise.infer import predict_whole
from bigdenoise.methods import get_method
from bigdenoise.normalize import Stats
from bigdenoise.sampling import ChunkCache, make_sampler, read_neighbourhood
from bigdenoise.tiling import reflect_indices
from bigdenoise.volume import open_volume

from conftest import assert_exact, assert_not_exact, rough_copy, short_halo, smooth_volume, write_zarr

TINY = dict(steps=3, val_every=3, batch_size=4, val_patches=4, stats_chunks=4, net={"depth": 1, "features": 4})


def _second(clean, seed):
    """A second, independent noisy acquisition of ``clean``."""
    return (clean + np.random.default_rng(seed).normal(0, 12, clean.shape)).astype(np.float32)


# --- the end-plane rule ---------------------------------------------------------------------

def test_end_plane_rule_copies_the_nearest_existing_neighbour():
    def hood(z, k, n):
        return reflect_indices(z - k, z + k + 1, n, mode="stack").tolist()

    assert hood(0, 1, 5) == [1, 0, 1]  # the paper: two copies of the second plane
    assert hood(4, 1, 5) == [3, 4, 3]
    assert hood(0, 2, 5) == [1, 1, 0, 1, 2]  # mirroring would give plane 2 for -2
    assert hood(1, 2, 5) == [0, 0, 1, 2, 3]  # mirroring would feed plane 1 its own copy
    assert hood(3, 2, 5) == [1, 2, 3, 4, 4]
    assert hood(0, 2, 2) == [1, 1, 0, 1, 1]
    assert hood(2, 1, 5) == [1, 2, 3]
    for n in range(2, 7):
        for k in range(1, 5):
            for z in range(n):
                h = hood(z, k, n)
                assert h[k] == z and z not in h[:k] + h[k + 1:]  # never a copy of the target plane
                assert all(0 <= i < n for i in h)
    with pytest.raises(ValueError):
        reflect_indices(-1, 2, 1, mode="stack")


@pytest.mark.parametrize("axes", ["ZYX", "TYX"])
def test_training_reads_plane_neighbourhoods_with_the_end_rule(tmp_path, axes):
    n, k = 5, 2
    data = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 16, 16)).copy()
    volume = open_volume(write_zarr(tmp_path / "v.zarr", data, (2, 8, 8), axes))
    cache = ChunkCache(volume)
    for z in range(n):
        hood = read_neighbourhood(cache, Box((z, 4, 4), (1, 8, 8)), 0, k)
        assert hood.shape == (2 * k + 1, 8, 8)
        np.testing.assert_array_equal(hood[:, 0, 0], reflect_indices(z - k, z + k + 1, n, mode="stack"))
    # through the dataset and Noise2Stack's prepare (self mode: neighbours in, held-out plane out)
    method = get_method("noise2stack")
    options = method.options(stack_axis=axes[0], neighbours=k)
    sampler = make_sampler(volume, (8, 8), cache_bytes=2**20, active=4, stack_axis=axes[0])
    ds = PatchBatches({"input": volume}, {"input": Stats(0.0, 1.0, 0.0, 1.0, 1)}, sampler, method.prepare, options,
                      batch_size=4, seed=0, stack_axis=axes[0], channel_halo=k)
    seen = set()
    for i in range(60):
        ex = ds.example(i)
        assert ex["input"].shape == (2 * k, 8, 8) and ex["target"].shape == (1, 8, 8)
        z = int(ex["target"][0, 0, 0])
        expected = np.delete(reflect_indices(z - k, z + k + 1, n, mode="stack"), k)
        np.testing.assert_array_equal(ex["input"][:, 0, 0], expected)
        seen.add(z)
    assert {0, n - 1} <= seen


# --- training, paired volumes and their errors ----------------------------------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A ZYX noisy volume, a second noisy acquisition and a clean one on another scale."""
    root = tmp_path_factory.mktemp("pair")
    data, clean = smooth_volume((7, 40, 36), seed=2)
    return {
        "root": root,
        "data": data,
        "input": write_zarr(root / "in.zarr", data, (3, 16, 16), "ZYX"),
        "second": write_zarr(root / "second.zarr", _second(clean, 5), (3, 16, 16), "ZYX"),
        "clean": write_zarr(root / "clean.zarr", clean * 10 + 1000, (7, 20, 20), "ZYX"),
    }


@pytest.mark.parametrize("method, axes", [("n2n", "SYX"), ("care", "ZYX")])
def test_paired_methods_train_and_predict_exactly(tmp_path, pair, method, axes):
    """N2N in 2D (target: a second noisy acquisition), CARE in 3D (target: clean, another scale)."""
    second = zarr.open_array(pair["second" if method == "n2n" else "clean"], mode="r")[...]
    src = write_zarr(tmp_path / "in.zarr", pair["data"], (3, 16, 16), axes)
    target = write_zarr(tmp_path / "target.zarr", second, (7, 20, 20), axes)
    patch = (16, 16) if axes == "SYX" else (6, 16, 16)
    model = bd.train(src, tmp_path / "m", method=method, target=target, progress=False, patch=patch, **TINY)
    assert not model.train_config.net.batch_norm  # the method's default
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    if method == "care":  # the target's own statistics map predictions back to the clean scale
        assert doc["output_normalization"]["mean"] == pytest.approx(float(second.mean()), rel=0.05)
        assert model.out_stats.mean > 2000 and model.stats.mean < 400
    else:
        assert "output_normalization" not in doc and model.out_stats == model.stats
    bd.predict(src, tmp_path / "m", tmp_path / "out.zarr", cluster="threads", tile=patch, chunks=(4, 40, 20),
               block_voxels=6000, progress=False)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert np.isfinite(out).all() and out.shape == pair["data"].shape
    # exactness on the same package with random He weights (output varying at the data's scale)
    rough = rough_copy(tmp_path / "m", tmp_path / "rough")
    bd.predict(src, rough, tmp_path / "rough.zarr", cluster="threads", tile=patch, chunks=(4, 40, 20),
               block_voxels=6000, progress=False)
    out = zarr.open_array(str(tmp_path / "rough.zarr"), mode="r")[...]
    assert_exact(out, predict_whole(pair["data"], bd.load_model(rough), axes), pair["data"])


def test_paired_volume_errors(tmp_path, pair):
    kw = dict(progress=False, patch=(16, 16), **TINY)
    with pytest.raises(ConfigError, match="needs these volumes too: target.*--target"):
        bd.train(pair["input"], tmp_path / "a", method="n2n", **{**kw, "patch": (6, 16, 16)})
    with pytest.raises(ConfigError, match="needs these volumes too: target"):
        bd.train(pair["input"], tmp_path / "b", method="noise2stack", options={"mode": "copy"}, **kw)
    with pytest.raises(ConfigError, match="does not use the target.*--mode copy"):
        bd.train(pair["input"], tmp_path / "c", method="noise2stack", target=pair["second"], **kw)
    with pytest.raises(ConfigError, match="does not use the target"):
        bd.train(pair["input"], tmp_path / "d", method="n2v", target=pair["second"], **{**kw, "patch": (6, 16, 16)})
    short = write_zarr(tmp_path / "short.zarr", pair["data"][:5], (3, 16, 16), "ZYX")
    with pytest.raises(InputError, match="paired volumes must match"):
        bd.train(pair["input"], tmp_path / "e", method="care", target=short, **{**kw, "patch": (4, 16, 16)})
    syx = write_zarr(tmp_path / "syx.zarr", pair["data"], (3, 16, 16), "SYX")
    with pytest.raises(ConfigError, match="stacks planes along Z but the axes are SYX"):
        bd.train(syx, tmp_path / "f", method="noise2stack", **kw)
    one = write_zarr(tmp_path / "one.zarr", pair["data"][:1], (1, 16, 16), "ZYX")
    with pytest.raises(InputError, match="needs neighbouring planes"):
        bd.train(one, tmp_path / "g", method="noise2stack", **kw)
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in "abcdefg")


# --- Noise2Stack: exact blockwise prediction, end planes, background -----------------------

@pytest.fixture(scope="module")
def stack_models(pair):
    """Tiny Noise2Stack models: self mode with 2 neighbours, copy mode with 1 and background
    removal, and T as the stack axis of a TZYX series (3D network)."""
    root = pair["root"]
    bd.train(pair["input"], root / "self", method="noise2stack", options={"neighbours": 2}, progress=False,
             patch=(16, 16), **TINY)
    bd.train(pair["input"], root / "copy", method="noise2stack", target=pair["second"], remove_background=True,
             options={"mode": "copy", "neighbours": 1}, progress=False, patch=(16, 16), **TINY)
    series, _ = smooth_volume((4, 4, 16, 16), seed=4)
    tzyx = write_zarr(root / "tzyx.zarr", series, (3, 2, 8, 8), "TZYX")
    bd.train(tzyx, root / "time", method="noise2stack", options={"stack_axis": "T"}, progress=False,
             patch=(4, 16, 16), **TINY)
    return {"self": (root / "self", pair["data"], "ZYX"), "copy": (root / "copy", pair["data"], "ZYX"),
            "time": (root / "time", series, "TZYX")}


@pytest.fixture(scope="module")
def rough_stack_models(stack_models, tmp_path_factory):
    """``stack_models`` with random He weights (output varying at the data's scale; the copy
    model keeps its background pattern)."""
    root = tmp_path_factory.mktemp("rough-stack")
    return {k: (rough_copy(d, root / k), data, axes) for k, (d, data, axes) in stack_models.items()}


@pytest.mark.parametrize("case, in_chunks, out_chunks, tile", [
    ("self", (3, 13, 11), None, 16),  # uneven chunks, several planes per block
    ("self", (7, 40, 36), (1, 16, 8), 8),  # one plane per block: the end planes alone
    ("copy", (2, 16, 16), (3, 8, 16), 16),
    ("time", (1, 3, 16, 5), None, (2, 8, 8)),
])
def test_noise2stack_blockwise_equals_whole(tmp_path, rough_stack_models, case, in_chunks, out_chunks, tile):
    model_dir, data, axes = rough_stack_models[case]
    src = write_zarr(tmp_path / "in.zarr", data, in_chunks, axes)
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", chunks=out_chunks, tile=tile,
               block_voxels=600, progress=False)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    model = bd.load_model(model_dir)
    assert model.spatial_axes == axes.replace(model.stack_axis, "")
    assert_exact(out, predict_whole(data, model), data)


def test_noise2stack_halo_below_the_receptive_radius_is_not_exact(tmp_path, rough_stack_models):
    model_dir, data, axes = rough_stack_models["self"]
    model = bd.load_model(model_dir)
    src = write_zarr(tmp_path / "in.zarr", data, (7, 40, 36), axes)
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", chunks=(1, 16, 8), tile=8,
               block_voxels=600, progress=False, halo=short_halo(model), inexact=True)
    assert_not_exact(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...], predict_whole(data, model))


def test_noise2stack_end_planes_see_copies_of_their_nearest_neighbour(rough_stack_models):
    """Plane 0 of V, with 2 neighbours, must be predicted from planes (1, 1, 1, 2): exactly what
    the interior plane 2 of V' = (p1, p1, p0, p1, p2, ...) sees, where no end rule applies."""
    model_dir, data, _ = rough_stack_models["self"]
    model = bd.load_model(model_dir)
    whole = predict_whole(data, model)
    padded = np.concatenate([data[[1, 1]], data])
    assert_exact(whole[0], predict_whole(padded, model)[2], data[0])
    last = np.concatenate([data, data[[-2, -2]]])
    assert_exact(whole[-1], predict_whole(last, model)[-3], data[-1])


def test_background_pattern_is_estimated_stored_and_checked(tmp_path, pair, stack_models):
    rng = np.random.default_rng(0)
    pattern = rng.uniform(90, 110, (24, 20)).astype(np.float32)
    z, y, x = np.indices((9, 24, 20))
    sample = rng.uniform(5, 50, (9, 24, 20)) * ((z + y + x) % 9 < 4)  # bright in 4 of each pixel's 9 planes
    vol = open_volume(write_zarr(tmp_path / "bg.zarr", (pattern + sample).astype(np.float32), (2, 5, 20), "ZYX"))
    np.testing.assert_allclose(estimate_background(vol), pattern, atol=1e-4)
    model = bd.load_model(stack_models["copy"][0])
    assert model.background is not None and model.background.shape == (40, 36)
    assert (stack_models["copy"][0] / "background.safetensors").is_file()
    other = write_zarr(tmp_path / "other.zarr", pair["data"][:, :32], (3, 16, 16), "ZYX")
    with pytest.raises(InputError, match="background pattern of 40x36"):
        bd.predict(other, stack_models["copy"][0], tmp_path / "o.zarr", cluster="threads", progress=False)
    with pytest.raises(InputError, match="feeds planes along Z"):
        bd.predict(pair["data"][0], stack_models["self"][0], tmp_path / "p.zarr", axes="YX", cluster="threads",
                   progress=False)


def test_cosine_schedule_and_resume(tmp_path, pair):
    kw = dict(method="noise2stack", progress=False, patch=(16, 16), **{**TINY, "val_every": 2})
    bd.train(pair["input"], tmp_path / "m", **{**kw, "steps": 4})
    state = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())
    assert state["scheduler"]["schedule"] == "cosine"
    rows = [r.split(",") for r in (tmp_path / "m" / "history.csv").read_text().splitlines()[1:]]
    lr0 = bd.load_model(tmp_path / "m").train_config.lr
    # the LR of step s (0-based) of 4 is lr0 * (1 + cos(pi * s / 4)) / 2; rows log the last step's
    assert [float(r[4]) for r in rows] == pytest.approx([lr0 * (1 + np.cos(np.pi * s / 4)) / 2 for s in (1, 3)])
    model = bd.train(pair["input"], tmp_path / "m", resume=True, **{**kw, "steps": 6})
    assert model.info["steps"] == 6


# --- the command line ------------------------------------------------------------------------

CLI_TINY = ["--steps", "2", "--val-every", "2", "--batch-size", "4", "--depth", "1", "--features", "4", "--quiet",
            "--device", "cpu"]


def test_cli_end_to_end(tmp_path, pair, capsys):
    m = str(tmp_path / "m")
    assert main(["train", pair["input"], "--axes", "ZYX", "--method", "noise2stack", "--stack-axis", "z",
                 "--neighbours", "1", "--mode", "copy", "--target", pair["second"], "--remove-background",
                 "--patch", "16,16", "--out", m, *CLI_TINY]) == 0
    assert "trained noise2stack for 2 steps" in capsys.readouterr().out
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["stack_axis"] == "Z" and doc["spatial_axes"] == "YX" and doc["channel_halo"] == 1
    assert doc["train_config"]["options"] == {"stack_axis": "Z", "neighbours": 1, "mode": "copy"}
    assert main(["predict", pair["input"], "--model", m, "--out", str(tmp_path / "out.zarr"), "--cluster",
                 "threads", "--quiet"]) == 0
    assert zarr.open_array(str(tmp_path / "out.zarr"), mode="r").shape == pair["data"].shape


def test_cli_paired_methods_and_their_errors(tmp_path, pair, capsys):
    src = write_zarr(tmp_path / "in.zarr", pair["data"], (3, 16, 16), "SYX")
    for method, target in (("n2n", "second"), ("care", "clean")):
        second = write_zarr(tmp_path / f"{target}.zarr", zarr.open_array(pair[target], mode="r")[...], (7, 20, 20),
                            "SYX")
        assert main(["train", src, "--method", method, "--target", second, "--patch", "16,16", "--loss", "mse",
                     "--out", str(tmp_path / method), *CLI_TINY]) == 0
        assert bd.load_model(tmp_path / method).options.loss == "mse"
    capsys.readouterr()
    assert main(["train", pair["input"], "--method", "care", "--patch", "6,16,16", "--out", str(tmp_path / "x"),
                 *CLI_TINY]) == 2
    assert "--target" in capsys.readouterr().err
    assert main(["train", pair["input"], "--method", "noise2stack", "--target", pair["second"], "--patch", "16,16",
                 "--out", str(tmp_path / "y"), *CLI_TINY]) == 2
    assert "--mode copy" in capsys.readouterr().err
