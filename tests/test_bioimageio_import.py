"""Someone else's bioimage.io model run blockwise with our tiling (bigdenoise.bioimageio_model).

The tests build their own tiny foreign models: small torch conv nets with a known receptive
radius, exported to ONNX (or TorchScript) and wrapped into spec-0.5 packages with
bioimageio.spec's ``ModelDescr`` and ``save_bioimageio_package``, as another tool would.
"""

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

pytest.importorskip("bioimageio.core")
ort = pytest.importorskip("onnxruntime")

import bigdenoise as bd  # noqa: E402
from bigdenoise.bioimageio_model import is_bioimageio, load_bioimageio  # noqa: E402
from bigdenoise.cli import main  # noqa: E402

from conftest import smooth_volume, write_zarr  # noqa: E402

REL = 1e-5  # blockwise vs whole-image onnxruntime: max |diff| <= REL * (max - min of the reference)
EPS = 1e-6  # bioimageio.core's zero_mean_unit_variance: (x - mean) / (std + eps)
GAIN, OFFSET = 40.0, 300.0  # the packages' post-processing: y * GAIN + OFFSET


def conv_net(radius_layers=(1, 1, 1), channels=1, pooled=False, seed=0) -> torch.nn.Module:
    """3x3 convolutions (dilation d: radius d each) with tanh between: receptive radius sum(radius_layers).
    ``pooled``: conv, 2x average pooling, conv, 2x nearest up-sampling, conv (sizes: multiples of 2)."""
    torch.manual_seed(seed)
    if pooled:
        layers = [torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
                  torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Upsample(scale_factor=2),
                  torch.nn.Conv2d(4, 1, 3, padding=1)]
    else:
        layers, c = [], channels
        for i, d in enumerate(radius_layers):
            last = i == len(radius_layers) - 1
            layers.append(torch.nn.Conv2d(c, 1 if last else 4, 3, padding=d, dilation=d))
            layers += [] if last else [torch.nn.Tanh()]
            c = 4
    return torch.nn.Sequential(*layers).eval()


class ChannelLast3D(torch.nn.Module):
    """Two 3x3x3 convolutions (radius 2) on channel-last tensors ``(b, *space, c)``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(),
                                       torch.nn.Conv3d(4, 1, 3, padding=1))

    def forward(self, x):
        return self.net(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)


def make_package(root: Path, name: str, net: torch.nn.Module, *, weights=("onnx",), halo=None, step=1,
                 channels=1, processing=True, axes="bcyx") -> Path:
    """A spec-0.5 bioimage.io package of ``net`` (input and output ``axes``, e.g. ``bcyx`` or
    ``bzyxc``): zero_mean_unit_variance before, scale_linear (GAIN, OFFSET) after when
    ``processing``; ``halo`` on the output's space axes when given; input sizes ``16 + k * step``."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as m

    folder = root / name
    folder.mkdir()
    edge = 32 if len(axes) == 4 else 16
    shape = tuple(1 if a == "b" else channels if a == "c" else edge for a in axes)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    np.save(folder / "in.npy", x)
    np.save(folder / "out.npy", y * GAIN + OFFSET)
    (folder / "README.md").write_text(f"# {name}\nA test model.\n")
    found = {}
    if "onnx" in weights:
        dyn = {i: a for i, a in enumerate(axes) if a != "c"}
        with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated, and simplest here
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(net, torch.from_numpy(x), str(folder / "w.onnx"), input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": dyn, "output": dyn}, opset_version=17,
                              dynamo=False)
        found["onnx"] = m.OnnxWeightsDescr(source=folder / "w.onnx", opset_version=17)
    if "torchscript" in weights:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.trace(net, torch.from_numpy(x)).save(str(folder / "w.pt"))
        found["torchscript"] = m.TorchscriptWeightsDescr(source=folder / "w.pt", pytorch_version="2.0")
    names = [m.Identifier(f"c{i}") for i in range(channels)]
    space = [a for a in axes if a in "zyx"]
    space_in = {a: m.SpaceInputAxis(id=m.AxisId(a), size=m.ParameterizedSize(min=16, step=step)) for a in space}
    ref = lambda a: m.SizeReference(tensor_id=m.TensorId("input"), axis_id=m.AxisId(a))  # noqa: E731
    space_out = {a: m.SpaceOutputAxisWithHalo(id=m.AxisId(a), size=ref(a), halo=halo) if halo else
                 m.SpaceOutputAxis(id=m.AxisId(a), size=ref(a)) for a in space}
    order = lambda batch, channel, space: [batch if a == "b" else channel if a == "c" else space[a]  # noqa: E731
                                           for a in axes]
    pre = [m.ZeroMeanUnitVarianceDescr()] if processing else []
    post = [m.ScaleLinearDescr(kwargs=m.ScaleLinearKwargs(gain=GAIN, offset=OFFSET))] if processing else []
    descr = m.ModelDescr(
        name=f"tiny {name} denoiser", description="a tiny test denoiser", authors=[m.Author(name="someone else")],
        cite=[m.CiteEntry(text="none", url="https://example.com")], license="MIT",
        documentation=m.FileDescr(source=folder / "README.md"),
        inputs=[m.InputTensorDescr(id=m.TensorId("input"), axes=order(m.BatchAxis(), m.ChannelAxis(
            channel_names=names), space_in),
                                   test_tensor=m.FileDescr(source=folder / "in.npy"), preprocessing=pre)],
        outputs=[m.OutputTensorDescr(id=m.TensorId("output"), axes=order(m.BatchAxis(), m.ChannelAxis(
            channel_names=[m.Identifier("c0")]), space_out), test_tensor=m.FileDescr(source=folder / "out.npy"),
            postprocessing=post)],
        weights=m.WeightsDescr(**found))
    return save_bioimageio_package(descr, output_path=root / f"{name}.zip")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    nets = {"conv": conv_net(), "wide": conv_net((2, 3)), "pooled": conv_net(pooled=True)}
    return {
        "conv": (make_package(root, "conv", nets["conv"]), nets["conv"], 3),
        "wide": (make_package(root, "wide", nets["wide"]), nets["wide"], 5),
        "pooled": (make_package(root, "pooled", nets["pooled"], step=2), nets["pooled"], None),
        "halo": (make_package(root, "halo", nets["conv"], halo=4), nets["conv"], 3),
        "torchscript": (make_package(root, "ts", nets["conv"], weights=("torchscript",)), nets["conv"], 3),
        "rgb": (make_package(root, "rgb", conv_net(channels=3), channels=3), None, 3),
        "3d": (make_package(root, "xyz", ChannelLast3D().eval(), axes="bxyzc"), None, 2),
    }


