"""2D GANs trained on slices, through the same registry, trainer and checkpoints as the 3D models.

``dcgan`` (the DCGAN family: BCE, LSGAN, WGAN, WGAN-GP, hinge, with the empirical study's options)
and ``mlpgan`` (the liver-tumour thesis's fully connected GAN); the mask-conditioned ``spade`` and
``pix2pix`` (:mod:`medvol.models.gan2d.conditional`). See docs/models2d.md.
"""

from medvol.models.gan2d.dcgan import DCGAN, DCGAN_OPTIONS
from medvol.models.gan2d.mlpgan import MLPGAN, MLPGAN_OPTIONS
from medvol.models.gan2d.pix2pix import PIX2PIX_OPTIONS, Pix2Pix
from medvol.models.gan2d.spade import SPADE_OPTIONS, SPADEModel
from medvol.models.gan2d.system import SIZES_2D, GANSystem2D

__all__ = ["DCGAN", "DCGAN_OPTIONS", "MLPGAN", "MLPGAN_OPTIONS", "SIZES_2D", "GANSystem2D"]
__all__ += ["PIX2PIX_OPTIONS", "SPADE_OPTIONS", "Pix2Pix", "SPADEModel"]
