"""Network architectures (no training logic)."""

from bigdenoise.nets.blindspot import BlindSpotNet, build_blindspot
from bigdenoise.nets.unet import UNet, build_unet, fold_batch_norm, param_count, receptive_radius, inference_copy

__all__ = ["BlindSpotNet", "build_blindspot", "UNet", "build_unet", "fold_batch_norm", "param_count", "receptive_radius",
           "inference_copy"]
