"""Network architectures (no training logic)."""

from bigdenoise.nets.unet import UNet, build_unet, fold_batch_norm, param_count, receptive_radius, inference_copy

__all__ = ["UNet", "build_unet", "fold_batch_norm", "param_count", "receptive_radius", "inference_copy"]
