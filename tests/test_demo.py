"""The demo end to end (short training) improves the image, its reruns, the CLI entry and its refusals."""

import json
import math

import numpy as np
import pytest
import zarr

from bigdenoise import demo
from bigdenoise.cli import main
from bigdenoise.demo import MARKER, find_shared_data, make_phantom, psnr, run_demo
from bigdenoise.errors import InputError, OutputError

from conftest import shared_data

# The demo's training budget here is a number of steps, not seconds, so that the result is the
# same on a fast or a loaded machine (max_time only caps it). Measured with seed 0 on a CPU:
# 10 steps make the image worse (set12 20.17 -> 15.2 dB), 25 steps +2.7 dB (phantom +3.4),
# 40 steps +4.8 dB on set12 (20.17 -> 24.92) and +6.5 dB on the phantom (26.82 -> 33.31).
DEMO_STEPS = 40
MIN_GAIN_DB = 2.0  # denoised PSNR must beat noisy PSNR by this much


@pytest.fixture(scope="module")
def steps_budget():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(demo.TRAIN_SETTINGS, "steps", DEMO_STEPS)
        yield


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, steps_budget):
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, run_demo(out, max_time=600, progress=False)


def _check_outputs(out, result):
    for name in ("noisy.zarr", "clean.zarr", "denoised.zarr", "preview.png", "model/config.json",
                 "model/weights.safetensors", "model/loss.png", MARKER):
        assert (out / name).exists(), name
    assert (out / "preview.png").stat().st_size > 10_000
    noisy = zarr.open_array(str(out / "noisy.zarr"), mode="r")
    denoised = zarr.open_array(str(out / "denoised.zarr"), mode="r")
    assert noisy.shape == denoised.shape == tuple(result["shape"]) and noisy.chunks == (1, 128, 128)
    assert noisy.attrs["axes"] == "SYX"
    assert np.isfinite(denoised[...]).all()
    assert math.isfinite(result["psnr_noisy"]) and math.isfinite(result["psnr_denoised"])
    assert result["train_steps"] >= 1 and result["voxels"] == math.prod(result["shape"])
    marker = json.loads((out / MARKER).read_text())
    assert marker["status"] == "done" and marker["psnr_denoised"] == pytest.approx(result["psnr_denoised"])
    assert result["train_steps"] == DEMO_STEPS
    gain = result["psnr_denoised"] - result["psnr_noisy"]
    assert gain >= MIN_GAIN_DB, (f"the demo on {result['data']} did not improve the image enough: "
                                 f"{result['psnr_noisy']:.2f} dB -> {result['psnr_denoised']:.2f} dB")


@pytest.mark.slow
def test_demo_writes_everything_and_improves_the_image(demo_run, capsys):
    out, result = demo_run
    _check_outputs(out, result)
    assert result["data"] in ("set12", "phantom")


@pytest.mark.slow
def test_demo_runs_on_set12_from_the_shared_data(demo_run):
    shared_data("set12", what="Set12 (the demo's data)")  # skips on a fresh clone, fails in CI
    _, result = demo_run
    assert result["data"] == "set12" and result["shape"] == [12, 256, 256]
    assert result["psnr_noisy"] == pytest.approx(20.17, abs=0.1)  # sigma 25, peak 255


@pytest.mark.slow
def test_rerun_through_the_cli_into_the_same_folder(demo_run, tmp_path, capsys):
    out, _ = demo_run
    empty = tmp_path / "no-shared-data"
    empty.mkdir()
    code = main(["demo", "--out", str(out), "--max-time", "600", "--quiet", "--data", str(empty)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "denoised.zarr" in printed and "phantom" in printed
    result = json.loads((out / MARKER).read_text())
    assert result["data"] == "phantom"  # no set12 in that folder: the synthetic phantom
    _check_outputs(out, result)


def test_existing_folder_that_is_not_a_demo_output_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not written by bigdenoise"):
        run_demo(tmp_path, max_time=5, progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
    assert main(["demo", "--out", str(tmp_path), "--max-time", "5", "--quiet"]) == 2


def test_demo_never_writes_into_the_data_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(OutputError, match="shared data"):
        run_demo(data / "out", max_time=5, data=str(data), progress=False)
    assert not (data / "out").exists()


def test_missing_explicit_data_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        find_shared_data(tmp_path / "nowhere")


def test_phantom_and_psnr():
    d = make_phantom(n=2, size=64)
    assert d.noisy.shape == d.clean.shape == (2, 64, 64) and d.noisy.dtype == np.float32
    assert np.isfinite(d.peak) and d.peak > 0
    assert psnr(d.clean, d.clean, d.peak) == math.inf
    assert psnr(np.zeros(4), np.full(4, 25.5), 255.0) == pytest.approx(20.0)
