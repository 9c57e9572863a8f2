"""The benchmarks' pure pieces that decide what a quality number means: the TIRF references that
leave each frame's input window out, the training-seed list, and the over-seeds summaries
(``benchmarks/datasets.py``, ``benchmarks/quality.py``; no training here)."""

import argparse
import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from bigdenoise.config import NetConfig, TrainConfig

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The modules ``datasets`` and ``quality`` imported as the scripts import them (the
    benchmarks folder on ``sys.path``), removed again afterwards."""
    sys.path.insert(0, str(BENCH))
    try:
        mods = argparse.Namespace(datasets=importlib.import_module("datasets"),
                                  quality=importlib.import_module("quality"))
        yield mods
    finally:
        sys.path.remove(str(BENCH))
        for name in ("quality", "datasets", "common", "residue_split"):
            sys.modules.pop(name, None)


def test_window_out_reference_leaves_out_each_frames_input_window(bench):
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(8, 3, 4)).astype(np.float32)
    ref = bench.datasets.window_out_reference(frames, 2)
    # End frames: Noise2Stack's stack rule reads 0, 1, 2 around frame 0 and 0..3 around frame 1.
    np.testing.assert_allclose(ref[0], frames[3:].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref[1], frames[4:].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref[4], frames[[0, 1, 7]].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref[7], frames[:5].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bench.datasets.window_out_reference(frames, 0)[2],
                               np.delete(frames, 2, axis=0).mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="leave none"):
        bench.datasets.window_out_reference(frames[:5], 2)


def test_parse_seeds(bench):
    parse = bench.quality.parse_seeds
    assert parse("3", 0) == [0, 1, 2]
    assert parse("2", 10) == [10, 11]
    assert parse("0,5,9", 4) == [0, 5, 9]
    for bad in ("0", "x", "1,1", "1,a"):
        with pytest.raises(ValueError):
            parse(bad, 0)
    a = bench.quality.parse_args(["--datasets", "tirf", "--methods", "noisy,n2v", "--seed", "7"])
    assert a.seeds == [7, 8, 9] and bench.quality.DEFAULT_SEEDS >= 3
    assert bench.quality.parse_args(["--seeds", "4,2"]).seeds == [4, 2]
    with pytest.raises(SystemExit):
        bench.quality.parse_args(["--seeds", "0"])


def test_seed_summaries_and_paired_gain(bench):
    q = bench.quality
    noisy = {"seeds": [], "psnr": [[20.0, 22.0]], "ssim": [[0.5, 0.6]]}
    n2v = {"seeds": [0, 1, 2], "psnr": [[25.0, 27.0], [26.0, 28.0], [27.0, 29.0]],
           "ssim": [[0.7, 0.8]] * 3}
    mean, std, lo, hi = q.seed_spread(n2v["psnr"])
    assert (mean, lo, hi) == (27.0, 26.0, 28.0) and math.isclose(std, 1.0)
    assert q._spread_cell(n2v["psnr"], 2) == "27.00 ± 1.00 [26.00, 28.00]"
    assert q._spread_cell(noisy["psnr"], 2) == "21.00"
    diffs = q.paired_diffs(n2v, noisy)  # the deterministic row pairs with every seed
    assert [list(d) for d in diffs] == [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]
    with pytest.raises(ValueError, match="pair"):
        q.paired_diffs(n2v, {"psnr": [[1.0, 2.0]] * 2})

    results = {"tirf": {"runs": {"noisy": noisy, "n2v": n2v}, "skipped": {}}}
    assert q.first_baseline(results["tirf"], ["n2v", "noisy"]) == "noisy"


def test_report_shows_the_seed_spread_and_the_paired_gain(bench, monkeypatch):
    q = bench.quality
    for name, value in (("now", "today"), ("format_machine", "a machine"), ("this_command", "python quality.py")):
        monkeypatch.setattr(q.common, name, lambda *args, _v=value: _v)
    noisy = {"seeds": [], "psnr": [[20.0, 22.0]], "ssim": [[0.5, 0.6]], "seconds": 0.0}
    n2v = {"seeds": [0, 1, 2], "psnr": [[25.0, 27.0], [26.0, 28.0], [27.0, 29.0]], "ssim": [[0.7, 0.8]] * 3,
           "steps": "10/11/12", "train_s": 1.0, "predict_s": 0.5, "note": ""}
    results = {"tirf": {"runs": {"noisy": noisy, "n2v": n2v}, "skipped": {}}}
    a = q.parse_args(["--datasets", "tirf", "--methods", "noisy,n2v"])
    ds = argparse.Namespace(description="frames", paper="")
    text = q.report(results, {"tirf": ds}, a.methods, a, {}, [], 60.0)
    assert "| n2v | 27.00 ± 1.00 [26.00, 28.00] |" in text
    assert "| noisy | 21.00 |" in text
    assert "| method | tirf (− noisy) |" in text and "| n2v | +6.00 ± 1.00 [+5.00, +7.00] |" in text
    assert "3 training seeds" in text and "0, 1, 2" in text
    assert "PSNR per seed 0: 26.00 ± 1.00, 1: 27.00 ± 1.00, 2: 28.00 ± 1.00 dB" in text
    net, train = NetConfig(), TrainConfig(axes="SYX")  # the budget line states the shared defaults as they are
    h, w = train.patch_shape
    assert f"U-Net (depth {net.depth}, {net.features} features), patch {h}x{w}, batch {train.batch_size}," in text


def test_report_names_the_unet_sizes_and_batches_a_method_sets_itself(bench):
    q = bench.quality
    assert q.net_exceptions(["noisy", "n2v", "struct-n2v", "care"]) == ""
    assert q.net_exceptions(["n2v", "dbsn-posterior"]) == "; dbsn: 8 features"
    assert q.batch_exceptions(["noisy", "n2v", "struct-n2v", "dbsn"]) == ""
    assert q.batch_exceptions(["n2v", "cosdd-sampled"]) == " (cosdd: 8)"


def _lag1(x):
    """Mean over images of the lag-1 autocorrelation along the rows (X) and along the columns (Y)."""
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    var = (x * x).mean(axis=(-2, -1))
    rows = (x[..., :, 1:] * x[..., :, :-1]).mean(axis=(-2, -1)) / var
    cols = (x[..., 1:, :] * x[..., :-1, :]).mean(axis=(-2, -1)) / var
    return float(rows.mean()), float(cols.mean())


def test_stripe_noise_correlates_along_its_axis(bench):
    d = bench.datasets
    g = d.stripe_kernel(d.STRIPE_BLUR)
    assert np.isclose(np.sum(g * g), 1.0) and len(g) % 2 == 1
    clean = np.full((3, 96, 96), 0.5, np.float32)
    rows = d.stripe_noise(clean, -1, seed=0) - clean
    cols = d.stripe_noise(clean, -2, seed=0) - clean
    assert rows.dtype == np.float32 and rows.shape == clean.shape
    # stripe variance sigma_s^2 + white sigma_w^2 + Poisson s / lam
    expected = d.STRIPE_SIGMA ** 2 + d.STRIPE_WHITE ** 2 + 0.5 / d.STRIPE_PEAK
    assert abs(rows.var() / expected - 1) < 0.15
    r_rows, c_rows = _lag1(rows)
    r_cols, c_cols = _lag1(cols)
    # about (sigma_s^2 / total) * exp(-1 / (4 blur^2)) = 0.48 at s = 0.5 along the stripes, 0 across
    assert r_rows > 0.3 and abs(c_rows) < 0.05
    assert c_cols > 0.3 and abs(r_cols) < 0.05
    np.testing.assert_allclose(rows + clean, d.stripe_noise(clean, -1, seed=0), atol=1e-6)  # the seed fixes the noise
    with pytest.raises(ValueError):
        d.stripe_noise(clean, 0, seed=0)


def test_stripe_residue_is_zero_for_white_noise_and_signed_for_stripes(bench):
    from scipy import ndimage

    q = bench.quality
    rng = np.random.default_rng(1)
    truth = rng.uniform(size=(128, 128))
    white = rng.normal(size=(128, 128))
    assert abs(q.stripe_residue(truth + white, truth)) < 0.03
    g = bench.datasets.stripe_kernel(3.0)
    row_blurred = ndimage.convolve1d(rng.normal(size=(128, 128)), g, axis=1, mode="wrap")
    a = q.stripe_residue(truth + row_blurred, truth)
    assert a > 0.3
    assert q.stripe_residue(truth + row_blurred.T, truth) < -0.3  # column stripes: negative
    assert q.stripe_residue(truth, truth) == 0.0


def test_the_residue_on_flat_pixels_sees_stripes_left_there_only(bench):
    """A truth flat on its left half and textured on its right: stripes added on the left only
    show in A over the flat pixels and not over the others; no mask is every pixel."""
    from scipy import ndimage

    q = bench.quality
    rng = np.random.default_rng(2)
    truth = np.zeros((128, 128))
    truth[:, 64:] = rng.uniform(size=(128, 64))
    flat = q.flat_pixels(truth)
    assert flat[:, :60].all() and not flat[:, 68:].any()
    stripes = ndimage.convolve1d(rng.normal(size=(128, 128)), bench.datasets.stripe_kernel(3.0), axis=1, mode="wrap")
    residual = np.where(np.arange(128) < 64, stripes, rng.normal(size=(128, 128)))
    assert q.stripe_residue(truth + residual, truth, where=flat) > 0.3
    assert abs(q.stripe_residue(truth + residual, truth, where=~flat)) < 0.05
    everywhere = np.ones(truth.shape, bool)
    assert q.stripe_residue(truth + residual, truth, where=everywhere) == q.stripe_residue(truth + residual, truth)


def test_residue_split_scores_the_blurred_truth_with_the_contents_sign(bench, monkeypatch, tmp_path, capsys):
    """Without a run, ``residue_split.py`` prints the noisy input and the truth blurred with no
    noise: truths textured along the rows give that row a positive A, along the columns negative."""
    from scipy import ndimage

    d = bench.datasets
    split = importlib.import_module("residue_split")
    rng = np.random.default_rng(3)
    texture = ndimage.convolve1d(rng.uniform(0, 255, (2, 64, 64)), d.stripe_kernel(3.0), axis=-1, mode="wrap")
    monkeypatch.setattr(d, "dataset_dir", lambda *args, **kw: tmp_path)
    for truth, sign in ((texture, 1), (texture.transpose(0, 2, 1), -1)):
        monkeypatch.setattr(d, "load_set12", lambda folder, count=12: truth.astype(np.float32))
        assert split.main(["--datasets", "stripes-rows"]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| clean, blurred"))
        assert sign * float(row.split("|")[2]) > 0.1, row


def test_struct_axis_follows_the_data_set(bench, monkeypatch, tmp_path):
    d, q = bench.datasets, bench.quality
    monkeypatch.setattr(d, "load_set12", lambda folder, count=12: np.full((2, 32, 32), 128.0, np.float32))
    monkeypatch.setattr(d, "dataset_dir", lambda *args, **kw: tmp_path)
    a = argparse.Namespace(data=None, images=None, seed=0, quick=False, crop=None, methods=["struct-n2v"],
                           stripe_noise=d.STRIPE_NOISE)
    for name, axis in (("stripes-rows", 1), ("stripes-cols", 0)):
        ds = d.load_dataset(name, a)
        assert ds.struct_axis == axis and ds.residue and ds.data_range == 1.0
        assert q.learned_why_not("struct-n2v", ds) is None and q.learned_why_not("cosdd", ds) is None
        kw, note = q.method_config("struct-n2v", ds, tmp_path / "noisy.zarr", tmp_path, a, set())
        assert kw["options"]["struct_axis"] == axis and kw["method"] == "n2v"
        assert "YX"[axis] in note
    hagen = d.Dataset("hagen-mito", "", np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), 255.0)
    kw, _ = q.method_config("struct-n2v", hagen, tmp_path / "noisy.zarr", tmp_path, a, set())
    assert kw["options"] == {"struct_axis": 1, "struct_span": 2}  # Hagen keeps today's setting


def test_stripe_noise_option_sets_the_noise_and_bsd68_stripes_read_bsd68(bench, monkeypatch, tmp_path):
    """``--stripe-noise PEAK,WHITE,STRIPE,BLUR`` reaches the noise, the description and
    struct-N2V's span; ``bsd68-stripes-*`` read BSD68's images, not Set12's."""
    d, q = bench.datasets, bench.quality
    monkeypatch.setattr(d, "load_set12", lambda folder, count=12: np.full((2, 64, 64), 255.0, np.float32))
    monkeypatch.setattr(d, "load_bsd68", lambda folder: (np.full((3, 64, 96), 127.5, np.float32), [], []))
    monkeypatch.setattr(d, "dataset_dir", lambda *args, **kw: tmp_path)
    a = q.parse_args(["--datasets", "stripes-cols,bsd68-stripes-rows", "--stripe-noise", "1e6,0.01,0.15,5"])
    assert a.stripe_noise == (1e6, 0.01, 0.15, 5.0)
    set12, bsd68 = (d.load_dataset(name, a) for name in a.datasets)
    assert set12.clean.shape == (2, 64, 64) and bsd68.clean.shape == (3, 64, 96)
    np.testing.assert_allclose(bsd68.clean, 0.5)
    expected = 0.15 ** 2 + 0.01 ** 2  # no shot noise to speak of at 1e6 photons
    for ds in (set12, bsd68):
        assert abs((ds.noisy - ds.clean).var() / expected - 1) < 0.15
        assert ds.struct_span == 10 and "sigma 5 px" in ds.description and "0.15 (g * e2)" in ds.description
    assert bsd68.struct_axis == 1 and _lag1(bsd68.noisy - bsd68.clean)[0] > 0.5
    assert set12.struct_axis == 0 and _lag1(set12.noisy - set12.clean)[1] > 0.5
    default = d.load_dataset("stripes-rows", q.parse_args(["--datasets", "stripes-rows"]))
    assert default.struct_span == 6 and f"{d.STRIPE_SIGMA:g} (g * e2)" in default.description
    for bad in ("30,0.03,0.15", "30,0.03,x,5", "30,0,0.15,5"):
        with pytest.raises(SystemExit):
            q.parse_args(["--stripe-noise", bad])


