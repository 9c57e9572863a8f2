"""``bigdenoise export MODEL --bioimageio OUT.zip``: a model package as a bioimage.io (spec 0.5) model.

The package holds the model's tile prediction (:class:`export.TileDenoiser`: normalise ->
method -> denormalise, all inside the graph) as ONNX weights (data, not code; the root entry)
and TorchScript weights traced from the same module (for Fiji / deepImageJ; a child of the
ONNX entry in the spec's sense: the same function, another format). Tensors are
``input`` and ``output``, axes ``batch (1), channel (1), [z,] y, x``, raw intensities in float32
(the spec casts other inputs first). Spatial sizes are ``2 * halo + factor + n * factor``; the
output's ``halo`` is the halo our own tiling uses (the receptive radius rounded up to the
factor), so a consumer that crops it gets seam-free tiles.

Test tensors are one tile of a sampled chunk: of ``sample`` (any volume with the model's axes)
or else of the training input the model package records, when it still opens; with neither,
a clear error asks for ``--sample`` (a synthetic tile would make a meaningless cover and test).
The test output is our own prediction of that tile (``infer.predict_whole``), and the written
graphs are checked against it (onnxruntime and TorchScript, within ``EXPORT_TOLERANCE`` of its
spread) before anything is written at ``out``. bioimage.io metadata (``config.bigdenoise``) records
the method, its options, the receptive radius, halo, factor and normalisation.
"""

from __future__ import annotations

import getpass
import importlib
import json
import os
import shutil
import tempfile
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .errors import ConfigError, InputError, ModelError, OutputError
from .export import ONNX_OPSET, TileDenoiser, check_exportable, spread, write_onnx, write_torchscript
from .geometry import Box
from .infer import model_axis_roles, plan_for, predict_whole
from .outputs import Kind, destination
from .package import Model, load_model, with_options
from .tiling import reflect_indices
from .volume import open_volume, sample_chunk_boxes

BIOIMAGEIO = Kind("bioimage.io model package", ())
EXPORT_TOLERANCE = 1e-4  # of the test output's spread: exported graphs vs our own prediction
TEST_TILE_CAP = {2: 256, 3: 64}  # largest test tile edge (voxels), unless the halo needs more
CANDIDATE_CHUNKS = 8  # sampled chunks; the test tile is cut from the one with the most contrast

_N2V = dict(text="Krull, Buchholz, Jug: Noise2Void - Learning Denoising from Single Noisy Images (CVPR 2019)",
            doi="10.1109/CVPR.2019.00223", url="https://arxiv.org/abs/1811.10980")
CITATIONS: dict[str, list[dict[str, str]]] = {
    "n2v": [_N2V],
    "n2v2": [dict(text="Hoeck et al.: N2V2 - Fixing Noise2Void Checkerboard Artifacts with Modified Sampling "
                       "Strategies and a Tweaked Network Architecture (ECCV Workshops 2022)",
                  doi="10.1007/978-3-031-25069-9_33", url="https://arxiv.org/abs/2211.08512")],
    "struct": [dict(text="Broaddus et al.: Removing Structured Noise with Self-Supervised Blind-Spot Networks "
                         "(ISBI 2020)", doi="10.1109/ISBI45749.2020.9098336")],
    "n2n": [dict(text="Lehtinen et al.: Noise2Noise - Learning Image Restoration without Clean Data (ICML 2018)",
                 url="https://arxiv.org/abs/1803.04189")],
    "care": [dict(text="Weigert et al.: Content-aware image restoration - pushing the limits of fluorescence "
                       "microscopy (Nature Methods 2018)", doi="10.1038/s41592-018-0216-7")],
    "pn2v": [dict(text="Krull, Vicar, Prakash, Lalit, Jug: Probabilistic Noise2Void - Unsupervised Content-Aware "
                       "Denoising (Frontiers in Computer Science 2020)", doi="10.3389/fcomp.2020.00005",
                  url="https://arxiv.org/abs/1906.00651"), _N2V],
    "dbsn": [dict(text="Wu, Liu, Fei, Zuo: Unpaired Learning of Deep Image Denoising (ECCV 2020)",
                  url="https://arxiv.org/abs/2008.13711")],
    "cosdd": [dict(text="Salmon, Krull: Unsupervised Denoising for Signal-Dependent and Row-Correlated Imaging "
                        "Noise (WACV 2025)", url="https://arxiv.org/abs/2310.07887")],
}


