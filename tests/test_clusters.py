"""Cluster creation: batch-system job scripts (dask-jobqueue) and option checks."""

import os

import pytest

from bigdenoise.clusters import WORKER_CONFIG_ENV, JobOptions, check_cluster, dask_client, jobqueue_cluster
from bigdenoise.errors import ConfigError
from bigdenoise.runtime import ALLOCATOR_ENV


@pytest.mark.parametrize("kind, expect", [
    ("slurm", ["#SBATCH -p gpu", "#SBATCH -A lab42", "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:2",
               "#SBATCH --constraint=a100"]),
    ("pbs", ["#PBS -q gpu", "#PBS -l ngpus=2", "#PBS -l walltime=04:00:00"]),
    ("lsf", ["#BSUB -q gpu", '#BSUB -gpu "num=2"']),
])
def test_job_scripts_carry_the_options(kind, expect):
    pytest.importorskip("dask_jobqueue")
    opts = JobOptions(jobs=3, cores=16, memory="64GB", gpus=2, walltime="04:00:00", queue="gpu",
                      account="lab42" if kind == "slurm" else None,
                      directives=("--constraint=a100",) if kind == "slurm" else (),
                      prologue=("module load cuda", "source ~/venv/bin/activate"))
    with jobqueue_cluster(kind, opts) as cluster:
        script = cluster.job_script()
    for line in expect:
        assert line in script, script
    assert "module load cuda" in script and "source ~/venv/bin/activate" in script
    for name, value in {**ALLOCATOR_ENV, **WORKER_CONFIG_ENV}.items():  # the allocator settings, no profiler
        assert f"export {name}={value}" in script
    assert "--nworkers 2" in script or "--nprocs 2" in script  # one worker per GPU


def test_unknown_cluster_names_the_choices():
    with pytest.raises(ConfigError, match="slurm"):
        check_cluster("kubernetes")


def test_auto_runs_one_block_in_this_process_and_more_on_worker_processes(tmp_path, model_2d, capsys):
    """predict's default cluster: a one-block volume gains nothing from a worker process but its
    start-up, so it runs on threads here; a volume of several blocks, or asked workers, runs local."""
    from bigdenoise.cli import main
    from bigdenoise.clusters import resolve_auto

    assert resolve_auto("auto", 1, None) == "threads" and resolve_auto("auto", 2, None) == "local"
    assert resolve_auto("auto", 1, 2) == "local" and resolve_auto("threads", 9, None) == "threads"
    check_cluster("auto")
    model_dir, src, _ = model_2d  # (3, 64, 72)
    for name, flags, used in (("one", [], "threads"), ("two", ["--block-voxels", "8192"], "local")):
        out = tmp_path / f"{name}.zarr"
        assert main(["predict", str(src), "--model", str(model_dir), "--out", str(out), "--quiet", *flags]) == 0, \
            capsys.readouterr().err
        assert f"cluster {used}:" in (out / "bigdenoise.log").read_text()


def test_local_workers_start_with_the_allocator_settings():
    with dask_client("local", workers=1) as (client, _):
        environ = client.run(lambda: {name: os.environ.get(name) for name in ALLOCATOR_ENV})
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
    assert list(environ.values()) == [ALLOCATOR_ENV]
    assert all("bigdenoise-allocator" in names for names in plugins.values())


def test_the_sites_jobqueue_yaml_fills_what_the_flags_do_not_give(tmp_path):
    import subprocess
    import sys

    (tmp_path / "jobqueue.yaml").write_text(
        "jobqueue:\n  slurm:\n    cores: 12\n    memory: 48GB\n    walltime: '01:00:00'\n    account: site-acct\n"
        "    job-extra-directives: ['--constraint=site-rule']\n    job-script-prologue: ['module load site-python']\n")
    env = {**os.environ, "DASK_CONFIG": str(tmp_path)}
    base = [sys.executable, "-m", "bigdenoise.cli", "predict", "in.zarr", "--model", "m", "--out", "o.zarr",
            "--cluster", "slurm", "--print-job-script"]
    script = subprocess.run(base, env=env, capture_output=True, text=True, timeout=120)
    assert script.returncode == 0, script.stderr
    text = script.stdout
    for line in ("#SBATCH -A site-acct", "#SBATCH --constraint=site-rule", "#SBATCH --cpus-per-task=12",
                 "#SBATCH -t 01:00:00", "module load site-python", "export MALLOC_ARENA_MAX=1",
                 "--lifetime 3240s", "--lifetime-stagger 162s"):
        assert line in text, (line, text)
    assert not (tmp_path / "o.zarr").exists()
    ours = subprocess.run(base + ["--job-cores", "4", "--job-directive=--exclusive", "--lifetime", "off"], env=env,
                          capture_output=True, text=True, timeout=120).stdout
    assert "#SBATCH --cpus-per-task=4" in ours and "#SBATCH --constraint=site-rule" in ours
    assert "#SBATCH --exclusive" in ours and "--lifetime" not in ours


