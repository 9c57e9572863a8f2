"""Runs survive being killed: predict --resume, a lost worker, an external scheduler."""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import bigdenoise as bd
from bigdenoise.clusters import WORKER_CONFIG_ENV
from bigdenoise.runtime import ALLOCATOR_ENV
from bigdenoise.writer import DONE_DIR

from conftest import smooth_volume, write_zarr

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def case(tmp_path_factory, model_2d):
    """A 2D model and a stack with many small blocks, and the uninterrupted threads result."""
    model_dir, _, _ = model_2d
    root = tmp_path_factory.mktemp("faults")
    data, _ = smooth_volume((24, 64, 72), seed=5)
    src = write_zarr(root / "in.zarr", data, (1, 32, 36), "SYX")
    bd.predict(src, model_dir, root / "ref.zarr", cluster="threads", block_voxels=1, progress=False, batch_size=1,
               tile=(32, 32))
    ref = zarr.open_array(str(root / "ref.zarr"), mode="r")[...]
    return model_dir, src, ref


def _done_count(out: Path) -> int:
    d = out / DONE_DIR
    return len(os.listdir(d)) if d.is_dir() else 0


def test_killed_predict_resumes_to_identical_bytes(tmp_path, case):
    model_dir, src, ref = case
    out = tmp_path / "out.zarr"
    cmd = [sys.executable, "-m", "bigdenoise.cli", "predict", src, "--model", str(model_dir), "--out", str(out),
           "--cluster", "threads", "--quiet", "--batch-size", "1", "--tile", "32,32", "--block-voxels", "1"]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 120
    while _done_count(out) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = _done_count(out)
    assert 0 < finished < ref.shape[0] * 2 * 2, "the run should have been killed half-way"
    summary = bd.predict(src, model_dir, out, cluster="threads", resume=True, progress=False, batch_size=1,
                         tile=(32, 32), block_voxels=1)
    assert summary["skipped"] >= finished
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[...], ref)
    assert not (out / DONE_DIR).exists()
    again = bd.predict(src, model_dir, out, cluster="threads", resume=True, progress=False, batch_size=1,
                       tile=(32, 32), block_voxels=1)
    assert again["blocks"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_external_scheduler_and_a_killed_worker(tmp_path, case, caplog):
    """Two ``dask worker`` processes of a ``dask scheduler``, one started as the README says and
    one without those settings, which the run names; then one is killed mid-run."""
    model_dir, src, ref = case
    port = _free_port()
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler = subprocess.Popen(dask + ["--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"tcp://127.0.0.1:{port}"
    worker_cmd = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                  "--no-dashboard"]
    readme = {**os.environ, **ALLOCATOR_ENV, **WORKER_CONFIG_ENV}
    bare = {k: v for k, v in os.environ.items() if k not in {**ALLOCATOR_ENV, **WORKER_CONFIG_ENV}}
    workers = [subprocess.Popen(worker_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environ)
               for environ in (readme, bare)]
    try:
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        kw = dict(cluster=address, progress=False, batch_size=1, tile=(32, 32), block_voxels=1)
        with caplog.at_level(logging.WARNING, logger="bigdenoise.clusters"):
            bd.predict(src, model_dir, tmp_path / "clean-run.zarr", **kw)
        warned = [r.getMessage() for r in caplog.records if r.name == "bigdenoise.clusters"]
        assert len(warned) == 1 and "of the 2 workers" in warned[0], warned
        assert "1 run Dask's statistical profiler" in warned[0] and "1 lack the allocator" in warned[0]
        uninterrupted = zarr.open_array(str(tmp_path / "clean-run.zarr"), mode="r")[...]
        # worker processes and the in-process threads run agree to float rounding
        assert np.abs(uninterrupted - ref).max() <= 1e-4
        out = tmp_path / "tcp.zarr"
        result = {}

        def killer():
            while _done_count(out) < 3:
                time.sleep(0.02)
            workers[0].send_signal(signal.SIGKILL)
            result["killed"] = True

        import threading

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        bd.predict(src, model_dir, out, **kw)
        t.join(timeout=5)
        assert result.get("killed"), "the worker was not killed during the run"
        np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[...], uninterrupted)
    finally:
        for p in workers + [scheduler]:
            p.kill()
            p.wait()
