"""The benchmark scripts replace stacks, models and outputs inside their ``--work`` folder; a folder
holding files they did not write is refused with one line and left untouched."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ("bsd68_n2v", "fast_path", "foreground", "pn2v_vs_n2v", "pn2v_w2s_files", "quality", "scale",
           "throughput")


@pytest.fixture()
def common():
    sys.path.insert(0, str(BENCH))
    try:
        import common

        yield common
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("common", None)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_work_folder_holding_a_users_files_is_refused_and_kept(tmp_path, script):
    user = tmp_path / "acquisition"
    (user / "volume.zarr").mkdir(parents=True)
    (user / "volume.zarr" / "zarr.json").write_text("{}")
    (user / "model").write_text("theirs")
    env = {**os.environ, "BIGDENOISE_DATA": str(tmp_path / "no-data")}
    done = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--work", str(user)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "holds files a benchmark did not write" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in user.iterdir()) == ["model", "volume.zarr"]
    assert (user / "model").read_text() == "theirs"
    assert (user / "volume.zarr" / "zarr.json").read_text() == "{}"


def test_a_new_or_empty_folder_is_claimed_and_reused(common, tmp_path):
    new, empty = tmp_path / "new" / "work", tmp_path / "empty"
    empty.mkdir()
    for folder in (new, empty):
        assert common.claim_work(folder) == folder
        (folder / "out.zarr").mkdir()  # what a benchmark writes there
        assert common.claim_work(str(folder)) == folder  # a second run may replace it
        assert (folder / common.WORK_MARK).exists()


def test_without_work_a_script_claims_its_fixed_folder(common, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fixed = tmp_path / "bigdenoise-bench" / "quality"
    assert common.claim_work(None, "quality") == fixed
    assert (fixed / common.WORK_MARK).exists()


def test_a_file_is_not_a_work_folder(common, tmp_path):
    (tmp_path / "notes.txt").write_text("theirs")
    with pytest.raises(SystemExit):
        common.claim_work(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "theirs"
