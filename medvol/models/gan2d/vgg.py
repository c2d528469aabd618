"""The VGG perceptual term of dcgan's generator loss (the empirical study's "VGG loss weight").

Weights are never downloaded: they come from a local file, a torchvision VGG16 / VGG19
``state_dict`` (``torch.save(torchvision.models.vgg16(...).state_dict(), path)``), whose sha256
must be given and is checked. The network is rebuilt from the file's ``features.<i>.weight``
tensors alone (3x3 convolutions with padding 1, each followed by ReLU; a gap of three indices
between two convolutions is a 2x2 max-pool), so any VGG-shaped state_dict works, including small
randomly initialised ones in tests.

An unconditional GAN has no target image per fake, so the term compares sets: for each of the
first :data:`BLOCKS` blocks (relu1_2, relu2_2, relu3_3, relu4_3 in VGG16), the squared distance
between the batch-mean feature maps of the fakes and of the real batch, averaged over elements,
summed over blocks (feature matching in a fixed ImageNet feature space).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError

#: Blocks (conv groups ended by a max-pool) whose outputs the perceptual term compares.
BLOCKS = 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """VGG's convolutional trunk from a state_dict; ``forward`` returns the block outputs.

    Args:
        state: a torchvision VGG state_dict (``classifier.*`` keys are ignored).
        what: how errors name the file.

    Shapes: ``x [B, 3, H, W]`` (ImageNet-normalised) -> ``[ [B, C_k, H/2^k, W/2^k] ]`` for
    k < :data:`BLOCKS`. The parameters are frozen (``requires_grad=False``); gradients flow to x.
    """

    def __init__(self, state: dict, what: str):
        super().__init__()
        found = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"features\.(\d+)\.weight", k)))
        if not found:
            raise MedvolError(f"{what}: no features.<i>.weight tensors; expected a torchvision VGG state_dict")
        self.blocks = nn.ModuleList()
        block: list[nn.Module] = []
        cin = 3
        for n, i in enumerate(found):
            w, b = state[f"features.{i}.weight"], state.get(f"features.{i}.bias")
            if not isinstance(w, torch.Tensor) or w.dim() != 4 or w.shape[1] != cin or w.shape[2:] != (3, 3) \
                    or not isinstance(b, torch.Tensor) or b.shape != (w.shape[0],):
                raise MedvolError(f"{what}: features.{i} is not a 3x3 convolution from {cin} channels with a bias")
            conv = nn.Conv2d(cin, w.shape[0], 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(w.float())
                conv.bias.copy_(b.float())
            block += [conv, nn.ReLU()]
            cin = w.shape[0]
            nxt = found[n + 1] if n + 1 < len(found) else None
            if nxt is None or nxt - i == 3:
                self.blocks.append(nn.Sequential(*block))
                block = []
            elif nxt - i != 2:
                raise MedvolError(f"{what}: layer indices {i} -> {nxt} are neither conv-ReLU-conv nor "
                                  "conv-ReLU-pool-conv (not a VGG trunk)")
            if len(self.blocks) == BLOCKS:
                break
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k, block in enumerate(self.blocks):
            if k:
                x = F.max_pool2d(x, 2)
            x = block(x)
            out.append(x)
        return out


def load_vgg(path: str | os.PathLike | None, sha256: str | None) -> VGGFeatures:
    """The VGG trunk of the state_dict at ``path``, after checking its sha256.

    Raises:
        MedvolError: no path or no sha256 given, a missing file, a sha256 mismatch, or a file that
            is not a VGG state_dict.
    """
    from medvol.utils import check_sha256

    if not path or not sha256:
        raise MedvolError("vgg_weight > 0 needs model.vgg_weights (a local torchvision VGG16/19 state_dict "
                          "file) and model.vgg_sha256 (its sha256); medvol downloads no weights")
    p = Path(path).expanduser()
    if not p.is_file():
        raise MedvolError(f"vgg_weights: {p} does not exist")
    check_sha256(p, sha256, "VGG")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle of anything but tensors, or a truncated file
        raise MedvolError(f"vgg_weights: {p} is not a state_dict of tensors ({type(error).__name__})") from None
    if not isinstance(state, dict):
        raise MedvolError(f"vgg_weights: {p} holds a {type(state).__name__}, not a state_dict")
    return VGGFeatures(state, f"vgg_weights {p}")


def to_vgg_input(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, S, S]`` in [-1, 1] -> VGG's ``[B, 3, S, S]``: the image channel (0; a mask channel
    is left out) to [0, 1], repeated as RGB, ImageNet-normalised."""
    grey = (x[:, :1].float() + 1) / 2
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (grey.expand(-1, 3, -1, -1) - mean) / std


def perceptual_distance(vgg: VGGFeatures, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Sum over blocks of ``mean((mean_b vgg(fake) - mean_b vgg(real))^2)``; 0 when the batches'
    mean features agree. Gradients flow to ``fake`` only."""
    with torch.no_grad():
        real_features = vgg(to_vgg_input(real))
    total = fake.new_zeros((), dtype=torch.float32)
    for f, r in zip(vgg(to_vgg_input(fake)), real_features):
        total = total + ((f.float().mean(0) - r.float().mean(0)) ** 2).mean()
    return total
