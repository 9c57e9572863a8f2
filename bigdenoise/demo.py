"""``bigdenoise demo``: the whole path on a real volume in a few minutes on a laptop CPU.

Makes (or loads) a noisy SYX stack, writes it as Zarr, trains Noise2Void on it for
``max_time`` seconds, denoises it blockwise on a LocalCluster of worker processes into Zarr,
reports PSNR before and after against the clean stack, and writes a side-by-side preview.

Data: the shared ``set12`` folder (12 classic grayscale test images, 256x256 centre crops,
Gaussian noise sigma 25 on the 0..255 scale, PSNR with peak 255) when it can be found, else a
synthetic phantom (cells, nuclei and filaments with Poisson-Gaussian noise, PSNR with the clean
data range).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import InputError
from .files import atomic_write_bytes
from .outputs import DEMO, ZARR_COPY, destination

MARKER = "bigdenoise-demo.json"
MARKER_FORMAT = "bigdenoise-demo"
SIZE = 256
SIGMA = 25.0
SEED = 0
CHUNKS = (1, 128, 128)

# Training defaults sized for a 2-core CPU: the default U-Net (depth 2, 32 features).
TRAIN_SETTINGS = dict(method="n2v", batch_size=16, patch=(64, 64), val_every=50, seed=SEED,
                      net={"depth": 2, "features": 32})


@dataclass(frozen=True)
class DemoData:
    """The demo's stack: ``noisy`` and ``clean`` are float32 ``(S, Y, X)``."""

    name: str  # "set12" or "phantom"
    source: str  # where it came from, in words
    noisy: np.ndarray
    clean: np.ndarray
    peak: float  # PSNR peak value
    labels: tuple[str, ...]  # one per image


# --------------------------------------------------------------------------- data


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def find_shared_data(data: str | Path | None = None) -> Path | None:
    """The shared data folder: ``data``, else ``$BIGDENOISE_DATA``, else ``<repo>/../shared/data``,
    ``./shared/data`` or ``../shared/data``; None when none exists.

    A ``data`` folder given explicitly (argument or environment) must exist.
    """
    explicit = data if data is not None else os.environ.get("BIGDENOISE_DATA") or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            where = "--data" if data is not None else "BIGDENOISE_DATA"
            raise InputError(f"shared data folder {path} ({where}) does not exist or is not a folder")
        return path
    for candidate in (_repo_root().parent / "shared" / "data", Path("shared/data"), Path("../shared/data")):
        if candidate.is_dir():
            return candidate
    return None


def _set12_dir(folder: Path) -> Path | None:
    for candidate in (folder / "set12", folder):
        if candidate.is_dir() and len(sorted(candidate.glob("[0-9][0-9].png"))) >= 2:
            return candidate
    return None


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] < size or image.shape[1] < size:
        raise InputError(f"image of shape {image.shape} is smaller than the {size}x{size} demo crop")
    y0, x0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[y0:y0 + size, x0:x0 + size]


def load_set12(folder: Path, sigma: float = SIGMA, seed: int = SEED) -> DemoData:
    """Set12 as a ``(12, 256, 256)`` stack of centre crops plus Gaussian noise (no clipping)."""
    import imageio.v3 as iio

    files = sorted(folder.glob("[0-9][0-9].png"))
    images = []
    for f in files:
        image = np.asarray(iio.imread(f))
        if image.ndim == 3:  # grayscale stored as RGB(A): take the luminance
            image = image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        images.append(_center_crop(image, SIZE).astype(np.float32))
    clean = np.stack(images)
    rng = np.random.default_rng(seed)
    noisy = (clean + rng.normal(0.0, sigma, clean.shape)).astype(np.float32)
    return DemoData("set12", f"Set12 from {folder} ({len(files)} images, {SIZE}x{SIZE} centre crops, "
                    f"Gaussian noise sigma {sigma:g})", noisy, clean, 255.0, tuple(f.stem for f in files))


