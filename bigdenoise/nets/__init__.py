"""Network architectures (no training logic)."""

from bigdenoise.nets.ar_decoder import ARDecoder, mixture_log_prob
from bigdenoise.nets.blindspot import BlindSpotNet, build_blindspot
from bigdenoise.nets.lvae import LadderVAE, SignalDecoder, gaussian_kl
from bigdenoise.nets.unet import UNet, build_unet, param_count, receptive_radius
from bigdenoise.nets.unet_inference import fold_batch_norm, inference_copy

__all__ = ["ARDecoder", "mixture_log_prob", "LadderVAE", "SignalDecoder", "gaussian_kl", "BlindSpotNet",
           "build_blindspot", "UNet", "build_unet", "fold_batch_norm", "param_count", "receptive_radius",
           "inference_copy"]