def whole_image_reference(zip_path: Path, image: np.ndarray, xyz_last: bool = False) -> np.ndarray:
    """One onnxruntime pass over the whole ``image`` (as ``b, c, *space``, or ``b, x, y, z, c`` when
    ``xyz_last``) with the packages' processing: the image's own mean and std (the sample is the
    whole image), then GAIN, OFFSET."""
    x = image.astype(np.float32)
    x = (x - x.mean()) / (x.std() + EPS)
    with zipfile.ZipFile(zip_path) as z:
        session = ort.InferenceSession(z.read("w.onnx"), providers=["CPUExecutionProvider"])
    x = x.T[None, ..., None] if xyz_last else x[None, None]
    y = session.run(None, {"input": np.ascontiguousarray(x)})[0]
    return (y[0, ..., 0].T if xyz_last else y[0, 0]) * GAIN + OFFSET


def close(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| as a fraction of the reference's range."""
    return float(np.abs(out - ref).max() / (ref.max() - ref.min()))


@pytest.mark.parametrize("name", ["conv", "pooled"])
def test_onnx_model_runs_blockwise_and_equals_a_whole_image_run(tmp_path, packages, name):
    """Nine blocks (one 32x32 chunk each), 16x16 tiles, threads: the Zarr on disk equals one
    onnxruntime pass over the whole image within 1e-5 of its range; the halo was measured."""
    zip_path = packages[name][0]
    image = smooth_volume((96, 80), seed=1)[0]
    src = write_zarr(tmp_path / "in.zarr", image, (32, 32), "YX")
    s = bd.predict(src, zip_path, tmp_path / "out.zarr", cluster="threads", block_voxels=1024, tile=16,
                   progress=False)
    assert s["blocks"] == 9 and s["tile"] == (16, 16)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert close(out, whole_image_reference(zip_path, image)) <= REL
    assert min(s["halo"]) >= (3 if name == "conv" else 1)


def test_halo_below_the_radius_is_not_exact(tmp_path, packages):
    """The control: a halo one below the 3x3x3 net's radius (3) visibly differs from the whole image."""
    zip_path = packages["conv"][0]
    image = smooth_volume((96, 80), seed=1)[0]
    src = write_zarr(tmp_path / "in.zarr", image, (32, 32), "YX")
    bd.predict(src, zip_path, tmp_path / "out.zarr", cluster="threads", block_voxels=1024, tile=16, halo=2,
               inexact=True, progress=False)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert close(out, whole_image_reference(zip_path, image)) > 5 * REL


def test_measured_halo_covers_the_receptive_radius(tmp_path, packages):
    """With no halo in the description, the impulse response finds each net's radius (3 for
    three 3x3 convolutions, 5 for dilations 2 and 3), and the halo adds the safety margin; a
    described halo is taken as it is."""
    for name in ("conv", "wide"):
        zip_path, _, radius = packages[name]
        model = load_bioimageio(zip_path)
        assert model.info["halo_from"] == "measured"
        assert model.info["measured_radius"] == radius
        assert model.receptive_radius >= radius + 2
    pooled = load_bioimageio(packages["pooled"][0])
    assert pooled.factor == 2 and pooled.info["measured_radius"] >= 4
    described = load_bioimageio(packages["halo"][0])
    assert described.info["halo_from"] == "description" and described.receptive_radius == 4
    folder = tmp_path / "unpacked"  # a folder holding bioimageio.yaml is a model too
    with zipfile.ZipFile(packages["halo"][0]) as z:
        z.extractall(folder)
    assert is_bioimageio(folder) and load_bioimageio(folder).receptive_radius == 4


def _fails(argv, capsys, *needles):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_torchscript_only_needs_trust_model(tmp_path, packages, capsys):
    """TorchScript is code: refused in one line naming --trust-model (nothing written); with the
    flag it runs blockwise and equals the traced net over the whole image."""
    zip_path, net, _ = packages["torchscript"]
    image = smooth_volume((64, 64), seed=2)[0]
    src = write_zarr(tmp_path / "in.zarr", image, (32, 32), "YX")
    argv = ["predict", src, "--model", str(zip_path), "--out", str(tmp_path / "out.zarr"), "--cluster", "threads",
            "--block-voxels", "1024", "--tile", "16", "--quiet"]
    _fails(argv, capsys, "TorchScript", "--trust-model")
    assert not (tmp_path / "out.zarr").exists()
    assert main(argv + ["--trust-model"]) == 0
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    x = (image - image.mean()) / (image.std() + EPS)
    with torch.no_grad():
        ref = net(torch.from_numpy(x[None, None].astype(np.float32))).numpy()[0, 0] * GAIN + OFFSET
    assert close(out, ref) <= REL


def test_unmappable_axes_fail_with_one_line(tmp_path, packages, capsys):
    """A model taking three channels cannot map onto one channel of the volume: one line, nothing written."""
    image = smooth_volume((64, 64), seed=3)[0]
    src = write_zarr(tmp_path / "in.zarr", image, (32, 32), "YX")
    out = tmp_path / "out.zarr"
    _fails(["predict", src, "--model", str(packages["rgb"][0]), "--out", str(out), "--cluster", "threads"],
           capsys, "3 channels")
    assert not out.exists()


def test_2d_model_runs_plane_by_plane_over_a_zyx_volume(tmp_path, packages):
    """A 2D (y, x) model over a ZYX Zarr: each plane is one image; statistics are the volume's."""
    zip_path = packages["conv"][0]
    volume = smooth_volume((3, 48, 40), seed=4)[0]
    src = write_zarr(tmp_path / "in.zarr", volume, (1, 24, 24), "ZYX")
    s = bd.predict(src, zip_path, tmp_path / "out.zarr", cluster="threads", block_voxels=576, progress=False)
    assert s["blocks"] == 12
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    x = (volume - volume.mean()) / (volume.std() + EPS)
    with zipfile.ZipFile(zip_path) as z:
        session = ort.InferenceSession(z.read("w.onnx"), providers=["CPUExecutionProvider"])
    ref = np.stack([session.run(None, {"input": p[None, None]})[0][0, 0] for p in x]) * GAIN + OFFSET
    assert close(out, ref) <= REL


def test_3d_model_with_other_axis_order_runs_blockwise_over_a_zyx_volume(tmp_path, packages):
    """A 3D model whose tensors are ``b, x, y, z, c``: eight blocks of a ZYX Zarr equal one
    onnxruntime pass over the whole (transposed) volume."""
    zip_path = packages["3d"][0]
    volume = smooth_volume((20, 40, 36), seed=6)[0]
    src = write_zarr(tmp_path / "in.zarr", volume, (10, 20, 20), "ZYX")
    s = bd.predict(src, zip_path, tmp_path / "out.zarr", cluster="threads", block_voxels=4000, tile=8,
                   progress=False)
    assert s["blocks"] == 8 and min(s["halo"]) >= 2
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert close(out, whole_image_reference(zip_path, volume, xyz_last=True)) <= REL


@pytest.mark.slow
def test_worker_processes_reload_the_model_from_its_zip(tmp_path, packages):
    """A LocalCluster of two worker processes: each reloads the package from its path with the
    client's halo and statistics (execute.BlockSettings.imported) and the result is the same."""
    zip_path = packages["conv"][0]
    image = smooth_volume((64, 64), seed=5)[0]
    src = write_zarr(tmp_path / "in.zarr", image, (32, 32), "YX")
    bd.predict(src, zip_path, tmp_path / "out.zarr", cluster="local", workers=2, block_voxels=1024, progress=False)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert close(out, whole_image_reference(zip_path, image)) <= REL
