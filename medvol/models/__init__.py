"""3D GAN models: HA-GAN and CRF-GAN behind one API (:class:`GANSystem`, built by :func:`build`)."""

from medvol.models.crfgan import CRFGAN, crf_weight
from medvol.models.hagan import HAGAN
from medvol.models.networks import SIZES
from medvol.models.registry import MODELS, build
from medvol.models.system import GANSystem

__all__ = ["CRFGAN", "HAGAN", "GANSystem", "MODELS", "SIZES", "build", "crf_weight"]