def test_stripes_care_trains_on_train400_with_the_same_stripes(bench, monkeypatch, tmp_path):
    """The supervised reference of the stripes: Train400 on 0..1 with stripe noise along the
    data set's own axis, and no CARE fold without a train400 folder."""
    d, q = bench.datasets, bench.quality
    monkeypatch.setattr(d, "load_set12", lambda folder, count=12: np.full((2, 32, 32), 128.0, np.float32))
    monkeypatch.setattr(d, "load_train400", lambda folder: np.full((4, 96, 96), 127.5, np.float32))
    monkeypatch.setattr(d, "dataset_dir", lambda *args, **kw: tmp_path)
    a = argparse.Namespace(data=str(tmp_path), images=None, seed=0, quick=False, crop=None, methods=["care"],
                           stripe_noise=d.STRIPE_NOISE)
    assert not d.load_dataset("stripes-rows", a).care_folds  # no train400 folder yet
    (tmp_path / "train400").mkdir()
    (tmp_path / "train400" / "a.png").touch()
    for name in ("stripes-rows", "stripes-cols"):
        ds = d.load_dataset(name, a)
        (fold,) = ds.care_folds
        assert q.learned_why_not("care", ds) is None and fold.region is None
        np.testing.assert_allclose(fold.clean, 0.5)
        rows, cols = _lag1(fold.noisy - fold.clean)
        along, across = (rows, cols) if name == "stripes-rows" else (cols, rows)
        assert along > 0.3 and abs(across) < 0.05


