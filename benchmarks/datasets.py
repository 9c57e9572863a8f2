"""Every data set of the benchmarks, in one place: where the shared data live, the image loaders
(BSD68, Set12, W2S, FMD, Hagen, TIRF, the time-lapse), the simulated noise (Gaussian,
Poisson-Gaussian, row- or column-correlated stripes), the generated volumes
(3D phantom, random and light-sheet-like Zarr volumes), writing a stack to Zarr, and the
evaluation sets of ``quality.py``, each a :class:`Dataset` (noisy images, their reference, how to
score them, which learned methods the data allow and why not the others).

Every evaluation set is a stack of 2D images (N, H, W) float32; the images are the units of the
statistics (for the stacks, planes or frames). Descriptions of the protocols are the
``description`` strings, which go into RESULTS.md.

Imported by the scripts in this folder as ``import datasets`` (run them as
``python benchmarks/<script>.py``, which puts this folder on ``sys.path``). It imports no script.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bigdenoise import metrics

REPO = Path(__file__).resolve().parent.parent

ALL_DATASETS = ("bsd68-s15", "bsd68-s25", "bsd68-s50", "set12-s15", "set12-s25", "set12-s50", "set12-pg", "w2s",
                "w2s-c0", "w2s-c1", "w2s-c2", "fmd", "fmd-fish", "hagen-mito", "hagen-nucleus", "hagen-membrane", "tirf",
                "timelapse", "phantom3d", "stripes-rows", "stripes-cols", "bsd68-stripes-rows", "bsd68-stripes-cols")
TILE = 256
PG_PEAK, PG_READ = 30.0, 10.0  # simulated Poisson-Gaussian noise: photons at 255, read-noise sigma (0..255 scale)
BSD68_SHAPE, BSD68_IMAGES = (321, 481), 34  # the even half of BSD68; portrait images are transposed
SET12_SIZE = 256  # Set12's 512x512 images are centre-cropped to this
# stripes-rows|cols (issue 16), on s in [0, 1]: photons at s = 1, white sigma, stripe sigma, stripe kernel sigma (px);
# --stripe-noise picks others within the ranges
STRIPE_PEAK, STRIPE_WHITE, STRIPE_SIGMA, STRIPE_BLUR = 50.0, 0.02, 0.10, 3.0
STRIPE_NOISE = (STRIPE_PEAK, STRIPE_WHITE, STRIPE_SIGMA, STRIPE_BLUR)
PAPERS = {
    "bsd68": "BSD68 (all 68 images) at sigma 25, Noise2Void paper (Krull et al. 2019): N2V 27.71 dB, BM3D 28.59, "
             "supervised (Train400) 29.06; DnCNN 29.23 (Zhang et al. 2017)",
    "set12": "Set12 at sigma 25: DnCNN-S 30.44 dB (Zhang et al. 2017)",
    "tirf": "a single frame against the 20-frame mean: about 22.3 dB (data set README)",
    "hagen": "low vs high SNR after an affine fit, whole 1024x1024 mito image: 20.1 dB (data set README)",
    "fish": "PN2V paper (Krull et al. 2019) Table 1, Confocal Zebrafish NR1 (the FMD data set's raw captures, "
            "50 images of its test field; U-Net depth 3, 64 features, K = 800, GPU training): input 22.81 dB, "
            "N2V 32.10, PN2V 32.45",
    "stack": "Noise2Stack paper (Papkov et al. 2021): with two neighbouring planes 31.6 dB where N2V gets 26.8 dB "
             "on its microscopy stacks",
}


# --------------------------------------------------------------------------- where the data are


def data_root(data: str | os.PathLike | None = None) -> Path:
    """The shared data folder: ``data``, else ``$BIGDENOISE_DATA``, else ``<repo>/../shared/data``
    (the demo's own search, :func:`bigdenoise.demo.find_shared_data`).

    Raises SystemExit with a clear message when none exists.
    """
    from bigdenoise.demo import find_shared_data
    from bigdenoise.errors import InputError

    try:
        path = find_shared_data(data)
    except InputError as exc:
        raise SystemExit(str(exc)) from None
    if path is None:
        raise SystemExit(f"no data folder: pass --data DIR or set BIGDENOISE_DATA (looked for {REPO.parent / 'shared' / 'data'})")
    return path


def dataset_dir(name: str, data: str | os.PathLike | None = None, pattern: str = "*") -> Path:
    """Folder of data set ``name``: ``data`` itself when it holds files matching ``pattern``,
    else ``<data root>/name``."""
    if data is not None:
        direct = Path(data).expanduser()
        if direct.is_dir() and any(direct.glob(pattern)):
            return direct
    folder = data_root(data) / name
    if not folder.is_dir() or not any(folder.glob(pattern)):
        raise SystemExit(f"data set {name!r} not found: {folder} has no {pattern} files")
    return folder


# --------------------------------------------------------------------------- images, noise, volumes


def load_bsd68(folder: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """The clean even half of BSD68 (N, 321, 481) float32, the file names and the names of the
    transposed (portrait) images."""
    import imageio.v3 as iio

    files = sorted(folder.glob("test*.png"))
    if len(files) != BSD68_IMAGES:
        raise SystemExit(f"{folder}: expected {BSD68_IMAGES} test*.png images, found {len(files)}")
    images, transposed = [], []
    for f in files:
        image = np.asarray(iio.imread(f))
        if image.ndim != 2:
            raise SystemExit(f"{f}: expected a grayscale image, got shape {image.shape}")
        if image.shape == BSD68_SHAPE[::-1]:
            image = image.T
            transposed.append(f.name)
        if image.shape != BSD68_SHAPE:
            raise SystemExit(f"{f}: shape {image.shape} is neither {BSD68_SHAPE} nor its transpose")
        images.append(image.astype(np.float32))
    return np.stack(images), [f.name for f in files], transposed


def load_train400(folder: Path, part: slice = slice(None)) -> np.ndarray:
    """(n, 180, 180) float32 on 0..255: the Train400 images ``part`` picks (in file-name order).
    CARE trains on all of them, set12-pg calibrates on the first ``CALIBRATION_IMAGES``, and PN2V's
    defaults are chosen on the last ones (``load_train400_tail``), which no scored data set uses."""
    files = sorted(folder.glob("*.png"))[part]
    if not files:
        raise SystemExit(f"no Train400 images (*.png) in {folder}")
    return np.stack([_read(f) for f in files])


def load_train400_tail(folder: Path, count: int = 12) -> np.ndarray:
    """The last ``count`` Train400 images (:func:`load_train400`)."""
    return load_train400(folder, slice(-count, None))


def load_set12(folder: Path, count: int = 12) -> np.ndarray:
    """(count, 256, 256) float32 on 0..255: the first ``count`` Set12 images, 512x512 ones centre-cropped."""
    import imageio.v3 as iio

    images = []
    for f in sorted(folder.glob("*.png"))[:count]:
        image = np.asarray(iio.imread(f), dtype=np.float32)
        y0, x0 = (image.shape[0] - SET12_SIZE) // 2, (image.shape[1] - SET12_SIZE) // 2
        images.append(image[y0:y0 + SET12_SIZE, x0:x0 + SET12_SIZE])
    if not images:
        raise SystemExit(f"{folder}: no PNG images")
    return np.stack(images)


def poisson_gaussian(clean: np.ndarray, peak: float, read: float, seed: int) -> np.ndarray:
    """``g * Poisson(clean / g) + N(0, read^2)`` with ``g = 255 / peak`` (``peak`` photons at 255), float32."""
    rng = np.random.default_rng(seed)
    gain = 255.0 / peak
    return (gain * rng.poisson(clean / gain) + rng.normal(0.0, read, clean.shape)).astype(np.float32)


def stripe_kernel(blur: float) -> np.ndarray:
    """Unit-energy (sum of squares 1) 1-D Gaussian of standard deviation ``blur`` px, cut at 4 sigma."""
    r = max(1, int(np.ceil(4 * blur)))
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / blur) ** 2)
    return g / np.sqrt(np.sum(g * g))


def stripe_noise(clean: np.ndarray, axis: int, seed: int, peak: float = STRIPE_PEAK, white: float = STRIPE_WHITE,
                 stripe: float = STRIPE_SIGMA, blur: float = STRIPE_BLUR) -> np.ndarray:
    """Row- or column-correlated noise on ``clean`` (..., H, W) in [0, 1], float32:
    ``Poisson(peak * s) / peak + white * e1 + stripe * (g * e2)``, ``e1, e2`` standard normal,
    ``g`` = :func:`stripe_kernel` (``blur``) convolved along ``axis`` (-1: along the rows, X;
    -2: along the columns, Y). ``e2`` is drawn wider than the image along ``axis`` and cut back
    after the convolution, so the stripe noise is stationary up to the edges (variance ``stripe**2``)."""
    from scipy import ndimage

    if axis not in (-1, -2):
        raise ValueError(f"axis must be -1 (rows) or -2 (columns), got {axis}")
    rng = np.random.default_rng(seed)
    s = np.clip(np.asarray(clean, np.float64), 0, None)
    g = stripe_kernel(blur)
    r = len(g) // 2
    wide = list(s.shape)
    wide[axis] += 2 * r
    e2 = ndimage.convolve1d(rng.standard_normal(wide), g, axis=axis, mode="constant")
    e2 = np.take(e2, np.arange(r, r + s.shape[axis]), axis=axis)
    x = rng.poisson(peak * s) / peak + white * rng.standard_normal(s.shape) + stripe * e2
    return x.astype(np.float32)


def write_stack(path: Path, array: np.ndarray, axes: str | None = None) -> Path:
    """``array`` as a float32 Zarr v3 array, one chunk per image (first axis), replacing ``path``;
    with an ``axes`` attribute when given (else the axes are passed explicitly)."""
    import zarr

    if path.exists():
        shutil.rmtree(path)
    z = zarr.create_array(store=str(path), shape=array.shape, chunks=(1, *array.shape[1:]), dtype="float32",
                          attributes={"axes": axes} if axes else None, zarr_format=3)
    z[...] = array.astype(np.float32)
    return path


def write_random_volume(path: Path, shape, chunks, axes: str, dtype: str, seed: int = 0):
    """A random volume (Gaussian around 1000, sd 100) written slab by slab; returns its stats."""
    import zarr

    from bigdenoise.normalize import stats_from_samples

    z = zarr.create_array(store=str(path), shape=shape, chunks=chunks, dtype=dtype, attributes={"axes": axes},
                          zarr_format=3)
    rng = np.random.default_rng(seed)
    step = chunks[0]
    first = None
    for lo in range(0, shape[0], step):
        hi = min(lo + step, shape[0])
        slab = rng.normal(1000.0, 100.0, (hi - lo, *shape[1:]))
        slab = np.clip(np.rint(slab), 0, 65535).astype(dtype) if dtype == "uint16" else slab.astype(dtype)
        z[lo:hi] = slab
        if first is None:
            first = slab
    return stats_from_samples([first])


LIGHTSHEET_CHUNKS, LIGHTSHEET_YX = (64, 256, 256), 1024


def write_lightsheet_volume(path: Path, gbytes: float, seed: int = 0,
                            distinct_slabs: int | None = None) -> tuple[int, int, int]:
    """A synthetic light-sheet-like uint16 ZYX volume of about ``gbytes`` GB (sparse bright blobs
    and fibres on a dark background, Poisson shot noise plus Gaussian read noise), chunks
    :data:`LIGHTSHEET_CHUNKS`, Y and X :data:`LIGHTSHEET_YX`, written chunk-slab by chunk-slab;
    returns its shape. ``distinct_slabs``: draw only that many slabs (one chunk deep) and repeat
    them along Z, for volumes whose content does not matter (drawing the noise of a 16 GB volume
    takes a core 20 minutes)."""
    import zarr

    chunks, yx = LIGHTSHEET_CHUNKS, LIGHTSHEET_YX
    z = max(chunks[0], int(round(gbytes * 1e9 / (2 * yx * yx) / chunks[0])) * chunks[0])
    shape = (z, yx, yx)
    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16",
                            attributes={"axes": "ZYX"}, overwrite=True)
    rng = np.random.default_rng(seed)
    drawn: list[np.ndarray] = []
    for z0 in range(0, z, chunks[0]):
        if distinct_slabs and len(drawn) == distinct_slabs:
            arr[z0:z0 + chunks[0]] = drawn[(z0 // chunks[0]) % distinct_slabs]
            continue
        signal = np.full((chunks[0], yx, yx), 100.0, np.float32)
        for _ in range(24):  # blobs, drawn in their own bounding box
            r = rng.uniform(4, 12)
            c = rng.uniform((0, 0, 0), (chunks[0], yx, yx))
            lo = np.maximum(0, (c - 3 * r).astype(int))
            hi = np.minimum(signal.shape, (c + 3 * r).astype(int) + 1)
            zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            d2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
            signal[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += (800 * np.exp(-d2 / (2 * r * r))).astype(np.float32)
        for _ in range(4):  # fibres along X
            y, zz = rng.integers(yx), rng.integers(chunks[0])
            signal[max(zz - 1, 0):zz + 2, max(y - 1, 0):y + 2, :] += 400
        noisy = rng.poisson(signal / 4.0) * 4.0 + rng.normal(0, 3, signal.shape)
        slab = np.clip(noisy, 0, 65535).astype(np.uint16)
        if distinct_slabs:
            drawn.append(slab)
        arr[z0:z0 + chunks[0]] = slab
    return shape


# --------------------------------------------------------------------------- the evaluation sets of quality.py


@dataclass
class CareFold:
    """One CARE model: trained on (noisy, clean) pairs, it supplies the output where ``region``
    (H, W) is true (None: everywhere)."""

    noisy: np.ndarray
    clean: np.ndarray
    region: np.ndarray | None = None


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
    care_folds: list[CareFold] = field(default_factory=list)  # empty: CARE not possible (care_note says why)
    care_note: str = ""
    noise_model: dict | None = None  # PN2V's calibration: {"kind", "pairs": (noisy, clean)} or {"kind", "repeats"}
    stack_axis: str = "T"  # Noise2Stack: what the first axis is (T or Z) and the neighbours per side
    neighbours: int = 1
    struct_axis: int = 1  # struct-N2V: spatial axis of the correlated noise (0: Y, columns; 1: X, rows)
    struct_span: int = 2  # struct-N2V: pixels masked on each side along struct_axis
    residue: bool = False  # report the stripe residue A (quality.stripe_residue): row-correlated noise
    sigma: float | None = None  # the known Gaussian noise sigma (BM3D), else estimated
    why_not: dict[str, str] = field(default_factory=dict)  # learned method -> why the data do not allow it
    paper: str = ""


def _centre(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    y0, x0 = (image.shape[-2] - shape[0]) // 2, (image.shape[-1] - shape[1]) // 2
    return image[..., y0:y0 + shape[0], x0:x0 + shape[1]]


def _tiles(image: np.ndarray, size: int, skip: tuple[slice, slice] | None = None) -> np.ndarray:
    """Non-overlapping ``size x size`` tiles of a 2D image (remainder dropped), (N, size, size);
    tiles that overlap the box ``skip`` are left out."""
    ny, nx = image.shape[0] // size, image.shape[1] // size
    out = []
    for i in range(ny):
        for j in range(nx):
            if skip is not None and (skip[0].start < (i + 1) * size and i * size < skip[0].stop
                                     and skip[1].start < (j + 1) * size and j * size < skip[1].stop):
                continue
            out.append(image[i * size:(i + 1) * size, j * size:(j + 1) * size])
    return np.stack(out) if out else np.empty((0, size, size), image.dtype)


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


def _onto(clean: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """Each reference image mapped ``a * clean + b`` onto its noisy image's scale (least squares)."""
    return np.stack([metrics.apply_affine_fit(c, x) for c, x in zip(clean, noisy)]).astype(np.float32)


def _poisson_gaussian(clean: np.ndarray, seed: int) -> np.ndarray:
    return poisson_gaussian(np.clip(clean, 0, None), PG_PEAK, PG_READ, seed)


PG_TEXT = (f"simulated Poisson-Gaussian noise x = g * Poisson(s / g) + N(0, {PG_READ:g}^2), g = 255 / {PG_PEAK:g} "
           f"({PG_PEAK:g} photons at 255; datasets.poisson_gaussian), float32")


def phantom3d(shape: tuple[int, int, int] = (32, 256, 256), seed: int = 0) -> np.ndarray:
    """A smooth 3D phantom (Z, Y, X) on 0..255: soft-edged ellipsoids ("nuclei", 3-8 planes and
    8-24 px in radius), 400 small spots and a faint smooth background, blurred by a Gaussian PSF
    (sigma 1.5 planes in Z, 1 px in YX). Neighbouring planes share most of their signal."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    vol = np.zeros(shape, np.float32)
    for _ in range(40):
        centre = rng.uniform(0, shape)
        radius = rng.uniform((3, 8, 8), (8, 24, 24))
        d = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)))
        vol += rng.uniform(0.3, 1.0) / (1 + np.exp((d - 1) * 8))
    spots = np.zeros(shape, np.float32)
    idx = tuple(rng.integers(0, n, 400) for n in shape)
    spots[idx] = rng.uniform(20, 60, 400)
    vol += ndimage.gaussian_filter(spots, (1.2, 1.0, 1.0))
    vol += 0.1 * ndimage.gaussian_filter(rng.random(shape, np.float32), 16) / 0.5
    vol = ndimage.gaussian_filter(vol, (1.5, 1.0, 1.0))
    return (vol / vol.max() * 255).astype(np.float32)


def load_dataset(name: str, a: argparse.Namespace) -> Dataset:
    """Data set ``name`` with the options of ``a`` (data, quick, crop, images, seed, methods, stripe_noise)."""
    if name.startswith(("stripes-", "bsd68-stripes-")):
        return _stripes(name, a)
    if name.startswith(("bsd68-s", "set12-s")):
        return _synthetic_gaussian(name, a)
    loader = {"set12-pg": _set12_pg, "w2s": _w2s, "fmd": _fmd,
              "fmd-fish": _fmd_fish, "tirf": _tirf, "timelapse": _timelapse, "phantom3d": _phantom3d}.get(name)
    if loader is None and name.startswith("hagen-"):
        loader = _hagen
    if loader is None and name in ("w2s-c0", "w2s-c1", "w2s-c2"):
        loader = _w2s_channel
    if loader is None:
        raise SystemExit(f"unknown data set {name!r}; choose from {', '.join(ALL_DATASETS)}")
    return loader(name, a)


def _bsd68_clean(a: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The even half of BSD68 on 0..255 (N, 321, 481), cut to ``--images`` and ``--crop`` (8 images
    of 256x256 in quick mode), and the words that say so."""
    clean, _, transposed = load_bsd68(dataset_dir("bsd68_even", a.data, "test*.png"))
    crop = a.crop or (256 if a.quick else None)
    n = a.images or (8 if a.quick else len(clean))
    clean = clean[:n]
    if crop:
        clean = np.ascontiguousarray(_centre(clean, (min(crop, clean.shape[1]), min(crop, clean.shape[2]))))
    return clean, (f"{n} even-numbered BSD68 images ({len(transposed)} portrait images of the 34 transposed)"
                   + (f", centre {clean.shape[1]}x{clean.shape[2]} crops" if crop
                      else f", {clean.shape[1]}x{clean.shape[2]}"))


def _set12_clean(a: argparse.Namespace) -> tuple[np.ndarray, str]:
    """Set12 on 0..255 (N, 256, 256), cut to ``--images``, and the words that say so."""
    clean = load_set12(dataset_dir("set12", a.data, "*.png"))
    if a.images:
        clean = clean[:a.images]
    return clean, f"{len(clean)} Set12 images (512x512 ones centre-cropped to 256x256)"


def _synthetic_gaussian(name: str, a: argparse.Namespace) -> Dataset:
    sigma = float(name.split("-s")[1])
    clean, what = _bsd68_clean(a) if name.startswith("bsd68") else _set12_clean(a)
    paper = PAPERS["bsd68" if name.startswith("bsd68") else "set12"]
    noisy = _gaussian_noise(clean, sigma, a.seed)
    second = _gaussian_noise(clean, sigma, a.seed + 1000)
    folds, care_note = _train400_care(a, lambda c, seed: _gaussian_noise(c, sigma, seed))
    return Dataset(name, f"{what}; Gaussian noise sigma {sigma:g} on 0..255, float32, not clipped, not "
                   f"quantised (numpy default_rng({a.seed})); N2N target: a second draw (seed {a.seed + 1000}); "
                   f"PSNR/SSIM peak 255 against the clean images", noisy, clean, 255.0,
                   methods=("n2v", "n2v2", "n2n", "care"), second=second, care_folds=folds,
                   care_note=care_note, sigma=sigma, paper=paper if sigma == 25 else "",
                   why_not={"pn2v": "Gaussian noise: PN2V is benchmarked on set12-pg",
                            "pn2v-bootstrap": "Gaussian noise: PN2V is benchmarked on set12-pg",
                            "noise2stack": "independent images, no stack",
                            "struct-n2v": "noise is pixel-independent"})


CALIBRATION_IMAGES = 100  # Train400 images whose noisy copies calibrate set12-pg's noise model


def _set12_pg(name: str, a: argparse.Namespace) -> Dataset:
    clean = load_set12(dataset_dir("set12", a.data, "*.png"))
    if a.images:
        clean = clean[:a.images]
    noisy = _poisson_gaussian(clean, a.seed)
    second = _poisson_gaussian(clean, a.seed + 1000)
    # a calibration acquisition of other samples: Train400 images (never scored) with the same noise
    reference = load_train400(data_root(a.data) / "train400", slice(CALIBRATION_IMAGES))
    calibration = _poisson_gaussian(reference, a.seed + 1)
    what = f"calibration pairs of {len(reference)} Train400 images (180x180, not scored) with the same noise"
    return Dataset(name, f"{len(clean)} Set12 images (256x256) with {PG_TEXT}; PN2V noise model: GMM fitted to "
                   f"{what}; peak 255", noisy, clean, 255.0,
                   methods=("n2v", "n2v2", "pn2v", "pn2v-bootstrap", "n2n"), second=second,
                   noise_model={"kind": "gmm", "pairs": (calibration, reference), "what": what},
                   why_not={"care": "no separate clean training images for this noise",
                            "noise2stack": "independent images, no stack",
                            "struct-n2v": "noise is pixel-independent"})


def _train400_care(a: argparse.Namespace, noise, scale: float = 1.0) -> tuple[list[CareFold], str]:
    """CARE's training pairs from other images: the Train400 images (on 0..255 times ``scale``)
    and ``noise(clean, seed)`` of them (seed ``a.seed + 2000``), as one fold with its note; no
    fold when CARE is not asked for or there is no train400 folder."""
    folder = data_root(a.data) / "train400"
    if "care" not in a.methods or not folder.is_dir() or not any(folder.glob("*.png")):
        return [], "no train400 folder"
    clean = (load_train400(folder) * scale).astype(np.float32)
    on = "" if scale == 1 else f", on 0..{255 * scale:g}"
    return ([CareFold(noise(clean, a.seed + 2000), clean)],
            f"CARE trained on the {len(clean)} Train400 images (180x180{on}) with the same noise")


def _stripes(name: str, a: argparse.Namespace) -> Dataset:
    """Set12 (``stripes-*``) or BSD68's even half (``bsd68-stripes-*``) on 0..1 with
    :func:`stripe_noise` along the rows (``*-rows``) or the columns (``*-cols``), at the noise of
    ``--stripe-noise`` (default ``STRIPE_NOISE``): the synthetic stripes of issue 16, exact ground truth."""
    rows = name.endswith("-rows")
    clean, what = _bsd68_clean(a) if name.startswith("bsd68") else _set12_clean(a)
    clean = (clean / 255.0).astype(np.float32)
    peak, white, stripe, blur = a.stripe_noise
    axis = -1 if rows else -2

    def noise(c: np.ndarray, seed: int) -> np.ndarray:
        return stripe_noise(c, axis, seed, peak, white, stripe, blur)

    noisy = noise(clean, a.seed)
    along = "rows (X)" if rows else "columns (Y)"
    span = int(round(2 * blur))
    folds, care_note = _train400_care(a, noise, scale=1 / 255.0)
    return Dataset(name, f"{what}, scaled to s = clean/255 in [0, 1]; noisy x = Poisson({peak:g} s)/{peak:g} + "
                   f"{white:g} e1 + {stripe:g} (g * e2), e1, e2 standard normal, g a unit-energy Gaussian of sigma "
                   f"{blur:g} px convolved along the {along} (datasets.stripe_noise, numpy default_rng({a.seed})), "
                   f"float32, not clipped; PSNR/SSIM peak 1 against s, no fit; struct-N2V masks +-{span} px along the "
                   f"{along}", noisy, clean, 1.0,
                   methods=("n2v", "n2v2", "struct-n2v", "care"), struct_axis=1 if rows else 0, struct_span=span,
                   residue=True, care_folds=folds, care_note=care_note,
                   why_not={"n2n": "one noisy draw per image (the issue's rows are N2V, struct-N2V and COSDD)",
                            "pn2v": "row-correlated noise: a pixel-wise noise model does not describe it",
                            "pn2v-bootstrap": "row-correlated noise: a pixel-wise noise model does not describe it",
                            "noise2stack": "independent images, no stack",
                            "noise2stack-copy": "independent images, no stack"})


def w2s_pairs(a: argparse.Namespace, fovs, channels) -> tuple[np.ndarray, np.ndarray]:
    """W2S (noisy single frame, 400-frame average) pairs, FOV-major, (N, 512, 512) float32."""
    folder = dataset_dir("w2s_8bit", a.data, "noisy_avg1")
    return (np.stack([_read(folder / "noisy_avg1" / f"input_avg1_{f:03d}_{c}.tif") for f in fovs for c in channels]),
            np.stack([_read(folder / "gt_avg400" / f"target_avg400_{f:03d}_{c}.tif") for f in fovs for c in channels]))


def _w2s_test_images(noisy: np.ndarray, clean: np.ndarray, a: argparse.Namespace):
    """The test images cut to ``--images`` and ``--crop`` (256 in quick mode); the crop's text."""
    if a.images:
        noisy, clean = noisy[:a.images], clean[:a.images]
    crop = a.crop or (256 if a.quick else None)
    if crop and crop < noisy.shape[1]:
        noisy, clean = (np.ascontiguousarray(_centre(v, (crop, crop))) for v in (noisy, clean))
        return noisy, clean, f"centre {crop}x{crop} crops of the "
    return noisy, clean, ""


W2S_SCORING = ("single frame vs 400-frame average; every output fitted a*x+b to the ground truth (least squares) "
               "before PSNR/SSIM, peak 255")


def _w2s_dataset(name: str, a: argparse.Namespace, scope: str, test_fovs, train_fovs, channels, *,
                 care_note: str, noise_what: str, why_no_stack: str) -> Dataset:
    """A W2S data set: test pairs of ``test_fovs``, CARE and PN2V's noise model from the pairs of
    ``train_fovs`` (ground truth mapped a*gt+b onto each noisy frame's 8-bit scale)."""
    noisy, clean, cropped = _w2s_test_images(*w2s_pairs(a, test_fovs, channels), a)
    t_noisy, t_clean = w2s_pairs(a, train_fovs, channels)
    t_mapped = _onto(t_clean, t_noisy)
    return Dataset(name, f"W2S widefield {scope} ({len(noisy)} images, {cropped}512x512, 8-bit): {W2S_SCORING}",
                   noisy, clean, 255.0, fit=True,
                   methods=("n2v", "n2v2", "care", "pn2v", "pn2v-bootstrap"),
                   care_folds=[CareFold(t_noisy, t_mapped)], care_note=care_note,
                   noise_model={"kind": "gmm", "pairs": (t_noisy, t_mapped), "what": noise_what},
                   why_not={"n2n": "one noisy frame per field (the 400 raw frames are not in the 8-bit set)",
                            "noise2stack": why_no_stack,
                            "struct-n2v": "not applied"})


def _w2s(name: str, a: argparse.Namespace) -> Dataset:
    return _w2s_dataset(
        name, a, "FOVs 008-010 x 3 channels", range(8, 11), range(1, 8), range(3),
        care_note="CARE trained on FOVs 001-007 (21 pairs), each target mapped a*gt+b onto its noisy "
                  "frame's 8-bit scale (the files were contrast-stretched independently)",
        noise_what="the 21 training pairs of FOVs 001-007, each GT mapped a*gt+b onto its noisy "
                   "frame's 8-bit scale (each test file has its own stretch, so the model is "
                   "approximate there)",
        why_no_stack="no stack (the 3 channels are different stains)")


def _w2s_channel(name: str, a: argparse.Namespace) -> Dataset:
    """One W2S channel: its own acquisition setting, hence its own noise model (the channels'
    noise variance per unit of signal differs about 4x in the 8-bit files)."""
    channel = int(name[-1])
    return _w2s_dataset(
        name, a, f"channel {channel} alone, FOVs 004-010", range(4, 11), range(1, 4), [channel],
        care_note=f"CARE trained on FOVs 001-003 of channel {channel} (3 pairs), each target mapped "
                  "a*gt+b onto its noisy frame's 8-bit scale",
        noise_what=f"the 3 pairs of FOVs 001-003 of channel {channel}, each GT mapped a*gt+b onto "
                   "its noisy frame's 8-bit scale",
        why_no_stack="no stack")


def _fmd(name: str, a: argparse.Namespace) -> Dataset:
    folder = dataset_dir("fmd_samples", a.data, "*_raw*")
    noisy = np.concatenate([_read(folder / "Confocal_FISH_3_raw.png")[None],
                            _read(folder / "Confocal_BPAE_RGB_fov1_raw_3ch.tif")])
    clean = np.concatenate([_read(folder / "Confocal_FISH_3_gt.png")[None],
                            _read(folder / "Confocal_BPAE_RGB_fov1_gt_3ch.tif")])
    half = noisy.shape[2] // 2
    left = np.zeros(noisy.shape[1:], bool)
    left[:, :half] = True
    folds = [CareFold(noisy[..., half:], clean[..., half:], left), CareFold(noisy[..., :half], clean[..., :half], ~left)]
    return Dataset(name, "FMD confocal: FISH_3 and BPAE field 1 (3 channels), 4 images 512x512: raw capture vs "
                   "50-frame average; PSNR/SSIM peak 255, no fit (FMD's protocol)", noisy, clean, 255.0,
                   methods=("n2v", "n2v2", "care"), care_folds=folds,
                   care_note="2-fold cross-fitting: one model trained on the right halves of the 4 images predicts "
                             "the left halves, another trained on the left halves the right halves (each the full "
                             "budget); no training target is ever scored",
                   why_not={"n2n": "one raw frame per field", "noise2stack": "channels are not a stack",
                            "pn2v": "no calibration data here", "pn2v-bootstrap": "not wired for these data",
                            "struct-n2v": "not applied"})


def _fmd_fish(name: str, a: argparse.Namespace) -> Dataset:
    """FMD's Confocal_FISH_3 alone: a field of the PN2V paper's Confocal Zebrafish data, raw
    8-bit capture (NR1) on the camera's own scale, so one noise model holds for all of it."""
    folder = dataset_dir("fmd_samples", a.data, "Confocal_FISH_3_*")
    noisy = _tiles(_read(folder / "Confocal_FISH_3_raw.png"), TILE)
    clean = _tiles(_read(folder / "Confocal_FISH_3_gt.png"), TILE)
    return Dataset(name, "FMD Confocal_FISH_3 (zebrafish, confocal; raw capture = the PN2V paper's NR1), 512x512 "
                   "cut into 4 tiles of 256x256: raw capture vs 50-frame average; PSNR/SSIM peak 255, no fit",
                   noisy, clean, 255.0, methods=("n2v", "pn2v", "pn2v-bootstrap"),
                   noise_model={"kind": "gmm", "pairs": (noisy, clean),
                                "what": "the scored image's own (raw, 50-frame average) pair: the paper calibrates "
                                        "on other fields of the same microscope, not in the shared folder, so "
                                        "this row is PN2V with a matched noise model (a diagnosis)"},
                   why_not={"n2n": "one raw frame per field", "noise2stack": "a single image",
                            "care": "no training pairs apart from the scored image", "n2v2": "not applied",
                            "struct-n2v": "not applied"},
                   paper=PAPERS["fish"])


def _hagen(name: str, a: argparse.Namespace) -> Dataset:
    kind = name.split("-", 1)[1]
    stem = {"mito": "mito-confocal", "nucleus": "nucleus", "membrane": "membrane"}.get(kind)
    if stem is None:
        raise SystemExit(f"unknown data set {name!r}; choose from {', '.join(ALL_DATASETS)}")
    folder = dataset_dir("hagen_gigadb_8bit", a.data, "*.png")
    low, high = _read(folder / f"{stem}-lowsnr-sample.png"), _read(folder / f"{stem}-highsnr-sample.png")
    crop = a.crop or {"mito": 512, "nucleus": None, "membrane": 1024}[kind]
    box = (slice(0, low.shape[0]), slice(0, low.shape[1]))
    if crop and crop < low.shape[0]:
        y0, x0 = (low.shape[0] - crop) // 2, (low.shape[1] - crop) // 2
        box = (slice(y0, y0 + crop), slice(x0, x0 + crop))
    noisy, clean = _tiles(low[box], TILE), _tiles(high[box], TILE)
    if a.images:
        noisy, clean = noisy[:a.images], clean[:a.images]
    t_noisy, t_clean = _tiles(low, TILE, skip=box), _tiles(high, TILE, skip=box)
    folds, care_note = [], "the whole image is scored: no training tiles apart from it (pass --crop)"
    if len(t_noisy):
        folds = [CareFold(t_noisy, _onto(t_clean, t_noisy))]
        care_note = (f"CARE trained on the {len(t_noisy)} tiles of {TILE}x{TILE} outside the scored crop (the same "
                     f"acquisition), targets mapped a*high+b onto each low-SNR tile")
    scored = f"central {crop}x{crop}" if box[0].stop - box[0].start < low.shape[0] else "whole image"
    noise = ("the low-SNR noise shows no anisotropy (COSDD's negative control)" if kind == "nucleus"
             else "the low-SNR noise is row-correlated")
    return Dataset(name, f"Hagen et al. {stem} low vs high SNR ({scored} cut into {len(noisy)} tiles of {TILE}x{TILE}, "
                   f"the images of the statistics); each tile's output fitted a*x+b to the high-SNR tile before "
                   f"PSNR/SSIM, peak 255; the high-SNR reference is not noise-free (its noise counts against sharp "
                   f"outputs) and {noise}", noisy, clean, 255.0,
                   fit=True, methods=("n2v", "n2v2", "struct-n2v", "care"), care_folds=folds, care_note=care_note,
                   residue=True,
                   paper=PAPERS["hagen"] if kind == "mito" else "",
                   why_not={"n2n": "one low-SNR frame (N2N needs two noisy acquisitions)", "noise2stack": "no stack",
                            "pn2v": "no calibration data here", "pn2v-bootstrap": "row-correlated noise: a "
                            "pixel-wise noise model does not describe it"})


TIRF_NEIGHBOURS = 2  # Noise2Stack's planes on each side of a TIRF frame (a static field: 2, not 1)


def window_out_reference(frames: np.ndarray, neighbours: int) -> np.ndarray:
    """Per-frame reference of a stack of repeated acquisitions: for each frame ``t``, the mean
    of every frame outside ``t``'s input window.

    The window is what Noise2Stack reads to denoise ``t`` (``neighbours`` planes on each side,
    with its end-plane rule, ``tiling.reflect_indices(mode="stack")``) plus ``t`` itself, so
    no frame whose noise reaches the input (or the training target) also sits in the reference:
    frame 0 with 2 neighbours is scored against the mean of frames 3 .. N-1, an inner frame
    against the N - 5 frames outside ``t-2 .. t+2``.

    Parameters
    ----------
    frames : ndarray, shape (N, H, W)
        Repeated noisy acquisitions of a static field.
    neighbours : int
        Planes per side of the input window (``k`` of Noise2Stack); 0 leaves out ``t`` alone.

    Returns
    -------
    ndarray of float32, shape (N, H, W)
        Frame ``t``'s reference at index ``t``.
    """
    from bigdenoise.tiling import reflect_indices

    n = len(frames)
    total = frames.sum(axis=0, dtype=np.float64)
    out = np.empty(frames.shape, np.float32)
    for t in range(n):
        window = np.union1d(reflect_indices(t - neighbours, t + neighbours + 1, n, mode="stack"), [t])
        if len(window) >= n:
            raise ValueError(f"{n} frames leave none outside frame {t}'s window of {neighbours} on each side")
        out[t] = (total - frames[window].sum(axis=0, dtype=np.float64)) / (n - len(window))
    return out


def _tirf(name: str, a: argparse.Namespace, neighbours: int = TIRF_NEIGHBOURS) -> Dataset:
    """ACsN sCMOS TIRF, ``TIRF_200Hz.tif``: 20 repeated frames of a static field, every frame scored.

    There is no clean image. Frame ``t`` is scored against the mean of the frames outside its
    input window (:func:`window_out_reference`): the window is ``t`` and its ``neighbours``
    planes on each side, which Noise2Stack (run with the same ``neighbours``) reads as input
    and N2N's target (frame ``t ^ 1``) lies in; a reference holding those frames would share
    their noise with the input and favour the stack methods (about 1 dB with the full 20-frame
    mean). Every method is scored against the same references. The PSNR/SSIM peak is the range
    of the 20-frame mean, one value for all frames.
    """
    import tifffile

    folder = dataset_dir("acsn_scmos_tirf", a.data, "TIRF_200Hz.tif")
    frames = np.asarray(tifffile.imread(folder / "TIRF_200Hz.tif"), dtype=np.float32)
    mean = frames.mean(axis=0)
    reference = window_out_reference(frames, neighbours)
    n, width = len(frames), 2 * neighbours + 1
    swap = np.arange(n) ^ 1  # 0<->1, 2<->3, ...: inside every frame's window when neighbours >= 1
    return Dataset(name, f"ACsN sCMOS TIRF: {n} repeated 256x256 frames of a static field (uint16 ADU as "
                   f"float32); reference for frame t: the mean of the frames outside its input window t-{neighbours}"
                   f"..t+{neighbours} ({n - width} frames, up to {n - neighbours - 1} near the ends), so no frame that "
                   f"Noise2Stack reads or N2N targets is in it; PSNR/SSIM peak = range of the {n}-frame mean "
                   f"({float(np.ptp(mean)):.1f} ADU), no fit; every frame scored; Noise2Stack along the frames "
                   f"(static field: {neighbours} on each side)",
                   frames, reference, float(np.ptp(mean)),
                   methods=("n2v", "n2v2", "struct-n2v", "pn2v", "pn2v-bootstrap", "n2n", "noise2stack"),
                   second=frames[swap], noise_model={"kind": "gmm", "repeats": True}, neighbours=neighbours,
                   paper=PAPERS["tirf"],
                   why_not={"care": "the only clean reference is the test frames' own mean",
                            "noise2stack-copy": "a frame's second acquisition is its neighbour in the stack (the "
                                                "input would hold the target's noise)"})


def _timelapse(name: str, a: argparse.Namespace) -> Dataset:
    import tifffile

    folder = dataset_dir("cell_migration_timelapse", a.data, "*.tif")
    raw = np.asarray(tifffile.imread(folder / "cancer_cell_migration_crop.tif"), dtype=np.float32)
    lo, hi = np.percentile(raw, [0.1, 99.9])
    ref = np.clip((raw - lo) / (hi - lo) * 255, 0, None).astype(np.float32)
    if a.images:
        ref = ref[:a.images]
    own = float(np.mean([haar_sigma(x) for x in ref]))
    return Dataset(name, f"Cell-migration time-lapse (Tinevez & Jacquemet), {len(ref)} frames 130x130 along T; "
                   f"reference: the recorded frames mapped to 0..255 (0.1/99.9 percentiles, clipped below at 0); "
                   f"noisy: {PG_TEXT}; N2N target: a second draw; the reference keeps its own moderate noise "
                   f"(sigma about {own:.1f} by the MAD estimate, against 20-50 added), which caps the measurable PSNR; "
                   f"peak 255, no fit; Noise2Stack along T, 1 frame on each side (the cells move: the mean of a "
                   f"frame's two clean neighbours matches it at only {neighbour_ceiling(ref):.1f} dB, a ceiling "
                   f"for self-supervised Noise2Stack; copy-supervised Noise2Stack also sees the frame and learns "
                   f"from its second draw)", _poisson_gaussian(ref, a.seed), ref, 255.0,
                   methods=("n2v", "n2v2", "n2n", "noise2stack", "noise2stack-copy"),
                   second=_poisson_gaussian(ref, a.seed + 1000),
                   stack_axis="T", neighbours=1, paper=PAPERS["stack"],
                   why_not={"care": "no clean frames apart from the scored ones",
                            "pn2v": "not wired for these data", "pn2v-bootstrap": "not wired for these data",
                            "struct-n2v": "noise is pixel-independent"})


def _phantom3d(name: str, a: argparse.Namespace) -> Dataset:
    shape = (a.images or 32, 256, 256)
    clean = phantom3d(shape, a.seed)
    train = phantom3d(shape, a.seed + 1)
    return Dataset(name, f"generated smooth 3D phantom (datasets.phantom3d, seed {a.seed}), {shape[0]} planes "
                   f"{shape[1]}x{shape[2]} along Z: soft ellipsoids, small spots, a faint background, Gaussian PSF "
                   f"(sigma 1.5 planes in Z, 1 px in YX), 0..255; noisy: {PG_TEXT}; every plane scored, peak 255, no "
                   f"fit; N2V is 2D on the planes; Noise2Stack along Z, 1 plane on each side (the mean of a plane's "
                   f"two clean neighbours matches it at {neighbour_ceiling(clean):.1f} dB); N2N target: a second "
                   f"draw", _poisson_gaussian(clean, a.seed), clean, 255.0,
                   methods=("n2v", "n2v2", "n2n", "care", "noise2stack", "noise2stack-copy"),
                   second=_poisson_gaussian(clean, a.seed + 1000),
                   care_folds=[CareFold(_poisson_gaussian(train, a.seed + 2000), train)],
                   care_note=f"CARE trained on a second phantom (seed {a.seed + 1}) with the same noise",
                   stack_axis="Z", neighbours=1, paper=PAPERS["stack"],
                   why_not={"pn2v": "not wired for these data", "pn2v-bootstrap": "not wired for these data",
                            "struct-n2v": "noise is pixel-independent"})


def neighbour_ceiling(clean: np.ndarray) -> float:
    """Mean PSNR (peak 255) of each inner clean plane against the mean of its two clean
    neighbours: what a prediction from the neighbours alone (self-supervised Noise2Stack) can
    reach at best when the planes differ."""
    return float(np.mean([metrics.psnr((clean[t - 1] + clean[t + 1]) / 2, clean[t], 255.0)
                          for t in range(1, len(clean) - 1)]))


def haar_sigma(x: np.ndarray) -> float:
    """Gaussian noise sigma by Donoho's MAD of the finest diagonal Haar coefficients."""
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    v = np.asarray(x[:h, :w], np.float64)
    hh = (v[0::2, 0::2] - v[0::2, 1::2] - v[1::2, 0::2] + v[1::2, 1::2]) / 2
    return float(np.median(np.abs(hh)) / 0.6745)
