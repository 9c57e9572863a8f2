"""Multiscale OME-Zarr outputs: the level plan, the 2x mean (odd sizes: the trailing row is
averaged over what exists), NGFF 0.4 / 0.5 metadata validated by ome-zarr-models, kill +
--resume byte-identical on every level, and ``bigdenoise pyramid`` on an existing output."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr_models import v04, v05
from ome_zarr_models.common.omero import Omero

import bigdenoise as bd
from bigdenoise.cli import main
from bigdenoise.errors import ConfigError
from bigdenoise.pyramid import downsample, plan_levels
from bigdenoise.writer import DONE_DIR

from conftest import smooth_volume, write_zarr


def reference_mean(x: np.ndarray, factors) -> np.ndarray:
    """2x mean written another way: pad each reduced axis with NaN to a multiple of 2, nanmean."""
    x = np.asarray(x, np.float64)
    pad = [(0, (-n) % f) for n, f in zip(x.shape, factors)]
    x = np.pad(x, pad, constant_values=np.nan)
    shape = []
    for n, f in zip(x.shape, factors):
        shape += [n // f, f]
    return np.nanmean(x.reshape(shape), axis=tuple(range(1, 2 * x.ndim, 2)))


# --------------------------------------------------------------------------- pure planning


def test_plan_reduces_z_only_once_the_in_plane_voxels_reach_it():
    plan = plan_levels((40, 2048, 1501), "ZYX", scale=(2.0, 0.5, 0.5), levels=4)
    assert [lv.shape for lv in plan] == [(40, 2048, 1501), (40, 1024, 751), (40, 512, 376), (20, 256, 188)]
    assert [lv.factors for lv in plan[1:]] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert plan[3].scale == (4.0, 4.0, 4.0)
    # translation of level k: level k-1's plus half a voxel of level k-1 along each reduced axis
    assert plan[1].translation == (0.0, 0.25, 0.25) and plan[2].translation == (0.0, 0.75, 0.75)
    assert plan[3].translation == (1.0, 1.75, 1.75)
    # automatic: until Y and X fit 512; time and channel axes are never reduced
    auto = plan_levels((3, 2, 1030, 40), "TCYX")
    assert [lv.shape for lv in auto] == [(3, 2, 1030, 40), (3, 2, 515, 20), (3, 2, 258, 10)]
    assert len(plan_levels((5, 100, 100), "ZYX")) == 1
    with pytest.raises(ConfigError, match="at most 3"):
        plan_levels((1, 4, 3), "SYX", levels=4)


def test_downsample_averages_a_trailing_odd_row_over_what_exists():
    x = np.arange(5 * 3 * 7, dtype=np.float32).reshape(5, 3, 7) ** 1.5
    got = downsample(x, (2, 1, 2))
    assert got.shape == (3, 3, 4)
    np.testing.assert_allclose(got, reference_mean(x, (2, 1, 2)), rtol=1e-12)
    assert got[2, 0, 3] == x[4, 0, 6]  # the corner voxel has one voxel under it
    assert got[2, 1, 0] == (float(x[4, 1, 0]) + float(x[4, 1, 1])) / 2  # in float64, as downsample


# --------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 2D SYX stack and a 3D anisotropic OME-Zarr 0.5 volume (micrometres, a translation)."""
    root = tmp_path_factory.mktemp("pyramid")
    data2, _ = smooth_volume((1, 70, 90), seed=2)
    src2 = write_zarr(root / "in2d.zarr", data2, (1, 16, 16), "SYX")
    data3, _ = smooth_volume((9, 40, 37), seed=4)
    group = zarr.create_group(str(root / "in3d.ome.zarr"), zarr_format=3)
    group.create_array("0", data=data3, chunks=(4, 16, 16), dimension_names=("z", "y", "x"))
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [{"path": "0",
                          "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]},
                                                        {"type": "translation", "translation": [10.0, 0, 0]}]}]}]}
    return {"2d": src2, "3d": str(root / "in3d.ome.zarr") + "/0"}


def _predict(inputs, models, dim, out, **kw):
    model = models[0] if dim == "2d" else models[1]
    return bd.predict(inputs[dim], model, out, cluster="threads", progress=False, **kw)


@pytest.fixture(scope="module")
def models(model_2d, model_3d):
    return model_2d[0], model_3d[0]


