"""``fastgan``: Liu et al. (2021), skip-layer excitation in G and a self-supervised D trained with
the hinge loss plus a reconstruction term on real images (networks in :mod:`.fastgan_nets`).

Deviation from the paper: the reconstruction distance is a pixel loss (``recon_loss`` "l1" or
"mse"), not LPIPS, whose pretrained VGG/AlexNet weights cannot be had here (docs/models2d.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from medvol.errors import MedvolError
from medvol.models.gan2d.diffaugment import parse_policy
from medvol.models.gan2d.fastgan_nets import FastGANDiscriminator, FastGANGenerator, decoder_sides, quadrant
from medvol.models.gan2d.losses import discriminator_loss
from medvol.models.gan2d.nets import apply_spectral_norm, init_weights
from medvol.models.gan2d.system import GANSystem2D
from medvol.models.gan import StepState
from medvol.models.options import check_ranges

#: DiffAugment policy of the paper (``diffaugment: null`` means this one).
PAPER_POLICY = "color,translation,cutout"
RECON_LOSSES = ("l1", "mse")
#: Build options and their defaults (the paper's, but for the pixel reconstruction loss).


@dataclass
class FastGANOptions:
    """Options of ``fastgan`` (``model.options``); defaults: the paper's.

    Attributes:
        channels: image channels.
        diffaugment: DiffAugment policy; None: "color,translation,cutout" as the paper; "": off.
        recon_weight, recon_loss: weight and distance (l1 or mse; the paper's LPIPS needs weights
            medvol lacks) of the self-supervised discriminator's reconstruction term.
    """

    channels: int = 1
    diffaugment: Optional[str] = None
    recon_weight: float = 1.0
    recon_loss: Literal["l1", "mse"] = "l1"

    def __post_init__(self) -> None:
        check_ranges(self, positive=("channels",), non_negative=("recon_weight",))


def reconstruction_loss(kind: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 or squared distance per pixel, in float32."""
    distance = F.l1_loss if kind == "l1" else F.mse_loss
    return distance(output.float(), target.float())


def downsample(x: torch.Tensor, side: int) -> torch.Tensor:
    """Area-average ``x[B, C, H, H]`` to ``side`` x ``side`` (H a multiple of side)."""
    factor = x.shape[-1] // side
    return F.avg_pool2d(x, factor) if factor > 1 else x


class FastGAN(GANSystem2D):
    """FastGAN: ``build("fastgan", size, ...)`` at 128 or 256 (32 and 64: narrow test sizes).

    Args:
        size: image side S (32, 64, 128, 256).
        base_width: c; widths are ``c * clamp(64 / r, 1/2, 16)`` at resolution r (64: 1024
            channels at 4x4 down to 32 at 128^2 and 256^2).
        latent_dim: length of z (256).
        channels: image channels (2 with a mask channel concatenated).
        diffaugment: DiffAugment policy; None: the paper's "color,translation,cutout"; "" for none.
        recon_weight: weight of the reconstruction term in D's loss (1 in the paper).
        recon_loss: "l1" or "mse" (the paper: LPIPS; see the module docstring).

    Every conv of G, D and the decoders is spectral-normalised; hinge loss; Adam 2e-4, betas
    (0.5, 0.999).

    Example:
        >>> from medvol.models import build
        >>> system = build("fastgan", 32, base_width=4, latent_dim=8)
        >>> system.generate(system.sample_latent(2)).shape
        torch.Size([2, 1, 32, 32])
    """

    name = "fastgan"
    loss = "hinge"

    def __init__(self, size: int, base_width: int = 64, latent_dim: int = 256, num_classes: int = 0, *,
                 channels: int = 1, diffaugment: str | None = None, recon_weight: float = 1.0,
                 recon_loss: str = "l1"):
        super().__init__(size, base_width, latent_dim, num_classes, channels)
        if diffaugment is not None and not isinstance(diffaugment, str):
            raise MedvolError(f"diffaugment: expected a policy string like 'color,translation', got {diffaugment!r}")
        try:
            self.policy = parse_policy(PAPER_POLICY if diffaugment is None else diffaugment)
        except ValueError as error:
            raise MedvolError(f"diffaugment: {error}") from None
        if isinstance(recon_weight, bool) or not isinstance(recon_weight, (int, float)) or not recon_weight >= 0:
            raise MedvolError(f"recon_weight: expected a number >= 0, got {recon_weight!r}")
        if recon_loss not in RECON_LOSSES:
            raise MedvolError(f"recon_loss: {recon_loss!r} is not one of {', '.join(RECON_LOSSES)}")
        self.recon_weight, self.recon_loss = float(recon_weight), recon_loss
        self._options = {"channels": channels, "diffaugment": diffaugment, "recon_weight": recon_weight,
                         "recon_loss": recon_loss}
        self.G = FastGANGenerator(size, latent_dim, base_width, channels)
        self.D = FastGANDiscriminator(size, base_width, channels)
        for net in (self.G, self.D):
            init_weights(net, "normal", 0.02)  # on the raw weights, before the parametrisation
            apply_spectral_norm(net)

    def options(self) -> dict[str, object]:
        return dict(self._options)

    def reconstruction_targets(self, real: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the decoders must rebuild from D's view ``real[B, C, S, S]``: the whole image and its
        quadrant ``index[b]``, each area-downsampled to its decoder's side (128 at most)."""
        whole, part = decoder_sides(self.size)
        return downsample(real, whole), downsample(quadrant(real, index), part)

    def reconstruction(self, real: torch.Tensor, f16: torch.Tensor, f8: torch.Tensor,
                       index: torch.Tensor) -> torch.Tensor:
        """The self-supervision's loss: ``d(whole, T(real)) + d(part, T_index(real))`` (float32).

        Args:
            real: D's input ``[B, C, S, S]`` (the augmented real batch) whose maps are ``f16, f8``
                (from ``D.encode``); gradients reach D's trunk through them and the decoders.
            index: ``[B]`` quadrant of each sample (see :func:`.fastgan_nets.quadrant`).
        """
        whole, part = self.D.decode(f16, f8, index)
        target_whole, target_part = self.reconstruction_targets(real, index)
        return (reconstruction_loss(self.recon_loss, whole, target_whole)
                + reconstruction_loss(self.recon_loss, part, target_part))

    def _step_D(self, state: StepState) -> None:
        """D: hinge on real and fake + ``recon_weight`` x the decoders' loss on the real batch only.

        D's input (after DiffAugment) is what the decoders reconstruct; the quadrant is drawn per
        sample from the step's generator, after the augmentations.
        """
        with state.autocast():
            with torch.no_grad():
                z = self.sample_latent(state.batch, state.generator, state.device)
                fake = self.G(z)
            real_in, fake_in = self._augment(state.real, state), self._augment(fake, state)
            d_real, f16, f8 = self.D.encode(real_in)
            d_fake, _ = self.D(fake_in)
            loss_real, loss_fake = discriminator_loss("hinge", d_real, d_fake)
            loss = loss_real + loss_fake
            if self.recon_weight > 0:
                gen_device = state.generator.device if state.generator is not None else state.device
                index = torch.randint(4, (state.batch,), generator=state.generator, device=gen_device)
                index = index.to(state.device)
                recon = self.reconstruction(real_in, f16, f8, index)
                loss = loss + self.recon_weight * recon
                state.out["D_recon"] = recon.detach()
        self._update("D", loss, state.optimizers, state.scaler)
        state.out.update(D=loss.detach(), D_real=loss_real.detach(), D_fake=loss_fake.detach())

    # _step_G is GANSystem2D's: the hinge G term -mean(D(aug(G(z)))) over the logit patch.
