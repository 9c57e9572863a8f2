"""One writer per chunk (DESIGN.md invariant 2), counted at the store: a real prediction on an
external scheduler with two worker processes writes every chunk of the output and of its pyramid
levels exactly once, from the workers, and nothing from the client."""

import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr

import bigdenoise as bd

from chunk_writes import WriteLog, install, read_log
from conftest import smooth_volume, write_zarr

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def scheduler_with_two_workers():
    """``tcp://`` address of a ``dask scheduler`` with two ``dask worker`` processes that can
    import ``chunk_writes`` (this folder on their PYTHONPATH)."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], **quiet)]
    procs += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                "--no-nanny", "--no-dashboard"], **quiet) for _ in range(2)]
    try:
        yield address
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_each_output_chunk_is_written_exactly_once_by_a_worker(tmp_path, model_2d, scheduler_with_two_workers):
    """Level 0 and the levels ``--pyramid`` adds: every chunk of every level once, from the workers."""
    from distributed import Client

    model_dir, _, _ = model_2d
    data, _ = smooth_volume((4, 64, 72), seed=7)
    src = write_zarr(tmp_path / "in.zarr", data, (1, 32, 32), "SYX")
    out, log = tmp_path / "out.ome.zarr", tmp_path / "writes.log"
    with Client(scheduler_with_two_workers, timeout="60s") as client:
        client.wait_for_workers(2, timeout=60)
        client.register_plugin(WriteLog(log), name="chunk-writes")
        worker_pids = set(client.run(os.getpid).values())
    undo = install(log)  # the client's writes too: it may write metadata, never a chunk
    try:
        # chunks uneven at the far edges (64 = 2*24 + 16, 72 = 2*28 + 16); blocks of 2 chunks
        summary = bd.predict(src, model_dir, out, cluster=scheduler_with_two_workers, chunks=(1, 24, 28),
                             block_voxels=2 * 24 * 28, tile=(16, 16), batch_size=1, pyramid=2, progress=False)
    finally:
        undo()
    group = zarr.open_group(str(out), mode="r")
    expected = set()
    for level in ("0", "1"):  # 64x72, then 32x36: one chunk and a part in Y and X
        arr = group[level]
        grid = tuple(-(-n // c) for n, c in zip(arr.shape, arr.chunks))
        expected |= {f"{level}/{arr.metadata.encode_chunk_key(i)}" for i in np.ndindex(*grid)}
    assert summary["levels"] == 2 and len(expected) == 4 * 3 * 3 + 4 * 2 * 2
    assert summary["blocks"] < 4 * 3 * 3  # blocks of several chunks
    writes = [(pid, (Path(root) / key).relative_to(out.resolve()).as_posix())
              for pid, root, key in read_log(log) if out.resolve() in (Path(root) / key).parents]
    chunk_writes = [(pid, key) for pid, key in writes if "/c/" in key]
    counts = Counter(key for _, key in chunk_writes)
    twice = {k: n for k, n in counts.items() if n != 1}
    assert not twice, f"chunks written more than once: {twice}"
    assert set(counts) == expected, f"chunks never written: {sorted(expected - set(counts))}"
    writers = {pid for pid, _ in chunk_writes}
    assert writers <= worker_pids, "a chunk was written outside the workers (by the client)"
    assert len(writers) == 2, "both worker processes should have written chunks"
    assert np.isfinite(group["0"][...]).all()
