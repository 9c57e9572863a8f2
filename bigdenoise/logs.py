"""The log file of one run: what bigdenoise's loggers record while a ``train`` or ``predict`` runs.

Every module logs to its own ``logging.getLogger(__name__)``; nothing here touches the root
logger (the command line configures it, :func:`configure_console`). A :func:`run_log` keeps the
records of the ``bigdenoise`` loggers in memory until the run's output directory exists
(:meth:`RunLog.open`), then appends them, and every later one, to ``bigdenoise.log`` inside it
(a file of an output bigdenoise owns, staged and swapped in with it) or to a file the user named
(checked by ``outputs.check_log_file`` first). A run that stops before its output exists leaves
no log in it, as it leaves no output. Python warnings shown during a run (a method's "the latents
may have collapsed", a library's) are records of the ``bigdenoise.warnings`` logger too, so the log
keeps them.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_FILE = "bigdenoise.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_ONLY = {"console": False}  # ``extra=`` of a record meant for the log file only (the console says it once)
ROOT = "bigdenoise"
WARNINGS = ROOT + ".warnings"
PACKAGE = Path(__file__).resolve().parent

_active: RunLog | None = None


class RunLog:
    """The log of one run (see the module's docstring). ``path``: the file the user chose, or
    None for ``LOG_FILE`` in the directory given to :meth:`open`."""

    def __init__(self, path: str | Path | None) -> None:
        self.given = None if path is None else Path(path).expanduser()
        self.path: Path | None = None
        self._buffer = logging.handlers.MemoryHandler(capacity=10**9, flushLevel=logging.CRITICAL + 1)
        self._file: logging.Handler | None = None

    def open(self, directory: str | Path) -> Path:
        """Start writing: the records so far, then each as it comes, to the log file (once; a
        second call keeps the first file). Returns the file's path."""
        if self._file is None:
            self.path = Path(self.given if self.given is not None else Path(directory) / LOG_FILE).absolute()
            self._file = logging.FileHandler(self.path, mode="a", encoding="utf-8")
            self._file.setFormatter(logging.Formatter(FORMAT))
            self._buffer.setTarget(self._file)
            self._buffer.flush()
            logger = logging.getLogger(ROOT)
            logger.removeHandler(self._buffer)
            logger.addHandler(self._file)
        return self.path

    def check(self, protect) -> None:
        """Refuse a file the user chose that is, or sits inside, a protected path (an input,
        the model in use: ``outputs.check_log_file``); then start writing to it at once."""
        if self.given is not None:
            from .outputs import check_log_file

            check_log_file(self.given, protect)
            self.open(self.given.parent)

    def _close(self) -> None:
        logger = logging.getLogger(ROOT)
        for handler in (self._buffer, self._file):
            if handler is not None:
                logger.removeHandler(handler)
                handler.close()


@contextmanager
def run_log(path: str | Path | None = None, *, show_warnings: bool = True) -> Iterator[RunLog]:
    """The log of the run inside this block. A call inside another's block (the command line's
    around the API's) returns the outer log, so one run has one log file. Each Python warning
    shown inside it is logged (:func:`_warnings_logged`) and, with ``show_warnings``, also shown
    as Python shows it (the API's callers see it; the command line's console prints the record)."""
    if _active is not None:
        yield _active
        return
    with _warnings_logged(show_warnings), _opened(path) as log:
        yield log


@contextmanager
def _warnings_logged(show: bool) -> Iterator[None]:
    """Inside this block every warning Python's filters let through is a ``WARNINGS`` record:
    bigdenoise's own by their message, others with their category and origin. With ``show``
    Python shows it as well and the record is for the log file only (``FILE_ONLY``)."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show_and_log(message, category, filename, lineno, file=None, line=None):
            ours = Path(filename).resolve().is_relative_to(PACKAGE)
            logging.getLogger(WARNINGS).warning(  # shown by Python: not by the console handler again
                "%s", message if ours else f"{category.__name__}: {message} ({filename}:{lineno})",
                extra=FILE_ONLY if show else None)
            if show:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show_and_log
        yield


@contextmanager
def _opened(path: str | Path | None) -> Iterator[RunLog]:
    global _active
    log, logger = RunLog(path), logging.getLogger(ROOT)
    level = logger.level
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    logger.addHandler(log._buffer)
    _active = log
    try:
        yield log
    finally:
        _active = None
        log._close()
        logger.setLevel(level)


def current() -> RunLog | None:
    """The run log open now (:func:`run_log`), or None."""
    return _active


class _Console(logging.StreamHandler):
    """The terminal's handler: always today's ``sys.stderr``, one line per record unless ``debug``."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug
        self.addFilter(lambda record: debug or getattr(record, "console", True))
        self.setFormatter(logging.Formatter("bigdenoise: %(levelname)s: %(message)s" if not debug else FORMAT))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if self.debug else " ".join(text.split("\n", 1)[0].split())

    def emit(self, record: logging.LogRecord) -> None:
        """Through ``tqdm.write``: a line printed while a progress bar runs gets its own line and
        the bar is drawn again below it."""
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's rule: a failing handler reports, never raises
            self.handleError(record)


def configure_console(debug: bool = False) -> None:
    """The command line's logging: warnings of every library on stderr, one line each (with
    ``debug``: bigdenoise's info records too, with tracebacks). Replaces an earlier call's handler."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Console)]:
        root.removeHandler(handler)
    handler = _Console(debug)
    handler.setLevel(logging.INFO if debug else logging.WARNING)
    root.addHandler(handler)
    if debug:
        logging.getLogger(ROOT).setLevel(logging.INFO)
