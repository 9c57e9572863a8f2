"""A method's fast path against its reference path at prediction: D-BSN's distilled U-Net
against its posterior mean (``prediction=posterior``), COSDD's direct denoiser against the mean
of ``--samples`` latent samples (``prediction=sampled``).

Both paths predict the same volume from the same model package through ``bigdenoise.predict``,
Zarr to Zarr, everything included (cluster, model load, reads, tiling, writes), each with the
halo its own networks need; rounds are interleaved (fast, reference, fast, ...) and medians
reported. D-BSN's default volume is large enough that a call's start-up is a small part of its
time (``quality.py`` times whole calls on a few Mvox, which understates the ratio); COSDD's is
small because its sampled path is slow, so the start-up weighs on the direct path and the ratio
is a lower bound.

Speed does not depend on the weights: the package is untrained, with the method's default
networks, unless ``--model`` names a trained one.

Usage: python benchmarks/fast_path.py [--method dbsn|cosdd] [--shape 64,512,512] [--samples 100]
                                      [--model M] [--repeats 3] [--record [--section NAME]]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import common
from datasets import write_random_volume
from speed import fresh_worker_state, parse_shape, untrained_model

# method: (fast path's options, reference path's options (None: --samples), default volume SYX, goal)
PATHS = {
    "dbsn": ({"prediction": "distilled"}, {"prediction": "posterior"}, (64, 512, 512), 3.0),
    "cosdd": ({"prediction": "direct"}, None, (4, 256, 256), 20.0),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="dbsn", choices=tuple(PATHS), help="method (default dbsn)")
    p.add_argument("--shape", type=parse_shape,
                   help="SYX volume shape (default 64,512,512 for dbsn, 4,256,256 for cosdd)")
    p.add_argument("--samples", type=int, default=100, help="cosdd: latent samples of the reference path (default 100)")
    p.add_argument("--model", help="a trained package of --method (default: an untrained one, its default networks)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3); medians are reported")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--work", help="folder for the volume, model and outputs (default: a temporary folder, removed)")
    p.add_argument("--record", action="store_true", help="write the result into benchmarks/RESULTS.md")
    p.add_argument("--section", help="RESULTS.md section to write (default fast-path-METHOD)")
    a = p.parse_args(argv)
    a.section = a.section or f"fast-path-{a.method}"
    fast, reference, shape, a.goal = PATHS[a.method]
    a.shape = tuple(a.shape or shape)
    if len(a.shape) != 3:
        p.error(f"--shape {a.shape}: give S,Y,X")
    if a.repeats < 1 or a.samples < 1:
        p.error("--repeats and --samples must be >= 1")
    a.paths = {"fast": fast, "reference": reference or {"prediction": "sampled", "samples": a.samples}}
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    with common.work_folder(a.work, "bigdenoise-fast-path-") as work:  # a refused folder: before any probe
        machine = common.machine_info()
        probes = [common.probe("before")]
        seconds, plans = run_paths(a, work)
        probes.append(common.probe("after"))
        voxels = math.prod(a.shape)
        med = {k: statistics.median(v) for k, v in seconds.items()}
        ratio = med["reference"] / med["fast"]
        verdict = "met" if ratio >= a.goal else "NOT met"
        print(f"\n{a.method}, volume {a.shape} SYX ({voxels:,} voxels), medians of {a.repeats} rounds: fast "
              f"{med['fast']:.2f} s, reference {med['reference']:.2f} s: {ratio:.2f}x (goal >= {a.goal:g}x: {verdict})")
        if a.record:
            _record(a, machine, probes, voxels, seconds, med, plans, ratio, verdict)
    return 0


def run_paths(a: argparse.Namespace, work: Path) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Write the volume (and the untrained package) into ``work`` and predict it ``a.repeats``
    times by each path, interleaved; returns each path's seconds per round and its tile plan."""
    import bigdenoise

    vol_path, out_path = work / "volume.zarr", work / "out.zarr"
    model_path = Path(a.model) if a.model else work / "model"
    for p in (vol_path, out_path, *([] if a.model else [model_path])):
        if p.exists():
            shutil.rmtree(p)
    chunks = (1, *(min(n, 512) for n in a.shape[1:]))
    stats = write_random_volume(vol_path, a.shape, chunks, "SYX", "uint16")
    if not a.model:
        untrained_model(model_path, "SYX", None, None, stats, "untrained; for speed benchmarks only", method=a.method)
    voxels = math.prod(a.shape)
    seconds: dict[str, list[float]] = {k: [] for k in a.paths}
    plans: dict[str, str] = {}
    for r in range(a.repeats):
        for name, options in a.paths.items():
            fresh_worker_state()
            t0 = time.perf_counter()
            summary = bigdenoise.predict(vol_path, model_path, out_path, axes="SYX", cluster="threads",
                                         overwrite=True, options=options, device=a.device, progress=False)
            s = time.perf_counter() - t0
            seconds[name].append(s)
            plans[name] = f"tile {tuple(summary['tile'])}, halo {tuple(summary['halo'])}"
            print(f"round {r + 1}: {name} ({_options(options)}) {s:.2f} s = {voxels / s / 1e6:.3g} Mvox/s; "
                  f"{plans[name]}", flush=True)
    return seconds, plans


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _record(a, machine, probes, voxels, seconds, med, plans, ratio, verdict) -> None:
    rows = "\n".join(
        f"| {name} (`{_options(a.paths[name])}`) | {plans[name]} | {voxels / med[name] / 1e6:.3g} | {med[name]:.2f} | "
        f"{', '.join(f'{s:.2f}' for s in seconds[name])} |" for name in a.paths)
    weights = ("the trained package given (`--model`)" if a.model
               else "an untrained package with the method's default networks (speed does not depend on the weights)")
    text = f"""## Fast path: {a.method}, {a.paths['fast']['prediction']} against {a.paths['reference']['prediction']}

- Date: {common.now()}
- Machine: {common.format_machine(machine, probes)}
- Reproduce: `{common.this_command()}`
- Volume: {a.shape} SYX, uint16, {voxels:,} voxels; {weights}. Both paths through `bigdenoise.predict` (Dask threads), Zarr to Zarr, each call's start-up included; rounds interleaved, medians of {a.repeats}.

| path | plan | Mvox/s | median s | seconds per round |
|---|---|---|---|---|
{rows}

- Fast path **{ratio:.2f}x** faster than the reference (goal >= {a.goal:g}x: {verdict}).
"""
    common.replace_section(common.RESULTS, a.section, text, common.TOPIC_THROUGHPUT)


if __name__ == "__main__":
    sys.exit(main())
