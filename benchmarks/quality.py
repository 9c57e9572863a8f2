"""Denoising quality of every bigdenoise method and of classical baselines, on real microscopy
data and on natural images with synthetic noise: PSNR and SSIM over images, every learned row
(and CAREamics) trained once per seed (``--seeds``, default 3) and reported as the mean over seeds
± their spread (standard deviation, and [min, max] of the seeds' means), with the paired per-image
PSNR gain over the first baseline (normally the noisy input).

Each learned method is trained through the public API (``bigdenoise.train``) with the same
wall-clock budget (``--budget``, passed as ``max_time``) on a Zarr stack written here, and
denoises it through the blockwise engine (``bigdenoise.predict``, ``cluster="threads"``) into
Zarr. Baselines on the same images: the noisy input; Gaussian and median filters (window 3, 5
or 7, the best mean PSNR per data set: an oracle choice); non-local means (scikit-image, its
own noise estimate); BM3D (``bm3d`` package, when it imports); CAREamics N2V (the peer, when
installed: its own U-Net at our shape, the same patch, batch and budget, its tiled prediction;
``careamics-n2v`` with its default masking and last weights, ``careamics-n2v-best`` with its
best-validation checkpoint, ``careamics-n2v-ours`` with our masking, see ``CAREAMICS_ROWS``).
``dbsn-clean``: D-BSN with ``--clean``, the clean half of CARE's training pairs (other fields of
view, or Train400 for the BSD68/Set12 sets) used unpaired, where the data have such pairs.
The rows of ``OPTION_ROWS`` (``n2v2``, ``dbsn-awgn``, ``dbsn-cosine``, ``cosdd-rf8``, ``cosdd-mish``,
``cosdd-d30``...) train a method with other settings, each with its note; the rows of ``VARIANTS``
(``dbsn-posterior``, ``cosdd-sampled``...) predict with another row's model and other prediction options.

Data sets (``--datasets``; loaders and protocols in ``datasets.py``; shared data: ``--data
DIR``, ``$BIGDENOISE_DATA`` or ../shared/data): ``bsd68-s15|s25|s50`` and ``set12-s15|s25|s50``
(Gaussian noise; CARE trained on Train400), ``set12-pg`` (simulated Poisson–Gaussian, PN2V with
a noise model from calibration pairs), ``w2s`` (FOVs 008-010; CARE and PN2V's noise model from
FOVs 001-007), ``w2s-c0|c1|c2`` (one channel, FOVs 004-010; CARE and the noise model from FOVs
001-003 of that channel: one acquisition setting per noise model, as PN2V needs), ``fmd`` (CARE by 2-fold cross-fitting on image halves), ``fmd-fish`` (FMD's Confocal_FISH_3 alone,
the PN2V paper's Confocal Zebrafish at NR1: N2V and PN2V, matched and bootstrapped), ``hagen-mito|nucleus|
membrane`` (256x256 tiles; CARE on the tiles outside the scored crop), ``tirf`` (20 repeated
sCMOS frames; each against the mean of the frames outside its input window), ``timelapse``
(nuclei time-lapse as reference + simulated Poisson–Gaussian noise), ``phantom3d`` (a
generated 3D phantom + Poisson–Gaussian noise) and ``stripes-rows|cols`` (Set12 on 0..1 with
Poisson, white and row- or column-correlated Gaussian noise, at ``--stripe-noise``; struct-N2V masks
along the stripes; ``bsd68-stripes-rows|cols`` the same on BSD68's even half).
On the stripes and Hagen sets a further table gives the stripe residue A (:func:`stripe_residue`).
Outputs on W2S and Hagen are fitted ``a * x + b`` to the reference before scoring (their 8-bit
files were contrast-stretched independently).

``--quick`` (what RESULTS.md shows by default): the data sets and methods of ``QUICK_PLAN`` (few
images, 256x256 crops), 45 s per model and seed: under 15 minutes on 2 CPU cores with
``--seeds 1``, about three times that with the default 3 seeds.

    python benchmarks/quality.py --quick --record
    python benchmarks/quality.py --budget 10m --record          # every data set and method
    python benchmarks/quality.py --datasets tirf,timelapse,phantom3d --methods n2v,noise2stack --section stack --record

Training seeds: ``--seeds 3`` trains seeds ``--seed`` .. ``--seed + 2``; ``--seeds 0,5,9`` names
them. The data (synthetic noise, crops) keep ``--seed``, so the seeds differ only in training.
Each seed trains in its own folder (``<work>/<dataset>/seed<S>``). Deterministic baselines
(filters, NLM, BM3D) run once.

``--record`` writes the tables into benchmarks/RESULTS.md (section "quality", or
"quality-NAME" with ``--section NAME``) and a panel of crops per data set into
benchmarks/figures/quality_[NAME_]<dataset>.png.
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import common

from bigdenoise import metrics
from bigdenoise.config import DEFAULT_PATCH_2D, NetConfig, TrainConfig
from bigdenoise.errors import BigDenoiseError
from datasets import ALL_DATASETS, STRIPE_NOISE, Dataset, haar_sigma, load_dataset, write_stack

FIGURES = common.BENCH_DIR / "figures"
# the shared defaults every learned row (CAREamics too) trains with, unless its method sets its own
DEPTH, FEATURES = (NetConfig.model_fields[k].default for k in ("depth", "features"))
BATCH = TrainConfig.model_fields["batch_size"].default
# CAREamics rows: (masking, weights). Its defaults mask 0.2 % of the pixels (its
# ``masked_pixel_percentage`` is a percentage) from an 11x11 window; ours masks 64 per 64x64 patch
# (1.5625 %) from a 5x5 window. "last": the weights when its time budget stops it; "best": its
# checkpoint with the lowest validation loss (what our rows keep).
CAREAMICS_ROWS = {"careamics-n2v": ("its", "last"), "careamics-n2v-best": ("its", "best"),
                  "careamics-n2v-ours": ("ours", "last")}
CAREAMICS_MASKING = {"its": {"masked_pixel_percentage": 0.2, "roi_size": 11},
                     "ours": {"masked_pixel_percentage": 100 * 64 / 4096, "roi_size": 5}}
BASELINES = ("noisy", "gaussian", "median", "nlm", "bm3d", *CAREAMICS_ROWS)
# Rows that train a method with other settings: row -> (``bigdenoise.train`` keyword arguments, note).
OPTION_ROWS = {
    "n2v2": ({"method": "n2v", "net": {"n2v2": True}, "options": {"replacement": "median"}}, ""),
    "dbsn-awgn": ({"method": "dbsn", "options": {"noise": "awgn"}},
                  "--option noise=awgn: one learned noise level per image (the paper's AWGN mode)"),
    "dbsn-cosine": ({"method": "dbsn", "schedule": "cosine"},
                    "--schedule cosine: every stage's rate annealed to zero over its budget"),
    "cosdd-rf8": ({"method": "cosdd", "options": {"ar_dilations": (1,)}},
                  "--option ar_dilations=1: the noise decoder sees the 8 pixels before each pixel (default 40)"),
    "cosdd-mish": ({"method": "cosdd", "options": {"activation": "mish"}},
                   "--option activation=mish: the encoder's activation Mish (the authors') instead of SiLU"),
    "cosdd-d30": ({"method": "cosdd", "options": {"distill_fraction": 0.3, "distill_samples": 4}},
                  "--option distill_fraction=0.3 --option distill_samples=4: 30 % of the budget for the "
                  "distillation, 4 latent samples per target (default 20 %, 2; the split before 7dbb186)"),
}
# Rows that predict with another row's model (trained first if that row did not run): prediction options.
VARIANTS = {"dbsn-posterior": ("dbsn", {"prediction": "posterior"}), "dbsn-mu": ("dbsn", {"prediction": "mu"}),
            "dbsn-awgn-posterior": ("dbsn-awgn", {"prediction": "posterior"}),
            "cosdd-sampled": ("cosdd", {"prediction": "sampled"})}
# every learned row, in the order of the tables
LEARNED = ("n2v", "n2v2", "struct-n2v", "pn2v", "pn2v-bootstrap", "n2n", "care", "noise2stack", "noise2stack-copy",
           "dbsn", "dbsn-clean", "dbsn-posterior", "dbsn-mu", "dbsn-awgn", "dbsn-awgn-posterior", "dbsn-cosine", "cosdd",
           "cosdd-sampled", "cosdd-rf8", "cosdd-mish", "cosdd-d30")
# learn from the noisy volume alone: any data set (these methods and their option rows)
ANY_DATA_METHODS = ("dbsn", "cosdd")
ANY_DATA = (*ANY_DATA_METHODS, *(k for k, (kw, _) in OPTION_ROWS.items() if kw["method"] in ANY_DATA_METHODS))
FILTERS = ("noisy", "gaussian", "median", "nlm")
SEEDED_BASELINES = tuple(CAREAMICS_ROWS)  # baselines that train, hence run once per seed
DEFAULT_SEEDS = 3
# --quick: what each data set runs (BM3D and CAREamics where the issues need them: they are slow on a CPU)
QUICK_PLAN = {
    "bsd68-s25": (*FILTERS, "bm3d", "careamics-n2v", "n2v", "n2n"),
    "set12-s25": (*FILTERS, "n2v"),
    "tirf": (*FILTERS, "n2v", "n2n", "noise2stack"),
    "hagen-mito": (*FILTERS, "n2v"),
    "w2s": (*FILTERS, "careamics-n2v", "n2v"),
}
WINDOWS = (3, 5, 7)


# --------------------------------------------------------------------------- scoring


def score(ds: Dataset, output: np.ndarray) -> tuple[list[float], list[float], np.ndarray]:
    """Per-image PSNR and SSIM of ``output`` (N, H, W), and the (fitted) images scored."""
    scored = np.empty(output.shape, np.float32)
    p, s = [], []
    for i, (x, ref) in enumerate(zip(output, ds.clean)):
        x = metrics.apply_affine_fit(x, ref) if ds.fit else np.asarray(x, np.float64)
        scored[i] = x
        p.append(metrics.psnr(x, ref, ds.data_range))
        s.append(metrics.ssim(x, ref, ds.data_range))
    return p, s, scored


RESIDUE_BOX = 5


def stripe_residue(prediction: np.ndarray, truth: np.ndarray, box: int = RESIDUE_BOX,
                   where: np.ndarray | None = None) -> float:
    """Stripe residue A of one image (H, W): lag-1 autocorrelation along the rows (X) minus that
    along the columns (Y) of the residual ``prediction - truth`` high-passed by subtracting its
    ``box`` x ``box`` mean (reflected edges). About 0 for white or isotropic residuals, positive
    for row stripes left in the output, negative for column stripes. ``where`` (H, W bool): count
    only those pixels (and pairs of them), e.g. :func:`flat_pixels`."""
    from scipy import ndimage

    r = np.asarray(prediction, np.float64) - np.asarray(truth, np.float64)
    hp = r - ndimage.uniform_filter(r, size=box, mode="reflect")
    where = np.ones(r.shape, bool) if where is None else where
    hp -= hp[where].mean()
    var = float(np.mean(hp[where] ** 2))
    if var <= 0:
        return 0.0
    rows = float(np.mean((hp[:, 1:] * hp[:, :-1])[where[:, 1:] & where[:, :-1]])) / var
    cols = float(np.mean((hp[1:, :] * hp[:-1, :])[where[1:, :] & where[:-1, :]])) / var
    return rows - cols


def flat_pixels(truth: np.ndarray, fraction: float = 0.3, box: int = RESIDUE_BOX) -> np.ndarray:
    """(H, W) bool: the ``fraction`` of pixels of ``truth`` with the lowest standard deviation in
    their ``box`` x ``box`` window, where a denoiser has little detail to blur, so the residue A
    there is mostly that of noise left in the output (A is scale-free: the faint texture left there
    still counts, ``residue_split.py``'s blurred truth)."""
    from scipy import ndimage

    t = np.asarray(truth, np.float64)
    mean = ndimage.uniform_filter(t, size=box, mode="reflect")
    sd = np.sqrt(np.maximum(ndimage.uniform_filter(t * t, size=box, mode="reflect") - mean * mean, 0.0))
    return sd <= np.quantile(sd, fraction)


# --------------------------------------------------------------------------- baselines


def _best_window(ds: Dataset, filt) -> tuple[int, np.ndarray]:
    best = None
    for k in WINDOWS:
        out = np.stack([filt(x, k) for x in ds.noisy])
        value = float(np.mean(score(ds, out)[0]))
        if best is None or value > best[0]:
            best = (value, k, out)
    return best[1], best[2]


def estimate_noise_sigma(x: np.ndarray) -> tuple[float, str]:
    """Gaussian noise sigma of one image: scikit-image's ``estimate_sigma`` (Donoho's MAD of the
    finest diagonal wavelet coefficients, db2) when PyWavelets is installed, else the same
    estimator on Haar coefficients in numpy. Returns the value and which estimator gave it."""
    try:
        from skimage.restoration import estimate_sigma

        return float(estimate_sigma(x)), "from skimage.restoration.estimate_sigma"
    except ImportError:  # estimate_sigma needs PyWavelets
        return haar_sigma(x), ("by Donoho's MAD of the diagonal Haar wavelet coefficients (PyWavelets, which "
                               "skimage's estimate_sigma needs, is not installed)")


def _edge(k: int) -> str:
    return " (the largest tried: a wider one may score higher)" if k == max(WINDOWS) else ""


def run_baseline(name: str, ds: Dataset, work: Path, a: argparse.Namespace) -> tuple[np.ndarray | None, str]:
    """The baseline's output (N, H, W) and a note, or (None, why it was skipped)."""
    if name == "noisy":
        return ds.noisy, ("fitted a*x+b like every output" if ds.fit else "")
    if name in ("gaussian", "median"):
        try:
            from scipy import ndimage
        except ImportError:
            return None, "scipy not installed (pip install -e .[bench])"
        if name == "gaussian":
            # window k = 2r + 1 taps: sigma = r / 2, cut at 2 sigma
            k, out = _best_window(ds, lambda x, k: ndimage.gaussian_filter(x, sigma=(k - 1) / 4, truncate=2.0))
            return out, f"window {k} (sigma {(k - 1) / 4:g}), best of {'/'.join(map(str, WINDOWS))} by PSNR{_edge(k)}"
        k, out = _best_window(ds, lambda x, k: ndimage.median_filter(x, size=k, mode="reflect"))
        return out, f"{k}x{k}, best of {'/'.join(map(str, WINDOWS))} by PSNR{_edge(k)}"
    if name == "nlm":
        try:
            from skimage.restoration import denoise_nl_means
        except ImportError:
            return None, "scikit-image not installed (pip install -e .[bench])"
        out, sigmas = [], []
        for x in ds.noisy:
            s, how = estimate_noise_sigma(x)
            sigmas.append(s)
            out.append(denoise_nl_means(x, h=0.8 * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True))
        return np.stack(out).astype(np.float32), (f"skimage fast mode, patch 5, distance 6, h = 0.8 sigma; sigma per "
                                                  f"image {how} (mean {np.mean(sigmas):.3g})")
    if name == "bm3d":
        try:
            import bm3d
        except ImportError:
            return None, "bm3d not installed (pip install bm3d)"
        out, how = [], "the known sigma"
        for x in ds.noisy:
            if ds.sigma is not None:
                s = ds.sigma
            else:
                s, how = estimate_noise_sigma(x)
            out.append(bm3d.bm3d(x, sigma_psd=s))
        return np.stack(out).astype(np.float32), f"sigma: {how}"
    if name in CAREAMICS_ROWS:
        return run_careamics(name, ds, work, a)
    raise SystemExit(f"unknown baseline {name!r}")


CAREAMICS_TILE = (128, 128)
_careamics_runs: dict[tuple[str, str], dict[str, tuple[np.ndarray, str]]] = {}  # (folder, masking) -> weights -> run


def run_careamics(name: str, ds: Dataset, work: Path, a: argparse.Namespace) -> tuple[np.ndarray | None, str]:
    """CAREamics N2V (the peer library) with our network, patch, batch, seed and wall-clock budget.

    Its own U-Net at our shape (depth 2, 32 initial features, batch norm), its defaults otherwise
    (mean/std normalisation, flips and 90-degree rotations, Adam with ReduceLROnPlateau, validation
    on 8 held-out patches), masking and weights as ``CAREAMICS_ROWS[name]`` says; Lightning's
    ``max_time`` stops it. The weights of every requested row with this masking are predicted
    (tiled, ``CAREAMICS_TILE`` tiles, 48-pixel overlap) and kept, so the "best" row reuses the
    "last" row's training.
    """
    masking, weights = CAREAMICS_ROWS[name]
    key = (str(work), masking)
    if key not in _careamics_runs:
        trained = _train_careamics(ds, work / f"careamics-{masking}", masking, a)
        if trained is None:
            return None, "careamics not installed"
        _careamics_runs[key] = trained
    return _careamics_runs[key][weights]


def _train_careamics(ds: Dataset, folder: Path, masking: str,
                     a: argparse.Namespace) -> dict[str, tuple[np.ndarray, str]] | None:
    """One CAREamics training; for each weights ("last", "best") that a requested row with this
    masking uses, its output (N, H, W) and a note."""
    careamics = common.import_careamics()
    if careamics is None:
        return None
    import logging

    for logger in ("lightning.pytorch", "lightning.fabric", "careamics"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    n, h, w = ds.noisy.shape
    ph, pw = DEFAULT_PATCH_2D
    val_patches = max(1, min(8, n * (h // ph) * (w // pw) // 8))  # its default 8, fewer on tiny inputs
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}.get(a.device, "auto")
    config = create_advanced_n2v_config(
        experiment_name="quality", data_type="array", axes="SYX", patch_size=list(DEFAULT_PATCH_2D),
        batch_size=BATCH, num_epochs=1_000_000, n_val_patches=val_patches,
        model_params={"depth": DEPTH, "num_channels_init": FEATURES},
        seed=a.seed + 1,  # it needs a seed > 0
        **CAREAMICS_MASKING[masking],
        trainer_params={"max_time": {"seconds": a.budget}, "accelerator": accelerator, "devices": 1,
                        "enable_model_summary": False})
    shutil.rmtree(folder, ignore_errors=True)
    engine = CAREamist(config, work_dir=str(folder), enable_progress_bar=False)
    t0 = time.perf_counter()
    engine.train(train_data=ds.noisy)
    train_s = time.perf_counter() - t0
    steps = engine.trainer.global_step
    last = folder / "final.ckpt"
    engine.trainer.save_checkpoint(last)  # its own "last" checkpoint may lag the stop by epochs
    best = engine.trainer.checkpoint_callback.best_model_path or str(last)
    mask = CAREAMICS_MASKING[masking]
    tile = tuple(min(t, s) for t, s in zip(CAREAMICS_TILE, ds.noisy.shape[1:]))
    needed = {w for m, (k, w) in CAREAMICS_ROWS.items() if k == masking and m in a.methods}
    runs = {}
    for weights, checkpoint in (("last", last), ("best", best)):
        if weights not in needed:
            continue
        t0 = time.perf_counter()
        pred, _ = engine.predict(ds.noisy, tile_size=tile, tile_overlap=(48, 48), checkpoint=checkpoint)
        predict_s = time.perf_counter() - t0
        out = np.concatenate([np.asarray(p, np.float32).reshape(-1, *ds.noisy.shape[1:]) for p in pred])
        runs[weights] = out, (
            f"CAREamics {careamics.__version__}, {'its default' if masking == 'its' else 'our'} masking "
            f"({mask['masked_pixel_percentage']:g} % of pixels, "
            f"{mask['roi_size']}x{mask['roi_size']} window), {weights} weights: {steps} steps, train {train_s:.0f} s, "
            f"predict {predict_s:.1f} s ({tile[0]}x{tile[1]} tiles, overlap 48)")
    return runs


# --------------------------------------------------------------------------- learned methods


def _pn2v_noise_model(key: str, ds: Dataset, noisy_path: Path, folder: Path, a: argparse.Namespace,
                      trained: set[str]) -> tuple[Path, str]:
    """Fit and save PN2V's noise model; returns its folder and a note. Bootstrapping uses the
    ``n2v`` row's model when this run trained one, else trains one with the same budget."""
    from bigdenoise.calibration import make_noise_model, save_noise_model

    kind = a.noise_kind
    if key == "pn2v-bootstrap":  # Prakash et al. 2020: an N2V prediction is the pseudo-signal
        n2v = folder / "model-n2v"
        note = "n2v row's model"
        if "n2v" not in trained:
            n2v = folder / "model-n2v-for-bootstrap"
            t0 = time.perf_counter()
            _train(n2v, str(noisy_path), None, "SYX", {"method": "n2v"}, a)
            note = f"an N2V model trained for it ({time.perf_counter() - t0:.0f} s)"
        model, info = make_noise_model(str(noisy_path), bootstrap=n2v, axes="SYX", kind=kind, seed=a.seed)
        note = f"{kind} noise model bootstrapped from the {note}'s prediction (that N2V budget comes on top)"
    elif "pairs" in ds.noise_model:
        noisy, clean = ds.noise_model["pairs"]
        model, info = make_noise_model(noisy, clean=clean, axes="SYX", kind=kind, seed=a.seed)
        note = f"{kind} noise model from {ds.noise_model['what']}"
    else:
        model, info = make_noise_model(ds.noisy, repeats_axis="S", axes="SYX", kind=kind, seed=a.seed)
        note = f"{kind} noise model from the {len(ds.noisy)} repeated frames"
    path = folder / f"noise-model-{key}"
    save_noise_model(model, path, info=info, overwrite=True)
    return path, note


def method_config(key: str, ds: Dataset, noisy_path: Path, folder: Path, a: argparse.Namespace,
                  trained: set[str]) -> tuple[dict, str]:
    """``bigdenoise.train`` keyword arguments for method ``key`` on ``ds`` (CARE's are per fold),
    and a note."""
    kw: dict = {"method": key, "axes": "SYX"}
    note = ""
    if key in OPTION_ROWS:
        extra, note = OPTION_ROWS[key]
        kw.update(copy.deepcopy(extra))
    elif key == "struct-n2v":
        kw.update(method="n2v", options={"struct_axis": ds.struct_axis, "struct_span": ds.struct_span})
        note = f"mask line +-{ds.struct_span} px along {'YX'[ds.struct_axis]} (the axis of the correlated noise)"
    elif key == "n2n":
        kw["target"] = str(write_stack(folder / "second.zarr", ds.second))
    elif key in ("noise2stack", "noise2stack-copy"):
        axis, k = ds.stack_axis, ds.neighbours
        mode = "copy" if key == "noise2stack-copy" else "self"
        kw.update(method="noise2stack", axes=f"{axis}YX", options={"stack_axis": axis, "neighbours": k, "mode": mode})
        note = (f"{'self' if mode == 'self' else 'copy'}-supervised along {axis}, {k} plane{'s' * (k > 1)} on each side"
                + ("" if mode == "self" else ", the plane itself too; target: its second draw"))
        if mode == "copy":
            kw["target"] = str(write_stack(folder / "second.zarr", ds.second))
    elif key in ("pn2v", "pn2v-bootstrap"):
        path, note = _pn2v_noise_model(key, ds, noisy_path, folder, a, trained)
        kw.update(method="pn2v", options={"noise_model": str(path), "samples": 64})
        note += ", K = 64"
    elif key == "care":
        note = ds.care_note
    elif key == "dbsn-clean":
        clean = unpaired_clean(ds)
        kw.update(method="dbsn", clean=str(write_stack(folder / "unpaired-clean.zarr", clean)))
        note = (f"--clean: the {len(clean)} clean images of CARE's training pairs (not the scored images), "
                "unpaired: synthetic pairs with the learned noise level in distillation")
    elif key not in ("n2v", *ANY_DATA):
        raise SystemExit(f"unknown method {key!r}")
    return kw, note


def _train(out: Path, source: str, target: str | None, axes: str, kw: dict, a: argparse.Namespace):
    import bigdenoise as bd

    kw = {"schedule": a.schedule, **kw}  # a row's own schedule (dbsn-cosine) wins over --schedule
    if a.cli:
        subprocess.run(train_command(out, source, target, axes, kw, a), check=True)
        return bd.load_model(out)
    return bd.train(source, out, axes=axes, target=target, max_time=a.budget, seed=a.seed, device=a.device,
                    overwrite=True, progress=False, **kw)


def _predict(noisy_path: Path, model: Path, out: Path, axes: str, a: argparse.Namespace,
             options: dict | None = None) -> np.ndarray:
    import zarr

    import bigdenoise as bd

    if a.cli:
        subprocess.run(predict_command(noisy_path, model, out, options, a), check=True)
    else:
        bd.predict(str(noisy_path), model, out, axes=axes, cluster="threads", overwrite=True, progress=False,
                   device=a.device, options=options)
    return np.asarray(zarr.open_array(str(out), mode="r")[...], dtype=np.float32)


def _command_line() -> list[str]:
    """The ``bigdenoise`` command of this Python environment."""
    script = Path(sys.executable).with_name("bigdenoise")
    found = str(script) if script.exists() else shutil.which("bigdenoise")
    if found is None:
        raise SystemExit("--cli: no `bigdenoise` command in this environment (pip install -e .)")
    return [found]


def _option_flags(options: dict | None) -> list[str]:
    flags = []
    for key, value in (options or {}).items():
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        flags += ["--option", f"{key}={text}"]
    return flags


def train_command(out: Path, source: str, target: str | None, axes: str, kw: dict, a: argparse.Namespace) -> list[str]:
    """``_train``'s call as the ``bigdenoise train`` command a user types (``--cli``): the issue's
    form ``train IN --method M --axes SYX --out M --max-time T --seed S``, then the row's flags."""
    kw = dict(kw)
    budget = f"{a.budget / 60:g}m" if a.budget % 60 == 0 else f"{a.budget:g}s"
    cmd = [*_command_line(), "train", source, "--method", kw.pop("method"), "--axes", axes, "--out", str(out),
           "--max-time", budget, "--seed", str(a.seed), "--overwrite", "--quiet"]
    for key, flag in (("schedule", "--schedule"), ("clean", "--clean")):
        value = kw.pop(key, None)
        cmd += [flag, str(value)] if value is not None else []
    cmd += ["--target", target] if target is not None else []
    cmd += _option_flags(kw.pop("options", None))
    cmd += ["--device", a.device] if a.device != "auto" else []
    if kw:
        raise SystemExit(f"--cli: the settings {sorted(kw)} of this row have no command-line flag here; run it without --cli")
    return cmd


def predict_command(noisy_path: Path, model: Path, out: Path, options: dict | None, a: argparse.Namespace) -> list[str]:
    """``_predict``'s call as ``bigdenoise predict IN --model M --out O.zarr`` (``--cli``): the
    input's axes from its metadata, the default cluster."""
    return [*_command_line(), "predict", str(noisy_path), "--model", str(model), "--out", str(out), "--overwrite",
            "--quiet", *_option_flags(options), *(["--device", a.device] if a.device != "auto" else [])]


def unpaired_clean(ds: Dataset) -> np.ndarray | None:
    """Clean images other than the scored ones (other fields of view, or Train400) for D-BSN's
    ``--clean``: the clean half of CARE's training pairs, used unpaired; None where CARE's pairs
    come from the scored images themselves (cross-fitting)."""
    folds = [f for f in ds.care_folds if f.region is None]
    return folds[0].clean if folds else None


def learned_why_not(key: str, ds: Dataset) -> str | None:
    """Why the data of ``ds`` do not allow learned method ``key``, or None."""
    if key == "dbsn-clean":
        return None if unpaired_clean(ds) is not None else "no clean images of other fields of view"
    if VARIANTS.get(key, (key,))[0] in ANY_DATA:
        return None
    if key not in ds.methods:
        return ds.why_not.get(key, "not applicable to these data")
    if key == "care" and not ds.care_folds:
        return ds.care_note
    return None


def run_learned(key: str, ds: Dataset, noisy_path: Path, folder: Path, a: argparse.Namespace,
                trained: set[str]) -> dict:
    """Train ``key`` on ``ds`` (CARE: one model per fold) and predict the noisy stack blockwise."""
    if key in VARIANTS:
        return _run_variant(key, ds, noisy_path, folder, a, trained)
    kw, note = method_config(key, ds, noisy_path, folder, a, trained)
    axes = kw.pop("axes")
    target = kw.pop("target", None)
    folds = ds.care_folds if key == "care" else [None]
    steps, train_s, predict_s, output = [], 0.0, 0.0, None
    for i, fold in enumerate(folds):
        name = f"{key}{i if len(folds) > 1 else ''}"
        source = str(noisy_path)
        if fold is not None:
            source = str(write_stack(folder / f"care-noisy{i}.zarr", fold.noisy))
            target = str(write_stack(folder / f"care-clean{i}.zarr", fold.clean))
        t0 = time.perf_counter()
        model = _train(folder / f"model-{name}", source, target, axes, kw, a)
        train_s += time.perf_counter() - t0
        steps.append(model.info.get("steps"))
        t0 = time.perf_counter()
        pred = _predict(noisy_path, folder / f"model-{name}", folder / f"denoised-{name}.zarr", axes, a)
        predict_s += time.perf_counter() - t0
        if output is None or fold.region is None:
            output = pred
        else:
            output[:, fold.region] = pred[:, fold.region]
    trained.add(key)
    return {"output": output, "note": note, "steps": "+".join(map(str, steps)), "train_s": train_s,
            "predict_s": predict_s}


def _run_variant(key: str, ds: Dataset, noisy_path: Path, folder: Path, a: argparse.Namespace,
                 trained: set[str]) -> dict:
    """Row ``key`` of :data:`VARIANTS`: its base row's model (of this seed) predicting with other options."""
    import bigdenoise as bd

    base, options = VARIANTS[key]
    if base not in trained:
        run_learned(base, ds, noisy_path, folder, a, trained)
    model = folder / f"model-{base}"
    t0 = time.perf_counter()
    output = _predict(noisy_path, model, folder / f"denoised-{key}.zarr", "SYX", a, options)
    note = f"the {base} row's model, " + ", ".join(f"{k}={v}" for k, v in options.items())
    return {"output": output, "note": note, "steps": bd.load_model(model).info.get("steps"), "train_s": 0.0,
            "predict_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- figure


def _crop_box(ref: np.ndarray, size: int) -> tuple[slice, slice]:
    """The ``size x size`` window (on a coarse grid) with the most structure in the reference."""
    h, w = ref.shape
    size = min(size, h, w)
    best = None
    for y in np.linspace(0, h - size, 5).astype(int):
        for x in np.linspace(0, w - size, 5).astype(int):
            v = float(ref[y:y + size, x:x + size].std())
            if best is None or v > best[0]:
                best = (v, y, x)
    return slice(best[1], best[1] + size), slice(best[2], best[2] + size)


def save_panel(ds: Dataset, panels: list[tuple[str, np.ndarray, float]], path: Path, size: int = 128) -> None:
    """One row of crops of the first image: noisy, each method, ground truth (grayscale PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    ref = ds.clean[0]
    box = _crop_box(ref, size)
    lo, hi = np.percentile(ref[box], [0.5, 99.5])
    cols = len(panels) + 1
    fig, axs = plt.subplots(1, cols, figsize=(1.45 * cols, 1.95), dpi=100)
    for ax, (label, image, value) in zip(axs, [*panels, ("ground truth", ref, math.nan)]):
        ax.imshow(image[box], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(label if math.isnan(value) else f"{label}\n{value:.2f} dB", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{ds.name}: image 0, {size}x{size} crop" + (" (outputs fitted a*x+b)" if ds.fit else ""), fontsize=8)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 0.9))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buf).convert("L").save(path, optimize=True)


# --------------------------------------------------------------------------- report


def _cell(values: list[float], digits: int) -> str:
    """Mean ± standard error over images (one seed's run)."""
    mean, sem = metrics.mean_sem(values)
    return f"{mean:.{digits}f}" if math.isnan(sem) else f"{mean:.{digits}f} ± {sem:.{digits}f}"


def seed_spread(per_seed: list[list[float]]) -> tuple[float, float, float, float]:
    """Mean over seeds of each seed's mean over images, the standard deviation of those seed
    means (ddof 1; NaN for one seed), and their min and max."""
    return common.spread([float(np.mean(v)) for v in per_seed])


def _spread_cell(per_seed: list[list[float]], digits: int, sign: str = "") -> str:
    """``mean ± std [min, max]`` over seeds, or the single value of a deterministic row."""
    return common.spread_text([float(np.mean(v)) for v in per_seed], digits, sign)


def paired_diffs(run: dict, ref: dict) -> list[np.ndarray]:
    """Per seed, the per-image PSNR of ``run`` minus that of ``ref`` on the same images; seeds
    are paired by position, a deterministic row (one entry) pairs with every seed."""
    a, b = run["psnr"], ref["psnr"]
    if len(a) == 1:
        a = a * len(b)
    if len(b) == 1:
        b = b * len(a)
    if len(a) != len(b):
        raise ValueError(f"cannot pair {len(a)} seeds with {len(b)}")
    return [np.subtract(x, y) for x, y in zip(a, b)]


NOT_PLANNED = "not in the quick plan"
HEAD_TO_HEAD = (("n2v", "careamics-n2v"), ("n2v", "careamics-n2v-ours"), ("careamics-n2v-best", "careamics-n2v"),
                ("noise2stack", "n2v"), ("noise2stack-copy", "n2v"), ("noise2stack-copy", "n2n"), ("n2n", "n2v"),
                ("care", "n2v"), ("n2v2", "n2v"), ("struct-n2v", "n2v"), ("pn2v", "n2v"), ("pn2v-bootstrap", "n2v"),
                ("dbsn", "n2v"), ("dbsn-posterior", "n2v"), ("dbsn", "dbsn-posterior"), ("dbsn-clean", "dbsn"),
                ("dbsn-awgn", "dbsn"), ("dbsn-awgn", "n2v"), ("dbsn-cosine", "n2v"), ("dbsn-cosine", "dbsn"),
                ("care", "dbsn"), ("cosdd", "n2v"),
                ("cosdd", "struct-n2v"), ("cosdd", "cosdd-sampled"), ("care", "cosdd"), ("cosdd-rf8", "n2v"),
                ("cosdd-rf8", "cosdd"), ("cosdd", "cosdd-mish"), ("cosdd", "cosdd-d30"))


def head_to_head(results: dict) -> list[str]:
    """Paired PSNR differences (same images, seeds paired) of the comparisons the issues ask for."""
    lines = []
    for m, ref in HEAD_TO_HEAD:
        cells = []
        for d, res in results.items():
            if m in res["runs"] and ref in res["runs"]:
                diffs = paired_diffs(res["runs"][m], res["runs"][ref])
                higher = sum(int(np.sum(x > 0)) for x in diffs)
                total = sum(len(x) for x in diffs)
                cells.append(f"{d} {_spread_cell([list(x) for x in diffs], 2, '+')} dB "
                             f"({higher}/{total} image-seed pairs higher)")
        if cells:
            lines.append(f"- {m} − {ref}: " + "; ".join(cells))
    return ["PSNR of a method minus its reference method on the same images, seeds paired (mean over seeds of the "
            "paired mean over images ± standard deviation across seeds [min, max]):", "", *lines] if lines else []


def first_baseline(res: dict, methods: list[str]) -> str | None:
    """The first baseline of ``methods`` that ran on a data set (normally ``noisy``)."""
    return next((m for m in methods if m in BASELINES and m in res["runs"]), None)


def panel_name(dataset: str, a: argparse.Namespace) -> str:
    return f"quality_{a.section + '_' if a.section else ''}{dataset}.png"


def metric_table(results: dict, rows: list[str], metric: str, digits: int, sign: str = "") -> list[str]:
    """Markdown table, one row per method and a column per data set, of ``metric`` over seeds."""
    names = list(results)
    lines = [f"| method | {' | '.join(names)} |", "|" + " --- |" * (len(names) + 1)]
    for m in rows:
        cells = [_spread_cell(results[d]["runs"][m][metric], digits, sign) if metric in results[d]["runs"].get(m, {})
                 else "—" for d in names]
        lines.append(f"| {m} | {' | '.join(cells)} |")
    return lines


def gain_table(results: dict, rows: list[str], methods: list[str]) -> list[str]:
    """Markdown table of each method's paired per-image PSNR gain over the data set's first
    baseline (:func:`first_baseline`), over seeds."""
    names = list(results)
    bases = {d: first_baseline(results[d], methods) for d in names}
    lines = [f"| method | {' | '.join(f'{d} (− {bases[d]})' for d in names)} |", "|" + " --- |" * (len(names) + 1)]
    for m in rows:
        cells = []
        for d in names:
            run, base = results[d]["runs"].get(m), bases[d]
            if not run or base is None or m == base:
                cells.append("—")
            else:
                diffs = paired_diffs(run, results[d]["runs"][base])
                cells.append(_spread_cell([list(x) for x in diffs], 2, "+"))
        lines.append(f"| {m} | {' | '.join(cells)} |")
    return lines


def residue_table(results: dict, rows: list[str]) -> list[str]:
    """The stripe residue A (:func:`stripe_residue`) on the data sets that report it, or nothing."""
    with_a = {d: res for d, res in results.items() if any("residue" in run for run in res["runs"].values())}
    if not with_a:
        return []
    return [f"Stripe residue A (mean over images, signed; |A| is the stripes left): lag-1 autocorrelation along the "
            f"rows minus along the columns of the residual (output − reference, fitted outputs as scored), "
            f"high-passed by subtracting its {RESIDUE_BOX}x{RESIDUE_BOX} mean (reflected edges); about 0 for white "
            f"or isotropic residuals, > 0 row stripes, < 0 column stripes; the noisy row is the input's own "
            f"(`quality.stripe_residue`):", "", *metric_table(with_a, rows, "residue", 3, "+"), ""]


def _row_methods(rows: list[str]):
    """The registered methods behind ``rows`` (dbsn-posterior, dbsn-clean: dbsn), as (name, Method)."""
    from bigdenoise.methods import get_method, method_names

    for key in method_names():
        if any(r == key or r.startswith(key + "-") for r in rows):
            yield key, get_method(key)


def net_exceptions(rows: list[str]) -> str:
    """The U-Net sizes that the methods behind ``rows`` set themselves (``net_defaults``), e.g.
    ``"; dbsn: 8 features"``; empty when none does."""
    notes = []
    for key, method in _row_methods(rows):
        sizes = {k: v for k, v in method.net_defaults.items() if k in ("depth", "features")}
        if sizes:
            notes.append(f"{key}: " + ", ".join(f"{v} {k}" if k == "features" else f"{k} {v}" for k, v in sizes.items()))
    return "".join(f"; {n}" for n in notes)


def batch_exceptions(rows: list[str]) -> str:
    """The batch sizes that the methods behind ``rows`` set themselves (``train_defaults``), e.g.
    ``" (cosdd: 8)"``; empty when none does."""
    notes = [f"{key}: {method.train_defaults['batch_size']}" for key, method in _row_methods(rows)
             if "batch_size" in method.train_defaults]
    return f" ({'; '.join(notes)})" if notes else ""


def report(results: dict, datasets: dict[str, Dataset], methods: list[str], a, machine, probes, seconds) -> str:
    names = list(results)
    rows = [m for m in methods if any(m in results[d]["runs"] for d in names)]

    # reasons that hold for every data set (a package not installed) are said once
    common_skips = {m: why for m, why in results[names[0]]["skipped"].items()
                    if all(results[d]["skipped"].get(m) == why for d in names)} if names else {}
    title = (f"{', '.join(names)}, {a.budget:g} s per model (section {a.section})" if a.section
             else f"every method and baseline ({'quick' if a.quick else 'full'} mode)")
    out = [f"## Denoising quality: {title}", "",
           f"- Date: {common.now()}; total run time {seconds / 60:.1f} min",
           f"- Machine: {common.format_machine(machine, probes)}",
           f"- Reproduce: `{common.this_command()}`",
           f"- Budget: every learned model trains for {a.budget:g} s of wall-clock time (`max_time`), once per "
           f"training seed ({', '.join(map(str, a.seeds))}; CAREamics too, with seed + 1; the data keep seed "
           f"{a.seed}), "
           + ("" if a.schedule is None else f"LR schedule {a.schedule} (`--schedule`), ") +
           f"default U-Net (depth {DEPTH}, {FEATURES} features{net_exceptions(rows)}), patch "
           f"{'x'.join(map(str, DEFAULT_PATCH_2D))}, batch {BATCH}{batch_exceptions(rows)}, "
           + ("through the command line, one process per call as a user types it (`bigdenoise train NOISY --method "
              "M --axes SYX --out MODEL --max-time T --seed S`, then the row's flags; `bigdenoise predict NOISY "
              "--model MODEL --out OUT.zarr`, the default cluster, blockwise) from Zarr into Zarr; " if a.cli else
              "through `bigdenoise.train`; prediction through `bigdenoise.predict` (blockwise, Dask threads) from "
              "Zarr into Zarr; ") +
           "our rows keep the weights with the best validation loss. CAREamics N2V: its own U-Net at the "
           "same shape, patch, batch and budget (Lightning `max_time`), its tiled prediction; `careamics-n2v` with "
           "its defaults (0.2 % of the pixels masked from an 11x11 window) and the weights at the stop (last), "
           "`careamics-n2v-best` the same training's checkpoint with the best validation loss, `careamics-n2v-ours` "
           "our masking (1.5625 %, 5x5 window) and last weights.",
           "- **These are not the papers' settings.** The papers train for hours on GPUs (N2V on Train400 for BSD68, "
           "PN2V with depth 3, 64 features, K = 800); here every model gets a few CPU minutes or less and trains on "
           "the noisy test images themselves (self-supervised methods) or on the pairs listed below"
           + ("; the quick mode also uses few images and crops" if a.quick else "")
           + ". Read the numbers as a ranking at equal small budget, not as a reproduction.",
           "- Gaussian and median filters: the window (3, 5 or 7) with the best mean PSNR on each data set, chosen "
           "with the ground truth (an oracle choice in their favour).", "",
           f"PSNR (dB) over {len(a.seeds)} training seed{'s' * (len(a.seeds) > 1)}: mean over seeds of the mean over "
           "images ± standard deviation across seeds [min, max of the seeds' means]; a single value: a deterministic "
           "row (no training):", "", *metric_table(results, rows, "psnr", 2), "",
           "PSNR gain (dB) over the first baseline, paired per image (the same images, seeds paired), summarised "
           "over seeds as above:", "", *gain_table(results, rows, methods), "",
           "SSIM (Gaussian window sigma 1.5, `bigdenoise.metrics.ssim`), summarised as PSNR:", "",
           *metric_table(results, rows, "ssim", 3), "", *residue_table(results, rows), *head_to_head(results), ""]
    if common_skips:
        out += ["Not run anywhere: " + "; ".join(f"{m}: {why}" for m, why in common_skips.items()) + ".", ""]
    out += ["Per data set (— in the tables: the data do not allow the method, reason below):", ""]
    for d in names:
        ds, res = datasets[d], results[d]
        out.append(f"- **{d}**: {ds.description}.")
        if ds.paper:
            out.append(f"  Published reference (other settings): {ds.paper}.")
        for m, run in res["runs"].items():
            bits = []
            if len(run["psnr"]) > 1:
                per_seed = ", ".join(f"{s}: {_cell(v, 2)}" for s, v in zip(run["seeds"], run["psnr"]))
                bits.append(f"PSNR per seed {per_seed} dB (± standard error over images)")
            if run.get("steps") is not None:
                bits.append(f"{run['steps']} steps, train {run['train_s']:.0f} s, predict {run['predict_s']:.1f} s"
                            + (" (seeds' mean)" if len(run["psnr"]) > 1 else ""))
            elif run.get("seconds") is not None and m != "noisy":
                bits.append(f"{run['seconds']:.1f} s")
            if run.get("note"):
                bits.append(run["note"])
            if bits:
                out.append(f"  - {m}: {'; '.join(bits)}")
        for m, why in res["skipped"].items():
            if m not in common_skips and why != NOT_PLANNED:
                out.append(f"  - {m}: not run — {why}")
        unplanned = [m for m, why in res["skipped"].items() if why == NOT_PLANNED]
        if unplanned:
            out.append(f"  - {NOT_PLANNED}: {', '.join(unplanned)}")
        out.append(f"  - panel: [figures/{panel_name(d, a)}](figures/{panel_name(d, a)})")
    out += ["", "Every output is scored the same way on a data set (for fitted data sets the noisy input too). "
            "PSNR and SSIM are `bigdenoise.metrics.psnr` / `ssim` with the stated peak; `si_psnr` (PN2V's "
            "scale-invariant PSNR) is available there as well."]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_PLAN)}; few images and crops; the "
                   "methods of QUICK_PLAN; 45 s per model and seed (under 15 min on 2 CPU cores per seed)")
    p.add_argument("--datasets", help=f"comma-separated subset of {','.join(ALL_DATASETS)} "
                   "(default: all, or the quick set)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(BASELINES + LEARNED)} "
                   "(default: all, or the quick set); a method the data do not allow is skipped with the reason")
    p.add_argument("--budget", help="training wall-clock budget per model: 90, 90s, 5m (default 45s quick, 5m full)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic noise and the first training seed (default 0)")
    p.add_argument("--seeds", default=str(DEFAULT_SEEDS),
                   help=f"training seeds: a count N (seeds SEED .. SEED+N-1) or a comma-separated list "
                        f"(default {DEFAULT_SEEDS}); every learned row and CAREamics trains once per seed")
    p.add_argument("--noise-kind", choices=("gmm", "histogram"), default="gmm",
                   help="PN2V's noise model (default gmm; the PN2V paper's is the histogram)")
    p.add_argument("--schedule", choices=("plateau", "cosine"),
                   help="LR schedule of our models (default: each method's own; CAREamics keeps its own)")
    p.add_argument("--stripe-noise", metavar="PEAK,WHITE,STRIPE,BLUR",
                   help="the stripes data sets' noise: photons at s = 1, white sigma, stripe sigma (s in [0, 1]) "
                        "and the stripe kernel's sigma in px (default %s)" % ",".join(f"{v:g}" for v in STRIPE_NOISE))
    p.add_argument("--images", type=int, help="score at most this many images per data set")
    p.add_argument("--crop", type=int, help="centre crop size for BSD68, W2S and the Hagen images")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--cli", action="store_true", help="train and predict our rows through the `bigdenoise` command "
                   "line, one subprocess per call, as a user types it (`bigdenoise train IN --method M --axes SYX "
                   "--out M --max-time T --seed S`, `bigdenoise predict IN --model M --out O.zarr`), not the API")
    p.add_argument("--data", help="the shared data folder (default: $BIGDENOISE_DATA, else <repo>/../shared/data)")
    p.add_argument("--work", help="folder for stacks, models and outputs (default <tmp>/bigdenoise-bench/quality; kept)")
    p.add_argument("--record", action="store_true", help="write the tables into benchmarks/RESULTS.md and the panels "
                   "into benchmarks/figures/")
    p.add_argument("--section", help="record into the RESULTS.md section quality-NAME (panels quality_NAME_<dataset>"
                   ".png) instead of the default section quality")
    a = p.parse_args(argv)
    from bigdenoise.cli_args import parse_duration

    try:
        a.budget = parse_duration(a.budget) if a.budget else (45.0 if a.quick else 300.0)
    except argparse.ArgumentTypeError as exc:
        p.error(f"--budget: {exc}")
    try:
        a.seeds = parse_seeds(a.seeds, a.seed)
    except ValueError as exc:
        p.error(f"--seeds: {exc}")
    if a.stripe_noise is None:
        a.stripe_noise = STRIPE_NOISE
    else:
        try:
            a.stripe_noise = tuple(float(v) for v in a.stripe_noise.split(","))
        except ValueError:
            a.stripe_noise = ()
        if len(a.stripe_noise) != 4 or min(a.stripe_noise) <= 0:
            p.error("--stripe-noise: four positive numbers PEAK,WHITE,STRIPE,BLUR, e.g. 30,0.03,0.15,5")
    if a.section and not all(c.isalnum() or c == "-" for c in a.section):
        p.error("--section: letters, digits and - only")
    a.plan = QUICK_PLAN if a.quick and not a.methods else None
    a.datasets = _pick(p, a.datasets, QUICK_PLAN if a.quick else ALL_DATASETS, ALL_DATASETS, "--datasets")
    planned = {m for d in a.datasets for m in QUICK_PLAN.get(d, ())} if a.plan else BASELINES + LEARNED
    a.methods = _pick(p, a.methods, [m for m in BASELINES + LEARNED if m in planned], BASELINES + LEARNED, "--methods")
    return a


def parse_seeds(text: str, base: int) -> list[int]:
    """``--seeds``: a count ``N`` (seeds ``base .. base + N - 1``) or a comma-separated list."""
    text = text.strip()
    if "," not in text:
        try:
            count = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is neither a count nor a comma-separated list of seeds") from None
        if count < 1:
            raise ValueError(f"need at least one seed, got {count}")
        return list(range(base, base + count))
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{text!r}: give distinct seeds")
    return seeds


def _pick(p, text, default, allowed, flag) -> list[str]:
    if not text:
        return list(default)
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in allowed]
    if unknown:
        p.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return chosen


def run_once(m: str, ds: Dataset, noisy_path: Path, folder: Path, a: argparse.Namespace,
             trained: set[str]) -> tuple[np.ndarray | None, dict | str]:
    """One run of row ``m`` under ``a`` (its ``seed`` is the training seed): the output and the
    run's record, or (None, why it did not run)."""
    t0 = time.perf_counter()
    if m in BASELINES:
        output, note = run_baseline(m, ds, folder, a)
        if output is None:
            return None, note
        return output, {"note": note, "seconds": time.perf_counter() - t0}
    try:
        run = run_learned(m, ds, noisy_path, folder, a, trained)
    except BigDenoiseError as exc:  # e.g. a bootstrapped noise model that does not fit: report it
        return None, f"failed: {exc}"
    return run.pop("output"), run


def _merge_seeds(seeds: list[int | None], runs: list[dict]) -> dict:
    """One row's record from its runs (one per seed): per-seed PSNR/SSIM lists, the steps
    ``a/b/c``, mean times, the note (per seed when they differ)."""
    notes = [r.get("note", "") for r in runs]
    merged = {"seeds": seeds, "psnr": [r["psnr"] for r in runs], "ssim": [r["ssim"] for r in runs],
              **({"residue": [r["residue"] for r in runs]} if "residue" in runs[0] else {}),
              "note": notes[0] if len(set(notes)) == 1 else "; ".join(f"seed {s}: {n}" for s, n in zip(seeds, notes))}
    if runs[0].get("steps") is not None:
        merged["steps"] = "/".join(str(r["steps"]) for r in runs)
        merged["train_s"] = float(np.mean([r["train_s"] for r in runs]))
        merged["predict_s"] = float(np.mean([r["predict_s"] for r in runs]))
    elif runs[0].get("seconds") is not None:
        merged["seconds"] = float(np.mean([r["seconds"] for r in runs]))
    return merged


def run_over_seeds(m: str, ds: Dataset, noisy_path: Path, folder: Path, a: argparse.Namespace,
                   trained: dict[int, set[str]]) -> tuple[dict | str, np.ndarray | None]:
    """Row ``m`` once per training seed (once if it does not train), each seed in its own folder
    ``seed<S>``; returns the merged record (or why it did not run) and the first seed's scored
    images (for the panel)."""
    seeds = a.seeds if m in LEARNED or m in SEEDED_BASELINES else [None]
    runs, first = [], None
    for seed in seeds:
        t0 = time.perf_counter()
        sa = a if seed is None else copy.copy(a)
        if seed is not None:
            sa.seed = seed
        where = folder if seed is None else folder / f"seed{seed}"
        where.mkdir(parents=True, exist_ok=True)
        output, run = run_once(m, ds, noisy_path, where, sa, trained[seed] if seed is not None else set())
        if output is None:
            print(f"  {m:<14} not run{'' if seed is None else f' (seed {seed})'}: {run}", flush=True)
            return run, None
        run["psnr"], run["ssim"], scored = score(ds, output)
        if ds.residue:
            run["residue"] = [stripe_residue(x, ref) for x, ref in zip(scored, ds.clean)]
        first = scored if first is None else first
        runs.append(run)
        extra = f" ({run['steps']} steps)" if run.get("steps") is not None else ""
        if "residue" in run:
            extra += f"  A {float(np.mean(run['residue'])):+.3f}"
        label = "" if seed is None else f"seed {seed} "
        print(f"  {m:<14} {label}PSNR {_cell(run['psnr'], 2):>15} dB  SSIM {_cell(run['ssim'], 3):>13}  "
              f"{time.perf_counter() - t0:6.1f} s{extra}  {run.get('note', '')}", flush=True)
    return _merge_seeds([s for s in seeds if s is not None], runs), first


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    work = common.claim_work(a.work, "quality")
    machine = common.machine_info()
    probes = [common.probe("before")]
    print(f"datasets: {', '.join(a.datasets)}; methods: {', '.join(a.methods)}; budget {a.budget:g} s per model; "
          f"work folder {work}", flush=True)

    results, datasets = {}, {}
    for name in a.datasets:
        ds = load_dataset(name, a)
        datasets[name] = ds
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        noisy_path = write_stack(folder / "noisy.zarr", ds.noisy)
        runs, skipped, panels = {}, {}, []
        trained: dict[int, set[str]] = {seed: set() for seed in a.seeds}  # per seed: rows trained so far
        print(f"\n== {name}: {ds.noisy.shape[0]} images {ds.noisy.shape[1]}x{ds.noisy.shape[2]}", flush=True)
        for m in a.methods:
            why = None if m in BASELINES else learned_why_not(m, ds)
            if why is None and a.plan and m not in a.plan.get(name, ()):
                why = NOT_PLANNED
            if why:
                skipped[m] = why
                print(f"  {m:<14} not run: {why}", flush=True)
                continue
            run, first = run_over_seeds(m, ds, noisy_path, folder, a, trained)
            if isinstance(run, str):
                skipped[m] = run
                continue
            runs[m] = run
            panels.append((m, first[0], run["psnr"][0][0]))
            if len(run["psnr"]) > 1:
                print(f"  {m:<14} over seeds: PSNR {_spread_cell(run['psnr'], 2)} dB", flush=True)
        results[name] = {"runs": runs, "skipped": skipped}
        if a.record and panels:
            path = FIGURES / panel_name(name, a)
            save_panel(ds, panels, path)
            print(f"  panel: {path} ({path.stat().st_size / 1024:.0f} KB)", flush=True)
    probes.append(common.probe("after"))
    seconds = time.perf_counter() - t_start
    text = report(results, datasets, a.methods, a, machine, probes, seconds)
    print("\n" + text)
    if a.record:
        common.replace_section(common.RESULTS, f"quality-{a.section}" if a.section else "quality", text,
                               common.TOPIC_QUALITY)
    print(f"\ntotal {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
