"""Shared fixtures: small real volumes on disk, tiny trained models, models whose output varies
at the data's scale (for exactness tests), the exactness rule, and access to the shared data."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

# Under pytest-xdist (.ci/run: two test processes on two cores) each process computes on one thread,
# and so does every process it starts unless bigdenoise sets that process's threads itself (the
# workers of a local cluster): two processes of two threads each on two cores spin against each
# other (OpenMP waits busily), which made a CLI test 6x slower than alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the processes it starts

import bigdenoise as bd
from bigdenoise.package import save_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REQUIRE_DATA_ENV = "BIGDENOISE_REQUIRE_DATA"  # set by .ci/run: a missing shared data set fails instead of skipping

TINY = dict(steps=3, val_every=3, batch_size=4, val_patches=4, stats_chunks=4,
            net={"depth": 2, "features": 4})
COSDD_SMALL = {"levels": 2, "s_code": 8, "ar_channels": 8, "distill_samples": 2}  # COSDD's options for tiny runs

# The exactness rule (DESIGN.md invariant 1, stated in the README): blockwise output equals the
# whole-array output when  max|tiled - whole| <= EXACT_REL * (max - min of the whole output), or
# two float32 steps at its largest value where that is more, on a model whose output varies at the
# data's scale (``rough_copy``).
EXACT_REL = 1e-4
# A negative control (halo below the receptive radius) must miss the rule by at least this factor.
INEXACT_MARGIN = 5


def shared_data(*parts: str, what: str = "shared data set") -> Path:
    """``SHARED_DATA / parts``, when it exists.

    When it does not: a test failure naming the path if ``$BIGDENOISE_REQUIRE_DATA`` is set to
    anything but ``""``/``"0"`` (CI, where the data is always present), else a skip with the
    same reason (a user's fresh clone without ``../shared/data``).
    """
    path = SHARED_DATA.joinpath(*parts)
    if path.exists():
        return path
    reason = f"{what} not found: {path} is missing (the shared data folder ../shared/data next to the repository)"
    if os.environ.get(REQUIRE_DATA_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason}; {REQUIRE_DATA_ENV} is set, so a missing data set is an error", pytrace=False)
    pytest.skip(reason)


def smooth_volume(shape, seed=0, noise=0.3):
    """A smooth random signal plus Gaussian noise (float32), and its clean version."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    clean = sum(np.sin((3 + 2 * i) * g * np.pi + rng.uniform(0, 6)) for i, g in enumerate(grids))
    clean = (clean * 40 + 300).astype(np.float32)
    return (clean + rng.normal(0, noise * 40, shape)).astype(np.float32), clean


def cli_round_trip(source, tmp_path, capsys):
    """Train N2V for 2 steps on ``source`` (axes SYX) and predict it, both through the command
    line as a user types them; the output Zarr array."""
    from bigdenoise.cli import main

    model, out = tmp_path / "model", tmp_path / "out.zarr"
    assert main(["train", str(source), "--method", "n2v", "--axes", "SYX", "--out", str(model), "--steps", "2",
                 "--batch-size", "2", "--patch", "32,32", "--quiet"]) == 0, capsys.readouterr().err
    assert main(["predict", str(source), "--model", str(model), "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    return zarr.open_array(str(out), mode="r")


def write_zarr(path, data, chunks, axes, zarr_format=3):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                            attributes={"axes": axes}, zarr_format=zarr_format)
    arr[...] = data
    return str(path)


def rough_copy(model_dir, out_dir, seed=0):
    """A copy of the package ``model_dir`` in ``out_dir`` with fixed random He-initialised weights.

    Every convolution of every network gets weights ~ N(0, 2 / fan_in) and biases ~ N(0, 0.1^2)
    from a generator seeded with ``seed``; batch norms get random statistics near the identity
    (scale ~1 +- 0.2, shift and mean ~ +-0.1, variance ~ e^(+-0.3)); other tensors (PN2V's noise
    model, the normalisation, a background pattern) are kept. A few training steps leave a tiny
    network's output nearly flat, so a tiling error hides below float rounding; these weights
    make the output vary at the data's scale.
    """
    model = bd.load_model(model_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in model.nets.values():
            for m in net.modules():
                if isinstance(m, torch.nn.modules.conv._ConvNd):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                    if m.bias is not None:
                        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # near identity, not exactly
                    m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(torch.exp(0.3 * torch.randn(m.running_var.shape, generator=g)))
    save_model(out_dir, model.train_config, model.nets, model.stats, model.info, output_stats=model.output_stats,
               background=model.background)
    return Path(out_dir)


def exactness_error(out, ref):
    """max|out - ref| relative to the spread (max - min) of the reference output."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape and np.isfinite(out).all() and np.isfinite(ref).all()
    return float(np.abs(out - ref).max() / (ref.max() - ref.min()))


def assert_exact(out, ref, data=None):
    """The exactness rule; with ``data``, also check that the model is not nearly flat (its
    output's spread is at least a tenth of the input's), or the rule would prove nothing."""
    if data is not None:
        ratio = float(np.ptp(ref) / np.ptp(data))
        assert ratio >= 0.1, f"the model's output is nearly flat (spread {ratio:.3g} of the input's)"
    err = exactness_error(out, ref)
    ref = np.asarray(ref, np.float64)
    # float32 outputs hold nothing finer than their step at the largest value: two such steps are
    # allowed where they exceed EXACT_REL (a level of 3,233 with a spread of 2: one step is 1.2e-4)
    allowed = max(EXACT_REL, 2 * float(np.spacing(np.float32(np.abs(ref).max()))) / float(np.ptp(ref)))
    assert err <= allowed, f"tiled differs from whole by {err:.3g} of the output's spread (allowed {allowed:.3g})"


def assert_not_exact(out, ref):
    """A negative control: the tiled output misses the exactness rule by INEXACT_MARGIN at least."""
    err = exactness_error(out, ref)
    assert err > INEXACT_MARGIN * EXACT_REL, (
        f"a halo below the receptive radius gave {err:.3g} of the output's spread, within "
        f"{INEXACT_MARGIN}x the exactness tolerance {EXACT_REL}: the exactness tests could not see a wrong halo")


def short_halo(model, by=3):
    """A halo ``by`` voxels below the receptive radius, rounded down to the pooling factor (the plan
    rounds halos up to it, so anything above this would give back the exact halo)."""
    halo = (model.receptive_radius - by) // model.factor * model.factor
    assert 0 < halo < model.receptive_radius
    return halo


@pytest.fixture(scope="session")
def model_2d(tmp_path_factory):
    """A tiny N2V model trained on an SYX stack, with its input path and data."""
    root = tmp_path_factory.mktemp("model2d")
    data, _ = smooth_volume((3, 64, 72))
    src = write_zarr(root / "in.zarr", data, (1, 32, 32), "SYX")
    bd.train(src, root / "model", progress=False, patch=(32, 32), **TINY)
    return root / "model", src, data


@pytest.fixture(scope="session")
def model_3d(tmp_path_factory):
    """A tiny 3D N2V model trained on a ZYX volume, with its input path and data."""
    root = tmp_path_factory.mktemp("model3d")
    data, _ = smooth_volume((24, 40, 36), seed=1)
    src = write_zarr(root / "in.zarr", data, (8, 16, 16), "ZYX")
    bd.train(src, root / "model", progress=False, patch=(8, 16, 16), **TINY)
    return root / "model", src, data


@pytest.fixture(scope="session")
def rough_2d(tmp_path_factory, model_2d):
    """``model_2d`` with random He weights (output varies at the data's scale), and its data."""
    model_dir, src, data = model_2d
    return rough_copy(model_dir, tmp_path_factory.mktemp("rough2d") / "model"), src, data


@pytest.fixture(scope="session")
def rough_3d(tmp_path_factory, model_3d):
    """``model_3d`` with random He weights, and a ZYX volume wide enough in Y and X that tiles
    read halos from their neighbours (an axis shorter than tile + 2 * halo is read whole)."""
    model_dir, _, _ = model_3d
    data, _ = smooth_volume((12, 64, 60), seed=3)
    return rough_copy(model_dir, tmp_path_factory.mktemp("rough3d") / "model"), data
