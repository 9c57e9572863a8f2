"""Intensity normalisation: robust statistics from a random sample of chunks (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Intensity statistics of a volume, estimated from a sample of its chunks."""

    mean: float
    std: float
    p_low: float
    p_high: float
    n_voxels: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "p_low": self.p_low, "p_high": self.p_high,
                "n_voxels": self.n_voxels}

    @staticmethod
    def from_dict(d: dict) -> Stats:
        return Stats(float(d["mean"]), float(d["std"]), float(d["p_low"]), float(d["p_high"]),
                     int(d["n_voxels"]))


def stats_from_samples(samples: list[np.ndarray], max_voxels: int = 4_000_000, seed: int = 0) -> Stats:
    """Mean, standard deviation and 0.1/99.9 percentiles of the finite values in ``samples``.

    At most ``max_voxels`` values (drawn at random) enter the estimate.
    """
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples])
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite values to estimate intensity statistics from")
    if values.size > max_voxels:
        values = np.random.default_rng(seed).choice(values, max_voxels, replace=False)
    std = float(values.std())
    return Stats(
        mean=float(values.mean()),
        std=std if std > 0 else 1.0,
        p_low=float(np.percentile(values, 0.1)),
        p_high=float(np.percentile(values, 99.9)),
        n_voxels=int(values.size),
    )


def normalize(x: np.ndarray, stats: Stats) -> np.ndarray:
    """``(x - mean) / std`` as float32."""
    return ((np.asarray(x, dtype=np.float32) - np.float32(stats.mean)) / np.float32(stats.std)).astype(np.float32, copy=False)


def denormalize(x: np.ndarray, stats: Stats) -> np.ndarray:
    """Inverse of :func:`normalize` (float32)."""
    return (np.asarray(x, dtype=np.float32) * np.float32(stats.std) + np.float32(stats.mean)).astype(np.float32, copy=False)