def test_dbsn_clean_reads_clean_images_of_other_fields_of_view_only(bench, tmp_path):
    """The dbsn-clean row trains D-BSN with --clean on CARE's clean training images when they
    come from other fields of view (a fold without a region); cross-fitted folds do not qualify."""
    d, q = bench.datasets, bench.quality
    clean = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    other = d.Dataset("w2s", "", np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), 255.0,
                      care_folds=[d.CareFold(clean + 1, clean)])
    same = d.Dataset("fmd", "", np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), 255.0,
                     care_folds=[d.CareFold(clean + 1, clean, region=np.ones((8, 8), bool))])
    assert q.learned_why_not("dbsn-clean", other) is None
    assert "other fields of view" in q.learned_why_not("dbsn-clean", same)
    a = argparse.Namespace(data=None, images=None, seed=0, quick=False, crop=None, methods=["dbsn-clean"])
    kw, note = q.method_config("dbsn-clean", other, tmp_path / "noisy.zarr", tmp_path, a, set())
    assert kw["method"] == "dbsn" and "2 clean images" in note
    import zarr
    assert np.array_equal(zarr.open_array(kw["clean"], mode="r")[...], clean)


def test_dbsn_awgn_rows_train_and_predict_the_awgn_mode_on_any_data(bench, tmp_path):
    """The dbsn-awgn row trains D-BSN with noise=awgn on every data set; dbsn-awgn-posterior
    predicts with that row's model (the whole-image pre-pass of the posterior path)."""
    d, q = bench.datasets, bench.quality
    ds = d.Dataset("fmd", "", np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), 255.0)
    assert q.learned_why_not("dbsn-awgn", ds) is None and q.learned_why_not("dbsn-awgn-posterior", ds) is None
    a = argparse.Namespace(data=None, images=None, seed=0, quick=False, crop=None, methods=["dbsn-awgn"])
    kw, note = q.method_config("dbsn-awgn", ds, tmp_path / "noisy.zarr", tmp_path, a, set())
    assert kw["method"] == "dbsn" and kw["options"] == {"noise": "awgn"} and "awgn" in note
    assert q.VARIANTS["dbsn-awgn-posterior"] == ("dbsn-awgn", {"prediction": "posterior"})
    assert q.net_exceptions(["dbsn-awgn"]) == "; dbsn: 8 features"


