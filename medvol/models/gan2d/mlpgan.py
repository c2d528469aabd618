"""``mlpgan``: the liver-tumour thesis's fully connected GAN, exactly (docs/models2d.md).

G: Linear 100 -> 256 -> 512 -> 1024 (ReLU) -> 4096 (Tanh) as 1 x 64 x 64; D: 4096 -> 512 -> 256
(LeakyReLU 0.2) -> 1 (sigmoid); BCE; Adam lr 2e-4 (betas: the DCGAN (0.5, 0.999), which the thesis
does not state); batch 64 (configs/mlpgan_64.yaml); no normalisation, PyTorch's default init.
"""

from __future__ import annotations

from dataclasses import dataclass

from medvol.models.gan2d.nets import MLPDiscriminator, MLPGenerator
from medvol.models.gan2d.system import GANSystem2D
from medvol.models.options import check_ranges



@dataclass
class MLPGANOptions:
    """Options of ``mlpgan`` (``model.options``).

    Attributes:
        channels: image channels (2 with data.masks' channel).
    """

    channels: int = 1

    def __post_init__(self) -> None:
        check_ranges(self, positive=("channels",))


class MLPGAN(GANSystem2D):
    """Fully connected G and D; ``base_width`` c scales the hidden widths (G c/2c/4c, D 2c/c).

    The published model is ``build("mlpgan", 64)``: c = 256, latent 100, one channel
    (G 4,881,152 and D 2,229,249 parameters). Other sizes and widths are medvol extensions.

    Example:
        >>> from medvol.models import build
        >>> build("mlpgan", 64).param_counts()
        {'G': 4881152, 'D': 2229249, 'total': 7110401}
    """

    name = "mlpgan"

    def __init__(self, size: int, base_width: int = 256, latent_dim: int = 100, num_classes: int = 0, *,
                 channels: int = 1):
        super().__init__(size, base_width, latent_dim, num_classes, channels)
        self.G = MLPGenerator(size, latent_dim, base_width, channels)
        self.D = MLPDiscriminator(size, base_width, channels)

    def options(self) -> dict[str, object]:
        return {"channels": self.channels}