def test_worker_lifetime_follows_the_walltime():
    from bigdenoise.clusters import parse_walltime, worker_lifetime

    assert parse_walltime("02:00:00") == 7200 and parse_walltime("1-00:00:00") == 86400 and parse_walltime("90") == 5400
    assert worker_lifetime("02:00:00", None) == ("6480s", "300s")  # 10 % margin, stagger capped at 5 min
    assert worker_lifetime("00:30:00", None) == ("1500s", "75s")  # the margin is at least 5 minutes
    assert worker_lifetime(None, None) is None and worker_lifetime("02:00:00", "off") is None
    assert worker_lifetime(None, "1h") == ("1h", "1m")
    with pytest.raises(ConfigError, match="walltime"):
        parse_walltime("two hours")
    assert JobOptions(jobs=3).bounds() == (3, 3) and JobOptions(min_jobs=0, max_jobs=8).bounds() == (0, 8)
    with pytest.raises(ConfigError, match="above"):
        JobOptions(min_jobs=5, max_jobs=2)


@pytest.mark.slow
def test_workers_that_retire_by_lifetime_mid_run_leave_identical_bytes(tmp_path, model_2d):
    """A worker retires by its lifetime mid-run and is restarted, while a second one lives on: the
    retiring worker's blocks move, the output is byte-identical to an uninterrupted run.

    The steady worker guarantees progress: with every worker on a short lifetime, a slow machine
    (worker start-up alone takes seconds on a loaded core) retired them all before they finished a
    block, and the run never ended (CI, 2 cores)."""
    import time

    import numpy as np
    import zarr
    from distributed import Nanny, Scheduler, SpecCluster

    import bigdenoise as bd
    from conftest import smooth_volume, write_zarr

    model_dir, _, _ = model_2d
    data, _ = smooth_volume((128, 64, 72), seed=5)
    src = write_zarr(tmp_path / "in.zarr", data, (1, 64, 72), "SYX")
    kw = dict(progress=False, batch_size=1, tile=(32, 32), block_voxels=1)
    t0 = time.monotonic()
    bd.predict(src, model_dir, tmp_path / "ref.zarr", cluster="threads", **kw)
    # a quarter of a run, however fast this machine is (a floor of 3 s outlasted a 1.9 s run on a
    # fast CPU); on a slow one the retiring worker may restart before finishing a block: the steady
    # one finishes the run
    life = min(20.0, max(0.5, (time.monotonic() - t0) / 4))
    worker = {"nthreads": 1}
    spec = {"steady": {"cls": Nanny, "options": worker},
            "retiring": {"cls": Nanny, "options": {**worker, "lifetime": f"{life:.2f}s",
                                                   "lifetime_stagger": f"{life / 4:.2f}s", "lifetime_restart": True}}}
    with SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}}) as cluster:
        bd.predict(src, model_dir, tmp_path / "out.zarr", cluster=cluster.scheduler_address, **kw)
        removed = [event for _, event in cluster.scheduler.get_events("all") if event.get("action") == "remove-worker"]
    assert removed, "the retiring worker should have retired during the run"
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...],
                                  zarr.open_array(str(tmp_path / "ref.zarr"), mode="r")[...])


def _leave_when_the_allocator_plugin_arrives(dask_worker) -> None:
    """Make this worker process exit on receiving bigdenoise's allocator plugin, as a worker at the end
    of its lifetime or scaled down by an adaptive cluster leaves in the middle of a broadcast."""
    add = dask_worker.handlers["plugin-add"]

    def plugin_add(**msg):
        if msg.get("name") == "bigdenoise-allocator":
            os._exit(1)
        return add(**msg)

    dask_worker.handlers["plugin-add"] = plugin_add


@pytest.mark.slow
def test_a_worker_leaving_while_the_plugin_is_registered_does_not_end_the_run():
    """distributed answers a broadcast that meets a closed worker by closing the caller's connection:
    without a retry, every run on a cluster whose workers come and go could fail at its start (seen in
    CI with a worker retiring by lifetime)."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    spec = {name: {"cls": Nanny, "options": {"nthreads": 1}} for name in ("steady", "leaving")}
    with SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}}) as cluster:
        with Client(cluster.scheduler_address) as setup:
            setup.wait_for_workers(2)
            leaving = next(a for a, w in setup.scheduler_info()["workers"].items() if w["name"] == "leaving")
            setup.run(_leave_when_the_allocator_plugin_arrives, workers=[leaving])
        with dask_client(cluster.scheduler_address) as (client, _):
            assert client.submit(sum, [1, 2]).result() == 3
        assert "bigdenoise-allocator" in cluster.scheduler.worker_plugins
