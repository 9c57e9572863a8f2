"""Count writes per Zarr store key across processes: ``LocalStore.set`` wrapped to append one
line per call to a log file opened with O_APPEND (one ``os.write`` per line, so lines from
several processes never interleave), in this process (:func:`install`) or in every Dask worker
(:class:`WriteLog`, a worker plugin). Imported by the workers: keep it free of test-only imports."""

import os
from pathlib import Path

import zarr.storage
from distributed import WorkerPlugin


def _append(log_path: str, line: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def install(log_path) -> callable:
    """Log every ``LocalStore.set`` of this process as ``pid<TAB>store root<TAB>key``; returns
    a function that removes the wrapper."""
    log_path = str(log_path)
    cls = zarr.storage.LocalStore
    original = cls.set

    async def set(self, key, value):
        _append(log_path, f"{os.getpid()}\t{Path(self.root).resolve()}\t{key}\n")
        return await original(self, key, value)

    cls.set = set
    return lambda: setattr(cls, "set", original)


class WriteLog(WorkerPlugin):
    """Installs :func:`install` in each worker (those present and those joining later)."""

    def __init__(self, log_path):
        self.log_path = str(log_path)

    def setup(self, worker):
        self._undo = install(self.log_path)

    def teardown(self, worker):
        self._undo()


def read_log(log_path) -> list[tuple[int, str, str]]:
    """The logged writes: ``(pid, store root, key)``."""
    path = Path(log_path)
    if not path.exists():
        return []
    return [(int(p), root, key) for p, root, key in (line.split("\t") for line in path.read_text().splitlines())]
