"""Process-level speed settings shared by training and inference.

oneDNN's convolutions are several times faster on the CPU with channels-last tensors (NHWC /
NDHWC) than with PyTorch's default layout, and so is cuDNN with tensor cores.
"""

from __future__ import annotations

import ctypes
import sys

import torch


def memory_format(ndim: int) -> torch.memory_format:
    """The channels-last format for a batch with ``ndim`` spatial axes."""
    return torch.channels_last_3d if ndim == 3 else torch.channels_last


def to_fast_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout when it is a 2D or 3D image batch, else unchanged."""
    if x.ndim in (4, 5):
        return x.contiguous(memory_format=memory_format(x.ndim - 2))
    return x


def nets_to_fast_layout(nets: dict, ndim: int) -> None:
    for net in nets.values():
        net.to(memory_format=memory_format(ndim))


def tune_allocator() -> None:
    """Keep freed activation buffers in the heap instead of returning them to the OS.

    glibc hands buffers above 128 KiB back with munmap and maps them again on the next
    forward pass; the page faults this costs can dominate CPU convolutions.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 2**30)
