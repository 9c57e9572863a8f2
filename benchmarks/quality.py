"""Denoising quality of every bigdenoise method and of classical baselines, on real microscopy
data and on natural images with synthetic noise: PSNR and SSIM, mean ± standard error over images.

Each learned method is trained through the public API (``bigdenoise.train``) with the same
wall-clock budget (``--budget``, passed as ``max_time``) on a Zarr stack written here, and
denoises it through the blockwise engine (``bigdenoise.predict``, ``cluster="threads"``) into
Zarr. Baselines on the same images: the noisy input; Gaussian and median filters (window 3, 5
or 7, the best mean PSNR per data set: an oracle choice); non-local means (scikit-image, its
own noise estimate); BM3D (``bm3d`` package, when it imports); CAREamics N2V (when installed).

Data sets (``--datasets``; shared data: ``--data DIR``, ``$BIGDENOISE_DATA`` or ../shared/data):

- ``bsd68-s15|s25|s50``: the 34 even-numbered BSD68 images + Gaussian noise sigma 15/25/50
  (0..255, float32, not clipped, not quantised); peak 255. CARE is trained on Train400 pairs.
- ``set12-s15|s25|s50``: Set12 (512x512 images centre-cropped to 256x256), the same protocol.
- ``set12-pg``: Set12 with simulated Poisson–Gaussian noise (``pn2v_vs_n2v.poisson_gaussian``:
  30 photons at 255, read sigma 10); PN2V uses a GMM noise model fitted to simulated calibration
  pairs (the clean images with an independent noise draw), as benchmarks/pn2v_vs_n2v.py does.
- ``w2s``: W2S widefield, FOVs 008-010 x 3 channels (single frame vs 400-frame average); the
  8-bit files are contrast-stretched independently, so every output (noisy input included) is
  fitted ``a * x + b`` to the ground truth by least squares before PSNR/SSIM (peak 255). CARE
  is trained on FOVs 001-007.
- ``fmd``: FMD confocal FISH + BPAE (3 channels), raw vs 50-frame average; peak 255, no fit.
- ``hagen-mito|nucleus|membrane``: Hagen et al. low-SNR vs high-SNR; cut into 256x256 tiles
  (the "images" of the statistics); affine fit before PSNR/SSIM (peak 255).
- ``tirf``: 20 repeated sCMOS TIRF frames of a static field; reference: their mean (it contains
  1/20 of each frame's own noise, which flatters every output slightly); peak = range of the
  mean; Noise2Stack along the frame axis (2 neighbours per side), N2N on swapped frame pairs
  (0<->1, 2<->3, ...), PN2V with a noise model from the repeated frames.

``--quick`` (what RESULTS.md shows by default; under 15 minutes on 2 CPU cores): bsd68-s25
(8 images, 256x256 centre crops), set12-s25, tirf, hagen-mito (central 512x512 = 4 tiles);
N2V, N2N and Noise2Stack where the data allow, plus the baselines, 45 s per model.

    python benchmarks/quality.py --quick --record
    python benchmarks/quality.py --budget 10m --record          # every data set and method

``--record`` writes the tables into benchmarks/RESULTS.md (section "quality") and a panel of
crops per data set into benchmarks/figures/quality_<dataset>.png.
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import common

from bigdenoise import metrics

FIGURES = common.BENCH_DIR / "figures"
QUICK_DATASETS = ("bsd68-s25", "set12-s25", "tirf", "hagen-mito")
ALL_DATASETS = ("bsd68-s15", "bsd68-s25", "bsd68-s50", "set12-s15", "set12-s25", "set12-s50", "set12-pg", "w2s",
                "fmd", "hagen-mito", "hagen-nucleus", "hagen-membrane", "tirf")
BASELINES = ("noisy", "gaussian", "median", "nlm", "bm3d", "careamics-n2v")
LEARNED = ("n2v", "n2v2", "struct-n2v", "pn2v", "n2n", "care", "noise2stack")
QUICK_METHODS = ("noisy", "gaussian", "median", "nlm", "bm3d", "careamics-n2v", "n2v", "n2n", "noise2stack")
WINDOWS = (3, 5, 7)
TILE = 256
PAPERS = {
    "bsd68": "BSD68 (all 68 images) at sigma 25, Noise2Void paper (Krull et al. 2019): N2V 27.71 dB, BM3D 28.59, "
             "supervised (Train400) 29.06; DnCNN 29.23 (Zhang et al. 2017)",
    "set12": "Set12 at sigma 25: DnCNN-S 30.44 dB (Zhang et al. 2017)",
    "tirf": "a single frame against the 20-frame mean: about 22.3 dB (data set README)",
    "hagen": "low vs high SNR after an affine fit, whole 1024x1024 mito image: 20.1 dB (data set README)",
}


# --------------------------------------------------------------------------- data sets


@dataclass
class Dataset:
    """One evaluation set: ``noisy`` and its reference ``clean``, (N, H, W) float32."""

    name: str
    description: str
    noisy: np.ndarray
    clean: np.ndarray
    data_range: float
    fit: bool = False  # affine-fit every output to the reference before the metrics
    methods: tuple[str, ...] = ("n2v", "n2v2")  # learned methods the data allow
    second: np.ndarray | None = None  # second noisy acquisition of the same images (N2N target)
    care_train: tuple[np.ndarray, np.ndarray] | None = None  # (noisy, clean) pairs of other images
    care_note: str = ""
    noise_model: dict | None = None  # how PN2V gets its noise model
    sigma: float | None = None  # the known Gaussian noise sigma (BM3D), else estimated
    why_not: dict[str, str] = field(default_factory=dict)  # learned method -> why the data do not allow it
    paper: str = ""


def _centre(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    y0, x0 = (image.shape[-2] - shape[0]) // 2, (image.shape[-1] - shape[1]) // 2
    return image[..., y0:y0 + shape[0], x0:x0 + shape[1]]


def _tiles(image: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping ``size x size`` tiles of a 2D image (remainder dropped), (N, size, size)."""
    ny, nx = image.shape[0] // size, image.shape[1] // size
    return np.stack([image[i * size:(i + 1) * size, j * size:(j + 1) * size] for i in range(ny) for j in range(nx)])


