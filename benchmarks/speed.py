"""Helpers of the speed benchmarks (``throughput.py``, ``fast_path.py``, ``vs_careamics.py``,
``scale.py``): an untrained model package, timing the bare forward pass, forgetting a worker's
cached model, counting the multiply-accumulates a network executes, and the machine's compute
peak.

Imported by the scripts in this folder as ``import speed``; it imports no script.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np


def parse_shape(text: str) -> tuple[int, ...]:
    from bigdenoise.cli_args import parse_shape as parse

    return parse(text)


def untrained_model(path: Path, axes: str, depth: int | None, features: int | None, stats, note: str = "untrained",
                    method: str = "n2v") -> None:
    """An untrained model package of ``method`` (default N2V) whose U-Net has the given depth and
    features (None: the method's default)."""
    from bigdenoise.config import make_config
    from bigdenoise.package import build_nets, save_model

    sizes = {k: v for k, v in (("depth", depth), ("features", features)) if v is not None}
    cfg = make_config(method=method, axes=axes, net=sizes)
    nets = build_nets(cfg)
    for net in nets.values():
        net.eval()
    save_model(path, cfg, nets, stats, {"steps": 0, "note": note})


def fresh_worker_state() -> None:
    """Forget the models an in-process ("threads") worker cached in an earlier round, so that
    every predict round pays for loading the model like a user's single call does."""
    from bigdenoise import execute

    for name in ("_models", "_outputs"):
        cache = getattr(execute, name, None)
        if isinstance(cache, dict):
            cache.clear()


def forward_once(model, batches: list[np.ndarray], n_tiles: int, batch_size: int, precision: str, sync) -> float:
    """Seconds to run ``n_tiles`` tiles through ``run_model`` in batches, cycling ``batches``."""
    from bigdenoise.infer import run_model

    t0 = time.perf_counter()
    done, i = 0, 0
    while done < n_tiles:
        x = batches[i % len(batches)]
        n = min(batch_size, n_tiles - done)
        run_model(model, x[:n], precision)
        done += n
        i += 1
    sync()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- executed multiply-accumulates


CONV_OPS = frozenset({"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::conv_transpose1d",
                      "aten::conv_transpose2d", "aten::conv_transpose3d", "aten::convolution", "aten::_convolution",
                      "aten::mkldnn_convolution", "mkldnn::_convolution_pointwise"})
"""The convolution operators :func:`conv_counter` counts; the operator it sees is the outermost
(under ``inference_mode`` ``aten::conv2d`` itself, else ``aten::convolution``), never both."""


def conv_counter():
    """A context manager (``with conv_counter() as c: ...; c.macs``) counting the
    multiply-accumulates of every convolution operator executed inside it, whatever module or
    function called it: ``aten::conv*`` / ``aten::convolution`` (``nn.Conv*``, ``F.conv*``,
    transposed ones included) and oneDNN's fused ``mkldnn::_convolution_pointwise`` (``nets.ConvReLU``), which
    module forward hooks would not see. Per call: output elements x ``in_channels / groups`` x
    kernel volume (transposed: input elements x ``out_channels / groups`` x kernel volume).
    Biases, activations, pooling and the phase sums are not counted."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ConvCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.macs = 0
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.name()
            if name in CONV_OPS:
                transposed = "transpose" in name or (name in ("aten::convolution", "aten::_convolution")
                                                     and bool(args[6]))
                per_element = args[1][0].numel()  # weight (C_out, C_in/g, *k); transposed (C_in, C_out/g, *k)
                self.macs += (args[0] if transposed else out).numel() * per_element
                self.calls += 1
            return out

    return ConvCounter()


def executed_macs(fn, *args) -> int:
    """Multiply-accumulates of the convolutions ``fn(*args)`` executes (:func:`conv_counter`)."""
    import torch

    with torch.inference_mode(), conv_counter() as counter:
        fn(*args)
    return counter.macs


# --------------------------------------------------------------------------- the compute peak


def _best_seconds(run, repeats: int) -> float:
    run()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def compute_peak(repeats: int = 3) -> dict[str, float]:
    """fp32 GFLOP/s (2 x MACs) of several matmul shapes and of large convolutions like the
    U-Net's (3x3 at 32 and 64 channels in 2D, 3x3x3 at 32 channels in 3D, in the channels-last
    layout prediction uses, ReLU fused as in ``nets.ConvReLU``), best of ``repeats`` each; the
    key ``"peak"`` is the largest of them, the limit the network's convolutions are held to."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    rates = {}
    for m, k, n in ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (262144, 288, 32),
                    (65536, 576, 64), (65536, 864, 32)):
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        rates[f"matmul {m}x{k}x{n}"] = 2 * m * k * n / _best_seconds(lambda: torch.matmul(a, b), repeats) / 1e9
    fused = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()
    for channels, spatial in ((32, (1024, 1024)), (64, (512, 512)), (32, (32, 128, 128))):
        ndim = len(spatial)
        layout = torch.channels_last if ndim == 2 else torch.channels_last_3d
        x = torch.randn(1, channels, *spatial, generator=g).to(memory_format=layout)
        w = torch.randn(channels, channels, *(3,) * ndim, generator=g).to(memory_format=layout)
        bias = torch.zeros(channels)
        conv = F.conv2d if ndim == 2 else F.conv3d
        if fused:
            def run():
                return torch.ops.mkldnn._convolution_pointwise(x, w, bias, [1] * ndim, [1] * ndim, [1] * ndim, 1,
                                                               "relu", [], "")
        else:
            def run():
                return torch.relu_(conv(x, w, bias, padding=1))
        with torch.inference_mode():
            seconds = _best_seconds(run, repeats)
        macs = x.numel() * channels * 3**ndim
        rates[f"conv {'x'.join(['3'] * ndim)} {channels}ch {'x'.join(map(str, spatial))}"] = 2 * macs / seconds / 1e9
    rates["peak"] = max(rates.values())
    return rates
