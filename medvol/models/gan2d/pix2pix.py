"""``pix2pix``: mask -> image translation (Isola et al. 2017), as the CT/X-ray thesis trains it.

G is the pix2pix U-Net: an encoder C64-C128-C256-C512-C512-... (conv 4x4 stride 2) down to 1x1,
a decoder of transposed convs 4x4 stride 2 back up, the decoder's first layers with dropout 0.5,
skip connections concatenating each encoder map with the decoder map of the same side, tanh.
D is a PatchGAN on (image, mask) pairs whose receptive field is 10, 22 or 46 pixels. The loss is
BCE (or LSGAN) + ``l1_weight`` * L1(G(mask), image). There is no latent: dropout is the noise,
and ``generate`` draws each image's dropout masks from a seed hashed from that image's row of z
(z's values never enter the network; its batch size is the number of images).
The choices the papers leave open are listed in docs/models2d.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError
from medvol.models.gan2d.conditional import ConditionalGANSystem2D
from medvol.models.gan2d.losses import discriminator_loss, generator_loss
from medvol.models.gan2d.nets import init_weights
from medvol.models.gan import StepState
from medvol.models.options import check_ranges



@dataclass
class Pix2PixOptions:
    """Options of ``pix2pix`` (``model.options``); defaults: the thesis's and the pix2pix paper's.

    Attributes:
        channels: the image and its mask (2: pix2pix draws images from given masks).
        loss: D's adversarial loss, "bce" or "lsgan".
        l1_weight: weight of the L1 term in G's loss.
        patch: the PatchGAN discriminator's receptive field: 10, 22 or 46.
    """

    channels: int = 2
    loss: Literal["bce", "lsgan"] = "bce"
    l1_weight: float = 100.0
    patch: Literal[10, 22, 46] = 46

    def __post_init__(self) -> None:
        check_ranges(self, positive=("channels",), non_negative=("l1_weight",))
#: PatchGAN receptive field -> number of stride-2 convs before the 1-channel output conv.
PATCHES = {10: 1, 22: 2, 46: 3}
#: Widths are c * 2^k capped at this multiple (pix2pix: 64 ... 512).
MAX_MULTIPLE = 8
#: The last decoder layers (C512-C256-C128-C64 at c = 64) have no dropout; all before them do.
PLAIN_DECODER_LAYERS = 4
DROPOUT = 0.5


def encoder_widths(size: int, base_width: int) -> list[int]:
    """U-Net encoder widths, one stride-2 layer per halving down to 1x1: c, 2c, 4c, 8c, 8c, ..."""
    return [base_width * min(2 ** i, MAX_MULTIPLE) for i in range(int(math.log2(size)))]


def receptive_field(layers: list[nn.Module]) -> int:
    """Receptive field in input pixels of one output pixel of a stack of convs (and pointwise layers).

    Walks the layers in order keeping ``r`` (field so far) and ``j`` (input pixels per step of the
    current map): a conv of kernel k, stride s, dilation d adds ``(k - 1) * d * j`` and multiplies
    ``j`` by s. Layers without a kernel (norms, activations) change neither.
    """
    r, j = 1, 1
    for layer in layers:
        for m in layer.modules():
            if isinstance(m, nn.Conv2d):
                r += (m.kernel_size[0] - 1) * m.dilation[0] * j
                j *= m.stride[0]
    return r


class UNetGenerator(nn.Module):
    """pix2pix's U-Net: ``mask[B, 1, S, S]`` -> ``image[B, 1, S, S]`` in [-1, 1].

    Encoder layer i: conv 4x4 stride 2 padding 1, BatchNorm (not on the first nor on the 1x1
    innermost layer), LeakyReLU 0.2. Decoder layer j: ConvTranspose 4x4 stride 2 padding 1 on the
    previous decoder map concatenated with the encoder map of the same side, BatchNorm, dropout
    (all but the last :data:`PLAIN_DECODER_LAYERS`), ReLU; the last one maps to one channel, tanh.
    Convs followed by BatchNorm have no bias.

    Dropout masks are inputs (``noise``: one keep-mask per dropout layer, 0 or 1 / (1 - p)), so that
    training draws them from the trainer's generator and generation from a per-image seed.
    """

    def __init__(self, size: int, base_width: int):
        super().__init__()
        w = encoder_widths(size, base_width)
        n = len(w)
        self.down = nn.ModuleList()
        for i in range(n):
            norm = 0 < i < n - 1
            layers = [nn.Conv2d(1 if i == 0 else w[i - 1], w[i], 4, 2, 1, bias=not norm)]
            self.down.append(nn.Sequential(*layers, *([nn.BatchNorm2d(w[i])] if norm else []), nn.LeakyReLU(0.2)))
        # Decoder layer j outputs the width of encoder layer n - 2 - j, whose map it is concatenated with.
        out = [w[n - 2 - j] for j in range(n - 1)]
        self.up = nn.ModuleList()
        for j, width in enumerate(out):
            c_in = w[-1] if j == 0 else 2 * out[j - 1]
            self.up.append(nn.Sequential(nn.ConvTranspose2d(c_in, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width)))
        self.last = nn.ConvTranspose2d(2 * out[-1], 1, 4, 2, 1)
        self.dropout_layers = max(0, len(out) - PLAIN_DECODER_LAYERS)

    def noise_shapes(self, batch: int) -> list[tuple[int, int, int, int]]:
        """Shapes ``[B, C, H, W]`` of the dropout layers' keep-masks, innermost first."""
        return [(batch, self.up[j][0].out_channels, 2 ** (j + 1), 2 ** (j + 1)) for j in range(self.dropout_layers)]

    def draw_noise(self, batch: int, generator: torch.Generator | None,
                   device: torch.device) -> list[torch.Tensor]:
        """Fresh keep-masks (0 or 1 / (1 - p), p = 0.5) drawn from ``generator`` on its device."""
        gen_device = generator.device if generator is not None else device
        return [(torch.rand(shape, generator=generator, device=gen_device) >= DROPOUT).to(device) / (1 - DROPOUT)
                for shape in self.noise_shapes(batch)]

    def forward(self, mask: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        if len(noise) != self.dropout_layers:
            raise ValueError(f"expected {self.dropout_layers} dropout masks, got {len(noise)}")
        skips = []
        x = mask
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        skips.pop()  # the innermost map is the decoder's input, not a skip
        for j, layer in enumerate(self.up):
            x = layer(x)
            if j < self.dropout_layers:
                x = x * noise[j].to(x.dtype)
            x = torch.cat([F.relu(x), skips.pop()], dim=1)
        return torch.tanh(self.last(x))


class PatchGANDiscriminator(nn.Module):
    """PatchGAN on ``[B, C, S, S]`` (pix2pix: image and mask): k convs 4x4 stride 2 (c, 2c, 4c; a
    norm but on the first, LeakyReLU 0.2), then a conv 4x4 stride 1 to one logit per patch; padding 1.

    The receptive field of k stride-2 4x4 convs and the closing 4x4 conv is ``2^(k+1) * 3 - 2``:
    10, 22, 46 for k = 1, 2, 3 (:func:`receptive_field`). ``norm``: "batch" (pix2pix) or
    "instance" (CycleGAN; no affine parameters, as its published D).
    """

    def __init__(self, channels: int, base_width: int, patch: int, norm: str = "batch"):
        super().__init__()
        w = [base_width * min(2 ** i, MAX_MULTIPLE) for i in range(PATCHES[patch])]
        layers: list[nn.Module] = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for a, b in zip(w, w[1:]):
            norm_layer = nn.BatchNorm2d(b) if norm == "batch" else nn.InstanceNorm2d(b)
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), norm_layer, nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(w[-1], 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[B, C, S, S]`` -> patch logits ``[B, 1, h, w]``."""
        return self.net(x)


def dropout_seed(row: torch.Tensor) -> int:
    """A 63-bit seed from the float32 bytes of one latent row: equal rows, equal seeds."""
    data = row.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


class Pix2Pix(ConditionalGANSystem2D):
    """pix2pix: ``build("pix2pix", size, patch=..., loss=..., l1_weight=...)``.

    Args:
        size: image side S; the U-Net has log2(S) encoder layers (7 at 128^2, the thesis's size;
            6 at 64^2, 8 at 256^2 as in pix2pix).
        base_width: c, the first layer's filters of G and D (64 in pix2pix).
        latent_dim: length of z, which only seeds dropout in :meth:`generate` (its values never
            enter the network).
        channels: must be 2 (image and mask).
        loss: "bce" (pix2pix) or "lsgan".
        l1_weight: weight of L1(G(mask), image) in G's loss (100 in pix2pix).
        patch: D's receptive field, 10, 22 or 46 pixels.

    Example:
        >>> from medvol.models import build
        >>> system = build("pix2pix", 32, base_width=4)
        >>> system.generate(system.sample_latent(2), masks=-torch.ones(2, 1, 32, 32)).shape
        torch.Size([2, 2, 32, 32])
    """

    name = "pix2pix"
    lr = {"D": 2e-4, "G": 2e-4}
    betas = (0.5, 0.999)

    def __init__(self, size: int, base_width: int = 64, latent_dim: int = 4, num_classes: int = 0, *,
                 channels: int = 2, loss: str = "bce", l1_weight: float = 100.0, patch: int = 46):
        super().__init__(size, base_width, latent_dim, num_classes, channels)
        if loss not in ("bce", "lsgan"):
            raise MedvolError(f"loss: pix2pix trains with bce or lsgan, not {loss!r}")
        if isinstance(l1_weight, bool) or not isinstance(l1_weight, (int, float)) or l1_weight < 0:
            raise MedvolError(f"l1_weight: expected a number >= 0, got {l1_weight!r}")
        if isinstance(patch, bool) or patch not in PATCHES:
            raise MedvolError(f"patch: the PatchGAN receptive field is 10, 22 or 46, not {patch!r}")
        self.loss, self.l1_weight, self.patch = loss, float(l1_weight), patch
        self.G = UNetGenerator(size, base_width)
        self.D = PatchGANDiscriminator(channels, base_width, patch)
        for net in (self.G, self.D):  # pix2pix: weights N(0, 0.02) (norm scales N(1, 0.02))
            init_weights(net, "normal", 0.02)

    def options(self) -> dict[str, object]:
        return {"channels": self.channels, "loss": self.loss, "l1_weight": self.l1_weight, "patch": self.patch}

    def _render(self, z: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """pix2pix's test-time protocol, image by image: dropout on, BatchNorm with the statistics of
        the test batch, here a batch of one image (as pix2pix tests), so an image does not depend
        on the rest of its batch. Image b's keep-masks come from ``dropout_seed(z[b])``. The
        running statistics are left untouched (BatchNorm updates copies of them)."""
        device = masks.device
        was_training = self.G.training
        self.G.train()
        try:
            images = []
            for row, mask in zip(z, masks):
                noise = self.G.draw_noise(1, torch.Generator().manual_seed(dropout_seed(row)), device)
                buffers = {name: b.clone() for name, b in self.G.named_buffers()}
                images.append(torch.func.functional_call(self.G, buffers, (mask[None], noise)))
        finally:
            self.G.train(was_training)
        return torch.cat(images)

    def _step_D(self, state: StepState) -> None:
        """D: half the loss's real and fake terms (pix2pix halves D's objective)."""
        mask = state.real[:, 1:]
        with state.autocast():
            with torch.no_grad():
                fake = self.G(mask, self.G.draw_noise(state.batch, state.generator, state.device))
            d_real = self.D(state.real).flatten()
            d_fake = self.D(self.pair(fake, mask)).flatten()
            loss_real, loss_fake = discriminator_loss(self.loss, d_real, d_fake)
            loss = 0.5 * (loss_real + loss_fake)
        self._update("D", loss, state.optimizers, state.scaler)
        state.out.update(D=loss.detach(), D_real=loss_real.detach(), D_fake=loss_fake.detach())

    def _step_G(self, state: StepState) -> None:
        """G: the loss's G term on the fakes' patches + ``l1_weight`` * L1 to the real image."""
        image, mask = state.real[:, :1], state.real[:, 1:]
        with state.autocast():
            fake = self.G(mask, self.G.draw_noise(state.batch, state.generator, state.device))
            adversarial = generator_loss(self.loss, self.D(self.pair(fake, mask)).flatten())
            l1 = F.l1_loss(fake.float(), image.float())
            loss = adversarial + self.l1_weight * l1
        self._update("G", loss, state.optimizers, state.scaler)
        state.out.update(G=loss.detach(), G_adv=adversarial.detach(), G_l1=l1.detach())
