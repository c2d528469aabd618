"""A small stand-in GANSystem with the published interface (tests only).

It has what makes the real systems awkward to profile: spectral-norm discriminator,
a random depth crop read with ``.item()``, per-sub-network Adam optimizers, checkpointing and
channels_last_3d in the optimized mode, and a ``substep`` hook around each update.
``STANDIN_KILL_ABOVE_BATCH`` makes the process SIGKILL itself (as the kernel OOM killer would).
"""

from __future__ import annotations

import contextlib
import os
import signal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class _Stage(nn.Module):
    def __init__(self, cin, cout, upsample):
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.GroupNorm(1, cout)

    def forward(self, x):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class StandInSystem(nn.Module):
    def __init__(self, name, size, base_width=4):
        super().__init__()
        self.name, self.size, self.base_width, self.latent_dim, self.num_classes = name, size, base_width, 16, 0
        c = base_width
        self.start = size // 8
        self.G = nn.ModuleDict({
            "fc": nn.Linear(16, 2 * c * self.start ** 3),
            "stages": nn.ModuleList([_Stage(2 * c, c, True), _Stage(c, c, True), _Stage(c, 1, True)]),
        })
        sn = nn.utils.parametrizations.spectral_norm
        self.D = nn.Sequential(sn(nn.Conv3d(1, c, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
                               sn(nn.Conv3d(c, 2 * c, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
                               nn.AdaptiveAvgPool3d(1), nn.Flatten(), sn(nn.Linear(2 * c, 1)))
        self.E = nn.Sequential(nn.Conv3d(1, c, 3, padding=1), nn.GroupNorm(1, c), nn.ReLU())
        self.sub_E = nn.Sequential(nn.Conv3d(c, 1, 3, padding=1))
        self.checkpointing = False

    def set_mode(self, mode):
        self.checkpointing = mode == "optimized"
        fmt = torch.channels_last_3d if mode == "optimized" else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv3d) and not nn.utils.parametrize.is_parametrized(module):
                module.to(memory_format=fmt)

    def param_counts(self):
        counts = {k: sum(p.numel() for p in getattr(self, k).parameters()) for k in ("G", "D", "E", "sub_E")}
        counts["total"] = sum(counts.values())
        return counts

    def make_optimizers(self):
        return {k: torch.optim.Adam(getattr(self, k).parameters(), lr=1e-4, betas=(0.0, 0.999))
                for k in ("G", "D", "E", "sub_E")}

    def generate_train(self, z):
        x = self.G["fc"](z).view(z.shape[0], -1, self.start, self.start, self.start)
        for stage in self.G["stages"]:
            x = checkpoint(stage, x, use_reentrant=False) if self.checkpointing else stage(x)
        return torch.tanh(x)

    def train_step(self, real, optimizers, iteration, *, labels=None, amp_dtype=None, scaler=None,
                   substep=None, generator=None):
        limit = os.environ.get("STANDIN_KILL_ABOVE_BATCH")
        if limit and real.shape[0] > int(limit):
            os.kill(os.getpid(), signal.SIGKILL)
        substep = substep or (lambda name: contextlib.nullcontext())
        autocast = torch.autocast(real.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        depth = self.size // 8
        crop = int(torch.randint(0, self.size - depth + 1, (1,)).item())
        batch = real.shape[0]
        losses = {}
        with substep("D"):
            optimizers["D"].zero_grad(set_to_none=True)
            with autocast:
                fake = self.generate_train(torch.randn(batch, 16, device=real.device)).detach()
                loss = F.softplus(-self.D(real)).mean() + F.softplus(self.D(fake)).mean()
            loss.backward()
            optimizers["D"].step()
            losses["D"] = loss.detach()
        with substep("G"):
            optimizers["G"].zero_grad(set_to_none=True)
            with autocast:
                fake = self.generate_train(torch.randn(batch, 16, device=real.device))
                loss = F.softplus(-self.D(fake)).mean()
            loss.backward()
            optimizers["G"].step()
            losses["G"] = loss.detach()
        for name in ("E", "sub_E"):
            with substep(name):
                optimizers[name].zero_grad(set_to_none=True)
                with autocast:
                    crop_real = real[:, :, crop:crop + depth]
                    out = self.E(crop_real) if name == "E" else self.sub_E(self.E(crop_real).detach())
                    loss = (out.float().mean(1, keepdim=True) - crop_real).abs().mean()
                loss.backward()
                optimizers[name].step()
                losses[name] = loss.detach()
        return losses


def build(name, size, *, base_width=4, latent_dim=16, num_classes=0):
    return StandInSystem(name, size, base_width)
