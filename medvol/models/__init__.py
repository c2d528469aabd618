"""3D GAN models: HA-GAN and CRF-GAN behind one API (:class:`GANSystem`, built by :func:`build`)."""

from medvol.models.crfgan import CRFGAN, crf_weight
from medvol.models.hagan import HAGAN
from medvol.models.networks import SIZES
from medvol.models.registry import MODEL_OPTIONS, MODELS, build, build_from_config
from medvol.models.system import GANSystem

__all__ = ["CRFGAN", "HAGAN", "GANSystem", "MODEL_OPTIONS", "MODELS", "SIZES", "build", "build_from_config",
           "crf_weight"]
