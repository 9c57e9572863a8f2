"""Nothing a user owns is lost: every command that writes, tried as a hostile new user would.

Each case runs a command line on a fresh copy of one project folder (inputs, a model, a noise
model, a finished prediction, a TIFF, a folder of the user's own documents with thesis.docx)
and asserts the exit status, one line on stderr naming the problem, and that every file that
was there before is byte-identical afterwards, with nothing new created.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import bigdenoise as bd
from bigdenoise.cli import main
from bigdenoise.clusters import connect_timeout, probe_scheduler
from bigdenoise.errors import ConfigError
from bigdenoise.calibration import make_noise_model, save_noise_model
from bigdenoise.outputs import STAGING

from conftest import TINY, smooth_volume, write_zarr

TRAIN = ["--steps", "3", "--val-every", "3", "--batch-size", "4", "--depth", "2", "--features", "4",
         "--patch", "32,32", "--quiet"]
PREDICT = ["--cluster", "threads", "--quiet"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The project folder every case starts from (copied, never changed)."""
    root = tmp_path_factory.mktemp("template")
    data, clean = smooth_volume((3, 64, 72))
    proj = root / "proj"
    proj.mkdir()
    src = write_zarr(proj / "data.zarr", data, (1, 32, 32), "SYX")
    write_zarr(proj / "clean.zarr", clean, (1, 32, 32), "SYX")
    (proj / "thesis.docx").write_bytes(b"six years of work")
    docs = root / "docs"
    (docs / "figures").mkdir(parents=True)
    (docs / "thesis.docx").write_bytes(b"the only copy")
    (docs / "figures" / "fig1.png").write_bytes(b"\x89PNG figure")
    bd.train(src, root / "model", progress=False, patch=(32, 32), **TINY)
    nm, info = make_noise_model(data, clean=clean, axes="SYX", bins=32)
    save_noise_model(nm, root / "nm", info=info, plot=False)
    bd.predict(src, root / "model", root / "out.zarr", cluster="threads", progress=False)
    tifffile.imwrite(root / "stack.tif", (data[0] * 10).astype(np.uint16))
    for group in ("UP.ZARR", "plain"):  # a store with a suffix in capitals, and one without a suffix
        zarr.open_group(str(root / group), mode="w")
        write_zarr(root / group / "raw", data, (1, 32, 32), "SYX")
    os.symlink(proj / "data.zarr", root / "link.zarr")
    return root


