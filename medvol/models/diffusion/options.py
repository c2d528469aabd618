"""The latent diffusion model's options: one dataclass, registered with the model (``model.options``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from medvol.errors import MedvolError

STAGES = ("autoencoder", "diffusion")
SCHEDULERS = ("ddpm", "rflow")


@dataclass
class LDMOptions:
    """Options of ``ldm`` (3D) and ``ldm2d``; defaults are a small MONAI-tutorial-like model.

    Attributes:
        stage: what :meth:`train_step` trains: "autoencoder" (AutoencoderKL with L1, KL, the patch
            discriminator's least-squares term and, with weights given, the perceptual term) or
            "diffusion" (the denoising U-Net on the frozen autoencoder's latents).
        autoencoder: stage "diffusion" only: the stage-1 checkpoint (file or run folder) whose
            autoencoder weights training starts from; read by training only, a stage-2 checkpoint
            carries the autoencoder it was trained with.
        levels: autoencoder resolution levels; the latent side is S / 2^(levels - 1).
        scheduler: "ddpm" (predicts the noise) or "rflow" (rectified flow, predicts x0 - noise).
        train_timesteps: T of the noise schedule.
        sample_steps: denoising steps of :meth:`generate` unless it is given ``steps``.
        kl_weight, adv_weight: weights of the KL term and of the adversarial term in stage 1.
        perceptual_weight: > 0 adds a VGG feature distance between reconstruction and input on 2D
            slices; its weights come only from ``perceptual_weights`` (a torchvision VGG
            state_dict file) with ``perceptual_sha256``; nothing is downloaded.
        unet_attention: self-attention in the U-Net's lowest level.
        latent_scale: multiplies the latents the U-Net sees; 0: 1 / std of the first training batch's
            latents (kept as a buffer, so checkpoints and samples use the same).
    """

    stage: Literal["autoencoder", "diffusion"] = "autoencoder"
    autoencoder: Optional[str] = None
    levels: int = 3
    scheduler: Literal["ddpm", "rflow"] = "ddpm"
    train_timesteps: int = 1000
    sample_steps: int = 50
    kl_weight: float = 1e-6
    adv_weight: float = 0.01
    perceptual_weight: float = 0.0
    perceptual_weights: Optional[str] = None
    perceptual_sha256: Optional[str] = None
    unet_attention: bool = True
    latent_scale: float = 0.0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise MedvolError(f"stage: {self.stage!r} is not one of {', '.join(STAGES)}")
        if self.scheduler not in SCHEDULERS:
            raise MedvolError(f"scheduler: {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        for key in ("levels", "train_timesteps", "sample_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MedvolError(f"{key}: expected a positive integer, got {value!r}")
        if self.sample_steps > self.train_timesteps:
            raise MedvolError(f"sample_steps: {self.sample_steps} exceeds train_timesteps {self.train_timesteps}")
        for key in ("kl_weight", "adv_weight", "perceptual_weight", "latent_scale"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise MedvolError(f"{key}: expected a number >= 0, got {value!r}")
        if self.perceptual_weight > 0 and not (self.perceptual_weights and self.perceptual_sha256):
            raise MedvolError("perceptual_weight > 0 needs perceptual_weights (a local torchvision VGG "
                              "state_dict file) and perceptual_sha256; no weights are downloaded")