def _levels(path) -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    ms = (group.attrs.get("ome") or group.attrs)["multiscales"][0]
    return [group[d["path"]][...] for d in ms["datasets"]]


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("pyramid", [False, 3])
def test_outputs_validate_and_each_level_is_the_mean_of_the_one_before(tmp_path, inputs, models, ngff, dim,
                                                                          pyramid):
    out = tmp_path / "out.ome.zarr"
    summary = _predict(inputs, models, dim, out, ngff=ngff, pyramid=pyramid)
    group = zarr.open_group(str(out), mode="r")
    image = (v04 if ngff == "0.4" else v05).Image.from_zarr(group)  # raises when the metadata are invalid
    assert group.metadata.zarr_format == (2 if ngff == "0.4" else 3)
    ms = image.ome_attributes.multiscales[0]
    n = 3 if pyramid else 1
    assert summary["levels"] == n and len(ms.datasets) == n
    levels = _levels(out)
    # 2D: Y and X halve each level; 3D (z 2 um, yx 0.5 um): Z waits until Y/X reach 2 um
    scale = [1.0, 1.0, 1.0] if dim == "2d" else [2.0, 0.5, 0.5]
    shift = [0.0, 0.0, 0.0] if dim == "2d" else [10.0, 0.0, 0.0]
    for k, dataset in enumerate(ms.datasets):
        if k:
            factors = (1, 2, 2)
            shift = [t + (f - 1) * s / 2 for t, s, f in zip(shift, scale, factors)]
            scale = [s * f for s, f in zip(scale, factors)]
            np.testing.assert_array_equal(levels[k], reference_mean(levels[k - 1], factors).astype(np.float32))
        transforms = {t.type: t for t in dataset.coordinateTransformations}
        assert list(transforms["scale"].scale) == pytest.approx(scale)
        written = transforms["translation"].translation if "translation" in transforms else [0.0] * 3
        assert list(written) == pytest.approx(shift)
    if dim == "3d":
        assert [a.unit for a in ms.axes] == ["micrometer"] * 3
    omero = (group.attrs["ome"] if ngff == "0.5" else group.attrs)["omero"]
    window = Omero.model_validate(omero).channels[0].window
    lo, hi = float(levels[-1].min()), float(levels[-1].max())
    assert lo <= window.start < window.end <= hi


def test_plain_zarr_stays_a_bare_array_and_refuses_pyramid_flags(tmp_path, inputs, models):
    out = tmp_path / "plain.zarr"
    _predict(inputs, models, "2d", out)
    assert isinstance(zarr.open(str(out), mode="r"), zarr.Array)
    for kw in ({"pyramid": True}, {"ngff": "0.4"}):
        with pytest.raises(ConfigError, match="OME-Zarr output"):
            _predict(inputs, models, "2d", tmp_path / "other.zarr", **kw)
        assert not (tmp_path / "other.zarr").exists()


def test_pyramid_command_adds_levels_to_an_existing_output(tmp_path, inputs, models, capsys):
    one, three = tmp_path / "one.ome.zarr", tmp_path / "three.ome.zarr"
    _predict(inputs, models, "3d", one)
    _predict(inputs, models, "3d", three, pyramid=3)
    assert main(["pyramid", str(one), "--levels", "3", "--cluster", "threads", "--quiet"]) == 0
    assert "has 3 levels" in capsys.readouterr().out
    for a, b in zip(_levels(one), _levels(three), strict=True):
        np.testing.assert_array_equal(a, b)
    assert zarr.open_group(str(one)).attrs["ome"] == zarr.open_group(str(three)).attrs["ome"]
    assert not (one / DONE_DIR).exists()
    v05.Image.from_zarr(zarr.open_group(str(one), mode="r"))
    # refused: a plain output, data bigdenoise did not write, a missing path
    _predict(inputs, models, "2d", tmp_path / "plain.zarr")
    for target, needle in ((tmp_path / "plain.zarr", "plain Zarr array"), (inputs["2d"], "not written by bigdenoise"),
                           (tmp_path / "nothing.ome.zarr", "does not exist")):
        assert main(["pyramid", str(target), "--cluster", "threads", "--quiet"]) == 2
        assert needle in capsys.readouterr().err


def _level_records(out: Path) -> int:
    d = out / DONE_DIR
    return sum(n.startswith("L") for n in os.listdir(d)) if d.is_dir() else 0


