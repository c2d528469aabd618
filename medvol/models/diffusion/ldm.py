"""Latent diffusion (Rombach et al. 2022) from MONAI's generative networks, 3D and 2D.

Two training stages through medvol's Trainer, each a run of its own (``model.options.stage``):

1. ``autoencoder``: MONAI ``AutoencoderKL`` trained with L1 reconstruction, a KL term, MONAI's
   ``PatchDiscriminator`` in a least-squares adversarial term and, only with weights given by
   file, a VGG feature distance on 2D slices (:mod:`medvol.models.gan2d.vgg`).
2. ``diffusion``: MONAI ``DiffusionModelUNet`` on the frozen autoencoder's latents (scaled to unit
   variance), with the DDPM (noise prediction) or rectified-flow (velocity x0 - noise) objective;
   the stage-1 weights come from ``model.options.autoencoder`` (the trainer loads them,
   :meth:`LatentDiffusion.pretrained`).

Sampling (:meth:`LatentDiffusion.generate`) runs MONAI's ``DDPMScheduler`` or ``RFlowScheduler``
for a chosen number of steps and decodes, whole or in overlapping tiles
(:func:`medvol.models.diffusion.tiling.decode_tiled`). MONAI is imported when a model is built,
never by ``import medvol``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import zlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError
from medvol.models.contract import MODES, GenerativeSystem, Substep
from medvol.models.diffusion.options import LDMOptions

#: Adam learning rates per group (MONAI's latent diffusion tutorials).
LEARNING_RATES = {"autoencoder": 1e-4, "D": 5e-4, "unet": 1e-4}
#: DDPM's noise schedule, as latent diffusion uses it (MONAI: "scaled_linear_beta").
DDPM_SCHEDULE = dict(schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)


def _checkpointed(block: nn.Module, *args, **kwargs):
    """``block``'s own forward under activation checkpointing (the U-Net has no switch of its own)."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(type(block).forward, block, *args, use_reentrant=False, **kwargs)


