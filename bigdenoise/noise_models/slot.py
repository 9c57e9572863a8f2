"""A noise model inside a model package (:class:`NoiseModelSlot`) and the check that data fit it."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from .base import NoiseModel, _buffer, _pair
from .gaussian import GaussianNoiseModel
from .kinds import KINDS


class NoiseModelSlot(nn.Module):
    """A noise model as one of a method's networks (PN2V's ``nets["noise_model"]``).

    It holds the noise model (raw units) as a child module named by its kind
    (``histogram``, ``gmm`` or ``gaussian``) and ``norm`` (2,) = (mean, std), the engine's
    normalisation of the training data, so that :meth:`log_likelihood` takes values in the
    network's normalised units: ``raw = normalised * std + mean``. Its tensors travel in the
    model package's ``weights.safetensors`` as ``noise_model.norm`` and
    ``noise_model.<kind>.<buffer>``; loading rebuilds the child of the kind and shapes those
    tensors have, so a package loads strictly whatever noise model it was trained with.
    No stage optimises it (it has no parameters).
    """

    def __init__(self, model: NoiseModel | None = None, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("norm", _buffer((mean, std)))
        self._kind = ""
        self.set_model(model if model is not None else GaussianNoiseModel())

    @property
    def model(self) -> NoiseModel:
        return getattr(self, self._kind)

    def set_model(self, model: NoiseModel, mean: float | None = None, std: float | None = None) -> None:
        """Hold ``model`` (moved to this slot's device); optionally set the normalisation."""
        if self._kind:
            delattr(self, self._kind)
        self._kind = model.kind
        self.add_module(model.kind, model.to(self.norm.device))
        if mean is not None or std is not None:
            old_mean, old_std = _pair(self.norm)
            self.norm.copy_(_buffer((old_mean if mean is None else mean, old_std if std is None else std)))

    def to_raw(self, v: torch.Tensor) -> torch.Tensor:
        return v.float() * self.norm[1] + self.norm[0]

    def log_likelihood(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """ln p(x|s) for normalised ``x`` (observed) and ``s`` (signal samples), broadcast."""
        return self.model.log_likelihood(self.to_raw(x), self.to_raw(s))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        names: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state_dict.items():
            if key.startswith(prefix) and "." in key[len(prefix):]:
                kind, name = key[len(prefix):].split(".", 1)
                names.setdefault(kind, {})[name] = value
        kinds = [k for k in names if k in KINDS]
        if len(kinds) == 1:
            try:
                self.set_model(KINDS[kinds[0]].from_tensors({k: v.detach().cpu() for k, v in names[kinds[0]].items()}))
            except (ModelError, ValueError) as exc:
                error_msgs.append(f"noise model: {exc}")
        elif len(kinds) > 1:
            error_msgs.append(f"noise model: tensors of several kinds {kinds}; expected one")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def check_fits_data(model: NoiseModel, p_low: float, p_high: float, what: str, tolerance: float = 0.25,
                    min_coverage: float = 0.1) -> None:
    """ConfigError unless intensities ``p_low..p_high`` (raw) lie within the noise model's
    noisy-value range widened by ``tolerance`` of its width on each side, and the model's
    signal range spans at least ``min_coverage`` of ``p_low..p_high``."""
    lo, hi = _pair(model.x_range)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return
    s_lo, s_hi = _pair(model.signal_range)
    if s_hi - s_lo < min_coverage * (p_high - p_low):
        raise ConfigError(
            f"the {model.kind} noise model's signal range {s_lo:.6g}..{s_hi:.6g} covers almost none of {what}'s "
            f"intensities {p_low:.6g}..{p_high:.6g}: its calibration signal was nearly constant (a bootstrap from "
            f"an N2V model trained too briefly?). Measure it again from a signal that spans the data's intensities")
    slack = tolerance * (hi - lo)
    if p_low < lo - slack or p_high > hi + slack:
        raise ConfigError(
            f"{what} has raw intensities {p_low:.6g}..{p_high:.6g} (0.1-99.9 percentiles) but the {model.kind} "
            f"noise model was measured on values {lo:.6g}..{hi:.6g}: it describes another intensity range (another "
            f"camera, gain or offset, or data scaled or normalised differently). Measure a noise model on data in "
            f"the same raw units: `bigdenoise noise-model --noisy IN --clean C|--repeats-axis S|--bootstrap "
            f"N2V_MODEL --out NM`"
        )
