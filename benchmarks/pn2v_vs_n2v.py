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

``--variants "default;warmup=0;initial_spread=1.0"`` trains every PN2V run once per variant
(its options on top of ``--option``) and ``--seeds N`` repeats everything for data and training
seeds ``--seed .. --seed + N - 1``; the table then gives mean ± standard deviation over seeds and
each variant's paired difference to the first. ``--record`` writes it as the RESULTS.md section
``--section`` (default ``pn2v-defaults``).

Usage: python benchmarks/pn2v_vs_n2v.py [--data DIR] [--steps 400] [--peak 30] [--read 10]
        [--features 32] [--samples 64] [--images 12] [--images-from set12|train400] [--lr 4e-4]
        [--option KEY=VALUE ...] [--variants "default;KEY=VALUE,..."] [--seeds 1] [--record]
        [--runs n2v,pn2v-histogram,pn2v-gmm,pn2v-bootstrap] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
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
    p.add_argument("--seeds", type=int, default=1, help="repeat for seeds --seed .. --seed + N - 1 (default 1)")
    p.add_argument("--variants", default="default",
                   help='PN2V option sets, ";"-separated, each "default" or KEY=VALUE,KEY=VALUE (default: default)')
    p.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    p.add_argument("--section", default="pn2v-defaults", help="RESULTS.md section name (default pn2v-defaults)")
    return p.parse_args(argv)


def _options(items: list[str]) -> dict:
    """``KEY=VALUE`` items as PN2V options (values parsed as JSON, else kept as strings)."""
    options = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {RUNS}")
    if "pn2v-bootstrap" in runs and "n2v" not in runs:
        runs.insert(0, "n2v")  # the bootstrap needs the N2V model
    work = common.claim_work(a.work, "pn2v_vs_n2v")
    base = _options(a.option)
    variants = {v.strip(): {**base, **({} if v.strip() == "default" else _options(v.split(",")))}
                for v in a.variants.split(";") if v.strip()}
    if a.images_from == "set12":
        clean = load_set12(dataset_dir("set12", a.data, "*.png"), a.images)
    else:
        clean = load_train400_tail(dataset_dir("train400", a.data, "*.png"), a.images)
    machine, probes = common.machine_info(), [common.probe("before")]
    results: dict[str, list] = {}  # row -> per seed (PSNR, prior-mean PSNR or None)
    noisy_psnr = []
    for seed in range(a.seed, a.seed + a.seeds):
        noisy_psnr.append(_one_seed(a, seed, clean, runs, variants, work / f"seed{seed}", results))
    probes.append(common.probe("after"))
    text = _report(a, clean, runs, variants, results, noisy_psnr, machine, probes, time.perf_counter() - t_start)
    print("\n" + text)
    if a.record:
        common.replace_section(common.RESULTS, a.section, text, common.TOPIC_QUALITY)
    return 0


