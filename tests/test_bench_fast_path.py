"""``benchmarks/fast_path.py``: each method's fast and reference prediction paths run on the
same volume with their own options (a tiny volume; the timing itself is not checked)."""

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def fast_path():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("fast_path")
    finally:
        sys.path.remove(str(BENCH))
        for name in ("fast_path", "speed", "datasets", "common"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("method, reference", [("dbsn", "posterior"), ("cosdd", "sampled")])
def test_both_paths_predict_the_volume_with_their_own_networks(fast_path, tmp_path, method, reference):
    a = fast_path.parse_args(["--method", method, "--shape", "1,48,40", "--samples", "2", "--repeats", "1",
                              "--device", "cpu"])
    assert a.paths["reference"]["prediction"] == reference
    seconds, plans = fast_path.run_paths(a, tmp_path)
    assert {k: len(v) for k, v in seconds.items()} == {"fast": 1, "reference": 1}
    # each path plans the halo of its own networks (D-BSN or the VAE against the distilled U-Net)
    assert plans["fast"] != plans["reference"], plans
