"""``dcgan``: one fully convolutional G and D (Radford et al.) with the loss and the empirical
study's search-grid options as build options (docs/models2d.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from medvol.errors import MedvolError
from medvol.models.gan2d.diffaugment import parse_policy
from medvol.models.gan2d.losses import LOSSES, SMOOTHABLE
from medvol.models.gan2d.nets import (ACTIVATIONS, INITS, NORMS, DCGANDiscriminator, DCGANGenerator,
                                      apply_spectral_norm, init_weights)
from medvol.models.gan2d.system import OPTIMIZERS, GANSystem2D
from medvol.models.options import check_ranges

Norm = Literal["batch", "instance", "none"]
Activation = Literal["relu", "leakyrelu", "elu", "selu"]


@dataclass
class DCGANOptions:
    """Options of ``dcgan`` (``model.options``): the loss and the empirical study's search-grid
    options; defaults: DCGAN as published (BCE, BatchNorm, ReLU in G, LeakyReLU 0.2 in D, N(0, 0.02)
    weights). Each is described at :class:`DCGAN` (docs/models2d.md).

    Attributes:
        loss, channels, g_activation, d_activation, norm, spectral_norm_d, spectral_norm_g, init,
        init_gain, fm_weight, label_smoothing, diffaugment, n_critic, optimizer, g_norm, d_norm,
        g_base_width, d_base_width, augment, vgg_weight, vgg_weights, vgg_sha256: as :class:`DCGAN`.
        gp_weight, clip: None: the loss's own (WGAN-GP: 10; WGAN: 0.01; else 0).
    """

    loss: Literal["bce", "lsgan", "wgan", "wgan-gp", "hinge"] = "bce"
    channels: int = 1
    g_activation: Activation = "relu"
    d_activation: Activation = "leakyrelu"
    norm: Norm = "batch"
    spectral_norm_d: bool = False
    spectral_norm_g: bool = False
    init: Literal["normal", "xavier", "xavier_uniform", "kaiming", "default"] = "normal"
    init_gain: float = 0.02
    gp_weight: Optional[float] = None
    clip: Optional[float] = None
    fm_weight: float = 0.0
    label_smoothing: float = 0.0
    diffaugment: Optional[str] = None
    n_critic: int = 1
    optimizer: Literal["adam", "rmsprop"] = "adam"
    g_norm: Optional[Norm] = None
    d_norm: Optional[Norm] = None
    g_base_width: Optional[int] = None
    d_base_width: Optional[int] = None
    augment: bool = False
    vgg_weight: float = 0.0
    vgg_weights: Optional[str] = None
    vgg_sha256: Optional[str] = None

    def __post_init__(self) -> None:
        check_ranges(self, positive=("channels", "n_critic", "g_base_width", "d_base_width"),
                     non_negative=("init_gain", "gp_weight", "clip", "fm_weight", "label_smoothing", "vgg_weight"),
                     below_one=("label_smoothing",))

#: The loss's own GP weight and clipping value (WGAN-GP: 10; WGAN: 0.01).
DEFAULT_GP = {"wgan-gp": 10.0}
DEFAULT_CLIP = {"wgan": 0.01}


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise MedvolError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return value  # type: ignore[return-value]


def _number(key: str, value: object, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low \
            or (high is not None and value >= high):
        span = f">= {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise MedvolError(f"{key}: expected a number {span}, got {value!r}")
    return float(value)


class DCGAN(GANSystem2D):
    """DCGAN family: ``build("dcgan", size, loss=..., ...)``.

    Args:
        size: image side S (32, 64, 128, 256).
        base_width: filters of D's first and G's last hidden layer (64 in DCGAN; widths double
            towards the 4x4 end, up to 8x).
        latent_dim: length of z (100 in DCGAN).
        loss: "bce", "lsgan", "wgan" (weight clipping), "wgan-gp" (gradient penalty), "hinge".
        channels: image channels (2 with a mask channel concatenated).
        g_activation, d_activation: "relu", "leakyrelu" (slope 0.2), "elu", "selu".
        norm: "batch", "instance" or "none", on every hidden layer but D's first.
        g_norm, d_norm: G's / D's own normalisation (the study's separate rows); None: ``norm``.
        g_base_width, d_base_width: G's / D's own filters (the study's separate rows; Fig. 4
            plots FID against D's); None: ``base_width``.
        spectral_norm_d, spectral_norm_g: spectral norm on every conv of D / of G.
        init, init_gain: "normal" (N(0, gain)), "xavier" (Glorot normal), "xavier_uniform" (Glorot
            uniform), "kaiming" (times gain) or "default".
        gp_weight: weight of the gradient penalty (default 10 for wgan-gp, else 0).
        clip: D's weights are clipped to [-clip, clip] after each D update (default 0.01 for wgan,
            else 0: none).
        fm_weight: weight of feature matching added to G's loss.
        label_smoothing: one-sided, the real target becomes 1 - s (bce and lsgan only).
        n_critic: D updates per G update, each on a fresh real batch (1 as DCGAN; the WGAN and
            WGAN-GP papers use 5). The trainer then loads n_critic batches per iteration.
        optimizer: "adam" (betas (0.5, 0.999)) or "rmsprop" (the WGAN paper's, lr 5e-5 unless
            ``train.lr`` says otherwise).
        diffaugment: comma-separated DiffAugment policy, e.g. "color,translation,cutout"; None or
            "": none.
        augment: classical augmentation of the real images (random left-right flip, integer shift
            up to S/16; medvol.models.gan2d.augment).
        vgg_weight: weight of the VGG perceptual term in G's loss (medvol.models.gan2d.vgg); > 0
            needs ``vgg_weights`` (a local torchvision VGG16/19 state_dict file) and ``vgg_sha256``.

    Example:
        >>> from medvol.models import build
        >>> system = build("dcgan", 32, base_width=8, loss="hinge")
        >>> system.generate(system.sample_latent(2)).shape
        torch.Size([2, 1, 32, 32])
    """

    name = "dcgan"

    def __init__(self, size: int, base_width: int = 64, latent_dim: int = 100, num_classes: int = 0, *,
                 loss: str = "bce", channels: int = 1, g_activation: str = "relu",
                 d_activation: str = "leakyrelu", norm: str = "batch", spectral_norm_d: bool = False,
                 spectral_norm_g: bool = False, init: str = "normal", init_gain: float = 0.02,
                 gp_weight: float | None = None, clip: float | None = None, fm_weight: float = 0.0,
                 label_smoothing: float = 0.0, diffaugment: str | None = None, n_critic: int = 1,
                 optimizer: str = "adam", g_norm: str | None = None, d_norm: str | None = None,
                 g_base_width: int | None = None, d_base_width: int | None = None, augment: bool = False,
                 vgg_weight: float = 0.0, vgg_weights: str | None = None, vgg_sha256: str | None = None):
        super().__init__(size, base_width, latent_dim, num_classes, channels)
        self.loss = _choice("loss", loss, LOSSES)
        g_act = _choice("g_activation", g_activation, ACTIVATIONS)
        d_act = _choice("d_activation", d_activation, ACTIVATIONS)
        norm = _choice("norm", norm, NORMS)
        g_norm_ = norm if g_norm is None else _choice("g_norm", g_norm, NORMS)
        d_norm_ = norm if d_norm is None else _choice("d_norm", d_norm, NORMS)
        widths = {}
        for key, value in (("g_base_width", g_base_width), ("d_base_width", d_base_width)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise MedvolError(f"{key}: expected a positive integer, got {value!r}")
            widths[key] = base_width if value is None else value
        for key, value in (("spectral_norm_d", spectral_norm_d), ("spectral_norm_g", spectral_norm_g),
                           ("augment", augment)):
            if not isinstance(value, bool):
                raise MedvolError(f"{key}: expected true or false, got {value!r}")
        self.augment = augment
        self.vgg_weight = _number("vgg_weight", vgg_weight, 0.0)
        for key, value in (("vgg_weights", vgg_weights), ("vgg_sha256", vgg_sha256)):
            if value is not None and not isinstance(value, str):
                raise MedvolError(f"{key}: expected a string, got {value!r}")
        if self.vgg_weight > 0 and not (vgg_weights and vgg_sha256):
            raise MedvolError("vgg_weight > 0 needs model.vgg_weights (a local torchvision VGG16/19 "
                              "state_dict file) and model.vgg_sha256 (its sha256); medvol downloads no weights")
        self.vgg_weights, self.vgg_sha256 = vgg_weights, vgg_sha256
        init = _choice("init", init, INITS)
        gain = _number("init_gain", init_gain, 0.0)
        self.gp_weight = _number("gp_weight", DEFAULT_GP.get(loss, 0.0) if gp_weight is None else gp_weight, 0.0)
        self.clip = _number("clip", DEFAULT_CLIP.get(loss, 0.0) if clip is None else clip, 0.0)
        self.fm_weight = _number("fm_weight", fm_weight, 0.0)
        smoothing = _number("label_smoothing", label_smoothing, 0.0, 1.0)
        if smoothing and loss not in SMOOTHABLE:
            raise MedvolError(f"label_smoothing: only for the {' and '.join(SMOOTHABLE)} losses, not {loss}")
        self.real_target = 1.0 - smoothing
        if diffaugment is not None and not isinstance(diffaugment, str):
            raise MedvolError(f"diffaugment: expected a policy string like 'color,translation', got {diffaugment!r}")
        try:
            self.policy = parse_policy(diffaugment or "")
        except ValueError as error:
            raise MedvolError(f"diffaugment: {error}") from None
        if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 1:
            raise MedvolError(f"n_critic: expected a positive integer, got {n_critic!r}")
        self.n_critic = n_critic
        self.optimizer = _choice("optimizer", optimizer, OPTIMIZERS)
        self._options = {"loss": loss, "channels": channels, "g_activation": g_act, "d_activation": d_act,
                         "norm": norm, "spectral_norm_d": spectral_norm_d, "spectral_norm_g": spectral_norm_g,
                         "init": init, "init_gain": gain, "gp_weight": gp_weight, "clip": clip,
                         "fm_weight": fm_weight, "label_smoothing": label_smoothing, "diffaugment": diffaugment,
                         "n_critic": n_critic, "optimizer": optimizer, "g_norm": g_norm, "d_norm": d_norm,
                         "g_base_width": g_base_width, "d_base_width": d_base_width, "augment": augment,
                         "vgg_weight": vgg_weight, "vgg_weights": vgg_weights, "vgg_sha256": vgg_sha256}

        self.G = DCGANGenerator(size, latent_dim, widths["g_base_width"], channels, g_norm_, g_act)
        self.D = DCGANDiscriminator(size, widths["d_base_width"], channels, d_norm_, d_act)
        for net, spectral in ((self.G, spectral_norm_g), (self.D, spectral_norm_d)):
            init_weights(net, init, gain)  # before the parametrisation, which keeps the raw weight
            if spectral:
                apply_spectral_norm(net)

    def options(self) -> dict[str, object]:
        return dict(self._options)
