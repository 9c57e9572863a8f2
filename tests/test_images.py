"""Inputs in one plain file: memory-mapped .npy arrays and single pictures (PNG and others)."""

import pickle

import numpy as np
import pytest
from PIL import Image

from bigdenoise.cli import main
from bigdenoise.errors import InputError
from bigdenoise.geometry import Box
from bigdenoise.volume import open_volume

from conftest import cli_round_trip, smooth_volume


def test_a_npy_file_is_read_lazily_by_box_and_reopens_by_path(tmp_path):
    data = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    np.save(tmp_path / "stack.npy", data)
    volume = open_volume(tmp_path / "stack.npy", "SYX")
    assert isinstance(volume.array, np.memmap) and volume.axes == "SYX"
    box = Box((1, 5, 7), (2, 30, 20))
    part = volume.read(box)
    np.testing.assert_array_equal(part, data[box.slices])
    part[:] = 0  # a read is a copy: the user's file is never written through it
    np.testing.assert_array_equal(np.load(tmp_path / "stack.npy"), data)
    reopened = pickle.loads(pickle.dumps(volume))  # how a worker process gets it
    assert reopened.path == volume.path
    np.testing.assert_array_equal(reopened.read(box), data[box.slices])


def test_a_palette_picture_gives_its_indices_and_a_colour_one_its_channels(tmp_path):
    indices = (np.arange(30 * 40) % 256).astype(np.uint8).reshape(30, 40)
    lut = Image.fromarray(indices)
    lut.putpalette([v for i in range(256) for v in (i, 0, 0)])  # a red lookup table, as ImageJ saves one
    lut.save(tmp_path / "lut.png")
    np.testing.assert_array_equal(open_volume(tmp_path / "lut.png").read(Box((0, 0), (30, 40))), indices)
    deep = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    volume = open_volume(tmp_path / "deep.png")
    assert volume.dtype == np.uint16 and volume.axes == "YX"
    np.testing.assert_array_equal(volume.read(Box((0, 0), (30, 40))), deep)
    grey = np.stack([indices] * 3 + [np.full_like(indices, 255)], axis=-1)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert open_volume(tmp_path / "grey.png").axes == "YX"
    colour = np.stack([indices, indices[::-1], 255 - indices], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(InputError, match="3 channels"):
        open_volume(tmp_path / "colour.png")
    green = open_volume(tmp_path / "colour.png", channel=1)
    np.testing.assert_array_equal(green.read(Box((0, 0), (30, 40))), indices[::-1])


def test_unreadable_or_animated_pictures_stop_with_one_line(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 9)]
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:])
    for name, words in (("broken.png", "could not be read as a picture"), ("two.gif", "holds 2 frames")):
        assert main(["info", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1


def test_a_png_trains_and_predicts_through_the_issues_commands(tmp_path, capsys):
    """`bigdenoise train IN --axes SYX ...` and `bigdenoise predict IN --model M --out O.zarr` on
    an 8-bit PNG, the format of the COSDD paper's own example."""
    image, _ = smooth_volume((48, 64), seed=4)
    pixels = np.clip(image * 40 + 100, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "frame.png")
    written = cli_round_trip(tmp_path / "frame.png", tmp_path, capsys)
    assert written.shape == pixels.shape and np.isfinite(written[:]).all()


def test_a_folder_of_picture_planes_is_a_stack_and_mixed_formats_are_refused(tmp_path):
    data = (np.arange(11 * 20 * 30) % 241).astype(np.uint8).reshape(11, 20, 30)
    (tmp_path / "planes").mkdir()
    for i, plane in enumerate(data):
        Image.fromarray(plane).save(tmp_path / "planes" / f"frame_{i + 1}.png")  # natural, not lexical, order
    for source in (tmp_path / "planes", str(tmp_path / "planes" / "*.png")):
        volume = open_volume(source, "SYX")
        assert volume.shape == data.shape and volume.dtype == np.uint8
        box = Box((2, 3, 4), (8, 15, 20))
        np.testing.assert_array_equal(volume.read(box), data[box.slices])
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(volume)).read(box), data[box.slices])
    Image.fromarray(data[0]).save(tmp_path / "planes" / "frame_12.jpg")
    with pytest.raises(InputError, match="several formats"):
        open_volume(tmp_path / "planes", "SYX")
    assert open_volume(str(tmp_path / "planes" / "*.png"), "SYX").shape == data.shape