def test_every_option_row_is_a_learned_row_with_valid_settings(bench, tmp_path):
    """Each row of OPTION_ROWS and VARIANTS can be chosen with --methods and gives its method
    options it accepts, at training or at prediction time (a typo would only fail after the rows
    before it trained); the rows of the self-supervised methods run on any data."""
    from bigdenoise.config import TrainConfig
    from bigdenoise.methods import get_method, parse_options

    d, q = bench.datasets, bench.quality
    ds = d.Dataset("fmd", "", np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), 255.0, methods=())  # no learned row of its own
    a = argparse.Namespace(data=None, images=None, seed=0, quick=False, crop=None, methods=[])
    for key, (extra, _) in q.OPTION_ROWS.items():
        assert key in q.LEARNED
        kw, _ = q.method_config(key, ds, tmp_path / "noisy.zarr", tmp_path, a, set())
        assert kw["method"] == extra["method"] and kw is not extra
        TrainConfig(method=kw["method"], axes="SYX", options=kw.get("options", {})).method_options
        assert (q.learned_why_not(key, ds) is None) == (extra["method"] in ("dbsn", "cosdd"))
    for key, (base, options) in q.VARIANTS.items():
        assert key in q.LEARNED and base in q.LEARNED
        method = get_method(q.method_config(base, ds, tmp_path / "n.zarr", tmp_path, a, set())[0]["method"])
        parse_options(method, options, allowed=method.predict_options)