def _read(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path), dtype=np.float32)
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16"):
            raise SystemExit(f"{path}: expected a single-channel image, got mode {image.mode}")
        # mode P (the Hagen files): the 8-bit values are the palette indices, not the colours
        return np.asarray(image, dtype=np.float32)


def _gaussian_noise(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (clean + rng.normal(0.0, sigma, clean.shape)).astype(np.float32)


def load_dataset(name: str, a: argparse.Namespace) -> Dataset:
    data = a.data
    if name.startswith(("bsd68-s", "set12-s")):
        sigma = float(name.split("-s")[1])
        if name.startswith("bsd68"):
            import bsd68_n2v

            clean, _, transposed = bsd68_n2v.load_images(common.dataset_dir("bsd68_even", data, "test*.png"))
            crop = a.crop or (256 if a.quick else None)
            n = a.images or (8 if a.quick else len(clean))
            clean = clean[:n]
            if crop:
                clean = np.ascontiguousarray(_centre(clean, (min(crop, clean.shape[1]), min(crop, clean.shape[2]))))
            what = (f"{n} even-numbered BSD68 images ({len(transposed)} portrait images of the 34 transposed)"
                    + (f", centre {clean.shape[1]}x{clean.shape[2]} crops" if crop else f", {clean.shape[1]}x{clean.shape[2]}"))
            paper = PAPERS["bsd68"]
        else:
            import pn2v_vs_n2v

            clean = pn2v_vs_n2v.load_set12(common.dataset_dir("set12", data, "*.png"))
            if a.images:
                clean = clean[:a.images]
            what = f"{len(clean)} Set12 images (512x512 ones centre-cropped to 256x256)"
            paper = PAPERS["set12"]
        noisy = _gaussian_noise(clean, sigma, a.seed)
        second = _gaussian_noise(clean, sigma, a.seed + 1000)
        train400 = common.data_root(data) / "train400"
        care_train, care_note = None, "no train400 folder"
        if "care" in a.methods and train400.is_dir() and any(train400.glob("*.png")):
            files = sorted(train400.glob("*.png"))
            t_clean = np.stack([_read(f) for f in files])
            care_train = (_gaussian_noise(t_clean, sigma, a.seed + 2000), t_clean)
            care_note = f"CARE trained on the {len(files)} Train400 images (180x180) with the same noise"
        return Dataset(name, f"{what}; Gaussian noise sigma {sigma:g} on 0..255, float32, not clipped, not "
                       f"quantised (numpy default_rng({a.seed})); N2N target: a second draw (seed {a.seed + 1000}); "
                       f"PSNR/SSIM peak 255 against the clean images", noisy, clean, 255.0,
                       methods=("n2v", "n2v2", "n2n", "care"), second=second, care_train=care_train,
                       care_note=care_note, sigma=sigma, paper=paper if sigma == 25 else "",
                       why_not={"pn2v": "Gaussian noise: PN2V is benchmarked on set12-pg",
                                "noise2stack": "independent images, no stack",
                                "struct-n2v": "noise is pixel-independent"})
    if name == "set12-pg":
        import pn2v_vs_n2v

        clean = pn2v_vs_n2v.load_set12(common.dataset_dir("set12", data, "*.png"))
        if a.images:
            clean = clean[:a.images]
        peak, read = 30.0, 10.0
        noisy = pn2v_vs_n2v.poisson_gaussian(clean, peak, read, a.seed)
        calibration = pn2v_vs_n2v.poisson_gaussian(clean, peak, read, a.seed + 1)
        second = pn2v_vs_n2v.poisson_gaussian(clean, peak, read, a.seed + 1000)
        return Dataset(name, f"{len(clean)} Set12 images (256x256) with simulated Poisson-Gaussian noise "
                       f"(pn2v_vs_n2v.poisson_gaussian: {peak:g} photons at 255, read sigma {read:g}, float32); PN2V "
                       f"noise model: GMM fitted to calibration pairs (clean + an independent draw); peak 255",
                       noisy, clean, 255.0, methods=("n2v", "n2v2", "pn2v", "n2n"), second=second,
                       noise_model={"kind": "gmm", "calibration": calibration},
                       why_not={"care": "no separate clean training images for this noise",
                                "noise2stack": "independent images, no stack",
                                "struct-n2v": "noise is pixel-independent"})
    if name == "w2s":
        folder = common.dataset_dir("w2s_8bit", data, "noisy_avg1")
        pairs = lambda fovs: (np.stack([_read(folder / "noisy_avg1" / f"input_avg1_{f:03d}_{c}.tif") for f in fovs for c in range(3)]),  # noqa: E731
                              np.stack([_read(folder / "gt_avg400" / f"target_avg400_{f:03d}_{c}.tif") for f in fovs for c in range(3)]))
        noisy, clean = pairs(range(8, 11))
        if a.images:
            noisy, clean = noisy[:a.images], clean[:a.images]
        care_train = pairs(range(1, 8)) if "care" in a.methods else None
        return Dataset(name, f"W2S widefield FOVs 008-010 x 3 channels ({len(noisy)} images, 512x512, 8-bit): single "
                       f"frame vs 400-frame average; every output fitted a*x+b to the ground truth (least squares) "
                       f"before PSNR/SSIM, peak 255", noisy, clean, 255.0, fit=True,
                       methods=("n2v", "n2v2", "care"), care_train=care_train,
                       care_note="CARE trained on FOVs 001-007 (21 pairs; the 8-bit pairs have different scales, "
                                 "CARE maps to the target's)",
                       why_not={"n2n": "one noisy frame per field", "noise2stack": "no stack",
                                "pn2v": "no calibration data here", "struct-n2v": "not applied"})
    if name == "fmd":
        folder = common.dataset_dir("fmd_samples", data, "*_raw*")
        noisy = np.concatenate([_read(folder / "Confocal_FISH_3_raw.png")[None],
                                _read(folder / "Confocal_BPAE_RGB_fov1_raw_3ch.tif")])
        clean = np.concatenate([_read(folder / "Confocal_FISH_3_gt.png")[None],
                                _read(folder / "Confocal_BPAE_RGB_fov1_gt_3ch.tif")])
        return Dataset(name, "FMD confocal: FISH_3 and BPAE field 1 (3 channels), 4 images 512x512: raw capture vs "
                       "50-frame average; PSNR/SSIM peak 255, no fit (FMD's protocol)", noisy, clean, 255.0,
                       methods=("n2v", "n2v2"),
                       why_not={"care": "no training pairs besides the test images", "n2n": "one raw frame each",
                                "noise2stack": "channels are not a stack", "pn2v": "no calibration data here",
                                "struct-n2v": "not applied"})
    if name.startswith("hagen-"):
        kind = name.split("-", 1)[1]
        stem = {"mito": "mito-confocal", "nucleus": "nucleus", "membrane": "membrane"}[kind]
        folder = common.dataset_dir("hagen_gigadb_8bit", data, "*.png")
        low, high = _read(folder / f"{stem}-lowsnr-sample.png"), _read(folder / f"{stem}-highsnr-sample.png")
        crop = a.crop or (512 if a.quick else (1024 if kind == "membrane" else None))
        if crop:
            low, high = _centre(low, (crop, crop)), _centre(high, (crop, crop))
        noisy, clean = _tiles(low, TILE), _tiles(high, TILE)
        if a.images:
            noisy, clean = noisy[:a.images], clean[:a.images]
        return Dataset(name, f"Hagen et al. {stem} low vs high SNR ({'central %dx%d' % (crop, crop) if crop else 'whole image'}"
                       f" cut into {len(noisy)} tiles of {TILE}x{TILE}, the images of the statistics); each tile's "
                       f"output fitted a*x+b to the high-SNR tile before PSNR/SSIM, peak 255; the high-SNR reference is not "
                       f"noise-free (its noise counts against sharp outputs) and the low-SNR noise is row-correlated "
                       f"(struct-n2v runs in the full mode)", noisy, clean, 255.0,
                       fit=True, methods=("n2v", "n2v2", "struct-n2v"), paper=PAPERS["hagen"] if kind == "mito" else "",
                       why_not={"care": "one pair: no training pair apart from the test image",
                                "n2n": "one low-SNR frame", "noise2stack": "no stack",
                                "pn2v": "no calibration data here"})
    if name == "tirf":
        import tifffile

        folder = common.dataset_dir("acsn_scmos_tirf", data, "TIRF_200Hz.tif")
        frames = np.asarray(tifffile.imread(folder / "TIRF_200Hz.tif"), dtype=np.float32)
        mean = frames.mean(axis=0)
        swap = np.arange(len(frames)) ^ 1  # 0<->1, 2<->3, ...
        return Dataset(name, f"ACsN sCMOS TIRF: {len(frames)} repeated 256x256 frames of a static field (uint16 ADU as "
                       f"float32); reference: the {len(frames)}-frame mean for every frame (it holds 1/{len(frames)} of "
                       f"each frame's own noise); PSNR/SSIM peak = range of the mean ({float(np.ptp(mean)):.1f} ADU), "
                       f"no fit; every frame scored", frames, np.broadcast_to(mean, frames.shape).copy(),
                       float(np.ptp(mean)), methods=("n2v", "n2v2", "struct-n2v", "pn2v", "n2n", "noise2stack"),
                       second=frames[swap], noise_model={"kind": "gmm", "repeats": True}, paper=PAPERS["tirf"],
                       why_not={"care": "the only clean reference is the test frames' own mean"})
    raise SystemExit(f"unknown data set {name!r}; choose from {', '.join(ALL_DATASETS)}")


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
        h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
        v = np.asarray(x[:h, :w], np.float64)
        hh = (v[0::2, 0::2] - v[0::2, 1::2] - v[1::2, 0::2] + v[1::2, 1::2]) / 2
        return float(np.median(np.abs(hh)) / 0.6745), ("by Donoho's MAD of the diagonal Haar wavelet coefficients "
                                                       "(PyWavelets, which skimage's estimate_sigma needs, is not installed)")


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
    if name == "careamics-n2v":
        try:
            import careamics  # noqa: F401
        except ImportError:
            return None, "careamics not installed"
        return run_careamics(ds, work, a)
    raise SystemExit(f"unknown baseline {name!r}")


def run_careamics(ds: Dataset, work: Path, a: argparse.Namespace) -> tuple[np.ndarray | None, str]:
    """CAREamics N2V (the peer library) with the same patch, batch and wall-clock budget.

    Written against CAREamics 0.0.x (``CAREamist``, ``create_n2v_configuration``); not exercised
    where careamics is not installed, so any failure is reported as a skip with its cause.
    """
    try:
        from careamics import CAREamist
        from careamics.config import create_n2v_configuration
        from lightning.pytorch.callbacks import Timer

        config = create_n2v_configuration(experiment_name="quality", data_type="array", axes="SYX",
                                          patch_size=[64, 64], batch_size=16, num_epochs=10_000)
        engine = CAREamist(config, work_dir=str(work / "careamics"), callbacks=[Timer(duration={"seconds": a.budget})])
        engine.train(train_source=ds.noisy, val_percentage=0.1)
        pred = engine.predict(source=ds.noisy, data_type="array", axes="SYX")
        pred = np.concatenate([np.asarray(p).reshape(-1, *ds.noisy.shape[1:]) for p in pred]) if isinstance(pred, list) \
            else np.asarray(pred).reshape(ds.noisy.shape)
        import careamics

        return pred.astype(np.float32), f"CAREamics {careamics.__version__} N2V, {a.budget:g} s (Lightning Timer)"
    except Exception as exc:  # noqa: BLE001 - an optional peer: report, do not stop the benchmark
        return None, f"careamics N2V failed ({type(exc).__name__}: {exc})"


# --------------------------------------------------------------------------- learned methods


def write_zarr(path: Path, array: np.ndarray) -> Path:
    """A Zarr v3 array, one chunk per image, no axes attribute (the axes are passed explicitly)."""
    import zarr

    if path.exists():
        shutil.rmtree(path)
    z = zarr.create_array(store=str(path), shape=array.shape, chunks=(1, *array.shape[1:]), dtype="float32",
                          zarr_format=3)
    z[...] = array.astype(np.float32)
    return path


def method_config(key: str, ds: Dataset, folder: Path, a: argparse.Namespace) -> tuple[dict, str]:
    """``bigdenoise.train`` keyword arguments for method ``key`` on ``ds``, and a note."""
    kw: dict = {"method": key, "axes": "SYX", "options": {}, "net": {}}
    note = ""
    if key == "n2v2":
        kw.update(method="n2v", net={"n2v2": True}, options={"replacement": "median"})
    elif key == "struct-n2v":
        kw.update(method="n2v", options={"struct_axis": 1, "struct_span": 2})
        note = "mask line +-2 px along X (row-correlated noise)"
    elif key == "n2n":
        kw["target"] = str(write_zarr(folder / "second.zarr", ds.second))
    elif key == "noise2stack":
        kw.update(axes="TYX", options={"stack_axis": "T", "neighbours": 2, "mode": "self"})
        note = "self-supervised, 2 frames on each side"
    elif key == "pn2v":
        from bigdenoise import noise_models as nm

        spec = ds.noise_model
        if "calibration" in spec:  # the clean images with an independent noise draw
            model, info = nm.make_noise_model(spec["calibration"], clean=ds.clean, axes="SYX", kind=spec["kind"],
                                              seed=a.seed)
            note = f"{spec['kind']} noise model from simulated calibration pairs"
        else:
            model, info = nm.make_noise_model(ds.noisy, repeats_axis="S", axes="SYX", kind=spec["kind"], seed=a.seed)
            note = f"{spec['kind']} noise model from the {len(ds.noisy)} repeated frames"
        nm.save_noise_model(model, folder / "noise-model", info=info, overwrite=True)
        kw["options"] = {"noise_model": str(folder / "noise-model"), "samples": 64}
        note += ", K = 64"
    elif key == "care":
        noisy, clean = ds.care_train
        kw["target"] = str(write_zarr(folder / "care-clean.zarr", clean))
        kw["train_source"] = str(write_zarr(folder / "care-noisy.zarr", noisy))
        note = ds.care_note
    elif key != "n2v":
        raise SystemExit(f"unknown method {key!r}")
    if not kw["net"]:
        kw.pop("net")
    return kw, note


def run_learned(key: str, ds: Dataset, noisy_path: Path, folder: Path, a: argparse.Namespace) -> dict:
    import zarr

    import bigdenoise as bd

    kw, note = method_config(key, ds, folder, a)
    axes = kw.pop("axes")
    source = kw.pop("train_source", str(noisy_path))
    target = kw.pop("target", None)
    t0 = time.perf_counter()
    model = bd.train(source, folder / f"model-{key}", axes=axes, target=target, max_time=a.budget, seed=a.seed,
                     device=a.device, overwrite=True, progress=False, **kw)
    train_s = time.perf_counter() - t0
    out = folder / f"denoised-{key}.zarr"
    t0 = time.perf_counter()
    summary = bd.predict(str(noisy_path), folder / f"model-{key}", out, axes=axes, cluster="threads",
                         overwrite=True, progress=False, device=a.device)
    predict_s = time.perf_counter() - t0
    pred = np.asarray(zarr.open_array(str(out), mode="r")[...], dtype=np.float32)
    return {"output": pred, "note": note, "steps": model.info.get("steps"), "train_s": train_s,
            "predict_s": predict_s, "blocks": summary.get("blocks")}


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
    mean, sem = metrics.mean_sem(values)
    return f"{mean:.{digits}f}" if math.isnan(sem) else f"{mean:.{digits}f} ± {sem:.{digits}f}"


def report(results: dict, datasets: dict[str, Dataset], methods: list[str], a, machine, probes, seconds) -> str:
    names = list(results)
    rows = [m for m in methods if any(m in results[d]["runs"] for d in names)]

    def table(metric: str, digits: int) -> list[str]:
        lines = [f"| method | {' | '.join(names)} |", "|" + " --- |" * (len(names) + 1)]
        for m in rows:
            cells = []
            for d in names:
                run = results[d]["runs"].get(m)
                cells.append(_cell(run[metric], digits) if run else "—")
            lines.append(f"| {m} | {' | '.join(cells)} |")
        return lines

    # reasons that hold for every data set (a package not installed) are said once
    common_skips = {m: why for m, why in results[names[0]]["skipped"].items()
                    if all(results[d]["skipped"].get(m) == why for d in names)} if names else {}
    mode = "quick" if a.quick else "full"
    out = [f"## Denoising quality: every method and baseline ({mode} mode)", "",
           f"- Date: {common.now()}; total run time {seconds / 60:.1f} min",
           f"- Machine: {common.format_machine(machine, probes)}",
           f"- Reproduce: `{common.this_command()}`",
           f"- Budget: every learned model trains for {a.budget:g} s of wall-clock time (`max_time`), seed {a.seed}, "
           "default U-Net (depth 2, 32 features), patch 64x64, batch 16, through `bigdenoise.train`; prediction "
           "through `bigdenoise.predict` (blockwise, Dask threads) from Zarr into Zarr.",
           "- **These are not the papers' settings.** The papers train for hours on GPUs (N2V on Train400 for BSD68, "
           "PN2V with depth 3, 64 features, K = 800); here every model gets a few CPU minutes or less and trains on "
           "the noisy test images themselves (self-supervised methods) or on the pairs listed below"
           + ("; the quick mode also uses few images and crops" if a.quick else "")
           + ". Read the numbers as a ranking at equal small budget, not as a reproduction.",
           "- Gaussian and median filters: the window (3, 5 or 7) with the best mean PSNR on each data set, chosen "
           "with the ground truth (an oracle choice in their favour).", "",
           "PSNR (dB), mean ± standard error over images:", "", *table("psnr", 2), "",
           "SSIM (Gaussian window sigma 1.5, `bigdenoise.metrics.ssim`), mean ± standard error over images:", "",
           *table("ssim", 3), ""]
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
            if run.get("steps") is not None:
                bits.append(f"{run['steps']} steps, train {run['train_s']:.0f} s, predict {run['predict_s']:.1f} s")
            elif run.get("seconds") is not None and m != "noisy":
                bits.append(f"{run['seconds']:.1f} s")
            if run.get("note"):
                bits.append(run["note"])
            if bits:
                out.append(f"  - {m}: {'; '.join(bits)}")
        for m, why in res["skipped"].items():
            if m not in common_skips:
                out.append(f"  - {m}: not run — {why}")
        out.append(f"  - panel: [figures/quality_{d}.png](figures/quality_{d}.png)")
    out += ["", "Every output is scored the same way on a data set (for fitted data sets the noisy input too). "
            "PSNR and SSIM are `bigdenoise.metrics.psnr` / `ssim` with the stated peak; `si_psnr` (PN2V's "
            "scale-invariant PSNR) is available there as well."]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_DATASETS)}; few images and crops; "
                   "N2V, N2N, Noise2Stack and the baselines; 45 s per model (under 15 min on 2 CPU cores)")
    p.add_argument("--datasets", help=f"comma-separated subset of {','.join(ALL_DATASETS)} "
                   "(default: all, or the quick set)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(BASELINES + LEARNED)} "
                   "(default: all, or the quick set); a method the data do not allow is skipped with the reason")
    p.add_argument("--budget", help="training wall-clock budget per model: 90, 90s, 5m (default 45s quick, 5m full)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic noise and of training (default 0)")
    p.add_argument("--images", type=int, help="score at most this many images per data set")
    p.add_argument("--crop", type=int, help="centre crop size for BSD68 and the Hagen images")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data", help="the shared data folder (default: $BIGDENOISE_DATA, else <repo>/../shared/data)")
    p.add_argument("--work", help="folder for stacks, models and outputs (default <tmp>/bigdenoise-bench/quality; kept)")
    p.add_argument("--record", action="store_true", help="write the tables into benchmarks/RESULTS.md and the panels "
                   "into benchmarks/figures/")
    a = p.parse_args(argv)
    from bigdenoise.cli import parse_duration

    try:
        a.budget = parse_duration(a.budget) if a.budget else (45.0 if a.quick else 300.0)
    except argparse.ArgumentTypeError as exc:
        p.error(f"--budget: {exc}")
    a.datasets = _pick(p, a.datasets, QUICK_DATASETS if a.quick else ALL_DATASETS, ALL_DATASETS, "--datasets")
    a.methods = _pick(p, a.methods, QUICK_METHODS if a.quick else BASELINES + LEARNED, BASELINES + LEARNED,
                      "--methods")
    return a