def _one_seed(a, seed: int, clean, runs: list[str], variants: dict[str, dict], work: Path, results: dict) -> float:
    """Every run and variant for data and training seed ``seed``; appends each row's
    (PSNR, prior-mean PSNR) to ``results``; returns the noisy input's PSNR."""
    import bigdenoise as bd
    from bigdenoise.calibration import make_noise_model, save_noise_model
    from bigdenoise.errors import BigDenoiseError
    from bigdenoise.infer import predict_array

    work.mkdir(parents=True, exist_ok=True)
    noisy = poisson_gaussian(clean, a.peak, a.read, seed)
    calibration = poisson_gaussian(clean, a.peak, a.read, seed + 1)  # an independent acquisition
    noisy_psnr = common.mean_psnr(noisy, clean, PEAK)[0]
    print(f"seed {seed}: {a.images_from} {clean.shape}, Poisson-Gaussian noise, {a.peak:g} photons at 255 (gain "
          f"{PEAK / a.peak:.3g}), read sigma {a.read:g}; noisy PSNR {noisy_psnr:.2f} dB", flush=True)
    common_kw = dict(axes="SYX", steps=a.steps, lr=a.lr, batch_size=a.batch_size, patch=(a.patch, a.patch), seed=seed,
                     device=a.device, overwrite=True, progress=False, val_every=max(1, min(100, a.steps)),
                     net={"depth": a.depth, "features": a.features})

    def run(name: str, method: str, options: dict | None = None) -> None:
        t0 = time.perf_counter()
        model = bd.train(noisy, work / name, method=method, options=options or {}, **common_kw)
        train_s = time.perf_counter() - t0
        psnr = common.mean_psnr(predict_array(noisy, model), clean, PEAK)[0]
        prior = None
        if method == "pn2v":  # the same model, predicting its prior's mean
            config = model.train_config.model_copy(update={"options": {**model.train_config.options,
                                                                       "prediction": "prior_mean"}})
            prior = common.mean_psnr(predict_array(noisy, dataclasses.replace(model, train_config=config)), clean,
                                     PEAK)[0]
        results.setdefault(name, []).append((psnr, prior))
        extra = "" if prior is None else f", prior mean {prior:.2f} dB"
        print(f"  {name:<32} {psnr:6.2f} dB{extra}  (train {train_s:.0f} s)", flush=True)

    for name in runs:
        if name == "n2v":
            run(name, "n2v")
            continue
        if name == "pn2v-bootstrap":
            model, info = make_noise_model(noisy, bootstrap=work / "n2v", axes="SYX", kind="gmm", seed=seed)
        else:
            model, info = make_noise_model(calibration, clean=clean, axes="SYX", kind=name.split("-", 1)[1], seed=seed)
        save_noise_model(model, work / f"nm-{name}", info=info, overwrite=True)
        for label, options in variants.items():
            row = name if len(variants) == 1 else f"{name} {label}"
            try:
                run(row, "pn2v", {**options, "noise_model": str(work / f"nm-{name}"), "samples": a.samples})
            except BigDenoiseError as exc:  # e.g. a bootstrap from an N2V model trained too briefly
                print(f"  {row:<32} failed: {exc}", flush=True)
    return noisy_psnr


def _report(a, clean, runs, variants, results, noisy_psnr, machine, probes, seconds) -> str:
    seeds = list(range(a.seed, a.seed + a.seeds))
    where = ("the first Set12 images (256x256; the 512x512 ones centre-cropped)" if a.images_from == "set12" else
             "the last Train400 images (180x180), which no other RESULTS row scores")
    lines = [f"## PN2V on {a.images_from}: variants over {len(seeds)} seed(s) ({a.steps} steps per model)", "",
             f"- Date: {common.now()}; total run time {seconds / 60:.1f} min",
             f"- Machine: {common.format_machine(machine, probes)}",
             f"- Reproduce: `{common.this_command()}`",
             f"- Data: {where}, {len(clean)} of them, simulated Poisson-Gaussian noise ({a.peak:g} photons at 255, "
             f"read sigma {a.read:g}), one draw per seed; calibration pairs: the clean images with another draw.",
             f"- Budget: {a.steps} steps per model, batch {a.batch_size}, patch {a.patch}, lr {a.lr:g}, U-Net depth "
             f"{a.depth} / {a.features} features, K = {a.samples}; seeds {', '.join(map(str, seeds))} (data and "
             f"training). Variants: " + "; ".join(f"`{k}` {v or '(defaults)'}" for k, v in variants.items()) + ".",
             "", "PSNR (dB, peak 255): mean ± standard deviation over seeds [min, max]; the prior mean is the same "
             "model predicting its samples' plain mean:", "",
             "| model | PSNR | prior mean | per seed |", "| --- | --- | --- | --- |",
             f"| noisy | {common.spread_text(noisy_psnr)} | | {', '.join(f'{v:.2f}' for v in noisy_psnr)} |"]
    for name, per_seed in results.items():
        psnr = [p for p, _ in per_seed]
        prior = [q for _, q in per_seed if q is not None]
        lines.append(f"| {name} | {common.spread_text(psnr)} | {common.spread_text(prior) if prior else ''} | "
                     f"{', '.join(f'{v:.2f}' for v in psnr)} |")
    if len(variants) > 1:
        first = next(iter(variants))
        lines += ["", f"Paired difference to `{first}` (same seed, same data), mean ± sd over seeds:", ""]
        for name in runs:
            ref = results.get(f"{name} {first}")
            for label in list(variants)[1:]:
                other = results.get(f"{name} {label}")
                if ref and other and len(ref) == len(other):
                    diffs = [o[0] - r[0] for o, r in zip(other, ref)]
                    lines.append(f"- {name} {label} − {first}: {common.spread_text(diffs)} dB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
