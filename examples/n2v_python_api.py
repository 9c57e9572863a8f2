"""Noise2Void from Python: convert a TIFF stack, train, denoise blockwise, look at the result.

    python examples/n2v_python_api.py STACK.tif WORKDIR [--axes SYX] [--minutes 5]

Every step is the library call the CLI wraps; see README.md for the command-line equivalent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import zarr

import bigdenoise as bd
from bigdenoise.convert import convert, describe, format_description


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stack", help="a TIFF, Zarr or OME-Zarr volume")
    p.add_argument("work", help="folder for the Zarr copy, the model and the result")
    p.add_argument("--axes", default=None, help="e.g. SYX for a stack of 2D images, ZYX for a volume")
    p.add_argument("--minutes", type=float, default=5.0, help="training time")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)

    # 1. a chunked Zarr copy (lazy reads from here on; the input file is never modified)
    volume = convert(a.stack, work / "noisy.zarr", axes=a.axes, overwrite=True)
    print(format_description(describe(volume)))

    # 2. train N2V on random patches read straight from the Zarr chunks
    model = bd.train(work / "noisy.zarr", work / "model", method="n2v", max_time=a.minutes * 60,
                     overwrite=True, seed=0)
    print("trained:", model.info)

    # 3. denoise block by block on a LocalCluster of worker processes, into Zarr
    summary = bd.predict(work / "noisy.zarr", work / "model", work / "denoised.zarr", cluster="local",
                         overwrite=True)
    print(f"denoised {summary['voxels']:,} voxels at {summary['voxels_per_s'] / 1e6:.2f} Mvox/s")

    # 4. the result opens as a plain Zarr array of the input's shape
    out = zarr.open_array(str(work / "denoised.zarr"), mode="r")
    print(out.shape, out.dtype, dict(out.attrs)["axes"])


if __name__ == "__main__":
    main()
