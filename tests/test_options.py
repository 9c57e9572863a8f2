"""Method options from the command line: ``train --option KEY=VALUE`` against the method's pydantic
options, ``predict --option KEY=VALUE`` for the options a method lets change at prediction time
(carried to the Dask workers and into the run record), and their errors."""

import json
import types
from typing import Literal, Union, get_args, get_origin

import pytest
import torch
import zarr

import bigdenoise as bd
from bigdenoise.cli import main
from bigdenoise.config import NetConfig
from bigdenoise.errors import ConfigError
from bigdenoise.infer import for_inference, predict_whole
from bigdenoise.methods import get_method, method_names, parse_options
from bigdenoise.package import with_options

from conftest import EXACT_REL, assert_exact, exactness_error, rough_copy, smooth_volume, write_zarr

TRAIN_TINY = ["--steps", "3", "--val-every", "3", "--batch-size", "4", "--depth", "2", "--features", "4",
              "--patch", "32,32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    data, clean = smooth_volume((3, 64, 72))
    return root, write_zarr(root / "in.zarr", data, (1, 32, 32), "SYX"), data, clean


@pytest.fixture(scope="module")
def pn2v_model(volume):
    """A histogram noise model from clean/noisy pairs, a tiny PN2V model trained with it, and a
    copy with random He weights (its noise model kept), whose output varies at the data's scale."""
    root, src, data, clean = volume
    write_zarr(root / "clean.zarr", clean, (1, 32, 32), "SYX")
    assert main(["noise-model", "--noisy", src, "--clean", str(root / "clean.zarr"), "--axes", "SYX",
                 "--bins", "64", "--out", str(root / "nm")]) == 0
    assert main(["train", src, "--method", "pn2v", "--out", str(root / "pn2v"), "--noise-model", str(root / "nm"),
                 "--option", "samples=8", "--option", "warmup=0", *TRAIN_TINY]) == 0
    return rough_copy(root / "pn2v", root / "rough-pn2v")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


def test_train_option_is_parsed_and_recorded(volume, tmp_path, capsys):
    _, src, _, _ = volume
    assert main(["train", src, "--out", str(tmp_path / "m"), "--option", "masked_fraction=0.02",
                 "--option", "struct_axis=none", *TRAIN_TINY]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())["train_config"]
    assert config["options"]["masked_fraction"] == 0.02 and config["options"]["struct_axis"] is None  # parsed
    # every option is recorded, defaults included: a later default change leaves the package loadable
    assert set(config["options"]) == set(get_method("n2v").options.model_fields)


def test_values_are_parsed_by_the_options_model():
    n2v = get_method("n2v")
    assert parse_options(n2v, {"masked_fraction": "0.5e-1", "struct_axis": "1", "struct_span": "2"}) == {
        "masked_fraction": 0.05, "struct_axis": 1, "struct_span": 2}
    assert parse_options(n2v, {"struct_axis": "null"}) == {"struct_axis": None}  # int | None
    assert parse_options(get_method("noise2stack"), {"stack_axis": "t"}) == {"stack_axis": "T"}  # its validator ran
    with pytest.raises(ConfigError, match="struct_axis='x'"):
        parse_options(n2v, {"struct_axis": "x"})


@pytest.mark.parametrize("args, message", [
    (["--option", "bogus=1"], "unknown option 'bogus' for method n2v; the options of method n2v: "
                              "masked_fraction (float, default 0.015625), window (int, default 5)"),
    (["--option", "masked_fraction=abc"], "masked_fraction='abc': Input should be a valid number"),
    (["--option", "masked_fraction=0.7"], "masked_fraction='0.7': Input should be less than 0.5"),
    (["--option", "window=1.5"], "window='1.5'"),
    (["--masked-fraction", "0.01", "--option", "masked_fraction=0.02"], "contradicts --masked-fraction"),
    (["--n2v2", "--option", "replacement=uniform"], "contradicts --n2v2"),
    (["--option", "window=5", "--option", "window=7"], "--option window is given twice"),
])
def test_train_option_errors_are_one_line(volume, tmp_path, capsys, args, message):
    _, src, _, _ = volume
    assert main(["train", src, "--out", str(tmp_path / "m"), *args, *TRAIN_TINY]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "m").exists()


def test_an_option_given_both_ways_alike_is_fine():
    from bigdenoise.cli import _train_kwargs, build_parser

    a = build_parser().parse_args(["train", "x", "--out", "y", "--masked-fraction", "0.02",
                                   "--option", "masked_fraction=2e-2"])
    assert _train_kwargs(a)["options"] == {"masked_fraction": 0.02}


def test_option_help_lists_types_defaults_and_descriptions(pn2v_model, capsys):
    assert main(["train", "--method", "pn2v", "--option", "help"]) == 0  # no input or --out needed
    out = capsys.readouterr().out
    for text in ("warmup (float)", "default 0.3", "prediction (mmse|prior_mean)", "likelihood-weighted mean",
                 "noise_model (str | None)"):
        assert text in out
    assert main(["predict", "--model", str(pn2v_model), "--option=help"]) == 0
    out = capsys.readouterr().out
    assert "prediction (mmse|prior_mean)" in out and "samples (int)" not in out
    assert main(["export", str(pn2v_model), "--option", "help"]) == 0  # no --bioimageio needed
    assert "prediction (mmse|prior_mean)" in capsys.readouterr().out


def _probe_values(field, annotation=None):
    """Values to try for a prediction-time option: every choice of a Literal (or a bool), None
    where it is admitted; for a number (e.g. COSDD's ``samples``), its default, its bounds, twice
    the default and 1 (the caller keeps those its constraints allow)."""
    annotation = field.annotation if annotation is None else annotation
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(v for a in get_args(annotation) for v in _probe_values(field, a))
    if annotation is type(None):
        return (None,)
    if annotation is bool:
        return (False, True)
    if annotation in (int, float):
        default = field.get_default(call_default_factory=True)
        default = 1 if default is None else default
        lo = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), default)
        hi = next((m.le for m in field.metadata if getattr(m, "le", None) is not None), default)
        return tuple(annotation(v) for v in {default, lo, hi, 2 * default, 1})
    raise AssertionError(f"add a way to probe prediction-time options of type {annotation}")


