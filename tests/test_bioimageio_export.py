"""bioimage.io export (``bigdenoise export MODEL --bioimageio OUT.zip``): the package passes
bioimage.io.core's own model test; its ONNX (onnxruntime) and TorchScript weights give our own
prediction within 1e-4 of the output's spread, on the test tile and on a whole image of another
size; every method whose prediction is a function of one tile exports; what cannot export says
why in one line and writes nothing; the output never replaces a file nor lands in the model."""

import zipfile

import numpy as np
import pytest
import torch
import yaml

import bigdenoise as bd
from bigdenoise.bioimageio_export import EXPORT_TOLERANCE, export_bioimageio
from bigdenoise.calibration import make_noise_model, save_noise_model
from bigdenoise.cli import main
from bigdenoise.errors import InputError, ModelError
from bigdenoise.infer import predict_array
from bigdenoise.package import with_options

from conftest import COSDD_SMALL, TINY, exactness_error, rough_copy, smooth_volume, write_zarr


def unpack(zip_path, folder):
    """The package's files in ``folder`` and its ``rdf.yaml`` as a dict."""
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(folder)
    return yaml.safe_load((folder / "rdf.yaml").read_text())


def run_onnx(folder, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "weights.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": np.ascontiguousarray(x, np.float32)})[0]


def run_torchscript(folder, x):
    with torch.no_grad():
        return torch.jit.load(str(folder / "weights_torchscript.pt"))(torch.from_numpy(np.float32(x))).numpy()


def assert_graphs_predict_like_us(folder, model, plane):
    """ONNX and TorchScript reproduce the package's test output and our tiled prediction of
    ``plane`` (a whole image of the net's spatial axes, not the test tile's shape)."""
    x, expected = np.load(folder / "test_input.npy"), np.load(folder / "test_output.npy")
    ours = predict_array(plane, model, axes=model.spatial_axes)
    assert np.ptp(ours) > 0.1 * np.ptp(plane), "the model is nearly flat: the comparison would prove nothing"
    assert plane.shape != x.shape[2:]
    for run in (run_onnx, run_torchscript):
        assert exactness_error(run(folder, x)[0, 0], expected[0, 0]) <= EXPORT_TOLERANCE, run.__name__
        assert exactness_error(run(folder, plane[None, None])[0, 0], ours) <= EXPORT_TOLERANCE, run.__name__


@pytest.fixture(scope="module")
def exported(tmp_path_factory, rough_2d):
    """``rough_2d`` (tiny trained N2V, random He weights) exported through the command line."""
    model_dir, src, data = rough_2d
    root = tmp_path_factory.mktemp("export")
    out = root / "n2v.zip"
    assert main(["export", str(model_dir), "--bioimageio", str(out), "--sample", src, "--name", "tiny n2v test",
                 "--author", "Ada Lovelace", "--author", "Alan Turing"]) == 0
    return out, unpack(out, root / "unpacked"), root / "unpacked", bd.load_model(model_dir), data


def test_package_describes_the_model(exported):
    out, rdf, folder, model, _ = exported
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert rdf["name"] == "tiny n2v test" and [a["name"] for a in rdf["authors"]] == ["Ada Lovelace", "Alan Turing"]
    assert set(rdf["weights"]) == {"onnx", "torchscript"}
    assert "10.1109/CVPR.2019.00223" in [c.get("doi") for c in rdf["cite"]]  # Noise2Void
    assert rdf["covers"] and (folder / rdf["covers"][0]["source"]).is_file()
    # halo: the receptive radius (23) rounded up to the factor (4), as our tiling uses
    space_out = [a for a in rdf["outputs"][0]["axes"] if a["type"] == "space"]
    assert [a["id"] for a in space_out] == ["y", "x"] and {a["halo"] for a in space_out} == {24}
    assert model.receptive_radius == 23 and model.factor == 4
    space_in = [a for a in rdf["inputs"][0]["axes"] if a["type"] == "space"]
    assert {(a["size"]["min"], a["size"]["step"]) for a in space_in} == {(2 * 24 + 4, 4)}
    assert rdf["config"]["bigdenoise"]["normalization"]["mean"] == pytest.approx(model.stats.mean)
    assert np.load(folder / "test_input.npy").shape == (1, 1, 64, 72)  # a whole 64 x 72 plane of the sample


def test_onnx_and_torchscript_give_our_prediction(exported):
    _, _, folder, model, data = exported
    assert_graphs_predict_like_us(folder, model, data[2, :60, :68])


