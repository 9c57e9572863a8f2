"""preview.png: orthogonal mid-planes, input | output, one contrast, small, inside every output."""

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage

import bigdenoise as bd
from bigdenoise.geometry import Box
from bigdenoise.preview import MAX_SIDE, PREVIEW_FILE, mid_planes, render



def _panels(png: np.ndarray) -> list[tuple[slice, slice]]:
    """The image panels of a preview: connected non-white areas larger than any title's letters."""
    labels, _ = ndimage.label(png < 250)
    return sorted((s for s in ndimage.find_objects(labels)
                   if (s[0].stop - s[0].start) > 20 and (s[1].stop - s[1].start) > 20),
                  key=lambda s: (s[0].start, s[1].start))


@pytest.mark.parametrize("which, planes", [("3d", 3), ("2d", 1)])
def test_every_prediction_writes_a_small_preview_of_its_mid_planes(tmp_path, model_3d, model_2d, which, planes):
    model_dir, src, _ = model_3d if which == "3d" else model_2d
    bd.predict(src, model_dir, tmp_path / "out.zarr", cluster="threads", progress=False)
    path = tmp_path / "out.zarr" / PREVIEW_FILE
    assert path.is_file() and path.stat().st_size < 300_000
    png = iio.imread(path)
    assert png.ndim == 2 and png.dtype == np.uint8  # grey
    panels = _panels(png)
    assert len(panels) == 2 * planes  # input | output for XY (and XZ, YZ)
    rows = sorted({p[0].start for p in panels})
    assert len(rows) == planes
    for row in rows:
        left, right = [png[p] for p in panels if p[0].start == row]
        assert not np.array_equal(left, right)  # noisy input, denoised output


def test_a_roi_previews_its_own_box(tmp_path, model_3d):
    model_dir, src, _ = model_3d
    bd.predict(src, model_dir, tmp_path / "roi.zarr", cluster="threads", progress=False, roi="4:20,8:40,0:20")
    assert len(_panels(iio.imread(tmp_path / "roi.zarr" / PREVIEW_FILE))) == 6


def test_input_and_output_share_one_contrast():
    rng = np.random.default_rng(0)
    plane = mid_planes("YX", Box((0, 0), (40, 60)))[0]
    inp = rng.normal(100, 10, (40, 60)).astype(np.float32)
    same = iio.imread(render([(plane, inp, inp)], 80.0, 120.0, None, "YX"))
    brighter = iio.imread(render([(plane, inp, inp + 10)], 80.0, 120.0, None, "YX"))
    left, right = [same[p] for p in _panels(same)]
    assert np.array_equal(left, right)
    left, right = [brighter[p] for p in _panels(brighter)]
    assert right.mean() > left.mean() + 20  # a per-panel contrast would draw both alike


def test_planes_are_bounded_windows_at_the_middle():
    planes = mid_planes("TZYX", Box((0, 0, 0, 0), (5, 1000, 6000, 7000)))
    assert [p.name for p in planes] == ["XY", "XZ", "YZ"]
    for p in planes:
        assert sorted(p.box.shape)[-2:] == [MAX_SIDE, MAX_SIDE] and p.box.size == MAX_SIDE**2
        assert p.box.offset[0] == 2  # the middle time point
    assert planes[0].box.offset[1] == 500 and planes[1].box.offset[2] == 3000 and planes[2].box.offset[3] == 3500


def test_a_preview_of_large_noisy_planes_stays_small():
    """The worst case for PNG: three rows of 512 x 512 pure noise, input and output."""
    rng = np.random.default_rng(1)
    planes = mid_planes("ZYX", Box((0, 0, 0), (512, 512, 512)))
    panels = [(p, rng.normal(0, 1, (512, 512)), rng.normal(0, 1, (512, 512))) for p in planes]
    png = render(panels, -2.0, 2.0, None, "ZYX")
    assert len(png) < 300_000
    assert len(_panels(iio.imread(png))) == 6
