"""Process-level speed settings shared by training and inference.

oneDNN's convolutions are several times faster on the CPU with channels-last tensors (NHWC /
NDHWC) than with PyTorch's default layout, and so is cuDNN with tensor cores.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import threading

import numpy as np
import torch

from .errors import ConfigError


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


_staging = threading.local()


def to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``device``.

    On a CUDA device the copy goes through a page-locked (pinned) host buffer, kept per thread
    and grown as needed, so the host->device transfer runs at full bus speed without pinning
    new memory for every batch. Elsewhere ``x`` is wrapped without a copy.
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return torch.from_numpy(x).to(device)
    x = np.ascontiguousarray(x)
    buffer = getattr(_staging, "buffer", None)
    if buffer is None or buffer.numel() < x.nbytes:
        buffer = _staging.buffer = torch.empty(x.nbytes, dtype=torch.uint8).pin_memory()
    host = buffer[: x.nbytes].view(torch.from_numpy(x).dtype).view(x.shape)
    host.copy_(torch.from_numpy(x))
    # The next call overwrites the buffer only after the caller has read this batch's result
    # back, which waits for the stream, so the asynchronous copy has finished by then.
    return host.to(device, non_blocking=True)


def free_device_memory(device: torch.device) -> int | None:
    """Bytes a CUDA ``device`` can still give this process's tensors, None elsewhere: what
    ``cudaMemGetInfo`` reports free plus what torch's caching allocator holds unused (after a
    first block, most of the memory a forward pass needs sits in that cache)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(0, cached))


def check_compiler(device: str) -> None:
    """Raise a ConfigError when ``torch.compile`` cannot build kernels for ``device`` here.

    On a CPU, TorchInductor compiles C++ with ``$CXX`` or ``g++``; a missing compiler would
    otherwise surface as a failure of every block. Workers of a remote cluster need one too.
    """
    if device.startswith("cuda"):
        return
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise ConfigError(f"--compile needs a C++ compiler on a CPU ({compiler} was not found on PATH): install "
                          f"g++ (e.g. apt install g++, or module load gcc on a cluster), set CXX to another "
                          f"compiler, or drop --compile")
