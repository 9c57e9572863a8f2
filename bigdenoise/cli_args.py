"""The command line's argument types and the flags several commands share, each group with the
function that turns its parsed values into the library's keywords (``cli.py`` builds the commands
from them and runs them)."""

from __future__ import annotations

import argparse
import re

from .errors import ConfigError


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1.5h``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 300, 300s, 5m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def at_least(least: int):
    """An argparse type: a whole number not below ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is below the least allowed value {least}")
        return value
    return parse


def parse_shape(text: str) -> tuple[int, ...]:
    """``64,256,256`` (or ``64x256x256``) -> a tuple of positive ints."""
    try:
        values = tuple(int(v) for v in re.split(r"[,x]", text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 64,256,256") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return values


def parse_option(text: str) -> tuple[str, str | None]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``; ``help`` -> ``("help", None)``."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if key == "help" and not sep:
        return "help", None
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*", key):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (or help)")
    return key, value


def add_option_flag(p, what: str, example: str) -> None:
    p.add_argument("--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
                   help=f"{what}, e.g. --option {example}; VALUE is parsed as the option's type (none: None). "
                        f"Repeatable. `--option help` lists them with types, defaults and descriptions")


def given_options(a: argparse.Namespace) -> dict[str, str]:
    """The ``--option`` pairs as a dict; a ConfigError for a key given twice with different values."""
    options: dict[str, str] = {}
    for key, value in a.option:
        if key in options and options[key] != value:
            raise ConfigError(f"--option {key} is given twice, as {options[key]!r} and {value!r}; give it once")
        options[key] = value
    return options


def add_log_file(p, where: str) -> None:
    p.add_argument("--log-file", metavar="PATH",
                   help=f"append the run's log (command line, cluster and dashboard, stages or failed blocks with "
                        f"their tracebacks, a summary) to PATH (default: bigdenoise.log inside the {where}); never "
                        f"an input or a file inside one")


def add_input_options(p) -> None:
    p.add_argument("--channel", metavar="K", help="channel(s) to use of an input with a C axis (CZYX, TCZYX, ...), "
                   "e.g. 1 or 0,2 (train: one); required when it has several")
    p.add_argument("--series", type=at_least(0), metavar="N", help="series of a multi-series TIFF file (default 0)")
    p.add_argument("--voxel-size", metavar="Z,Y,X", help="physical voxel size along the spatial axes (z,y,x or y,x) "
                   "for inputs whose metadata give none; written to the output")


def input_kwargs(a: argparse.Namespace) -> dict:
    return {"channel": a.channel, "series": a.series, "voxel_size": a.voxel_size}


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_job_options(p) -> None:
    """The batch-job flags of ``predict`` (:func:`job_options` reads them)."""
    jobs = p.add_argument_group("batch jobs (--cluster slurm|pbs|lsf, through dask-jobqueue; what is not given "
                                "comes from the site's jobqueue.yaml)")
    jobs.add_argument("--jobs", type=int, default=1, help="jobs kept running (default 1; a job that ends is replaced)")
    jobs.add_argument("--min-jobs", type=int, help="adaptive: fewest jobs (default --jobs)")
    jobs.add_argument("--max-jobs", type=int, help="adaptive: most jobs, added while blocks wait (default --jobs)")
    jobs.add_argument("--job-cores", type=int, help="cores per job")
    jobs.add_argument("--job-memory", help="memory per job, e.g. 32GB")
    jobs.add_argument("--job-gpus", type=int, default=0, help="GPUs per job: one worker per GPU")
    jobs.add_argument("--job-processes", type=int, help="worker processes per job (default: GPUs, else cores/4)")
    jobs.add_argument("--walltime", help="per job, e.g. 02:00:00")
    jobs.add_argument("--lifetime", help="a worker retires gracefully after this long, e.g. 1h50m (default: the "
                      "walltime less 10%%, at least 5 minutes; off: never), so its blocks move before the job is killed")
    jobs.add_argument("--queue", help="queue / partition")
    jobs.add_argument("--account", help="account / project to charge")
    jobs.add_argument("--interface", help="network interface of the workers, e.g. ib0")
    jobs.add_argument("--local-directory", help="workers' scratch folder on the compute nodes")
    jobs.add_argument("--job-directive", action="append", default=[], metavar="LINE",
                      help="extra scheduler directive, e.g. --job-directive=--constraint=a100 (repeatable)")
    jobs.add_argument("--job-prologue", action="append", default=[], metavar="LINE",
                      help="shell line run before each worker, e.g. 'source ~/venv/bin/activate' (repeatable)")
    jobs.add_argument("--print-job-script", action="store_true",
                      help="print the job script these settings make and exit, submitting nothing")


def job_options(a: argparse.Namespace):
    """The batch-job flags as ``clusters.JobOptions``."""
    from .clusters import JobOptions

    return JobOptions(jobs=a.jobs, min_jobs=a.min_jobs, max_jobs=a.max_jobs, cores=a.job_cores, memory=a.job_memory,
                      gpus=a.job_gpus, processes=a.job_processes, walltime=a.walltime, lifetime=a.lifetime,
                      queue=a.queue, account=a.account, interface=a.interface, local_directory=a.local_directory,
                      directives=tuple(a.job_directive), prologue=tuple(a.job_prologue))
