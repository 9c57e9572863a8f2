"""The stripe residue A of a finished ``quality.py`` run, split by where the truth is flat.

A denoiser's residual (output − truth) holds the noise it left and the signal it lost (blur).
Both can be correlated along the rows: a denoiser of row stripes must average across the rows
more than along them, so fine horizontal structure it blurs also leaves a positive A. Where the
truth is flat (``quality.flat_pixels``: the 30 % of pixels with the lowest local standard
deviation) there is little to blur, and A is mostly that of the noise left: the stripes (their
sign) and the white noise the denoiser's averaging across the stripes correlated (the other sign).
The row ``clean, blurred`` is the truth itself under an isotropic Gaussian blur of ``BLUR`` px,
no noise at all: the residue of a denoiser that left no noise and only blurred, the images' own
part of A. A is scale-free, so the faint texture of flat pixels still counts there.

Usage: the ``quality.py`` flags of the run (data sets, ``--stripe-noise``, ``--work``), e.g.
``python benchmarks/residue_split.py --datasets bsd68-stripes-rows --work WORKDIR``. It reads the
outputs that run kept (``WORKDIR/<data set>/seed*/denoised-*.zarr``; without ``--work`` only the
noisy input and the blurred truth), rebuilds the truth as the run did and prints one markdown
table per data set: A on all pixels (as ``quality.py`` reports it), on the flat pixels and on the
others, per row the mean over images and seeds [min, max of the seeds' means].
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402
from datasets import load_dataset  # noqa: E402

BLUR = 1.0
"""Sigma (px) of the isotropic Gaussian blur of the ``clean, blurred`` row."""


def split(output: np.ndarray, ds) -> tuple[float, float, float]:
    """Mean over images of A on all, flat and detailed pixels of ``output`` (N, H, W), scored as
    ``quality.score`` scores it (fitted where the data set is)."""
    _, _, scored = quality.score(ds, output)
    values = []
    for x, truth in zip(scored, ds.clean):
        flat = quality.flat_pixels(truth)
        values.append((quality.stripe_residue(x, truth), quality.stripe_residue(x, truth, where=flat),
                       quality.stripe_residue(x, truth, where=~flat)))
    return tuple(float(v) for v in np.mean(values, axis=0))


def main(argv=None) -> int:
    from scipy import ndimage

    a = quality.parse_args(argv)
    for name in a.datasets:
        ds = load_dataset(name, a)
        blurred = np.stack([ndimage.gaussian_filter(c, BLUR) for c in ds.clean])
        rows: dict[str, list[tuple[float, float, float]]] = {
            "noisy": [split(ds.noisy, ds)], f"clean, blurred (sigma {BLUR:g} px, no noise)": [split(blurred, ds)]}
        if a.work is None:
            _print(name, rows)
            continue
        folder = Path(a.work) / name
        outputs = sorted(folder.glob("seed*/denoised-*.zarr"))
        if not outputs:
            raise SystemExit(f"{folder}: no denoised-*.zarr outputs under seed*/")
        for out in outputs:
            row = out.name[len("denoised-"):-len(".zarr")]
            rows.setdefault(row, []).append(split(np.asarray(zarr.open_array(str(out), mode="r")[:]), ds))
        _print(name, rows)
    return 0


def _print(name: str, rows: dict[str, list[tuple[float, float, float]]]) -> None:
    print(f"{name}: stripe residue A by pixels (mean over images; over seeds [min, max])\n")
    print("| method | all pixels | flat 30 % (mostly noise left) | the other 70 % |\n| --- | --- | --- | --- |")
    for row, per_seed in rows.items():
        cells = [f"{np.mean(v):+.3f}" + (f" [{min(v):+.3f}, {max(v):+.3f}]" if len(v) > 1 else "")
                 for v in zip(*per_seed)]
        print(f"| {row} | {' | '.join(cells)} |")
    print()


if __name__ == "__main__":
    raise SystemExit(main())
