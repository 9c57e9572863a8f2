"""Where an in-memory input's data live, and which clusters can read it.

A dask array made by ``dask.array.from_zarr`` (and not sliced or computed on since) reads a Zarr
array on a local or shared filesystem: ``volume.open_volume`` opens that array by its path
instead, so worker processes on any cluster reopen it there (``Volume.__reduce__``) rather than
receive the dask graph from the client. A numpy array, or a dask array computed from anything
else, lives in the client's memory: ``predict`` runs it on threads next to it (``--cluster
local``), and refuses a cluster on other machines, where it cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError

_FILE_PROTOCOLS = {"file", "local"}
_SAME_MACHINE = ("threads", "local", "auto")


def zarr_path(array: Any) -> str | None:
    """The path of the Zarr array that the dask array ``array`` reads as a whole, or None.

    Only an untouched ``da.from_zarr`` array qualifies (its graph holds the ``zarr.Array`` under
    ``original-<name>`` and its shape is that array's), stored in a ``LocalStore`` or in an
    fsspec store on the local filesystem.
    """
    import zarr

    name = getattr(array, "name", "")
    if not name.startswith("from-zarr-"):
        return None
    stored = dict(array.__dask_graph__()).get(f"original-{name}")
    if not isinstance(stored, zarr.Array) or tuple(stored.shape) != tuple(array.shape):
        return None
    root = _store_root(stored.store)
    if root is None:
        return None
    return str(Path(root, stored.path).absolute())


def _store_root(store: Any) -> str | None:
    from zarr.storage import FsspecStore, LocalStore

    if isinstance(store, LocalStore):
        return str(store.root)
    if isinstance(store, FsspecStore):
        fs = getattr(store.fs, "sync_fs", store.fs)
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        if _FILE_PROTOCOLS & set(protocols):
            return str(store.path)
    return None


def cluster_for_memory(cluster: str, source: str) -> str:
    """The cluster an input held in the client's memory (no path) runs on: threads in this
    process for ``threads`` and ``local``; a ConfigError for a cluster of other machines."""
    if cluster in _SAME_MACHINE:
        return "threads"
    raise ConfigError(f"{source} is held in this process's memory, which the workers of --cluster {cluster} cannot "
                      f"read: save it as Zarr (e.g. `bigdenoise convert` or dask's to_zarr) and pass its path or "
                      f"da.from_zarr(path), or predict with --cluster local")
