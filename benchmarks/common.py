"""Measuring and recording helpers shared by the benchmark scripts: PSNR, a matmul probe,
memory, machine description, the command line as a user retypes it, the CAREamics import, work
folders and the marked sections of ``benchmarks/RESULTS.md``. The data sets live in ``datasets.py``.

Imported by the scripts in this folder as ``import common`` (run them as
``python benchmarks/<script>.py``, which puts this folder on ``sys.path``); it imports no script.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
RESULTS_TITLE = "# bigdenoise benchmark results\n\nEach section is written by the script named in it (`--record`); rerun that command to reproduce it.\n"
TOPIC_QUALITY, TOPIC_SPEED = "Denoising quality", "Speed against CAREamics"
TOPIC_THROUGHPUT, TOPIC_SCALE = "Throughput: blockwise predict vs the bare forward", "Scale: memory as the volume grows"
"""The topic headings (``## ...``) of RESULTS.md under which a script's new sections go."""
PATH_OPTIONS = {"--work": "WORKDIR", "--data": "DATADIR"}
"""Options whose values are paths on the machine that ran a script: recorded as these placeholders."""
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:tmp|work|root|home|Users|var|private|mnt|scratch)/[^\s`'\")\]|,;]*")


# --------------------------------------------------------------------------- metrics


def psnr(x: np.ndarray, ref: np.ndarray, peak: float) -> float:
    """PSNR in dB of ``x`` against ``ref`` with peak value ``peak`` (``bigdenoise.metrics.psnr``)."""
    from bigdenoise.metrics import psnr as _psnr

    return _psnr(x, ref, peak)


def mean_psnr(x: np.ndarray, ref: np.ndarray, peak: float) -> tuple[float, list[float]]:
    """Mean over the first axis of per-image PSNR, and the per-image values."""
    values = [psnr(a, b, peak) for a, b in zip(x, ref)]
    return float(np.mean(values)), values


# --------------------------------------------------------------------------- machine


def spread(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, standard deviation (ddof 1; NaN for one value), min and max of per-seed values."""
    v = np.asarray(values, dtype=np.float64)
    std = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
    return float(v.mean()), std, float(v.min()), float(v.max())


def spread_text(values: list[float], digits: int = 2, sign: str = "") -> str:
    """``mean ± std [min, max]`` of per-seed values, or the single value."""
    mean, std, lo, hi = spread(values)
    if math.isnan(std):
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} ± {std:.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def matmul_gflops(n: int = 1024, repeats: int = 5, device: str = "cpu") -> float:
    """fp32 ``torch.matmul`` of two ``n x n`` matrices: best of ``repeats`` in GFLOP/s.

    A context number for the machine's speed at the time of a run (not a benchmark result).
    """
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.matmul(a, b)  # warm-up
    sync()
    best = float("inf")
    inner = 20 if device.startswith("cuda") else 1
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        sync()
        best = min(best, (time.perf_counter() - t0) / inner)
    return 2.0 * n**3 / best / 1e9


def probe(label: str = "") -> dict:
    """The matmul probe on the CPU (and on the GPU when there is one), printed and returned."""
    import torch

    result = {"cpu_gflops": round(matmul_gflops(), 1)}
    if torch.cuda.is_available():
        result["cuda_gflops"] = round(matmul_gflops(4096, device="cuda"), 1)
    text = ", ".join(f"{k.split('_')[0]} {v:.1f} GFLOP/s" for k, v in result.items())
    print(f"matmul probe{' ' + label if label else ''} (fp32): {text}", flush=True)
    return result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        # what --record writes (RESULTS files, figures) is output, not a change to the code that ran
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/RESULTS*.md", ":!benchmarks/figures"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{' (uncommitted changes)' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict:
    """Cores, CPU model, GPU, library versions and the git revision."""
    import torch

    import bigdenoise

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "bigdenoise": getattr(bigdenoise, "__version__", "?"),
        "git": _git_revision(),
        "platform": platform.platform(),
    }
    return info


def format_machine(info: dict, probes: list[dict]) -> str:
    """One markdown paragraph describing the machine and the probes."""
    gpu = info["gpu"] or "none"
    probe_text = " / ".join(
        ", ".join(f"{k.split('_')[0]} {v:.1f}" for k, v in p.items()) for p in probes
    )
    return (f"{info['cpu']}; {info['usable_cores']} usable cores ({info['cores']} online), torch threads "
            f"{info['torch_threads']}; GPU: {gpu}; matmul probe fp32 GFLOP/s (before / after): {probe_text}; "
            f"Python {info['python']}, torch {info['torch']}, bigdenoise {info['bigdenoise']} at git {info['git']}.")


# --------------------------------------------------------------------------- memory and subprocesses


def peak_rss_mb() -> float:
    """Peak resident memory (MB) of this process so far."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


class TreeRSS:
    """Context manager sampling, every ``interval`` seconds, the summed RSS of a process and all
    its descendants (default: this process); ``peak_mb`` is the largest sum seen.

    (``getrusage(RUSAGE_CHILDREN)`` would not do: a forked child inherits its parent's peak.)
    """

    def __init__(self, pid: int | None = None, interval: float = 0.2) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    def _sample(self, proc) -> int:
        import psutil

        try:
            procs = [proc] + proc.children(recursive=True)
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while True:
            self.peak = max(self.peak, self._sample(proc))
            if self._stop.wait(self.interval):
                break

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_command(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` (output goes to this terminal), timing it and sampling the peak summed RSS
    of its process tree. Raises SystemExit when it fails."""
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    with TreeRSS(proc.pid) as rss:
        rc = proc.wait()
        seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"command failed with exit status {rc}: {shlex.join(cmd)}")
    return {"seconds": seconds, "peak_rss_mb": rss.peak_mb}


def bigdenoise_exe() -> str:
    """The ``bigdenoise`` executable of this interpreter's environment."""
    import shutil

    exe = Path(sys.executable).parent / "bigdenoise"
    if exe.is_file():
        return str(exe)
    found = shutil.which("bigdenoise")
    if found is None:
        raise SystemExit("the bigdenoise command is not installed next to this Python (pip install -e .)")
    return found


def this_command() -> str:
    """The command line that ran this script, as a user would retype it; the values of
    :data:`PATH_OPTIONS` (``--work DIR``, ``--data DIR``) become placeholders."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    args = list(sys.argv[1:])
    for i, arg in enumerate(args):
        option, eq, _ = arg.partition("=")
        if option in PATH_OPTIONS and eq:
            args[i] = f"{option}={PATH_OPTIONS[option]}"
        elif arg in PATH_OPTIONS and i + 1 < len(args):
            args[i + 1] = PATH_OPTIONS[arg]
    return shlex.join(["python", str(script), *args])


def now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


# --------------------------------------------------------------------------- the peer


CAREAMICS_INSTALL = (
    "pip install torch==2.13.0, then careamics's other requirements, then "
    "pip install --no-deps careamics==0.3.5 torchvision==0.28.0 (benchmarks/README.md)"
)


def import_careamics():
    """Import CAREamics 0.3.5 beside the CPU build of torch, or return None when it is absent.

    PyPI's torchvision, which careamics imports at start-up, registers fake kernels for its
    ``torchvision::nms``/``qnms`` operators, whose schemas live in the compiled extension that does
    not load beside the CPU torch ("operator torchvision::nms does not exist"). Defining the two
    schemas first lets careamics import; N2V never calls them.
    """
    import importlib.util

    if importlib.util.find_spec("careamics") is None:
        return None
    import torch

    for name in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:  # already defined: torchvision's own extension loaded, or a second call
            pass
    import careamics

    return careamics


# --------------------------------------------------------------------------- RESULTS.md


def without_machine_paths(text: str) -> str:
    """``text`` with every absolute path of the machine (under its temporary, work, root or home
    folders: :data:`MACHINE_PATH`) replaced by ``PATH``, with a warning: recorded results name
    ``WORKDIR``/``DATADIR`` placeholders, never a path of the machine that ran them."""
    found = sorted(set(MACHINE_PATH.findall(text)))
    if found:
        print(f"warning: machine paths replaced by PATH in the recorded text: {', '.join(found)}", file=sys.stderr)
    return MACHINE_PATH.sub("PATH", text)


def _insert_under_topic(document: str, block: str, topic: str | None) -> str:
    """``document`` with ``block`` at the end of the group under the heading ``## {topic}``
    (a new group at the end when there is none; the end of the document without ``topic``)."""
    if topic is None:
        return document.rstrip("\n") + "\n\n" + block
    lines = document.split("\n")
    heading = f"## {topic}"
    if heading not in lines:
        return document.rstrip("\n") + f"\n\n{heading}\n\n" + block
    after = lines.index(heading) + 1
    nxt = next((i for i in range(after, len(lines)) if lines[i].startswith("## ")), len(lines))
    head = "\n".join(lines[:nxt]).rstrip("\n")
    tail = "\n".join(lines[nxt:])
    return head + "\n\n" + block + ("\n" + tail if tail else "")


def replace_section(path: str | os.PathLike, name: str, text: str, topic: str | None = None) -> None:
    """Put ``text`` between ``<!-- name -->`` and ``<!-- /name -->`` in ``path`` (RESULTS.md),
    with an HTML anchor ``name`` for links (``[...](#name)``).

    A section already there is replaced in place, keeping its heading line: its title, unique in
    the document and chosen by a person, outlives re-recording; the rest (numbers, reading) is
    the new ``text``. A new section goes at the end of the group under ``## {topic}``, its
    ``## `` title demoted to ``### `` (sections sit under topic headings) and suffixed with
    ``(name)`` if another section has the same title. The file is created with a title when
    missing. Machine paths are replaced (:func:`without_machine_paths`).
    """
    path = Path(path)
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    lines = without_machine_paths(text.strip()).split("\n")
    document = path.read_text() if path.exists() else RESULTS_TITLE
    found = re.search(re.escape(start) + r".*?" + re.escape(end) + r"\n?", document, re.S)
    if found and lines[0].startswith("#"):
        lines[0] = next((line for line in found.group(0).split("\n") if line.startswith("#")), lines[0])
    elif lines[0].startswith("## "):
        lines[0] = "#" + lines[0]
        if lines[0] in document.split("\n"):
            lines[0] += f" ({name})"
    block = f"{start}\n<a id=\"{name}\"></a>\n\n" + "\n".join(lines) + f"\n{end}\n"
    if found:
        document = document[:found.start()] + block + document[found.end():]
    else:
        document = _insert_under_topic(document, block, topic)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(document)
    os.replace(tmp, path)
    print(f"recorded section {name!r} in {path}")


WORK_MARK = ".bigdenoise-bench"  # in every work folder a benchmark claimed: its files are ours to replace


def claim_work(work: str | Path | None, name: str | None = None) -> Path:
    """The work folder ``work`` (None: the script's fixed folder ``<tmp>/bigdenoise-bench/<name>``),
    created, or reused when a benchmark claimed it before.

    The scripts replace stacks, models and outputs inside it, so a folder that already holds
    anything without :data:`WORK_MARK` belongs to someone else: it is refused with one line
    (``SystemExit``) and left untouched."""
    path = Path(work) if work else Path(tempfile.gettempdir()) / "bigdenoise-bench" / name
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / WORK_MARK).exists())):
        raise SystemExit(f"error: the work folder {path} holds files a benchmark did not write; "
                         "give --work a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    (path / WORK_MARK).touch()
    return path


@contextlib.contextmanager
def work_folder(work: str | None, prefix: str):
    """The folder ``work`` (``--work``, claimed with :func:`claim_work` and kept), or a temporary
    folder named ``prefix...`` removed on exit."""
    if work:
        yield claim_work(work)
        return
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
