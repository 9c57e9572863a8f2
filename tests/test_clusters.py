"""Cluster creation: batch-system job scripts (dask-jobqueue) and option checks."""

import os

import pytest

from bigdenoise.clusters import JobOptions, check_cluster, dask_client, jobqueue_cluster
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
    for name, value in ALLOCATOR_ENV.items():  # workers start with the allocator settings
        assert f"export {name}={value}" in script
    assert "--nworkers 2" in script or "--nprocs 2" in script  # one worker per GPU


def test_unknown_cluster_names_the_choices():
    with pytest.raises(ConfigError, match="slurm"):
        check_cluster("kubernetes")


def test_local_workers_start_with_the_allocator_settings():
    with dask_client("local", workers=1) as (client, _):
        environ = client.run(lambda: {name: os.environ.get(name) for name in ALLOCATOR_ENV})
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
    assert list(environ.values()) == [ALLOCATOR_ENV]
    assert all("bigdenoise-allocator" in names for names in plugins.values())
