"""Shared fixtures: small real volumes on disk and tiny trained models."""

from pathlib import Path

import numpy as np
import pytest
import zarr

import bigdenoise as bd

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY = dict(steps=3, val_every=3, batch_size=4, val_patches=4, stats_chunks=4,
            net={"depth": 2, "features": 4})


def smooth_volume(shape, seed=0, noise=0.3):
    """A smooth random signal plus Gaussian noise (float32), and its clean version."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    clean = sum(np.sin((3 + 2 * i) * g * np.pi + rng.uniform(0, 6)) for i, g in enumerate(grids))
    clean = (clean * 40 + 300).astype(np.float32)
    return (clean + rng.normal(0, noise * 40, shape)).astype(np.float32), clean


def write_zarr(path, data, chunks, axes, zarr_format=3):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                            attributes={"axes": axes}, zarr_format=zarr_format)
    arr[...] = data
    return str(path)


@pytest.fixture(scope="session")
def model_2d(tmp_path_factory):
    """A tiny N2V model trained on an SYX stack, with its input path and data."""
    root = tmp_path_factory.mktemp("model2d")
    data, _ = smooth_volume((3, 64, 72))
    src = write_zarr(root / "in.zarr", data, (1, 32, 32), "SYX")
    bd.train(src, root / "model", progress=False, patch=(32, 32), **TINY)
    return root / "model", src, data


@pytest.fixture(scope="session")
def model_3d(tmp_path_factory):
    """A tiny 3D N2V model trained on a ZYX volume, with its input path and data."""
    root = tmp_path_factory.mktemp("model3d")
    data, _ = smooth_volume((24, 40, 36), seed=1)
    src = write_zarr(root / "in.zarr", data, (8, 16, 16), "ZYX")
    bd.train(src, root / "model", progress=False, patch=(8, 16, 16), **TINY)
    return root / "model", src, data
