"""``stylegan2``: StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN") on the 2D machinery, written from the paper's equations (docs/models2d.md).

The training step, per iteration (one D update then one G update, as every 2D model):

- D: non-saturating logistic loss ``softplus(D(fake)) + softplus(-D(real))`` on style-mixed fakes;
  every ``r1_interval`` iterations a second, separate D update with the lazy R1 penalty
  ``gamma / 2 * E ||grad_x D(x_real)||^2``, multiplied by the interval.
- G: ``softplus(-D(G(z)))``; every ``pl_interval`` iterations a separate G update with the lazy
  path-length penalty ``(||J_w^T y||_2 - a)^2`` on a batch reduced ``pl_batch_shrink`` times,
  ``y ~ N(0, I) / sqrt(H W)``, ``a`` the running mean of the lengths (decay ``pl_decay``),
  weight ``pl_weight``, multiplied by the interval; then the running mean of w (truncation's
  centre) and the EMA of G's weights are updated.
- Adam lr 0.002, betas (0, 0.99), both raised to ``c = interval / (interval + 1)`` for a
  lazily regularised network (the rate multiplied by c), so that the regularisation steps do not
  change the effective momentum per main step.

``G_ema`` (half-life ``ema_kimg`` thousand images) is a submodule: it is saved in checkpoints with
the other weights, restored on resume, and is what :meth:`StyleGAN2.generate` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F

from medvol.errors import MedvolError
from medvol.models.gan2d.stylegan2_layers import randn, wide
from medvol.models.gan2d.stylegan2_nets import ResidualDiscriminator, StyleGenerator
from medvol.models.gan2d.system import GANSystem2D
from medvol.models.gan import StepState
from medvol.models.options import check_ranges



@dataclass
class StyleGAN2Options:
    """Options of ``stylegan2`` (``model.options``; docs/models2d.md "stylegan2"); defaults: the
    paper's values. Each is described at :class:`StyleGAN2`.

    Attributes:
        channels: image channels.
        r1_gamma, r1_interval: lazy R1; ``r1_gamma`` None: 10 (the paper's FFHQ 1024^2 value)
            scaled by the pixel count, ``10 * (S / 1024)^2`` (:func:`default_r1_gamma`).
        pl_weight, pl_interval, pl_batch_shrink, pl_decay: path-length regularisation.
        mixing_prob: style mixing probability.
        ema_kimg, ema_rampup: G_ema half-life (in thousands of images) and its ramp-up.
        truncation: truncation psi of generation.
        mapping_layers: depth of the mapping network.
    """

    channels: int = 1
    r1_gamma: Optional[float] = None
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    mixing_prob: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float = 0.0
    truncation: float = 1.0
    mapping_layers: int = 8

    def __post_init__(self) -> None:
        check_ranges(self, positive=("channels",))


def default_r1_gamma(size: int) -> float:
    """R1 weight for image side ``size``: 10 at 1024^2 (the paper), proportional to the pixel count.

    The ADA paper's heuristic (Karras et al. 2020b) makes gamma proportional to the number of
    pixels (``0.0002 * S^2 / batch``); medvol keeps that dependence on S and anchors it at the
    StyleGAN2 paper's gamma = 10 for 1024^2: 0.039 at 64^2, 0.156 at 128^2, 0.625 at 256^2.
    """
    return 10.0 * (size / 1024.0) ** 2


def r1_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor) -> torch.Tensor:
    """``E_b ||d(sum_i D(x_i)) / d x_b||^2`` on real images ``[B, C, H, W]`` (the R1 penalty without gamma/2).

    The gradient keeps its graph (``create_graph``), so the penalty trains D by double backward.
    """
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(wide(critic(x)).sum(), x, create_graph=True)
    return wide(grad).square().flatten(1).sum(1).mean()


def path_lengths(images: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``||J_w^T y||_2`` per sample: ``images [B, C, H, W]`` generated from ``ws [B, L, w_dim]``, ``y = noise``.

    ``J_w^T y`` is the gradient of ``sum(images * y)`` with respect to ws; its squared norm is summed
    over w's dimensions and averaged over the L layers' ws before the square root (the L ws of a
    sample are one w broadcast, or two with style mixing). Returns ``[B]``, with graph.
    """
    (grad,) = torch.autograd.grad((wide(images) * noise).sum(), ws, create_graph=True)
    return wide(grad).square().sum(2).mean(1).sqrt()


def _number(key: str, value: object, low: float, high: float | None = None, integer: bool = False) -> float:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < low \
            or (high is not None and value > high):
        span = f">= {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise MedvolError(f"{key}: expected {'an integer' if integer else 'a number'} {span}, got {value!r}")
    return value


class StyleGAN2(GANSystem2D):
    """StyleGAN2: ``build("stylegan2", size, base_width=64, latent_dim=512, ...)``.

    Args:
        size: image side S (32, 64, 128, 256).
        base_width: c; channels ``min(256 c / r, 4c)`` at resolution r (c = 128: config-f).
        latent_dim: length of z and of w (512 in the paper).
        channels: image channels (2: image and mask concatenated, as the empirical study trains).
        r1_gamma: R1 weight gamma; None: :func:`default_r1_gamma` of S. 0 turns R1 off.
        r1_interval: D steps per lazy R1 step (16; 1: not lazy).
        pl_weight: path-length weight (2; 0 turns it off). pl_interval: G steps per PL step (4).
        pl_batch_shrink: the PL batch is the batch divided by this (2). pl_decay: the running
            mean's decay (0.01).
        mixing_prob: probability that a sample is generated from two latents (0.9).
        ema_kimg: half-life of G_ema's weights in thousands of images (10).
        ema_rampup: if > 0, the half-life is at most ``ema_rampup`` times the images seen so far
            (the ADA paper's ramp-up, 0.05 there; 0: none, as StyleGAN2).
        truncation: psi of :meth:`generate`, ``w = w_avg + psi (w - w_avg)`` (1: none).
        mapping_layers: depth of the mapping network (8).

    Example:
        >>> from medvol.models import build
        >>> system = build("stylegan2", 32, base_width=4, latent_dim=8)
        >>> system.generate(system.sample_latent(2)).shape
        torch.Size([2, 1, 32, 32])
    """

    name = "stylegan2"
    lr = {"D": 0.002, "G": 0.002}
    betas = (0.0, 0.99)

    def __init__(self, size: int, base_width: int = 64, latent_dim: int = 512, num_classes: int = 0, *,
                 channels: int = 1, r1_gamma: float | None = None, r1_interval: int = 16,
                 pl_weight: float = 2.0, pl_interval: int = 4, pl_batch_shrink: int = 2, pl_decay: float = 0.01,
                 mixing_prob: float = 0.9, ema_kimg: float = 10.0, ema_rampup: float = 0.0,
                 truncation: float = 1.0, mapping_layers: int = 8):
        super().__init__(size, base_width, latent_dim, num_classes, channels)
        self.r1_gamma = float(_number("r1_gamma", default_r1_gamma(size) if r1_gamma is None else r1_gamma, 0.0))
        self.r1_interval = _number("r1_interval", r1_interval, 1, integer=True)
        self.pl_weight = float(_number("pl_weight", pl_weight, 0.0))
        self.pl_interval = _number("pl_interval", pl_interval, 1, integer=True)
        self.pl_batch_shrink = _number("pl_batch_shrink", pl_batch_shrink, 1, integer=True)
        self.pl_decay = float(_number("pl_decay", pl_decay, 0.0, 1.0))
        self.mixing_prob = float(_number("mixing_prob", mixing_prob, 0.0, 1.0))
        self.ema_kimg = float(_number("ema_kimg", ema_kimg, 0.0))
        self.ema_rampup = float(_number("ema_rampup", ema_rampup, 0.0))
        self.truncation = float(_number("truncation", truncation, 0.0))
        _number("mapping_layers", mapping_layers, 1, integer=True)
        self._options = {"channels": channels, "r1_gamma": r1_gamma, "r1_interval": r1_interval,
                         "pl_weight": pl_weight, "pl_interval": pl_interval, "pl_batch_shrink": pl_batch_shrink,
                         "pl_decay": pl_decay, "mixing_prob": mixing_prob, "ema_kimg": ema_kimg,
                         "ema_rampup": ema_rampup, "truncation": truncation, "mapping_layers": mapping_layers}

        self.G = StyleGenerator(size, latent_dim, base_width, channels, mapping_layers)
        self.D = ResidualDiscriminator(size, base_width, channels)
        # Not a group: no optimiser, no gradients; a submodule, so checkpoints carry it.
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        self.register_buffer("pl_mean", torch.zeros(()))
        # The latest lazy penalties, reported every iteration (the trainer averages each loss over
        # its logging window, which a value present one iteration in 16 would not survive).
        self.register_buffer("last_r1", torch.zeros(()))
        self.register_buffer("last_pl", torch.zeros(()))

    def options(self) -> dict[str, object]:
        return dict(self._options)

    # ------------------------------------------------------------------ optimisers
    def lazy_factor(self, group: str) -> float:
        """``c = interval / (interval + 1)`` of a regularised group (1 when its penalty is off).

        The penalty is always its own optimiser step, so interval + 1 updates happen per interval
        main steps (also for an interval of 1, where c = 1/2).
        """
        interval, on = ((self.r1_interval, self.r1_gamma > 0) if group == "D"
                        else (self.pl_interval, self.pl_weight > 0))
        return interval / (interval + 1) if on else 1.0

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam per group with lr ``0.002 c`` and betas ``(0, 0.99^c)`` (``train.lr`` sets the rate itself)."""
        fused = True if self.mode == "optimized" else None
        optimizers = {}
        for k, module in self.groups().items():
            c = self.lazy_factor(k)
            optimizers[k] = torch.optim.Adam(module.parameters(), lr=self.lr[k] * c,
                                             betas=tuple(b ** c for b in self.betas), fused=fused)
        return optimizers

    # ------------------------------------------------------------------ sampling
    def _ws(self, batch: int, state: StepState) -> tuple[torch.Tensor, torch.Tensor]:
        """Style-mixed ws ``[B, num_ws, w_dim]`` for fresh latents, and the first latent's w ``[B, w_dim]``.

        Each sample is mixed with probability ``mixing_prob``: the ws from a crossover point drawn
        uniformly in 1 .. num_ws - 1 on come from a second latent.
        """
        n = self.G.num_ws
        w = self.G.mapping(self.sample_latent(batch, state.generator, state.device))
        ws = w.unsqueeze(1).expand(-1, n, -1)
        if self.mixing_prob > 0:
            w2 = self.G.mapping(self.sample_latent(batch, state.generator, state.device))
            gen_device = state.generator.device if state.generator is not None else state.device
            mix = torch.rand(batch, generator=state.generator, device=gen_device).to(state.device) < self.mixing_prob
            cut = torch.randint(1, n, (batch,), generator=state.generator, device=gen_device).to(state.device)
            cutoff = torch.where(mix, cut, torch.full_like(cut, n))
            second = torch.arange(n, device=state.device).unsqueeze(0) >= cutoff.unsqueeze(1)  # [B, n]
            ws = torch.where(second.unsqueeze(2), w2.unsqueeze(1), ws)
        return ws, w

    def _fakes(self, batch: int, state: StepState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, ws, w)`` of fresh style-mixed latents, random noise from the step's generator."""
        ws, w = self._ws(batch, state)
        return self.G.synthesis(ws, "random", state.generator), ws, w

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None, tile_depth: int | None = None,
                 truncation: float | None = None, noise_mode: str = "const") -> torch.Tensor:
        """Images ``[B, C, S, S]`` from G_ema, clamped to [-1, 1] (no grad).

        Args:
            z: ``[B, latent_dim]``.
            truncation: psi (default: the ``truncation`` option); w is pulled towards w_avg.
            noise_mode: "const" (each layer's fixed noise map: the same z gives the same image),
                "random" (fresh noise from the global RNG) or "none".
        """
        if tile_depth is not None:
            raise MedvolError(f"tile_depth: {self.name} generates 2D images; there is no depth to tile")
        if labels is not None:
            raise MedvolError(f"labels: {self.name} is unconditional")
        if noise_mode not in ("const", "random", "none"):
            raise MedvolError(f"noise_mode: 'const', 'random' or 'none', not {noise_mode!r}")
        psi = self.truncation if truncation is None else float(_number("truncation", truncation, 0.0))
        with self._eval():
            return self.G_ema(z.to(self._device()), psi, noise_mode).clamp(-1.0, 1.0)

    # ------------------------------------------------------------------ training
    def _step_D(self, state: StepState) -> None:
        """D: logistic loss on reals and style-mixed fakes; then, when due, the lazy R1 update."""
        with state.autocast():
            with torch.no_grad():
                fake, _, _ = self._fakes(state.batch, state)
            d_real = self.D(state.real)[0].float()
            d_fake = self.D(fake)[0].float()
            loss_real, loss_fake = F.softplus(-d_real).mean(), F.softplus(d_fake).mean()
            loss = loss_real + loss_fake
        self._update("D", loss, state.optimizers, state.scaler)
        state.out.update(D=loss.detach(), D_real=loss_real.detach(), D_fake=loss_fake.detach())
        if self.r1_gamma > 0 and state.iteration % self.r1_interval == 0:
            with state.autocast():
                penalty = r1_penalty(lambda x: self.D(x)[0], state.real)
            self._second_step(state)
            self._update("D", penalty * (self.r1_gamma / 2 * self.r1_interval), state.optimizers, state.scaler)
            self.last_r1.copy_(penalty.detach())
        state.out["D_r1"] = self.last_r1.clone()

    def _step_G(self, state: StepState) -> None:
        """G: non-saturating loss; when due, the lazy path-length update; then w_avg and the EMA."""
        with state.autocast():
            fake, _, w = self._fakes(state.batch, state)
            loss = F.softplus(-self.D(fake)[0].float()).mean()
        self._update("G", loss, state.optimizers, state.scaler)
        state.out["G"] = loss.detach()
        if self.pl_weight > 0 and state.iteration % self.pl_interval == 0:
            self._step_path_length(state)
        state.out["G_pl"] = self.last_pl.clone()
        state.out["pl_mean"] = self.pl_mean.clone()
        self.G.mapping.update_w_avg(w)
        self.update_ema(state.batch, state.iteration)

    def _step_path_length(self, state: StepState) -> None:
        batch = max(1, state.batch // self.pl_batch_shrink)
        with state.autocast():
            images, ws, _ = self._fakes(batch, state)
            h, w = images.shape[2:]
            y = randn(tuple(images.shape), state.generator, state.device) / math.sqrt(h * w)
            lengths = path_lengths(images, ws, y)
        mean = self.pl_mean.lerp(lengths.detach().mean(), self.pl_decay)
        self.pl_mean.copy_(mean)
        penalty = (lengths - mean).square().mean()
        self._second_step(state)
        self._update("G", penalty * (self.pl_weight * self.pl_interval), state.optimizers, state.scaler)
        self.last_pl.copy_(penalty.detach())

    @staticmethod
    def _second_step(state: StepState) -> None:
        """Before a group's second optimiser step in one iteration: a GradScaler allows one step per
        optimiser between two ``update()`` calls, so the main step's scale is settled first."""
        if state.scaler is not None:
            state.scaler.update()

    def ema_beta(self, batch: int, iteration: int) -> float:
        """EMA decay per step: ``0.5 ** (images per step / half-life in images)``.

        Images per step are the batch times the data-parallel world size; with ``ema_rampup`` the
        half-life is at most ``ema_rampup`` times the images seen after this step.
        """
        world = torch.distributed.get_world_size() if torch.distributed.is_available() \
            and torch.distributed.is_initialized() else 1
        images = batch * world
        half_life = self.ema_kimg * 1000.0
        if self.ema_rampup > 0:
            half_life = min(half_life, (iteration + 1) * images * self.ema_rampup)
        return 0.5 ** (images / half_life) if half_life > 0 else 0.0

    @torch.no_grad()
    def update_ema(self, batch: int, iteration: int) -> None:
        """``G_ema <- G + beta (G_ema - G)`` for the weights; buffers (w_avg, noise maps) copied."""
        beta = self.ema_beta(batch, iteration)
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)
