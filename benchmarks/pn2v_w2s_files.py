"""PN2V against N2V on the W2S 8-bit files: how far the files' noise differs, and whether PN2V
wins where its noise model fits the file.

Two measurements on W2S (``../shared/data/w2s_8bit``):

1. **Noise per file.** For every file of FOVs 004-010 and each channel, the least-squares map
   ``a * gt + b`` of the 400-frame average onto the single frame, then the slope ``alpha`` of
   the residual variance against that signal (``var(x | s) ~ alpha * s + beta``, fitted over 7
   signal quantile bins). One camera and one setting would give one ``alpha`` per channel.
2. **A matched noise model per file.** For single files (``--files``, ``channel:FOV``), N2V and
   PN2V each train on that one file alone with the same wall-clock budget, PN2V with a GMM
   noise model fitted to that same file's (noisy, mapped ground truth) pair: the calibration
   PN2V assumes, here available per file. This is a diagnosis (the calibration uses the scored
   file's ground truth), not a protocol for the quality table.
3. **How much PN2V can gain at most** (:func:`mmse_ceiling`): PN2V's prior sees what N2V sees,
   and its MMSE adds the pixel's own value. With a prior as good as N2V's output and exactly
   as wide as its error, the estimate's error variance is ``e^2 var_n / (e^2 + var_n)`` per
   pixel (Gaussian prior error ``e^2``, noise variance ``var_n`` at that signal): the ceiling of
   PN2V's gain over N2V, in dB, when N2V's error is much smaller than the noise.
4. **Whether eq. 7 fixes the prior's width** (:func:`spread_scan`, first seed's PN2V model): the
   K samples are stretched about their mean by a factor; for each factor, PN2V's loss on masked
   pixels of the file (N2V masking, as in training) and the PSNR of the MMSE estimate. Where the
   loss is flat in the factor but the PSNR is not, the training objective cannot tell the width
   the MMSE needs.

``--seeds N`` trains every model with seeds ``seed .. seed+N-1`` (the spread from run to run);
``--schedule cosine`` anneals the learning rate to zero over the budget.

Usage: python benchmarks/pn2v_w2s_files.py [--files 0:9,1:9,2:9] [--budget 90] [--seeds 1]
        [--schedule plateau|cosine] [--kind gmm|histogram] [--data DIR] [--work DIR] [--seed 0]
        [--record [--section NAME]]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

import common
from datasets import w2s_pairs, write_stack

FOVS = range(4, 11)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", default="0:9,1:9,2:9", help="channel:FOV of each file trained on (default 0:9,1:9,2:9)")
    p.add_argument("--budget", type=float, default=90.0, help="seconds of training per model (default 90)")
    p.add_argument("--data", help="shared data folder (default $BIGDENOISE_DATA or ../shared/data)")
    p.add_argument("--work", help="working folder (default: <tmp>/bigdenoise-bench/pn2v-w2s-files)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per model (default 1)")
    p.add_argument("--schedule", choices=("plateau", "cosine"), help="LR schedule (default: the methods' own)")
    p.add_argument("--kind", choices=("gmm", "histogram"), default="gmm", help="PN2V's noise model (default gmm)")
    p.add_argument("--record", action="store_true", help="write the section (--section) of RESULTS.md")
    p.add_argument("--section", default="pn2v-w2s-files", help="RESULTS.md section to record (default pn2v-w2s-files)")
    return p.parse_args(argv)


def noise_slope(noisy: np.ndarray, signal: np.ndarray) -> float:
    """``alpha`` of ``var(noisy - signal | signal) ~ alpha * signal + beta`` over 7 quantile bins."""
    edges = np.quantile(signal, np.linspace(0.05, 0.95, 8))
    index = np.digitize(signal, edges)
    points = np.array([(signal[index == k].mean(), (noisy - signal)[index == k].var()) for k in range(1, 8)])
    return float(np.polyfit(points[:, 0], points[:, 1], 1)[0])


def mmse_ceiling(noisy: np.ndarray, signal: np.ndarray, n2v: np.ndarray) -> float:
    """dB by which a Gaussian prior centred on ``n2v`` and as wide as its error, combined with the
    pixel's noisy value, improves on ``n2v`` (all arrays ``(H, W)``, ``signal`` the noise-free
    image in the noisy image's units; the noise variance is taken per signal level, 16 bins)."""
    from bigdenoise import metrics

    e2 = float(np.mean((metrics.apply_affine_fit(n2v, signal) - signal) ** 2))
    edges = np.quantile(signal, np.linspace(0, 1, 17)[1:-1])
    level = np.digitize(signal, edges)
    var = np.array([(noisy - signal)[level == k].var() for k in range(16)])[level]
    return float(10 * np.log10(e2 / np.mean(e2 * var / (e2 + var))))


