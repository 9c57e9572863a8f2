"""Lazy training data: chunk-aware reads, seeded sampling, batches independent of workers."""

import numpy as np
import torch
import zarr
from zarr.storage import LocalStore, LoggingStore

from bigdenoise.data import PatchBatches
from bigdenoise.geometry import Box
from bigdenoise.methods import get_method
from bigdenoise.normalize import Stats
from bigdenoise.sampling import ChunkCache, dihedral, make_sampler
from bigdenoise.volume import open_volume

from conftest import smooth_volume, write_zarr


def _logged_volume(path, axes):
    store = LoggingStore(LocalStore(str(path), read_only=True), log_level="DEBUG")
    array = zarr.open_array(store, mode="r")
    return open_volume(array, axes), store


def test_cache_reads_only_the_chunks_a_box_needs(tmp_path):
    data, _ = smooth_volume((4, 100, 90))
    write_zarr(tmp_path / "v.zarr", data, (1, 20, 30), "SYX")
    volume, store = _logged_volume(tmp_path / "v.zarr", "SYX")
    cache = ChunkCache(volume, max_bytes=2**30)
    store.counter.clear()
    box = Box((2, 15, 25), (1, 30, 40))  # rows 15..44 -> 3 chunk rows, cols 25..64 -> 3 chunk cols
    np.testing.assert_array_equal(cache.read(box), data[box.slices])
    assert cache.reads == 9 and store.counter["get"] == 9
    cache.read(Box((2, 20, 30), (1, 20, 20)))  # inside chunks already cached
    assert store.counter["get"] == 9
    cache.read(Box((3, 0, 0), (1, 10, 10)))
    assert store.counter["get"] == 10


def test_cache_is_bounded():
    volume = open_volume(np.zeros((8, 64, 64), np.float32), "SYX")
    cache = ChunkCache(volume, max_bytes=3 * 64 * 64 * 4)
    for s in range(8):
        cache.read(Box((s, 0, 0), (1, 8, 8)))
    assert cache._bytes <= 3 * 64 * 64 * 4


def test_sampler_is_a_pure_function_of_index_and_seed():
    volume = open_volume(np.zeros((5, 300, 200), np.float32), "SYX")
    sampler = make_sampler(volume, (64, 64), cache_bytes=1, active=4)
    assert sampler.per_region == 8
    boxes = [sampler.box(i, seed=3) for i in range(200)]
    assert boxes == [sampler.box(i, seed=3) for i in range(200)]
    assert boxes != [sampler.box(i, seed=4) for i in range(200)]
    for b in boxes:
        assert b.shape == (1, 64, 64)
        assert all(0 <= o and o + s <= n for o, s, n in zip(b.offset, b.shape, volume.shape))
    # patches cover the volume roughly uniformly
    cover = np.zeros(volume.shape)
    for i in range(3000):
        cover[sampler.box(i, seed=0).slices] += 1
    assert (cover[:, 64:-64, 64:-64] > 0).mean() > 0.99


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    data, _ = smooth_volume((3, 64, 64))
    volume = open_volume(write_zarr(tmp_path / "v.zarr", data, (1, 32, 32), "SYX"))
    method = get_method("n2v")
    options = method.options()
    sampler = make_sampler(volume, (32, 32), cache_bytes=2**20, active=4)
    kw = dict(batch_size=4, seed=0, n_batches=4)
    stats = {"input": Stats(300.0, 40.0, 0.0, 600.0, 1)}
    ds = PatchBatches({"input": volume}, stats, sampler, method.prepare, options, **kw)
    serial = list(ds)
    loader = torch.utils.data.DataLoader(
        PatchBatches({"input": volume}, stats, sampler, method.prepare, options, **kw), batch_size=None, num_workers=2)
    parallel = list(loader)
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel):
        for key in ("input", "target", "mask"):
            assert torch.equal(a[key], b[key])
    assert serial[0]["input"].shape == (4, 1, 32, 32)


def test_dihedral_transforms_are_distinct_on_square_planes():
    x = np.arange(16.0).reshape(1, 4, 4)
    outs = {dihedral(x, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    y = np.arange(12.0).reshape(1, 3, 4)
    assert all(dihedral(y, k).shape == y.shape for k in range(8))