class LatentDiffusion(GenerativeSystem):
    """``ldm``: 3D latent diffusion; build with ``medvol.models.build("ldm", S, **options)``.

    Sub-networks: ``autoencoder`` (AutoencoderKL, C -> latent_dim channels at side
    S / 2^(levels-1)), ``D`` (PatchDiscriminator; only with adv_weight > 0), ``unet``
    (DiffusionModelUNet on the latents). Widths: autoencoder (c, 2c, 2c, ...), U-Net (2c, 4c, 4c),
    GroupNorm groups gcd(c, 32); c = base_width.

    Args:
        size: volume side S, a multiple of 4 * 2^(levels - 1) (the U-Net halves the latent twice).
        base_width: c.
        latent_dim: latent channels.
        num_classes: must be 0 (unconditional).
        mask_channels: K > 0: the model draws and reads 1 + K channels (paired image + mask).
        **options: :class:`LDMOptions`.
    """

    name = "ldm"
    dims = 3

    def __init__(self, size: int, base_width: int, latent_dim: int, num_classes: int = 0,
                 mask_channels: int = 0, **options):
        if num_classes:
            raise MedvolError(f"num_classes: {self.name} is unconditional")
        opts = LDMOptions(**options)
        factor = 2 ** (opts.levels - 1)
        if size % (4 * factor):
            raise MedvolError(f"size: {self.name} with levels {opts.levels} needs a side that is a multiple of "
                              f"{4 * factor} (latent side divisible by 4 for the U-Net), not {size}")
        super().__init__(size, base_width, latent_dim, 0, mask_channels)
        from monai.networks.nets import AutoencoderKL, DiffusionModelUNet, PatchDiscriminator

        self.opts = opts
        self.latent_size = size // factor
        c, d = base_width, self.dims
        groups = math.gcd(c, 32)
        self.autoencoder = AutoencoderKL(
            spatial_dims=d, in_channels=self.channels, out_channels=self.channels, num_res_blocks=1,
            channels=tuple(c if i == 0 else 2 * c for i in range(opts.levels)),
            attention_levels=(False,) * opts.levels, latent_channels=latent_dim, norm_num_groups=groups,
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        if opts.adv_weight > 0:
            self.D = PatchDiscriminator(spatial_dims=d, channels=c, in_channels=self.channels, out_channels=1,
                                        num_layers_d=3)
        widths = (2 * c, 4 * c, 4 * c)
        self.unet = DiffusionModelUNet(
            spatial_dims=d, in_channels=latent_dim, out_channels=latent_dim, num_res_blocks=1, channels=widths,
            attention_levels=(False, False, opts.unet_attention), norm_num_groups=groups,
            num_head_channels=math.gcd(widths[-1], 32))
        # A torch CPU bug gives bf16 Conv3d wrong weight gradients at output depth 2 (the U-Net's
        # lowest level and D's last conv at 32^3): registry.build runs those in fp32 (ops/cpu_bf16.py).
        self.register_buffer("latent_scale", torch.tensor(float(opts.latent_scale)))
        # DDPM's cumulative alphas, for the training step's forward process (not saved: options make it).
        alphas = self._scheduler().alphas_cumprod if opts.scheduler == "ddpm" else torch.zeros(0)
        self.register_buffer("alphas_cumprod", alphas.float(), persistent=False)

    # ------------------------------------------------------------------ structure
    def options(self) -> dict[str, object]:
        from dataclasses import asdict

        return asdict(self.opts)

    def groups(self) -> dict[str, nn.Module]:
        if self.opts.stage == "diffusion":
            return {"unet": self.unet}
        return {"autoencoder": self.autoencoder, **({"D": self.D} if "D" in self._modules else {})}

    def param_counts(self) -> dict[str, int]:
        """Every sub-network's trainable parameters (both stages'), and their total."""
        nets = {"autoencoder": self.autoencoder, "D": self._modules.get("D"), "unet": self.unet}
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in nets.items() if m is not None}
        return {**counts, "total": sum(counts.values())}

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam per group of this stage, PyTorch's default implementation in both modes (fused
        Adam once looked like the cause of NaN bf16 steps on the CPU; the cause was a torch conv
        bug, medvol/ops/cpu_bf16.py)."""
        return {k: torch.optim.Adam(m.parameters(), lr=LEARNING_RATES[k]) for k, m in self.groups().items()}

    def pretrained(self) -> dict[str, str]:
        """Sub-networks to initialise from another run's checkpoint before training:
        stage "diffusion" takes ``autoencoder`` from the stage-1 checkpoint."""
        if self.opts.stage != "diffusion":
            return {}
        if not self.opts.autoencoder:
            raise MedvolError("model.options.autoencoder: stage diffusion trains on a trained autoencoder; "
                              "give its stage-1 checkpoint (file or run folder)")
        return {"autoencoder": self.opts.autoencoder}

    def prepare_training(self) -> None:
        """Load the perceptual network (file and sha256 checked) when stage 1 uses it."""
        if self.opts.stage == "autoencoder" and self.opts.perceptual_weight > 0:
            self._vgg(torch.device("cpu"))

    def _vgg(self, device: torch.device) -> nn.Module:
        """The VGG trunk of the perceptual term, loaded once, kept out of the module tree."""
        from medvol.models.gan2d.vgg import load_vgg

        if "_vgg_net" not in self.__dict__:
            self.__dict__["_vgg_net"] = load_vgg(self.opts.perceptual_weights, self.opts.perceptual_sha256)
        return self.__dict__["_vgg_net"].to(device)

    def set_mode(self, mode: str, channels_last: bool = False) -> "LatentDiffusion":
        """"optimized": activation checkpointing of the autoencoder's encoder and decoder (MONAI's
        ``use_checkpoint``) and of every U-Net down, middle and up block (wrapped here: MONAI's
        U-Net has no switch); with the trainer's autocast. "reference": none of it."""
        super().set_mode(mode, channels_last)
        optimized = mode == "optimized"
        self.autoencoder.use_checkpoint = optimized
        blocks = [*self.unet.down_blocks, self.unet.middle_block, *self.unet.up_blocks]
        for block in blocks:
            if optimized:
                block.forward = functools.partial(_checkpointed, block)
            else:
                block.__dict__.pop("forward", None)
        return self

    # ------------------------------------------------------------------ training
    def _check_batch(self, real: torch.Tensor) -> None:
        want = (self.channels,) + (self.size,) * self.dims
        if real.dim() != self.dims + 2 or tuple(real.shape[1:]) != want:
            raise MedvolError(f"{'volume' if self.dims == 3 else 'image'}: expected shape [B, "
                              f"{', '.join(map(str, want))}], got {list(real.shape)}")

    def _train_only(self, group: str | None) -> None:
        for name, module in self.groups().items():
            module.requires_grad_(name == group)
        if self.opts.stage == "diffusion":
            self.autoencoder.requires_grad_(False)

    @staticmethod
    def _randn(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=gen_device).to(device)

    def train_step(self, real, optimizers, iteration, *, labels=None, amp_dtype=None, scaler=None,
                   substep: Substep | None = None, generator=None) -> dict[str, torch.Tensor]:
        """One iteration of this stage (:attr:`LDMOptions.stage`); see :class:`GenerativeSystem`.

        Returns:
            autoencoder: ``AE`` (the total), ``AE_l1``, ``AE_kl``, ``AE_adv``, ``AE_perceptual``
            (those in use), ``D``; diffusion: ``unet`` (the MSE of the prediction).
        """
        self._check_batch(real)
        if labels is not None:
            raise MedvolError(f"labels: {self.name} is unconditional")
        substep = substep or (lambda name: contextlib.nullcontext())
        out: dict[str, torch.Tensor] = {}
        try:
            if self.opts.stage == "autoencoder":
                self._autoencoder_step(real, optimizers, amp_dtype, scaler, substep, generator, out)
            else:
                with substep("unet"):
                    self._train_only("unet")
                    self._diffusion_step(real, optimizers, amp_dtype, scaler, generator, out)
        finally:
            for module in self.groups().values():
                module.requires_grad_(True)
        if scaler is not None:
            scaler.update()
        return out

    def _autoencoder_step(self, real, optimizers, amp_dtype, scaler, substep, generator, out) -> None:
        has_d = "D" in self._modules
        with substep("autoencoder"):
            self._train_only("autoencoder")
            with self._autocast(real.device, amp_dtype):
                mu, sigma = self.autoencoder.encode(real)
                z = mu + sigma * self._randn(mu.shape, generator, real.device).to(sigma.dtype)
                recon = self.autoencoder.decode(z)
                l1 = F.l1_loss(recon.float(), real.float())
                mu, sigma = mu.float(), sigma.float()
                kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).flatten(1).sum(1).mean()
                loss = l1 + self.opts.kl_weight * kl
                out.update(AE_l1=l1.detach(), AE_kl=kl.detach())
                if self.opts.perceptual_weight > 0:
                    perceptual = self._perceptual(recon, real)
                    loss = loss + self.opts.perceptual_weight * perceptual
                    out["AE_perceptual"] = perceptual.detach()
                if has_d:
                    logit = self.D(recon)[-1].float()
                    adv = F.mse_loss(logit, torch.ones_like(logit))
                    loss = loss + self.opts.adv_weight * adv
                    out["AE_adv"] = adv.detach()
            self._update("autoencoder", loss, optimizers, scaler)
            out["AE"] = loss.detach()
        if has_d:
            with substep("D"):
                if scaler is not None:
                    scaler.update()  # a GradScaler steps each optimiser once between updates
                self._train_only("D")
                with self._autocast(real.device, amp_dtype):
                    d_real = self.D(real)[-1].float()
                    d_fake = self.D(recon.detach())[-1].float()
                    loss_d = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real))
                                    + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
                self._update("D", loss_d, optimizers, scaler)
                out["D"] = loss_d.detach()

    def _perceptual(self, recon: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Mean over VGG blocks of the squared feature difference, per sample: the whole image in
        2D, 4 evenly spaced slices along each axis in 3D (a 2.5D distance)."""
        from medvol.models.gan2d.vgg import to_vgg_input

        def slices(x: torch.Tensor) -> torch.Tensor:
            if self.dims == 2:
                return x
            s = x.shape[-1]
            picks = torch.linspace(0, s - 1, 4).round().long().tolist()
            planes = [x[:, :, i] for i in picks] + [x[:, :, :, i] for i in picks] + [x[..., i] for i in picks]
            return torch.cat(planes, dim=0)

        vgg = self._vgg(recon.device)
        with torch.no_grad():
            target = vgg(to_vgg_input(slices(real)))
        features = vgg(to_vgg_input(slices(recon)))
        return sum(F.mse_loss(f.float(), t.float()) for f, t in zip(features, target)) / len(features)

    def _encode_latents(self, real: torch.Tensor, amp_dtype, generator) -> torch.Tensor:
        """The frozen autoencoder's latent sample of ``real``, times :attr:`latent_scale` (set from
        this batch, averaged over ranks, when it is still 0)."""
        with torch.no_grad(), self._autocast(real.device, amp_dtype):
            mu, sigma = self.autoencoder.encode(real)
        z = mu.float() + sigma.float() * self._randn(mu.shape, generator, real.device)
        if float(self.latent_scale) == 0.0:
            std = z.std().detach()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(std)
                std = std / torch.distributed.get_world_size()
            self.latent_scale.copy_(1.0 / std.clamp_min(1e-6))
        return z * self.latent_scale

    def _diffusion_step(self, real, optimizers, amp_dtype, scaler, generator, out) -> None:
        self.autoencoder.eval()  # frozen: no norm statistics move (GroupNorm has none; kept explicit)
        z = self._encode_latents(real, amp_dtype, generator)
        noise = self._randn(z.shape, generator, z.device)
        b, t_max = z.shape[0], self.opts.train_timesteps
        gen_device = generator.device if generator is not None else z.device
        shape = (b,) + (1,) * (z.dim() - 1)
        if self.opts.scheduler == "ddpm":
            t = torch.randint(0, t_max, (b,), generator=generator, device=gen_device).to(z.device)
            acp = self.alphas_cumprod[t].view(shape)
            noisy, target = acp.sqrt() * z + (1 - acp).sqrt() * noise, noise
        else:
            t = (torch.rand(b, generator=generator, device=gen_device) * t_max).long().to(z.device)
            frac = (t.float() / t_max).view(shape)
            noisy, target = (1 - frac) * z + frac * noise, z - noise
        with self._autocast(z.device, amp_dtype):
            pred = self.unet(noisy, timesteps=t)
            loss = F.mse_loss(pred.float(), target)
        self._update("unet", loss, optimizers, scaler)
        out["unet"] = loss.detach()

    # ------------------------------------------------------------------ sampling
    def _scheduler(self):
        from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

        if self.opts.scheduler == "ddpm":
            return DDPMScheduler(num_train_timesteps=self.opts.train_timesteps, clip_sample=False, **DDPM_SCHEDULE)
        return RFlowScheduler(num_train_timesteps=self.opts.train_timesteps, use_discrete_timesteps=True,
                              spatial_dim=self.dims)

    def sample_latent(self, batch, generator=None, device=None) -> torch.Tensor:
        """The denoising chain's start: standard normal latents ``[B, latent_dim, L, ...]``, L the latent side."""
        device = self._device() if device is None else torch.device(device)
        shape = (batch, self.latent_dim) + (self.latent_size,) * self.dims
        return self._randn(shape, generator, device)

    @contextlib.contextmanager
    def _eval(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None, tile_depth: int | None = None,
                 steps: int | None = None, overlap: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples ``[B, C, S, ...]`` in [-1, 1] from start latents ``z`` (:meth:`sample_latent`).

        Args:
            z: ``[B, latent_dim, L, ...]``.
            tile_depth: decode in tiles of this many latent voxels per side (bounded memory;
                docs/diffusion.md measures the seams); None: decode whole.
            steps: denoising steps (default ``sample_steps``), 1 .. train_timesteps.
            overlap: latent voxels shared by neighbouring tiles (default tile_depth // 4).
            generator: DDPM's per-step noise; default: a CPU generator seeded by ``z``'s values,
                so that one latent gives one sample.
        """
        if self.opts.stage != "diffusion":
            raise MedvolError(f"{self.name}: a stage-1 (autoencoder) model has no diffusion model to sample from; "
                              "train stage diffusion on it (docs/diffusion.md)")
        if labels is not None:
            raise MedvolError(f"labels: {self.name} is unconditional")
        steps = self.opts.sample_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.opts.train_timesteps:
            raise MedvolError(f"steps: expected an integer in 1 .. {self.opts.train_timesteps}, got {steps!r}")
        want = (self.latent_dim,) + (self.latent_size,) * self.dims
        if z.dim() != self.dims + 2 or tuple(z.shape[1:]) != want:
            raise MedvolError(f"z: expected shape [B, {', '.join(map(str, want))}], got {list(z.shape)}")
        device = self._device()
        if generator is None:
            seed = zlib.crc32(z.detach().float().cpu().numpy().tobytes())
            generator = torch.Generator().manual_seed(seed)
        with self._eval():
            x = self._denoise(z.to(device).float(), steps, generator)
            x = x / self.latent_scale if float(self.latent_scale) > 0 else x
            if tile_depth is None:
                image = self.autoencoder.decode(x)
            else:
                image = self._decode_tiled(x, tile_depth, overlap)
            return image.float().clamp(-1, 1)

    def _denoise(self, x: torch.Tensor, steps: int, generator: torch.Generator) -> torch.Tensor:
        scheduler = self._scheduler()
        scheduler.set_timesteps(steps, device=x.device)
        timesteps = [int(t) for t in scheduler.timesteps]
        if generator.device != x.device:
            # MONAI draws DDPM's step noise on the model output's device: a generator there, seeded
            # from the given one, keeps one seed one sample.
            seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
            generator = torch.Generator(device=x.device).manual_seed(seed)
        for i, t in enumerate(timesteps):
            pred = self.unet(x, timesteps=torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
            if self.opts.scheduler == "ddpm":
                x, _ = scheduler.step(pred, t, x, generator=generator)
            else:
                next_t = timesteps[i + 1] if i + 1 < len(timesteps) else 0
                x, _ = scheduler.step(pred, t, x, next_t)
        return x

    def _decode_tiled(self, z: torch.Tensor, tile: int, overlap: int | None) -> torch.Tensor:
        """The decoder tile by tile, its GroupNorms sharing statistics recorded over all tiles in
        one extra sweep (halved the difference to a whole decode at small tiles; docs/diffusion.md)."""
        from medvol.models.diffusion.tiling import decode_tiled

        norms = [m for m in self.autoencoder.decoder.modules() if isinstance(m, nn.GroupNorm)]
        return decode_tiled(self.autoencoder.decode, z, tile, overlap, norms=norms, refine=0)

    def reconstruct(self, x: torch.Tensor, tile_depth: int | None = None) -> torch.Tensor:
        """The autoencoder's ``decode(mean of encode(x))``: what stage 1 learnt, in [-1, 1]."""
        self._check_batch(x)
        with self._eval():
            mu, _ = self.autoencoder.encode(x.to(self._device()))
            if tile_depth is None:
                return self.autoencoder.decode(mu).float().clamp(-1, 1)
            return self._decode_tiled(mu, tile_depth, None).float().clamp(-1, 1)

    def preview(self, z: torch.Tensor, real: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 1 shows reconstructions of the real batch, stage 2 samples."""
        if self.opts.stage == "autoencoder":
            return self.reconstruct(real[: z.shape[0]])
        return self.generate(z, labels=labels)


class LatentDiffusion2D(LatentDiffusion):
    """``ldm2d``: the same model on images ``[B, C, S, S]``."""

    name = "ldm2d"
    dims = 2


LDM_SIZES_3D = (32, 64, 128, 256, 512)
LDM_SIZES_2D = (32, 64, 128, 256)
__all__ = ["LDM_SIZES_2D", "LDM_SIZES_3D", "LDMOptions", "LatentDiffusion", "LatentDiffusion2D", "MODES"]
