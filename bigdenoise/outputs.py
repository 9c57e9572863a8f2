"""Where a command may write: one rule for every output (model, prediction, Zarr copy, noise model, demo).

1. An output never equals, contains or sits inside a protected path (an input, the model in use,
   a target or clean volume, a noise model), compared on real paths (symbolic links and ``..``
   resolved, Zarr stores taken whole, ``.zarr`` in any case) and on file identity.
2. An existing output is replaced only when asked (``overwrite``) and only when bigdenoise wrote
   it: it holds our marker file naming the same kind of output, and nothing at its top level
   that this kind does not write. Anything else is refused with a message naming what was found.
3. A replacement is built in a staging sibling (``.NAME.bigdenoise-partial``) and swapped in
   when it is complete, atomically where the filesystem can exchange two directories (Linux),
   so a crash leaves the old output or the new one, never neither. A killed replacement can be
   continued with ``resume`` or started again with ``overwrite``.

Nothing here writes before :meth:`Destination.start`, except that :func:`destination` puts back
an old output that a replacement crashed between its two renames had set aside.
"""

from __future__ import annotations

import ctypes
import fnmatch
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import OutputError
from .files import IMAGE_KINDS, MARKER, MARKER_FORMAT, atomic_write_bytes, written_kind
from .tiff import GLOB_CHARACTERS

STAGING = ".bigdenoise-partial"
SET_ASIDE = ".bigdenoise-replaced"
# the marker, atomic writes a crash left behind, and our own outputs' staging siblings (checked
# themselves when they are used)
_ALWAYS = (MARKER, ".*.tmp", f".*{STAGING}", f".*{SET_ASIDE}")


@dataclass(frozen=True)
class Kind:
    """A kind of output: its name and what it may hold.

    Attributes
    ----------
    name : in messages and in the marker, e.g. ``"model package"``.
    entries : glob patterns of the names bigdenoise writes at the output's top level.
    folders : ``(name, patterns)`` of sub-folders whose contents are checked too.
    """

    name: str
    entries: tuple[str, ...]
    folders: tuple[tuple[str, tuple[str, ...]], ...] = ()


LOG_KIND = Kind("log file", ())
MODEL = Kind("model package", ("config.json", "*.safetensors", "history.csv", "loss.png", "checkpoint",
                               "bigdenoise.log"),
             (("checkpoint", ("state.json", "*.safetensors")),))
NOISE_MODEL = Kind("noise model", ("noise_model.json", "noise_model.safetensors", "noise_model.png"))
# bigdenoise-errors.log: where failed blocks' tracebacks went before bigdenoise.log held them;
# .zgroup, .zattrs: an NGFF 0.4 image (Zarr v2); zarr.*.partial: Zarr's atomic write of zarr.json,
# left by a kill
PREDICTION = Kind(IMAGE_KINDS[0], ("zarr.json", "zarr.*.partial", ".zgroup", ".zattrs", "c", "[0-9]*",
                                 ".bigdenoise-done", "bigdenoise.log", "bigdenoise-errors.log", "preview.png"))
ZARR_COPY = Kind(IMAGE_KINDS[1], ("zarr.json", "zarr.*.partial", "c"))
DEMO = Kind("demo folder", ("bigdenoise-demo.json", "noisy.zarr", "clean.zarr", "denoised.zarr", "model",
                            "preview.png"))


@dataclass(frozen=True)
class Destination:
    """Where one run writes an output of ``kind``.

    ``path`` is where the finished output will be (absolute, symbolic links resolved); ``work``
    is where this run writes: ``path`` itself, or its staging sibling when an existing output is
    being replaced (:meth:`commit` swaps it in).
    """

    path: Path
    work: Path
    kind: Kind
    existed: bool = False  # ``work`` was there (empty) before this run

    @property
    def replacing(self) -> bool:
        return self.work != self.path

    def start(self) -> Path:
        """Create ``work`` with our marker (kept if it is there); returns ``work``."""
        try:
            self.work.mkdir(parents=True, exist_ok=True)
            if not (self.work / MARKER).is_file():
                document = {"format": MARKER_FORMAT, "kind": self.kind.name, "bigdenoise_version": __version__}
                atomic_write_bytes(self.work / MARKER, json.dumps(document).encode())
        except OSError as exc:
            raise OutputError(f"cannot write the {self.kind.name} {self.path} ({exc.strerror or exc})") from None
        return self.work

    def discard(self) -> None:
        """Remove what this run wrote, after a failure of a run that cannot be continued."""
        if self.existed:
            for entry in self.work.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def commit(self) -> None:
        """Put a finished replacement in place of the old output (nothing to do otherwise)."""
        if not self.replacing:
            return
        if not self.path.exists():
            os.rename(self.work, self.path)
        elif _exchange(self.work, self.path):
            shutil.rmtree(self.work)  # it now holds the old output
        else:
            aside = _sibling(self.path, SET_ASIDE)
            os.rename(self.path, aside)  # a crash right here is repaired by the next destination()
            os.rename(self.work, self.path)
            shutil.rmtree(aside)


