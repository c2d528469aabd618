"""2D GANs trained on slices, through the same registry, trainer and checkpoints as the 3D models.

``dcgan`` (the DCGAN family: BCE, LSGAN, WGAN, WGAN-GP, hinge, with the empirical study's options)
and ``mlpgan`` (the liver-tumour thesis's fully connected GAN); ``stylegan2`` (Karras et al. 2020)
with lazy R1 / path-length regularisation and G_ema; ``fastgan`` (Liu et al., 2021).
See docs/models2d.md.
"""

from medvol.models.gan2d.dcgan import DCGAN, DCGAN_OPTIONS
from medvol.models.gan2d.fastgan import FASTGAN_OPTIONS, FastGAN
from medvol.models.gan2d.mlpgan import MLPGAN, MLPGAN_OPTIONS
from medvol.models.gan2d.stylegan2 import STYLEGAN2_OPTIONS, StyleGAN2
from medvol.models.gan2d.system import SIZES_2D, GANSystem2D

__all__ = ["DCGAN", "DCGAN_OPTIONS", "MLPGAN", "MLPGAN_OPTIONS", "SIZES_2D", "GANSystem2D"]
__all__ += ["STYLEGAN2_OPTIONS", "StyleGAN2"]
__all__ += ["FASTGAN_OPTIONS", "FastGAN"]
