"""Dask clusters for blockwise prediction: threads, LocalCluster, an existing scheduler, or a
batch system through dask-jobqueue (SLURM, PBS, LSF)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import dask
import torch
from distributed import Client, LocalCluster, WorkerPlugin

from .errors import ConfigError
from .runtime import ALLOCATOR_ENV, release_memory, tune_allocator, tune_worker_allocator

log = logging.getLogger(__name__)

LOCAL = ("threads", "local")
AUTO = "auto"  # predict's default: a one-block run in this process, any other on local worker processes
# Dask settings of the workers bigdenoise starts. The statistical profiler samples every task
# thread's stack each 10 ms into trees it keeps for 1000 s: a worker's heap grew with each block it
# ran for its first quarter hour (68 kB of Python objects per 1.5 s block, tracemalloc), small
# long-lived objects between the blocks' arrays. Nothing here reads it (the dashboard's Profile
# page stays empty). Workers of an existing scheduler: start them with WORKER_CONFIG_ENV too.
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}
WORKER_CONFIG_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster"}


@dataclass(frozen=True)
class JobOptions:
    """Batch jobs for ``--cluster slurm|pbs|lsf``: each job runs ``processes`` Dask workers.

    Every setting left as None is taken from the site's dask-jobqueue configuration
    (``~/.config/dask/jobqueue.yaml`` or ``$DASK_CONFIG``), where admins set interfaces, modules
    and accounts; directives and prologue lines given here are added to the site's.

    Attributes
    ----------
    jobs : jobs kept running; ``min_jobs``/``max_jobs`` make the number adaptive instead.
    cores, memory : per job (``memory`` as the batch system reads it, e.g. ``"32GB"``).
    gpus : GPUs per job; one worker process per GPU, each pinned to its own GPU.
    processes : worker processes per job (default: ``gpus`` if any, else one per 4 cores).
    walltime, queue, account, interface, local_directory : passed to dask-jobqueue.
    lifetime : how long a worker runs before it retires gracefully (its blocks move to others
        and a new job replaces it), e.g. ``"1h50m"``; None derives it from the walltime
        (:func:`worker_lifetime`), ``"off"`` keeps workers until the batch system stops them.
    directives : extra scheduler directives, e.g. ``["--constraint=a100"]`` for SLURM.
    prologue : shell lines run before the worker starts (``module load ...``, venv activation).
    """

    jobs: int = 1
    min_jobs: int | None = None
    max_jobs: int | None = None
    cores: int | None = None
    memory: str | None = None
    gpus: int = 0
    processes: int | None = None
    walltime: str | None = None
    lifetime: str | None = None
    queue: str | None = None
    account: str | None = None
    interface: str | None = None
    local_directory: str | None = None
    directives: tuple[str, ...] = field(default_factory=tuple)
    prologue: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        low = [f"{name} {value}" for name, value, least in (
               ("--jobs", self.jobs, 1), ("--min-jobs", self.min_jobs, 0), ("--max-jobs", self.max_jobs, 1),
               ("--job-cores", self.cores, 1), ("--job-gpus", self.gpus, 0), ("--job-processes", self.processes, 1))
               if value is not None and value < least]
        if low:
            raise ConfigError(f"{', '.join(low)}: jobs, cores and processes must be at least 1, GPUs and "
                              f"--min-jobs at least 0")
        if self.min_jobs is not None and self.max_jobs is not None and self.min_jobs > self.max_jobs:
            raise ConfigError(f"--min-jobs {self.min_jobs} is above --max-jobs {self.max_jobs}")

    def bounds(self) -> tuple[int, int]:
        """The fewest and most jobs the adaptive cluster keeps."""
        return (self.jobs if self.min_jobs is None else self.min_jobs,
                max(self.jobs, self.min_jobs or 0) if self.max_jobs is None else self.max_jobs)


def parse_walltime(text: str) -> int:
    """Seconds of a batch walltime: ``HH:MM:SS``, ``MM:SS``, ``D-HH:MM:SS`` or plain minutes."""
    days, _, clock = text.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        if not 1 <= len(parts) <= 3:
            raise ValueError
        if len(parts) == 1:
            parts = [0, parts[0], 0]
        seconds = sum(p * f for p, f in zip(reversed(parts), (1, 60, 3600)))
        return seconds + 86400 * (int(days) if days else 0)
    except ValueError:
        raise ConfigError(f"walltime {text!r} is not like 02:00:00, 1-00:00:00 or 90") from None


def worker_lifetime(walltime: str | None, lifetime: str | None) -> tuple[str, str] | None:
    """``(lifetime, stagger)`` for dask's ``--lifetime`` and ``--lifetime-stagger``: the given
    lifetime, or the walltime less a margin (10 %, at least 5 minutes) so that a worker hands its
    blocks over before the batch system kills it; stagger 5 % of it (at most 5 minutes) so that
    workers do not all leave at once. None when switched off or no walltime is known."""
    if lifetime == "off" or (lifetime is None and walltime is None):
        return None
    if lifetime is not None:
        return lifetime, "1m"
    seconds = parse_walltime(walltime)
    life = max(60, seconds - max(300, seconds // 10))
    return f"{life}s", f"{min(300, life // 20)}s"


def connect_timeout() -> float:
    """Seconds to reach a scheduler and hear it answer: Dask's ``distributed.comm.timeouts.connect``
    (30 s unless a site's Dask config or ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT`` says otherwise)."""
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect", "30s"), default="seconds"))


def check_cluster(cluster: str, workers: int | None = None) -> None:
    """A ConfigError for an unknown cluster name or a worker count below 1."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: a cluster needs at least 1 worker process")
    if not (cluster in (*LOCAL, AUTO) or cluster in JOBQUEUE or cluster.startswith(("tcp://", "tls://"))):
        raise ConfigError(f"unknown cluster {cluster!r}; use auto, threads, local, slurm, pbs, lsf or tcp://HOST:PORT")


def resolve_auto(cluster: str, blocks: int, workers: int | None) -> str:
    """``cluster`` itself unless it is ``auto``: then ``threads`` for a run of one block without
    ``workers`` asked for (a worker process would add only its start-up, seconds of imports and
    a model load, and could retry nothing a rerun would not), else ``local``."""
    if cluster != AUTO:
        return cluster
    return "threads" if blocks == 1 and workers is None else "local"


def _jobqueue_class(kind: str):
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError(
            f"--cluster {kind} needs dask-jobqueue: pip install 'bigdenoise[jobqueue]' (or dask-jobqueue)"
        ) from None
    return getattr(dask_jobqueue, JOBQUEUE[kind])


def job_shape(kind: str, options: JobOptions) -> tuple[int | None, int | None]:
    """Cores per job and worker processes per job: ours, else the site's (None: not known)."""
    site = dask.config.get(f"jobqueue.{kind}", {})
    cores = options.cores or site.get("cores")
    processes = options.processes or options.gpus or site.get("processes") or (max(1, cores // 4) if cores else None)
    return cores, processes


def jobqueue_cluster(kind: str, options: JobOptions):
    """A dask-jobqueue cluster object (jobs are submitted when it is scaled): the settings given
    in ``options``, the site's configuration for the rest, its directives, prologue and worker
    arguments extended with ours (the allocator settings, a lifetime)."""
    cls = _jobqueue_class(kind)
    site = dask.config.get(f"jobqueue.{kind}", {})
    directives = list(site.get("job-extra-directives") or []) + list(options.directives)
    if options.gpus:
        directives.append({"slurm": f"--gres=gpu:{options.gpus}", "pbs": f"-l ngpus={options.gpus}",
                           "lsf": f'-gpu "num={options.gpus}"'}[kind])
    prologue = (list(site.get("job-script-prologue") or [])
                + [f"export {k}={v}" for k, v in {**ALLOCATOR_ENV, **WORKER_CONFIG_ENV}.items()] + list(options.prologue))
    extra_args = list(site.get("worker-extra-args") or [])
    walltime = options.walltime or site.get("walltime")
    life = worker_lifetime(walltime, options.lifetime)
    if life is not None:
        extra_args += ["--lifetime", life[0], "--lifetime-stagger", life[1]]
    cores, processes = job_shape(kind, options)
    given = dict(cores=options.cores, memory=options.memory, processes=processes, walltime=options.walltime,
                 queue=options.queue, account=options.account, interface=options.interface,
                 local_directory=options.local_directory)
    kwargs = {k: v for k, v in given.items() if v is not None}
    try:
        return cls(job_extra_directives=directives, job_script_prologue=prologue, worker_extra_args=extra_args,
                   **kwargs)
    except ValueError as exc:
        raise ConfigError(f"--cluster {kind}: {exc}; give --job-cores and --job-memory, or set them in the site's "
                          f"jobqueue.yaml") from None


def torch_threads_per_worker(cores: int, workers: int) -> int:
    return max(1, cores // max(1, workers))


class AllocatorSettings(WorkerPlugin):
    """Worker plugin: ``runtime.tune_worker_allocator`` in every worker process as it joins."""

    def setup(self, worker) -> None:
        tune_worker_allocator()


def register_allocator_plugin(client: Client, attempts: int = 3) -> None:
    """Register ``AllocatorSettings`` on every worker of ``client``'s cluster, now and as they join.

    A worker that leaves during the broadcast (its lifetime ends, an adaptive cluster scales down, a
    job is killed) makes distributed close this client's connection with ``CommClosedError``. The
    scheduler keeps the plugin for the workers that join later before it broadcasts, so the
    broadcast is repeated for the workers still running; after ``attempts`` tries the run goes on
    with a warning (the plugin only tunes the allocator).
    """
    for attempt in range(1, attempts + 1):
        try:
            client.register_plugin(AllocatorSettings(), name="bigdenoise-allocator")
            return
        except OSError as exc:  # distributed's CommClosedError is one
            if attempt == attempts:
                log.warning("workers left while the allocator settings were sent (%s); those running now "
                            "keep their default allocator", exc)
                return
            time.sleep(0.5 * attempt)  # lets the scheduler remove the worker that left


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
            register_allocator_plugin(client)
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
            client = Client(cluster, timeout=f"{connect_timeout():g}s")
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at {cluster} ({exc})") from None
        with client:
            log.info("cluster %s; Dask dashboard: %s", cluster, client.dashboard_link)
            warning = worker_settings_warning(cluster, client.run(worker_settings, on_error="ignore"))
            if warning:
                log.warning(warning)
            yield client, 0
        return
    if cluster in JOBQUEUE:
        jobs = jobs or JobOptions()
        submit = _jobqueue_class(cluster).job_cls.submit_command
        if shutil.which(submit) is None:  # else every submission fails in the background and the run waits
            raise ConfigError(f"--cluster {cluster} submits jobs with {submit}, which is not on this machine's "
                              f"PATH; run bigdenoise on the cluster's login node, or choose --cluster local")
        with jobqueue_cluster(cluster, jobs) as jc, Client(jc) as client:
            low, high = jobs.bounds()
            jc.adapt(minimum_jobs=low, maximum_jobs=high)  # retired or killed workers' jobs are replaced
            log.info("%s jobs, adaptive between %d and %d; job script:\n%s", cluster, low, high, jc.job_script())
            print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            cores, processes = job_shape(cluster, jobs)
            yield client, torch_threads_per_worker(cores, processes or 1) if cores else 0
        return
    if cluster == "local" and device == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            LocalCUDACluster = None
        if LocalCUDACluster is not None:
            with _worker_environ(), LocalCUDACluster(threads_per_worker=threads, dashboard_address=":0",
                                                     silence_logs=logging.CRITICAL) as lc, Client(lc) as client:
                _log_local(cluster, len(lc.workers), threads, client)
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
        _log_local(cluster, n_workers, threads, client)
        yield client, torch_threads_per_worker(cores, n_workers)


def worker_settings() -> dict[str, bool]:
    """In a worker process: whether Dask's statistical profiler runs (off with
    :data:`WORKER_CONFIG`) and whether it started with the allocator settings ``runtime.ALLOCATOR_ENV``."""
    return {"profiler": bool(dask.config.get("distributed.worker.profile.enabled")),
            "allocator": all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items())}


def worker_settings_warning(cluster: str, settings: dict[str, dict[str, bool]]) -> str | None:
    """One line naming how many workers of the scheduler at ``cluster`` lack the settings of the
    workers bigdenoise starts, and how to start them; None when none does. ``settings``:
    :func:`worker_settings` per worker address (``client.run``)."""
    profiled = sum(s["profiler"] for s in settings.values())
    slow = sum(not s["allocator"] for s in settings.values())
    found = []
    if profiled:
        found.append(f"{profiled} run Dask's statistical profiler (its stack samples grow a worker's memory "
                     f"with every block for 1000 s)")
    if slow:
        found.append(f"{slow} lack the allocator settings (CPU passes up to 1.5x slower)")
    if not found:
        return None
    environ = " ".join(f"{k}={v}" for k, v in {**ALLOCATOR_ENV, **WORKER_CONFIG_ENV}.items())
    return (f"of the {len(settings)} workers of {cluster}, {' and '.join(found)}; start workers as "
            f"`{environ} dask worker {cluster}`")


def _log_local(cluster: str, n_workers: int, threads: int, client) -> None:
    # From what this process started, not client.nthreads(): asking the scheduler here made a run
    # whose workers retire by lifetime hang (test_clusters' lifetime test, every try; cause not found).
    log.info("cluster %s: %d workers with %d threads now; Dask dashboard: %s", cluster, n_workers,
             n_workers * threads, client.dashboard_link)


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """A ConfigError unless a Dask scheduler answers at ``address`` within ``timeout`` seconds
    (default :func:`connect_timeout`; ``Client`` alone waits forever on a port that accepts and
    stays silent)."""
    from distributed.comm import connect

    timeout = connect_timeout() if timeout is None else timeout

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
    """dask config under which workers start with :data:`WORKER_CONFIG` and worker processes
    with ``runtime.ALLOCATOR_ENV`` (on top of dask's own pre-spawn environment)."""
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **ALLOCATOR_ENV}
    return dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **WORKER_CONFIG})


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