def destination(path: str | Path, kind: Kind, *, protect: Mapping[str, Any] | None = None,
                overwrite: bool = False, resume: bool = False) -> Destination:
    """Check that an output of ``kind`` may be written at ``path``; nothing is written.

    Parameters
    ----------
    path : the output, as the user gave it.
    kind : what is written there.
    protect : role -> path (or None) of what the output must not overlap, e.g.
        ``{"input": "in.zarr/raw", "model": "model_dir"}``.
    overwrite : replace an existing output of ``kind`` that bigdenoise wrote.
    resume : continue an output of ``kind`` (or a killed replacement of it).

    Raises
    ------
    OutputError
        Overlap with a protected path, an existing output without ``overwrite``/``resume``, an
        existing file or folder that bigdenoise did not write, or no permission to write.
    """
    if overwrite and resume:
        raise OutputError("--overwrite and --resume contradict each other; pass one")
    final = Path(os.path.realpath(Path(path).expanduser()))
    for role, other in (protect or {}).items():
        if other is not None:
            _check_apart(final, Path(other), role, kind)
    _check_writable(final, kind)
    staging, aside = _sibling(final, STAGING), _sibling(final, SET_ASIDE)
    if aside.exists() and not final.exists():
        _check_ours(aside, kind)
        os.rename(aside, final)  # a replacement was interrupted between its two renames
    if resume and staging.exists():
        _check_ours(staging, kind)
        return Destination(final, staging, kind)
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        return Destination(final, final, kind, existed=final.exists())
    if resume:
        _check_ours(final, kind)
        return Destination(final, final, kind)
    if not overwrite:
        raise OutputError(f"{final} already exists; pass --overwrite to replace it (bigdenoise replaces only its "
                          f"own outputs) or choose another path")
    _check_ours(final, kind)
    if staging.exists():
        _check_ours(staging, kind)
        shutil.rmtree(staging)  # a replacement that was killed, and is not being resumed
    return Destination(final, staging, kind)


def check_log_file(path: str | Path, protect: Mapping[str, Any] | None = None) -> Path:
    """Check a log file the user named (``--log-file``); nothing is written. Like an output, it
    never is or sits inside a protected path (an input, the model in use), and it is a file.

    Raises
    ------
    OutputError
        Overlap with a protected path, a folder at ``path``, or no folder to hold it.
    """
    final = Path(os.path.realpath(Path(path).expanduser()))
    for role, other in (protect or {}).items():
        if other is not None:
            _check_apart(final, Path(other), role, LOG_KIND)
    if final.is_dir():
        raise OutputError(f"the log file {final} is a folder; give --log-file a file's path")
    if not final.parent.is_dir():
        raise OutputError(f"cannot write the log file {final}: the folder {final.parent} does not exist")
    _check_writable(final, LOG_KIND)
    return final


def storage_root(path: Path) -> Path:
    """The file or folder that holds the data at ``path``: a Zarr node is protected with its whole
    store (the first ``.zarr`` component in any case, else the topmost folder of Zarr nodes), a
    dataset inside a file (``scan.h5/group/data``) with that file."""
    path = Path(path).expanduser()
    while any(c in path.name for c in GLOB_CHARACTERS):  # a glob of input files: protect their folder
        path = path.parent
    path = Path(os.path.realpath(path))
    for parent in reversed([path, *path.parents]):
        if parent.name.lower().endswith(".zarr") or parent.is_file():
            return parent
    root = path
    while any((root.parent / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray")):
        root = root.parent
    return root


def _check_apart(out: Path, other: Path, role: str, kind: Kind) -> None:
    protected = storage_root(other)
    flag = "--log-file" if kind is LOG_KIND else "--out"
    if _same_or_inside(out, protected):
        raise OutputError(f"the {kind.name} {out} would be or sit inside the {role} {protected}; choose a {flag} "
                          f"outside it")
    if _same_or_inside(protected, out):
        raise OutputError(f"the {kind.name} {out} would contain the {role} {protected}; choose a {flag} "
                          f"that does not hold it")


def _same_or_inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it, by path or by the identity of ``a``'s existing ancestors
    (which also catches another spelling of the same folder on a case-insensitive filesystem)."""
    if a == b or b in a.parents:
        return True
    target = _identity(b)
    return target is not None and any(_identity(p) == target for p in (a, *a.parents))


def _identity(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_writable(final: Path, kind: Kind) -> None:
    existing = next(p for p in (final, *final.parents) if p.exists())
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the {kind.name} {final}: no permission to write into {existing}")
    if existing != final and not existing.is_dir():
        raise OutputError(f"cannot write the {kind.name} {final}: {existing} is a file, not a folder")


def _check_ours(path: Path, kind: Kind) -> None:
    """Refuse ``path`` unless it is a ``kind`` output that bigdenoise wrote and nothing else."""
    if not path.is_dir() or path.is_symlink():
        raise OutputError(f"{path} exists and is not a bigdenoise {kind.name} (it is a file); bigdenoise replaces "
                          f"only its own outputs: choose another path or remove it yourself")
    written = written_kind(path)
    if written is None:
        raise OutputError(f"{path} exists and was not written by bigdenoise (no {MARKER} marker); bigdenoise "
                          f"replaces only its own outputs: choose another path or remove it yourself")
    if written != kind.name:
        raise OutputError(f"{path} is a bigdenoise {written}, not a {kind.name}; choose another path")
    foreign = _foreign(path, kind.entries) + [f"{name}/{f}" for name, patterns in kind.folders
                                               if (path / name).is_dir() for f in _foreign(path / name, patterns)]
    if foreign:
        shown = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
        raise OutputError(f"{path} holds {shown}, which bigdenoise did not write; move it away or choose "
                          f"another path")


def _foreign(folder: Path, patterns: tuple[str, ...]) -> list[str]:
    allowed = (*patterns, *_ALWAYS)
    return [n for n in os.listdir(folder) if not any(fnmatch.fnmatchcase(n, p) for p in allowed)]


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}{suffix}")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
