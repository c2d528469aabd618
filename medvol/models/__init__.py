"""Generative models behind one contract (:class:`GenerativeSystem`, built by :func:`build` from the
one registry table :data:`REGISTRY`): the 3D HA-GAN and CRF-GAN, and the 2D models
(:mod:`medvol.models.gan2d`)."""

from medvol.models.contract import GenerativeSystem
from medvol.models.crfgan import CRFGAN, crf_weight
from medvol.models.gan import GANBase
from medvol.models.gan2d import DCGAN, MLPGAN, SIZES_2D, FastGAN, Pix2Pix, SPADEModel, StyleGAN2
from medvol.models.hagan import HAGAN
from medvol.models.networks import SIZES
from medvol.models.registry import (MODEL_DEFAULTS, MODEL_OPTIONS, MODEL_SIZES, MODELS, REGISTRY, ModelSpec, build,
                                    build_from_config, spec)
from medvol.models.system import GANSystem

__all__ = ["CRFGAN", "DCGAN", "HAGAN", "MLPGAN", "GANBase", "GANSystem", "GenerativeSystem", "MODEL_DEFAULTS",
           "MODEL_OPTIONS", "MODEL_SIZES", "MODELS", "REGISTRY", "SIZES", "SIZES_2D", "ModelSpec", "build",
           "build_from_config", "crf_weight", "spec"]
__all__ += ["FastGAN", "Pix2Pix", "SPADEModel", "StyleGAN2"]
