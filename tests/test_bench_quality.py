"""The benchmarks' pure pieces that decide what a quality number means: the TIRF references that
leave each frame's input window out, the training-seed list, and the over-seeds summaries
(``benchmarks/datasets.py``, ``benchmarks/quality.py``; no training here)."""

import argparse
import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The modules ``datasets`` and ``quality`` imported as the scripts import them (the
    benchmarks folder on ``sys.path``), removed again afterwards."""
    sys.path.insert(0, str(BENCH))
    try:
        mods = argparse.Namespace(datasets=importlib.import_module("datasets"),
                                  quality=importlib.import_module("quality"))
        yield mods
    finally:
        sys.path.remove(str(BENCH))
        for name in ("quality", "datasets", "common"):
            sys.modules.pop(name, None)


def test_window_out_reference_leaves_out_each_frames_input_window(bench):
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(8, 3, 4)).astype(np.float32)
    ref = bench.datasets.window_out_reference(frames, 2)
    # End frames: Noise2Stack's stack rule reads 0, 1, 2 around frame 0 and 0..3 around frame 1.
    np.testing.assert_allclose(ref[0], frames[3:].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref[1], frames[4:].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref[4], frames[[0, 1, 7]].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref[7], frames[:5].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bench.datasets.window_out_reference(frames, 0)[2],
                               np.delete(frames, 2, axis=0).mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="leave none"):
        bench.datasets.window_out_reference(frames[:5], 2)


def test_parse_seeds(bench):
    parse = bench.quality.parse_seeds
    assert parse("3", 0) == [0, 1, 2]
    assert parse("2", 10) == [10, 11]
    assert parse("0,5,9", 4) == [0, 5, 9]
    for bad in ("0", "x", "1,1", "1,a"):
        with pytest.raises(ValueError):
            parse(bad, 0)
    a = bench.quality.parse_args(["--datasets", "tirf", "--methods", "noisy,n2v", "--seed", "7"])
    assert a.seeds == [7, 8, 9] and bench.quality.DEFAULT_SEEDS >= 3
    assert bench.quality.parse_args(["--seeds", "4,2"]).seeds == [4, 2]
    with pytest.raises(SystemExit):
        bench.quality.parse_args(["--seeds", "0"])


def test_seed_summaries_and_paired_gain(bench):
    q = bench.quality
    noisy = {"seeds": [], "psnr": [[20.0, 22.0]], "ssim": [[0.5, 0.6]]}
    n2v = {"seeds": [0, 1, 2], "psnr": [[25.0, 27.0], [26.0, 28.0], [27.0, 29.0]],
           "ssim": [[0.7, 0.8]] * 3}
    mean, std, lo, hi = q.seed_spread(n2v["psnr"])
    assert (mean, lo, hi) == (27.0, 26.0, 28.0) and math.isclose(std, 1.0)
    assert q._spread_cell(n2v["psnr"], 2) == "27.00 ± 1.00 [26.00, 28.00]"
    assert q._spread_cell(noisy["psnr"], 2) == "21.00"
    diffs = q.paired_diffs(n2v, noisy)  # the deterministic row pairs with every seed
    assert [list(d) for d in diffs] == [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]
    with pytest.raises(ValueError, match="pair"):
        q.paired_diffs(n2v, {"psnr": [[1.0, 2.0]] * 2})

    results = {"tirf": {"runs": {"noisy": noisy, "n2v": n2v}, "skipped": {}}}
    assert q.first_baseline(results["tirf"], ["n2v", "noisy"]) == "noisy"


def test_report_shows_the_seed_spread_and_the_paired_gain(bench, monkeypatch):
    q = bench.quality
    for name, value in (("now", "today"), ("format_machine", "a machine"), ("this_command", "python quality.py")):
        monkeypatch.setattr(q.common, name, lambda *args, _v=value: _v)
    noisy = {"seeds": [], "psnr": [[20.0, 22.0]], "ssim": [[0.5, 0.6]], "seconds": 0.0}
    n2v = {"seeds": [0, 1, 2], "psnr": [[25.0, 27.0], [26.0, 28.0], [27.0, 29.0]], "ssim": [[0.7, 0.8]] * 3,
           "steps": "10/11/12", "train_s": 1.0, "predict_s": 0.5, "note": ""}
    results = {"tirf": {"runs": {"noisy": noisy, "n2v": n2v}, "skipped": {}}}
    a = q.parse_args(["--datasets", "tirf", "--methods", "noisy,n2v"])
    ds = argparse.Namespace(description="frames", paper="")
    text = q.report(results, {"tirf": ds}, a.methods, a, {}, [], 60.0)
    assert "| n2v | 27.00 ± 1.00 [26.00, 28.00] |" in text
    assert "| noisy | 21.00 |" in text
    assert "| method | tirf (− noisy) |" in text and "| n2v | +6.00 ± 1.00 [+5.00, +7.00] |" in text
    assert "3 training seeds" in text and "0, 1, 2" in text
    assert "PSNR per seed 0: 26.00 ± 1.00, 1: 27.00 ± 1.00, 2: 28.00 ± 1.00 dB" in text
