"""Command line: ``bigdenoise convert|info|train|predict|pyramid|noise-model|export|demo``. Thin wrappers over the library;
the argument types and the flags several commands share are in cli_args.py."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ._version import __version__
from .cli_args import (Parser, add_input_options, add_job_options, add_log_file, add_option_flag, at_least,
                       given_options, input_kwargs, job_options, parse_duration, parse_shape)
from .errors import BigDenoiseError, ConfigError
from .runfile import add_config_flag, apply_run_file, with_run_config

log = logging.getLogger("bigdenoise.cli")  # also when run as `python -m bigdenoise.cli`


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a denoiser on a volume", description="Train a denoiser on a volume "
                       "(Zarr array path like case.zarr/noisy, OME-Zarr, TIFF) and save a model package.")
    p.add_argument("input", help="noisy volume")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--method", default="n2v", help="training method (default n2v)")
    p.add_argument("--axes", help="axes of the input, e.g. SYX, ZYX (default: from metadata)")
    add_input_options(p)
    p.add_argument("--per-channel-models", action="store_true",
                   help="an input with a C axis: train one model per channel (--channel, default all) into "
                        "OUT/channel-K; `bigdenoise predict --model OUT` gives each channel its own model")
    p.add_argument("--target", help="second volume for paired methods (n2n, care)")
    p.add_argument("--clean", metavar="UNPAIRED",
                   help="clean images of other fields of view (any shape, the input's axes): dbsn distils from "
                        "synthetic pairs made of them with its learned noise level (--option clean_weight)")
    budget = p.add_argument_group("budget (the first to run out ends training; default 2000 steps)")
    budget.add_argument("--steps", type=int)
    budget.add_argument("--epochs", type=float, help="one epoch = as many patches as tile the volume once")
    budget.add_argument("--max-time", type=parse_duration, help="wall-clock limit, e.g. 300, 5m, 1h")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--resume", action="store_true", help="continue from the model directory's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--patch", type=parse_shape, help="patch shape, e.g. 64,64 or 16,64,64")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", choices=("plateau", "cosine"),
                   help="LR schedule of every stage (default: the method's; cosine anneals to zero over the budget)")
    p.add_argument("--val-every", type=int, help="steps between validations/checkpoints")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    net = p.add_argument_group("network")
    net.add_argument("--depth", type=int)
    net.add_argument("--features", type=int)
    net.add_argument("--kernel", type=int)
    net.add_argument("--no-batch-norm", action="store_true")
    net.add_argument("--n2v2", action="store_true", help="N2V2: blur-pool U-Net without top skip, median replacement")
    n2v = p.add_argument_group("Noise2Void")
    n2v.add_argument("--masked-fraction", type=float, help="fraction of pixels masked per patch (default 64/4096)")
    n2v.add_argument("--struct-axis", type=int, help="struct-N2V: spatial axis (0-based) of correlated noise")
    n2v.add_argument("--struct-span", type=int, help="struct-N2V: pixels masked on each side along that axis")
    stack = p.add_argument_group("Noise2Stack (--method noise2stack)")
    stack.add_argument("--stack-axis", type=str.upper, choices=("Z", "T"),
                       help="axis whose neighbouring planes are the network's input channels (default Z)")
    stack.add_argument("--neighbours", type=int, help="planes on each side of the target plane (default 1)")
    stack.add_argument("--mode", choices=("self", "copy"),
                       help="self: neighbours predict the held-out plane (default); copy: the plane and its "
                            "neighbours predict the same plane of a second acquisition given with --target")
    pn2v = p.add_argument_group("Probabilistic Noise2Void (--method pn2v)")
    pn2v.add_argument("--noise-model", metavar="NM",
                      help="noise model directory made by `bigdenoise noise-model` (required for pn2v)")
    pn2v.add_argument("--samples", type=int, help="samples of the signal per pixel, K (default 64; paper 800)")
    paired = p.add_argument_group("Noise2Noise / CARE (--method n2n | care, with --target)")
    paired.add_argument("--loss", choices=("mse", "mae"), help="pixel loss (default: mse for n2n, mae for care)")
    p.add_argument("--remove-background", action="store_true",
                   help="subtract a fixed camera background (median YX plane over sampled planes) before "
                        "normalisation; prediction subtracts it too")
    p.add_argument("--foreground", metavar="auto|off|THRESHOLD",
                   help="draw patches favouring foreground (voxels above a threshold): auto turns it on when the "
                        "sampled chunks are mostly background; off (default); or a threshold in raw intensity")
    net.add_argument("--batch-norm", action="store_true",
                     help="use batch norm (the default for n2v; n2n, care and noise2stack default to none)")
    add_option_flag(p, "an option of the method (its pydantic options; the flags above are shortcuts for some)",
                "masked_fraction=0.02")
    add_log_file(p, "model directory")
    add_config_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_noise_model(sub) -> None:
    p = sub.add_parser(
        "noise-model", help="measure a noise model p(x|s) for PN2V",
        description="Measure a noise model p(x|s) (raw intensity units) from calibration pairs, repeated frames of "
                    "a static field, or by bootstrapping from a trained N2V model; writes NM/noise_model.json, "
                    "NM/noise_model.safetensors and a plot NM/noise_model.png. Use it with "
                    "`bigdenoise train --method pn2v --noise-model NM`.")
    p.add_argument("--noisy", required=True, help="noisy volume (raw values, as the data to denoise)")
    p.add_argument("--axes", help="axes of the noisy volume, e.g. SYX (default: from metadata, else the "
                   "--bootstrap model's)")
    add_input_options(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--clean", help="clean volume of the same shape: calibration pairs")
    source.add_argument("--repeats-axis", metavar="AXIS",
                        help="axis of --noisy along which frames repeat a static field (e.g. S); signal = their mean")
    source.add_argument("--bootstrap", metavar="N2V_MODEL", help="no calibration data: a trained N2V model's "
                        "prediction of --noisy is the pseudo-signal")
    p.add_argument("--out", required=True, help="noise model directory to write")
    p.add_argument("--kind", choices=("histogram", "gmm", "gaussian"), default="histogram",
                   help="histogram (PN2V paper, default), gmm (signal-dependent gaussian mixture) or gaussian "
                        "(Poisson-Gaussian)")
    p.add_argument("--bins", type=at_least(2), default=256, help="histogram bins per axis (default 256)")
    p.add_argument("--gaussians", type=at_least(1), default=3, help="gmm: gaussians (default 3)")
    p.add_argument("--degree", type=at_least(0), default=1, help="gmm: polynomial degree in the signal (default 1)")
    p.add_argument("--steps", type=at_least(1), default=1000, help="gmm: Adam steps of the fit (default 1000)")
    p.add_argument("--max-pairs", type=at_least(1), default=2_000_000, help="(signal, noisy) pairs used (default 2e6)")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing noise model directory")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="denoise a volume blockwise into Zarr",
                       description="Denoise a volume block by block on a Dask cluster into a Zarr array.")
    p.add_argument("input")
    p.add_argument("--model", required=True, help="model directory, or a bioimage.io model (.zip, or a folder with "
                   "rdf.yaml)")
    p.add_argument("--trust-model", action="store_true", help="run a bioimage.io model's TorchScript weights, "
                   "which are code running with your permissions (ONNX weights need no trust)")
    p.add_argument("--out", required=True, help="output Zarr (opens as an array of the input's shape)")
    p.add_argument("--axes", help="axes of the input (default: metadata, else the model's)")
    add_input_options(p)
    p.add_argument("--cluster", default="local",
                   help="threads | local | slurm | pbs | lsf | tcp://HOST:PORT (default local)")
    p.add_argument("--workers", type=int, help="worker processes for --cluster local")
    add_job_options(p)
    p.add_argument("--chunks", type=parse_shape, help="output chunks (default: the input's)")
    p.add_argument("--roi", metavar="Z0:Z1,Y0:Y1,X0:X1",
                   help="write only this box (one start:stop per axis of the input, S/T included or left out; "
                        "equal to the same box of a full run): try a region before the big run")
    p.add_argument("--dtype", default="float32", help="float32 (default), float16, input (input dtype, clipped), uint16...")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into the same --out")
    p.add_argument("--skip-background", type=float, metavar="THRESHOLD",
                   help="leave blocks whose input is all below THRESHOLD unwritten (they read as --background-value)")
    p.add_argument("--background-value", type=float, default=0.0, help="value of unwritten chunks (default 0)")
    p.add_argument("--tile", type=parse_shape, help="tile core size per spatial axis (default: as large as the "
                   "block allows, at most 1024 in 2D, dividing the block, with at most 2 Mi input voxels per tile)")
    p.add_argument("--overlap", type=int, default=0, help="blend overlap between tiles (voxels)")
    p.add_argument("--halo", type=int, help="context per side (default: the receptive field, exact; less needs "
                   "--inexact)")
    p.add_argument("--inexact", action="store_true",
                   help="accept a --halo below the receptive field: faster, but tiles differ from a whole-volume pass")
    p.add_argument("--batch-size", type=int,
                   help="tiles per forward pass (default: 4 on a CPU, as many as fit in a GPU's free memory)")
    p.add_argument("--block-voxels", type=int, default=4 * 2**20,
                   help="voxels per Dask task: blocks are whole output chunks grown to about this size")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile on each worker: seconds of compilation per worker "
                   "process; on a CPU the default eager path is faster (benchmarks/RESULTS.md); meant for GPUs "
                   "(a CPU needs a C++ compiler, g++ or $CXX)")
    add_option_flag(p, "override a prediction-time option of the model's method for this prediction (one that does "
                "not change the networks)", "prediction=prior_mean (pn2v)")
    p.add_argument("--pyramid", nargs="?", const=True, default=False, type=int, metavar="N",
                   help="OME-Zarr output: add 2x-mean resolution levels until the smallest fits 512 px in-plane, or "
                   "N levels in all")
    p.add_argument("--ngff", choices=("0.4", "0.5"), help="OME-Zarr version of the output (default 0.5)")
    add_log_file(p, "output")
    add_config_flag(p)
    p.add_argument("--quiet", action="store_true")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a model as a bioimage.io model package (ONNX + TorchScript .zip)",
                       description="Write MODEL as a bioimage.io (spec 0.5) model zip: ONNX and TorchScript weights "
                       "of its tile prediction with the normalisation inside, halo, test tensors, cover, citation.")
    p.add_argument("model", help="model directory (`bigdenoise train --out`)")
    p.add_argument("--bioimageio", required=True, metavar="OUT.zip", help="the zip to write (never replaced)")
    p.add_argument("--sample", metavar="IN", help="volume to cut the test tile from (default: the training input)")
    p.add_argument("--axes", help="axes of --sample")
    p.add_argument("--name", help="model name (letters, digits, spaces, _+-())")
    p.add_argument("--author", action="append", default=[], help="author name; repeatable (default: your user name)")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX license id (default CC-BY-4.0)")
    p.add_argument("--description", help="one or two sentences")
    add_option_flag(p, "a prediction-time option of the model's method for the exported graph", "prediction=mu (dbsn)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bigdenoise", description="Self-supervised denoising of large microscopy volumes.")
    parser.add_argument("--version", action="version", version=f"bigdenoise {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of any error (for bug reports)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="copy a TIFF/Zarr/OME-Zarr volume into a chunked Zarr v3 array")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--axes")
    add_input_options(p)
    p.add_argument("--chunks", type=parse_shape)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("info", help="shape, dtype, chunks, axes, size and a sampled intensity summary")
    p.add_argument("input")
    p.add_argument("--axes")
    add_input_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_train(sub)
    _add_predict(sub)
    _add_noise_model(sub)
    _add_export(sub)
    p = sub.add_parser("pyramid", help="add resolution levels to an OME-Zarr prediction bigdenoise wrote")
    p.add_argument("output")
    p.add_argument("--levels", type=int, metavar="N", help="levels in all (default: until 512 px in-plane)")
    p.add_argument("--cluster", default="local", help="threads | local | tcp://HOST:PORT (default local)")
    p.add_argument("--workers", type=int, help="worker processes for --cluster local")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("demo", help="make a noisy volume, train N2V, denoise it on a LocalCluster, report PSNR")
    p.add_argument("--out", default="demo-output", help="directory for the demo's files (default ./demo-output)")
    p.add_argument("--max-time", type=parse_duration, default=180.0, help="training time (default 3m)")
    p.add_argument("--data", help="folder with the shared data (default: ../shared/data if present)")
    p.add_argument("--quiet", action="store_true")
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the Python traceback of any error (for bug reports)")
    return parser


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


def run(a: argparse.Namespace) -> int:
    from . import api

    if a.command == "convert":
        from .convert import convert

        vol = convert(a.input, a.output, axes=a.axes, chunks=a.chunks, overwrite=a.overwrite, progress=not a.quiet,
                      **input_kwargs(a))
        stored = vol.layout or vol  # with a C axis: the stored axes and shape
        print(f"wrote {a.output}: shape {stored.shape}, axes {stored.axes}, chunks {vol.chunks}, dtype {vol.dtype}")
    elif a.command == "info":
        from .convert import describe, format_description
        from .volume import open_volume

        d = describe(open_volume(a.input, a.axes, **input_kwargs(a)))
        print(json.dumps(d, indent=2, default=str) if a.json else format_description(d))
    elif a.command == "train":
        model = api.train(a.input, a.out, method=a.method, axes=a.axes, target=a.target, clean=a.clean,
                          resume=a.resume,
                          overwrite=a.overwrite, progress=not a.quiet, per_channel_models=a.per_channel_models,
                          **input_kwargs(a), **with_run_config(a, _train_kwargs(a)))
        if a.per_channel_models:
            print(f"trained one {a.method} model per channel ({', '.join(map(str, model.channels))}); written to "
                  f"{a.out}")
            return 0
        info = model.info
        print(f"trained {a.method} for {info['steps']} steps ({info['train_seconds']} s on {info['device']}); "
              f"best validation loss {info['best_val_loss']:.4g}; model written to {a.out}")
    elif a.command == "predict" and a.print_job_script:
        from .clusters import JOBQUEUE, jobqueue_cluster

        if a.cluster not in JOBQUEUE:
            raise ConfigError(f"--print-job-script needs --cluster slurm, pbs or lsf, not {a.cluster}")
        with jobqueue_cluster(a.cluster, job_options(a)) as cluster:
            print(cluster.job_script())
    elif a.command == "predict":
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
    elif a.command == "pyramid":
        from .pyramid_run import add_pyramid

        s = add_pyramid(a.output, levels=a.levels, cluster=a.cluster, workers=a.workers, progress=not a.quiet)
        print(f"{s['output']} has {s['levels']} levels")
    elif a.command == "noise-model":
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
    elif a.command == "export":
        from .bioimageio_export import export_bioimageio

        path = export_bioimageio(a.model, a.bioimageio, sample=a.sample, axes=a.axes, name=a.name, authors=a.author,
                                 license=a.license, description=a.description, options=given_options(a))
        print(f"wrote bioimage.io model {path}")
    elif a.command == "demo":
        from .demo import run_demo

        run_demo(a.out, max_time=a.max_time, data=a.data, progress=not a.quiet)
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
    version first, the error that ends a failed run last."""
    if a.command not in ("train", "predict") or getattr(a, "print_job_script", False):
        yield
        return
    from .logs import FILE_ONLY, run_log

    with run_log(a.log_file):
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
