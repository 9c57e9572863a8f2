"""The training loop: learning, reproducibility, resume, checkpoints, history, model packages."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

import bigdenoise as bd
from bigdenoise.errors import ConfigError, ModelError, OutputError

from conftest import TINY, smooth_volume, write_zarr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data, clean = smooth_volume((4, 64, 64), seed=3, noise=0.5)
    return write_zarr(tmp_path_factory.mktemp("data") / "in.zarr", data, (1, 32, 32), "SYX"), data, clean


def _weights(model_dir):
    return load_file(str(model_dir / "weights.safetensors"))


def test_training_lowers_validation_loss(tmp_path, stack):
    src, _, _ = stack
    bd.train(src, tmp_path / "m", progress=False, steps=120, val_every=20, batch_size=8, patch=(32, 32),
             val_patches=32, net={"depth": 2, "features": 8})
    rows = (tmp_path / "m" / "history.csv").read_text().splitlines()
    assert rows[0].startswith("step,stage,train_loss,val_loss")
    val = [float(r.split(",")[3]) for r in rows[1:]]
    assert len(val) == 6
    assert min(val[-3:]) < 0.9 * val[0]
    assert (tmp_path / "m" / "loss.png").stat().st_size > 1000


def test_same_seed_gives_same_model_and_resume_continues_exactly(tmp_path, stack):
    src, _, _ = stack
    cfg = dict(progress=False, batch_size=4, patch=(32, 32), val_patches=8, val_every=4, net={"depth": 2, "features": 4})
    bd.train(src, tmp_path / "a", steps=8, **cfg)
    bd.train(src, tmp_path / "b", steps=8, **cfg)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)

    bd.train(src, tmp_path / "c", steps=4, **cfg)
    model = bd.train(src, tmp_path / "c", steps=8, resume=True, **cfg)
    assert model.info["steps"] == 8
    wc = _weights(tmp_path / "c")
    assert all(np.array_equal(wa[k].numpy(), wc[k].numpy()) for k in wa)
    rows = (tmp_path / "c" / "history.csv").read_text().splitlines()[1:]
    assert [int(float(r.split(",")[0])) for r in rows] == [4, 8]


def test_resume_refuses_a_different_configuration(tmp_path, stack):
    src, _, _ = stack
    bd.train(src, tmp_path / "m", progress=False, **TINY, patch=(32, 32))
    with pytest.raises(ConfigError, match="differs"):
        bd.train(src, tmp_path / "m", progress=False, resume=True, **{**TINY, "batch_size": 2}, patch=(32, 32))
    with pytest.raises(OutputError, match="no checkpoint"):
        bd.train(src, tmp_path / "other", progress=False, resume=True, **TINY, patch=(32, 32))


def test_existing_model_dir_needs_overwrite(tmp_path, stack):
    src, _, _ = stack
    bd.train(src, tmp_path / "m", progress=False, **TINY, patch=(32, 32))
    with pytest.raises(OutputError, match="--overwrite"):
        bd.train(src, tmp_path / "m", progress=False, **TINY, patch=(32, 32))
    bd.train(src, tmp_path / "m", progress=False, overwrite=True, **TINY, patch=(32, 32))


def test_time_and_epoch_budgets(tmp_path, stack):
    src, _, _ = stack
    kw = {**TINY, "patch": (32, 32)}
    kw.pop("steps")
    m = bd.train(src, tmp_path / "t", progress=False, max_time=1.5, **kw)
    assert 1 <= m.info["steps"] and m.info["train_seconds"] < 10
    m = bd.train(src, tmp_path / "e", progress=False, epochs=1, **kw)
    assert m.info["steps"] == 4  # 4 images x 4 patches of 32x32 / batch 4


def test_model_package_is_data_and_self_describing(tmp_path, stack):
    src, _, _ = stack
    bd.train(src, tmp_path / "m", progress=False, **TINY, patch=(32, 32))
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["method"] == "n2v" and doc["axes"] == "SYX" and doc["format_version"] == 1
    assert doc["receptive_radius"] > 0 and doc["factor"] == 4
    assert set(doc["normalization"]) >= {"mean", "std"}
    assert not list((tmp_path / "m").rglob("*.pt")) and not list((tmp_path / "m").rglob("*.pkl"))

    doc["format_version"] = 99
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="upgrade bigdenoise"):
        bd.load_model(tmp_path / "m")
    doc["format_version"] = 1
    doc["train_config"]["net"]["features"] = 5
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="does not match"):
        bd.load_model(tmp_path / "m")
    with pytest.raises(ModelError, match="not a bigdenoise model"):
        bd.load_model(tmp_path)


def test_n2v2_and_struct_options_train(tmp_path, stack):
    src, _, _ = stack
    m = bd.train(src, tmp_path / "m", progress=False, **{**TINY, "net": {"depth": 2, "features": 4, "n2v2": True}},
                 patch=(32, 32), options={"replacement": "median", "struct_axis": 1, "struct_span": 2})
    assert m.train_config.net.n2v2 and m.options.struct_span == 2


def test_invalid_configuration_is_a_clear_error(stack):
    src, _, _ = stack
    with pytest.raises(ConfigError, match="multiple of 4"):
        bd.train(src, "unused", progress=False, patch=(30, 30))
    with pytest.raises(ConfigError, match="unknown method"):
        bd.train(src, "unused", progress=False, method="n3v")
    with pytest.raises(ConfigError, match="options"):
        bd.train(src, "unused", progress=False, options={"masked_fraction": 2})


def test_schedule_option_overrides_the_methods_own(tmp_path, stack):
    """``schedule="cosine"`` anneals N2V's (plateau by default) LR to zero over a step budget."""
    src, _, _ = stack
    cfg = dict(progress=False, steps=12, val_every=4, batch_size=4, patch=(32, 32), val_patches=8,
               net={"depth": 1, "features": 4}, lr=1e-3)
    bd.train(src, tmp_path / "cos", schedule="cosine", **cfg)
    bd.train(src, tmp_path / "plain", **cfg)
    lrs = {name: [float(r.split(",")[4]) for r in (tmp_path / name / "history.csv").read_text().splitlines()[1:]]
           for name in ("cos", "plain")}
    assert lrs["plain"] == [1e-3] * 3
    assert lrs["cos"][0] < 1e-3 and lrs["cos"] == sorted(lrs["cos"], reverse=True) and lrs["cos"][-1] < 2e-5
    with pytest.raises(ConfigError, match="schedule"):
        bd.train(src, tmp_path / "bad", schedule="linear", **cfg)
