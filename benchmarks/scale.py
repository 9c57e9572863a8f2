"""Memory and throughput of ``bigdenoise predict`` as the volume grows.

Writes a synthetic light-sheet-like uint16 volume (sparse bright blobs and fibres on a dark
background, Poisson shot noise plus Gaussian read noise) with chunks 64x256x256 for each
requested size, then runs ``bigdenoise predict`` against a real ``dask scheduler`` and
``dask worker`` processes started here, with a deliberately tiny network (the engine is under
test, not the U-Net: depth 1, 4 features by default). The peak resident memory of every process — scheduler, each worker, the
client (the ``bigdenoise predict`` command) — is sampled every 0.2 s.

    python benchmarks/scale.py --sizes 0.5,4 [--workers 1] [--threads 2] [--record]

Sizes are in GB of uint16 input. The Z extent grows with the size; Y and X stay 1024 x 1024.

Long mode (issue 20, item 6: a worker's peak must plateau, not creep with the blocks it has
processed): one volume of ``--blocks`` blocks (one 64x256x256 chunk each; a few drawn slabs
repeated along Z, which only makes it faster to write), predicted once per
allocator policy of ``--policies`` (``bounded``: ``bigdenoise.memory.after_block``'s bounded
heap, as shipped; ``off``: no trim, the heap only grows; ``always``: a trim after every block),
the policies interleaved ``--repeats`` times on fresh workers. Each worker reports, after every
block it finishes, its RSS and its peak RSS so far (``bigdenoise.memory.BlockMemoryLog``):

    python benchmarks/scale.py --long --blocks 2000 --workers 2 --features 8 [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import common
from bigdenoise.clusters import WORKER_CONFIG_ENV
from bigdenoise.memory import TRIM_ENV, BlockMemoryLog, memory_rows
from bigdenoise.runtime import ALLOCATOR_ENV
from datasets import LIGHTSHEET_CHUNKS, LIGHTSHEET_YX, write_lightsheet_volume
from speed import untrained_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dask_processes(workers: int, threads: int, env: dict | None = None):
    """A real ``dask scheduler`` and ``workers`` ``dask worker`` processes (no nanny) started with
    ``runtime.ALLOCATOR_ENV`` and ``clusters.WORKER_CONFIG_ENV`` (no statistical profiler), as the
    README tells users to, and ``env``; yields the scheduler's address and
    one peak-RSS monitor per process (scheduler first). Killed on exit."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker_procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                      str(threads), "--no-nanny", "--no-dashboard", "--memory-limit", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, **ALLOCATOR_ENV, **WORKER_CONFIG_ENV, **(env or {})})
                    for _ in range(workers)]
    monitors = [common.TreeRSS(p.pid) for p in [scheduler, *worker_procs]]
    for m in monitors:
        m.__enter__()
    try:
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=60)
        yield address, monitors
    finally:
        for m in monitors:
            m.__exit__(None, None, None)
        for p in [*worker_procs, scheduler]:
            p.kill()
            p.wait()


def predict_command(src: Path, work: Path, out: Path, address: str, tile: int) -> list[str]:
    return [common.bigdenoise_exe(), "predict", str(src), "--model", str(work / "model"), "--out", str(out),
            "--cluster", address, "--dtype", "input", "--tile", f"{tile},{tile},{tile}", "--overwrite", "--quiet"]


def run_size(work: Path, gbytes: float, workers: int, threads: int, tile: int) -> dict:
    src = work / f"in-{gbytes:g}GB.zarr"
    out = work / f"out-{gbytes:g}GB.zarr"
    t0 = time.perf_counter()
    shape = write_lightsheet_volume(src, gbytes)
    print(f"wrote {src} {shape} uint16 in {time.perf_counter() - t0:.0f} s", flush=True)
    with dask_processes(workers, threads) as (address, monitors):
        result = common.run_command(predict_command(src, work, out, address, tile))
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


LONG_DISTINCT_SLABS = 4
"""The long mode's volume repeats this many drawn slabs along Z (its content does not matter there)."""

LONG_MARKS = (16, 32, 64, 128, 256, 512, 1024, 2048)
"""Blocks done by one worker at which the long mode's table shows its peak."""