def _pick(p, text, default, allowed, flag) -> list[str]:
    if not text:
        return list(default)
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in allowed]
    if unknown:
        p.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return chosen


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    work = Path(a.work) if a.work else Path(tempfile.gettempdir()) / "bigdenoise-bench" / "quality"
    work.mkdir(parents=True, exist_ok=True)
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
        noisy_path = write_zarr(folder / "noisy.zarr", ds.noisy)
        runs, skipped, panels = {}, {}, []
        print(f"\n== {name}: {ds.noisy.shape[0]} images {ds.noisy.shape[1]}x{ds.noisy.shape[2]}", flush=True)
        for m in a.methods:
            t0 = time.perf_counter()
            if m in BASELINES:
                output, note = run_baseline(m, ds, folder, a)
                if output is None:
                    skipped[m] = note
                    print(f"  {m:<14} skipped: {note}", flush=True)
                    continue
                run = {"note": note, "seconds": time.perf_counter() - t0}
            else:
                why = None
                if m not in ds.methods:
                    why = ds.why_not.get(m, "not applicable to these data")
                elif m == "care" and ds.care_train is None:
                    why = ds.care_note
                if why:
                    skipped[m] = why
                    print(f"  {m:<14} not run: {why}", flush=True)
                    continue
                run = run_learned(m, ds, noisy_path, folder, a)
                output = run.pop("output")
            run["psnr"], run["ssim"], scored = score(ds, output)
            runs[m] = run
            panels.append((m, scored[0], run["psnr"][0]))
            extra = f" ({run['steps']} steps)" if run.get("steps") is not None else ""
            print(f"  {m:<14} PSNR {_cell(run['psnr'], 2):>15} dB  SSIM {_cell(run['ssim'], 3):>13}  "
                  f"{time.perf_counter() - t0:6.1f} s{extra}  {run.get('note', '')}", flush=True)
        results[name] = {"runs": runs, "skipped": skipped}
        if a.record and panels:
            path = FIGURES / f"quality_{name}.png"
            save_panel(ds, panels, path)
            print(f"  panel: {path} ({path.stat().st_size / 1024:.0f} KB)", flush=True)
    probes.append(common.probe("after"))
    seconds = time.perf_counter() - t_start
    text = report(results, datasets, a.methods, a, machine, probes, seconds)
    print("\n" + text)
    if a.record:
        common.replace_section(common.RESULTS, "quality", text)
    print(f"\ntotal {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