def citations(model: Model) -> list[dict[str, str]]:
    """The papers behind ``model``'s method (and its N2V2 / struct-N2V variants)."""
    cites = list(CITATIONS.get(model.method.name, []))
    if model.method.name == "n2v" and model.train_config.net.n2v2:
        cites += CITATIONS["n2v2"]
    if getattr(model.options, "struct_axis", None) is not None:
        cites += CITATIONS["struct"]
    return cites


def test_tile(model: Model, source: Any, axes: str | None = None, seed: int = 0) -> np.ndarray:
    """One tile of ``source`` for the package's test tensors, shaped as the network's spatial axes.

    Among ``CANDIDATE_CHUNKS`` sampled chunks, the tile (centred on its chunk) with the largest
    standard deviation. Each spatial edge is ``2 * halo + factor + n * factor``, at most
    ``TEST_TILE_CAP`` (more only when the halo needs it) and the volume's extent; a volume
    thinner than that is mirrored to it. Returns float32 raw intensities.
    """
    volume = open_volume(source, axes, fallback_axes=model.axes)
    roles = model_axis_roles(model, volume.axes, source=str(volume.source))
    spatial = [i for i, r in enumerate(roles) if r == "spatial"]
    smallest, step = min_size(model, volume.shape, volume.axes), model.factor
    cap = TEST_TILE_CAP[len(spatial)]
    sizes = {i: max(smallest, smallest + (min(cap, volume.shape[i]) - smallest) // step * step) for i in spatial}
    best, best_std = None, -1.0
    for chunk in sample_chunk_boxes(volume, CANDIDATE_CHUNKS, seed=seed):
        offset, shape = [], []
        for i in range(volume.ndim):
            if i in spatial:
                n, s = volume.shape[i], min(sizes[i], volume.shape[i])
                offset.append(int(np.clip(chunk.offset[i] + chunk.shape[i] // 2 - s // 2, 0, n - s)))
                shape.append(s)
            else:
                offset.append(chunk.offset[i])
                shape.append(1)
        tile = np.asarray(volume.read(Box(tuple(offset), tuple(shape))), np.float32).reshape(
            [shape[i] for i in spatial])
        for j, i in enumerate(spatial):
            if tile.shape[j] < sizes[i]:
                tile = np.take(tile, reflect_indices(0, sizes[i], tile.shape[j]), axis=j)
        std = float(tile.std())
        if std > best_std:
            best, best_std = tile, std
    if best is None or not np.isfinite(best).all():
        raise InputError(f"{volume.source}: no finite tile to take the test tensors from; pass another --sample")
    return np.ascontiguousarray(best)


def min_size(model: Model, shape: Sequence[int], axes: str) -> int:
    """The smallest tile edge the package allows: ``2 * halo + factor`` (the spec needs
    ``size - 2 * halo >= 1``; sizes are multiples of the factor)."""
    return 2 * tiling_halo(model, shape, axes) + model.factor


def tiling_halo(model: Model, shape: Sequence[int], axes: str) -> int:
    """The spatial halo our own tiling uses for ``model`` (``infer.plan_for``)."""
    plan = plan_for(model, tuple(shape), axes)
    return max(h for h, r in zip(plan.halo, plan.roles) if r == "spatial")


def sample_source(model: Model, sample: Any) -> Any:
    """Where the test tile comes from: ``sample``, or the training input the package records."""
    if sample is not None:
        return sample
    recorded = (model.info.get("data") or {}).get("input")
    if isinstance(recorded, str) and Path(recorded).exists():
        return recorded
    where = f" ({recorded} is gone)" if isinstance(recorded, str) and not recorded.startswith("<") else ""
    raise InputError(f"the model's training input is not available{where}: pass --sample IN, a volume with the "
                     f"model's axes ({model.axes}), to cut the package's test tile from")


def export_bioimageio(model_path: str | Path, out: str | Path, *, sample: Any = None, axes: str | None = None,
                      name: str | None = None, authors: Sequence[str] = (), license: str = "CC-BY-4.0",
                      description: str | None = None, options: Mapping[str, Any] | None = None,
                      seed: int = 0) -> Path:
    """Write the model package ``model_path`` as a bioimage.io model zip at ``out``.

    Parameters
    ----------
    model_path : a bigdenoise model directory.
    out : the ``.zip`` to write; refused if it exists or lies inside the model or ``sample``.
    sample : a volume (path) with the model's axes to cut the test tile from (None: the
        training input recorded in the model, when it still exists); ``axes`` its axes (default:
        its metadata's, else the model's).
    name, authors, license, description : bioimage.io metadata (defaults: derived from the
        model; the current user; CC-BY-4.0; a sentence naming the method).
    options : prediction-time options of the method (``--option``), e.g. ``prediction=mmse``.

    Returns
    -------
    The path written. ModelError when the model's prediction is not a function of one tile.
    """
    require_libraries()
    if Path(out).suffix.lower() != ".zip":
        raise OutputError(f"{out}: a bioimage.io model package is a .zip file; name the output OUT.zip")
    if not (Path(model_path) / "config.json").is_file():
        raise ModelError(f"{model_path} is not a bigdenoise model directory (no config.json); export takes a model "
                         f"that `bigdenoise train` wrote")
    model = with_options(load_model(model_path), options or {})
    check_exportable(model)
    source = sample_source(model, sample)
    protect = {"model": model_path, "sample": source if isinstance(source, (str, Path)) else None}
    dest = destination(out, BIOIMAGEIO, protect=protect)
    tile = test_tile(model, source, axes, seed)
    halo = tiling_halo(model, tile.shape, model.spatial_axes)
    expected = predict_whole(tile, model, axes=model.spatial_axes)[None, None].astype(np.float32)
    x = tile[None, None]
    with tempfile.TemporaryDirectory(prefix="bigdenoise-export-") as tmp:
        folder = Path(tmp)
        module = TileDenoiser(model)
        write_onnx(module, torch.from_numpy(x), folder / "weights.onnx")
        write_torchscript(module, torch.from_numpy(x), folder / "weights_torchscript.pt")
        check_graphs(folder, x, expected)
        np.save(folder / "test_input.npy", x)
        np.save(folder / "test_output.npy", expected)
        descr = describe(model, folder, x, expected, halo, name=name, authors=authors, license=license,
                         description=description, source_path=str(model_path))
        write_zip(descr, folder / "package.zip", dest.path)
    return dest.path


def require_libraries() -> None:
    """A ConfigError naming the extra to install when bioimageio.spec, onnx or onnxruntime is missing."""
    for name in ("bioimageio.spec", "onnx", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"export --bioimageio needs {name}: pip install 'bigdenoise[bioimageio]'") from None


def check_graphs(folder: Path, x: np.ndarray, expected: np.ndarray) -> None:
    """The written ONNX (onnxruntime) and TorchScript files reproduce ``expected`` for ``x``
    within ``EXPORT_TOLERANCE`` of its spread; a ModelError (nothing written) otherwise."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "weights.onnx"), providers=["CPUExecutionProvider"])
    results = {"ONNX": session.run(None, {"input": x})[0]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; Fiji still needs it
        results["TorchScript"] = torch.jit.load(str(folder / "weights_torchscript.pt"))(torch.from_numpy(x)).numpy()
    for fmt, y in results.items():
        err = float(np.abs(y - expected).max()) / spread(expected)
        if not err <= EXPORT_TOLERANCE:
            raise ModelError(f"the exported {fmt} graph differs from bigdenoise's own prediction by {err:.3g} of the "
                             f"output's spread (allowed {EXPORT_TOLERANCE}); this model cannot be exported faithfully")


def describe(model: Model, folder: Path, x: np.ndarray, expected: np.ndarray, halo: int, *, name: str | None,
             authors: Sequence[str], license: str, description: str | None, source_path: str):
    """The bioimage.io ``ModelDescr`` of the files in ``folder`` (a ConfigError for bad metadata)."""
    from bioimageio.spec.model import v0_5 as spec
    from pydantic import ValidationError

    method = model.method.name
    axis_ids = [spec.AxisId(a.lower()) for a in model.spatial_axes]
    channel = spec.ChannelAxis(channel_names=[spec.Identifier("intensity")])
    smallest = 2 * halo + model.factor
    inputs = spec.InputTensorDescr(
        id=spec.TensorId("input"), description="raw intensities (any numeric type, read as float32)",
        axes=[spec.BatchAxis(size=1), channel] + [
            spec.SpaceInputAxis(id=a, size=spec.ParameterizedSize(min=smallest, step=model.factor)) for a in axis_ids],
        test_tensor=spec.FileDescr(source=folder / "test_input.npy"))
    outputs = spec.OutputTensorDescr(
        id=spec.TensorId("output"), description="denoised intensities (the input's units)",
        axes=[spec.BatchAxis(size=1), channel] + [
            spec.SpaceOutputAxisWithHalo(id=a, halo=halo, size=spec.SizeReference(
                tensor_id=spec.TensorId("input"), axis_id=a)) for a in axis_ids],
        test_tensor=spec.FileDescr(source=folder / "test_output.npy"))
    covers = cover(spec, inputs, outputs, x, expected, folder)
    (folder / "README.md").write_text(documentation(model, halo))
    torch_version = spec.Version(torch.__version__.split("+")[0])
    try:
        return spec.ModelDescr(
            name=name or f"bigdenoise {method} {Path(source_path).resolve().name}"[:128],
            description=description or f"{method} denoiser trained with bigdenoise {__version__} "
                                       f"({len(model.spatial_axes)}D, axes {model.spatial_axes.lower()})",
            authors=[spec.Author(name=a) for a in (authors or [getpass.getuser()])],
            cite=[spec.CiteEntry(**c) for c in citations(model)],
            license=spec.LicenseId(license),
            documentation=spec.FileDescr(source=folder / "README.md"),
            covers=covers,
            tags=["denoising", method, f"{len(model.spatial_axes)}d", "bigdenoise", "microscopy"],
            inputs=[inputs], outputs=[outputs],
            weights=spec.WeightsDescr(
                onnx=spec.OnnxWeightsDescr(source=folder / "weights.onnx", opset_version=ONNX_OPSET,
                                           comment="normalise -> method -> denormalise, traced from PyTorch"),
                torchscript=spec.TorchscriptWeightsDescr(source=folder / "weights_torchscript.pt",
                                                         pytorch_version=torch_version, parent="onnx",
                                                         comment="the same module as the ONNX weights, traced")),
            config=spec.Config(bigdenoise=bigdenoise_config(model, halo)),
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid bioimage.io metadata: {problems}") from None


def bigdenoise_config(model: Model, halo: int) -> dict[str, Any]:
    """What the package's ``config.bigdenoise`` records about the exported model."""
    out = {
        "version": __version__, "method": model.method.name, "axes": model.spatial_axes,
        "options": json.loads(json.dumps(model.train_config.options, default=str)),
        "receptive_radius": model.receptive_radius, "halo": halo, "factor": model.factor,
        "normalization": model.stats.to_dict(), "normalization_in_graph": True,
    }
    if model.output_stats is not None:
        out["output_normalization"] = model.output_stats.to_dict()
    return out


def cover(spec, inputs, outputs, x: np.ndarray, y: np.ndarray, folder: Path) -> list:
    """The spec's own cover (input and output split along the diagonal), moved into ``folder``."""
    files = spec.generate_covers([(inputs, x)], [(outputs, y)])
    moved = []
    for f in files:
        src = Path(str(f.source))
        shutil.move(src, folder / src.name)
        shutil.rmtree(src.parent, ignore_errors=True)
        moved.append(spec.FileDescr(source=folder / src.name))
    return moved


def documentation(model: Model, halo: int) -> str:
    method, axes = model.method.name, model.spatial_axes.lower()
    return textwrap.dedent(f"""\
        # bigdenoise {method} denoiser

        Trained with bigdenoise {__version__}, method `{method}`, on {len(axes)}D data
        (axes `{axes}`). Input and output are raw intensities: the normalisation the model was trained with
        (mean {model.stats.mean:.6g}, std {model.stats.std:.6g}) is part of the graph, so no pre- or
        post-processing is needed beyond casting to float32.

        Tiles: every spatial edge must be `{2 * halo + model.factor} + n * {model.factor}` voxels. Each output
        voxel depends on input voxels up to {model.receptive_radius} away, so crop a halo of {halo} voxels from
        each side of a tile's output (as bioimage.io consumers do) and tiles join without seams.

        ## Validation

        The test output is bigdenoise's own prediction of the test input; the ONNX and TorchScript weights
        reproduce it within {EXPORT_TOLERANCE:g} of its intensity spread (checked when the package was written).
        Quality on held-out data is not measured in this package: compare against a clean reference or
        inspect residuals (input - output) for structure.
        """)


def write_zip(descr, staging: Path, final: Path) -> None:
    """Save ``descr``'s package to ``staging``, then move it to ``final`` (never replacing a file)."""
    from bioimageio.spec import save_bioimageio_package

    save_bioimageio_package(descr, output_path=staging)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.tmp")
    shutil.copyfile(staging, partial)
    try:
        try:
            os.link(partial, final)  # fails if something appeared at ``final`` meanwhile: never replaced
        except FileExistsError:
            raise OutputError(f"{final} appeared while the package was written; it was left alone") from None
        except OSError:  # a file system without hard links
            if final.exists():
                raise OutputError(f"{final} appeared while the package was written; it was left alone") from None
            os.rename(partial, final)
    finally:
        partial.unlink(missing_ok=True)
