"""The command line's parser: every command with its flags and help texts (argparse only, no
work). The argument types and the flag groups several commands share are in cli_args.py; what each
command does is in cli.py."""

from __future__ import annotations

import argparse

from ._version import __version__
from .cli_args import (Parser, add_input_options, add_job_options, add_log_file, add_option_flag, at_least,
                       parse_duration, parse_shape)
from .runfile import add_config_flag


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a denoiser on a volume", description="Train a denoiser on a volume "
                       "(Zarr array path like case.zarr/noisy, OME-Zarr, TIFF, HDF5 dataset like scan.h5/data, "
                       ".npy, PNG, a folder of planes) and save a model package.")
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
                   help="draw patches favouring foreground (voxels above a threshold): auto (default) turns it on "
                        "when the sampled chunks are mostly background (cosdd: also at a clipped level); off; or a "
                        "threshold in raw intensity")
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
    p.add_argument("--cluster", default="auto",
                   help="auto | threads | local | slurm | pbs | lsf | tcp://HOST:PORT (default auto: in this process "
                   "when the volume is one block, else local worker processes)")
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
    p.add_argument("--axes", help="axes of --sample (default: metadata, else the model's)")
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
    p = sub.add_parser("info", help="shape, dtype, chunks, axes, size and a sampled intensity summary; "
                                   "of a model: its method, training, data and normalisation")
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
