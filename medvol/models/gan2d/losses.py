"""Adversarial losses of the DCGAN family: one D and one G objective per loss, on raw logits.

Every function takes D's raw outputs (no sigmoid) ``[B]`` and returns scalar float32 losses.
``bce`` is the non-saturating DCGAN loss, ``lsgan`` the least-squares loss with targets 0/1 and
the 1/2 factors of Mao et al., ``wgan`` / ``wgan-gp`` the Wasserstein critic loss (weight clipping
and the gradient penalty are applied by the step, not here), ``hinge`` the hinge loss of
geometric GAN / SN-GAN.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("bce", "lsgan", "wgan", "wgan-gp", "hinge")
#: Losses whose real target is a label that one-sided label smoothing can lower.
SMOOTHABLE = ("bce", "lsgan")


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor,
                       real_target: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """D's loss on real and on fake logits, as ``(loss_real, loss_fake)``; D minimises their sum.

    Args:
        kind: one of :data:`LOSSES`.
        real, fake: D's logits ``[B]`` of a real and a generated batch.
        real_target: the real label, ``1 - label_smoothing`` (bce and lsgan only).
    """
    real, fake = real.float(), fake.float()
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_target)),
                F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    if kind == "lsgan":
        return 0.5 * ((real - real_target) ** 2).mean(), 0.5 * (fake ** 2).mean()
    if kind in ("wgan", "wgan-gp"):
        return -real.mean(), fake.mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean(), F.relu(1.0 + fake).mean()
    raise ValueError(f"unknown loss {kind!r}")


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """G's loss on D's logits of fresh fakes ``[B]``."""
    fake = fake.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind == "lsgan":
        return 0.5 * ((fake - 1.0) ** 2).mean()
    if kind in ("wgan", "wgan-gp", "hinge"):
        return -fake.mean()
    raise ValueError(f"unknown loss {kind!r}")


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's penalty ``mean_b (||grad_x critic(x_b)||_2 - 1)^2`` at ``x = eps real + (1 - eps) fake``.

    Args:
        critic: ``x[B, C, H, W] -> logits[B]``.
        real, fake: ``[B, C, H, W]``; ``fake`` should be detached.
        eps: ``[B]`` uniform [0, 1) mixing weights, one per sample.

    The graph of the gradient is kept (``create_graph``), so the penalty trains the critic by
    double backward.
    """
    e = eps.to(real.dtype).view(-1, *([1] * (real.dim() - 1)))
    mixed = (e * real.detach() + (1 - e) * fake.detach()).requires_grad_(True)
    out = critic(mixed)
    (grad,) = torch.autograd.grad(out.float().sum(), mixed, create_graph=True)
    norm = grad.float().flatten(1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


def feature_matching(fake_features: torch.Tensor, real_features: torch.Tensor) -> torch.Tensor:
    """Salimans et al.'s feature matching: squared distance of the batch means of D's features."""
    diff = fake_features.float().flatten(1).mean(0) - real_features.float().flatten(1).mean(0)
    return (diff ** 2).mean()
