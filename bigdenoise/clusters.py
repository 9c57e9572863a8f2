"""Dask clusters for blockwise prediction: threads, LocalCluster, an existing scheduler, or a
batch system through dask-jobqueue (SLURM, PBS, LSF)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import dask
import torch
from distributed import Client, LocalCluster, WorkerPlugin

from .errors import ConfigError
from .runtime import ALLOCATOR_ENV, release_memory, tune_allocator, tune_worker_allocator

LOCAL = ("threads", "local")
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster"}


@dataclass(frozen=True)
class JobOptions:
    """Batch jobs for ``--cluster slurm|pbs|lsf``: each job runs ``processes`` Dask workers.

    Attributes
    ----------
    jobs : number of jobs to submit.
    cores, memory : per job (``memory`` as the batch system reads it, e.g. ``"32GB"``).
    gpus : GPUs per job; one worker process per GPU, each pinned to its own GPU.
    processes : worker processes per job (default: ``gpus`` if any, else one per 4 cores).
    walltime, queue, account : passed to the batch system.
    directives : extra scheduler directives, e.g. ``["--constraint=a100"]`` for SLURM.
    prologue : shell lines run before the worker starts (``module load ...``, venv activation).
    """

    jobs: int = 1
    cores: int = 8
    memory: str = "32GB"
    gpus: int = 0
    processes: int | None = None
    walltime: str = "02:00:00"
    queue: str | None = None
    account: str | None = None
    directives: tuple[str, ...] = field(default_factory=tuple)
    prologue: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        low = [f"{name} {value}" for name, value, least in (("--jobs", self.jobs, 1), ("--job-cores", self.cores, 1),
               ("--job-gpus", self.gpus, 0), ("--job-processes", self.processes, 1))
               if value is not None and value < least]
        if low:
            raise ConfigError(f"{', '.join(low)}: jobs, cores and processes must be at least 1, GPUs at least 0")

    @property
    def worker_processes(self) -> int:
        return self.processes or self.gpus or max(1, self.cores // 4)


CONNECT_TIMEOUT = 30.0  # seconds to reach a scheduler and hear it answer


def check_cluster(cluster: str, workers: int | None = None) -> None:
    """A ConfigError for an unknown cluster name or a worker count below 1."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: a cluster needs at least 1 worker process")
    if not (cluster in LOCAL or cluster in JOBQUEUE or cluster.startswith(("tcp://", "tls://"))):
        raise ConfigError(f"unknown cluster {cluster!r}; use threads, local, slurm, pbs, lsf or tcp://HOST:PORT")


def jobqueue_cluster(kind: str, options: JobOptions):
    """A dask-jobqueue cluster object (jobs are submitted when it is scaled)."""
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError(
            f"--cluster {kind} needs dask-jobqueue: pip install 'bigdenoise[jobqueue]' (or dask-jobqueue)"
        ) from None
    directives = list(options.directives)
    if options.gpus:
        directives.append({"slurm": f"--gres=gpu:{options.gpus}", "pbs": f"-l ngpus={options.gpus}",
                           "lsf": f'-gpu "num={options.gpus}"'}[kind])
    cls = getattr(dask_jobqueue, JOBQUEUE[kind])
    kwargs = dict(cores=options.cores, memory=options.memory, processes=options.worker_processes,
                  walltime=options.walltime, queue=options.queue, job_extra_directives=directives,
                  job_script_prologue=[f"export {k}={v}" for k, v in ALLOCATOR_ENV.items()]
                  + list(options.prologue))
    if options.account:
        kwargs["account"] = options.account
    return cls(**kwargs)


