"""Foreground-aware patch sampling (issue 20, item 5): the promised foreground rate, the background
floor, chunk-bounded reads, `auto` staying off on ordinary data, determinism, and the CLI flag."""

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, LoggingStore

import bigdenoise as bd
from bigdenoise import foreground as fgm
from bigdenoise import load_model
from bigdenoise.cli import main
from bigdenoise.data import PatchBatches
from bigdenoise.methods import get_method
from bigdenoise.normalize import Stats
from bigdenoise.sampling import foreground_plan, make_sampler
from bigdenoise.volume import open_volume

from conftest import COSDD_SMALL, TINY, smooth_volume, write_zarr

PATCH = (8, 16, 16)


def sparse_volume(shape=(32, 96, 96), seed=0, fraction=0.03):
    """A dark noisy volume (level 100, sigma 5) with bright 6x10x10 cubes placed at random: about
    ``fraction`` of it foreground.

    Returns the noisy float32 volume and the boolean foreground mask.
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    for _ in range(max(1, round(fraction * np.prod(shape) / 600))):
        z, y, x = (int(rng.integers(n - s)) for n, s in zip(shape, (6, 10, 10)))
        mask[z:z + 6, y:y + 10, x:x + 10] = True
    noisy = 100 + 5 * rng.standard_normal(shape) + 300 * mask
    return noisy.astype(np.float32), mask


def _batches(volume, plan, seed=0, cache_bytes=2**30):
    method = get_method("n2v")
    sampler = make_sampler(volume, PATCH[1:] if volume.axes == "SYX" else PATCH, cache_bytes=cache_bytes, active=4)
    stats = {"input": Stats(100.0, 50.0, 0.0, 400.0, 1)}
    return PatchBatches({"input": volume}, stats, sampler, method.prepare, method.options(), batch_size=4, seed=seed,
                        cache_bytes=cache_bytes, foreground=plan)


def _expected_share(ds, plan, index, is_wanted) -> float:
    """The probability, under the rule of ``foreground.choose_attempt``, that sample ``index`` ends
    in a patch for which ``is_wanted(box, index)`` holds (exact, from the candidates' contents)."""
    cache = ds.caches()["input"]
    boxes = [ds.sampler.box(index, ds.seed, ds.stream, t) for t in range(plan.max_tries)]
    contents = [fgm.content(cache.read(b), plan.threshold) for b in boxes]
    wanted = [is_wanted(b, index) for b in boxes]
    p = plan.uniform_share * wanted[0]
    none = 1.0
    for c, w in zip(contents, wanted):
        a = fgm.acceptance(c, plan.full_content)
        p += (1 - plan.uniform_share) * none * a * w
        none *= 1 - a
    best = int(np.argmax(contents))  # first of the largest, as choose_attempt
    return p + (1 - plan.uniform_share) * none * wanted[best]


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    noisy, mask = sparse_volume()
    path = write_zarr(tmp_path_factory.mktemp("fg") / "v.zarr", noisy, (16, 32, 32), "ZYX")
    return open_volume(path), mask


def test_auto_turns_on_for_a_mostly_background_volume_and_states_why(sparse):
    volume, mask = sparse
    assert mask.mean() < 0.1
    plan = foreground_plan(volume, "auto", 32, 0)
    assert plan.on and plan.setting == "auto"
    assert 100 < plan.threshold < 130  # level 100 + 4 sigma (5)
    assert plan.background_fraction > 0.85 and "background level" in plan.reason


def test_foreground_patches_are_drawn_at_the_promised_rate_and_the_floor_keeps_background(sparse):
    volume, mask = sparse
    plan = foreground_plan(volume, "auto", 32, 0)
    ds = _batches(volume, plan)
    uniform = _batches(volume, fgm.Foreground("off", False))
    n = 1000
    has_fg = lambda b, i=None: bool(mask[b.slices].any())  # noqa: E731
    drawn = [ds.box(i) for i in range(n)]
    fg_rate = np.mean([has_fg(b) for b in drawn])
    uniform_rate = np.mean([has_fg(uniform.box(i)) for i in range(n)])
    promised = np.mean([_expected_share(ds, plan, i, has_fg) for i in range(n)])
    tolerance = 4 * np.sqrt(promised * (1 - promised) / n)
    assert abs(fg_rate - promised) < tolerance, (fg_rate, promised, tolerance)
    assert uniform_rate < 0.4 and fg_rate > 0.8, (uniform_rate, fg_rate)
    # the floor: about UNIFORM_SHARE of the draws are uniform, so background patches remain
    bg_rate = 1 - fg_rate
    assert bg_rate > 0.5 * plan.uniform_share * (1 - uniform_rate), bg_rate
    # without the floor, only draws whose 16 candidates all miss the foreground stay background
    no_floor = _batches(volume, fgm.Foreground("auto", True, plan.threshold, uniform_share=0.0))
    no_floor_bg = np.mean([not has_fg(no_floor.box(i)) for i in range(n)])
    assert bg_rate > no_floor_bg + 0.5 * plan.uniform_share * (1 - uniform_rate), (bg_rate, no_floor_bg)


@pytest.mark.parametrize("c", [0.002, 0.01, 0.05])
def test_each_candidate_is_accepted_with_the_promised_probability(c):
    """Candidates of equal content ``c``: the first is kept with probability f + (1 - f) a, and the
    number of candidates read is geometric, with a = min(1, c / FULL_CONTENT) and f the floor."""
    rule = fgm.Foreground("auto", True, 0.0)
    a, f, n = fgm.acceptance(c), rule.uniform_share, 4000
    calls, first = [], []
    for i in range(n):
        seen = []
        attempt = fgm.choose_attempt(lambda t: seen.append(t) or c, fgm.foreground_rng(0, 0, i), rule)
        assert seen == list(range(len(seen))) and attempt < rule.max_tries
        calls.append(len(seen))
        first.append(attempt == 0)
    promised = f + (1 - f) * (a + (1 - a) ** rule.max_tries)  # all rejected: the first of equals is taken
    assert abs(np.mean(first) - promised) <= 4 * np.sqrt(promised * (1 - promised) / n) + 1e-9, (np.mean(first), promised)
    expected_calls = (1 - f) * (1 - (1 - a) ** rule.max_tries) / a
    assert abs(np.mean(calls) - expected_calls) < 0.1 * expected_calls + 0.05, (np.mean(calls), expected_calls)


def _chunks_of(box, chunks):
    first = [o // c for o, c in zip(box.offset, chunks)]
    last = [(s - 1) // c for s, c in zip(box.stop, chunks)]
    return {tuple(f + r for f, r in zip(first, rel)) for rel in np.ndindex(*(l - f + 1 for f, l in zip(first, last)))}


def test_foreground_sampling_reads_only_the_chunks_it_needs(tmp_path):
    noisy, _ = sparse_volume((64, 128, 128))
    write_zarr(tmp_path / "v.zarr", noisy, (8, 16, 16), "ZYX")  # 8 x 8 x 8 = 512 chunks
    store = LoggingStore(LocalStore(str(tmp_path / "v.zarr"), read_only=True), log_level="DEBUG")
    volume = open_volume(zarr.open_array(store, mode="r"), "ZYX")
    store.counter.clear()
    estimate = foreground_plan(volume, "auto", 32, 0)
    assert store.counter["get"] == 32  # the estimate: 32 sampled chunks, no full read
    plan = foreground_plan(volume, estimate.threshold, 32, 0)  # on, whatever auto decided on these chunks
    assert plan.on
    store.counter.clear()
    ds = _batches(volume, plan)
    n = 10
    for i in range(n):
        ds.example(i)  # what training does: choose the box, read the patch
    chosen = [ds.box(i) for i in range(n)]
    read = set(ds.caches()["input"]._chunks)  # the cache is large enough to keep every chunk it read
    candidates = set().union(*(_chunks_of(ds.sampler.box(i, 0, 0, t), volume.chunks)
                               for i in range(n) for t in range(plan.max_tries)))
    needed = set().union(*(_chunks_of(b, volume.chunks) for b in chosen))
    assert needed <= read <= candidates
    assert store.counter["get"] == ds.caches()["input"].reads == len(read)  # each chunk read once
    assert len(read) <= n * plan.max_tries * 8 and len(read) < 512 / 2  # far from a full read


def test_auto_stays_off_on_ordinary_data_and_changes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    for data in (smooth_volume((4, 64, 64))[0], rng.random((4, 64, 64), dtype=np.float32),
                 (300 + 20 * rng.standard_normal((4, 64, 64))).astype(np.float32)):
        volume = open_volume(write_zarr(tmp_path / f"v{rng.integers(1 << 30)}.zarr", data, (1, 32, 32), "SYX"))
        plan = foreground_plan(volume, "auto", 8, 0)
        assert not plan.on, plan.reason
        ds, plain = _batches(volume, plan), _batches(volume, None)
        assert [ds.box(i) for i in range(50)] == [plain.sampler.box(i, 0) for i in range(50)]
    assert foreground_plan(volume, "off", 8, 0) == fgm.Foreground("off", False, reason="--foreground off")
    assert foreground_plan(volume, 350.0, 8, 0).on  # a threshold is always on


def test_the_same_seed_gives_the_same_patches(sparse):
    volume, _ = sparse
    plan = foreground_plan(volume, "auto", 32, 0)
    first = [_batches(volume, plan, seed=3).batch(b) for b in range(3)]
    again = [_batches(volume, plan, seed=3).batch(b) for b in range(3)]
    other = [_batches(volume, plan, seed=4).batch(b) for b in range(3)]
    for a, b in zip(first, again):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a["input"], b["input"]) for a, b in zip(first, other))
    boxes = [_batches(volume, plan, seed=3).box(i) for i in range(40)]
    assert boxes == [_batches(volume, plan, seed=3).box(i) for i in range(40)]


def test_cli_records_the_decision_in_the_model(tmp_path):
    noisy, _ = sparse_volume((16, 64, 64))
    src = write_zarr(tmp_path / "v.zarr", noisy, (8, 32, 32), "ZYX")
    common = ["--steps", "2", "--val-every", "2", "--batch-size", "2", "--patch", "8,16,16", "--depth", "1",
              "--features", "4", "--device", "cpu", "--quiet"]
    assert main(["train", src, "--out", str(tmp_path / "auto"), *common]) == 0  # the default
    assert main(["train", src, "--out", str(tmp_path / "off"), "--foreground", "off", *common]) == 0
    assert main(["train", src, "--out", str(tmp_path / "bad"), "--foreground", "bright", *common]) != 0
    auto, off = load_model(tmp_path / "auto"), load_model(tmp_path / "off")
    assert auto.train_config.foreground == "auto" and off.train_config.foreground == "off"
    assert auto.info["foreground"]["on"] and auto.info["foreground"]["threshold"] > 100
    assert not off.info["foreground"]["on"] and off.info["foreground"]["threshold"] is None


def clipped_images(n=4, size=96, seed=0, offset=0.0):
    """8-bit-like images ``(n, size, size)`` float32: bright noisy disks (about a third of the
    pixels) on a dark background that the conversion clipped to exactly 0 (``offset`` 0), or on a
    noisy background at ``offset`` (not clipped)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = []
    for _ in range(n):
        cells = np.zeros((size, size), bool)
        for _ in range(6):
            cy, cx = rng.integers(size, size=2)
            cells |= (yy - cy) ** 2 + (xx - cx) ** 2 < 12 ** 2
        x = offset - 20 + 5 * rng.standard_normal((size, size)) + 80 * cells
        images.append(np.rint(np.clip(x, 0, 255) if offset == 0 else x))
    return np.stack(images).astype(np.float32)


def test_cosdds_rule_turns_on_for_a_clipped_background_only_and_asks_more_of_a_patch(tmp_path):
    """COSDD's rule (``Method.foreground``): on for a clipped background that the shared 85 % rule
    leaves off; off for the same share of noisy background; and its patches hold more foreground."""
    cosdd_rule, shared = get_method("cosdd").foreground, get_method("n2v").foreground
    clipped = open_volume(write_zarr(tmp_path / "clipped.zarr", clipped_images(), (1, 48, 48), "SYX"))
    plan = foreground_plan(clipped, "auto", 16, 0, rule=cosdd_rule)
    assert 0.5 < plan.background_fraction < 0.85 and plan.noise == 0 and plan.threshold == 0
    assert plan.on and "clipped" in plan.reason and plan.full_content == 0.3
    assert not foreground_plan(clipped, "auto", 16, 0, rule=shared).on
    noisy = open_volume(write_zarr(tmp_path / "noisy.zarr", clipped_images(offset=100.0), (1, 48, 48), "SYX"))
    plain = foreground_plan(noisy, "auto", 16, 0, rule=cosdd_rule)
    assert plain.noise > 0 and 0.5 < plain.background_fraction < 0.85 and not plain.on, plain.reason
    # the same threshold with the shared share per patch: COSDD's patches hold more foreground
    loose = fgm.Foreground("auto", True, plan.threshold)
    held = [np.mean([fgm.content(clipped.read(ds.box(i)), 0.0) for i in range(300)])
            for ds in (_batches(clipped, plan), _batches(clipped, loose))]
    assert held[0] > held[1] + 0.05, held


def test_training_uses_the_methods_rule(tmp_path):
    src = write_zarr(tmp_path / "in.zarr", clipped_images(2), (1, 48, 48), "SYX")
    short = {**TINY, "steps": 2, "stats_chunks": 8}
    cosdd_model = bd.train(src, tmp_path / "cosdd", method="cosdd", progress=False, options=COSDD_SMALL, **short)
    n2v_model = bd.train(src, tmp_path / "n2v", method="n2v", progress=False, **short)
    assert cosdd_model.info["foreground"]["on"] and cosdd_model.info["foreground"]["full_content"] == 0.3
    assert not n2v_model.info["foreground"]["on"]