def run_long(work: Path, src: Path, policy: str, workers: int, threads: int, tile: int) -> dict:
    """One prediction of ``src`` on fresh workers whose allocator policy is ``policy``
    (``memory.TRIM_ENV``: bounded, off, always); each worker's (blocks done, RSS, peak) rows."""
    out = work / f"out-long-{policy}.zarr"
    env = {TRIM_ENV: {"bounded": "", "off": "0", "always": "always"}[policy]}
    with dask_processes(workers, threads, env) as (address, monitors):
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.register_plugin(BlockMemoryLog(), name=BlockMemoryLog.name)
            result = common.run_command(predict_command(src, work, out, address, tile))
            rows = list(memory_rows(client).values())
    shutil.rmtree(out, ignore_errors=True)
    row = {"policy": policy, "seconds": result["seconds"], "rows": rows,
           "worker_mb": [m.peak_mb for m in monitors[1:]]}
    print(f"{policy}: {row['seconds']:.1f} s, blocks per worker {[len(r) for r in rows]}, worker peak RSS "
          f"{', '.join(f'{w:.0f}' for w in row['worker_mb'])} MB", flush=True)
    return row


def peak_at(rows: list[tuple[int, float, float]], blocks: int) -> float | None:
    """A worker's peak RSS (MB) after its ``blocks``-th block, None when it did fewer."""
    return rows[blocks - 1][2] if len(rows) >= blocks else None


def long_report(runs: list[dict], reference: int) -> tuple[list[str], str]:
    """The long mode's table (a worker's peak RSS after its n-th block, per policy and run) and
    its summary: the last peak against the peak after ``reference`` blocks, predict time ratios."""
    most = max(len(r) for run in runs for r in run["rows"])
    marks = [m for m in LONG_MARKS if m <= most] + ([most] if most not in LONG_MARKS else [])
    lines = ["| policy | run | predict s | worker | " + " | ".join(f"peak after {m}" for m in marks)
             + f" | last / after {reference} |", "| --- " * (len(marks) + 5) + "|"]
    growth: dict[str, list[float]] = {}
    for i, run in enumerate(runs):
        for w, rows in enumerate(run["rows"]):
            peaks = [peak_at(rows, m) for m in marks]
            ref = peak_at(rows, reference)
            ratio = rows[-1][2] / ref if ref and rows else float("nan")
            growth.setdefault(run["policy"], []).append(ratio)
            lines.append(f"| {run['policy']} | {i + 1} | {run['seconds']:.1f} | {w} | "
                         + " | ".join("" if p is None else f"{p:.0f} MB" for p in peaks) + f" | {ratio:.3f} |")
    seconds = {p: [r["seconds"] for r in runs if r["policy"] == p] for p in dict.fromkeys(r["policy"] for r in runs)}
    mean = {p: sum(v) / len(v) for p, v in seconds.items()}
    parts = [f"{p}: peak last / after {reference} blocks {min(g):.3f}-{max(g):.3f}" for p, g in growth.items()]
    if "off" in mean:
        parts += [f"predict time {p} / off {mean[p] / mean['off']:.3f}" for p in mean if p != "off"]
    return lines, "; ".join(parts) + "."