def make_phantom(n: int = 12, size: int = SIZE, seed: int = SEED) -> DemoData:
    """A synthetic fluorescence-like stack: cells (membrane ring, cytoplasm, nucleus) and
    filaments on a smooth background, in photons, with Poisson shot noise and Gaussian read noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    clean = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        img = 4.0 + 3.0 * np.sin(xx / size * np.pi * rng.uniform(0.5, 2)) * np.cos(yy / size * np.pi * rng.uniform(0.5, 2))
        for _ in range(rng.integers(6, 12)):  # cells
            cy, cx = rng.uniform(20, size - 20, 2)
            a, b = rng.uniform(12, 30, 2)
            th = rng.uniform(0, np.pi)
            u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
            v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
            r = np.sqrt(u**2 + v**2)
            img += 10.0 / (1 + np.exp((r - 1) * 12))  # cytoplasm
            img += 25.0 * np.exp(-((r - 1) ** 2) / 0.004)  # membrane
            img += 30.0 * np.exp(-(r / 0.35) ** 2 / 0.5)  # nucleus
        lines = np.zeros((size, size), dtype=np.float32)
        for _ in range(rng.integers(4, 9)):  # filaments: bent one-pixel lines, blurred below
            t = np.linspace(0, 1, 4 * size)
            p0, p1, p2 = rng.uniform(0, size, (3, 2))
            curve = (1 - t)[:, None] ** 2 * p0 + 2 * (t * (1 - t))[:, None] * p1 + t[:, None] ** 2 * p2
            points = curve.round().astype(int)
            iy, ix = points[np.all((points >= 0) & (points < size), axis=1)].T
            lines[iy, ix] = 1.0
        clean[i] = img + 60.0 * _blur(lines, 1.2)
    photons = rng.poisson(clean).astype(np.float32)
    noisy = (100.0 + photons + rng.normal(0.0, 3.0, clean.shape)).astype(np.float32)
    clean = clean + np.float32(100.0)
    return DemoData("phantom", f"synthetic phantom ({n} images of {size}x{size}: cells and filaments, Poisson "
                    "shot noise + Gaussian read noise sigma 3)", noisy, clean.astype(np.float32),
                    float(clean.max() - clean.min()), tuple(f"phantom {i}" for i in range(n)))


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (numpy only)."""
    r = int(math.ceil(3 * sigma))
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
    k /= k.sum()
    out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 0, image)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 1, out)


def demo_data(data: str | Path | None = None) -> DemoData:
    """Set12 from the shared data folder when there is one, else the phantom."""
    folder = find_shared_data(data)
    set12 = _set12_dir(folder) if folder is not None else None
    return load_set12(set12) if set12 is not None else make_phantom()


# --------------------------------------------------------------------------- metrics and figures