def torch_threads_per_worker(cores: int, workers: int) -> int:
    return max(1, cores // max(1, workers))


class AllocatorSettings(WorkerPlugin):
    """Worker plugin: ``runtime.tune_worker_allocator`` in every worker process as it joins."""

    def setup(self, worker) -> None:
        tune_worker_allocator()


@contextmanager
def dask_client(cluster: str, workers: int | None = None, threads_per_worker: int | None = None,
                device: str = "cpu", jobs: JobOptions | None = None) -> Iterator[tuple[object, int]]:
    """A ``distributed.Client`` for ``cluster`` and the torch threads each worker should use
    (0: leave torch's default).

    ``threads``: one in-process worker; ``local``: worker processes on this machine (one per GPU
    with dask-cuda's LocalCUDACluster when installed and ``device`` is cuda, else one per 4
    cores); ``slurm|pbs|lsf``: batch jobs through dask-jobqueue; ``tcp://HOST:PORT``: an
    existing scheduler. Worker processes this module starts (``local``, batch jobs) start with
    ``runtime.ALLOCATOR_ENV``, the settings of ``runtime.tune_allocator``, which this process
    takes too (its threads run the ``threads`` worker); workers of an existing scheduler get
    ``runtime.tune_worker_allocator`` as they join (start them with ``ALLOCATOR_ENV`` for the
    full settings).
    """
    tune_allocator()
    try:
        with _client(cluster, workers, threads_per_worker, device, jobs) as (client, torch_threads):
            client.register_plugin(AllocatorSettings(), name="bigdenoise-allocator")
            yield client, torch_threads
    finally:
        release_memory()  # what the in-process worker's forward passes kept in this heap


@contextmanager
def _client(cluster: str, workers: int | None, threads_per_worker: int | None, device: str,
            jobs: JobOptions | None) -> Iterator[tuple[object, int]]:
    check_cluster(cluster)
    cores = os.cpu_count() or 1
    threads = threads_per_worker or 2  # two task threads: one block is read while another computes
    if cluster.startswith(("tcp://", "tls://")):
        if cluster.startswith("tcp://"):
            probe_scheduler(cluster)
        try:
            client = Client(cluster, timeout=f"{CONNECT_TIMEOUT:g}s")
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at {cluster} ({exc})") from None
        with client:
            yield client, 0
        return
    if cluster in JOBQUEUE:
        jobs = jobs or JobOptions()
        with jobqueue_cluster(cluster, jobs) as jc, Client(jc) as client:
            submit = jc.job_cls.submit_command
            if shutil.which(submit) is None:  # else every submission fails in the background and the run waits
                raise ConfigError(f"--cluster {cluster} submits jobs with {submit}, which is not on this machine's "
                                  f"PATH; run bigdenoise on the cluster's login node, or choose --cluster local")
            jc.scale(jobs=jobs.jobs)
            yield client, torch_threads_per_worker(jobs.cores, jobs.worker_processes)
        return
    if cluster == "local" and device == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            LocalCUDACluster = None
        if LocalCUDACluster is not None:
            with _worker_environ(), LocalCUDACluster(threads_per_worker=threads, dashboard_address=":0",
                                                     silence_logs=logging.CRITICAL) as lc, Client(lc) as client:
                yield client, torch_threads_per_worker(cores, len(lc.workers))
            return
    processes = cluster == "local"
    if processes:
        default = torch.cuda.device_count() if device == "cuda" else max(1, cores // 4)
        n_workers = workers or default or 1
    else:
        n_workers = 1
    with _worker_environ(), LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=processes,
                                         dashboard_address=":0", silence_logs=logging.CRITICAL) as lc, Client(lc) as client:
        yield client, torch_threads_per_worker(cores, n_workers)


def probe_scheduler(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """A ConfigError unless a Dask scheduler answers at ``address`` within ``timeout`` seconds
    (``Client`` alone waits forever on a port that accepts and stays silent)."""
    from distributed.comm import connect

    async def identity():
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(identity(), timeout))
    except (asyncio.TimeoutError, TimeoutError):
        raise ConfigError(f"no Dask scheduler answered at {address} within {timeout:g} s; start one there "
                          f"(`dask scheduler`) or check the address") from None
    except Exception as exc:  # noqa: BLE001 - whatever the far end is, it is not a usable scheduler
        raise ConfigError(f"cannot reach a Dask scheduler at {address} ({type(exc).__name__}: {exc})") from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise ConfigError(f"{address} answered, but not as a Dask scheduler; check the address")


def _worker_environ():
    """dask config under which worker processes start with ``runtime.ALLOCATOR_ENV`` (on top of
    dask's own pre-spawn environment)."""
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **ALLOCATOR_ENV}
    return dask.config.set({"distributed.nanny.pre-spawn-environ": environ})


def gpu_for_worker(device: str) -> str:
    """Pin this worker process to one GPU: ``cuda:i`` from the worker's name, when several are
    visible (LocalCUDACluster already restricts each worker to one)."""
    if device != "cuda" or torch.cuda.device_count() <= 1:
        return device
    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        return device
    digits = name.rsplit("-", 1)[-1]
    return f"cuda:{int(digits) % torch.cuda.device_count()}" if digits.isdigit() else device
