"""The 2D networks: DCGAN's convolutional G and D (with the empirical study's options) and the
liver-tumour thesis's fully connected G and D.

Shapes: G maps ``z[B, latent]`` to ``x[B, C, S, S]`` in [-1, 1]; D maps ``x`` to
``(logit[B], features[B, F])`` (the features of its last hidden layer, for feature matching).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

ACTIVATIONS = ("relu", "leakyrelu", "elu", "selu")
NORMS = ("batch", "instance", "none")
INITS = ("normal", "xavier", "xavier_uniform", "kaiming", "default")
#: DCGAN's widths double towards the 4x4 end up to this multiple of the base width.
MAX_MULTIPLE = 8


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.2), "elu": nn.ELU, "selu": nn.SELU}[name]()


def _norm(name: str, channels: int) -> list[nn.Module]:
    if name == "batch":
        return [nn.BatchNorm2d(channels)]
    if name == "instance":
        return [nn.InstanceNorm2d(channels, affine=True)]
    return []


def widths(size: int, base_width: int) -> list[int]:
    """Channel widths of DCGAN's stages from 4x4 up to S/2: ``c * min(2^k, 8)``, halving upwards."""
    n = int(math.log2(size)) - 2
    return [base_width * min(2 ** (n - 1 - i), MAX_MULTIPLE) for i in range(n)]


def init_weights(module: nn.Module, scheme: str, gain: float) -> None:
    """Initialise every conv / linear weight of ``module`` in place (biases to 0).

    ``normal``: N(0, gain) (DCGAN: gain 0.02), norm layers' scales N(1, 0.02) as in DCGAN;
    ``xavier``: Glorot normal with ``gain``; ``xavier_uniform``: Glorot uniform with ``gain``
    (U[-a, a], a = gain sqrt(6 / (fan_in + fan_out))); ``kaiming``: He normal (fan-in) times ``gain``;
    ``default``: PyTorch's own initialisation. Other schemes keep norm scales at 1.
    """
    if scheme == "default":
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if scheme == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif scheme == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif scheme == "xavier_uniform":
                nn.init.xavier_uniform_(m.weight, gain=gain)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                with torch.no_grad():
                    m.weight.mul_(gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            if scheme == "normal":
                nn.init.normal_(m.weight, 1.0, 0.02)
            else:
                nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def apply_spectral_norm(module: nn.Module) -> None:
    """Spectral-normalise every conv / linear weight of ``module`` (one power iteration per forward)."""
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # ConvTranspose2d keeps its output channels on dim 1 of the weight.
            setattr(module, name, spectral_norm(child, dim=1 if isinstance(child, nn.ConvTranspose2d) else 0))
        else:
            apply_spectral_norm(child)


class DCGANGenerator(nn.Module):
    """z -> ConvT 4x4 (stride 1) to 4x4, then ConvT 4x4 stride 2 per doubling, tanh at the end.

    Hidden layers: conv, norm, activation; convs that a norm follows have no bias (the norm's
    shift replaces it), as in DCGAN; with ``norm="none"`` the hidden convs have biases.
    """

    def __init__(self, size: int, latent_dim: int, base_width: int, channels: int, norm: str, act: str):
        super().__init__()
        w = widths(size, base_width)
        bias = norm == "none"
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, w[0], 4, 1, 0, bias=bias),
                                   *_norm(norm, w[0]), activation(act)]
        for a, b in zip(w, w[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=bias), *_norm(norm, b), activation(act)]
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(z.shape[0], -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    """x -> conv 4x4 stride 2 per halving down to 4x4 (no norm on the first), then conv 4x4 to a logit."""

    def __init__(self, size: int, base_width: int, channels: int, norm: str, act: str):
        super().__init__()
        w = widths(size, base_width)[::-1]
        bias = norm == "none"
        layers: list[nn.Module] = [nn.Conv2d(channels, w[0], 4, 2, 1, bias=False), activation(act)]
        for a, b in zip(w, w[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=bias), *_norm(norm, b), activation(act)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(w[-1], 1, 4, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.head(h).reshape(-1), h.flatten(1)


class MLPGenerator(nn.Module):
    """Linear latent -> c -> 2c -> 4c (ReLU) -> C*S*S (tanh), reshaped to ``[B, C, S, S]``.

    The thesis: latent 100, c = 256, one 64x64 channel (4,881,152 parameters).
    """

    def __init__(self, size: int, latent_dim: int, base_width: int, channels: int):
        super().__init__()
        c = base_width
        self.shape = (channels, size, size)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, c), nn.ReLU(), nn.Linear(c, 2 * c), nn.ReLU(),
            nn.Linear(2 * c, 4 * c), nn.ReLU(), nn.Linear(4 * c, channels * size * size), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    """Linear C*S*S -> 2c -> c (LeakyReLU 0.2) -> 1; the thesis's closing sigmoid is folded into
    BCE-with-logits (same function, same parameters: 2,229,249 at c = 256)."""

    def __init__(self, size: int, base_width: int, channels: int):
        super().__init__()
        c = base_width
        self.features = nn.Sequential(nn.Linear(channels * size * size, 2 * c), nn.LeakyReLU(0.2),
                                      nn.Linear(2 * c, c), nn.LeakyReLU(0.2))
        self.head = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x.flatten(1))
        return self.head(h).reshape(-1), h

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """The thesis's output, sigmoid(logit) ``[B]``."""
        return torch.sigmoid(self(x)[0])
