"""Training data: a torch IterableDataset over volumes, a sampler and a method's ``prepare``.

The dataset yields whole batches; batch ``b`` always holds samples ``b*B ... b*B+B-1`` whatever
the number of DataLoader workers (worker ``w`` makes batches ``w, w+W, ...`` and the loader
interleaves them in order), so a run is reproducible and resumable from a step number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .axes import axis_roles
from .background import subtract_background
from .foreground import Foreground, choose_attempt, content, foreground_rng
from .geometry import Box
from .normalize import Stats, normalize
from .sampling import TRAIN, ChunkCache, PatchSampler, dihedral, read_neighbourhood, sample_rng, unpaired_stream
from .volume import Volume


def channels_first(x: np.ndarray, axes: str, stack_axis: str | None = None) -> np.ndarray:
    """A patch in volume layout (``axes``) -> ``(C, *spatial)``: the stack axis (if any) becomes
    the channel axis, sample axes (length 1) are dropped."""
    roles = axis_roles(axes, stack_axis)
    channel = [i for i, r in enumerate(roles) if r == "channel"]
    spatial = [i for i, r in enumerate(roles) if r == "spatial"]
    rest = [i for i in range(len(axes)) if i not in channel + spatial]
    x = np.transpose(x, channel + spatial + rest)
    return x.reshape((x.shape[0] if channel else 1,) + x.shape[len(channel): len(channel) + len(spatial)])


class PatchBatches(IterableDataset):
    """Batches of prepared training examples read lazily from ``volumes``.

    Parameters
    ----------
    volumes : the volumes one sample reads at the same box, by key (``"input"``, ``"target"``);
        all of one shape.
    stats : normalisation per key.
    sampler : patch positions.
    prepare : the method's ``(sample, rng, options) -> example``.
    options : the method's options.
    batch_size, seed : as in the training config.
    stream : ``sampling.TRAIN`` or ``sampling.VALIDATION`` (independent random streams).
    start_batch, n_batches : which batches to yield (``n_batches=None``: forever).
    augment : random in-plane dihedral transforms.
    cache_bytes : chunk cache size per volume (per worker process).
    stack_axis, channel_halo : for stack methods (Noise2Stack): ``sample["input"]`` holds the
        ``2 * channel_halo + 1`` planes around the sampled plane along this axis letter
        (``sampling.read_neighbourhood``), as channels; other keys hold the sampled plane.
    background : a fixed YX pattern subtracted from every volume before normalisation, or None.
    unpaired : samplers of unpaired volumes (``Method.unpaired``), by key: those volumes (also in
        ``volumes``, any shape, the same axes) are read at their own sampler's boxes, drawn from
        a random stream of their own (``sampling.unpaired_stream``), independent of the input's,
        and never background-subtracted. ``read``: the unpaired keys to read (None: all); the
        paired volumes are always read.
    foreground : the run's foreground-aware sampling (``sampling.foreground_plan``); when it is
        on, each sample's box is chosen among candidate boxes by the content of the input there
        (``foreground.choose_attempt``), else it is the sampler's box as is.
    """

    def __init__(
        self,
        volumes: Mapping[str, Volume],
        stats: Mapping[str, Stats],
        sampler: PatchSampler,
        prepare: Callable,
        options: object,
        *,
        batch_size: int,
        seed: int,
        stream: int = TRAIN,
        start_batch: int = 0,
        n_batches: int | None = None,
        augment: bool = True,
        cache_bytes: int = 512 * 2**20,
        stack_axis: str | None = None,
        channel_halo: int = 0,
        background: np.ndarray | None = None,
        unpaired: Mapping[str, PatchSampler] | None = None,
        read: tuple[str, ...] | None = None,
        foreground: Foreground | None = None,
    ) -> None:
        self.volumes = dict(volumes)
        self.stats = dict(stats)
        self.sampler = sampler
        self.prepare = prepare
        self.options = options
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream
        self.start_batch = start_batch
        self.n_batches = n_batches
        self.augment = augment
        self.cache_bytes = cache_bytes
        self.stack_axis = stack_axis
        self.channel_halo = channel_halo
        self.background = background
        self.unpaired = dict(unpaired or {})
        self.foreground = foreground if foreground is not None and foreground.on else None
        keys = [k for k in volumes if k not in self.unpaired or read is None or k in read]
        self.volumes = {k: self.volumes[k] for k in keys}
        self._caches: dict[str, ChunkCache] | None = None

    def caches(self) -> dict[str, ChunkCache]:
        if self._caches is None:
            self._caches = {k: ChunkCache(v, self.cache_bytes) for k, v in self.volumes.items()}
        return self._caches

    def example(self, index: int) -> dict[str, np.ndarray]:
        """Training example ``index``: read, normalise, augment, prepare. Arrays are
        ``(C, *spatial)`` float32 (sample axes dropped; C = 1, or the plane neighbourhood)."""
        box = self.box(index)
        rng = sample_rng(self.seed, self.stream, index)
        sample = {}
        for key, cache in self.caches().items():
            axes = cache.volume.axes
            if key in self.unpaired:
                j = list(self.unpaired).index(key)
                own = self.unpaired[key].box(index, self.seed, unpaired_stream(self.stream, j))
                sample[key] = channels_first(normalize(cache.read(own), self.stats[key]), axes)
                continue
            if self.stack_axis is not None and key == "input":
                raw = read_neighbourhood(cache, box, axes.index(self.stack_axis), self.channel_halo)
            else:
                raw = cache.read(box)
            x = normalize(subtract_background(raw, box, self.background), self.stats[key])
            sample[key] = channels_first(x, axes, self.stack_axis)
        if self.augment:
            k = int(rng.integers(8))
            sample = {key: dihedral(x, k) for key, x in sample.items()}
        return self.prepare(sample, rng, self.options)

    def box(self, index: int) -> Box:
        """The box of sample ``index``: the sampler's, or with foreground-aware sampling the
        chosen candidate (each candidate read through the input's chunk cache)."""
        if self.foreground is None:
            return self.sampler.box(index, self.seed, self.stream)
        cache, threshold = self.caches()["input"], self.foreground.threshold

        def candidate_content(attempt: int) -> float:
            b = self.sampler.box(index, self.seed, self.stream, attempt)
            return content(subtract_background(cache.read(b), b, self.background), threshold)

        attempt = choose_attempt(candidate_content, foreground_rng(self.seed, self.stream, index), self.foreground)
        return self.sampler.box(index, self.seed, self.stream, attempt)

    def batch(self, b: int) -> dict[str, torch.Tensor]:
        examples = [self.example(b * self.batch_size + i) for i in range(self.batch_size)]
        return {key: torch.from_numpy(np.stack([e[key] for e in examples])) for key in examples[0]}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        b = self.start_batch + worker
        while self.n_batches is None or b < self.start_batch + self.n_batches:
            yield self.batch(b)
            b += n_workers
