"""``cyclegan``: unpaired image-to-image translation between two domains (Zhu et al. 2017).

Two ResNet generators, ``G.AB`` (domain A -> B) and ``G.BA`` (B -> A), and two PatchGAN
discriminators, ``D.A`` and ``D.B`` (pix2pix's :class:`PatchGANDiscriminator` with instance norm,
receptive field 10, 22 or 46 pixels). G's loss: least-squares adversarial terms through both Ds,
plus ``cycle_weight`` * (|G.BA(G.AB(a)) - a|_1 + |G.AB(G.BA(b)) - b|_1), plus
``identity`` * ``cycle_weight`` * (|G.AB(b) - b|_1 + |G.BA(a) - a|_1). Each D is trained on its
domain's real images against fakes drawn from a pool of the last ``pool_size`` fakes. Adam 2e-4,
betas (0.5, 0.999) for both groups (each group holds both networks).

Training batches are ``[B, 2, S, S]``: channel 0 an image of domain A, channel 1 an unrelated
image of domain B (``data.source`` and ``data.cache_b``, :class:`medvol.data.unpaired.UnpairedImageDataset`).
Generation translates given images (``generate(z, images=..., direction="AB")``); there is no
noise in a translation, so ``z`` only counts the images. See docs/models.md "CycleGAN".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError
from medvol.models.gan import StepState
from medvol.models.gan2d.losses import discriminator_loss
from medvol.models.gan2d.nets import init_weights
from medvol.models.gan2d.pix2pix import PATCHES, PatchGANDiscriminator
from medvol.models.gan2d.system import GANSystem2D

DIRECTIONS = ("AB", "BA")


@dataclass
class CycleGANOptions:
    """Options of ``cyclegan`` (``model.options.<key>`` of a config); defaults as published.

    Attributes:
        patch: the PatchGAN's receptive field in pixels: 10, 22 or 46 (the CT/X-ray thesis's three).
        cycle_weight: lambda of the cycle-consistency L1 terms (10 in the paper, both directions).
        identity: the identity terms' weight as a fraction of ``cycle_weight`` (0.5 in the
            published code; 0 turns them off).
        pool_size: fakes kept per domain for the discriminators (50 in the paper; 0: no pool,
            D sees the newest fakes only).
        blocks: residual blocks of each generator; 0: 6 below 256^2 and 9 at 256^2, as published.
    """

    patch: int = 46
    cycle_weight: float = 10.0
    identity: float = 0.5
    pool_size: int = 50
    blocks: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.patch, bool) or self.patch not in PATCHES:
            raise MedvolError(f"patch: the PatchGAN receptive field is 10, 22 or 46, not {self.patch!r}")
        for key in ("cycle_weight", "identity"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise MedvolError(f"{key}: expected a number >= 0, got {value!r}")
        for key in ("pool_size", "blocks"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MedvolError(f"{key}: expected an integer >= 0, got {value!r}")


class ResidualBlock(nn.Module):
    """Reflection pad, conv 3x3, instance norm, ReLU, reflection pad, conv 3x3, instance norm; plus x."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ResNetGenerator(nn.Module):
    """Johnson et al.'s transformation network as CycleGAN uses it: ``[B, 1, S, S]`` -> ``[B, 1, S, S]``.

    c7s1-c, d2c, d4c (conv 3x3 stride 2), ``blocks`` residual blocks of 4c, u2c, uc (transposed
    conv 3x3 stride 2), c7s1-1 and tanh; every hidden conv is followed by an instance norm without
    affine parameters and ReLU. Instance norm makes each image's translation independent of the
    rest of its batch, in training and in generation alike.
    """

    def __init__(self, base_width: int, blocks: int):
        super().__init__()
        c = base_width

        def unit(conv: nn.Module, width: int) -> list[nn.Module]:
            return [conv, nn.InstanceNorm2d(width), nn.ReLU()]

        layers: list[nn.Module] = [nn.ReflectionPad2d(3), *unit(nn.Conv2d(1, c, 7), c)]
        layers += unit(nn.Conv2d(c, 2 * c, 3, 2, 1), 2 * c) + unit(nn.Conv2d(2 * c, 4 * c, 3, 2, 1), 4 * c)
        layers += [ResidualBlock(4 * c) for _ in range(blocks)]
        layers += unit(nn.ConvTranspose2d(4 * c, 2 * c, 3, 2, 1, output_padding=1), 2 * c)
        layers += unit(nn.ConvTranspose2d(2 * c, c, 3, 2, 1, output_padding=1), c)
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 1, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImagePool(nn.Module):
    """The last fakes shown to a discriminator (Shrivastava et al.'s history, as CycleGAN uses it).

    While the pool is not full each new fake is stored and returned; then each new fake is, with
    probability 1/2, returned as it is, or stored in place of a random stored fake, which is
    returned instead. The stored images and their count are buffers, so a checkpoint carries them
    and a resumed run draws what an uninterrupted one would.
    """

    def __init__(self, size: int, side: int):
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros(size, 1, side, side))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def query(self, fakes: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``fakes[B, 1, S, S]`` -> the ``[B, 1, S, S]`` batch a discriminator sees."""
        if self.size == 0:
            return fakes
        gen_device = generator.device if generator is not None else fakes.device
        coins = torch.rand(fakes.shape[0], generator=generator, device=gen_device)
        slots = torch.randint(self.size, (fakes.shape[0],), generator=generator, device=gen_device)
        out = []
        for fake, coin, slot in zip(fakes, coins.tolist(), slots.tolist()):
            count = int(self.count)
            if count < self.size:
                self.images[count] = fake.to(self.images.dtype)
                self.count += 1
                out.append(fake)
            elif coin > 0.5:
                old = self.images[slot].clone()
                self.images[slot] = fake.to(self.images.dtype)
                out.append(old.to(fake.dtype))
            else:
                out.append(fake)
        return torch.stack(out)


def cycle_losses(g_ab: nn.Module, g_ba: nn.Module, a: torch.Tensor, b: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The translations of one batch and the unweighted cycle-consistency term.

    Args:
        g_ab, g_ba: the generators A -> B and B -> A.
        a, b: ``[B, 1, S, S]`` images of domain A and of domain B.

    Returns:
        ``(fake_b, fake_a, cycle, identity)``: G.AB(a), G.BA(b), the L1 means
        |G.BA(G.AB(a)) - a| + |G.AB(G.BA(b)) - b|, and |G.AB(b) - b| + |G.BA(a) - a|.
    """
    fake_b, fake_a = g_ab(a), g_ba(b)
    cycle = F.l1_loss(g_ba(fake_b).float(), a.float()) + F.l1_loss(g_ab(fake_a).float(), b.float())
    identity = F.l1_loss(g_ab(b).float(), b.float()) + F.l1_loss(g_ba(a).float(), a.float())
    return fake_b, fake_a, cycle, identity


def _lsgan_g(logits: torch.Tensor) -> torch.Tensor:
    """G's least-squares term as CycleGAN weighs it: mean (D(fake) - 1)^2 (no factor 1/2)."""
    return ((logits.float() - 1.0) ** 2).mean()


class CycleGAN(GANSystem2D):
    """CycleGAN: ``build("cyclegan", size, patch=..., cycle_weight=..., identity=..., pool_size=...)``.

    Args:
        size: image side S (32, 64, 128, 256); the generators downsample twice, so S / 4 is the
            side the residual blocks work at.
        base_width: c, the generators' first width (64 published) and the discriminators' (64).
        latent_dim: length of z, which only counts the images of :meth:`generate`.
        **options: :class:`CycleGANOptions`.

    Example:
        >>> from medvol.models import build
        >>> system = build("cyclegan", 32, base_width=4)
        >>> a = torch.zeros(2, 1, 32, 32)
        >>> system.generate(system.sample_latent(2), images=a, direction="AB").shape
        torch.Size([2, 2, 32, 32])
    """

    name = "cyclegan"
    #: Trains on two unrelated image sets (``data.source`` and ``data.cache_b``).
    unpaired = True
    loss = "lsgan"
    lr = {"D": 2e-4, "G": 2e-4}
    betas = (0.5, 0.999)
    #: G first (its fakes feed the pools), then both discriminators, as the published step.
    SUBSTEPS = ("G", "D")

    def __init__(self, size: int, base_width: int = 64, latent_dim: int = 1, num_classes: int = 0, **options):
        opts = CycleGANOptions(**options)
        super().__init__(size, base_width, latent_dim, num_classes, 2)
        self.opts = opts
        blocks = self.opts.blocks or (9 if size >= 256 else 6)
        self.G = nn.ModuleDict({"AB": ResNetGenerator(base_width, blocks), "BA": ResNetGenerator(base_width, blocks)})
        self.D = nn.ModuleDict({d: PatchGANDiscriminator(1, base_width, self.opts.patch, norm="instance")
                                for d in ("A", "B")})
        self.pools = nn.ModuleDict({d: ImagePool(self.opts.pool_size, size) for d in ("A", "B")})
        for net in (self.G, self.D):  # CycleGAN: weights N(0, 0.02)
            init_weights(net, "normal", 0.02)

    def options(self) -> dict[str, object]:
        return asdict(self.opts)

    # ------------------------------------------------------------------ inference
    def _check_images(self, images: torch.Tensor | None, batch: int) -> torch.Tensor:
        s = self.size
        if images is None:
            raise MedvolError(f"images: {self.name} translates given images; pass images [B, 1, {s}, {s}] in [-1, 1] "
                              "(medvol generate --input CACHE_OR_FOLDER)")
        images = torch.as_tensor(images)
        if images.dim() != 4 or tuple(images.shape) != (batch, 1, s, s):
            raise MedvolError(f"images: expected shape [{batch}, 1, {s}, {s}], got {list(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise MedvolError("images: contain NaN or infinite values")
        return images.float()

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None, tile_depth: int | None = None,
                 masks: torch.Tensor | None = None, images: torch.Tensor | None = None,
                 direction: str = "AB") -> torch.Tensor:
        """Translations of ``images`` (no grad, eval mode; G_ema's weights where kept).

        Args:
            z: ``[B, latent_dim]``; only its batch size is read (a translation has no noise).
            labels, tile_depth, masks: must be None.
            images: ``[B, 1, S, S]`` in [-1, 1] of the source domain.
            direction: "AB" (A -> B with G.AB) or "BA".

        Returns:
            ``[B, 2, S, S]``: channel 0 the translated image, channel 1 the given one.
        """
        for key, value in (("tile_depth", tile_depth), ("labels", labels), ("masks", masks)):
            if value is not None:
                raise MedvolError(f"{key}: {self.name} translates images; it takes no {key}")
        if direction not in DIRECTIONS:
            raise MedvolError(f"direction: {direction!r} is not AB or BA")
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise MedvolError(f"z: expected shape [B, {self.latent_dim}], got {list(z.shape)}")
        device = self._device()
        images = self._check_images(images, z.shape[0]).to(device)
        with self._eval(sample=True):
            out = self.G[direction](images)
            return torch.cat([out, images.to(out.dtype)], dim=1)

    #: The preview's channel captions (medvol.preview.training_preview): a real item stacks an A and
    #: an unrelated B image; a generated one is A -> B beside its input.
    preview_channels = {"real": ("domain A", "domain B"), "generated": ("A->B", "A (input)")}

    def preview(self, z: torch.Tensor, real: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """What training shows: G.AB of the real batch's domain-A images."""
        return self.generate(z, images=real[: z.shape[0], :1])

    # ------------------------------------------------------------------ training
    def _step_G(self, state: StepState) -> None:
        """Both generators: adversarial terms through the frozen Ds, cycle and identity terms."""
        a, b = state.real[:, :1], state.real[:, 1:]
        opts = self.opts
        with state.autocast():
            fake_b, fake_a, cycle, identity = cycle_losses(self.G["AB"], self.G["BA"], a, b)
            adversarial = _lsgan_g(self.D["B"](fake_b)) + _lsgan_g(self.D["A"](fake_a))
            loss = adversarial + opts.cycle_weight * cycle
            if opts.identity > 0:
                loss = loss + opts.identity * opts.cycle_weight * identity
        self._update("G", loss, state.optimizers, state.scaler)
        state.keep.update(fake_a=fake_a.detach(), fake_b=fake_b.detach())
        state.out.update(G=loss.detach(), G_adv=adversarial.detach(), G_cycle=cycle.detach(),
                         G_identity=identity.detach())

    def _step_D(self, state: StepState) -> None:
        """Both discriminators: each on its domain's reals against pooled fakes; the loss
        0.5 (mean (D(real) - 1)^2 + mean D(fake)^2) per domain, summed, one update."""
        reals = {"A": state.real[:, :1], "B": state.real[:, 1:]}
        fakes = {d: self.pools[d].query(state.keep[f"fake_{d.lower()}"], state.generator) for d in ("A", "B")}
        with state.autocast():
            terms = {d: discriminator_loss("lsgan", self.D[d](reals[d]).flatten(), self.D[d](fakes[d]).flatten())
                     for d in ("A", "B")}
            loss = sum(r + f for r, f in terms.values())
        self._update("D", loss, state.optimizers, state.scaler)
        state.out.update(D=loss.detach(), D_A=sum(terms["A"]).detach(), D_B=sum(terms["B"]).detach())
