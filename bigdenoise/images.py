"""Inputs kept in one plain file: NumPy ``.npy`` arrays and single pictures (PNG, JPEG, BMP, ...).

A ``.npy`` file is memory-mapped, so only the voxels read leave the disk. A picture is read
whole (one frame, at most a few hundred megapixels) as its stored values: a palette picture
gives its indices (microscopy PNGs keep the intensity there and a lookup table as the palette),
a grey picture stored as RGB gives one channel, and a colour picture its channels first
(``CYX``); an alpha channel is dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

NPY_SUFFIX = ".npy"
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm", ".pnm")


def open_npy(source: str, path: Path) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped read-only (any shape; axes are decided by
    the caller)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy names what it could not parse
        raise InputError(f"{source} could not be read as a NumPy .npy file ({e})") from None


def open_picture(source: str, path: Path) -> tuple[np.ndarray, str | None]:
    """The stored values of a single-frame picture and the axes they imply.

    Returns
    -------
    array, axes
        ``(Y, X)`` and None (2D: the axes are YX), or ``(C, Y, X)`` and ``"CYX"`` for a
        picture with colour channels that differ.
    """
    from PIL import Image

    try:
        with Image.open(path) as picture:
            frames = getattr(picture, "n_frames", 1)
            if frames > 1:
                raise InputError(f"{source} holds {frames} frames; only single pictures are read: save the frames "
                                 "as a TIFF stack or as one file per frame in a folder")
            has_alpha = picture.mode in ("LA", "La", "PA", "RGBA", "RGBa")
            array = np.asarray(picture)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow names what it could not parse
        raise InputError(f"{source} could not be read as a picture ({e})") from None
    if array.ndim == 3 and has_alpha:
        array = array[..., :-1]
    if array.ndim == 3 and (array.shape[-1] == 1 or (array == array[..., :1]).all()):
        array = array[..., 0]
    if array.ndim == 3:
        return np.ascontiguousarray(np.moveaxis(array, -1, 0)), "CYX"
    return array, None