@pytest.fixture
def project(template, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(template, root, symlinks=True)
    os.remove(root / "link.zarr")
    os.symlink(root / "proj" / "data.zarr", root / "link.zarr")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link under ``root``: its content hash (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_line(err: str, command: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"bigdenoise {command}: error:"), err
    assert "Traceback" not in err
    assert needle in lines[0], (needle, lines[0])


# (argv with {r} for the project folder, what the one line must say)
DATA_LOSS = [
    ("train {r}/proj/data.zarr --out {r}/proj --overwrite", "would contain the input volume"),
    ("train {r}/proj/data.zarr --out {r}/proj/data.zarr --overwrite", "would be or sit inside the input volume"),
    ("train {r}/proj/data.zarr --out {r}/proj/data.zarr/model", "would be or sit inside the input volume"),
    ("train {r}/proj/data.zarr --out {r}/proj/./../proj/data.zarr/x --overwrite", "sit inside the input"),
    ("train {r}/link.zarr --out {r}/proj/data.zarr/m --overwrite", "sit inside the input volume"),
    ("train {r}/proj/data.zarr --out {r}/docs --overwrite", "not written by bigdenoise"),
    ("train {r}/proj/data.zarr --out {r}/out.zarr --overwrite", "is a bigdenoise prediction, not a model package"),
    ("train {r}/proj/data.zarr --method pn2v --noise-model {r}/nm --out {r}/nm --overwrite",
     "the noise_model option"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/docs --overwrite", "not written by bigdenoise"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/model --overwrite", "the model"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/model/denoised.zarr", "the model"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/proj --overwrite", "would contain the input"),
    ("predict {r}/UP.ZARR/raw --model {r}/model --out {r}/UP.ZARR/denoised", "sit inside the input"),
    ("predict {r}/plain/raw --model {r}/model --out {r}/plain/denoised", "sit inside the input"),
    ("predict {r}/link.zarr --model {r}/model --out {r}/proj/data.zarr --overwrite", "the input"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/proj/thesis.docx --overwrite", "it is a file"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/proj/thesis.docx/x.zarr", "is a file, not a folder"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/out.zarr", "already exists"),
    ("convert {r}/stack.tif {r}/docs --overwrite", "not written by bigdenoise"),
    ("convert {r}/stack.tif {r}/stack.tif --overwrite", "the input"),
    ("convert {r}/proj/data.zarr {r}/out.zarr --overwrite", "is a bigdenoise prediction, not a Zarr copy"),
    ("noise-model --noisy {r}/proj/data.zarr --clean {r}/proj/clean.zarr --out {r}/proj/clean.zarr --overwrite",
     "the clean volume"),
    ("noise-model --noisy {r}/proj/data.zarr --clean {r}/proj/clean.zarr --out {r}/docs --overwrite",
     "not written by bigdenoise"),
    ("noise-model --noisy {r}/proj/data.zarr --bootstrap {r}/model --out {r}/model --overwrite", "bootstrap model"),
    ("demo --out {r}/docs", "not written by bigdenoise"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --log-file {r}/proj/data.zarr/run.log",
     "the log file"),
    ("predict {r}/link.zarr --model {r}/model --out {r}/new.zarr --log-file {r}/proj/data.zarr/c/0/log",
     "sit inside the input"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --log-file {r}/model/config.json",
     "sit inside the model"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --log-file {r}/docs", "is a folder"),
    ("train {r}/proj/data.zarr --out {r}/m2 --log-file {r}/proj/data.zarr/zarr.json", "sit inside the input volume"),
]

SILENT_ACCEPTANCE = [
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --halo -1", "must not be negative"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --halo -50", "must not be negative"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --halo 8", "below the model's receptive"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --batch-size 0", "--batch-size 0"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --block-voxels 0", "--block-voxels 0"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --skip-background nan", "finite"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --background-value inf", "finite"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --cluster local --workers 0", "--workers 0"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --cluster local --workers -3", "--workers -3"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --overlap -2", "must not be negative"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --cluster slurm --jobs 0", "--jobs 0"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --overwrite --resume", "contradict"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --cluster slurm", "sbatch, which is not"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --dtype bogus", "dtype 'bogus'"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --tile 32,32,32", "--tile 32,32,32"),
    ("noise-model --noisy {r}/proj/data.zarr --clean {r}/proj/clean.zarr --out {r}/nm2 --bins 0", "--bins"),
    ("train {r}/proj/data.zarr --out {r}/m2 --seed -1", "seed"),
    ("train {r}/proj/data.zarr --out {r}/m2 --batch-size 100000 --patch 64,64 --features 512", "GiB, more than"),
    ("train {r}/proj/data.zarr --out {r}/m2 --lr inf", "lr"),
    ("train {r}/proj/data.zarr --out {r}/m2 --batch-size 0", "batch_size"),
    ("predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr --cluster tcp://garbage:notaport",
     "tcp://garbage:notaport"),
]


@pytest.mark.parametrize("line,needle", DATA_LOSS + SILENT_ACCEPTANCE, ids=lambda v: v if "{r}" not in v else
                         " ".join(w.replace("{r}/", "") for w in v.split()[:6]))
def test_refused_with_one_line_and_nothing_touched(project, capsys, line, needle):
    argv = line.format(r=project).split()
    if argv[0] == "train":
        pairs = zip(TRAIN[:-1:2], TRAIN[1:-1:2])
        argv += [w for flag, value in pairs if flag not in argv for w in (flag, value)] + ["--quiet"]
    if argv[0] == "predict" and "--cluster" not in argv:
        argv += PREDICT
    before = snapshot(project)
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert_one_line(err, argv[0], needle)
    assert snapshot(project) == before


def test_overwrite_replaces_our_own_outputs(project, capsys):
    r = project
    before = snapshot(r / "docs")
    for argv in (
        f"train {r}/proj/data.zarr --out {r}/model --overwrite".split() + TRAIN,
        f"predict {r}/proj/data.zarr --model {r}/model --out {r}/out.zarr --overwrite".split() + PREDICT,
        f"convert {r}/stack.tif {r}/copy.zarr --quiet".split(),
        f"convert {r}/stack.tif {r}/copy.zarr --overwrite --quiet".split(),
        f"noise-model --noisy {r}/proj/data.zarr --clean {r}/proj/clean.zarr --out {r}/nm --overwrite "
        f"--bins 16".split(),
    ):
        code, err = run_cli(argv, capsys)
        assert code == 0, err
    assert snapshot(r / "docs") == before
    assert not any(STAGING in p.name for p in r.iterdir())
    assert zarr.open_array(str(r / "out.zarr"), mode="r").attrs["bigdenoise"]["complete"] is True


def _corrupt(project: Path, what: str) -> list[str]:
    """Damage one thing in the project; the command that must then fail with one line."""
    r = project
    predict = f"predict {r}/proj/data.zarr --model {r}/model --out {r}/new.zarr".split() + PREDICT
    if what == "config-list":
        (r / "model" / "config.json").write_text("[1, 2, 3]")
    elif what == "config-null":
        (r / "model" / "config.json").write_text("null")
    elif what == "config-no-normalization":
        doc = json.loads((r / "model" / "config.json").read_text())
        del doc["normalization"]
        (r / "model" / "config.json").write_text(json.dumps(doc))
    elif what == "config-huge-network":
        doc = json.loads((r / "model" / "config.json").read_text())
        doc["train_config"]["net"].update(depth=5, features=512)
        (r / "model" / "config.json").write_text(json.dumps(doc))
    elif what == "weights-garbage":
        (r / "model" / "weights.safetensors").write_bytes(b"\xff" * 8 + b"garbage header")
    elif what == "weights-truncated":
        w = r / "model" / "weights.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    elif what == "tiff-truncated":
        t = r / "stack.tif"
        t.write_bytes(t.read_bytes()[:3000])
        return f"convert {r}/stack.tif {r}/c.zarr --quiet".split()
    elif what == "tiff-truncated-info":
        t = r / "stack.tif"
        t.write_bytes(t.read_bytes()[:3000])
        return f"info {r}/stack.tif".split()
    elif what == "noise-model-garbage":
        (r / "nm" / "noise_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
        return (f"train {r}/proj/data.zarr --method pn2v --noise-model {r}/nm --out {r}/m2".split() + TRAIN)
    return predict


@pytest.mark.parametrize("what,needle", [
    ("config-list", "JSON list, not an object"),
    ("config-null", "JSON NoneType, not an object"),
    ("config-no-normalization", "normalization"),
    ("config-huge-network", "GiB of parameters"),
    ("weights-garbage", "not a readable safetensors file"),
    ("weights-truncated", "not a readable safetensors file"),
    ("tiff-truncated", "stack.tif"),
    ("tiff-truncated-info", "stack.tif"),
    ("noise-model-garbage", "not a readable safetensors file"),
])
def test_corrupt_files_give_one_line(project, capsys, what, needle):
    argv = _corrupt(project, what)
    before = snapshot(project)
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert_one_line(err, argv[0], needle)
    assert snapshot(project) == before


def test_debug_shows_the_traceback(project, capsys):
    argv = _corrupt(project, "config-list") + ["--debug"]
    code, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" in err and "not an object" in err.splitlines()[-1]


def test_partly_nan_input_is_refused_naming_how_much(project, capsys):
    data, _ = smooth_volume((3, 64, 72))
    data[1, 10:20, 10:30] = np.nan
    src = write_zarr(project / "holes.zarr", data, (1, 32, 32), "SYX")
    before = snapshot(project)
    code, err = run_cli(["train", src, "--out", str(project / "m2"), *TRAIN], capsys)
    assert code == 2
    assert_one_line(err, "train", "NaN/inf values (")
    assert snapshot(project) == before


def test_resume_checks_the_inputs_content_not_its_spelling(project, capsys, monkeypatch):
    r = project
    out = f"{r}/out.zarr"
    # the same data, spelled another way: resumes (nothing left to do)
    monkeypatch.chdir(r)
    code, err = run_cli(["predict", "./proj/../proj/data.zarr", "--model", "model", "--out", out, "--resume",
                         *PREDICT], capsys)
    assert code == 0, err
    # the input regenerated with other data under the same path: refused
    data, _ = smooth_volume((3, 64, 72), seed=7)
    zarr.open_array(f"{r}/proj/data.zarr", mode="r+")[...] = data
    before = snapshot(r)
    code, err = run_cli(["predict", f"{r}/proj/data.zarr", "--model", f"{r}/model", "--out", out, "--resume",
                         *PREDICT], capsys)
    assert code == 2
    assert_one_line(err, "predict", "is not the data that run started on (sha256 differ)")
    assert snapshot(r) == before


def test_train_resume_refuses_other_data(project, capsys):
    r = project
    assert run_cli(["train", f"{r}/proj/data.zarr", "--out", f"{r}/m2", *TRAIN], capsys)[0] == 0
    data, _ = smooth_volume((3, 64, 72), seed=7)
    zarr.open_array(f"{r}/proj/data.zarr", mode="r+")[...] = data
    before = snapshot(r)
    code, err = run_cli(["train", f"{r}/proj/data.zarr", "--out", f"{r}/m2", "--resume", *TRAIN], capsys)
    assert code == 2
    assert_one_line(err, "train", "is not the data the checkpoint was trained on")
    assert snapshot(r) == before


@pytest.mark.parametrize("damage,needle", [
    ("state.json", "not a readable JSON file"),
    ("weights", "not a readable safetensors file"),
    ("missing", "is missing"),
])
def test_broken_checkpoint_gives_one_line(project, capsys, damage, needle):
    r = project
    assert run_cli(["train", f"{r}/proj/data.zarr", "--out", f"{r}/m2", *TRAIN], capsys)[0] == 0
    ckpt = r / "m2" / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    weights = ckpt / state["files"]["weights"]
    if damage == "state.json":
        (ckpt / "state.json").write_text('{"config": ')
    elif damage == "weights":
        weights.write_bytes(weights.read_bytes()[:50])
    else:
        weights.unlink()
    before = snapshot(r)
    code, err = run_cli(["train", f"{r}/proj/data.zarr", "--out", f"{r}/m2", "--resume", *TRAIN], capsys)
    assert code == 2
    assert_one_line(err, "train", needle)
    assert snapshot(r) == before


# --------------------------------------------------------------------------- clusters that fail


def _silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections and never answers (not a Dask scheduler)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []

    def accept():
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


CONNECT_S = 8  # Dask's connect timeout for the run below (30 s by default: see the next test)


@pytest.mark.slow
def test_cluster_failures_end_within_the_connect_timeout_and_leave_nothing(project):
    """A silent port, a closed one, an unroutable and a malformed address: each run ends with one
    line within Dask's connect timeout (plus start-up), here set to ``CONNECT_S``; 30 s + start-up
    stays within the README's 60 s."""
    r = project
    srv, port = _silent_port()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    clusters = {"silent": f"tcp://127.0.0.1:{port}", "closed": f"tcp://127.0.0.1:{dead_port}",
                "unroutable": "tcp://127.0.0.1:1", "garbage": "tcp://garbage:notaport"}
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": f"{CONNECT_S}s"}
    before = snapshot(r)
    t0 = time.monotonic()
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "bigdenoise.cli", "predict", f"{r}/proj/data.zarr", "--model", f"{r}/model",
         "--out", f"{r}/{name}.zarr", "--cluster", address, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for name, address in clusters.items()}
    errors = {}
    try:
        for name, p in procs.items():
            _, errors[name] = p.communicate(timeout=max(1.0, 60 - (time.monotonic() - t0)))
            assert p.returncode == 2, (name, errors[name])
            assert_one_line(errors[name], "predict", clusters[name].split("//")[1].split(":")[0])
    finally:
        for p in procs.values():
            p.kill()
        srv.close()
    assert f"within {CONNECT_S} s" in errors["silent"]
    assert time.monotonic() - t0 < CONNECT_S + 30  # start-up of four runs at once on a slow machine
    assert snapshot(r) == before


def test_the_connect_timeout_is_dasks_30_s_unless_configured(monkeypatch):
    import dask

    assert connect_timeout() == 30.0
    with dask.config.set({"distributed.comm.timeouts.connect": "4s"}):
        assert connect_timeout() == 4.0
        with pytest.raises(ConfigError, match="within 4 s"):
            probe_scheduler(f"tcp://127.0.0.1:{_silent_port()[1]}")


# --------------------------------------------------------------------------- failures and kills


@pytest.mark.slow
def test_a_failing_block_is_reported_once_and_the_others_are_written(project):
    """A chunk of the input is corrupted while the run goes on (after the input was fingerprinted):
    one line names a failed block and the log with the tracebacks; the other blocks are written."""
    r = project
    out = r / "new.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "bigdenoise.cli", "predict", f"{r}/proj/data.zarr", "--model",
                             f"{r}/model", "--out", str(out), "--cluster", "local", "--workers", "1", "--quiet",
                             "--block-voxels", "1", "--batch-size", "1"], stderr=subprocess.PIPE, text=True)
    done = out / ".bigdenoise-done"
    deadline = time.monotonic() + 120
    while (not done.is_dir() or len(os.listdir(done)) < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    (r / "proj" / "data.zarr" / "c" / "2" / "1" / "2").write_bytes(b"\x00garbage, not a chunk")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert_one_line(err, "predict", "blocks failed, block (2, ")
    assert "InputError" in err and "bigdenoise.log" in err and "rerun with --resume" in err
    log = (out / "bigdenoise.log").read_text()
    assert "Traceback" in log and "block (2, 1, 2) failed" in log
    written = zarr.open_array(str(out), mode="r")[...]
    assert np.abs(written[:2]).min() > 0  # every block of the first two images was written
    assert np.all(written[2, 32:, 64:] == 0)  # the block of the corrupt chunk was not


@pytest.mark.slow
def test_kill_during_overwrite_leaves_the_old_output_then_resume_swaps_in_the_new(project):
    r = project
    out = r / "out.zarr"
    old = snapshot(out)
    data, _ = smooth_volume((3, 64, 72), seed=9)
    other = write_zarr(r / "other.zarr", data, (1, 32, 32), "SYX")
    staging = r / f".out.zarr{STAGING}"
    cmd = [sys.executable, "-m", "bigdenoise.cli", "predict", other, "--model", f"{r}/model", "--out", str(out),
           "--cluster", "threads", "--quiet", "--block-voxels", "1", "--batch-size", "1", "--tile", "32,32"]
    proc = subprocess.Popen(cmd + ["--overwrite"])
    deadline = time.monotonic() + 120
    done = staging / ".bigdenoise-done"
    while (not done.is_dir() or len(os.listdir(done)) < 3) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(out) == old, "the old output must stay whole until the new one is complete"
    assert staging.is_dir()
    assert subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300).returncode == 0
    assert not staging.exists()
    ref = r / "ref.zarr"
    bd.predict(other, r / "model", ref, cluster="threads", progress=False, block_voxels=1, batch_size=1,
               tile=(32, 32))
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[...], zarr.open_array(str(ref), mode="r")[...])


@pytest.mark.slow
def test_killed_training_always_leaves_a_checkpoint_that_resumes(project):
    """SIGKILL at several moments of a run that checkpoints every step: each time the checkpoint
    names complete files of one step, and --resume continues it."""
    r = project
    out = r / "m2"
    cmd = [sys.executable, "-m", "bigdenoise.cli", "train", f"{r}/proj/data.zarr", "--out", str(out), "--steps",
           "400", "--val-every", "1", "--batch-size", "2", "--depth", "2", "--features", "4", "--patch", "32,32",
           "--quiet", "--seed", "3"]
    state_file = out / "checkpoint" / "state.json"
    steps = []
    for delay in (0.0, 0.13, 0.29):
        proc = subprocess.Popen(cmd + (["--resume"] if state_file.is_file() else []), stderr=subprocess.DEVNULL)
        start = json.loads(state_file.read_text())["state"]["step"] if state_file.is_file() else 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and (
                not state_file.is_file() or json.loads(state_file.read_text())["state"]["step"] <= start + 2):
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = json.loads(state_file.read_text())
        files = state["files"]
        for key in ("weights", "optimizer"):
            assert files[key] == f"{key}-{state['state']['step']}.safetensors"
            assert (out / "checkpoint" / files[key]).is_file()
        steps.append(state["state"]["step"])
    assert steps == sorted(steps) and steps[-1] > steps[0]
    code = subprocess.run(cmd[:cmd.index("--steps") + 1] + [str(steps[-1] + 2)] + cmd[cmd.index("--steps") + 2:]
                          + ["--resume"], capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr
    assert bd.load_model(out).info["steps"] == steps[-1] + 2


def test_a_tensor_file_write_killed_midway_leaves_only_names_a_resume_accepts(tmp_path):
    """SIGKILL while a checkpoint's tensors are being written: the temporary file left behind is one
    of ours, so --resume goes on (safetensors' own writer leaves ``.tmpXXXXXX``, which it would
    refuse as a file bigdenoise did not write)."""
    from bigdenoise.outputs import MODEL, destination

    model = destination(tmp_path / "m", MODEL).start()
    (model / "checkpoint").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, torch\n"
        "from bigdenoise.files import atomic_save_tensors\n"
        "t = {'w': torch.ones(16, 1024, 1024)}\n"
        "while True:\n"
        "    atomic_save_tensors(t, sys.argv[1])\n"), str(model / "checkpoint" / "weights-1.safetensors")])
    seen: set[str] = set()
    start = time.monotonic()
    while (time.monotonic() < start + 1.5 or len(seen) < 2) and time.monotonic() < start + 120 and writer.poll() is None:
        seen.update(os.listdir(model / "checkpoint"))
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert len(seen) >= 2, "the writer never showed a temporary file"
    for name in seen:  # a kill at another moment would have left this name
        (model / "checkpoint" / name).touch()
    assert destination(model, MODEL, resume=True).work == model


def test_a_prediction_killed_while_zarr_wrote_its_metadata_resumes(tmp_path):
    """Zarr writes zarr.json through ``zarr.<hex>.partial``; a kill can leave that name behind."""
    from bigdenoise.outputs import PREDICTION, destination

    out = destination(tmp_path / "out.zarr", PREDICTION).start()
    zarr.create_array(str(out), shape=(4, 4), dtype="float32")
    (out / "zarr.0123456789abcdef0123456789abcdef.partial").write_bytes(b"{")
    assert destination(out, PREDICTION, resume=True).work == out


def test_our_own_staging_siblings_are_not_foreign(tmp_path):
    """A demo folder holding a sub-output's killed replacement is still ours; a user's file is not."""
    from bigdenoise.errors import OutputError
    from bigdenoise.outputs import DEMO, destination

    folder = destination(tmp_path / "demo", DEMO).start()
    (folder / f".model{STAGING}").mkdir()
    assert destination(folder, DEMO, resume=True).work == folder
    (folder / "thesis.docx").write_bytes(b"mine")
    with pytest.raises(OutputError, match="holds thesis.docx"):
        destination(folder, DEMO, resume=True)