def test_cli_mode_types_each_rows_settings_as_the_command_line_takes_them(bench, tmp_path):
    """`quality.py --cli` runs each row as `bigdenoise train IN --method M --axes SYX --out M
    --max-time T --seed S` plus the row's flags: every option row the command line can express
    parses with the real parser into the same method and options; one it cannot is refused."""
    from bigdenoise.cli_args import given_options
    from bigdenoise.cli_parser import build_parser

    d, q = bench.datasets, bench.quality
    ds = d.Dataset("fmd", "", np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), 255.0, methods=(), struct_axis=1)
    a = argparse.Namespace(data=None, images=None, seed=3, quick=False, crop=None, methods=[], budget=360.0,
                           device="auto", schedule=None)
    parser = build_parser()
    for key in ("struct-n2v", *q.OPTION_ROWS):
        kw, _ = q.method_config(key, ds, tmp_path / "noisy.zarr", tmp_path, a, set())
        kw.pop("axes")
        kw = {"schedule": a.schedule, **kw}
        if "net" in kw:
            with pytest.raises(SystemExit, match="no command-line flag"):
                q.train_command(tmp_path / "m", "in.zarr", None, "SYX", kw, a)
            continue
        cmd = q.train_command(tmp_path / "m", "in.zarr", None, "SYX", kw, a)
        assert cmd[1:9] == ["train", "in.zarr", "--method", kw["method"], "--axes", "SYX", "--out", str(tmp_path / "m")]
        parsed = parser.parse_args(cmd[1:])
        assert (parsed.method, parsed.max_time, parsed.seed, parsed.schedule) == (kw["method"], 360.0, 3,
                                                                                 kw.get("schedule"))
        wanted = {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in kw.get("options", {}).items()}
        assert given_options(parsed) == wanted, key
    cmd = q.predict_command(tmp_path / "noisy.zarr", tmp_path / "m", tmp_path / "o.zarr", {"prediction": "sampled"}, a)
    parsed = parser.parse_args(cmd[1:])
    assert parsed.axes is None and parsed.cluster == "auto" and given_options(parsed) == {"prediction": "sampled"}
