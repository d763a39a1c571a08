"""The PyTorch reference of FAR and MAR: the ground truth every other stage is measured against."""
from .backbone import Backbone
from .heads import SimpleMLPAdaLN
from .vae import AutoencoderKL, VAEDecoder

__all__ = ["Backbone", "SimpleMLPAdaLN", "VAEDecoder", "AutoencoderKL"]
