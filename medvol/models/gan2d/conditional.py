"""Mask-conditioned 2D systems (``spade``, ``pix2pix``): images generated from given masks.

They train on the slices ``[B, 2, S, S]`` that ``data.masks: true`` gives (channel 0 the image in
[-1, 1], channel 1 the nodule mask in {-1, 1}); G is fed the real batch's masks, so every fake is
paired with a real image of the same mask and D judges (image, mask) pairs. ``generate`` takes the
masks ``[B, 1, S, S]`` and returns ``[B, 2, S, S]``: the generated image, then the given mask, the
same layout as the training slices.
"""

from __future__ import annotations

import abc

import torch

from medvol.errors import MedvolError
from medvol.models.gan2d.system import GANSystem2D
from medvol.models.gan import StepState


class ConditionalGANSystem2D(GANSystem2D):
    """Base of the mask-conditioned systems; subclasses define :meth:`_render` and the sub-steps."""

    conditional = True

    def __init__(self, size: int, base_width: int, latent_dim: int, num_classes: int, channels: int):
        if isinstance(channels, bool) or channels != 2:
            raise MedvolError(f"channels: {self.name} trains on image and mask and needs channels 2 "
                              f"(with data.masks: true), not {channels!r}")
        super().__init__(size, base_width, latent_dim, num_classes, channels)

    # ------------------------------------------------------------------ masks
    def _check_masks(self, masks: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``masks`` as a float tensor ``[batch, 1, S, S]`` of -1 / 1, or a MedvolError naming them."""
        s = self.size
        if masks is None:
            raise MedvolError(f"masks: {self.name} generates images from masks; pass masks [B, 1, {s}, {s}] "
                              "of -1 (background) and 1 (mask)")
        masks = torch.as_tensor(masks)
        if masks.dim() != 4 or tuple(masks.shape) != (batch, 1, s, s):
            raise MedvolError(f"masks: expected shape [{batch}, 1, {s}, {s}], got {list(masks.shape)}")
        if not bool(((masks == 1) | (masks == -1)).all()):
            raise MedvolError("masks: values must be -1 (background) or 1 (mask)")
        return masks.float()

    # ------------------------------------------------------------------ inference
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None, tile_depth: int | None = None,
                 masks: torch.Tensor | None = None) -> torch.Tensor:
        """Images of the given masks (no grad, eval mode).

        Args:
            z: ``[B, latent_dim]``; what it means is the model's (:meth:`_render`).
            labels, tile_depth: must be None (no classes, no depth).
            masks: ``[B, 1, S, S]`` of -1 / 1 (required).

        Returns:
            ``[B, 2, S, S]``: channel 0 the generated image in [-1, 1], channel 1 the given mask.
        """
        if tile_depth is not None:
            raise MedvolError(f"tile_depth: {self.name} generates 2D images; there is no depth to tile")
        if labels is not None:
            raise MedvolError(f"labels: {self.name} is conditioned on masks, not on class labels")
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise MedvolError(f"z: expected shape [B, {self.latent_dim}], got {list(z.shape)}")
        device = self._device()
        masks = self._check_masks(masks, z.shape[0]).to(device)
        with self._eval(sample=True):
            image = self._render(z.to(device), masks)
            return torch.cat([image, masks.to(image.dtype)], dim=1)

    @abc.abstractmethod
    def _render(self, z: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """G's images ``[B, 1, S, S]`` of ``masks`` ``[B, 1, S, S]``, in eval mode under no_grad."""

    # ------------------------------------------------------------------ training
    def _prepare_step(self, real, labels, optimizers, iteration, amp_dtype, scaler, generator) -> StepState:
        state = super()._prepare_step(real, labels, optimizers, iteration, amp_dtype, scaler, generator)
        self._check_masks(real[:, 1:], real.shape[0])
        return state

    @staticmethod
    def pair(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """D's input: ``[B, 2, S, S]``, the image then its mask (the training slices' layout)."""
        return torch.cat([image, mask.to(image.dtype)], dim=1)
