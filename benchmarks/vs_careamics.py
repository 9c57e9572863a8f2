"""CPU speed against CAREamics 0.3.5 on the same network (U-Net depth 2, 32 features), in one run.

Rounds are interleaved (CAREamics, bigdenoise, CAREamics, bigdenoise, ...) and every number is
a ratio of two measurements taken side by side, because this machine's speed drifts:

- 2D predict on a 2048x2048 image and 3D predict on a 32x256x256 volume: ``bigdenoise.predict``
  Zarr to Zarr (Dask threads, the planner's tiles) vs CAREamics's ``CAREamist.predict`` on the
  in-memory array twice, with our tile geometry (its tiles = our input tiles, its overlap = our
  two halos) and untiled (its default); Mvox/s each and the ratios per output voxel and per
  computed voxel (the input tile voxels each library runs its network on, halos and overlaps
  included), goal >= 2 per output voxel;
- the compute limit: the multiply-accumulates each library's network actually executes
  (counted from the inference graph, ``speed.conv_counter``: our inference copy runs fewer than
  the plain U-Net) x 2 / seconds, as a fraction of the machine's peak measured in the same round
  (``speed.compute_peak``: the best of several matmul shapes and of large convolutions like the
  U-Net's, so that no fraction exceeds 1 through a weak probe), goal >= 0.7 for our predict;
- blockwise predict vs the pure forward of the same (folded) network on in-memory tiles of the
  planner's input shape (``throughput.py``'s measurement, goal >= 0.9), in 2D and 3D, and, free
  of the machine's drift, the share of our predict's wall time spent in forward passes;
- N2V training patches/s at patch 64x64, batch 16: ``bigdenoise.train`` reading lazily from a
  Zarr array vs ``CAREamist.train`` on the in-memory array, over a fixed number of steps after
  as many warm-up steps (goal >= 1.2).

With ``--compiled`` our predict and forward run the network through ``torch.compile``: the
worker compiles once in a warm-up predict and keeps the compiled model across rounds, as a large
job's workers do (the compile time is reported apart); recorded in its own section.

Usage: python benchmarks/vs_careamics.py [--quick] [--rounds 2] [--compiled] [--record]
Needs CAREamics 0.3.5 beside the CPU torch (benchmarks/README.md); the networks are untrained.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import common
import speed
from datasets import write_random_volume
from speed import parse_shape

PATCH, BATCH = (64, 64), 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes to check the script in a few minutes (512x512, 16x64x64, 3+3 steps)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the 2D and training comparisons (default 2)")
    p.add_argument("--rounds-3d", type=int, default=2,
                   help="interleaved rounds of the 3D comparison (default 2)")
    p.add_argument("--size-2d", type=int, help="side of the 2D image (default 2048)")
    p.add_argument("--shape-3d", type=parse_shape, help="3D volume ZYX (default 32,256,256)")
    p.add_argument("--steps", type=int, help="measured training steps, after as many warm-up steps (default 20)")
    p.add_argument("--tile-2d", type=parse_shape,
                   help="bigdenoise tile in 2D (default: the planner's); CAREamics's tiled run follows it")
    p.add_argument("--tile-3d", type=parse_shape,
                   help="bigdenoise tile in 3D (default: the planner's); CAREamics's tiled run follows it")
    p.add_argument("--only", default="2d,3d,3d-forward,train",
                   help="comparisons to run (default 2d,3d,3d-forward,train; without 3d-forward the 3D forward is not timed)")
    p.add_argument("--compiled", action="store_true",
                   help="our predict and forward through torch.compile, compiled once before the rounds")
    p.add_argument("--work", help="working folder (default: a temporary folder, removed)")
    p.add_argument("--record", action="store_true", help="write the result into benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    a.size_2d = a.size_2d or (512 if a.quick else 2048)
    a.shape_3d = a.shape_3d or ((16, 64, 64) if a.quick else (32, 256, 256))
    a.steps = a.steps or (3 if a.quick else 20)
    a.only = {x.strip() for x in a.only.split(",") if x.strip()}
    if a.rounds < 1 or a.rounds_3d < 1:
        p.error("--rounds and --rounds-3d must be >= 1")
    return a


# --------------------------------------------------------------------------- the network's cost


def plain_macs_per_voxel(net, ndim: int) -> float:
    """Multiply-accumulates per input voxel of ``net`` as built (the plain U-Net both libraries
    train), on a 1-channel input of 64x64 or 16x32x32."""
    import torch

    shape = (1, 1) + ((64, 64) if ndim == 2 else (16, 32, 32))
    return speed.executed_macs(net, torch.zeros(shape)) / math.prod(shape)


# --------------------------------------------------------------------------- CAREamics


def step_timer():
    """A Lightning callback recording, in ``.times``, the time at the end of every training batch."""
    from lightning.pytorch import Callback

    class StepTimes(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter())

    return StepTimes()


def careamist(work: Path, axes: str, patch, batch: int, steps: int, callbacks=(), n_val: int = 8):
    """A CAREamist for N2V with the default U-Net (depth 2, 32 features), ``steps`` batches per
    epoch, ``n_val`` validation patches (CAREamics's default 8)."""
    from careamics import CAREamist
    from careamics.config import create_n2v_config

    config = create_n2v_config(experiment_name="bench", data_type="array", axes=axes, patch_size=list(patch),
                               batch_size=batch, num_epochs=1, num_steps=steps, n_val_patches=n_val)
    model = config.algorithm_config.model
    assert model.depth == 2 and model.num_channels_init == 32, model
    return CAREamist(config, work_dir=str(work), callbacks=list(callbacks), enable_progress_bar=False)


def careamics_net(work: Path):
    """CAREamics's own U-Net module for the 2D N2V configuration (to count its MACs)."""
    return careamist(work, "YX", PATCH, BATCH, 1).model.model.eval()


def careamics_predictor(work: Path, data: np.ndarray, axes: str):
    """A CAREamist whose normalisation was measured on ``data`` (one training step: CAREamics
    predicts only with a trained configuration); its weights stay essentially untrained."""
    patch = PATCH if axes == "YX" else (min(16, data.shape[0]), 32, 32)
    engine = careamist(work, axes, patch, BATCH if axes == "YX" else 2, 1, n_val=1)
    engine.train(train_data=data)
    return engine


def careamics_predict(engine, data: np.ndarray, axes: str, tile, overlap) -> float:
    """Seconds of one ``CAREamist.predict``; ``tile`` None: untiled (CAREamics's default)."""
    t0 = time.perf_counter()
    out, _ = engine.predict(data, axes=axes, tile_size=None if tile is None else tuple(tile),
                            tile_overlap=None if tile is None else tuple(overlap), data_type="array")
    seconds = time.perf_counter() - t0
    if np.squeeze(out[0]).shape != data.shape:
        raise SystemExit(f"CAREamics predicted shape {np.shape(out[0])}, expected {data.shape}")
    return seconds


def careamics_work(engine, data: np.ndarray, axes: str, tile, overlap) -> tuple[int, int]:
    """(input voxels, executed multiply-accumulates) of one CAREamics predict: the shapes its
    network is called with, recorded by a forward pre-hook during an untimed predict (which is
    also the warm-up), each shape's MACs counted once on its network."""
    import torch

    net = engine.model.model
    shapes: list[tuple[int, ...]] = []
    hook = net.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        careamics_predict(engine, data, axes, tile, overlap)
    finally:
        hook.remove()
    macs = {shape: speed.executed_macs(net, torch.zeros((1, *shape[1:]))) for shape in set(shapes)}
    return sum(math.prod(s) for s in shapes), sum(s[0] * macs[s] for s in shapes)


def our_geometry_for_careamics(plan, shape) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """CAREamics tiles like our plan's: its tile = our input tile, its overlap = our two halos
    (0 along an axis one tile covers); None when our plan is one tile (then: untiled)."""
    spatial = [i for i, r in enumerate(plan.roles) if r == "spatial"]
    tile = tuple(plan.input_shape[i] for i in spatial)
    if all(t >= shape[i] for t, i in zip(tile, spatial)):
        return None
    overlap = tuple(0 if t >= shape[i] else 2 * plan.halo[i] for t, i in zip(tile, spatial))
    return tile, overlap


def careamics_train_rate(work: Path, data: np.ndarray, steps: int) -> float:
    """CAREamics N2V patches/s over ``steps`` batches after ``steps`` warm-up batches."""
    timer = step_timer()
    engine = careamist(work, "SYX", PATCH, BATCH, 2 * steps, callbacks=[timer])
    engine.train(train_data=data)
    t = timer.times
    if len(t) < 2 * steps:
        raise SystemExit(f"CAREamics ran {len(t)} training steps, expected {2 * steps}: give it more data")
    return steps * BATCH / (t[2 * steps - 1] - t[steps - 1])


# --------------------------------------------------------------------------- bigdenoise


def our_train_rate(zarr_path: Path, out: Path, steps: int) -> float:
    """bigdenoise N2V patches/s over ``steps`` steps after ``steps`` warm-up steps: the second
    window of ``history.csv`` (training steps with their lazy reads, as CAREamics's batches are
    timed; the validation and checkpoint between windows are not counted)."""
    import csv

    import bigdenoise

    bigdenoise.train(zarr_path, out, method="n2v", axes="SYX", patch=PATCH, batch_size=BATCH, steps=2 * steps,
                     val_every=steps, val_patches=BATCH, net={"depth": 2, "features": 32}, overwrite=True,
                     progress=False)
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    return float(rows[1]["patches_per_s"])


class Predict:
    """bigdenoise's side of one predict comparison: a Zarr volume, an untrained model package,
    its plan and in-memory forward tiles (``throughput.py``'s measurement)."""

    def __init__(self, work: Path, shape, axes: str, chunks, tile, compiled: bool = False) -> None:
        from bigdenoise.infer import for_inference, forward_batch_size, plan_for
        from bigdenoise.package import load_model
        from bigdenoise.tiling import block_shape_for

        self.work, self.axes, self.tile, self.compiled = work, axes, tile, compiled
        shutil.rmtree(work, ignore_errors=True)
        self.volume, self.model_path, self.out = work / "volume.zarr", work / "model", work / "out.zarr"
        stats = write_random_volume(self.volume, shape, chunks, axes, "uint16")
        speed.untrained_model(self.model_path, axes, 2, 32, stats, "untrained; for speed benchmarks only")
        self.model = for_inference(load_model(self.model_path), compiled)  # what predict's workers run
        block = block_shape_for(chunks, shape, 4 * 2**20)
        self.plan = plan_for(self.model, shape, axes, tile=tile, block=block)
        self.voxels = math.prod(shape)
        self.n_tiles = math.prod(self.plan.n_tiles)
        self.input_voxels = self.n_tiles * math.prod(self.plan.input_shape)
        self.batch = forward_batch_size(self.model, self.plan)
        rng = np.random.default_rng(1)
        net_input = (1, *(self.plan.input_shape[i] for i, r in enumerate(self.plan.roles) if r == "spatial"))
        self.pool = [rng.standard_normal((self.batch, *net_input)).astype(np.float32)]
        first = speed.forward_once(self.model, self.pool, self.batch, self.batch, "fp32", lambda: None)  # warm-up
        self.forward_share = math.nan
        if compiled:
            self.compile_s = first - speed.forward_once(self.model, self.pool, self.batch, self.batch, "fp32",
                                                        lambda: None)
            # the worker compiles its own copy (from inductor's cache) and keeps it for the rounds
            speed.fresh_worker_state()
            self.predict()
        # what predict executes: every tile has the plan's input shape
        self.macs = self.n_tiles * self.tile_macs()

    def data(self) -> np.ndarray:
        import zarr

        return zarr.open_array(str(self.volume), mode="r")[...].astype(np.float32)

    def predict(self) -> float:
        import bigdenoise

        if not self.compiled:
            speed.fresh_worker_state()
        t0 = time.perf_counter()
        summary = bigdenoise.predict(self.volume, self.model_path, self.out, cluster="threads", overwrite=True,
                                     tile=self.tile, compiled=self.compiled, progress=False)
        seconds = time.perf_counter() - t0
        if summary["voxels"] != self.voxels:
            raise SystemExit(f"predict wrote {summary['voxels']} voxels, expected {self.voxels}")
        self.forward_share = summary["forward_s"] / seconds
        return seconds

    def forward(self) -> float:
        return speed.forward_once(self.model, self.pool, self.n_tiles, self.batch, "fp32", lambda: None)

    def tile_macs(self) -> int:
        """Multiply-accumulates the network predict runs executes on one input tile (a compiled
        network is counted eagerly: the same convolutions, it keeps the plain U-Net)."""
        from bigdenoise.infer import run_model

        model = self.model
        if self.compiled:
            model = dataclasses.replace(model, nets={k: getattr(n, "_orig_mod", n) for k, n in model.nets.items()})
        return speed.executed_macs(run_model, model, self.pool[0][:1], "fp32")

    def describe(self) -> str:
        compiled = (f"torch.compile (compiling took {self.compile_s:.1f} s in the first forward pass of this "
                    f"process; a worker's copy then compiles from inductor's cache), " if self.compiled else "")
        return (f"{compiled}tile {self.plan.tile}, halo {self.plan.halo}, tile input {self.plan.input_shape}, "
                f"{self.n_tiles} tiles, batch {self.batch}; input tile voxels / output voxels "
                f"{self.input_voxels / self.voxels:.3f}")


# --------------------------------------------------------------------------- the comparisons


def compare_predict(a, name: str, ours: Predict, rounds: int, with_forward: bool) -> dict:
    """Interleaved rounds: CAREamics predict with our tile geometry and untiled, the peak probe,
    bigdenoise predict, the bare forward (``with_forward``). Per CAREamics run: its speed per
    output voxel and per computed voxel against ours, and each library's executed MACs as a
    fraction of the round's peak."""
    data = ours.data()
    engine = careamics_predictor(ours.work / "careamics", data, ours.axes)
    geometry = our_geometry_for_careamics(ours.plan, data.shape)
    runs = {"untiled": (None, None)} if geometry is None else {"our tiles": geometry, "untiled": (None, None)}
    work = {label: careamics_work(engine, data, ours.axes, *g) for label, g in runs.items()}  # untimed warm-ups
    rows = []
    for r in range(rounds):
        cm = {label: careamics_predict(engine, data, ours.axes, *g) for label, g in runs.items()}
        peak = speed.compute_peak(2 if a.quick else 3)
        bd = ours.predict()
        fwd = ours.forward() if with_forward else math.nan
        limit = peak["peak"] * 1e9 / 2  # MAC/s
        row = {"ours_s": bd, "forward_s": fwd, "peak": peak, "blockwise": fwd / bd,
               "forward_share": ours.forward_share, "ours_util": ours.macs / bd / limit,
               "forward_util": ours.macs / fwd / limit}
        for label, seconds in cm.items():
            voxels, macs = work[label]
            row[label] = {"s": seconds, "ratio_out": seconds / bd,
                          "ratio_in": (ours.input_voxels / bd) / (voxels / seconds), "util": macs / seconds / limit}
        rows.append(row)
        print(f"{name} round {r + 1}: bigdenoise {ours.voxels / bd / 1e6:.3f} Mvox/s ({bd:.2f} s, {row['ours_util']:.2f} "
              f"of the peak {peak['peak']:.0f} GFLOP/s), forward {fwd:.2f} s; "
              + "; ".join(f"CAREamics {label} {ours.voxels / c['s'] / 1e6:.3f} Mvox/s ({c['s']:.2f} s): ratio "
                          f"{c['ratio_out']:.2f} per output voxel, {c['ratio_in']:.2f} per computed voxel"
                          for label, c in ((k, row[k]) for k in runs)), flush=True)
        if row["ours_util"] > 1 or any(row[k]["util"] > 1 for k in runs):
            print("  warning: a fraction of the peak above 1: the peak probe missed the machine's best", flush=True)
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("ours_s", "forward_s", "blockwise", "forward_share", "ours_util", "forward_util")}
    for label in runs:
        med[label] = {k: statistics.median(r[label][k] for r in rows) for k in ("s", "ratio_out", "ratio_in", "util")}
    med["peak"] = statistics.median(r["peak"]["peak"] for r in rows)
    med["with_forward"] = with_forward
    best = [max((k for k in r["peak"] if k != "peak"), key=r["peak"].get) for r in rows]
    return {"name": name, "rows": rows, "median": med, "voxels": ours.voxels, "input_voxels": ours.input_voxels,
            "macs": ours.macs, "plan": ours.describe(), "runs": runs, "work": work, "peak_by": best}


