"""bioimage.io model packages run as bigdenoise models: someone else's denoiser, our tiling.

``load_bioimageio(path)`` (a ``.zip``, a folder holding ``rdf.yaml``/``bioimageio.yaml``, or that
file) returns a plain :class:`~bigdenoise.package.Model` whose one network, :class:`ImportedNet`,
maps a batch of tiles ``(N, 1, *spatial)`` to the model's axes, runs bioimageio.core's
pre-processing, the weights (ONNX through onnxruntime; TorchScript, which is code, only with
``trust_model``) and the post-processing, and maps the result back. ``Model.stats`` is the
identity: the description normalises. Axes: optional batch, one channel, space ``y, x`` or
``z, y, x`` in any order (a 2D model runs plane by plane over Z); sizes ``min + k * step`` (tiles
are multiples of the steps' lcm, padded at their far end to a valid size and cropped back, which
leaves core voxels unchanged). The halo is the description's output ``halo``, else
:func:`~bigdenoise.bioimageio_measure.measure_radius`. Statistics the processing needs are estimated once per volume
(:func:`for_volume`) and fixed for every tile. Workers reload the model from its path
(onnxruntime sessions do not pickle) with the keywords :func:`for_volume` returns.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from .config import NetConfig
from .errors import ConfigError, ModelError
from .files import files_digest
from .methods import Method
from .normalize import Stats
from .package import Model
from .bioimageio_measure import STATS_CHUNKS, measure_radius, volume_measures
from .volume import Volume

log = logging.getLogger(__name__)

METHOD_NAME = "bioimageio"
DESCRIPTION_FILES = ("rdf.yaml", "bioimageio.yaml")
# Pre/post-processing that acts voxel by voxel once its statistics are fixed: tiling cannot change it.
POINTWISE = {"binarize", "clip", "ensure_dtype", "fixed_zero_mean_unit_variance", "scale_linear",
             "scale_mean_variance", "scale_range", "sigmoid", "zero_mean_unit_variance"}
IDENTITY = Stats(0.0, 1.0, 0.0, 1.0, 0)
MARGIN = 0.25  # measured halos get 25 % more, at least MARGIN_MIN voxels
MARGIN_MIN = 2


def is_bioimageio(path: Any) -> bool:
    """Whether ``path`` names a bioimage.io model: a ``.zip``, an ``rdf.yaml``/``bioimageio.yaml``
    (or ``*.bioimageio.yaml``) file, or a folder holding one and no bigdenoise ``config.json``."""
    if path is None or isinstance(path, Model):
        return False
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() == ".zip" or p.name in DESCRIPTION_FILES or p.name.endswith(".bioimageio.yaml")
    return p.is_dir() and not (p / "config.json").exists() and any((p / n).is_file() for n in DESCRIPTION_FILES)


def is_imported(model: Model) -> bool:
    return model.method.name == METHOD_NAME


@dataclass(frozen=True)
class ImportedConfig:
    """Stands in for ``TrainConfig`` in a Model made from a bioimage.io package: it answers what
    prediction asks of a configuration (axes, the stack axis, options, the GPU batch estimate)."""

    axes: str  # the model's spatial axes in volume order: "YX" or "ZYX"
    method: str = METHOD_NAME
    net: NetConfig = NetConfig(features=64)  # unknown width: a cautious guess for GPU batch sizing
    options: dict = field(default_factory=dict)
    seed: int = 0
    stats_chunks: int = STATS_CHUNKS

    net_axes = property(lambda self: self.axes)
    stack_axis = property(lambda self: None)
    spatial_ndim = property(lambda self: len(self.axes))
    method_options = property(lambda self: ImportedOptions())


class ImportedOptions(BaseModel):
    """An imported model has no method options."""


@dataclass(frozen=True)
class Layout:
    """How our tiles map onto the model's tensors.

    ``in_dims``/``out_dims``: the model's axis ids in its order (``"batch"``, ``"channel"``,
    ``"z"``, ``"y"``, ``"x"``); ``spatial``: the space ids in volume order; ``sizes``: per space id
    of the input, ``(min, step)``; ``in_id``/``out_id``: the tensor ids.
    """

    in_id: str
    out_id: str
    in_dims: tuple[str, ...]
    out_dims: tuple[str, ...]
    spatial: tuple[str, ...]
    sizes: tuple[tuple[int, int], ...]

    @property
    def axes(self) -> str:
        return "".join(self.spatial).upper()

    @property
    def factor(self) -> int:
        return math.lcm(*[max(1, step) for _, step in self.sizes])

    def valid_size(self, i: int, n: int) -> int:
        """The smallest size >= ``n`` the model accepts along spatial axis ``i``."""
        low, step = self.sizes[i]
        return max(low, low + -(-(n - low) // step) * step)


def _no_training(*args: Any) -> Any:
    raise ConfigError("a bioimage.io model is only run here, not trained")


def _predict(nets: dict, x: torch.Tensor, options: Any) -> torch.Tensor:
    return nets["net"](x)


def _method(planes: bool) -> Method:
    return Method(name=METHOD_NAME, options=ImportedOptions, inputs=("input",), build=_no_training,
                  prepare=_no_training, stages=lambda options: (), predict=_predict,
                  receptive_radius=lambda nets, options: nets["net"].radius,
                  factor=lambda nets, options: nets["net"].layout.factor, planes=planes)


class ImportedNet(torch.nn.Module):
    """A bioimage.io model as a function of a batch of tiles ``(N, 1, *spatial)`` (float32, our
    volume's axis order) -> ``(N, 1, *spatial)``: pad to a valid size, pre-process, run the
    weights, post-process, crop. ``run`` takes the model's own input array (its axes) and gives
    its output array; ``procs`` is bioimageio.core's ``PreAndPostprocessing`` (or None: none);
    ``measures`` the fixed statistics it reads, ``((measure, value), ...)``."""

    def __init__(self, run, layout: Layout, procs, required: frozenset, measures: tuple, radius: int,
                 device: str | torch.device, trust_model: bool):
        super().__init__()
        self.run, self.layout, self.procs = run, layout, procs
        self.required, self.measures = required, measures
        self.radius, self.trust_model = radius, trust_model
        self._where = torch.nn.Parameter(torch.empty(0, device=device), requires_grad=False)  # for model_device

    def forward(self, x: torch.Tensor, processing: bool = True) -> torch.Tensor:
        a = np.ascontiguousarray(x.detach().float().cpu().numpy())
        y = self.apply(a, processing)
        return torch.from_numpy(y).to(x.device)

    def apply(self, a: np.ndarray, processing: bool = True) -> np.ndarray:
        """``a`` ``(N, 1, *spatial)`` -> the model's output, same shape (float32)."""
        if processing and self.required - {m for m, _ in self.measures}:
            raise ModelError("this bioimage.io model's pre-processing needs statistics of the input: predict "
                             "through bigdenoise.predict, or bind them first with bioimageio_model.for_volume")
        lay = self.layout
        sizes = a.shape[2:]
        pads = [(0, 0), (0, 0)] + [(0, lay.valid_size(i, n) - n) for i, n in enumerate(sizes)]
        if any(p for _, p in pads):
            a = np.pad(a, pads, mode="reflect" if all(n > 1 for n in sizes) else "edge")
        ours = ("batch", "channel") + lay.spatial
        if "batch" in lay.in_dims:
            y = self._one(_reorder(a, ours, lay.in_dims), processing)
        else:
            y = np.stack([self._one(_reorder(t, ours[1:], lay.in_dims), processing) for t in a])
        y = _reorder(y, lay.out_dims if "batch" in lay.out_dims else ("batch",) + tuple(lay.out_dims), ours)
        if y.shape[2:] != a.shape[2:]:
            raise ModelError(f"the bioimage.io model's output has spatial shape {y.shape[2:]} for an input of "
                             f"{a.shape[2:]}; bigdenoise tiles only models whose output has the input's size")
        return np.ascontiguousarray(y[(slice(None), slice(None)) + tuple(slice(0, n) for n in sizes)], np.float32)

    def _one(self, a: np.ndarray, processing: bool) -> np.ndarray:
        if processing and self.procs is not None and (self.procs.pre or self.procs.post):
            from bioimageio.core.sample import Sample
            from bioimageio.core.tensor import Tensor

            lay, stat = self.layout, dict(self.measures)
            sample = Sample(members={lay.in_id: Tensor(a, dims=lay.in_dims)}, stat=dict(stat), id=None)
            for op in self.procs.pre:
                op(sample)
            y = self.run(np.asarray(sample.members[lay.in_id].data))
            sample = Sample(members={lay.out_id: Tensor(y, dims=lay.out_dims)}, stat=dict(stat), id=None)
            for op in self.procs.post:
                op(sample)
            return np.asarray(sample.members[lay.out_id].data, np.float32)
        return np.asarray(self.run(a), np.float32)


def _reorder(a: np.ndarray, dims: tuple[str, ...], to: tuple[str, ...]) -> np.ndarray:
    """``a`` with axes ``dims`` -> axes ``to``: singleton axes absent from ``to`` dropped, axes
    absent from ``dims`` added with size 1, the rest transposed."""
    for d in [d for d in dims if d not in to]:
        i = dims.index(d)
        if a.shape[i] != 1:
            raise ModelError(f"axis {d} of size {a.shape[i]} has no place in the model's axes {', '.join(to)}")
        a, dims = a.squeeze(i), dims[:i] + dims[i + 1:]
    for d in to:
        if d not in dims:
            a, dims = a[..., None], dims + (d,)
    return np.transpose(a, [dims.index(d) for d in to])


# --- reading the description ------------------------------------------------------------------


def describe(path: str | Path):
    """The model's bioimage.io description (spec 0.5; older ones converted), or a ModelError."""
    try:
        from bioimageio.spec import load_model_description
    except ImportError:
        raise ModelError("running bioimage.io models needs bioimageio.core and onnxruntime: pip install "
                         "'bigdenoise[bioimageio]'") from None
    try:
        return load_model_description(str(path), format_version="latest")
    except Exception as exc:  # noqa: BLE001 - bioimageio.spec's validation errors are long and varied
        first = " ".join(str(exc).split())[:300]
        raise ModelError(f"{path} is not a valid bioimage.io model description: {first}") from None


def layout_of(descr: Any, source: str) -> Layout:
    """The axis mapping of ``descr``'s one input and one output; a ModelError says what cannot map."""
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise ModelError(f"{source} has {len(descr.inputs)} input and {len(descr.outputs)} output tensors; "
                         f"bigdenoise runs models of one input and one output")
    inp, out = descr.inputs[0], descr.outputs[0]
    dims: list[tuple[str, ...]] = []
    for tensor, what in ((inp, "input"), (out, "output")):
        ids = tuple(str(a.id) for a in tensor.axes)
        for a in tensor.axes:
            if a.type == "channel" and a.size != 1:
                raise ModelError(f"{source}: its {what} has {a.size} channels; bigdenoise feeds a denoiser one "
                                 f"channel (pick one of the volume's with --channel)")
            if a.type not in ("batch", "channel", "space") or (a.type == "space" and str(a.id) not in "zyx"):
                raise ModelError(f"{source}: its {what} axis {a.id!r} ({a.type}) does not map to the volume's "
                                 f"axes; bigdenoise maps batch, one channel and space axes z, y, x")
        dims.append(ids)
    spatial = tuple(d for d in "zyx" if d in dims[0])
    out_spatial = tuple(d for d in "zyx" if d in dims[1])
    if spatial not in (("y", "x"), ("z", "y", "x")) or out_spatial != spatial:
        raise ModelError(f"{source}: input space axes {', '.join(spatial) or 'none'} and output space axes "
                         f"{', '.join(out_spatial) or 'none'}; bigdenoise runs 2D (y, x) and 3D (z, y, x) models "
                         f"whose output has the input's space axes")
    sizes = []
    for d in spatial:
        size = next(a.size for a in inp.axes if str(a.id) == d)
        if not (hasattr(size, "min") and hasattr(size, "step")):
            raise ModelError(f"{source}: its input takes only {size} voxels along {d}; bigdenoise tiles models "
                             f"whose space axes have a parameterized size (min, step)")
        sizes.append((int(size.min), int(size.step)))
    return Layout(str(inp.id), str(out.id), dims[0], dims[1], spatial, tuple(sizes))


def described_halo(descr: Any) -> int | None:
    """The largest ``halo`` of the output's space axes, or None when the description gives none."""
    halos = [int(getattr(a, "halo", 0) or 0) for a in descr.outputs[0].axes if a.type == "space"]
    return max(halos) if any(halos) else None


def processing_of(descr: Any, layout: Layout, source: str):
    """bioimageio.core's pre/post-processing operators for ``descr`` and the measures they read;
    a ModelError for processing that is not voxelwise or needs statistics of the output."""
    from bioimageio.core.proc_setup import get_requried_measures, setup_pre_and_postprocessing

    steps = [p.id for p in descr.inputs[0].preprocessing] + [p.id for p in descr.outputs[0].postprocessing]
    other = [s for s in steps if s not in POINTWISE]
    if other:
        raise ModelError(f"{source}: its processing {', '.join(other)} is not voxelwise; bigdenoise runs models "
                         f"whose pre/post-processing is one of {', '.join(sorted(POINTWISE))}")
    needed = get_requried_measures(descr)
    required = frozenset(needed.pre | needed.post)
    for m in required:
        if str(m.member_id) != layout.in_id:
            raise ModelError(f"{source}: its processing needs the {m.name} of {m.member_id}, a statistic of the "
                             f"model's output over the whole image, which a blockwise run does not have")
        if m.axes is not None and not set(layout.spatial) <= {str(a) for a in m.axes}:
            raise ModelError(f"{source}: its processing normalises along {', '.join(map(str, m.axes))} only; "
                             f"bigdenoise needs statistics over all space axes ({', '.join(layout.spatial)})")
    procs = setup_pre_and_postprocessing(descr, [], fixed_dataset_stats={m: 0.0 for m in required})
    procs.pre[:] = [p for p in procs.pre if type(p).__name__ != "AddKnownDatasetStats"]  # we add them all
    return procs, required


def _session_dtype(kind: str) -> np.dtype:
    """numpy's dtype for onnxruntime's ``tensor(float)``, ``tensor(uint16)``..."""
    name = kind.removeprefix("tensor(").removesuffix(")")
    return np.dtype({"float": "float32", "double": "float64"}.get(name, name))


def runner_of(descr: Any, device: str | torch.device, trust_model: bool, source: str):
    """``(run, kind)``: ``run`` maps the model's input array to its output array with its weights:
    ONNX through onnxruntime, else TorchScript when ``trust_model``; a ModelError otherwise."""
    from bioimageio.spec.utils import get_reader

    weights = descr.weights
    if weights.onnx is not None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("running ONNX weights needs onnxruntime: pip install 'bigdenoise[bioimageio]'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(get_reader(weights.onnx.source).read(), options, providers=providers)
        name, dtype = session.get_inputs()[0].name, _session_dtype(session.get_inputs()[0].type)
        return (lambda a: session.run(None, {name: np.ascontiguousarray(a, dtype)})[0]), "onnx"
    if weights.torchscript is not None:
        if not trust_model:
            raise ModelError(f"{source} has only TorchScript weights, which are code that runs with your "
                             f"permissions: pass --trust-model to run it if you trust where it comes from")
        with warnings.catch_warnings():  # torch deprecates TorchScript; the user asked for it (--trust-model)
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(get_reader(weights.torchscript.source).read()), map_location=device)
        module = module.eval()

        def run(a: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(device)).float().cpu().numpy()

        return run, "torchscript"
    present = [k for k, v in weights if v is not None]
    raise ModelError(f"{source} has weights in {', '.join(present)}; bigdenoise runs ONNX weights, or TorchScript "
                     f"with --trust-model")


# --- loading and per-volume statistics -------------------------------------------------------


def load_bioimageio(path: str | Path, device: str | torch.device = "cpu", *, trust_model: bool = False,
                    radius: int | None = None, measures: tuple = ()) -> Model:
    """The bioimage.io model at ``path`` as a Model (see the module's docstring).

    ``radius``: the halo when already known (a worker reloading the client's model), else the
    description's or ``bioimageio_measure.measure_radius``'s. ``measures``: statistics from :func:`for_volume`.
    """
    source = str(path)
    descr = describe(path)
    layout = layout_of(descr, source)
    procs, required = processing_of(descr, layout, source)
    run, kind = runner_of(descr, device, trust_model, source)
    net = ImportedNet(run, layout, procs, required, tuple(measures), 0, device, trust_model)
    info = {"bioimageio_name": descr.name, "weights": kind}
    if radius is None:
        halo = described_halo(descr)
        if halo is None:
            measured = measure_radius(net)
            radius = measured + max(MARGIN_MIN, math.ceil(MARGIN * measured))
            info.update(halo_from="measured", measured_radius=measured)
            log.info("%s: no halo in its description; impulse response reaches %d voxels, halo %d (+25%%, at "
                     "least +%d)", source, measured, radius, MARGIN_MIN)
        else:
            radius = halo
            net.apply(np.zeros((1, 1) + tuple(layout.valid_size(i, 1) for i in range(len(layout.spatial))),
                               np.float32), processing=False)  # the output's shape is checked before any work
            info.update(halo_from="description")
    net.radius = int(radius)
    return Model(path=source, train_config=ImportedConfig(axes=layout.axes), method=_method(len(layout.spatial) == 2),
                 nets={"net": net}, stats=IDENTITY, info=info, output_stats=IDENTITY)


def for_volume(model: Model, volume: Volume, seed: int = 0) -> tuple[Model, tuple[tuple[str, Any], ...]]:
    """``model`` ready for ``volume`` and the keywords a worker reloads it with
    (``execute.BlockSettings.imported``); ``(model, ())`` for a bigdenoise model.

    The statistics the model's processing needs are estimated once from up to ``STATS_CHUNKS``
    random chunks of ``volume`` (``bioimageio_measure.volume_measures``): a per-sample statistic is taken
    over the whole volume, the same for every tile.
    """
    if not is_imported(model):
        return model, ()
    if volume.layout is not None and len(volume.layout.channels) > 1:
        raise ConfigError(f"a bioimage.io model denoises one channel at a time, not --channel "
                          f"{','.join(map(str, volume.layout.channels))}: run predict once per channel")
    net: ImportedNet = model.nets["net"]
    measures = volume_measures(volume, net.required, net.layout, seed) if net.required else ()
    bound = ImportedNet(net.run, net.layout, net.procs, net.required, measures, net.radius, net._where.device,
                        net.trust_model)
    model = dataclasses.replace(model, nets={"net": bound})
    return model, (("trust_model", net.trust_model), ("radius", net.radius), ("measures", measures))


def bioimageio_digest(path: str | Path) -> str:
    """SHA-256 of a bioimage.io model: the ``.zip``, or every file of its folder (names and bytes)."""
    p = Path(path)
    files = [p] if p.is_file() and p.suffix.lower() == ".zip" else sorted(
        f for f in (p if p.is_dir() else p.parent).rglob("*") if f.is_file())
    return files_digest(files)
