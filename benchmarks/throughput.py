"""Throughput: pure model forward on in-memory tiles vs ``bigdenoise.predict`` on a Zarr volume.

Both use the same (untrained) default U-Net package, the same tile plan and the same batch
size, and are measured in one run, interleaved (a, b, a, b, ...):

(a) forward: ``bigdenoise.infer.run_model`` on in-memory normalised tiles of the planner's
    input shape, as many tiles as predict runs over the volume. Reported as output voxels/s
    (the core voxels, i.e. the voxels predict writes) and as raw input-tile voxels/s.
(b) predict: ``bigdenoise.predict(...)`` from the Zarr volume to a Zarr output, wall time of
    the call including everything (cluster start, model load, reads, normalisation, tiling,
    writes), as output voxels/s.

The ratio b/a (goal >= 0.9) says how much of the network's speed the blockwise engine keeps.

Usage: python benchmarks/throughput.py [--shape 64,512,512] [--axes SYX|ZYX] [--depth 2 --features 32]
                                       [--cluster threads|local|threads,local] [--repeats 3] [--record]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import time

import numpy as np

import common
from datasets import write_random_volume
from speed import forward_once, fresh_worker_state, parse_shape, untrained_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=parse_shape, default=(64, 512, 512), help="volume shape (default 64,512,512)")
    p.add_argument("--axes", default="SYX", choices=("SYX", "ZYX", "YX", "TYX"), help="volume axes (default SYX)")
    p.add_argument("--chunks", type=parse_shape,
                   help="storage chunks (default (1, 512, 512) for SYX, (64, 128, 128) for ZYX, capped at the shape)")
    p.add_argument("--dtype", default="uint16", choices=("uint16", "float32"), help="volume dtype (default uint16)")
    p.add_argument("--depth", type=int, default=2, help="U-Net depth (default 2)")
    p.add_argument("--features", type=int, default=32, help="U-Net features (default 32)")
    p.add_argument("--cluster", default="threads",
                   help="threads, local, or both as 'threads,local' (default threads)")
    p.add_argument("--workers", type=int, help="worker processes for --cluster local (default: bigdenoise's)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of (a, b) (default 3); medians are reported")
    p.add_argument("--batch-size", type=int,
                   help="tiles per forward pass, both paths (default: predict's choice, infer.forward_batch_size)")
    p.add_argument("--tile", type=parse_shape, help="tile core size (default: the planner's)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--work", help="folder for the volume, model and output (default: a temporary folder, removed)")
    p.add_argument("--record", action="store_true", help="write the result into benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    if len(a.shape) != len(a.axes):
        p.error(f"--shape {a.shape} needs {len(a.axes)} sizes for axes {a.axes}")
    a.clusters = [c.strip() for c in a.cluster.split(",") if c.strip()]
    for c in a.clusters:
        if c not in ("threads", "local"):
            p.error(f"--cluster {c!r}: use threads, local or threads,local")
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    return a


def default_chunks(shape: tuple[int, ...], axes: str) -> tuple[int, ...]:
    want = {"S": 1, "T": 1, "Z": 64, "Y": 512, "X": 512} if "Z" not in axes else {"Z": 64, "Y": 128, "X": 128}
    return tuple(min(want[a], n) for a, n in zip(axes, shape))


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    import bigdenoise
    from bigdenoise.infer import for_inference, forward_batch_size, plan_for
    from bigdenoise.package import load_model
    from bigdenoise.runtime import tune_allocator
    from bigdenoise.tiling import block_shape_for
    from bigdenoise.train import pick_device

    # As predict does in its process and in every worker; first, before any thread allocates.
    tune_allocator()
    device = str(pick_device(a.device))
    # predict's in-process ("threads") worker sets torch to os.cpu_count() threads (execute.dask_client);
    # use the same for the forward path so both run with the same thread count.
    torch.set_num_threads(os.cpu_count() or 1)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    with common.work_folder(a.work, "bigdenoise-throughput-") as work:  # a refused folder: before any probe
        machine = common.machine_info()
        probes = [common.probe("before")]
        shape, axes = tuple(a.shape), a.axes
        chunks = tuple(min(c, n) for c, n in zip(a.chunks, shape)) if a.chunks else default_chunks(shape, axes)
        vol_path, model_path, out_path = work / "volume.zarr", work / "model", work / "out.zarr"
        for p in (vol_path, model_path, out_path):
            if p.exists():
                shutil.rmtree(p)
        t0 = time.perf_counter()
        stats = write_random_volume(vol_path, shape, chunks, axes, a.dtype)
        untrained_model(model_path, axes, a.depth, a.features, stats, "untrained; for throughput benchmarks only")
        print(f"wrote {vol_path} {shape} {axes} {a.dtype} chunks {chunks} and an untrained U-Net "
              f"(depth {a.depth}, features {a.features}) in {time.perf_counter() - t0:.1f} s", flush=True)

        model = for_inference(load_model(model_path, device=device))  # as predict's workers run it
        block = block_shape_for(chunks, shape, 4 * 2**20)  # as predict chooses it
        plan = plan_for(model, shape, axes, tile=a.tile, block=block)
        a.batch_size = forward_batch_size(model, plan, a.batch_size, a.precision)
        n_tiles = math.prod(plan.n_tiles)
        voxels = math.prod(shape)
        spatial = [i for i, r in enumerate(plan.roles) if r == "spatial"]
        net_input = (1, *(plan.input_shape[i] for i in spatial))
        tile_in_voxels = math.prod(plan.input_shape)
        input_voxels = n_tiles * tile_in_voxels
        halo_overhead = input_voxels / voxels
        print(f"plan: tile {plan.tile}, halo {plan.halo}, tile input {plan.input_shape} "
              f"(net input {net_input}), {n_tiles} tiles, batch {a.batch_size}; predict blocks {block}; "
              f"halo overhead (input tile voxels / output voxels) {halo_overhead:.3f}; device {device}, "
              f"torch threads {torch.get_num_threads()}", flush=True)

        rng = np.random.default_rng(1)
        n_pool = max(1, min(4, math.ceil(n_tiles / a.batch_size)))
        pool = [rng.standard_normal((a.batch_size, *net_input)).astype(np.float32) for _ in range(n_pool)]
        forward_once(model, pool, min(n_tiles, a.batch_size), a.batch_size, a.precision, sync)  # warm-up

        forward_s: list[float] = []
        predict_s: dict[str, list[float]] = {c: [] for c in a.clusters}
        predict_rss: dict[str, float] = {c: 0.0 for c in a.clusters}
        for r in range(a.repeats):
            s = forward_once(model, pool, n_tiles, a.batch_size, a.precision, sync)
            forward_s.append(s)
            print(f"round {r + 1}: (a) forward {s:.2f} s = {voxels / s / 1e6:.3f} Mvox/s output", flush=True)
            for c in a.clusters:
                fresh_worker_state()
                with common.TreeRSS() as rss:
                    t0 = time.perf_counter()
                    summary = bigdenoise.predict(vol_path, model_path, out_path, cluster=c, workers=a.workers,
                                                 overwrite=True, tile=a.tile, batch_size=a.batch_size,
                                                 precision=a.precision, device=a.device, progress=False)
                    s = time.perf_counter() - t0
                predict_rss[c] = max(predict_rss[c], rss.peak_mb)
                if summary["voxels"] != voxels:
                    raise SystemExit(f"predict wrote {summary['voxels']} voxels, expected {voxels}")
                predict_s[c].append(s)
                print(f"round {r + 1}: (b) predict --cluster {c} {s:.2f} s = {voxels / s / 1e6:.3f} Mvox/s "
                      f"(its own summary: {summary['seconds']:.2f} s in blocks; read {summary['read_s']:.2f}, "
                      f"compute {summary['compute_s']:.2f} (forward passes {summary['forward_s']:.2f}), write {summary['write_s']:.2f} s summed over tasks)",
                      flush=True)
        probes.append(common.probe("after"))

        fwd = statistics.median(forward_s)
        fwd_rate, raw_rate = voxels / fwd, input_voxels / fwd
        rows = []
        for c in a.clusters:
            med = statistics.median(predict_s[c])
            rows.append((c, med, voxels / med, (voxels / med) / fwd_rate))
        rss_text = (f"this process {common.peak_rss_mb():.0f} MB (whole run); process tree during predict: "
                    + ", ".join(f"{c} {predict_rss[c]:.0f} MB" for c in a.clusters))

        print()
        print(f"volume {shape} {axes}, {voxels:,} voxels; medians of {a.repeats} interleaved rounds")
        print(f"(a) forward:  {fwd_rate / 1e6:8.3f} Mvox/s output ({fwd:.2f} s); raw {raw_rate / 1e6:.3f} Mvox/s "
              f"of input tiles (halo overhead {halo_overhead:.3f})")
        for c, med, rate, ratio in rows:
            print(f"(b) predict --cluster {c}: {rate / 1e6:8.3f} Mvox/s ({med:.2f} s); ratio b/a = {ratio:.3f} "
                  f"(goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
        print(f"peak RSS: {rss_text}")

        if a.record:
            per_round = "; ".join(
                ["(a) " + ", ".join(f"{s:.2f}" for s in forward_s)]
                + [f"(b {c}) " + ", ".join(f"{s:.2f}" for s in predict_s[c]) for c in a.clusters])
            lines = "\n".join(
                f"| predict, `--cluster {c}` (wall time of the call) | {rate / 1e6:.3f} | {med:.2f} | **{ratio:.3f}** |"
                for c, med, rate, ratio in rows)
            text = f"""## Throughput: model forward vs blockwise predict