@pytest.mark.slow
def test_bioimageio_core_model_test_passes(exported):
    from bioimageio.core import test_model

    summary = test_model(str(exported[0]))
    assert summary.status == "passed", summary.format()


def _train(root, method, **kw):
    """A tiny ``method`` model trained a few steps on an SYX stack, then given random He weights,
    with its input path and data."""
    data, clean = smooth_volume((3, 64, 72), seed=5)
    src = write_zarr(root / "in.zarr", data, (1, 32, 32), "SYX")
    extra = {}
    if method in ("n2n", "care"):
        second = (clean + np.random.default_rng(1).normal(0, 12, clean.shape)).astype(np.float32)
        extra["target"] = write_zarr(root / "target.zarr", clean if method == "care" else second, (1, 32, 32), "SYX")
    if method == "pn2v":
        nm, info = make_noise_model(data, clean=clean, axes="SYX", bins=64)
        save_noise_model(nm, root / "nm", info=info)
        kw["options"] = {"noise_model": str(root / "nm"), "samples": 8, **kw.get("options", {})}
    config = {**TINY, "patch": (32, 32), **kw}
    bd.train(src, root / "model", method=method, progress=False, **extra, **config)
    return rough_copy(root / "model", root / "rough"), src, data


DBSN = {"steps": 4, "val_every": 4, "options": {"width": 4, "blocks": 2}}
TILE_METHODS = {  # case: (method, training settings, prediction options given to the export)
    "n2v2": ("n2v", {"net": {"depth": 2, "features": 4, "n2v2": True}, "options": {"replacement": "median"}}, {}),
    "struct-n2v": ("n2v", {"options": {"struct_axis": 1, "struct_span": 2}}, {}),
    "n2n": ("n2n", {}, {}),
    "care": ("care", {}, {}),
    "pn2v": ("pn2v", {}, {}),
    "dbsn-distilled": ("dbsn", DBSN, {}),
    "dbsn-mu": ("dbsn", DBSN, {"prediction": "mu"}),
    "dbsn-posterior": ("dbsn", DBSN, {"prediction": "posterior"}),  # noise=pg: the level comes from the tile
    "cosdd-direct": ("cosdd", {"options": COSDD_SMALL}, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(TILE_METHODS))
def test_every_tile_method_exports_and_predicts_like_us(tmp_path, case):
    method, kw, options = TILE_METHODS[case]
    model_dir, src, data = _train(tmp_path, method, **kw)
    out = export_bioimageio(model_dir, tmp_path / "out.zip", sample=src, authors=["A Tester"], options=options)
    rdf = unpack(out, tmp_path / "unpacked")
    model = with_options(bd.load_model(model_dir), options)
    assert rdf["config"]["bigdenoise"]["method"] == method
    assert {a["halo"] for a in rdf["outputs"][0]["axes"] if a["type"] == "space"} == {
        -(-model.receptive_radius // model.factor) * model.factor}
    assert_graphs_predict_like_us(tmp_path / "unpacked", model, data[1, :60, :68])


@pytest.mark.slow
def test_a_3d_model_exports_with_a_mirrored_test_tile(tmp_path, rough_3d):
    """A ZYX model: the test tile is mirrored along Z (12 planes, fewer than 2 * halo + factor =
    52) and the graphs predict a whole volume like us."""
    model_dir, data = rough_3d
    src = write_zarr(tmp_path / "in.zarr", data, (4, 32, 32), "ZYX")
    out = export_bioimageio(model_dir, tmp_path / "out.zip", sample=src)
    rdf = unpack(out, tmp_path / "unpacked")
    assert [a["id"] for a in rdf["inputs"][0]["axes"] if a["type"] == "space"] == ["z", "y", "x"]
    assert np.load(tmp_path / "unpacked" / "test_input.npy").shape == (1, 1, 52, 64, 60)
    model = bd.load_model(model_dir)
    ours = predict_array(data, model, axes="ZYX")
    for run in (run_onnx, run_torchscript):
        assert exactness_error(run(tmp_path / "unpacked", data[None, None])[0, 0], ours) <= EXPORT_TOLERANCE


def test_pn2v_mmse_in_the_graph_is_the_methods_prediction(tmp_path):
    """PN2V's MMSE (noise model and all K samples) is computed inside the exported graph."""
    model_dir, src, data = _train(tmp_path, "pn2v")
    out = export_bioimageio(model_dir, tmp_path / "out.zip", sample=src)
    unpack(out, tmp_path / "unpacked")
    model = bd.load_model(model_dir)
    plane = data[0, :60, :68]
    mmse = predict_array(plane, model, axes="YX")
    prior_mean = predict_array(plane, with_options(model, {"prediction": "prior_mean"}), axes="YX")
    assert exactness_error(prior_mean, mmse) > 10 * EXPORT_TOLERANCE  # the two estimates differ visibly
    assert exactness_error(run_onnx(tmp_path / "unpacked", plane[None, None])[0, 0], mmse) <= EXPORT_TOLERANCE


def _untrained(root, method, axes="SYX", shape=(3, 64, 72), **config):
    """A model package of ``method`` with freshly built networks (no training needed to be refused)."""
    data, _ = smooth_volume(shape, seed=2)
    src = write_zarr(root / "in.zarr", data, (1, 32, 32) if len(shape) == 3 else (4, 32, 32), axes)
    bd.train(src, root / "model", method=method, progress=False, **{**TINY, "steps": 1, "val_every": 1,
                                                                     "net": {"depth": 1, "features": 4}, **config})
    return root / "model", src


@pytest.mark.parametrize("case, flags, says", [
    ("noise2stack", [], "neighbouring planes"),
    ("background", [], "background pattern"),
    ("cosdd", ["--option", "prediction=sampled"], "prediction=direct"),
    ("dbsn", ["--option", "prediction=posterior"], "pre-pass"),
])
def test_what_cannot_export_says_why_in_one_line_and_writes_nothing(tmp_path, capsys, case, flags, says):
    if case == "noise2stack":
        model_dir, src = _untrained(tmp_path, "noise2stack", axes="ZYX", shape=(6, 32, 32), patch=(16, 16))
    elif case == "background":
        model_dir, src = _untrained(tmp_path, "n2v", patch=(16, 16), remove_background=True)
    elif case == "cosdd":
        model_dir, src = _untrained(tmp_path, "cosdd", patch=(16, 16),
                                    options={"levels": 1, "s_code": 4, "ar_channels": 4, "distill_samples": 1})
    else:
        model_dir, src = _untrained(tmp_path, "dbsn", patch=(16, 16), options={"width": 4, "blocks": 1,
                                                                              "noise": "awgn"})
    out = tmp_path / "out.zip"
    assert main(["export", str(model_dir), "--bioimageio", str(out), "--sample", src, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err and says in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.zip*"))
    with pytest.raises(ModelError):
        export_bioimageio(model_dir, out, sample=src, options=dict(f.split("=") for f in flags[1::2]))


def test_output_is_never_replaced_nor_inside_the_model(tmp_path, rough_2d, capsys):
    model_dir, src, _ = rough_2d
    taken = tmp_path / "taken.zip"
    taken.write_bytes(b"the user's own file")
    inside = model_dir / "export.zip"
    for out, says in [(taken, "already exists"), (inside, "model"), (tmp_path / "model.yaml", ".zip")]:
        assert main(["export", str(model_dir), "--bioimageio", str(out), "--sample", src]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert taken.read_bytes() == b"the user's own file"
    assert not inside.exists() and not (tmp_path / "model.yaml").exists()


def test_a_missing_training_input_asks_for_a_sample(tmp_path, rough_2d):
    model_dir, src, _ = rough_2d
    copy = rough_copy(model_dir, tmp_path / "moved")  # a package whose recorded input we then hide
    config = (copy / "config.json").read_text().replace(src, str(tmp_path / "gone.zarr"))
    (copy / "config.json").write_text(config)
    with pytest.raises(InputError, match="--sample"):
        export_bioimageio(copy, tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()


def test_the_exported_zip_predicts_blockwise_like_the_model_it_came_from(tmp_path, exported, rough_2d):
    """Round trip: ``predict --model OUT.zip`` (the ONNX weights, imported) writes what ``predict
    --model DIR`` writes, tiled over several blocks, within the export tolerance."""
    import zarr

    out, _, _, _, _ = exported
    model_dir, _, _ = rough_2d
    data, _ = smooth_volume((3, 96, 80), seed=11)
    src = write_zarr(tmp_path / "in.zarr", data, (1, 48, 40), "SYX")
    kw = dict(cluster="threads", progress=False, tile=(32, 32))
    bd.predict(src, model_dir, tmp_path / "ours.zarr", **kw)
    bd.predict(src, out, tmp_path / "zip.zarr", **kw)
    ours = zarr.open_array(str(tmp_path / "ours.zarr"), mode="r")[...]
    assert np.ptp(ours) > 0.1 * np.ptp(data), "the model is nearly flat: the comparison would prove nothing"
    assert exactness_error(zarr.open_array(str(tmp_path / "zip.zarr"), mode="r")[...], ours) <= EXPORT_TOLERANCE