def test_prediction_options_only_act_at_prediction():
    """A method's predict_options never change its networks: the parameter shapes (built on the meta
    device) are the same for every value a Literal option allows, and for a numeric option's
    default and extreme values."""
    for name in method_names():
        method = get_method(name)
        for key in method.predict_options:
            choices = [v for v in _probe_values(method.options.model_fields[key])
                       if _valid(method, key, v)]
            assert choices, (name, key)
            shapes = set()
            for value in choices:
                options = method.options(**{key: value})
                with torch.device("meta"):
                    nets = method.build(NetConfig(depth=1, features=4), 2, options)
                shapes.add(tuple((k, tuple(p.shape)) for n, net in nets.items()
                                 for k, p in net.state_dict().items()))
            assert len(shapes) == 1, (name, key)
    assert get_method("pn2v").predict_options == ("prediction",)


def _valid(method, key, value):
    try:
        method.options(**{key: value})
    except ValueError:
        return False
    return True


def test_predict_option_reaches_the_workers_and_equals_the_in_memory_path(pn2v_model, volume, tmp_path):
    _, src, data, _ = volume
    common = ["--model", str(pn2v_model), "--cluster", "threads", "--tile", "16,16", "--block-voxels", "3000",
              "--quiet"]
    assert main(["predict", src, "--out", str(tmp_path / "mmse.zarr"), *common]) == 0
    assert main(["predict", src, "--out", str(tmp_path / "prior.zarr"), "--option", "prediction=prior_mean",
                 *common]) == 0
    mmse = zarr.open_array(str(tmp_path / "mmse.zarr"), mode="r")[...]
    prior = zarr.open_array(str(tmp_path / "prior.zarr"), mode="r")[...]
    model = bd.load_model(pn2v_model)
    assert_exact(prior, predict_whole(data, for_inference(with_options(model, {"prediction": "prior_mean"}))))
    assert_exact(mmse, predict_whole(data, for_inference(model)))
    assert exactness_error(prior, mmse) > 100 * EXACT_REL  # the option changed the prediction
    assert model.options.prediction == "mmse"  # the package is unchanged
    record = zarr.open_array(str(tmp_path / "prior.zarr"), mode="r").attrs["bigdenoise"]
    assert record["options"] == {"prediction": "prior_mean"}


def test_python_api_takes_prediction_options(pn2v_model, volume, tmp_path):
    _, src, data, _ = volume
    bd.predict(src, pn2v_model, tmp_path / "out.zarr", cluster="threads", options={"prediction": "prior_mean"},
               progress=False)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert_exact(out, predict_whole(data, for_inference(with_options(bd.load_model(pn2v_model),
                                                                     {"prediction": "prior_mean"}))))
    # resuming with other options (here: none, the trained mmse) is refused
    with pytest.raises(ConfigError, match="options differ"):
        bd.predict(src, pn2v_model, tmp_path / "out.zarr", cluster="threads", resume=True, progress=False)
    bd.predict(src, pn2v_model, tmp_path / "out.zarr", cluster="threads", resume=True, progress=False,
               options={"prediction": "prior_mean"})


@pytest.mark.parametrize("option, message", [
    ("samples=4", "option 'samples' of method pn2v cannot be set at prediction time"),
    ("prediction=median", "prediction='median': Input should be 'mmse' or 'prior_mean'"),
    ("nope=1", "unknown option 'nope' for method pn2v"),
])
def test_predict_option_errors_are_one_line_and_write_nothing(pn2v_model, volume, tmp_path, capsys, option,
                                                              message):
    _, src, _, _ = volume
    assert main(["predict", src, "--model", str(pn2v_model), "--out", str(tmp_path / "out.zarr"),
                 "--cluster", "threads", "--option", option, "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert message in err and "prediction (mmse|prior_mean, default 'mmse')" in err
    assert not (tmp_path / "out.zarr").exists()