- Date: {common.now()}
- Machine: {common.format_machine(machine, probes)}
- Reproduce: `{common.this_command()}`
- Volume: {shape} {axes}, {a.dtype}, chunks {chunks}, {voxels:,} voxels; untrained U-Net depth {a.depth}, features {a.features}; device {device}, precision {a.precision}, batch {a.batch_size}.
- Plan: tile {plan.tile}, halo {plan.halo}, tile input {plan.input_shape}, {n_tiles} tiles; predict blocks {block}. Halo overhead (input tile voxels / output voxels): **{halo_overhead:.3f}**.
- Forward = `bigdenoise.infer.run_model` on in-memory normalised tiles (same input shape, same number of tiles, same batch); predict = `bigdenoise.predict` Zarr to Zarr, everything included. Rounds interleaved (a, b, a, b, ...), medians of {a.repeats}.

| path | output Mvox/s | median s | ratio to forward |
|---|---|---|---|
| forward (raw input-tile rate {raw_rate / 1e6:.3f} Mvox/s) | {fwd_rate / 1e6:.3f} | {fwd:.2f} | 1 |
{lines}

- Seconds per round: {per_round}. Goal: ratio >= 0.9.
- Peak RSS: {rss_text}.
"""
            common.replace_section(common.RESULTS, "throughput", text, common.TOPIC_THROUGHPUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