SCALES = (0.5, 0.75, 1.0, 1.25)


def spread_scan(model_dir: Path, noisy: np.ndarray, clean: np.ndarray, seed: int = 0) -> list[tuple[float, float, float]]:
    """``(factor, loss, PSNR)`` per factor of :data:`SCALES`: the PN2V model's K samples of every
    pixel of ``noisy`` ``(H, W)`` stretched by ``factor`` about their mean; ``loss`` is eq. 7
    (mean ``-ln((1/K) sum_k p(x|s^k))``, nats) over 16 N2V-masked draws of the image, ``PSNR``
    that of the MMSE estimate on the unmasked image (fitted a*x+b to ``clean``, peak 255)."""
    import torch

    from bigdenoise import metrics
    from bigdenoise.masking import n2v_mask
    from bigdenoise.methods import pn2v
    from bigdenoise.package import load_model

    model = load_model(model_dir)
    mean, std = model.stats.mean, model.stats.std
    noise = model.nets["noise_model"]
    rng = np.random.default_rng(seed)
    x_norm = ((noisy - mean) / std).astype(np.float32)

    def samples(image: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return pn2v.samples(model.nets, torch.from_numpy(image)[None, None])[0]  # (K, H, W)

    def stretch(s: torch.Tensor, factor: float) -> torch.Tensor:
        centre = s.mean(0, keepdim=True)
        return centre + factor * (s - centre)

    x = torch.from_numpy(x_norm)
    losses = {factor: [] for factor in SCALES}
    for _ in range(16):
        masked, mask = n2v_mask(x_norm, rng, fraction=model.options.masked_fraction, window=model.options.window,
                                replacement=model.options.replacement)
        mask = torch.from_numpy(mask > 0)
        s_masked, x_masked = samples(masked)[:, mask], x[mask][None]  # (K, M), (1, M)
        for factor in SCALES:
            with torch.inference_mode():
                log_p = noise.log_likelihood(x_masked, stretch(s_masked, factor))
            losses[factor].append(-(torch.logsumexp(log_p, 0) - np.log(len(s_masked))).double().numpy())
    s_full = samples(x_norm)
    rows = []
    for factor in SCALES:
        s = stretch(s_full, factor)
        with torch.inference_mode():
            w = torch.softmax(noise.log_likelihood(x[None], s), 0)
        estimate = ((w * s).sum(0) * std + mean).double().numpy()
        rows.append((factor, float(np.concatenate(losses[factor]).mean()),
                     metrics.psnr(metrics.apply_affine_fit(estimate, clean), clean, 255.0)))
    return rows


def matched_run(noisy: np.ndarray, clean: np.ndarray, mapped: np.ndarray, work: Path, a) -> dict:
    """N2V and PN2V (noise model from this file's own pair) trained on one file for every seed;
    PSNR of each, and the first seed's PN2V :func:`spread_scan`."""
    import zarr

    import bigdenoise as bd
    from bigdenoise import metrics
    from bigdenoise.calibration import make_noise_model, save_noise_model

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_stack(work / "noisy.zarr", noisy[None])
    model, info = make_noise_model(noisy[None], clean=mapped[None], axes="SYX", kind=a.kind, seed=a.seed)
    save_noise_model(model, work / "nm", info=info, overwrite=True)
    row = {"n2v": [], "pn2v": [], "n2v_steps": [], "pn2v_steps": []}
    for seed in range(a.seed, a.seed + a.seeds):
        for key, kw in (("n2v", {"method": "n2v"}),
                        ("pn2v", {"method": "pn2v", "options": {"noise_model": str(work / "nm"), "samples": 64}})):
            t0 = time.perf_counter()
            name = f"{key}-{seed}"
            trained = bd.train(work / "noisy.zarr", work / name, axes="SYX", max_time=a.budget, seed=seed,
                               schedule=a.schedule, overwrite=True, progress=False, **kw)
            bd.predict(work / "noisy.zarr", work / name, work / f"{name}.zarr", axes="SYX", cluster="threads",
                       overwrite=True, progress=False)
            out = np.asarray(zarr.open_array(str(work / f"{name}.zarr"), mode="r")[0], np.float64)
            row[key].append(metrics.psnr(metrics.apply_affine_fit(out, clean), clean, 255.0))
            row[key + "_steps"].append(trained.info["steps"])
            if key == "n2v" and seed == a.seed:
                row["ceiling"] = mmse_ceiling(noisy, mapped, out)
            print(f"  {name:7s} {row[key][-1]:.2f} dB ({trained.info['steps']} steps, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
    row["scan"] = spread_scan(work / f"pn2v-{a.seed}", noisy, clean, a.seed)
    print("  spread " + ", ".join(f"x{f:g}: {loss:.4f} nats {p:.2f} dB" for f, loss, p in row["scan"]), flush=True)
    return row


TRAINED = SCALES.index(1.0)
"""Index of the trained width (factor 1) in a :func:`spread_scan`."""


def width_reading(rows: list[dict]) -> str:
    """What the spread scans of ``rows`` say, in a sentence or two."""
    at_trained = sum(min(r["scan"], key=lambda t: t[1])[0] == 1.0 for r in rows)
    narrower = [r for r in rows if max(r["scan"], key=lambda t: t[2])[0] < 1.0]
    gains = [max(p for _, _, p in r["scan"]) - r["scan"][TRAINED][2] for r in rows]
    text = (f"eq. 7's loss is lowest at the trained width on {at_trained}/{len(rows)} files, while the MMSE "
            f"estimate is best with a narrower prior on {len(narrower)}/{len(rows)} files, by "
            f"{', '.join(f'{g:+.2f}' for g in gains)} dB over the trained width.")
    if at_trained < len(rows):
        text += (" Where the loss is lowest at another width, training had not reached the likelihood's optimum "
                 "within the budget.")
    if narrower and at_trained:
        span = max(abs(loss - r["scan"][TRAINED][1]) for r in rows for f, loss, _ in r["scan"] if f < 1.0)
        text += (" The prior that maximises the likelihood is wider than the one the MMSE needs, and the loss "
                 f"changes by at most {1000 * span:.1f} millinats over that range: PN2V's own objective cannot "
                 "choose the narrower width, so its MMSE leans too much on the noisy pixel and gives back the gain "
                 "its ceiling allows.")
    return text


def main(argv=None) -> int:
    from bigdenoise import metrics

    a = parse_args(argv)
    work = common.claim_work(a.work, "pn2v-w2s-files")
    machine, probes = common.machine_info(), [common.probe("before")]
    t_start = time.perf_counter()

    slopes = {c: [] for c in range(3)}
    for c in range(3):
        for fov in FOVS:
            (noisy,), (clean,) = w2s_pairs(a, [fov], [c])
            slopes[c].append(noise_slope(noisy, metrics.apply_affine_fit(clean, noisy)))
        print(f"channel {c}: alpha per file " + ", ".join(f"{s:.1f}" for s in slopes[c]), flush=True)

    rows = []
    for item in a.files.split(","):
        c, fov = (int(v) for v in item.split(":"))
        (noisy,), (clean,) = w2s_pairs(a, [fov], [c])
        mapped = metrics.apply_affine_fit(clean, noisy).astype(np.float32)
        print(f"file FOV {fov:03d} channel {c}:", flush=True)
        rows.append({"channel": c, "fov": fov, **matched_run(noisy, clean, mapped, work / f"c{c}-{fov:03d}", a)})
    probes.append(common.probe("after"))

    diffs = np.array([np.mean(r["pn2v"]) - np.mean(r["n2v"]) for r in rows])
    spread = max(max(r[k]) - min(r[k]) for r in rows for k in ("n2v", "pn2v"))
    schedule = {None: "each method's own LR schedule (plateau)", "plateau": "LR halved on plateaus",
                "cosine": "LR annealed to zero over the budget (cosine)"}[a.schedule]
    seeds = f"seed {a.seed}" if a.seeds == 1 else f"seeds {a.seed}-{a.seed + a.seeds - 1}"

    def values(r: dict, key: str) -> str:
        text = " / ".join(f"{v:.2f}" for v in r[key])
        return text + f" ({'/'.join(str(n) for n in r[key + '_steps'])} steps)"

    lines = [
        f"## PN2V on single W2S files with a matched {a.kind} noise model (`benchmarks/pn2v_w2s_files.py`)",
        "",
        f"- Date: {common.now()}; total run time {(time.perf_counter() - t_start) / 60:.1f} min",
        f"- Machine: {common.format_machine(machine, probes)}",
        f"- Reproduce: `{common.this_command()}`",
        f"- Every model: default U-Net (depth 2, 32 features), patch 64x64, batch 16, {a.budget:g} s of training "
        f"on the one file, {seeds}, {schedule}; PN2V with its defaults (K = 64), its {a.kind} noise model fitted to "
        "the same file's (noisy, ground truth mapped a*gt+b onto it) pair. PSNR after fitting each output a*x+b "
        "to the ground truth, peak 255.",
        "",
        "Noise variance per unit of signal (`alpha` of var(x|s) ~ alpha s + beta) of every file of FOVs 004-010:",
        "",
        "| channel | alpha per file | max / min |",
        "|---|---|---|",
    ]
    for c, v in slopes.items():
        lines.append(f"| {c} | {', '.join(f'{x:.1f}' for x in v)} | {max(v) / min(v):.2f} |")
    lines += ["", "| file | N2V dB, per seed | PN2V dB, per seed (matched noise model) | PN2V − N2V (means) | "
              "ceiling of PN2V − N2V |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| FOV {r['fov']:03d}, channel {r['channel']} | {values(r, 'n2v')} | {values(r, 'pn2v')} | "
                     f"{np.mean(r['pn2v']) - np.mean(r['n2v']):+.2f} | {r['ceiling']:+.2f} |")
    lines += [
        "",
        f"PN2V − N2V: {diffs.mean():+.2f} dB on average, higher on {(diffs > 0).sum()}/{len(diffs)} files; "
        f"largest spread between seeds of one model: {spread:.2f} dB." if a.seeds > 1 else
        f"PN2V − N2V: {diffs.mean():+.2f} dB on average, higher on {(diffs > 0).sum()}/{len(diffs)} files.",
        "",
        f"The prior's width (`spread_scan`, the seed-{a.seed} PN2V model): its K samples "
        "stretched about their mean by a factor; PN2V's loss (eq. 7) on N2V-masked pixels, relative to the "
        "trained width, and the MMSE estimate's PSNR:",
        "",
        "| file | " + " | ".join(f"x{f:g}: loss (mnats), PSNR" for f in SCALES) + " | loss lowest at | PSNR highest at |",
        "|---|" + "---|" * (len(SCALES) + 2),
    ]
    for r in rows:
        base = r["scan"][TRAINED][1]
        best_loss, best_psnr = min(r["scan"], key=lambda t: t[1])[0], max(r["scan"], key=lambda t: t[2])[0]
        lines.append(f"| FOV {r['fov']:03d}, channel {r['channel']} | "
                     + " | ".join(f"{1000 * (loss - base):+.2f}, {p:.2f}" for _, loss, p in r["scan"])
                     + f" | x{best_loss:g} | x{best_psnr:g} |")
    lines += [
        "",
        "**Reading.** Within one channel the files' noise per unit of signal differs by the factor in the last "
        "column of the first table: each 8-bit file was contrast-stretched on its own, so no single noise model "
        "p(x|s) holds for a channel's files; here every file gets its own. The ceiling column bounds what PN2V "
        "can add on these files: a prior exactly as good as N2V's output and exactly as wide as its error, "
        "combined with the pixel's value by the MMSE, gains that much over N2V (`mmse_ceiling`: Gaussian prior "
        "error, noise variance per signal level). The last table shows whether training can find that width: "
        + width_reading(rows),
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if a.record:
        common.replace_section(common.RESULTS, a.section, text, common.TOPIC_QUALITY)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
