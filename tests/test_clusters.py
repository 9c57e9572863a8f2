"""Cluster creation: batch-system job scripts (dask-jobqueue) and option checks."""

import pytest

from bigdenoise.clusters import JobOptions, check_cluster, jobqueue_cluster
from bigdenoise.errors import ConfigError


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
    assert "--nworkers 2" in script or "--nprocs 2" in script  # one worker per GPU


def test_unknown_cluster_names_the_choices():
    with pytest.raises(ConfigError, match="slurm"):
        check_cluster("kubernetes")
