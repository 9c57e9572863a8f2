"""The run log (``--log-file``, default ``bigdenoise.log`` inside the output or model directory):
what a failed overnight run leaves behind. Real Zarr on disk, real Dask, the command line."""

import re
import subprocess
import sys
import time

import numpy as np
import zarr

import bigdenoise as bd
from bigdenoise.cli import main
from bigdenoise.logs import LOG_FILE

from test_safety import PREDICT, TRAIN, project, template  # noqa: F401 - fixtures

SUMMARY = re.compile(r"predict finished: (\d+) blocks done, (\d+) resumed, (\d+) failed, of (\d+)")


def summaries(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(g) for g in m.groups()) for m in SUMMARY.finditer(text)]


def test_failed_blocks_the_summary_and_a_resumed_run_are_logged(project):
    """Two chunks of the input are corrupted while the run goes on (after the input was
    fingerprinted): the log names each failed block with its traceback, the command line and a
    summary; once they are repaired, --resume redoes only those two, and its summary says how
    many blocks the first run had done."""
    r = project
    out = r / "new.zarr"
    cmd = [sys.executable, "-m", "bigdenoise.cli", "predict", f"{r}/proj/data.zarr", "--model", f"{r}/model",
           "--out", str(out), "--cluster", "local", "--workers", "1", "--quiet", "--block-voxels", "1",
           "--batch-size", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    done = out / ".bigdenoise-done"
    deadline = time.monotonic() + 120
    while (not done.is_dir() or len(list(done.iterdir())) < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    chunks = [r / "proj" / "data.zarr" / "c" / "2" / a / b for a, b in (("1", "2"), ("0", "0"))]
    original = [c.read_bytes() for c in chunks]
    for c in chunks:
        c.write_bytes(b"\x00garbage, not a chunk")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    log_path = out / LOG_FILE
    assert f"tracebacks in {log_path}" in err
    log = log_path.read_text()
    assert f"bigdenoise {bd.__version__}: bigdenoise predict {r}/proj/data.zarr" in log
    assert "cluster local: 1 workers" in log and "Dask dashboard: http" in log
    # every block whose input (block + halo) holds a corrupt chunk failed, each logged once
    failed = re.findall(r"ERROR bigdenoise.execute: block \((\d+), (\d+), (\d+)\) failed: InputError", log)
    n = int(re.search(r"(\d+) of 18 blocks failed", err).group(1))
    assert len(failed) == len(set(failed)) == n >= 2 and all(image == "2" for image, _, _ in failed), log
    assert {("2", "0", "0"), ("2", "1", "2")} <= set(failed)
    assert log.count("Traceback") >= n
    assert summaries(log) == [(18 - n, 0, n, 18)], log
    assert f"ERROR bigdenoise.cli: error: {n} of 18 blocks failed" in log

    for c, data in zip(chunks, original):
        c.write_bytes(data)
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    log = log_path.read_text()
    assert summaries(log) == [(18 - n, 0, n, 18), (n, 18 - n, 0, 18)], log
    assert log.count("bigdenoise predict") == 2  # appended, the first run's records kept
    ref = r / "ref.zarr"
    bd.predict(f"{r}/proj/data.zarr", r / "model", ref, cluster="threads", progress=False, block_voxels=1,
               batch_size=1)
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[...], zarr.open_array(str(ref), mode="r")[...])


def test_a_replaced_output_keeps_the_log_of_the_run_that_replaced_it(project, capsys):
    """--overwrite builds the new output in a staging folder and swaps it in: its log, written
    there, is the one in the output afterwards, with the records written after the swap."""
    r = project
    old = (r / "out.zarr" / LOG_FILE).read_text()
    assert main(["predict", f"{r}/proj/data.zarr", "--model", f"{r}/model", "--out", f"{r}/out.zarr",
                 "--overwrite", *PREDICT]) == 0
    log = (r / "out.zarr" / LOG_FILE).read_text()
    assert old not in log and "(replacing)" in log and "cluster threads" in log
    assert summaries(log) == [(1, 0, 0, 1)] and f"wrote {r}/out.zarr" in log
    assert capsys.readouterr().err == ""  # the log stays off the terminal


def test_train_log_has_the_stages_and_validation_losses(project, capsys):
    r = project
    assert main(["train", f"{r}/proj/data.zarr", "--out", f"{r}/m2", *TRAIN]) == 0
    log = (r / "m2" / LOG_FILE).read_text()
    assert f"bigdenoise train {r}/proj/data.zarr --out {r}/m2" in log
    order = [log.index(s) for s in ("stage n2v (1 of 1) starts at step 0: budget 3 steps", "step 3 (n2v): train loss",
                                    "validation loss", "stage n2v ends at step 3", "train finished: 3 steps")]
    assert order == sorted(order), log
    # a file of the user's choosing instead, appended to; resuming adds its own records
    user_log = r / "runs.log"
    assert main(["train", f"{r}/proj/data.zarr", "--out", f"{r}/m2", *TRAIN, "--steps", "5", "--resume",
                 "--log-file", str(user_log)]) == 0
    text = user_log.read_text()
    assert "resuming at step 3" in text and "train finished: 5 steps" in text
    assert "resuming" not in (r / "m2" / LOG_FILE).read_text()
    assert capsys.readouterr().err == ""


def test_a_log_file_inside_an_input_or_the_model_is_refused(project, capsys):
    """The refusals themselves are in test_safety's catalogue (nothing touched); here: a log file
    outside them is fine, and the message names --log-file."""
    r = project
    code = main(["predict", f"{r}/proj/data.zarr", "--model", f"{r}/model", "--out", f"{r}/new.zarr",
                 "--log-file", f"{r}/proj/data.zarr/c/run.log", *PREDICT])
    err = capsys.readouterr().err
    assert code == 2 and "choose a --log-file outside it" in err and not (r / "new.zarr").exists()
