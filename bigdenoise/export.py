"""A trained model as one self-contained torch module on one tile, and its ONNX and TorchScript files.

:class:`TileDenoiser` computes, on one tile ``(1, 1, *spatial)`` of raw intensities, exactly what
``infer.denoise_block`` computes for a tile: normalise with the model's input statistics, run
the method's prediction, map back with the output statistics. The normalisation lives inside
the graph (not in bioimage.io pre/post-processing) so that every consumer gets our formula
``(x - mean) / std`` bit for bit: bioimage.io's ``fixed_zero_mean_unit_variance`` divides by
``std + eps``, and PN2V's noise model works in raw units anyway.

What is a function of one tile exports: the U-Net methods (N2V, N2V2, struct-N2V, N2N, CARE),
PN2V (its MMSE estimate, noise model included, computed in the graph), COSDD's direct denoiser
and D-BSN's distilled U-Net (their default prediction paths), and D-BSN's ``mu`` and
``posterior`` paths (``posterior`` with ``noise=awgn`` only given a fixed ``noise_level``).
:func:`check_exportable` says in a ModelError why anything else cannot.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError
from .package import Model

ONNX_OPSET = 18


def check_exportable(model: Model) -> None:
    """A ModelError saying why ``model``'s prediction is not a function of one tile, if it is not."""
    name, options = model.method.name, model.options
    if model.background is not None:
        raise ModelError(f"this {name} model subtracts a fixed background pattern that depends on where a tile lies "
                         f"in the image plane; a bioimage.io model sees tiles without their position (train without "
                         f"--remove-background to export)")
    if model.method.stack_axis(options) is not None or model.channel_halo > 0:
        raise ModelError(f"{name} feeds neighbouring planes along {model.stack_axis} as input channels, with its own "
                         f"end-plane rule (missing neighbours are copies of the nearest plane other than the target); "
                         f"a bioimage.io consumer pads a tensor's ends by mirroring or zeros instead, so the first and "
                         f"last planes would not match our prediction: {name} models are not exported")
    if model.method.image_statistic(options) is not None:
        raise ModelError(f"{name} with prediction={options.prediction} needs each whole image's noise level from a "
                         f"pre-pass over the volume, which a model on one tile cannot compute; export with --option "
                         f"prediction=distilled, or set --option noise_level=V")
    if model.method.tile_origins and getattr(options, "prediction", None) == "sampled":
        raise ModelError(f"{name} with prediction=sampled draws its latent noise keyed by each voxel's position in the "
                         f"volume, which a bioimage.io model is not given; export the distilled net with --option "
                         f"prediction=direct (the default)")


def pn2v_mmse(nets: dict[str, nn.Module], x: torch.Tensor) -> torch.Tensor:
    """PN2V's MMSE estimate ``sum_k p(x|s_k) s_k / sum_k p(x|s_k)`` of normalised tiles ``x``
    ``(N, 1, *spatial)`` -> ``(N, 1, *spatial)``, all K samples at once (``methods.pn2v`` slices
    them to bound memory; the sum is the same up to float rounding)."""
    from .methods.pn2v import samples

    s = samples(nets, x).float()
    weights = torch.softmax(nets["noise_model"].log_likelihood(x, s), dim=1)
    return (weights * s).sum(1, keepdim=True)


def pn2v_prior_mean(nets: dict[str, nn.Module], x: torch.Tensor) -> torch.Tensor:
    """PN2V's ``prediction=prior_mean``: the plain mean of the K samples."""
    from .methods.pn2v import samples

    return samples(nets, x).float().mean(1, keepdim=True)


def graph_predict(model: Model) -> Callable[[dict[str, nn.Module], torch.Tensor], torch.Tensor]:
    """The method's prediction ``(nets, x) -> y`` on normalised tiles, in a form that traces."""
    options = model.options
    if model.method.name == "pn2v":
        return pn2v_mmse if options.prediction == "mmse" else pn2v_prior_mean
    predict = model.method.predict
    return lambda nets, x: predict(nets, x, options)


class TileDenoiser(nn.Module):
    """``model``'s prediction of one tile, raw intensities in and out.

    ``forward(x)``: ``x`` ``(1, 1, *spatial)`` float32, the spatial sizes multiples of the
    model's factor; returns ``(1, 1, *spatial)`` float32, what ``infer`` predicts for an image
    of that shape. The nets are copies in plain (contiguous) layout; ``model`` is unchanged.
    """

    def __init__(self, model: Model) -> None:
        super().__init__()
        check_exportable(model)
        self.nets = nn.ModuleDict({k: copy.deepcopy(v).float().eval().to("cpu", memory_format=torch.contiguous_format)
                                   for k, v in model.nets.items()})
        stats, out = model.stats, model.out_stats
        self.register_buffer("norm_in", torch.tensor([stats.mean, stats.std], dtype=torch.float32))
        self.register_buffer("norm_out", torch.tensor([out.mean, out.std], dtype=torch.float32))
        self._predict = graph_predict(model)
        self.ndim = len(model.spatial_axes)
        self.eval()  # also the mode exporters restore after their own switch to eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.norm_in[0]) / self.norm_in[1]
        y = self._predict(dict(self.nets.items()), x)
        return y * self.norm_out[1] + self.norm_out[0]


@contextmanager
def _tracing():
    """No gradients, and no TracerWarnings: the Python values a trace freezes here (the U-Net's
    check that sizes are multiples of its factor, a noise model's table size) are constants of
    the model, not of the example tile."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates both exporters used here
        yield


def write_torchscript(module: TileDenoiser, example: torch.Tensor, path: Path) -> Path:
    """``module`` traced on ``example`` ``(1, 1, *spatial)`` into TorchScript file ``path``."""
    with _tracing():
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(str(path))
    return path


def write_onnx(module: TileDenoiser, example: torch.Tensor, path: Path) -> Path:
    """``module`` exported to ONNX file ``path`` (weights inside the file, opset :data:`ONNX_OPSET`),
    its spatial axes dynamic; traced on ``example`` ``(1, 1, *spatial)``."""
    axes = {0: "batch"} | {2 + i: f"s{i}" for i in range(module.ndim)}
    with _tracing():
        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": axes}, opset_version=ONNX_OPSET, dynamo=False)
    return path


def spread(a) -> float:
    """max - min of an array (at least the smallest normal float, so it can divide)."""
    return max(float(a.max() - a.min()), math.ulp(1.0))
