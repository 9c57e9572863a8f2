"""Exceptions a user can cause. The CLI prints them without a traceback and exits non-zero."""

from __future__ import annotations


class BigDenoiseError(Exception):
    """Base class of every error caused by user input; the message says what is wrong and how to fix it."""


class InputError(BigDenoiseError):
    """The input data or a path is unusable (missing, wrong axes, NaN, too small...)."""


class ConfigError(BigDenoiseError):
    """A training or prediction option is invalid or inconsistent with the data or model."""


class ModelError(BigDenoiseError):
    """A model package is missing, corrupt, of an unknown version or does not fit the data."""


class OutputError(BigDenoiseError):
    """The output location is unusable (exists without --overwrite, not writable...)."""
