"""HDF5 inputs: a dataset read lazily by box, named like a Zarr array inside its store."""

import hashlib
import pickle

import h5py
import numpy as np
import pytest

from bigdenoise.cli import main
from bigdenoise.errors import InputError
from bigdenoise.geometry import Box
from bigdenoise.volume import open_volume

from conftest import cli_round_trip, smooth_volume


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_hdf5_dataset_is_read_by_box_in_its_chunks_and_reopens_by_path(tmp_path):
    data = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("raw/data", data=data, chunks=(1, 20, 25))
        f["raw/data"].attrs["axes"] = "syx"
        f["meta"] = np.arange(4)  # 1-D: never chosen as the image
    before = _digest(tmp_path / "scan.h5")
    for source in (tmp_path / "scan.h5", f"{tmp_path}/scan.h5/raw/data"):
        volume = open_volume(source)
        assert isinstance(volume.array, h5py.Dataset) and volume.axes == "SYX" and volume.chunks == (1, 20, 25)
        box = Box((1, 5, 7), (2, 30, 20))
        part = volume.read(box)
        np.testing.assert_array_equal(part, data[box.slices])
        part[:] = 0  # a read is a copy
        reopened = pickle.loads(pickle.dumps(volume))  # how a worker process gets it
        assert reopened.path == str(tmp_path / "scan.h5" / "raw" / "data")
        np.testing.assert_array_equal(reopened.read(box), data[box.slices])
    assert _digest(tmp_path / "scan.h5") == before


def test_a_file_of_several_datasets_names_them_and_a_missing_one_is_one_line(tmp_path, capsys):
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((8, 8), np.float32)
        f["group/b"] = np.zeros((2, 8, 8), np.float32)
    (tmp_path / "broken.h5").write_bytes(b"not an HDF5 file")
    with pytest.raises(InputError, match=r"holds 2 datasets \(a, group/b\): name one, e.g. .*two.h5/a"):
        open_volume(tmp_path / "two.h5")
    assert open_volume(tmp_path / "two.h5" / "group" / "b", "SYX").shape == (2, 8, 8)
    for name, words in (("two.h5/c", "has no dataset 'c'; its datasets: a, group/b"),
                        ("broken.h5", "could not be read as an HDF5 file")):
        assert main(["info", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1


def test_hdf5_trains_and_predicts_with_its_voxel_size_and_is_never_an_output(tmp_path, capsys):
    image, _ = smooth_volume((2, 48, 64), seed=5)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["data"] = (image * 40 + 100).astype(np.float32)
        f["data"].attrs["element_size_um"] = [1.0, 0.2, 0.1]  # as Fiji writes it, one value per axis
    before = _digest(tmp_path / "scan.h5")
    written = cli_round_trip(tmp_path / "scan.h5", tmp_path, capsys)
    assert written.shape == (2, 48, 64)
    assert written.attrs["scale"] == [1.0, 0.2, 0.1] and written.attrs["units"] == [None, "micrometer", "micrometer"]
    for target in ("scan.h5", "scan.h5/other.zarr"):
        assert main(["predict", f"{tmp_path}/scan.h5/data", "--model", str(tmp_path / "model"),
                     "--out", f"{tmp_path}/{target}", "--quiet"]) == 2
        assert "inside the input" in capsys.readouterr().err
    assert _digest(tmp_path / "scan.h5") == before
