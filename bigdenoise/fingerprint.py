"""What identifies a volume's content, cheaply at terabyte scale: ``--resume`` checks it, not the path."""

from __future__ import annotations

import hashlib

import numpy as np

from .geometry import Box
from .volume import Volume, sample_chunk_boxes

WHOLE_BYTES = 64 * 2**20  # volumes up to this size are hashed voxel by voxel
SAMPLED_CHUNKS = 8  # larger ones: this many storage chunks chosen at random (seed 0) ...
SAMPLED_EDGE = 64  # ... each read up to this many voxels per axis from its corner


def fingerprint(volume: Volume) -> dict:
    """Shape, dtype, chunks, axes and a SHA-256 of the voxels: all of them for volumes of at most
    64 MiB, else a fixed sample of 8 chunks (the same chunks for the same shape and chunking).

    Returns
    -------
    dict
        JSON-ready; two volumes with equal fingerprints are taken to hold the same data.
    """
    if volume.nbytes <= WHOLE_BYTES:
        boxes, content = [Box((0,) * volume.ndim, volume.shape)], "all voxels"
    else:
        boxes = [Box(b.offset, tuple(min(s, SAMPLED_EDGE) for s in b.shape))
                 for b in sample_chunk_boxes(volume, SAMPLED_CHUNKS, seed=0)]
        content = f"{len(boxes)} sampled chunks"
    digest = hashlib.sha256()
    for box in boxes:
        digest.update(repr((box.offset, box.shape)).encode())
        digest.update(np.ascontiguousarray(volume.read(box)).tobytes())
    return {"shape": list(volume.shape), "dtype": volume.dtype.str, "chunks": list(volume.chunks),
            "axes": volume.axes, "content": content, "sha256": digest.hexdigest()}


def differences(old: dict | None, new: dict) -> list[str]:
    """The fields of two fingerprints that differ (all of them when ``old`` is missing)."""
    if not isinstance(old, dict):
        return ["content (no fingerprint was recorded)"]
    return [k for k in new if old.get(k) != new[k]]