@pytest.mark.slow
def test_killed_pyramid_resumes_to_identical_bytes_on_every_level(tmp_path, model_2d):
    model_dir = model_2d[0]
    data, _ = smooth_volume((1, 1030, 40), seed=7)
    src = write_zarr(tmp_path / "in.zarr", data, (1, 16, 16), "SYX")
    kw = dict(cluster="threads", progress=False, block_voxels=1, batch_size=1, pyramid=True)
    ref, out = tmp_path / "ref.ome.zarr", tmp_path / "out.ome.zarr"
    bd.predict(src, model_dir, ref, **kw)
    cmd = [sys.executable, "-m", "bigdenoise.cli", "predict", src, "--model", str(model_dir), "--out", str(out),
           "--cluster", "threads", "--quiet", "--block-voxels", "1", "--batch-size", "1", "--pyramid"]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 300
    while _level_records(out) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    group = zarr.open_group(str(out), mode="r")
    listed = len(group.attrs["ome"]["multiscales"][0]["datasets"])
    assert _level_records(out) >= 5 and listed < 3, "the run should have been killed while writing level 1 or 2"
    bd.predict(src, model_dir, out, resume=True, **kw)
    a, b = _levels(out), _levels(ref)
    assert len(a) == len(b) == 3 and [x.shape for x in a] == [(1, 1030, 40), (1, 515, 20), (1, 258, 10)]
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    assert zarr.open_group(str(out)).attrs["ome"] == zarr.open_group(str(ref)).attrs["ome"]
    assert not (out / DONE_DIR).exists()


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_ome_zarr_py_reader_returns_every_level_with_its_scale_and_window(tmp_path, inputs, models, ngff):
    """ome-zarr-py's reader (what napari-ome-zarr and other viewers build on) sees the pyramid."""
    reader = pytest.importorskip("ome_zarr.reader", reason="ome-zarr is not installed (pip install -e .[test])")
    from ome_zarr.io import parse_url

    out = tmp_path / "out.ome.zarr"
    _predict(inputs, models, "3d", out, pyramid=3, ngff=ngff)
    image = next(iter(reader.Reader(parse_url(str(out)))()))
    stored = _levels(out)
    assert [d.shape for d in image.data] == [x.shape for x in stored] == [(9, 40, 37), (9, 20, 19), (9, 10, 10)]
    for level, x in zip(image.data, stored):
        np.testing.assert_array_equal(np.asarray(level), x)
    scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
    assert np.allclose(scales, [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [2.0, 2.0, 2.0]])  # Z kept: anisotropic
    assert [a.get("unit") for a in image.metadata["axes"]] == ["micrometer"] * 3
    attrs = zarr.open_group(str(out)).attrs
    window = attrs.get("ome", attrs)["omero"]["channels"][0]["window"]  # 0.4: at the top
    assert image.metadata["contrast_limits"] == [pytest.approx([window["start"], window["end"]])]


def test_napari_reader_returns_every_level_with_its_scale(tmp_path, inputs, models):
    napari_ome_zarr = pytest.importorskip("napari_ome_zarr",
                                          reason="napari-ome-zarr is not installed (pip install -e .[test])")
    out = tmp_path / "out.ome.zarr"
    _predict(inputs, models, "3d", out, pyramid=3)
    reader = napari_ome_zarr.napari_get_reader(str(out))
    assert reader is not None
    (data, kwargs, kind), = reader(str(out))
    stored = _levels(out)
    assert kind == "image" and [d.shape for d in data] == [x.shape for x in stored] == [(9, 40, 37), (9, 20, 19),
                                                                                         (9, 10, 10)]
    for level, x in zip(data, stored):
        np.testing.assert_array_equal(np.asarray(level), x)
    assert list(kwargs["scale"]) == pytest.approx([2.0, 0.5, 0.5])  # level 0's; napari derives the others
    window = zarr.open_group(str(out)).attrs["ome"]["omero"]["channels"][0]["window"]
    assert list(kwargs["contrast_limits"]) == pytest.approx([window["start"], window["end"]])


def test_resume_with_another_ngff_version_is_refused(tmp_path, inputs, models):
    out = tmp_path / "out.ome.zarr"
    _predict(inputs, models, "2d", out, ngff="0.4")
    for kw in ({"ngff": "0.5"}, {}):  # 0.5 is the default
        with pytest.raises(ConfigError, match="ngff"):
            _predict(inputs, models, "2d", out, resume=True, **kw)
    _predict(inputs, models, "2d", out, resume=True, ngff="0.4", pyramid=2)  # the same version: levels may be added
    assert len(_levels(out)) == 2 and zarr.open_group(str(out), mode="r").metadata.zarr_format == 2
