"""Forward-pass sizing (CPU and GPU), the inference copy of a model, host->device staging, true
fp32 on a GPU, the allocator settings."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import bigdenoise as bd
from bigdenoise import infer
from bigdenoise.infer import (
    batch_for_memory,
    for_inference,
    forward_batch_size,
    plan_for,
    predict_whole,
    run_model,
    workspace_bytes_per_voxel,
)
from bigdenoise.runtime import free_device_memory, to_device, true_fp32

from conftest import TINY, assert_exact, rough_copy, smooth_volume, write_zarr

GiB = 2**30


def test_batch_for_memory_fills_the_planned_fraction():
    tile, per_voxel = 320 * 320, workspace_bytes_per_voxel(32)  # a 2D tile, default U-Net
    one = tile * per_voxel
    assert batch_for_memory(10 * one, tile, per_voxel, fraction=0.5) == 5
    assert batch_for_memory(10 * one - 1, tile, per_voxel, fraction=1.0) == 9
    # whatever is free, at least one tile and at most the cap
    assert batch_for_memory(0, tile, per_voxel) == 1
    assert batch_for_memory(-5, tile, per_voxel) == 1
    assert batch_for_memory(80 * GiB, tile, per_voxel, cap=64) == 64
    assert batch_for_memory(80 * GiB, tile, per_voxel, cap=1000) == int(80 * GiB * 0.5) // one


def test_batch_for_memory_grows_with_free_memory_and_shrinks_with_tiles():
    per_voxel = workspace_bytes_per_voxel(32, "bf16")
    sizes = [batch_for_memory(f * GiB, 128**3, per_voxel, cap=10**6) for f in (1, 8, 40, 70)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert batch_for_memory(40 * GiB, 96**3, per_voxel) >= batch_for_memory(40 * GiB, 160**3, per_voxel)


def test_batch_for_memory_rejects_nonsense():
    with pytest.raises(ValueError):
        batch_for_memory(GiB, 0, 4)
    with pytest.raises(ValueError):
        batch_for_memory(GiB, 100, 0)


def test_workspace_estimate_scales_with_features_and_precision():
    assert workspace_bytes_per_voxel(32, "fp32") == 2 * workspace_bytes_per_voxel(32, "bf16")
    assert workspace_bytes_per_voxel(64, "fp16") == 2 * workspace_bytes_per_voxel(32, "fp16")
    # a 320x320 tile of the default U-Net (fp32) plans for ~150 MB: 2D tiles batch by the dozen
    assert 100e6 < 320 * 320 * workspace_bytes_per_voxel(32) < 200e6


def test_cpu_batch_is_bounded_by_voxels(model_3d):
    model_dir, _, data = model_3d
    model = bd.load_model(model_dir)
    plan = plan_for(model, (96, 160, 160), "ZYX", tile=(8, 16, 16))
    assert free_device_memory(torch.device("cpu")) is None
    bound = infer.MAX_BATCH_VOXELS // math.prod(plan.input_shape)  # 56x64x64 input voxels: 9 tiles
    assert forward_batch_size(model, plan) == min(infer.CPU_BATCH, bound)
    assert forward_batch_size(model, plan, 2) == 2
    assert forward_batch_size(model, plan, 12) == bound < 12
    huge = plan_for(model, (256, 256, 256), "ZYX", tile=(128, 128, 128))
    assert forward_batch_size(model, huge, 8) == max(1, infer.MAX_BATCH_VOXELS // math.prod(huge.input_shape))


def test_gpu_batch_is_sized_to_free_memory(model_2d, monkeypatch):
    """The CUDA branch of forward_batch_size, with the free memory a GPU would report."""
    model_dir, _, data = model_2d
    model = bd.load_model(model_dir)
    plan = plan_for(model, data.shape, "SYX", tile=32)
    tile_voxels = math.prod(plan.input_shape)
    per_voxel = workspace_bytes_per_voxel(model.train_config.net.features, "bf16")
    monkeypatch.setattr(infer, "free_device_memory", lambda device: 2 * GiB)
    expected = batch_for_memory(2 * GiB, tile_voxels, per_voxel)
    assert forward_batch_size(model, plan, None, "bf16") == expected
    assert forward_batch_size(model, plan, 3, "bf16") == min(3, expected)
    monkeypatch.setattr(infer, "free_device_memory", lambda device: 0)
    assert forward_batch_size(model, plan, None, "fp32") == 1


def test_for_inference_folds_batch_norm_and_keeps_predictions(rough_2d):
    model_dir, _, data = rough_2d  # random weights and batch-norm statistics: folding them matters
    model = bd.load_model(model_dir)
    folded = for_inference(model)
    has_bn = [any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()) for net in model.nets.values()]
    assert any(has_bn)  # the fixture's U-Net has batch norm; folding must leave the original alone
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for net in folded.nets.values() for m in net.modules())
    assert all(net.coarse_up is not None for net in folded.nets.values())  # the coarse decoder
    assert all(net.coarse_up is None for net in model.nets.values())
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run_model(folded, x), run_model(model, x), atol=1e-5, rtol=0)
    tiled = infer.predict_array(data, model, tile=16)  # folds internally
    assert_exact(tiled, predict_whole(data, model), data)


def test_to_device_on_cpu_is_the_array():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    t = to_device(x, torch.device("cpu"))
    assert t.device.type == "cpu" and np.array_equal(t.numpy(), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_to_device_on_cuda_goes_through_a_reused_pinned_buffer():
    device = torch.device("cuda")
    for shape in [(2, 1, 64, 64), (1, 1, 16, 16), (4, 1, 64, 64)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        t = to_device(x, device)
        torch.cuda.synchronize()
        assert t.device.type == "cuda" and np.array_equal(t.cpu().numpy(), x)
    assert free_device_memory(device) > 0


def test_true_fp32_turns_tf32_off_on_cuda_and_restores_the_switches():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with true_fp32(torch.device("cpu")):
            assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with true_fp32(torch.device("cuda")):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp32_prediction_on_cuda_equals_the_whole_image_on_the_cpu(tmp_path):
    """At fp32 a GPU's tiled prediction meets the exactness rule against the CPU's whole-image
    pass: cuDNN's default TF32 convolutions (about 1e-3 relative) would not."""
    data, _ = smooth_volume((2, 96, 96), seed=5)
    src = write_zarr(tmp_path / "in.zarr", data, (1, 48, 48), "SYX")
    bd.train(src, tmp_path / "model", progress=False, patch=(32, 32), device="cuda",
             **{**TINY, "net": {"depth": 2, "features": 32}})
    rough = rough_copy(tmp_path / "model", tmp_path / "rough")
    tiled = infer.predict_array(data, bd.load_model(rough, device="cuda"), tile=32)
    assert_exact(tiled, predict_whole(data, bd.load_model(rough)), data)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings are Linux-only")
def test_tuned_allocator_keeps_large_buffers_mapped():
    """After tune_allocator a freed 64 MiB buffer is reused without faulting its pages in again
    (glibc's default maps and unmaps it each time: 16384 page faults per allocation)."""
    code = """
import resource, torch
from bigdenoise.runtime import tune_allocator
if TUNE:
    tune_allocator()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    a = torch.ones(2**24); del a
f0 = faults()
for _ in range(5):
    a = torch.ones(2**24); del a
print(faults() - f0)
"""
    # Without the MALLOC_ variables a LocalCluster's nanny leaves in this process's environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = {tune: int(subprocess.run([sys.executable, "-c", code.replace("TUNE", str(tune))], check=True,
                                       capture_output=True, text=True, env=env).stdout)
              for tune in (False, True)}
    assert faults[False] > 5 * 10000, faults  # the default: every allocation faults again
    assert faults[True] < faults[False] / 4, faults  # at most one of the five grows the heap