def long_plot(runs: list[dict], path: Path) -> None:
    """Peak and current RSS of every worker against the blocks it has done, one colour per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"bounded": "tab:blue", "off": "tab:red", "always": "tab:green"}
    seen = set()
    for run in runs:
        for rows in run["rows"]:
            if not rows:
                continue
            n, rss, peak = zip(*rows)
            label = None if run["policy"] in seen else run["policy"]
            seen.add(run["policy"])
            ax.plot(n, peak, color=colours.get(run["policy"]), label=label and f"{label}: peak")
            ax.plot(n, rss, color=colours.get(run["policy"]), alpha=0.3, lw=0.7)
    ax.set_xlabel("blocks done by the worker")
    ax.set_ylabel("worker RSS (MB): peak so far; faint: after each block")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main_long(a, work: Path) -> int:
    """The long mode (module docstring)."""
    src = work / f"in-long-{a.blocks}.zarr"
    per_slab = (LIGHTSHEET_YX // LIGHTSHEET_CHUNKS[1]) * (LIGHTSHEET_YX // LIGHTSHEET_CHUNKS[2])
    gbytes = max(1, round(a.blocks / per_slab)) * math.prod(LIGHTSHEET_CHUNKS) * per_slab * 2 / 1e9
    t0 = time.perf_counter()
    shape = write_lightsheet_volume(src, gbytes, distinct_slabs=LONG_DISTINCT_SLABS)
    print(f"wrote {src} {shape} uint16 in {time.perf_counter() - t0:.0f} s", flush=True)
    probes = [common.probe("before")]
    policies = a.policies.split(",")
    runs = [run_long(work, src, policy, a.workers, a.threads, a.tile) for _ in range(a.repeats) for policy in policies]
    probes.append(common.probe("after"))
    shutil.rmtree(src, ignore_errors=True)
    (work / "long-runs.json").write_text(json.dumps(runs))  # the raw rows, for another look
    reference = max(1, 32 // a.workers)
    lines, summary = long_report(runs, reference)
    blocks = math.prod(-(-n // c) for n, c in zip(shape, LIGHTSHEET_CHUNKS))
    print("\n".join(lines) + "\n" + summary)
    figure = common.BENCH_DIR / "figures" / "scale_long.png"
    long_plot(runs, figure if a.record else work / figure.name)
    if a.record:
        text = "\n".join([
            "## Scale: a worker's memory over thousands of blocks (`benchmarks/scale.py --long`)", "",
            f"Run {common.now()}. " + common.format_machine(common.machine_info(), probes), "",
            f"Reproduce: `{common.this_command()}`", "",
            f"{blocks} blocks (volume {shape}, uint16, chunks {LIGHTSHEET_CHUNKS}, one chunk per block; "
            f"{LONG_DISTINCT_SLABS} drawn slabs repeated along Z) on a real "
            f"`dask scheduler` + {a.workers} `dask worker` process(es) ({a.threads} threads each, started with "
            "`runtime.ALLOCATOR_ENV` and without Dask's profiler, `clusters.WORKER_CONFIG_ENV`), "
            "untrained 3D U-Net depth 1 / "
            f"{a.features} features, tiles {a.tile}^3, `bigdenoise predict --cluster tcp://... --dtype input`. "
            f"Policies (`{TRIM_ENV}`), interleaved {a.repeats}x on fresh workers: `bounded` = "
            "`memory.after_block` as shipped, `off` = no trim, `always` = `malloc_trim(0)` after every block. "
            "Each worker reports after every block its peak RSS so far (`memory.BlockMemoryLog`, VmHWM); "
            f"a column is the n-th block of that worker ({reference} of a worker's blocks is about 32 of the run's). "
            "Predict s: the whole `bigdenoise predict` command.", "",
            *lines, "", summary, "", f"![worker RSS against blocks done](figures/{figure.name})",
        ])
        common.replace_section(common.RESULTS, "scale-long", text, common.TOPIC_SCALE)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.5,4", help="input sizes in GB (uint16), comma-separated")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="threads per worker")
    p.add_argument("--features", type=int, default=4, help="U-Net features (depth 1)")
    p.add_argument("--tile", type=int, default=128, help="tile core size per axis")
    p.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--long", action="store_true", help="long mode: worker RSS against blocks done (docstring)")
    p.add_argument("--blocks", type=int, default=2000, help="long mode: blocks (rounded to whole 64-plane slabs of 16)")
    p.add_argument("--policies", default="bounded,off", help="long mode: allocator policies, comma-separated "
                   "(bounded, off, always), interleaved")
    p.add_argument("--repeats", type=int, default=1, help="long mode: runs of each policy")
    p.add_argument("--record", action="store_true")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop our dask processes
    with common.work_folder(a.work, "bigdenoise-scale-") as work:
        return run(a, work)


def run(a: argparse.Namespace, work: Path) -> int:
    """The untrained model and the volumes in ``work``; the short mode or, with ``--long``, the long one."""
    from bigdenoise.normalize import Stats

    # a tiny untrained 3D N2V package (depth 1): the engine is under test, not the U-Net
    untrained_model(work / "model", "ZYX", 1, a.features, Stats(150.0, 100.0, 90.0, 900.0, 1))
    if a.long:
        return main_long(a, work)
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