def psnr(x: np.ndarray, ref: np.ndarray, peak: float) -> float:
    """Peak signal-to-noise ratio in dB of ``x`` against ``ref``."""
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(ref, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def psnr_per_image(x: np.ndarray, ref: np.ndarray, peak: float) -> list[float]:
    return [psnr(a, b, peak) for a, b in zip(x, ref)]


def write_preview(path: Path, d: DemoData, denoised: np.ndarray, p_noisy: list[float], p_den: list[float],
                  images: tuple[int, ...] = (0, 7), crop: int = 128) -> None:
    """noisy | denoised | clean centre crops for two images, with PSNR in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = tuple(dict.fromkeys(min(i, len(d.clean) - 1) for i in images))
    lo, hi = (0.0, 255.0) if d.name == "set12" else tuple(float(v) for v in np.percentile(d.clean, (0.1, 99.9)))
    fig, axes = plt.subplots(len(images), 3, figsize=(10.5, 3.6 * len(images)), dpi=100, squeeze=False)
    for row, i in zip(axes, images):
        panels = ((d.noisy[i], f"noisy {p_noisy[i]:.2f} dB"), (denoised[i], f"denoised (N2V) {p_den[i]:.2f} dB"),
                  (d.clean[i], "clean"))
        for ax, (img, title) in zip(row, panels):
            ax.imshow(_center_crop(img, min(crop, img.shape[0], img.shape[1])), cmap="gray", vmin=lo, vmax=hi,
                      interpolation="nearest")
            ax.set_title(f"{d.labels[i]}: {title}", fontsize=10)
            ax.axis("off")
    fig.suptitle(f"bigdenoise demo on {d.name}: mean PSNR {np.mean(p_noisy):.2f} dB -> {np.mean(p_den):.2f} dB "
                 f"(centre {crop}x{crop} crops; PSNR of the whole image)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- output folder


def prepare_out(out: Path, data_folder: Path | None) -> Path:
    """Create ``out``, or reuse it when it is a previous demo's output; refuse anything else.
    Returns the folder (symbolic links resolved)."""
    dest = destination(out, DEMO, protect={"shared data folder": data_folder}, resume=True)
    return dest.start()


def _write_marker(out: Path, document: dict) -> None:
    atomic_write_bytes(out / MARKER, json.dumps({"format": MARKER_FORMAT, "bigdenoise_version": __version__,
                                                 **document}, indent=2, default=str).encode())


def _write_zarr(path: Path, array: np.ndarray) -> None:
    from .volume import open_volume
    from .writer import create_array

    dest = destination(path, ZARR_COPY, overwrite=True)
    create_array(dest.start(), open_volume(array, "SYX"), CHUNKS, array.dtype, {})[...] = array
    dest.commit()


# --------------------------------------------------------------------------- the demo


def run_demo(out: str | Path, *, max_time: float = 180.0, data: str | None = None, progress: bool = True) -> dict:
    """Run the demo into the folder ``out`` and print a summary; returns its numbers and paths.

    Parameters
    ----------
    out : folder for the demo's files; created, or reused if it holds a previous demo's output
        (an existing folder that does not is refused with an OutputError).
    max_time : training time in seconds.
    data : the shared data folder (holding ``set12/``); default ``$BIGDENOISE_DATA``, else
        ``../shared/data`` next to the repository or the working directory; without one, a
        synthetic phantom is used.
    progress : show progress bars and step messages (the summary is always printed).
    """
    import zarr

    from . import api

    t_start = time.perf_counter()
    folder = find_shared_data(data)
    out = prepare_out(Path(out), folder)
    _write_marker(out, {"status": "running"})

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    d = demo_data(folder)
    say(f"[1/4] data: {d.source}; stack {d.noisy.shape[0]} x {d.noisy.shape[1]} x {d.noisy.shape[2]} (SYX)")
    noisy_path, clean_path = out / "noisy.zarr", out / "clean.zarr"
    model_dir, denoised_path = out / "model", out / "denoised.zarr"
    preview_path, loss_path = out / "preview.png", model_dir / "loss.png"
    _write_zarr(noisy_path, d.noisy)
    _write_zarr(clean_path, d.clean)

    say(f"[2/4] training Noise2Void for {max_time:g} s (U-Net depth 2, 32 features, batch 16, 64x64 patches)")
    model = api.train(str(noisy_path), model_dir, max_time=max_time, overwrite=True, progress=progress,
                      **TRAIN_SETTINGS)

    say("[3/4] denoising blockwise on a Dask LocalCluster (worker processes)")
    t0 = time.perf_counter()
    summary = api.predict(str(noisy_path), model_dir, denoised_path, cluster="local", overwrite=True,
                          progress=progress)
    predict_wall = time.perf_counter() - t0

    say("[4/4] scoring and writing the preview")
    denoised = zarr.open_array(str(denoised_path), mode="r")[...]
    p_noisy = psnr_per_image(d.noisy, d.clean, d.peak)
    p_den = psnr_per_image(denoised, d.clean, d.peak)
    write_preview(preview_path, d, denoised, p_noisy, p_den)

    result = {
        "data": d.name,
        "data_source": d.source,
        "shape": list(d.noisy.shape),
        "axes": "SYX",
        "peak": d.peak,
        "train_steps": int(model.info["steps"]),
        "train_seconds": float(model.info["train_seconds"]),
        "device": model.info["device"],
        "predict_seconds": float(summary["seconds"]),
        "predict_wall_seconds": predict_wall,
        "voxels": int(summary["voxels"]),
        "mvox_per_s": float(summary["voxels_per_s"]) / 1e6,
        "psnr_noisy": float(np.mean(p_noisy)),
        "psnr_denoised": float(np.mean(p_den)),
        "psnr_noisy_per_image": p_noisy,
        "psnr_denoised_per_image": p_den,
        "files": {"out": str(out), "noisy": str(noisy_path), "clean": str(clean_path), "model": str(model_dir),
                  "denoised": str(denoised_path), "preview": str(preview_path),
                  "loss": str(loss_path) if loss_path.is_file() else None},
    }
    result["total_seconds"] = time.perf_counter() - t_start
    _write_marker(out, {"status": "done", **result})
    print(format_summary(result), flush=True)
    return result


def format_summary(r: dict) -> str:
    """The demo's printed summary."""
    f = r["files"]
    peak = "peak 255" if r["data"] == "set12" else f"peak = clean data range {r['peak']:.4g}"
    rows = [
        f"bigdenoise demo: Noise2Void on {r['data']}",
        f"  data        {r['data_source']}",
        f"  volume      {' x '.join(map(str, r['shape']))} ({r['axes']}), float32, chunks {' x '.join(map(str, CHUNKS))}",
        f"  training    {r['train_steps']} steps in {r['train_seconds']:.1f} s on {r['device']}",
        f"  prediction  {r['voxels'] / 1e6:.2f} Mvox in {r['predict_seconds']:.1f} s ({r['mvox_per_s']:.3f} Mvox/s) "
        f"on a LocalCluster; {r['predict_wall_seconds']:.1f} s with cluster start-up",
        f"  PSNR        noisy {r['psnr_noisy']:.2f} dB -> denoised {r['psnr_denoised']:.2f} dB "
        f"({r['psnr_denoised'] - r['psnr_noisy']:+.2f} dB; mean over {r['shape'][0]} images, {peak})",
        "  files",
        f"    noisy.zarr     {f['noisy']}",
        f"    clean.zarr     {f['clean']}",
        f"    model          {f['model']}",
        f"    denoised.zarr  {f['denoised']}",
        f"    preview.png    {f['preview']}",
        f"    loss.png       {f['loss'] or '(no validation was run)'}",
        f"  total time  {r['total_seconds']:.1f} s",
    ]
    if r["psnr_denoised"] < r["psnr_noisy"] + 1.0:
        rows.append(f"  note        {r['train_steps']} training steps are too few to denoise well; "
                    "give it more time, e.g. --max-time 5m")
    return "\n".join(rows)
