"""predict --roi: only the box is written, equal to the same box of a full run."""

import json

import numpy as np
import pytest
import zarr

import bigdenoise as bd
from bigdenoise.cli import main
from bigdenoise.errors import ConfigError
from bigdenoise.roi import parse_roi
from bigdenoise.volume import open_volume

from conftest import write_zarr

# not aligned to the (4, 16, 16) chunks on any side; inside the volume by more than a halo on
# some sides and touching its border on others
ROI = "3:10,5:50,0:37"
BOX = (slice(3, 10), slice(5, 50), slice(0, 37))
RUN = dict(chunks=(4, 16, 16), tile=(4, 8, 8), block_voxels=3000, cluster="threads", progress=False)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, rough_3d):
    model_dir, data = rough_3d
    root = tmp_path_factory.mktemp("roi")
    src = write_zarr(root / "in.zarr", data, (4, 16, 16), "ZYX")
    summary = bd.predict(src, model_dir, root / "full.zarr", **RUN)
    assert summary["blocks"] > 4
    return model_dir, src, data, zarr.open_array(str(root / "full.zarr"), mode="r")[...]


def test_roi_equals_the_same_box_of_a_full_run(tmp_path, full_run):
    model_dir, src, data, full = full_run
    summary = bd.predict(src, model_dir, tmp_path / "roi.ome.zarr", roi=ROI, **RUN)
    assert summary["blocks"] > 1
    group = zarr.open_group(str(tmp_path / "roi.ome.zarr"), mode="r")
    out = group["0"][...]
    assert out.shape == full[BOX].shape
    np.testing.assert_array_equal(out, full[BOX])  # bitwise: same tiles, real context around the box
    transforms = group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert {"type": "translation", "translation": [3.0, 5.0, 0.0]} in transforms
    assert group.attrs["bigdenoise"]["roi"] == ROI


def test_a_roi_predicted_as_its_own_volume_differs_at_its_edges(tmp_path, full_run):
    """Negative control: without the context around the box (the box cut out and predicted as a
    volume of its own, mirrored at its edges) the edges differ, so the test above sees context."""
    model_dir, _, data, full = full_run
    cut = write_zarr(tmp_path / "cut.zarr", np.ascontiguousarray(data[BOX]), (4, 16, 16), "ZYX")
    bd.predict(cut, model_dir, tmp_path / "alone.zarr", **RUN)
    alone = zarr.open_array(str(tmp_path / "alone.zarr"), mode="r")[...]
    assert np.abs(alone - full[BOX]).max() > 1e-3 * np.ptp(full)


def test_roi_resumes_and_refuses_another_roi(tmp_path, full_run):
    model_dir, src, _, full = full_run
    out = tmp_path / "roi.zarr"
    assert main(["predict", src, "--model", str(model_dir), "--out", str(out), "--roi", ROI, "--chunks", "4,16,16",
                 "--tile", "4,8,8", "--block-voxels", "3000", "--cluster", "threads", "--quiet"]) == 0
    first = zarr.open_array(str(out), mode="r")[...]
    np.testing.assert_array_equal(first, full[BOX])
    # as if killed after the first block (of the ROI's block grid) only: resume computes the others
    zarr.open_array(str(out), mode="r+")[...] = 0
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["bigdenoise"]["complete"] = False
    (out / "zarr.json").write_text(json.dumps(meta))
    (out / ".bigdenoise-done").mkdir()
    (out / ".bigdenoise-done" / "0-0-0").touch()
    again = bd.predict(src, model_dir, out, roi=ROI, resume=True, **RUN)
    assert again["skipped"] == 1 and again["block_shape"] == (4, 16, 32)
    resumed = zarr.open_array(str(out), mode="r")[...]
    assert (resumed[:4, :16, :32] == 0).all()
    resumed[:4, :16, :32] = first[:4, :16, :32]
    np.testing.assert_array_equal(resumed, first)
    with pytest.raises(ConfigError, match="roi"):
        bd.predict(src, model_dir, out, roi="3:10,5:50,1:38", resume=True, **RUN)


@pytest.mark.parametrize("roi, message", [
    ("3:10,5:50", "2 ranges"),
    ("3:10,5:50,a:7", "not a range"),
    ("3:30,5:50,0:37", "inside 0:12"),
    ("5:5,0:8,0:8", "non-empty"),
])
def test_malformed_or_outside_roi_is_one_line(tmp_path, full_run, roi, message, capsys):
    model_dir, src, _, _ = full_run
    with pytest.raises(ConfigError, match=message):
        parse_roi(roi, open_volume(src))
    out = tmp_path / "out.zarr"
    assert main(["predict", src, "--model", str(model_dir), "--out", str(out), "--roi", roi]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err and "--roi" in err
    assert not out.exists()


def test_roi_ranges_name_sample_axes_or_leave_them_whole():
    vol = open_volume(np.zeros((3, 20, 30), np.float32), "SYX")
    assert parse_roi("1:2,0:10,5:", vol).offset == (1, 0, 5)
    whole = parse_roi(":,5:", vol)
    assert whole.offset == (0, 0, 5) and whole.shape == (3, 20, 25)
