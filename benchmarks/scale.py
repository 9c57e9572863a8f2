"""Memory and throughput of ``bigdenoise predict`` as the volume grows.

Writes a synthetic light-sheet-like uint16 volume (sparse bright blobs and fibres on a dark
background, Poisson shot noise plus Gaussian read noise) with chunks 64x256x256 for each
requested size, then runs ``bigdenoise predict`` against a real ``dask scheduler`` and
``dask worker`` processes started here, with a deliberately tiny network (the engine is under
test, not the U-Net: depth 1, 4 features by default). The peak resident memory of every process — scheduler, each worker, the
client (the ``bigdenoise predict`` command) — is sampled every 0.2 s.

    python benchmarks/scale.py --sizes 0.5,4 [--workers 1] [--threads 2] [--record]

Sizes are in GB of uint16 input. The Z extent grows with the size; Y and X stay 1024 x 1024.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from bigdenoise.runtime import ALLOCATOR_ENV
from datasets import LIGHTSHEET_CHUNKS, write_lightsheet_volume
from speed import untrained_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_size(work: Path, gbytes: float, workers: int, threads: int, tile: int) -> dict:
    src = work / f"in-{gbytes:g}GB.zarr"
    out = work / f"out-{gbytes:g}GB.zarr"
    t0 = time.perf_counter()
    shape = write_lightsheet_volume(src, gbytes)
    print(f"wrote {src} {shape} uint16 in {time.perf_counter() - t0:.0f} s", flush=True)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker_procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                      str(threads), "--no-nanny", "--no-dashboard", "--memory-limit", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, **ALLOCATOR_ENV})  # as the README says
                    for _ in range(workers)]
    monitors = [common.TreeRSS(p.pid) for p in [scheduler, *worker_procs]]
    for m in monitors:
        m.__enter__()
    try:
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=60)
        cmd = [common.bigdenoise_exe(), "predict", str(src), "--model", str(work / "model"), "--out", str(out),
               "--cluster", address, "--dtype", "input", "--tile", f"{tile},{tile},{tile}", "--overwrite", "--quiet"]
        result = common.run_command(cmd)
    finally:
        for m in monitors:
            m.__exit__(None, None, None)
        for p in [*worker_procs, scheduler]:
            p.kill()
            p.wait()
    voxels = math.prod(shape)
    row = {
        "gbytes": gbytes, "shape": shape, "voxels": voxels, "seconds": result["seconds"],
        "mvox_s": voxels / result["seconds"] / 1e6, "client_mb": result["peak_rss_mb"],
        "scheduler_mb": monitors[0].peak_mb, "worker_mb": [m.peak_mb for m in monitors[1:]],
    }
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    print(f"{gbytes:g} GB: {row['mvox_s']:.2f} Mvox/s, peak RSS client {row['client_mb']:.0f} MB, scheduler "
          f"{row['scheduler_mb']:.0f} MB, workers {', '.join(f'{w:.0f}' for w in row['worker_mb'])} MB", flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.5,4", help="input sizes in GB (uint16), comma-separated")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="threads per worker")
    p.add_argument("--features", type=int, default=4, help="U-Net features (depth 1)")
    p.add_argument("--tile", type=int, default=128, help="tile core size per axis")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument("--record", action="store_true")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop our dask processes
    work = Path(a.work or tempfile.mkdtemp(prefix="bigdenoise-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    from bigdenoise.normalize import Stats

    # a tiny untrained 3D N2V package (depth 1): the engine is under test, not the U-Net
    untrained_model(work / "model", "ZYX", 1, a.features, Stats(150.0, 100.0, 90.0, 900.0, 1))
    probes = [common.probe("before")]
    rows = [run_size(work, float(s), a.workers, a.threads, a.tile) for s in a.sizes.split(",")]
    probes.append(common.probe("after"))
    lines = ["| input | shape (ZYX) | Mvox/s | client peak RSS | scheduler peak RSS | worker peak RSS |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['gbytes']:g} GB | {r['shape']} | {r['mvox_s']:.2f} | {r['client_mb']:.0f} MB | "
                     f"{r['scheduler_mb']:.0f} MB | {', '.join(f'{w:.0f}' for w in r['worker_mb'])} MB |")
    first, last = rows[0], rows[-1]
    peak = lambda r: max([r["client_mb"], r["scheduler_mb"], *r["worker_mb"]])  # noqa: E731
    summary = (f"Largest / smallest: peak RSS {peak(last) / peak(first):.2f}x, throughput per voxel "
               f"{last['mvox_s'] / first['mvox_s']:.2f}x; highest peak of any process {max(peak(r) for r in rows):.0f} MB.")
    print("\n".join(lines) + "\n" + summary)
    if a.record:
        text = "\n".join([
            "## Scale: memory bounded by the block, not the volume (`benchmarks/scale.py`)", "",
            f"Run {common.now()}. " + common.format_machine(common.machine_info(), probes), "",
            f"Reproduce: `{common.this_command()}`", "",
            f"Real `dask scheduler` + {a.workers} `dask worker` process(es) ({a.threads} threads each) on this machine, "
            "`bigdenoise predict --cluster tcp://... --dtype input` as the client; synthetic uint16 light-sheet-like "
            f"volume, chunks {LIGHTSHEET_CHUNKS}, untrained 3D U-Net depth 1 / {a.features} features, tiles {a.tile}^3. "
            "Peak RSS sampled every 0.2 s.", "",
            *lines, "", summary,
        ])
        common.replace_section(common.RESULTS, "scale", text, common.TOPIC_SCALE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
