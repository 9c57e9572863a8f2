"""bigdenoise: self-supervised denoising of terabyte microscopy volumes.

Train lazily from chunked Zarr, predict blockwise on Dask straight back into Zarr.
"""

from ._version import __version__
from .api import predict, train
from .errors import BigDenoiseError
from .package import load_model
from .volume import open_volume

__all__ = ["__version__", "open_volume", "train", "predict", "load_model", "BigDenoiseError"]
