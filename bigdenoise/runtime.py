"""Process-level speed settings shared by training and inference.

oneDNN's convolutions are several times faster on the CPU with channels-last tensors (NHWC /
NDHWC) than with PyTorch's default layout, and so is cuDNN with tensor cores.
"""

from __future__ import annotations

import contextlib
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


# tune_allocator's settings as glibc's environment variables, for worker processes from their
# start: set later, they miss the arenas of threads started earlier (see tune_allocator).
ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**60)}


# glibc's mallopt options (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -3, -4, -8
_full_settings = False


def _libc():
    """glibc, or None off Linux or where it cannot be loaded."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _mallopt(*settings: tuple[int, int]) -> bool:
    libc = _libc()
    if libc is None:
        return False
    for option, value in settings:
        libc.mallopt(option, value)
    return True


def tune_allocator() -> None:
    """Keep freed feature maps in the process's heap instead of returning them to the OS.

    glibc serves large allocations (above at most 32 MiB) with ``mmap`` and hands them back with
    ``munmap`` when freed, so every forward pass of a large tile faults its feature maps in
    again, page by page: 1.2 GB of page faults and a third of the time of a 1072x1072 2D forward
    pass on the benchmark CPU. Here no allocation is served by ``mmap`` (``M_MMAP_MAX`` 0), the
    heap is never trimmed (``M_TRIM_THRESHOLD`` -1: a forward pass that frees more than the
    threshold at the heap's top would fault it in again on the next pass), and threads started
    from now on allocate from the main heap (``M_ARENA_MAX`` 1): a thread's own arena would
    still map large buffers. Threads that allocated before this call keep their own arenas
    (and hand them on to later threads), which then grow untrimmed, so call it first thing in a
    process, or start the process with :data:`ALLOCATOR_ENV`; for a process that may already
    have such threads, use :func:`tune_worker_allocator`. The process keeps its peak heap until
    it exits or calls :func:`release_memory`. Linux with glibc only; elsewhere a no-op.
    """
    global _full_settings
    _full_settings = _mallopt((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))


def tune_worker_allocator() -> None:
    """The allocator settings for a worker process, which may already run threads.

    Nothing to do when it started with :data:`ALLOCATOR_ENV` or is this process after
    :func:`tune_allocator`. Otherwise only the safe part: ``mmap`` for allocations above 32 MiB
    (glibc's maximum threshold) and a 1 GiB trim threshold. :func:`tune_allocator`'s settings
    applied late doubled a worker's peak memory in ``benchmarks/scale.py`` (2.5 GB vs 1.4 GB).
    """
    if _full_settings or all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items()):
        return
    _mallopt((M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 2**30))


@contextlib.contextmanager
def true_fp32(device: torch.device):
    """Within the block, float32 convolutions and matrix products on a CUDA ``device`` round
    nothing to TF32.

    PyTorch lets cuDNN's convolutions take TF32 (a 10-bit mantissa) by default on Ampere and
    later GPUs: about 1e-3 relative error, which breaks tiled == whole at 1e-4 because the two
    run different shapes. The switches are process-wide, so callers that run forward passes in
    several threads hold one lock around them (``infer.denoise_block``'s ``compute_lock``).
    """
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def release_memory() -> None:
    """Return the free memory of this process's heap to the OS (glibc's ``malloc_trim``);
    for a process that goes on after prediction with :func:`tune_allocator`'s settings."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


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
