"""BSD68 (even half) Noise2Void benchmark through the real command line.

Loads the 34 even-numbered BSD68 images (portrait ones transposed to 321x481), adds Gaussian
noise sigma=25 on the 0..255 scale (float32, not clipped, not quantised), writes them as a SYX
Zarr v3 stack, then runs, as a user would::

    bigdenoise train WORK/noisy.zarr --method n2v --axes SYX --out WORK/model --max-time 5m --seed 0 --overwrite
    bigdenoise predict WORK/noisy.zarr --model WORK/model --out WORK/denoised.zarr --overwrite

and reports the mean PSNR (peak 255) of the noisy and the denoised stack against the clean
images. ``--record`` writes the result into benchmarks/RESULTS.md.

Usage: python benchmarks/bsd68_n2v.py [--data DIR] [--work DIR] [--max-time 5m] [--seed 0]
                                      [--extra-train-args="--features 48"] [--record]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

import common
import datasets

SIGMA = 25.0
PEAK = 255.0
SHAPE = datasets.BSD68_SHAPE
GOAL_DB = 25.5
PAPER = ("Noise2Void (Krull, Buchholz, Jug, CVPR 2019) reports 27.71 dB on all 68 BSD68 images at sigma 25, "
         "trained on the Train400 set; this run uses the even half only, trains on the noisy test images "
         "themselves, with a wall-clock budget on a CPU, so it is not the paper's setting.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="bsd68_even folder, or the shared data folder holding it "
                   "(default: $BIGDENOISE_DATA, else <repo>/../shared/data)")
    p.add_argument("--work", help="working folder for the Zarr stacks and the model "
                   "(default: <tmp>/bigdenoise-bench/bsd68_n2v); kept after the run")
    p.add_argument("--max-time", default="5m", help="training budget passed to bigdenoise train (default 5m)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and of training (default 0)")
    p.add_argument("--extra-train-args", default="", help="more bigdenoise train options, one string; "
                   "write it with '=', e.g. --extra-train-args='--features 48'")
    p.add_argument("--extra-predict-args", default="", help="more bigdenoise predict options, one string")
    p.add_argument("--record", action="store_true", help="write the result into benchmarks/RESULTS.md")
    p.add_argument("--section", default="bsd68_n2v",
                   help="RESULTS.md section to write (default bsd68_n2v; e.g. bsd68_n2v_long for a long budget)")
    return p.parse_args(argv)


def validation_curve(history: Path, points: int = 8) -> str:
    """About ``points`` evenly spaced ``step: val_loss`` entries of a model's history.csv, the last included."""
    import csv

    with open(history, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_loss")]
    if not rows:
        return "none recorded"
    picked = rows[::max(1, len(rows) // points)]
    if picked[-1] is not rows[-1]:
        picked.append(rows[-1])
    return ", ".join(f"{r['step']}: {float(r['val_loss']):.4f}" for r in picked)


def main(argv=None) -> int:
    a = parse_args(argv)
    from bigdenoise.cli_args import parse_duration

    try:
        budget_s = parse_duration(a.max_time)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"--max-time: {exc}") from None
    work = common.claim_work(a.work, "bsd68_n2v")
    folder = datasets.dataset_dir("bsd68_even", a.data, "test*.png")

    machine = common.machine_info()
    probes = [common.probe("before")]

    clean, names, transposed = datasets.load_bsd68(folder)
    rng = np.random.default_rng(a.seed)
    noisy = clean + rng.normal(0.0, SIGMA, clean.shape).astype(np.float32)
    noisy_path, model_dir, out_path = work / "noisy.zarr", work / "model", work / "denoised.zarr"
    datasets.write_stack(noisy_path, noisy, "SYX")
    print(f"{len(names)} images from {folder} ({len(transposed)} portrait images transposed to "
          f"{SHAPE[0]}x{SHAPE[1]}: {', '.join(transposed)}); Gaussian noise sigma {SIGMA:g} on 0..255, "
          f"float32, NOT clipped and NOT quantised (numpy default_rng({a.seed})); wrote {noisy_path} "
          f"{noisy.shape} chunks (1, {SHAPE[0]}, {SHAPE[1]})", flush=True)

    exe = common.bigdenoise_exe()
    train_cmd = [exe, "train", str(noisy_path), "--method", "n2v", "--axes", "SYX", "--out", str(model_dir),
                 "--max-time", a.max_time, "--seed", str(a.seed), "--overwrite", *shlex.split(a.extra_train_args)]
    predict_cmd = [exe, "predict", str(noisy_path), "--model", str(model_dir), "--out", str(out_path),
                   "--overwrite", *shlex.split(a.extra_predict_args)]
    train_run = common.run_command(train_cmd)
    predict_run = common.run_command(predict_cmd)
    probes.append(common.probe("after"))

    import zarr

    denoised = np.asarray(zarr.open_array(str(out_path), mode="r")[...], dtype=np.float32)
    if denoised.shape != noisy.shape:
        raise SystemExit(f"{out_path} has shape {denoised.shape}, expected {noisy.shape}")
    info = json.loads((model_dir / "config.json").read_text()).get("info", {})
    curve = validation_curve(model_dir / "history.csv")
    steps, train_loop_s = info.get("steps"), info.get("train_seconds")

    p_noisy, per_noisy = common.mean_psnr(noisy, clean, PEAK)
    p_den, per_den = common.mean_psnr(denoised, clean, PEAK)
    p_den_clip, _ = common.mean_psnr(np.clip(denoised, 0, 255), clean, PEAK)
    met = p_den >= GOAL_DB

    print()
    print(f"{'image':<12} {'noisy dB':>9} {'denoised dB':>12}")
    for n, pn, pd in zip(names, per_noisy, per_den):
        print(f"{n:<12} {pn:9.2f} {pd:12.2f}")
    print(f"{'mean':<12} {p_noisy:9.2f} {p_den:12.2f}   (denoised clipped to 0..255: {p_den_clip:.2f})")
    print()
    print(f"train: {steps} steps, {train_loop_s} s in the training loop, {train_run['seconds']:.1f} s wall "
          f"(budget {a.max_time} = {budget_s:g} s), peak RSS {train_run['peak_rss_mb']:.0f} MB")
    print(f"validation loss by step: {curve}")
    print(f"predict: {predict_run['seconds']:.1f} s wall, peak RSS (process tree) {predict_run['peak_rss_mb']:.0f} MB")
    print(f"mean PSNR {p_noisy:.2f} dB -> {p_den:.2f} dB (goal >= {GOAL_DB} dB: {'met' if met else 'NOT met'})")

    if a.record:
        def shown(cmd: list[str]) -> str:  # as a user types it, the work folder as a placeholder
            return shlex.join(["bigdenoise", *cmd[1:]]).replace(str(work), "WORKDIR")

        train_text, predict_text = shown(train_cmd), shown(predict_cmd)
        text = f"""## Noise2Void on BSD68 (even half), sigma 25

- Date: {common.now()}
- Machine: {common.format_machine(machine, probes)}
- Reproduce: `{common.this_command()}`
- Data: the {len(names)} even-numbered BSD68 images (DATADIR/{folder.name}); the {len(transposed)} portrait images are transposed to {SHAPE[0]}x{SHAPE[1]}; Gaussian noise sigma {SIGMA:g} on the 0..255 scale, float32, not clipped, not quantised, `numpy.random.default_rng({a.seed})`; written as a SYX Zarr v3 stack, chunks (1, {SHAPE[0]}, {SHAPE[1]}).
- Commands run by the script:
  - `{train_text}`
  - `{predict_text}`
- Training: {steps} steps, {train_loop_s} s in the training loop ({train_run['seconds']:.1f} s wall for the command, peak RSS {train_run['peak_rss_mb']:.0f} MB).
- Validation loss (N2V masked-pixel MSE, normalised units) by step: {curve} (whether it still falls at the end says whether a longer budget would help).
- Prediction: {predict_run['seconds']:.1f} s wall for the command (peak RSS of its process tree {predict_run['peak_rss_mb']:.0f} MB).
- **Mean PSNR (peak 255, over {len(names)} images): noisy {p_noisy:.2f} dB -> denoised {p_den:.2f} dB** (denoised clipped to 0..255: {p_den_clip:.2f} dB). Goal >= {GOAL_DB} dB: {'met' if met else 'not met'}.
- Reference: {PAPER}
"""
        common.replace_section(common.RESULTS, a.section, text, common.TOPIC_QUALITY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
