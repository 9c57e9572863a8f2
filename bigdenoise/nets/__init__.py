"""Network architectures (no training logic)."""

from bigdenoise.nets.unet import UNet, build_unet, fold_batch_norm, param_count, receptive_radius, with_coarse_decoder

__all__ = ["UNet", "build_unet", "fold_batch_norm", "param_count", "receptive_radius", "with_coarse_decoder"]
