"""N2V against Probabilistic Noise2Void (calibrated and bootstrapped) on simulated Poisson–Gaussian Set12.

The 12 Set12 images (the 512x512 ones centre-cropped to 256x256) are the clean signal ``s``
on 0..255; the noisy stack is ``x = g * Poisson(s / g) + N(0, read^2)`` with ``g = 255 / peak``
(``--peak`` photons at intensity 255), float32, not clipped. Every model gets the same budget
(``--steps``, batch, patch, U-Net), then denoises the stack in memory:

- ``n2v``: Noise2Void;
- ``pn2v-histogram``, ``pn2v-gmm``: PN2V with a noise model measured on calibration pairs
  (the clean images with an independent noise realisation, as a calibration acquisition);
- ``pn2v-bootstrap``: PN2V with a gmm noise model bootstrapped from the ``n2v`` model's
  prediction of the noisy stack itself (no calibration data, Prakash et al. 2020).

``--images-from train400`` uses the last Train400 images instead (no RESULTS row scores them):
PN2V's defaults are chosen there. Prints the mean PSNR (peak 255) of each; for a PN2V model
also that of its prior's mean (``prediction="prior_mean"``, the same trained model), which tells
an undertrained prior centre from a wrong spread. Check the script quickly with
``--steps 5 --features 8 --samples 16`` (that does not denoise well); the paper's setting
(U-Net depth 3, 64 features, K = 800, long training) needs a GPU.

Usage: python benchmarks/pn2v_vs_n2v.py [--data DIR] [--steps 400] [--peak 30] [--read 10]
        [--features 32] [--samples 64] [--images 12] [--images-from set12|train400] [--lr 4e-4] [--option KEY=VALUE ...]
        [--runs n2v,pn2v-histogram,pn2v-gmm,pn2v-bootstrap] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import common
from datasets import dataset_dir, load_set12, load_train400_tail, poisson_gaussian

PEAK = 255.0
RUNS = ("n2v", "pn2v-histogram", "pn2v-gmm", "pn2v-bootstrap")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="set12 folder or the shared data folder (default: $BIGDENOISE_DATA, ../shared/data)")
    p.add_argument("--work", help="folder for models and noise models (default: <tmp>/bigdenoise-bench/pn2v_vs_n2v)")
    p.add_argument("--steps", type=int, default=400, help="training steps of every model (default 400)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--samples", type=int, default=64, help="PN2V samples per pixel K (default 64; paper 800)")
    p.add_argument("--images", type=int, default=12, help="use the first N Set12 images (default 12)")
    p.add_argument("--images-from", choices=("set12", "train400"), default="set12",
                   help="set12, or the last N Train400 images (180x180), which no RESULTS row scores: choose "
                        "defaults there")
    p.add_argument("--lr", type=float, default=4e-4, help="learning rate of every model (default 4e-4)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a PN2V option, e.g. warmup=0 or initial_spread=0.5 (value parsed as JSON, else a string)")
    p.add_argument("--peak", type=float, default=30.0, help="photons at intensity 255 (default 30)")
    p.add_argument("--read", type=float, default=10.0, help="read noise sigma on 0..255 (default 10)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    import bigdenoise as bd
    from bigdenoise.calibration import make_noise_model, save_noise_model
    from bigdenoise.errors import BigDenoiseError
    from bigdenoise.infer import predict_array

    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {RUNS}")
    if "pn2v-bootstrap" in runs and "n2v" not in runs:
        runs.insert(0, "n2v")  # the bootstrap needs the N2V model
    work = Path(a.work) if a.work else Path(tempfile.gettempdir()) / "bigdenoise-bench" / "pn2v_vs_n2v"
    work.mkdir(parents=True, exist_ok=True)
    pn2v_options = {}
    for item in a.option:
        key, _, value = item.partition("=")
        try:
            pn2v_options[key] = json.loads(value)
        except json.JSONDecodeError:
            pn2v_options[key] = value
    if a.images_from == "set12":
        clean = load_set12(dataset_dir("set12", a.data, "*.png"), a.images)
    else:
        clean = load_train400_tail(dataset_dir("train400", a.data, "*.png"), a.images)
    noisy = poisson_gaussian(clean, a.peak, a.read, a.seed)
    calibration = poisson_gaussian(clean, a.peak, a.read, a.seed + 1)  # an independent acquisition
    print(f"{a.images_from}: {clean.shape}, Poisson-Gaussian noise, {a.peak:g} photons at 255 (gain {PEAK / a.peak:.3g}), "
          f"read sigma {a.read:g}; noisy PSNR {common.mean_psnr(noisy, clean, PEAK)[0]:.2f} dB", flush=True)

    common_kw = dict(axes="SYX", steps=a.steps, lr=a.lr, batch_size=a.batch_size, patch=(a.patch, a.patch), seed=a.seed,
                     device=a.device, overwrite=True, progress=False, val_every=max(1, min(100, a.steps)),
                     net={"depth": a.depth, "features": a.features})
    results = {}

    def run(name: str, method: str, options: dict | None = None) -> None:
        t0 = time.perf_counter()
        model = bd.train(noisy, work / name, method=method, options=options or {}, **common_kw)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        denoised = predict_array(noisy, model)
        predict_s = time.perf_counter() - t0
        prior = None
        if method == "pn2v":  # the same model, predicting its prior's mean
            config = model.train_config.model_copy(update={"options": {**model.train_config.options,
                                                                       "prediction": "prior_mean"}})
            prior = common.mean_psnr(predict_array(noisy, dataclasses.replace(model, train_config=config)), clean,
                                     PEAK)[0]
        results[name] = (common.mean_psnr(denoised, clean, PEAK)[0], prior, train_s, predict_s)
        extra = "" if prior is None else f", prior mean {prior:.2f} dB"
        print(f"{name:<16} {results[name][0]:6.2f} dB{extra}  (train {train_s:.0f} s, predict {predict_s:.0f} s)",
              flush=True)

    for name in runs:
        if name == "n2v":
            run(name, "n2v")
            continue
        if name == "pn2v-bootstrap":
            model, info = make_noise_model(noisy, bootstrap=work / "n2v", axes="SYX", kind="gmm", seed=a.seed)
        else:
            kind = name.split("-", 1)[1]
            model, info = make_noise_model(calibration, clean=clean, axes="SYX", kind=kind, seed=a.seed)
        save_noise_model(model, work / f"nm-{name}", info=info, overwrite=True)
        try:
            run(name, "pn2v", {**pn2v_options, "noise_model": str(work / f"nm-{name}"), "samples": a.samples})
        except BigDenoiseError as exc:  # e.g. a bootstrap from an N2V model trained too briefly
            print(f"{name:<16} failed: {exc}", flush=True)

    print()
    print(f"{'model':<16} {'PSNR dB':>8} {'prior mean':>10} {'train s':>8} {'predict s':>10}")
    print(f"{'noisy':<16} {common.mean_psnr(noisy, clean, PEAK)[0]:8.2f}")
    for name, (psnr, prior, train_s, predict_s) in results.items():
        print(f"{name:<16} {psnr:8.2f} {'' if prior is None else f'{prior:.2f}':>10} {train_s:8.0f} {predict_s:10.0f}")
    print(f"budget: {a.steps} steps, lr {a.lr:g}, batch {a.batch_size}, patch {a.patch}, U-Net depth {a.depth} / "
          f"{a.features} features, K = {a.samples}, {len(clean)} images; PN2V options {pn2v_options or 'default'}; "
          f"models and noise models in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
