"""2D GANs trained on slices, through the same registry, trainer and checkpoints as the 3D models.

``dcgan`` (the DCGAN family: BCE, LSGAN, WGAN, WGAN-GP, hinge, with the empirical study's options)
and ``mlpgan`` (the liver-tumour thesis's fully connected GAN); ``stylegan2`` (Karras et al. 2020)
with lazy R1 / path-length regularisation and G_ema; ``fastgan`` (Liu et al., 2021); the
mask-conditioned ``spade`` and ``pix2pix`` (:mod:`medvol.models.gan2d.conditional`); ``cyclegan``,
unpaired translation between two image sets (:mod:`medvol.models.gan2d.cyclegan`).
See docs/models2d.md.
"""

from medvol.models.gan2d.cyclegan import CycleGAN, CycleGANOptions
from medvol.models.gan2d.dcgan import DCGAN, DCGANOptions
from medvol.models.gan2d.fastgan import FastGAN, FastGANOptions
from medvol.models.gan2d.mlpgan import MLPGAN, MLPGANOptions
from medvol.models.gan2d.pix2pix import Pix2Pix, Pix2PixOptions
from medvol.models.gan2d.spade import SPADEModel, SPADEOptions
from medvol.models.gan2d.stylegan2 import StyleGAN2, StyleGAN2Options
from medvol.models.gan2d.system import SIZES_2D, GANSystem2D

__all__ = ["CycleGAN", "CycleGANOptions", "DCGAN", "DCGANOptions", "FastGAN", "FastGANOptions", "GANSystem2D", "MLPGAN", "MLPGANOptions", "Pix2Pix",
           "Pix2PixOptions", "SIZES_2D", "SPADEModel", "SPADEOptions", "StyleGAN2", "StyleGAN2Options"]
