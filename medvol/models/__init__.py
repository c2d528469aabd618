"""GAN models behind one API (:class:`GANSystem`, built by :func:`build`): the 3D HA-GAN and CRF-GAN,
and the 2D models (:mod:`medvol.models.gan2d`)."""

from medvol.models.crfgan import CRFGAN, crf_weight
from medvol.models.gan2d import DCGAN, MLPGAN, SIZES_2D, FastGAN, Pix2Pix, SPADEModel, StyleGAN2
from medvol.models.hagan import HAGAN
from medvol.models.networks import SIZES
from medvol.models.registry import MODEL_DEFAULTS, MODEL_OPTIONS, MODEL_SIZES, MODELS, build, build_from_config
from medvol.models.system import GANSystem

__all__ = ["CRFGAN", "DCGAN", "HAGAN", "MLPGAN", "GANSystem", "MODEL_DEFAULTS", "MODEL_OPTIONS", "MODEL_SIZES",
           "MODELS", "SIZES", "SIZES_2D", "build", "build_from_config", "crf_weight"]
__all__ += ["FastGAN", "Pix2Pix", "SPADEModel", "StyleGAN2"]
