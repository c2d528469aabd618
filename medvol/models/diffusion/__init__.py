"""Latent diffusion from MONAI's generative networks, 3D (``ldm``) and 2D (``ldm2d``); docs/diffusion.md."""

from medvol.models.diffusion.ldm import LDM_SIZES_2D, LDM_SIZES_3D, LatentDiffusion, LatentDiffusion2D
from medvol.models.diffusion.options import LDMOptions

__all__ = ["LDM_SIZES_2D", "LDM_SIZES_3D", "LDMOptions", "LatentDiffusion", "LatentDiffusion2D"]
