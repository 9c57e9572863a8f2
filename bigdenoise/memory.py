"""A worker's memory over thousands of blocks: the allocator policy applied between blocks, and a
worker plugin that records a worker's resident memory against the blocks it has done.

Workers run with ``runtime.ALLOCATOR_ENV`` (one glibc arena, no ``mmap``, no automatic trim), so
that a forward pass reuses the pages of the one before instead of faulting them in again. Left
alone, such a heap only grows: free holes left between live allocations by the blocks' arrays
(two task threads allocate and free them interleaved) stay resident, and a worker's peak creeps
up with the blocks it has processed. :func:`after_block` hands the free pages back when the
worker's resident memory has grown past its first blocks' (a worker of the long benchmark
went back to about 500 MB after each trim, to the end). Over 1,000 blocks per worker its peak
ended 1.08-1.09x its peak after 16 blocks (benchmarks/RESULTS.md, section scale-long). Workers
must also run without Dask's statistical profiler (``clusters.WORKER_CONFIG_ENV``): its stack
samples grow the live heap, and with it the peak, for the first 1000 s.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Hashable

from distributed import WorkerPlugin

from .runtime import release_memory

TRIM_ENV = "BIGDENOISE_TRIM_BETWEEN_BLOCKS"
"""Set in a worker's environment, for measuring the policy: ``0`` turns :func:`after_block` off,
``always`` trims after every block; unset (or anything else), the bounded heap."""

BLOCK_KEY = "bigdenoise-block-"  # execute.run_blocks's task keys


SLACK = 0.05
"""How far above its baseline a worker's resident memory may be after a block before
:func:`after_block` trims the heap."""
WARMUP_BLOCKS = 4
"""The blocks whose largest resident memory, measured after each, is the baseline."""

_lock = threading.Lock()
_run: Hashable = None
_blocks = 0
_baseline = 0
_trimmed = False  # the last block of the run ended with a trim


def after_block(run: Hashable = None) -> None:
    """The allocator policy between two blocks of a worker: a bounded heap.

    After the first :data:`WARMUP_BLOCKS` blocks of ``run`` (any value naming the prediction;
    a new one starts a new baseline), whose largest resident memory becomes the baseline (the
    model, the caches, two blocks' working sets), the heap is trimmed with glibc's
    ``malloc_trim(0)`` (``runtime.release_memory``), which returns every free page to the OS,
    whenever the resident memory after a block is more than :data:`SLACK` above the baseline.
    Above it again one block after a trim, the worker's working set is larger than its first
    blocks showed: that resident memory becomes the baseline.
    A trim costs the next block faulting its working set in again, which the allocator
    settings are there to avoid, so it is done only when the heap has grown, not after every
    block. Linux only; elsewhere a no-op. :data:`TRIM_ENV` changes the policy for measurements.
    """
    global _run, _blocks, _baseline, _trimmed
    mode = os.environ.get(TRIM_ENV, "")
    if mode == "0" or not sys.platform.startswith("linux"):
        return
    if mode == "always":
        release_memory()
        return
    rss = _resident_bytes()
    with _lock:
        if run != _run:
            _run, _blocks, _baseline, _trimmed = run, 0, 0, False
        _blocks += 1
        trim = _blocks > WARMUP_BLOCKS and rss > (1 + SLACK) * _baseline
        if _blocks <= WARMUP_BLOCKS or (trim and _trimmed):
            # warming up, or above the bound again one block after a trim: a block's working set
            # is larger than the first blocks showed, not a heap grown by free holes
            _baseline, trim = max(_baseline, rss), False
        _trimmed = trim
    if trim:
        release_memory()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> tuple[float, float]:
    """This process's resident memory now and its peak so far, in MB (2**20 bytes).

    The peak is Linux's ``VmHWM``, the high-water mark of this program since it started;
    ``ru_maxrss`` (used elsewhere) would also count the RSS of the parent it was forked from,
    e.g. a benchmark that wrote a 2 GB volume before starting its workers.
    """
    import psutil

    rss = psutil.Process().memory_info().rss / 2**20
    try:
        with open("/proc/self/status") as f:
            return rss, next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return rss, peak / 2**20 if sys.platform == "darwin" else peak / 1024


class BlockMemoryLog(WorkerPlugin):
    """Worker plugin recording, each time a block task of this worker finishes, a row
    ``(blocks done by this worker, RSS MB, peak RSS MB so far)`` (:func:`rss_mb`).

    Register it with ``client.register_plugin(BlockMemoryLog(), name=BlockMemoryLog.name)``
    before a prediction and read the rows with :func:`memory_rows`. For benchmarks and tests:
    the rows grow with the blocks (a few dozen bytes each).
    """

    name = "bigdenoise-memory-log"

    def setup(self, worker) -> None:
        self.rows: list[tuple[int, float, float]] = []

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "memory" and start == "executing" and str(key).startswith(BLOCK_KEY):
            self.rows.append((len(self.rows) + 1, *rss_mb()))


def memory_rows(client) -> dict[str, list[tuple[int, float, float]]]:
    """Each worker's :class:`BlockMemoryLog` rows, by worker address (empty without the plugin)."""

    def rows(dask_worker) -> list:
        plugin = dask_worker.plugins.get(BlockMemoryLog.name)
        return list(getattr(plugin, "rows", []))

    return client.run(rows)
