"""Command line: ``bigdenoise convert|info|train|predict|pyramid|noise-model|export|demo``. Thin wrappers over the library;
the parser is in cli_parser.py, the argument types and the flags several commands share in cli_args.py."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ._version import __version__
from .cli_args import Parser, given_options, input_kwargs, job_options
from .cli_parser import build_parser
from .errors import BigDenoiseError, ConfigError
from .runfile import apply_run_file, with_run_config

log = logging.getLogger("bigdenoise.cli")  # also when run as `python -m bigdenoise.cli`


def _train_kwargs(a: argparse.Namespace) -> dict:
    kw = {k: getattr(a, k) for k in ("steps", "epochs", "max_time", "seed", "device", "patch", "batch_size", "lr",
                                     "schedule", "val_every", "num_workers", "foreground") if getattr(a, k) is not None}
    if a.remove_background:
        kw["remove_background"] = True
    net = {k: getattr(a, k) for k in ("depth", "features", "kernel") if getattr(a, k) is not None}
    if a.no_batch_norm and a.batch_norm:
        raise ConfigError("--batch-norm and --no-batch-norm contradict each other; pass one")
    if a.no_batch_norm or a.batch_norm:
        net["batch_norm"] = bool(a.batch_norm)
    options = {}
    if a.n2v2:
        net["n2v2"] = True
        options["replacement"] = "median"
    for k in ("masked_fraction", "struct_axis", "struct_span", "stack_axis", "neighbours", "mode", "loss",
              "noise_model", "samples"):
        if getattr(a, k) is not None:
            options[k] = getattr(a, k)
    given = given_options(a)
    if given:
        from .methods import get_method, parse_options

        parsed = parse_options(get_method(a.method), given, base=options)
        for k, v in parsed.items():
            if k in options and options[k] != v:
                flag = "--n2v2" if k == "replacement" else "--" + k.replace("_", "-")
                raise ConfigError(f"--option {k}={given[k]} contradicts {flag} ({options[k]!r}); give it once")
        options.update(parsed)
    if net:
        kw["net"] = net
    if options:
        kw["options"] = options
    return kw


def _convert(a: argparse.Namespace) -> None:
    from .convert import convert

    vol = convert(a.input, a.output, axes=a.axes, chunks=a.chunks, overwrite=a.overwrite, progress=not a.quiet,
                  **input_kwargs(a))
    stored = vol.layout or vol  # with a C axis: the stored axes and shape
    print(f"wrote {a.output}: shape {stored.shape}, axes {stored.axes}, chunks {vol.chunks}, dtype {vol.dtype}")


def _info(a: argparse.Namespace) -> None:
    from .convert import describe, format_description
    from .files import written_kind
    from .outputs import MODEL
    from .package import describe_model, format_model_description
    from .volume import open_volume

    if written_kind(Path(a.input)) == MODEL.name:
        d, text = describe_model(a.input), format_model_description
    else:
        d, text = describe(open_volume(a.input, a.axes, **input_kwargs(a))), format_description
    print(json.dumps(d, indent=2, default=str) if a.json else text(d))


def _train(a: argparse.Namespace) -> None:
    from . import api

    model = api.train(a.input, a.out, method=a.method, axes=a.axes, target=a.target, clean=a.clean, resume=a.resume,
                      overwrite=a.overwrite, progress=not a.quiet, per_channel_models=a.per_channel_models,
                      **input_kwargs(a), **with_run_config(a, _train_kwargs(a)))
    if a.per_channel_models:
        print(f"trained one {a.method} model per channel ({', '.join(map(str, model.channels))}); written to {a.out}")
        return
    info = model.info
    print(f"trained {a.method} for {info['steps']} steps ({info['train_seconds']} s on {info['device']}); "
          f"best validation loss {info['best_val_loss']:.4g}; model written to {a.out}")


def _predict(a: argparse.Namespace) -> None:
    from . import api

    if a.print_job_script:
        from .clusters import JOBQUEUE, jobqueue_cluster

        if a.cluster not in JOBQUEUE:
            raise ConfigError(f"--print-job-script needs --cluster slurm, pbs or lsf, not {a.cluster}")
        with jobqueue_cluster(a.cluster, job_options(a)) as cluster:
            print(cluster.job_script())
        return
    s = api.predict(a.input, a.model, a.out, axes=a.axes, cluster=a.cluster, workers=a.workers, chunks=a.chunks,
                    dtype=a.dtype, overwrite=a.overwrite, resume=a.resume, tile=a.tile, overlap=a.overlap,
                    halo=a.halo, inexact=a.inexact, batch_size=a.batch_size, precision=a.precision, device=a.device,
                    skip_background=a.skip_background, background_value=a.background_value,
                    block_voxels=a.block_voxels, jobs=job_options(a), compiled=a.compile,
                    options=given_options(a), progress=not a.quiet, roi=a.roi, pyramid=a.pyramid,
                    ngff=a.ngff, trust_model=a.trust_model, **input_kwargs(a))
    extra = f"; skipped {s['skipped']} blocks already done" if s["skipped"] else ""
    if s["background_blocks"]:
        extra += f"; {s['background_blocks']} background blocks left unwritten"
    if s.get("levels", 1) > 1:
        extra += f"; {s['levels']} resolution levels"
    print(f"denoised {s['voxels']:,} voxels in {s['blocks']} blocks in {s['seconds']:.1f} s "
          f"({s['voxels_per_s'] / 1e6:.2f} Mvox/s) into {s['output']}{extra}")


def _pyramid(a: argparse.Namespace) -> None:
    from .pyramid_run import add_pyramid

    s = add_pyramid(a.output, levels=a.levels, cluster=a.cluster, workers=a.workers, progress=not a.quiet)
    print(f"{s['output']} has {s['levels']} levels")


def _noise_model(a: argparse.Namespace) -> None:
    from .calibration import make_noise_model, save_noise_model
    from .outputs import NOISE_MODEL, destination

    protect = {"noisy volume": a.noisy, "clean volume": a.clean, "bootstrap model": a.bootstrap}
    destination(a.out, NOISE_MODEL, protect=protect, overwrite=a.overwrite)  # refused before the work
    nm, info = make_noise_model(a.noisy, clean=a.clean, repeats_axis=a.repeats_axis, bootstrap=a.bootstrap,
                                axes=a.axes, kind=a.kind, bins=a.bins, gaussians=a.gaussians, degree=a.degree,
                                steps=a.steps, max_pairs=a.max_pairs, seed=a.seed, **input_kwargs(a))
    save_noise_model(nm, a.out, info=info, overwrite=a.overwrite, protect=protect)
    h = nm.header()
    print(f"wrote {a.kind} noise model to {a.out} from {info['pairs']:,} pairs ({info['signal_from']}): signal "
          f"{h['signal_range'][0]:.6g}..{h['signal_range'][1]:.6g}, noisy {h['x_range'][0]:.6g}.."
          f"{h['x_range'][1]:.6g}; plot {a.out}/noise_model.png")


def _export(a: argparse.Namespace) -> None:
    from .bioimageio_export import export_bioimageio

    path = export_bioimageio(a.model, a.bioimageio, sample=a.sample, axes=a.axes, name=a.name, authors=a.author,
                             license=a.license, description=a.description, options=given_options(a))
    print(f"wrote bioimage.io model {path}")


def _demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(a.out, max_time=a.max_time, data=a.data, progress=not a.quiet)


COMMANDS = {"convert": _convert, "info": _info, "train": _train, "predict": _predict, "pyramid": _pyramid,
            "noise-model": _noise_model, "export": _export, "demo": _demo}


def run(a: argparse.Namespace) -> int:
    """Run the parsed command ``a``; 0 when it succeeded (errors are raised)."""
    COMMANDS[a.command](a)
    return 0


def _options_help(argv: list[str]) -> int | None:
    """``bigdenoise train --method M --option help`` / ``bigdenoise predict --model D --option help``
    / ``bigdenoise export D --option help``: print the method's options (train) or the model's
    prediction-time options (predict, export) and return 0, without the other required
    arguments; None when no such help is asked for."""
    words = [w for w in argv if not w.startswith("-")]
    command = words[0] if words else None
    if command not in ("train", "predict", "export"):
        return None
    rest = argv[argv.index(command) + 1:]
    if not any(w == "--option=help" or (w == "help" and i and rest[i - 1] == "--option") for i, w in enumerate(rest)):
        return None
    p = Parser(prog=f"bigdenoise {command}", add_help=False)
    if command == "train":
        p.add_argument("--method", default="n2v")
    elif command == "predict":
        p.add_argument("--model", required=True)
    else:
        p.add_argument("model")
    a, _ = p.parse_known_args(rest)
    from .methods import describe_options, get_method

    try:
        if command == "train":
            method = get_method(a.method)
            print(f"options of method {method.name} (bigdenoise train --method {method.name} --option KEY=VALUE):\n"
                  f"{describe_options(method)}")
        else:
            from .channel_models import read_channel_models
            from .package import load_model

            models = read_channel_models(a.model)  # a folder of per-channel models: their one method
            method = (models.first() if models else load_model(a.model)).method
            keys = method.predict_options
            print(f"prediction-time options of method {method.name} (bigdenoise {command} --option KEY=VALUE):\n"
                  f"{describe_options(method, keys)}" if keys else
                  f"method {method.name} has no prediction-time options (`bigdenoise {command} --option`)")
    except BigDenoiseError as exc:
        print(f"bigdenoise {command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


@contextmanager
def _run_log(a: argparse.Namespace, argv: list[str]) -> Iterator[None]:
    """The log file of a ``train`` or ``predict`` run (``logs.run_log``): the command line and
    version first, the error that ends a failed run last. Python warnings reach the console as
    the log's one-line records, not as Python's file, line and source."""
    if a.command not in ("train", "predict") or getattr(a, "print_job_script", False):
        yield
        return
    from .logs import FILE_ONLY, run_log

    with run_log(a.log_file, show_warnings=False):
        log.info("bigdenoise %s: bigdenoise %s", __version__, shlex.join(argv))
        try:
            yield
        except KeyboardInterrupt:
            log.error("interrupted", extra=FILE_ONLY)
            raise
        except Exception as exc:
            log.error("error: %s", _one_line(exc), extra=FILE_ONLY,
                      exc_info=None if isinstance(exc, BigDenoiseError) else exc)
            raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bigdenoise`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    status = _options_help(argv)
    if status is not None:
        return status
    parser = build_parser()
    try:
        apply_run_file(parser, argv)  # a --config file's values become the flags' defaults
    except BigDenoiseError as exc:
        print(f"bigdenoise: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    from .logs import configure_console

    configure_console(args.debug)
    try:
        with _run_log(args, argv):
            return run(args)
    except KeyboardInterrupt:
        print(f"bigdenoise {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if args.debug:
            traceback.print_exc()
        print(f"bigdenoise {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: Exception) -> str:
    """What went wrong, in one line: the message of an error the user can cause or the system
    reported (a file, a permission, a full disk), else a bug with a pointer to ``--debug``."""
    if isinstance(exc, BigDenoiseError):
        text = str(exc)
    elif isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"{exc.strerror or exc}{where}"
    else:
        text = (f"unexpected {type(exc).__name__}: {exc} -- this is a bug in bigdenoise; rerun with --debug "
                f"and report the traceback")
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
