"""CARE (Weigert et al., Nature Methods 2018): supervised restoration from a clean target.

Training: the U-Net maps the noisy volume to a clean acquisition of the same scene
(``--target``, e.g. a high-exposure stack), read at the same box. The clean target may have
another intensity scale than the input, so each is normalised with its *own* statistics; the
package stores the target's statistics (``output_normalization`` in ``config.json``) and
prediction maps the network's output back with them, giving intensities on the clean data's
scale. Loss: MAE by default (CSBDeep's default), or MSE. No batch normalisation by default
(CSBDeep's U-Net has none).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from . import Method, Stage
from .n2n import build, pixel_loss, predict, prepare


class CAREOptions(BaseModel):
    """CARE options: the pixel loss."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: Literal["mae", "mse"] = "mae"


def loss(nets, batch, options):
    return pixel_loss(nets["unet"](batch["input"]), batch["target"], options.loss)


METHOD = Method(
    name="care",
    options=CAREOptions,
    inputs=("input", "target"),
    build=build,
    prepare=prepare,
    stages=lambda options: (Stage("care", ("unet",), loss),),
    predict=predict,
    receptive_radius=lambda nets, options: nets["unet"].receptive_radius,
    factor=lambda nets, options: nets["unet"].factor,
    net_defaults={"batch_norm": False},
    target_normalization="own",
)