def compare_train(work: Path, steps: int, rounds: int) -> dict:
    n_images = math.ceil(2 * steps * BATCH / ((512 // PATCH[0]) * (512 // PATCH[1]))) + 1
    chunks = (1, 512, 512)
    zarr_path = work / "train.zarr"
    shutil.rmtree(zarr_path, ignore_errors=True)
    write_random_volume(zarr_path, (n_images, 512, 512), chunks, "SYX", "uint16", seed=2)
    import zarr

    data = zarr.open_array(str(zarr_path), mode="r")[...].astype(np.float32)
    rows = []
    for r in range(rounds):
        cm = careamics_train_rate(work / f"careamics-train-{r}", data, steps)
        bd = our_train_rate(zarr_path, work / f"model-train-{r}", steps)
        rows.append({"careamics": cm, "ours": bd, "ratio": bd / cm})
        print(f"train round {r + 1}: CAREamics {cm:.1f} patches/s, bigdenoise {bd:.1f} patches/s, "
              f"ratio {bd / cm:.2f}", flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {"rows": rows, "median": med, "shape": (n_images, 512, 512), "chunks": chunks}


def goal(value: float, target: float) -> str:
    return f"**{value:.2f}** ({'met' if value >= target else 'NOT met'}, goal >= {target:g})"


def geometry_text(tile_overlap) -> str:
    tile, overlap = tile_overlap
    return "untiled (its default)" if tile is None else f"tiles {tuple(tile)}, overlap {tuple(overlap)} (ours)"


def report(a, results: list[dict], train: dict | None, plain: dict, machine, probes) -> str:
    lines = [f"- Date: {common.now()}",
             f"- Machine: {common.format_machine(machine, probes)}",
             f"- Reproduce: `{common.this_command()}` (with CAREamics 0.3.5 installed, benchmarks/README.md)",
             "- Network: U-Net depth 2, 32 features, batch norm, untrained, in both libraries (CAREamics up-samples "
             "bilinearly, bigdenoise nearest). Plain U-Net MACs per voxel, counted from the convolutions the model "
             "runs: " + ", ".join(f"{k} {v / 1e3:.1f} k" for k, v in plain.items()) + "; the executed MACs below "
             "are counted from each library's inference graph at its own tile shapes (`speed.conv_counter`: ours "
             "is the batch-norm-folded inference copy, whose decoder reads the coarse features).",
             f"- {a.rounds} interleaved rounds in 2D and training, {a.rounds_3d} in 3D, medians. The peak of a round "
             "(`speed.compute_peak`, taken just before our predict) is the best fp32 GFLOP/s of several matmul shapes "
             "and of 3x3 / 3x3x3 convolutions at 32 and 64 channels; a fraction of the peak is executed MACs x 2 / "
             "seconds / peak.",
             "- Per output voxel: the ratio of the two predict times. Per computed voxel: each library's input voxels "
             "per second (tile voxels its network ran on, halos and overlaps included), ours over CAREamics's.",
             "- Blockwise / forward divides two runs taken one after the other, so it carries the machine's drift; "
             "the forward passes' share is drift-free: the seconds our predict spent inside forward passes (timed "
             "by the engine, `forward_s` of its summary) over its whole wall time.", ""]
    if results:
        lines += ["| predict | CAREamics | computed / output voxels: CAREamics, ours | CAREamics Mvox/s "
                  "| bigdenoise Mvox/s | ratio per output voxel | ratio per computed voxel "
                  "| fraction of the peak: ours, CAREamics |", "|---|---|---|---|---|---|---|---|"]
        for res in results:
            m, v = res["median"], res["voxels"]
            for label, g in res["runs"].items():
                c = m[label]
                lines.append(f"| {res['name']} | {geometry_text(g)} | {res['work'][label][0] / v:.3f}, "
                             f"{res['input_voxels'] / v:.3f} | {v / c['s'] / 1e6:.3f} | {v / m['ours_s'] / 1e6:.3f} | "
                             f"{goal(c['ratio_out'], 2)} | {c['ratio_in']:.2f} | {goal(m['ours_util'], 0.7)}, "
                             f"{c['util']:.2f} |")
        lines += ["", "| predict | our executed MACs per output voxel | peak GFLOP/s | forward: fraction of the peak "
                  "| blockwise / forward | forward passes' share of predict |", "|---|---|---|---|---|---|"]
        for res in results:
            m = res["median"]
            fwd = f"{m['forward_util']:.2f}" if m["with_forward"] else "not measured"
            blockwise = goal(m["blockwise"], 0.9) if m["with_forward"] else "not measured"
            lines.append(f"| {res['name']} | {res['macs'] / res['voxels'] / 1e3:.1f} k | {m['peak']:.0f} | {fwd} | "
                         f"{blockwise} | {m['forward_share']:.2f} |")
        lines.append("")
        for res in results:
            per_round = "; ".join(
                " / ".join(f"{r[k]['s']:.2f}" for k in res["runs"]) + f" / {r['ours_s']:.2f} / {r['forward_s']:.2f} s "
                f"at {r['peak']['peak']:.0f} GFLOP/s" for r in res["rows"])
            lines.append(f"- {res['name']}: bigdenoise {res['plan']}. Peak probe best: "
                         f"{', '.join(sorted(set(res['peak_by'])))}. Per round (CAREamics "
                         f"{' / '.join(res['runs'])} / bigdenoise / forward): {per_round}.")
    if train is not None:
        m = train["median"]
        lines += ["", "| N2V training, patch 64x64, batch 16 | CAREamics patches/s | bigdenoise patches/s | ratio |",
                  "|---|---|---|---|",
                  f"| {a.steps} steps after {a.steps} warm-up | {m['careamics']:.1f} | {m['ours']:.1f} | "
                  f"{goal(m['ratio'], 1.2)} |", "",
                  f"- Data: {train['shape']} SYX, uint16; bigdenoise reads it lazily from Zarr (chunks "
                  f"{train['chunks']}), CAREamics from the in-memory array. Per round: "
                  + "; ".join(f"{r['careamics']:.1f} / {r['ours']:.1f}" for r in train["rows"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    from bigdenoise.runtime import tune_allocator

    # First, before any thread allocates: the allocator settings predict gives its process and
    # workers; CAREamics, in this process too, runs under them as well.
    tune_allocator()
    if common.import_careamics() is None:
        raise SystemExit(f"careamics is not installed: {common.CAREAMICS_INSTALL}")
    import torch

    from bigdenoise.nets import build_unet

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)  # as predict's in-process worker
    machine = common.machine_info()
    probes = [common.probe("before")]
    plain = {"2D": plain_macs_per_voxel(build_unet(2, 1, 1).eval(), 2),
             "3D": plain_macs_per_voxel(build_unet(3, 1, 1).eval(), 3)}
    with common.work_folder(a.work, "bigdenoise-vs-careamics-") as work:
        plain["CAREamics 2D"] = plain_macs_per_voxel(careamics_net(work / "count"), 2)
        print("plain U-Net MACs per voxel: " + ", ".join(f"{k} {v:,.0f}" for k, v in plain.items()), flush=True)
        results = []
        if "2d" in a.only:
            n = a.size_2d
            ours = Predict(work / "2d", (n, n), "YX", (min(512, n), min(512, n)), a.tile_2d, a.compiled)
            results.append(compare_predict(a, f"2D {n}x{n}", ours, a.rounds, with_forward=True))
        if "3d" in a.only:
            shape = tuple(a.shape_3d)
            ours = Predict(work / "3d", shape, "ZYX", tuple(min(c, s) for c, s in zip((64, 128, 128), shape)),
                           a.tile_3d, a.compiled)
            results.append(compare_predict(a, f"3D {'x'.join(map(str, shape))}", ours, a.rounds_3d,
                                           with_forward="3d-forward" in a.only))
        train = compare_train(work, a.steps, a.rounds) if "train" in a.only else None
        probes.append(common.probe("after"))
        text = report(a, results, train, plain, machine, probes)
        print("\n" + text)
        if a.record:
            section, title = ("vs_careamics_compiled", " (torch.compile)") if a.compiled else ("vs_careamics", "")
            common.replace_section(common.RESULTS, section, f"## CPU speed against CAREamics 0.3.5{title}\n\n" + text,
                                   common.TOPIC_SPEED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
